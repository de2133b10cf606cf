"""Self-MoA-Seq: aggregation over a sliding window, so the aggregator's context stays
bounded however many samples there are.

Li et al. 2025, "Rethinking Mixture-of-Agents: Is Mixing Different Large Language
Models Beneficial?" (arXiv 2502.00674), §5: the aggregator first synthesises a window
of ``w`` samples; each later call reads the synthesis so far plus the next ``w - 1``
samples and writes a new synthesis; the last synthesis is the answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig

from langchain_moa._prompts import AGGREGATE_PROMPT, reference_messages
from langchain_moa._settings import DEFAULT, _Default
from langchain_moa.errors import AggregatorError
from langchain_moa.steps._aggregate import final_message, single_agent
from langchain_moa.steps._base import (
    Job,
    Result,
    SingleAgentStep,
    StepReport,
    validate_positive_int,
)
from langchain_moa.steps._layers import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE
from langchain_moa.types import MoAState

__all__ = ["SequentialAggregate", "windows"]

SYNTHESIS_NOTE = "Response 1 is the synthesis of the earlier responses so far; the others are new."


def windows(n: int, window: int) -> list[list[int]]:
    """The candidate indices each call reads (the running synthesis not included):
    ``[0..w-1]``, then ``w - 1`` new ones per call. ``windows(7, 3)`` is
    ``[[0, 1, 2], [3, 4], [5, 6]]``: 3 calls for 7 samples."""
    first = list(range(min(window, n)))
    out = [first]
    i = len(first)
    while i < n:
        out.append(list(range(i, min(i + window - 1, n))))
        i += window - 1
    return out


class SequentialAggregate(SingleAgentStep):
    """Aggregate the candidates through a sliding window (Self-MoA-Seq, arXiv 2502.00674).

    Call 1 aggregates the first ``window`` candidates; call ``j > 1`` aggregates the
    synthesis of call ``j - 1`` (shown first, and said to be the synthesis so far) with
    the next ``window - 1`` candidates. With N candidates that is
    ``1 + ceil((N - window) / (window - 1))`` calls, each reading at most ``window``
    texts. Calls run one after another (each needs the previous synthesis).

    Args:
        agent: the aggregator (model string, chat model, Runnable, client fn).
        window: texts per call, >= 2 (default 3).
        temperature, max_tokens, prompt, client, prices: as for :class:`Aggregate`.

    Input: an :class:`MoAState` with at least one candidate.
    Output: an ``AIMessage`` with the last synthesis; ``usage_metadata`` sums every
    call of the run; ``response_metadata["moa"]["windows"]`` lists the candidate
    indices each call read.

    Raises:
        ConfigurationError: ``window`` < 2 or another bad parameter, at construction.
        AggregatorError: no candidates, or any window's call failed (no candidate or
            partial synthesis is returned in its place; the failure is in the history).
    """

    defaults: ClassVar[tuple[float, int]] = (DEFAULT_TEMPERATURE, DEFAULT_MAX_TOKENS)
    window: int = 3

    def __init__(
        self,
        agent: Any,
        *,
        window: int = 3,
        temperature: float | None | _Default = DEFAULT,
        max_tokens: int | None | _Default = DEFAULT,
        temp: float | None = None,
        prompt: str | None = None,
        client: Callable[..., Any] | None = None,
        prices: dict[str, tuple[float, float]] | None = None,
    ) -> None:
        settings = self.check_settings(
            temperature=temperature,
            max_tokens=max_tokens,
            temp=temp,
            max_concurrency=None,
            prompt=prompt,
        )
        super().__init__(
            agent=single_agent(agent, client),
            window=validate_positive_int(window, "window", minimum=2),
            prices=prices,
            **settings,
        )

    @property
    def params(self) -> dict[str, Any]:
        return {**super().params, "window": self.window}

    @property
    def OutputType(self) -> Any:  # noqa: N802
        return AIMessage

    def _job(
        self,
        state: MoAState,
        j: int,
        indices: list[int],
        synthesis: str | None,
        config: RunnableConfig,
    ) -> Job:
        texts = [state.candidates[i].text for i in indices]
        instruction = self.prompt or AGGREGATE_PROMPT
        if synthesis is not None:
            texts = [synthesis, *texts]
            instruction = f"{instruction} {SYNTHESIS_NOTE}"
        messages = reference_messages(state.messages, instruction, texts)
        return self.job(self.agent, j, messages, state.layer + 1, config, sample=j)

    def _check(self, result: Result) -> str:
        if not result.ok:
            raise AggregatorError("SequentialAggregate", self.agent.name, result.record.error)
        return result.record.output or ""

    def _plan(self, report: StepReport) -> list[list[int]]:
        if not report.state.candidates:
            raise AggregatorError(
                "SequentialAggregate", self.agent.name, "no candidates to aggregate"
            )
        return windows(len(report.state.candidates), self.window)

    def _message(self, report: StepReport, result: Result, plan: list[list[int]]) -> AIMessage:
        calls = [*report.state.calls, *report.calls]
        message = final_message(result.record.output or "", calls, result.job.layer, result.record)
        message.response_metadata["moa"]["windows"] = plan
        return message

    def _run(self, report: StepReport, config: RunnableConfig) -> AIMessage:
        plan, synthesis, result = self._plan(report), None, None
        for j, indices in enumerate(plan):
            [result] = self.run_jobs(
                [self._job(report.state, j, indices, synthesis, config)], report, config
            )
            synthesis = self._check(result)
        assert result is not None
        return self._message(report, result, plan)

    async def _arun(self, report: StepReport, config: RunnableConfig) -> AIMessage:
        plan, synthesis, result = self._plan(report), None, None
        for j, indices in enumerate(plan):
            job = self._job(report.state, j, indices, synthesis, config)
            [result] = await self.arun_jobs([job], report, config)
            synthesis = self._check(result)
        assert result is not None
        return self._message(report, result, plan)
