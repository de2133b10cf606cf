"""Self-consistency: majority vote over extracted answers, fixed or adaptive sampling.

* :class:`MajorityVote` — Wang et al. 2022, "Self-Consistency Improves Chain of
  Thought Reasoning in Language Models" (arXiv 2203.11171): extract a canonical
  answer from every candidate and return the most frequent one. No model call,
  except in free-text mode, where one judge call groups equivalent answers.
* :class:`AdaptiveMajorityVote` — Aggarwal et al. 2023, "Let's Sample Step by Step:
  Adaptive-Consistency for Efficient Reasoning" (arXiv 2305.11860): draw samples in
  rounds and stop as soon as the leading answer cannot be overtaken or is confident
  enough, so easy questions cost 2-3 calls instead of ``max_samples``.

**Tie rule** (both steps): among answers with the same number of votes, the one
whose first supporter comes earliest in the candidate order wins. Candidates with
no extractable answer abstain; they count in ``shares``' denominator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from langchain_core.embeddings import Embeddings
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableConfig
from pydantic import BaseModel, Field

from langchain_moa._agents import Agent
from langchain_moa._prompts import with_system
from langchain_moa.errors import AggregatorError, ConfigurationError
from langchain_moa.steps._aggregate import final_message, single_agent
from langchain_moa.steps._base import (
    DEFAULT,
    Job,
    LLMStep,
    Result,
    SingleAgentStep,
    StepReport,
    _Default,
    validate_positive_int,
)
from langchain_moa.steps._extract import extractor
from langchain_moa.steps._judges import _Judge, _transient
from langchain_moa.steps._layers import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE
from langchain_moa.types import CallRecord, Candidate, MoAState

__all__ = ["MajorityVote", "AdaptiveMajorityVote", "Tally", "EquivalenceJudgement", "tally"]

EQUIVALENCE_PROMPT = (
    "You are given several candidate responses to the user's latest query. Group them "
    "by their final answer: responses that reach the same final answer, even if worded "
    "or reasoned differently, belong to the same group. Do not judge which answer is "
    "right; only which responses agree."
)
JSON_EQUIVALENCE_INSTRUCTION = (
    'Answer with a JSON object only, of the form {"groups": [[1, 3], [2]]}: a list of '
    "groups, each a list of response numbers that give the same final answer; every "
    "response number in exactly one group."
)


class EquivalenceJudgement(BaseModel):
    """A judge's grouping of the candidates into equivalent answers."""

    groups: list[list[int]] = Field(
        description="groups of response numbers (1-based) that give the same final answer"
    )


@dataclass(frozen=True)
class Tally:
    """The outcome of a majority vote over ``n`` candidates.

    Attributes:
        answers: each candidate's canonical answer (``None``: abstained), in order.
        votes: answer -> number of supporters, in order of first appearance.
        winner: the winning answer (``None`` when nobody voted).
        supporters: indices (0-based) of the winner's candidates, in order.
    """

    answers: tuple[Hashable | None, ...]
    votes: dict[Hashable, int]
    winner: Hashable | None
    supporters: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.answers)

    @property
    def runner_up(self) -> int:
        """Votes of the second most frequent answer (0 if none)."""
        counts = sorted(self.votes.values(), reverse=True)
        return counts[1] if len(counts) > 1 else 0

    @property
    def leader(self) -> int:
        return len(self.supporters)

    def shares(self) -> dict[str, float]:
        """answer (as text) -> votes / candidates (abstentions count in the denominator)."""
        return {str(a): v / self.n for a, v in self.votes.items()} if self.n else {}


def tally(answers: Sequence[Hashable | None]) -> Tally:
    """Count ``answers`` (``None`` abstains) and pick the winner by the tie rule:
    most votes, then earliest first supporter."""
    votes: dict[Hashable, int] = {}
    first: dict[Hashable, int] = {}
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        votes[answer] = votes.get(answer, 0) + 1
        first.setdefault(answer, i)
    if not votes:
        return Tally(tuple(answers), {}, None, ())
    winner = min(votes, key=lambda a: (-votes[a], first[a]))
    supporters = tuple(i for i, a in enumerate(answers) if a == winner)
    return Tally(tuple(answers), votes, winner, supporters)


