"""Fusion: a judge analyses the candidates in structured form, then a writer answers.

Modelled on OpenRouter's Fusion: instead of asking one aggregator to read and merge
every candidate at once, a *judge* first returns a structured analysis — points of
consensus, contradictions, gaps, and which candidates are wrong and why — and a
*writer* then produces the final answer from the candidates plus that analysis.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig
from pydantic import BaseModel, Field

from langchain_moa._agents import Agent
from langchain_moa._prompts import numbered, with_system
from langchain_moa._settings import DEFAULT, _Default, step_values
from langchain_moa.errors import AggregatorError, ConfigurationError
from langchain_moa.steps._aggregate import final_message, single_agent
from langchain_moa.steps._base import Job, Result, StepReport
from langchain_moa.steps._judges import _Judge, _transient
from langchain_moa.types import MoAState

__all__ = ["Fusion", "FusionAnalysis", "WrongCandidate"]

FUSION_JUDGE_PROMPT = (
    "You are given several candidate responses to the user's latest query. Do not answer "
    "the query yourself. Analyse the candidates: list the points most of them agree on "
    "(consensus), the points where they contradict each other (contradictions), what "
    "they all miss or leave unchecked (gaps), and every response that is wrong, with "
    "its number and the reason (wrong)."
)
JSON_FUSION_INSTRUCTION = (
    'Answer with a JSON object only, of the form {"consensus": ["..."], '
    '"contradictions": ["..."], "gaps": ["..."], "wrong": [{"response": 2, "reason": '
    '"..."}]}. Use empty lists where there is nothing to say.'
)
FUSION_WRITER_PROMPT = (
    "You are given several candidate responses to the user's latest query and a "
    "reviewer's analysis of them. Write the best final response to the query: keep what "
    "the candidates agree on when it is right, resolve their contradictions, fill the "
    "gaps, and do not repeat the mistakes the analysis points out. Check the reasoning "
    "yourself; the analysis may be wrong too. Reply with the final response only."
)


class WrongCandidate(BaseModel):
    """A candidate the judge found wrong."""

    response: int = Field(description="the response number (1-based)")
    reason: str = Field(description="why it is wrong")


class FusionAnalysis(BaseModel):
    """The judge's structured analysis of the candidates."""

    consensus: list[str] = Field(default_factory=list, description="points most responses agree on")
    contradictions: list[str] = Field(
        default_factory=list, description="points where responses contradict each other"
    )
    gaps: list[str] = Field(default_factory=list, description="what the responses miss")
    wrong: list[WrongCandidate] = Field(
        default_factory=list, description="responses that are wrong, and why"
    )


def analysis_text(analysis: FusionAnalysis) -> str:
    """The analysis as the plain-text section the writer reads."""
    parts = []
    for title, items in (
        ("Consensus", analysis.consensus),
        ("Contradictions", analysis.contradictions),
        ("Gaps", analysis.gaps),
    ):
        body = "".join(f"\n- {item}" for item in items) or "\n- (none)"
        parts.append(f"{title}:{body}")
    wrong = "".join(f"\n- response {w.response}: {w.reason}" for w in analysis.wrong)
    parts.append(f"Wrong responses:{wrong or chr(10) + '- (none)'}")
    return "\n\n".join(parts)


