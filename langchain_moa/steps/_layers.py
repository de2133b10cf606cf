"""Steps that produce a new layer of candidates: Propose, Synthesize, Refine."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableConfig

from langchain_moa._agents import Agent, make_agents
from langchain_moa._prompts import AGGREGATE_PROMPT, REFINE_PROMPT, reference_messages, with_system
from langchain_moa.errors import ConfigurationError, LayerFailedError
from langchain_moa.steps._base import (
    DEFAULT,
    Job,
    LLMStep,
    Result,
    StepReport,
    _Default,
    validate_positive_int,
)
from langchain_moa.types import Candidate, MoAState

DEFAULT_TEMPERATURE = 0.7
"""Sampling temperature of the MoA paper's evaluation (Wang et al. 2024, §3.1)."""
DEFAULT_MAX_TOKENS = 2048
"""Output budget per call in the MoA paper's evaluation (the demos use 512)."""


class _LayerStep(LLMStep):
    """Base of the candidate-producing steps; see :class:`Propose` for the arguments."""

    defaults: ClassVar[tuple[float, int]] = (DEFAULT_TEMPERATURE, DEFAULT_MAX_TOKENS)
    agents: list[Agent]
    min_success: int = 1
    degrade: bool = False

    def __init__(
        self,
        agents: Sequence[Any],
        *,
        temperature: float | None | _Default = DEFAULT,
        max_tokens: int | None | _Default = DEFAULT,
        temp: float | None = None,
        prompt: str | None = None,
        min_success: int = 1,
        degrade: bool = False,
        max_concurrency: int | None = None,
        client: Callable[..., Any] | None = None,
        prices: dict[str, tuple[float, float]] | None = None,
    ) -> None:
        settings = self.check_settings(
            temperature=temperature,
            max_tokens=max_tokens,
            temp=temp,
            max_concurrency=max_concurrency,
            prompt=prompt,
        )
        wrapped = make_agents(agents, client)
        validate_positive_int(min_success, "min_success")
        if min_success > len(wrapped):
            raise ConfigurationError(
                f"min_success must be between 1 and the number of agents "
                f"({len(wrapped)}), got {min_success}"
            )
        super().__init__(
            agents=wrapped,
            min_success=min_success,
            degrade=bool(degrade),
            prices=prices,
            **settings,
        )

    def step_agents(self) -> list[Agent]:
        return self.agents

    @property
    def params(self) -> dict[str, Any]:
        return {
            "agents": [a.name for a in self.agents],
            **super().params,
            "min_success": self.min_success,
        }

    def _jobs(self, state: MoAState, layer: int, config: RunnableConfig) -> list[Job]:
        raise NotImplementedError

    def _run(self, report: StepReport, config: RunnableConfig) -> MoAState:
        layer = report.state.layer + 1
        jobs = self._jobs(report.state, layer, config)
        return self._finish(report, self.run_jobs(jobs, report, config), layer)

    async def _arun(self, report: StepReport, config: RunnableConfig) -> MoAState:
        layer = report.state.layer + 1
        jobs = self._jobs(report.state, layer, config)
        return self._finish(report, await self.arun_jobs(jobs, report, config), layer)

    def _finish(self, report: StepReport, results: list[Result], layer: int) -> MoAState:
        """Apply the quorum rule and build the next state.

        Raises:
            LayerFailedError: fewer than ``min_success`` calls succeeded and
                ``degrade`` is off (or there is nothing earlier to keep).
        """
        state = report.state
        calls = [*state.calls, *report.calls]
        succeeded = [r for r in results if r.ok]
        # Refine makes one call per candidate, which may be fewer than min_success.
        needed = min(self.min_success, len(results))
        if len(succeeded) < needed:
            if self.degrade and state.candidates:
                # Keep the previous layer's candidates; the failures stay in `calls`.
                return state.model_copy(update={"calls": calls})
            failures = [(r.record.model, r.record.error) for r in results if not r.ok]
            raise LayerFailedError(type(self).__name__, failures, needed)
        index = {id(record): len(state.calls) + i for i, record in enumerate(report.calls)}
        candidates = self._candidates(state, results, index)
        return MoAState(messages=state.messages, candidates=candidates, calls=calls, layer=layer)

    def _candidates(
        self, state: MoAState, results: list[Result], index: dict[int, int]
    ) -> list[Candidate]:
        return [_candidate(r, index) for r in results if r.ok]


def _candidate(result: Result, index: dict[int, int]) -> Candidate:
    record = result.record
    return Candidate(
        text=record.output or "",
        model=record.model,
        step=record.step,
        layer=record.layer,
        agent_index=record.agent_index,
        call_index=index[id(record)],
        input_tokens=record.input_tokens,
        output_tokens=record.output_tokens,
        latency_s=record.latency_s,
        cost_usd=record.cost_usd,
    )