def _provenance(state: MoAState, index: int) -> dict[str, Any]:
    c = state.candidates[index]
    return {
        "index": index,
        "model": c.model,
        "step": c.step,
        "layer": c.layer,
        "agent_index": c.agent_index,
        "call_index": c.call_index,
    }


def _source_record(calls: list[CallRecord], candidate: Candidate) -> CallRecord:
    if 0 <= candidate.call_index < len(calls):
        return calls[candidate.call_index]
    return CallRecord(
        step=candidate.step,
        layer=candidate.layer,
        agent_index=candidate.agent_index,
        model=candidate.model,
    )


def _vote_message(
    state: MoAState,
    calls: list[CallRecord],
    result: Tally,
    output: str,
    extra: dict[str, Any],
) -> AIMessage:
    """The final ``AIMessage`` of a vote: the first supporter's text (or the answer);
    with no winner (``no_answer="first"``), the first candidate's text."""
    chosen = result.supporters[0] if result.supporters else 0
    candidate = state.candidates[chosen]
    if result.winner is None:
        text = candidate.text
        extra = {**extra, "no_answer": True}
    else:
        text = candidate.text if output == "candidate" else str(result.winner)
    message = final_message(
        text, calls, state.layer + 1, _source_record(calls, candidate), chosen=chosen
    )
    message.response_metadata["moa"].update(
        {
            "answer": None if result.winner is None else str(result.winner),
            "votes": {str(a): v for a, v in result.votes.items()},
            "shares": result.shares(),
            "supporters": list(result.supporters),
            "abstained": [i for i, a in enumerate(result.answers) if a is None],
            "provenance": [_provenance(state, i) for i in result.supporters or (chosen,)],
            **extra,
        }
    )
    return message


def _check_no_answer(no_answer: Any) -> str:
    if no_answer not in ("raise", "first"):
        raise ConfigurationError(f"no_answer must be 'raise' or 'first', got {no_answer!r}")
    return no_answer


def _check_output(output: Any) -> str:
    if output not in ("candidate", "answer"):
        raise ConfigurationError(f"output must be 'candidate' or 'answer', got {output!r}")
    return output