class Fusion(_Judge):
    """A judge's structured analysis, then a writer's answer (OpenRouter Fusion style).

    Two calls, both in the history and in ``calls``: the *judge* reads the numbered
    candidates and returns a :class:`FusionAnalysis` (``consensus``,
    ``contradictions``, ``gaps``, ``wrong``: ``[{response, reason}]``) through
    structured output — native when the agent has it, else a JSON reply validated
    with pydantic, as for :class:`Vote`; the *writer* then sees the conversation with
    the candidates and the analysis in a system message and writes the final answer.

    Args:
        judge: the analysing agent (model string, chat model, Runnable, client fn).
        writer: the writing agent; default: the judge.
        temperature, max_tokens: of the judge call (defaults 0 and 1024; alias ``temp``).
        writer_temperature, writer_max_tokens: of the writer call (defaults 0.7 and 2048).
        prompt: replaces the judge's instruction; ``writer_prompt`` the writer's.
        structured: ``"auto"``, ``"native"`` or ``"json"``, as for :class:`Vote`.
        client, prices: as for :class:`Propose`.

    Input: an :class:`MoAState` with at least one candidate.
    Output: an ``AIMessage`` with the writer's text; ``usage_metadata`` sums every call
    of the run; ``response_metadata["moa"]["analysis"]`` holds the judge's analysis.

    Raises:
        ConfigurationError: a bad parameter, at construction.
        AggregatorError: no candidates, an invalid analysis (the judge's raw reply is in
            the history), or the writer failed. No candidate is returned in its place.
    """

    schema: ClassVar[type[BaseModel]] = FusionAnalysis
    instruction: ClassVar[str] = FUSION_JUDGE_PROMPT
    json_hint: ClassVar[str] = JSON_FUSION_INSTRUCTION
    defaults: ClassVar[tuple[float, int]] = (0.0, 1024)

    writer: Agent
    writer_temperature: float | None | _Default = DEFAULT
    writer_max_tokens: int | None | _Default = DEFAULT
    writer_prompt: str | None = None

    def __init__(
        self,
        judge: Any,
        writer: Any = None,
        *,
        temperature: float | None | _Default = DEFAULT,
        max_tokens: int | None | _Default = DEFAULT,
        temp: float | None = None,
        writer_temperature: float | None | _Default = DEFAULT,
        writer_max_tokens: int | None | _Default = DEFAULT,
        prompt: str | None = None,
        writer_prompt: str | None = None,
        structured: Literal["auto", "native", "json"] = "auto",
        client: Callable[..., Any] | None = None,
        prices: dict[str, tuple[float, float]] | None = None,
    ) -> None:
        judge_agent = single_agent(judge, client)
        writer_agent = judge_agent if writer is None else single_agent(writer, client)
        try:
            self.check_settings(
                temperature=writer_temperature,
                max_tokens=writer_max_tokens,
                max_concurrency=None,
                prompt=writer_prompt,
            )
        except ConfigurationError as exc:  # name the writer's parameter
            raise ConfigurationError(f"writer_{exc}") from None
        super().__init__(
            judge_agent,
            temperature=temperature,
            max_tokens=max_tokens,
            temp=temp,
            prompt=prompt,
            structured=structured,
            client=client,
            prices=prices,
            writer=writer_agent,
            writer_temperature=writer_temperature,
            writer_max_tokens=writer_max_tokens,
            writer_prompt=writer_prompt,
        )

    def step_agents(self) -> list[Agent]:
        return [self.agent] if self.writer is self.agent else [self.agent, self.writer]

    @property
    def params(self) -> dict[str, Any]:
        forced, fallback = step_values(
            self.writer_temperature, self.writer_max_tokens, WRITER_DEFAULTS
        )
        return {
            **super().params,
            "writer": self.writer.name,
            "writer_temperature": {**fallback, **forced}.get("temperature"),
            "writer_max_tokens": {**fallback, **forced}.get("max_tokens"),
        }

    @property
    def OutputType(self) -> Any:  # noqa: N802
        return AIMessage

    def _analysis(self, result: Result) -> FusionAnalysis:
        native = result.replaced
        if native is not None and self.structured == "auto" and not _transient(native.exception):
            self.agent.structured_output_failed = True
        return self.parse(result)

    def _writer_job(self, state: MoAState, analysis: FusionAnalysis, config: RunnableConfig) -> Job:
        forced, fallback = step_values(
            self.writer_temperature, self.writer_max_tokens, WRITER_DEFAULTS
        )
        system = (
            f"{self.writer_prompt or FUSION_WRITER_PROMPT}\n\n{numbered(state.texts)}"
            f"\n\nReviewer's analysis:\n\n{analysis_text(analysis)}"
        )
        messages = with_system(state.messages, system)
        runnable = self.writer.configured(config, forced, fallback, 1)
        return Job(self.writer, 1, messages, runnable, state.layer + 1)

    def _message(self, report: StepReport, analysis: FusionAnalysis, result: Result) -> AIMessage:
        if not result.ok:
            raise AggregatorError("Fusion", self.writer.name, result.record.error)
        calls = [*report.state.calls, *report.calls]
        message = final_message(result.record.output or "", calls, result.job.layer, result.record)
        message.response_metadata["moa"]["analysis"] = json.loads(analysis.model_dump_json())
        return message

    def _run(self, report: StepReport, config: RunnableConfig) -> AIMessage:
        [judged] = self.run_jobs([self._judge_job(report.state, config)], report, config)
        analysis = self._analysis(judged)
        job = self._writer_job(report.state, analysis, config)
        [written] = self.run_jobs([job], report, config)
        return self._message(report, analysis, written)

    async def _arun(self, report: StepReport, config: RunnableConfig) -> AIMessage:
        [judged] = await self.arun_jobs([self._judge_job(report.state, config)], report, config)
        analysis = self._analysis(judged)
        job = self._writer_job(report.state, analysis, config)
        [written] = await self.arun_jobs([job], report, config)
        return self._message(report, analysis, written)


WRITER_DEFAULTS = (0.7, 2048)
"""The writer's default ``(temperature, max_tokens)``."""
