"""Rank and Vote: one judge agent reads all candidates and answers in structured form.

The judgement is requested with ``with_structured_output`` when the agent supports
it, and always also described as a JSON object in the prompt. When native
structured output is unavailable or its call fails, the judge is asked once more in
plain JSON mode (both calls are recorded); after a failure that is not transient
(a refusal, not a timeout) that agent uses JSON mode from then on. The reply must
hold a complete JSON object and is validated with pydantic; digits are never
scraped out of prose, and an invalid judgement raises.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import httpx
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig
from pydantic import BaseModel, Field, ValidationError

from langchain_moa._prompts import (
    JSON_RANK_INSTRUCTION,
    JSON_VOTE_INSTRUCTION,
    RANK_PROMPT,
    VOTE_PROMPT,
    judge_messages,
)
from langchain_moa._settings import SETTINGS
from langchain_moa.client_model import ClientReply
from langchain_moa.errors import AggregatorError, ConfigurationError
from langchain_moa.steps._aggregate import final_message, single_agent
from langchain_moa.steps._base import (
    DEFAULT,
    Job,
    Result,
    SingleAgentStep,
    StepReport,
    _Default,
    validate_positive_int,
)
from langchain_moa.types import MoAState

Structured = Literal["auto", "native", "json"]


class RankingJudgement(BaseModel):
    """A judge's ranking of the candidates."""

    ranking: list[int] = Field(description="response numbers (1-based), best first, each once")


class VoteJudgement(BaseModel):
    """A judge's choice of the consensus candidate."""

    choice: int = Field(description="the number (1-based) of the consensus response")


class _Judge(SingleAgentStep):
    schema: ClassVar[type[BaseModel]]
    instruction: ClassVar[str]
    json_hint: ClassVar[str]

    defaults: ClassVar[tuple[float, int]] = (0.0, 512)
    structured: Structured = "auto"

    def __init__(
        self,
        agent: Any,
        *,
        temperature: float | None | _Default = DEFAULT,
        max_tokens: int | None | _Default = DEFAULT,
        temp: float | None = None,
        prompt: str | None = None,
        structured: Structured = "auto",
        client: Callable[..., Any] | None = None,
        prices: dict[str, tuple[float, float]] | None = None,
        max_concurrency: int | None = None,
        **extra: Any,
    ) -> None:
        settings = self.check_settings(
            temperature=temperature,
            max_tokens=max_tokens,
            temp=temp,
            max_concurrency=max_concurrency,
            prompt=prompt,
        )
        if structured not in ("auto", "native", "json"):
            raise ConfigurationError(
                f"structured must be 'auto', 'native' or 'json', got {structured!r}"
            )
        super().__init__(
            agent=single_agent(agent, client),
            structured=structured,
            prices=prices,
            **settings,
            **extra,
        )

    @property
    def params(self) -> dict[str, Any]:
        return {**super().params, "structured": self.structured}

    def _judge_job(self, state: MoAState, config: RunnableConfig) -> Job:
        if not state.candidates:
            raise AggregatorError(type(self).__name__, self.agent.name, "no candidates to judge")
        messages = judge_messages(
            state.messages, self.prompt or self.instruction, state.texts, self.json_hint
        )
        plain = self.agent.configured(config, *self._settings())
        use_native = self.structured == "native" or (
            self.structured == "auto" and not self.agent.structured_output_failed
        )
        native = self._native(config) if use_native else None
        if native is None:
            if self.structured == "native":
                raise AggregatorError(
                    type(self).__name__,
                    self.agent.name,
                    "structured='native' but the agent has no with_structured_output",
                )
            return Job(self.agent, 0, messages, plain, state.layer)
        fallback = plain if self.structured == "auto" else None
        return Job(self.agent, 0, messages, native, state.layer, fallback=fallback)

    def _native(self, config: RunnableConfig) -> Runnable | None:
        model: Any = self.agent.runnable(config)
        bound: dict[str, Any] = {}
        while isinstance(model, RunnableBinding):
            bound = {**{k: model.kwargs[k] for k in SETTINGS if k in model.kwargs}, **bound}
            model = model.bound
        if not isinstance(model, BaseChatModel):
            return None
        # the same rule as every call (see langchain_moa._settings), applied as fields
        # because with_structured_output's chain would not pass bound kwargs on
        own = set(bound) | {k for k in SETTINGS if k in model.model_fields_set}
        params = {
            **{k: v for k, v in self._fallback.items() if k not in own},
            **bound,
            **self._forced,
        }
        updates = {k: v for k, v in params.items() if k in type(model).model_fields}
        try:
            return model.model_copy(update=updates).with_structured_output(
                self.schema, include_raw=True
            )
        except NotImplementedError:
            return None

    def parse(self, result: Result) -> Any:
        """The validated judgement of a finished call.

        Raises:
            AggregatorError: the call failed, or its reply is not a valid judgement.
        """
        name = type(self).__name__
        if not result.ok:
            raise AggregatorError(name, self.agent.name, result.record.error)
        reply = result.output
        if isinstance(reply, dict):
            if reply.get("parsed") is not None:
                parsed = reply["parsed"]
                return parsed if isinstance(parsed, self.schema) else self.schema(**parsed)
            reply = reply.get("raw")
        text = reply.text if isinstance(reply, (BaseMessage, ClientReply)) else str(reply)
        try:
            return self.schema.model_validate(_first_json_object(text))
        except (ValueError, ValidationError, TypeError) as exc:
            raise AggregatorError(
                name,
                self.agent.name,
                f"the judge's reply is not a valid {self.schema.__name__}: {text[:200]!r} ({exc})",
            ) from exc

    def _run(self, report: StepReport, config: RunnableConfig) -> Any:
        [result] = self.run_jobs([self._judge_job(report.state, config)], report, config)
        return self._judged(report, result)

    async def _arun(self, report: StepReport, config: RunnableConfig) -> Any:
        [result] = await self.arun_jobs([self._judge_job(report.state, config)], report, config)
        return self._judged(report, result)

    def _judged(self, report: StepReport, result: Result) -> Any:
        native = result.replaced
        if native is not None and self.structured == "auto" and not _transient(native.exception):
            # Native structured output was refused (e.g. llama.cpp rejects
            # response_format json_schema) or unusable: later judgements by this
            # agent go straight to JSON mode. A timeout or lost connection does not count.
            self.agent.structured_output_failed = True
        return self._apply(report, self.parse(result), result)

    def _apply(self, report: StepReport, judgement: Any, result: Result) -> Any:
        raise NotImplementedError