class MajorityVote(_Judge):
    """Return the most frequent answer among the candidates (self-consistency,
    Wang et al. 2022, arXiv 2203.11171).

    Three ways to decide which candidates agree (give exactly one):

    * ``extract`` (default ``"number"``): a canonical answer per candidate, no model
      call — ``"number"`` (:class:`NumberAnswer`), ``"choice"``
      (:class:`ChoiceAnswer`), :class:`RegexAnswer`, :class:`JsonFieldAnswer`, or any
      callable ``text -> answer`` (``None`` abstains);
    * ``judge=agent``: free text — one call asks the judge to group the candidates
      that give the same final answer (structured output ``{"groups": [[1, 3], [2]]}``,
      as for :class:`Vote`); a candidate left out of every group is its own group;
    * ``embeddings=Embeddings`` (any LangChain ``Embeddings``): free text — candidates
      whose cosine similarity to a group's first member is at least ``similarity``
      join that group (greedy, in candidate order). The embedding request is not a
      chat call and is not in ``calls``.

    Tie rule: most votes, then the answer whose first supporter comes earliest.

    Args:
        extract: see above.
        judge: the equivalence judge (model string, chat model, Runnable, client fn).
        embeddings: see above. ``similarity`` in (0, 1], default 0.9.
        output: ``"candidate"`` (default) returns the first supporting candidate's text
            verbatim; ``"answer"`` returns the canonical answer only.
        no_answer: when no candidate has an extractable answer: ``"raise"`` (default)
            or ``"first"`` — return the first candidate, marked
            ``response_metadata["moa"]["no_answer"] = True`` (for questions that may not
            have the answer kind the extractor looks for).
        temperature, max_tokens, prompt, structured, client, prices: of the judge call,
            as for :class:`Vote` (default temperature 0, 512 tokens).

    Input: an :class:`MoAState` with at least one candidate.
    Output: an ``AIMessage``; ``usage_metadata`` sums every call of the run;
    ``response_metadata["moa"]`` adds ``answer``, ``votes`` (answer -> count),
    ``shares`` (answer -> count / candidates), ``chosen`` (0-based index of the
    returned candidate), ``supporters``, ``abstained`` and ``provenance`` (model,
    step, layer, agent index and call index of every winning candidate).

    Raises:
        ConfigurationError: a bad parameter, or more than one mode, at construction.
        AggregatorError: no candidates, no candidate with an answer, or the judge failed.
    """

    schema: ClassVar[type[BaseModel]] = EquivalenceJudgement
    instruction: ClassVar[str] = EQUIVALENCE_PROMPT
    json_hint: ClassVar[str] = JSON_EQUIVALENCE_INSTRUCTION

    agent: Agent | None = None  # type: ignore[assignment]
    extract: Any = None
    embeddings: Any = None
    similarity: float = 0.9
    output: str = "candidate"
    no_answer: str = "raise"

    def __init__(
        self,
        extract: Any = DEFAULT,
        *,
        judge: Any = None,
        embeddings: Embeddings | None = None,
        similarity: float = 0.9,
        output: Literal["candidate", "answer"] = "candidate",
        no_answer: Literal["raise", "first"] = "raise",
        temperature: float | None | _Default = DEFAULT,
        max_tokens: int | None | _Default = DEFAULT,
        temp: float | None = None,
        prompt: str | None = None,
        structured: Literal["auto", "native", "json"] = "auto",
        client: Callable[..., Any] | None = None,
        prices: dict[str, tuple[float, float]] | None = None,
    ) -> None:
        given = (
            ("extract", extract is not DEFAULT),
            ("judge", judge is not None),
            ("embeddings", embeddings is not None),
        )
        modes = [name for name, on in given if on]
        if len(modes) > 1:
            raise ConfigurationError(
                f"give one of extract, judge or embeddings, got {' and '.join(modes)}"
            )
        if embeddings is not None and not isinstance(embeddings, Embeddings):
            raise ConfigurationError(
                f"embeddings must be a LangChain Embeddings instance, "
                f"got {type(embeddings).__name__}"
            )
        if (
            isinstance(similarity, bool)
            or not isinstance(similarity, (int, float))
            or not 0 < similarity <= 1
        ):
            raise ConfigurationError(f"similarity must be in (0, 1], got {similarity!r}")
        fields = {
            "extract": None
            if modes and modes[0] != "extract"
            else extractor("number" if extract is DEFAULT else extract),
            "embeddings": embeddings,
            "similarity": float(similarity),
            "output": _check_output(output),
            "no_answer": _check_no_answer(no_answer),
        }
        settings = {
            "temperature": temperature,
            "max_tokens": max_tokens,
            "temp": temp,
            "prompt": prompt,
            "prices": prices,
        }
        if judge is not None:
            super().__init__(judge, structured=structured, client=client, **settings, **fields)
        else:
            if structured not in ("auto", "native", "json"):
                raise ConfigurationError(
                    f"structured must be 'auto', 'native' or 'json', got {structured!r}"
                )
            checked = self.check_settings(
                temperature=temperature,
                max_tokens=max_tokens,
                temp=temp,
                max_concurrency=None,
                prompt=prompt,
            )
            LLMStep.__init__(self, prices=prices, structured=structured, **checked, **fields)

    def step_agents(self) -> list[Agent]:
        return [] if self.agent is None else [self.agent]

    @property
    def mode(self) -> str:
        if self.agent is not None:
            return "judge"
        return "embeddings" if self.embeddings is not None else "extract"

    @property
    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"mode": self.mode, "output": self.output}
        if self.extract is not None:
            params["extract"] = _describe_extractor(self.extract)
        if self.agent is not None:
            params.update(
                {
                    "agent": self.agent.name,
                    **LLMStep.params.fget(self),  # type: ignore[attr-defined]
                    "structured": self.structured,
                }
            )
        if self.embeddings is not None:
            params.update(
                {"embeddings": type(self.embeddings).__name__, "similarity": self.similarity}
            )
        return params

    @property
    def OutputType(self) -> Any:  # noqa: N802
        return AIMessage

    def _require(self, state: MoAState) -> None:
        if not state.candidates:
            raise AggregatorError(type(self).__name__, self._name(), "no candidates to vote on")

    def _name(self) -> str:
        return self.agent.name if self.agent is not None else self.mode

    def _run(self, report: StepReport, config: RunnableConfig) -> AIMessage:
        state = report.state
        self._require(state)
        if self.agent is not None:
            [result] = self.run_jobs([self._judge_job(state, config)], report, config)
            return self._finish(report, self._groups(result, len(state.candidates)))
        if self.embeddings is not None:
            vectors = self.embeddings.embed_documents(state.texts)
            return self._finish(report, _cluster(vectors, self.similarity))
        return self._finish(report, [self.extract(t) for t in state.texts])

    async def _arun(self, report: StepReport, config: RunnableConfig) -> AIMessage:
        state = report.state
        self._require(state)
        if self.agent is not None:
            [result] = await self.arun_jobs([self._judge_job(state, config)], report, config)
            return self._finish(report, self._groups(result, len(state.candidates)))
        if self.embeddings is not None:
            vectors = await self.embeddings.aembed_documents(state.texts)
            return self._finish(report, _cluster(vectors, self.similarity))
        return self._finish(report, [self.extract(t) for t in state.texts])

    def _groups(self, result: Result, n: int) -> list[Hashable | None]:
        """Cluster labels from the judge's grouping (label = the group's first member + 1)."""
        native = result.replaced
        if native is not None and self.structured == "auto" and not _transient(native.exception):
            self.agent.structured_output_failed = True
        judgement: EquivalenceJudgement = self.parse(result)
        labels: list[Hashable | None] = [None] * n
        for group in judgement.groups:
            members = [g - 1 for g in group if 1 <= g <= n and labels[g - 1] is None]
            if members:
                label = f"group of response {min(members) + 1}"
                for m in members:
                    labels[m] = label
        return [
            label if label is not None else f"group of response {i + 1}"
            for i, label in enumerate(labels)
        ]

    def _finish(self, report: StepReport, answers: list[Hashable | None]) -> AIMessage:
        state = report.state
        result = tally(answers)
        if result.winner is None and self.no_answer == "raise":
            raise AggregatorError(
                type(self).__name__,
                self._name(),
                f"no answer could be extracted from any of the {len(answers)} candidates "
                f"(extractor {_describe_extractor(self.extract)})",
            )
        calls = [*state.calls, *report.calls]
        return _vote_message(state, calls, result, self.output, {"mode": self.mode})