def _require_candidates(step: str, state: MoAState) -> None:
    if not state.candidates:
        raise LayerFailedError(step, [("input", "no candidates: put Propose before this step")])


class Propose(_LayerStep):
    """Every agent answers the conversation, in parallel: MoA's first layer.

    Args:
        agents: the proposers — model strings (``"provider/model"``,
            ``"provider:model"``, ``"local/qwen2.5-coder-0.5b"``), chat models,
            Runnables returning an ``AIMessage``, or mixture-llm client functions.
            Repeat one model to sample it several times (Self-MoA).
        temperature: sampling temperature (alias ``temp``); default 0.7, the paper's.
        max_tokens: output budget per call, in tokens; default 2048.
            Both follow one rule for every agent kind: a value given here is sent on
            every call, overriding the agent's own; the default is sent only where the
            agent did not set that setting itself (constructor field, ``.bind``,
            ``init_chat_model`` kwarg); ``None`` sends nothing (see
            :mod:`langchain_moa._settings`). Each call of the step has its own LangChain
            cache entries, so repeated agents give distinct samples.
        prompt: optional extra system instruction for the proposers (appended to an
            existing system message). Never formatted, so braces are safe.
        min_success: how many calls must succeed (1..len(agents)); default 1.
        degrade: (Synthesize / Refine) keep the previous candidates when fewer than
            ``min_success`` calls succeed, instead of raising.
        max_concurrency: at most this many calls at once (default: all).
        client: a mixture-llm client ``(model, messages, temp, max_tokens) ->
            (text, input_tokens, output_tokens)`` that serves the string agents.
        prices: ``{model: (input, output)}`` in USD per million tokens, overriding
            :mod:`langchain_moa.pricing` for the history's cost.

    Input: a str, messages, a PromptValue or an :class:`MoAState`.
    Output: an :class:`MoAState` whose candidates are the successful replies, in
    agent order; failed and empty replies are recorded in ``state.calls``.

    Raises:
        ConfigurationError: at construction, for an empty agent list or a parameter
            out of range (the message names it).
        LayerFailedError: fewer than ``min_success`` calls succeeded; lists every cause.
    """

    def _jobs(self, state: MoAState, layer: int, config: RunnableConfig) -> list[Job]:
        messages = with_system(state.messages, self.prompt) if self.prompt else state.messages
        return [
            self.job(a, i, list(messages), layer, config, sample=i)
            for i, a in enumerate(self.agents)
        ]


class Synthesize(_LayerStep):
    """Every agent writes a new answer from all current candidates: a middle MoA layer.

    Each agent sees the conversation with the aggregate-and-synthesize prompt
    (Wang et al. 2024, Table 1) and the candidates as "Responses from models" in a
    system message before the user's turns. ``prompt`` replaces the instruction;
    the numbered responses are still appended. Arguments as for :class:`Propose`.

    Raises:
        LayerFailedError: no input candidates, or fewer than ``min_success`` calls
            succeeded (unless ``degrade``).
    """

    def _jobs(self, state: MoAState, layer: int, config: RunnableConfig) -> list[Job]:
        _require_candidates(type(self).__name__, state)
        messages = reference_messages(state.messages, self.prompt or AGGREGATE_PROMPT, state.texts)
        return [
            self.job(a, i, list(messages), layer, config, sample=i)
            for i, a in enumerate(self.agents)
        ]


class Refine(_LayerStep):
    """Each candidate is improved individually.

    Candidate ``i`` is refined by agent ``i % len(agents)``, which sees the
    conversation, the draft as an earlier assistant turn and a request to improve
    it (``prompt`` replaces that request). A failed refinement keeps the original
    candidate (the failure is in ``state.calls``); fewer than ``min_success``
    successful refinements raise unless ``degrade``. Arguments as for :class:`Propose`.
    """

    def _jobs(self, state: MoAState, layer: int, config: RunnableConfig) -> list[Job]:
        _require_candidates(type(self).__name__, state)
        request = self.prompt or REFINE_PROMPT
        jobs = []
        for i, candidate in enumerate(state.candidates):
            agent_index = i % len(self.agents)
            messages = [*state.messages, AIMessage(content=candidate.text), HumanMessage(request)]
            agent = self.agents[agent_index]
            jobs.append(self.job(agent, agent_index, messages, layer, config, sample=i))
        return jobs

    def _candidates(
        self, state: MoAState, results: list[Result], index: dict[int, int]
    ) -> list[Candidate]:
        return [
            _candidate(r, index) if r.ok else original
            for r, original in zip(results, state.candidates, strict=True)
        ]