class Rank(_Judge):
    """Keep the ``n`` best candidates, as ranked by one judge agent.

    Args:
        agent: the judge (model string, chat model, Runnable or client function).
        n: how many candidates to keep (>= 1).
        temperature: default 0 (a judgement, not a creative task); alias ``temp``.
        max_tokens: output budget of the judgement; default 512. The defaults apply
            only where the judge did not set these itself (the rule of :class:`Propose`).
        prompt: replaces the ranking instruction (the JSON format hint stays).
        structured: ``"auto"`` (native structured output, then JSON mode if that
            fails), ``"native"`` or ``"json"``.
        client, prices: as for :class:`Propose`.

    Output: an :class:`MoAState` with the top ``n`` candidates, best first (all of
    them, reordered, if there are no more than ``n``). The judge's call is recorded.

    Raises:
        ConfigurationError: ``n`` < 1 or a bad parameter, at construction.
        AggregatorError: the judge failed, or its ranking names fewer than
            ``min(n, candidates)`` distinct valid response numbers (numbers out of
            range and repeats are ignored; the raw reply is in the history).
    """

    schema: ClassVar[type[BaseModel]] = RankingJudgement
    instruction: ClassVar[str] = RANK_PROMPT
    json_hint: ClassVar[str] = JSON_RANK_INSTRUCTION

    n: int

    def __init__(self, agent: Any, n: int, **kwargs: Any) -> None:
        super().__init__(agent, n=validate_positive_int(n, "n"), **kwargs)

    @property
    def params(self) -> dict[str, Any]:
        return {**super().params, "n": self.n}

    def _apply(self, report: StepReport, judgement: RankingJudgement, result: Result) -> MoAState:
        state = report.state
        count = len(state.candidates)
        order: list[int] = []
        for number in judgement.ranking:
            if 1 <= number <= count and number - 1 not in order:
                order.append(number - 1)
        keep = min(self.n, count)
        if len(order) < keep:
            raise AggregatorError(
                "Rank",
                self.agent.name,
                f"ranking {judgement.ranking} names {len(order)} "
                f"distinct response number(s) in 1..{count}; {keep} needed",
            )
        candidates = [state.candidates[i] for i in order[:keep]]
        return state.model_copy(
            update={"candidates": candidates, "calls": [*state.calls, *report.calls]}
        )


class Vote(_Judge):
    """Pick the consensus answer among the candidates (universal self-consistency,
    Chen et al. 2023, arXiv 2311.17311).

    The judge names the most consistent candidate; the pipeline ends with that
    candidate's text, verbatim. Arguments as for :class:`Rank` (without ``n``).

    Output: an ``AIMessage`` with the chosen candidate's text, ``usage_metadata``
    summing every call of the run and ``response_metadata["moa"]["chosen"]`` the
    chosen candidate's index (0-based).

    Raises:
        AggregatorError: the judge failed or named no valid candidate; no candidate
            is returned in its place.
    """

    schema: ClassVar[type[BaseModel]] = VoteJudgement
    instruction: ClassVar[str] = VOTE_PROMPT
    json_hint: ClassVar[str] = JSON_VOTE_INSTRUCTION

    @property
    def OutputType(self) -> Any:  # noqa: N802
        from langchain_core.messages import AIMessage

        return AIMessage

    def _apply(self, report: StepReport, judgement: VoteJudgement, result: Result) -> Any:
        state = report.state
        if not 1 <= judgement.choice <= len(state.candidates):
            raise AggregatorError(
                "Vote",
                self.agent.name,
                f"choice {judgement.choice} is not a response number (1..{len(state.candidates)})",
            )
        chosen = judgement.choice - 1
        calls = [*state.calls, *report.calls]
        return final_message(
            state.candidates[chosen].text, calls, state.layer + 1, result.record, chosen=chosen
        )


def _first_json_object(text: str) -> dict[str, Any]:
    """The first complete JSON object in ``text`` (prose or code fences around it
    are skipped; a truncated object is not accepted).

    Raises:
        ValueError: ``text`` holds no complete JSON object.
    """
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    raise ValueError("no complete JSON object in the reply")


def _transient(exc: BaseException | None) -> bool:
    """A timeout, lost connection or rate limit: says nothing about structured output."""
    transient: tuple[type[BaseException], ...] = (
        TimeoutError,
        ConnectionError,
        httpx.TransportError,
    )
    openai = sys.modules.get("openai")  # only an agent that loaded the SDK raises its errors
    if openai is not None:
        transient += (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError)
    return isinstance(exc, transient)