def _describe_extractor(extract: Any) -> str:
    return getattr(extract, "__name__", None) or repr(extract)


def _cluster(vectors: list[list[float]], threshold: float) -> list[Hashable | None]:
    """Greedy clustering: each vector joins the first group whose first member is at
    least ``threshold`` cosine-similar, else starts a new group."""
    heads: list[tuple[int, list[float], float]] = []
    labels: list[Hashable | None] = []
    for i, v in enumerate(vectors):
        norm = math.sqrt(sum(x * x for x in v)) or 1.0
        for head, hv, hn in heads:
            if sum(a * b for a, b in zip(v, hv, strict=True)) / (norm * hn) >= threshold:
                labels.append(f"group of response {head + 1}")
                break
        else:
            heads.append((i, v, norm))
            labels.append(f"group of response {i + 1}")
    return labels


# -- adaptive sampling ---------------------------------------------------------------

Criterion = Literal["share", "beta"]


def beta_confidence(leader: int, runner_up: int) -> float:
    """P(the leader's answer is more likely than the runner-up's), Adaptive-Consistency's
    Beta stopping criterion: ``P(X > 1/2)`` for ``X ~ Beta(leader + 1, runner_up + 1)``.

    For integer parameters ``I_{1/2}(a, b) = P(Binomial(a + b - 1, 1/2) >= a)``.
    """
    a, b = leader + 1, runner_up + 1
    n = a + b - 1
    below = sum(math.comb(n, j) for j in range(a, n + 1)) / 2**n
    return 1.0 - below


