"""Recursive self-aggregation (RSA): a population of candidates improved by aggregating
random subsets, round after round.

Venkatraman et al. 2025, "Recursive Self-Aggregation Unlocks Deep Thinking in Large
Language Models" (arXiv 2509.26626): start from a population of N candidate
solutions; in each of T rounds every one of N aggregations reads a random subset of K
members of the current population and writes an improved solution; the N outputs form
the next population. Good partial reasoning spreads through the population instead of
depending on one aggregator reading everything once.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, ClassVar

from langchain_core.runnables import RunnableConfig

from langchain_moa._prompts import reference_messages
from langchain_moa._settings import DEFAULT, _Default
from langchain_moa.errors import ConfigurationError, LayerFailedError
from langchain_moa.steps._aggregate import single_agent
from langchain_moa.steps._base import (
    Job,
    Result,
    SingleAgentStep,
    StepReport,
    validate_positive_int,
)
from langchain_moa.steps._layers import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE
from langchain_moa.types import Candidate, MoAState

__all__ = ["RecursiveAggregate", "RSA_PROMPT"]

RSA_PROMPT = (
    "You are given several candidate solutions to the user's latest query. Some of them "
    "may be wrong. Compare their reasoning step by step, find and fix the errors, keep "
    "the correct steps, and write one improved, complete solution in the form the query "
    "asks for. Do not mention the candidates."
)


class RecursiveAggregate(SingleAgentStep):
    """Recursive self-aggregation (RSA, arXiv 2509.26626): ``rounds`` rounds in which
    every member of the population aggregates a random subset of ``k`` members.

    The population is the input candidates (N of them; put ``Propose([model] * N)``
    first). Round ``t`` makes N calls; call ``i`` sees the conversation with ``k``
    members drawn without replacement from the current population (``prompt`` or
    :data:`RSA_PROMPT`, then the numbered candidates, in a system message). Its
    reply replaces member ``i``; a failed call keeps the old member (the failure is in
    ``calls``), and a round where fewer than ``min_success`` calls succeed raises.
    Each round is one MoA layer.

    Args:
        agent: the aggregating agent (model string, chat model, Runnable, client fn);
            the paper uses the proposer itself.
        k: subset size, 1 <= k; with k >= N every call sees the whole population.
        rounds: T >= 1.
        seed: makes the subsets reproducible (a fresh ``random.Random(seed)`` per
            invocation).
        min_success: calls per round that must succeed (>= 1), default 1.
        temperature, max_tokens, prompt, max_concurrency, client, prices: as for
            :class:`Propose` (defaults 0.7 and 2048).

    Input: an :class:`MoAState` with at least one candidate.
    Output: an :class:`MoAState` with the final population (N candidates, in order);
    end the pipeline with :class:`MajorityVote`, :class:`Aggregate` or ``Take(1)``.
    Every call of every round is in the history; ``params`` record N, k, T and seed.

    Raises:
        ConfigurationError: a bad parameter, at construction.
        LayerFailedError: no input candidates, or a round with fewer than
            ``min_success`` successful calls (every cause listed).
    """

    defaults: ClassVar[tuple[float, int]] = (DEFAULT_TEMPERATURE, DEFAULT_MAX_TOKENS)
    k: int = 2
    rounds: int = 1
    seed: int | None = None
    min_success: int = 1

    def __init__(
        self,
        agent: Any,
        *,
        k: int = 2,
        rounds: int = 1,
        seed: int | None = None,
        min_success: int = 1,
        temperature: float | None | _Default = DEFAULT,
        max_tokens: int | None | _Default = DEFAULT,
        temp: float | None = None,
        prompt: str | None = None,
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
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigurationError(f"seed must be an int or None, got {seed!r}")
        super().__init__(
            agent=single_agent(agent, client),
            k=validate_positive_int(k, "k"),
            rounds=validate_positive_int(rounds, "rounds"),
            seed=seed,
            min_success=validate_positive_int(min_success, "min_success"),
            prices=prices,
            **settings,
        )

    @property
    def params(self) -> dict[str, Any]:
        return {
            **super().params,
            "k": self.k,
            "rounds": self.rounds,
            "seed": self.seed,
        }

    def _round_jobs(
        self, state: MoAState, rng: random.Random, config: RunnableConfig
    ) -> tuple[list[Job], list[list[int]]]:
        n = len(state.candidates)
        layer = state.layer + 1
        jobs, subsets = [], []
        for i in range(n):
            subset = rng.sample(range(n), min(self.k, n))
            subsets.append(subset)
            texts = [state.candidates[j].text for j in subset]
            messages = reference_messages(state.messages, self.prompt or RSA_PROMPT, texts)
            jobs.append(self.job(self.agent, i, messages, layer, config, sample=i))
        return jobs, subsets

    def _next(self, report: StepReport, state: MoAState, results: list[Result]) -> MoAState:
        calls = [*report.state.calls, *report.calls]
        succeeded = [r for r in results if r.ok]
        needed = min(self.min_success, len(results))
        if len(succeeded) < needed:
            failures = [(r.record.model, r.record.error) for r in results if not r.ok]
            raise LayerFailedError("RecursiveAggregate", failures, needed)
        index = {id(c): i for i, c in enumerate(calls)}
        population = []
        for result, old in zip(results, state.candidates, strict=True):
            if not result.ok:
                population.append(old)
                continue
            rec = result.record
            population.append(
                Candidate(
                    text=rec.output or "",
                    model=rec.model,
                    step=rec.step,
                    layer=rec.layer,
                    agent_index=rec.agent_index,
                    call_index=index[id(rec)],
                    input_tokens=rec.input_tokens,
                    output_tokens=rec.output_tokens,
                    latency_s=rec.latency_s,
                    cost_usd=rec.cost_usd,
                )
            )
        return MoAState(
            messages=state.messages, candidates=population, calls=calls, layer=state.layer + 1
        )

    def _start(self, report: StepReport) -> random.Random:
        if not report.state.candidates:
            raise LayerFailedError(
                "RecursiveAggregate",
                [("input", "no candidates: put Propose([model] * N) before this step")],
            )
        return random.Random(self.seed)

    def _run(self, report: StepReport, config: RunnableConfig) -> MoAState:
        rng, state = self._start(report), report.state
        for _ in range(self.rounds):
            jobs, _subsets = self._round_jobs(state, rng, config)
            state = self._next(report, state, self.run_jobs(jobs, report, config))
        return state

    async def _arun(self, report: StepReport, config: RunnableConfig) -> MoAState:
        rng, state = self._start(report), report.state
        for _ in range(self.rounds):
            jobs, _subsets = self._round_jobs(state, rng, config)
            state = self._next(report, state, await self.arun_jobs(jobs, report, config))
        return state