class AdaptiveMajorityVote(SingleAgentStep):
    """Sample one agent in rounds and stop once the majority answer is settled
    (Adaptive-Consistency, Aggarwal et al. 2023, arXiv 2305.11860).

    The step owns its sampling agent and ends the pipeline: it takes the
    conversation (or an :class:`MoAState`, whose candidates count as samples
    already drawn, so ``Propose([m] * 2) | AdaptiveMajorityVote(m)`` starts from two)
    and draws ``min_samples`` samples, then ``round_size`` more per round, up to
    ``max_samples`` attempts in all (failed calls count as attempts). After each round
    it stops when

    * the leader cannot be overtaken: ``leader - runner_up > samples still allowed``; or
    * ``criterion="share"`` (default): ``leader / samples drawn >= threshold``
      (abstentions count in the denominator); or
    * ``criterion="beta"`` (the paper's): ``P(leader's answer is the majority) >=
      threshold`` under a Beta(leader + 1, runner_up + 1) posterior.

    With the defaults (``min_samples=2``, ``round_size=1``, share ``0.7``) two agreeing
    samples settle the question (2 calls); a split needs 3-5.

    Args:
        agent: the model sampled (model string, chat model, Runnable, client fn).
        extract: as for :class:`MajorityVote` (``"number"`` by default).
        max_samples: at most this many sampling calls in all (>= 1), default 5.
        min_samples: samples of the first round (1..max_samples), default 2.
        round_size: samples per later round (>= 1), default 1; larger rounds cost fewer
            round trips on a server with parallel slots.
        criterion, threshold: see above; ``threshold`` in (0, 1], default 0.7.
        temperature: of the samples (alias ``temp``), default 0.7; max_tokens default 2048.
        output, no_answer: as for :class:`MajorityVote`; with ``no_answer="first"``
            sampling stops after ``min_samples`` when none had an extractable answer
            (``stopped="no_answer"``), so a free-text question costs ``min_samples`` calls.
        prompt, max_concurrency, client, prices: as for :class:`Propose`.

    Output: an ``AIMessage`` as from :class:`MajorityVote`, plus
    ``response_metadata["moa"]["samples"]`` (samples drawn, this step and earlier),
    ``"rounds"`` and ``"stopped"`` (``"unbeatable"``, ``"threshold"``, ``"max_samples"`` or
    ``"no_answer"``).
    Every sampling call is in the history and in ``calls``.

    Raises:
        ConfigurationError: a bad parameter, at construction.
        AggregatorError: after ``max_samples`` no sample had an extractable answer
            (or every call failed; the causes are in the history).
    """

    defaults: ClassVar[tuple[float, int]] = (DEFAULT_TEMPERATURE, DEFAULT_MAX_TOKENS)
    extract: Any
    max_samples: int = 5
    min_samples: int = 2
    round_size: int = 1
    criterion: str = "share"
    threshold: float = 0.7
    output: str = "candidate"
    no_answer: str = "raise"

    def __init__(
        self,
        agent: Any,
        *,
        extract: Any = "number",
        max_samples: int = 5,
        min_samples: int = 2,
        round_size: int = 1,
        criterion: Criterion = "share",
        threshold: float = 0.7,
        output: Literal["candidate", "answer"] = "candidate",
        no_answer: Literal["raise", "first"] = "raise",
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
        validate_positive_int(max_samples, "max_samples")
        validate_positive_int(min_samples, "min_samples")
        if min_samples > max_samples:
            raise ConfigurationError(
                f"min_samples must be between 1 and max_samples ({max_samples}), got {min_samples}"
            )
        validate_positive_int(round_size, "round_size")
        if criterion not in ("share", "beta"):
            raise ConfigurationError(f"criterion must be 'share' or 'beta', got {criterion!r}")
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float))
            or not 0 < threshold <= 1
        ):
            raise ConfigurationError(f"threshold must be in (0, 1], got {threshold!r}")
        super().__init__(
            agent=single_agent(agent, client),
            extract=extractor(extract),
            max_samples=max_samples,
            min_samples=min_samples,
            round_size=round_size,
            criterion=criterion,
            threshold=float(threshold),
            output=_check_output(output),
            no_answer=_check_no_answer(no_answer),
            prices=prices,
            **settings,
        )

    @property
    def params(self) -> dict[str, Any]:
        return {
            **super().params,
            "max_samples": self.max_samples,
            "min_samples": self.min_samples,
            "round_size": self.round_size,
            "criterion": self.criterion,
            "threshold": self.threshold,
        }

    @property
    def OutputType(self) -> Any:  # noqa: N802
        return AIMessage

    def stop_reason(self, result: Tally, drawn: int) -> str | None:
        """Why sampling may stop after ``drawn`` samples with this tally, or ``None``."""
        if drawn >= self.max_samples:
            return "max_samples"
        if result.winner is None and result.n and drawn >= self.min_samples:
            return "no_answer" if self.no_answer == "first" else None
        if result.winner is None or drawn < self.min_samples:
            return None
        if result.leader - result.runner_up > self.max_samples - drawn:
            return "unbeatable"
        if self.criterion == "share":
            confident = result.leader / drawn >= self.threshold
        else:
            confident = beta_confidence(result.leader, result.runner_up) >= self.threshold
        return "threshold" if confident else None

    def _round_jobs(
        self, state: MoAState, drawn: int, config: RunnableConfig, layer: int
    ) -> list[Job]:
        size = self.min_samples - drawn if drawn < self.min_samples else self.round_size
        size = max(1, min(size, self.max_samples - drawn))
        messages = with_system(state.messages, self.prompt) if self.prompt else state.messages
        return [
            self.job(self.agent, drawn + i, list(messages), layer, config, sample=drawn + i)
            for i in range(size)
        ]

    def _absorb(
        self, state: MoAState, report: StepReport, results: list[Result], layer: int
    ) -> MoAState:
        calls = [*report.state.calls, *report.calls]
        index = {id(c): i for i, c in enumerate(calls)}
        candidates = list(state.candidates)
        for r in results:
            if r.ok:
                rec = r.record
                candidates.append(
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
        return state.model_copy(update={"candidates": candidates, "layer": layer})

    def _begin(self, report: StepReport) -> tuple[MoAState, int]:
        state = report.state
        layer = state.layer + 1 if not state.candidates else state.layer
        return state, layer

    def _after_round(
        self, report: StepReport, state: MoAState, results: list[Result], attempts: int, layer: int
    ) -> tuple[MoAState, str | None, Tally]:
        state = self._absorb(state, report, results, layer)
        result = tally([self.extract(t) for t in state.texts])
        return state, self.stop_reason(result, attempts), result

    def _run(self, report: StepReport, config: RunnableConfig) -> AIMessage:
        state, layer = self._begin(report)
        attempts, rounds = len(state.candidates), 0
        result = tally([self.extract(t) for t in state.texts])
        stopped = self.stop_reason(result, attempts) if attempts else None
        while stopped is None:
            jobs = self._round_jobs(state, attempts, config, layer)
            results = self.run_jobs(jobs, report, config)
            attempts += len(jobs)
            rounds += 1
            state, stopped, result = self._after_round(report, state, results, attempts, layer)
        return self._finish(report, state, result, attempts, rounds, stopped)

    async def _arun(self, report: StepReport, config: RunnableConfig) -> AIMessage:
        state, layer = self._begin(report)
        attempts, rounds = len(state.candidates), 0
        result = tally([self.extract(t) for t in state.texts])
        stopped = self.stop_reason(result, attempts) if attempts else None
        while stopped is None:
            jobs = self._round_jobs(state, attempts, config, layer)
            results = await self.arun_jobs(jobs, report, config)
            attempts += len(jobs)
            rounds += 1
            state, stopped, result = self._after_round(report, state, results, attempts, layer)
        return self._finish(report, state, result, attempts, rounds, stopped)

    def _finish(
        self,
        report: StepReport,
        state: MoAState,
        result: Tally,
        attempts: int,
        rounds: int,
        stopped: str,
    ) -> AIMessage:
        if result.winner is None and (self.no_answer == "raise" or not state.candidates):
            raise AggregatorError(
                type(self).__name__,
                self.agent.name,
                f"none of {attempts} sample(s) had an extractable answer "
                f"({len(state.candidates)} succeeded; extractor {self.extract!r})",
            )
        calls = [*report.state.calls, *report.calls]
        extra = {"mode": "extract", "samples": attempts, "rounds": rounds, "stopped": stopped}
        return _vote_message(state, calls, result, self.output, extra)
