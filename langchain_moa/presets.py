"""Pipelines from the papers, with the papers' layer counts.

=================  ===========================================  ====================
preset             layers                                       calls (6 proposers)
=================  ===========================================  ====================
``together_moa``   Propose 6 -> Synthesize 6 -> Aggregate (3)   13
``moa_lite``       Propose 6 -> Aggregate (2)                   7
``self_moa``       Propose k x one model -> Aggregate (2)       k + 1
``robust_moa``     Propose -> Shuffle -> Dropout -> Aggregate   proposers + 1
``self_moa_seq``   Propose k -> SequentialAggregate (window w)  k + 1 + ceil((k-w)/(w-1))
``self_consistency`` Propose k x one model -> MajorityVote      k (k + 1 greedy_first)
``adaptive_consistency`` AdaptiveMajorityVote                   2 .. max_samples
``fusion``         Propose -> Fusion (judge, writer)            proposers + 2
``rsa``            Propose N -> RecursiveAggregate(K, T) -> MajorityVote / Aggregate
                                                                N + N*T (+1)
=================  ===========================================  ====================

Sources: Wang et al. 2024, "Mixture-of-Agents Enhances Large Language Model
Capabilities" (arXiv 2406.04692), §3: Together MoA uses 3 MoA layers with six
open-source proposers and Qwen1.5-110B-Chat as the final aggregator; MoA-Lite uses
2 layers and Qwen1.5-72B-Chat; temperature 0.7. (mixture-llm's own presets put one
Synthesize layer too many into both.) Li et al. 2025, "Rethinking Mixture-of-Agents:
Is Mixing Different LLMs Beneficial?" (arXiv 2502.00674): Self-MoA samples one
top model several times and aggregates with the same model; Self-MoA-Seq aggregates
over a sliding window. Wang et al. 2022 (self-consistency, arXiv 2203.11171) and
Aggarwal et al. 2023 (Adaptive-Consistency, arXiv 2305.11860) take the majority of
extracted answers; Venkatraman et al. 2025 (RSA, arXiv 2509.26626) recursively
aggregates random subsets of a population; Fusion follows OpenRouter's judge-then-writer.

Every preset returns a Runnable ending in a final step (``Aggregate``, ``MajorityVote``,
``Fusion``, ...), so its output is an
``AIMessage`` whose ``usage_metadata`` sums the whole run. The default agents are the
papers' models on Together AI (``TOGETHER_API_KEY``); pass your own for anything else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypedDict, Unpack

from langchain_core.runnables import Runnable

from langchain_moa._run import pipeline
from langchain_moa.errors import ConfigurationError
from langchain_moa.steps import (
    AdaptiveMajorityVote,
    Aggregate,
    Dropout,
    Fusion,
    MajorityVote,
    Propose,
    RecursiveAggregate,
    SequentialAggregate,
    Shuffle,
    Synthesize,
)
from langchain_moa.steps._base import validate_positive_int

__all__ = [
    "PAPER_PROPOSERS",
    "PresetOptions",
    "together_moa",
    "moa_lite",
    "self_moa",
    "robust_moa",
    "self_moa_seq",
    "self_consistency",
    "adaptive_consistency",
    "fusion",
    "rsa",
]

PAPER_PROPOSERS: list[str] = [
    "together/Qwen/Qwen1.5-110B-Chat",
    "together/Qwen/Qwen1.5-72B-Chat",
    "together/microsoft/WizardLM-2-8x22B",
    "together/meta-llama/Llama-3-70b-chat-hf",
    "together/mistralai/Mixtral-8x22B-Instruct-v0.1",
    "together/databricks/dbrx-instruct",
]
"""The six proposers of Together MoA (Wang et al. 2024, §3.1), as Together AI ids."""

TOGETHER_MOA_AGGREGATOR = "together/Qwen/Qwen1.5-110B-Chat"
MOA_LITE_AGGREGATOR = "together/Qwen/Qwen1.5-72B-Chat"


class PresetOptions(TypedDict, total=False):
    """Keyword arguments every preset takes.

    Attributes:
        temperature: for every call; default 0.7, as in both papers.
        reference_max_tokens: output budget (tokens) of each reference; default 2048,
            the MoA paper's evaluation setting.
        aggregator_max_tokens: output budget (tokens) of the final aggregator;
            default 2048.
        client: mixture-llm client ``(model, messages, temp, max_tokens) -> (text,
            input_tokens, output_tokens)`` serving the string agents.
        max_concurrency: bound on simultaneous calls within a layer.
    """

    temperature: float
    reference_max_tokens: int | None
    aggregator_max_tokens: int | None
    client: Callable[..., Any] | None
    max_concurrency: int | None


def _build(
    name: str,
    proposers: Sequence[Any],
    aggregator: Any,
    middle: Sequence[Any] = (),
    *,
    synthesize: bool = False,
    temperature: float = 0.7,
    reference_max_tokens: int | None = 2048,
    aggregator_max_tokens: int | None = 2048,
    client: Callable[..., Any] | None = None,
    max_concurrency: int | None = None,
) -> Runnable:
    """Propose [-> Synthesize] [-> middle steps] -> Aggregate, named ``name``."""
    if not proposers:
        raise ConfigurationError(f"proposers must be a non-empty list of agents, got {proposers!r}")
    references = {
        "temperature": temperature,
        "client": client,
        "max_tokens": reference_max_tokens,
        "max_concurrency": max_concurrency,
    }
    steps: list[Any] = [Propose(list(proposers), **references)]
    if synthesize:
        steps.append(Synthesize(list(proposers), **references))
    steps.extend(middle)
    final = Aggregate(
        aggregator, temperature=temperature, client=client, max_tokens=aggregator_max_tokens
    )
    return pipeline([*steps, final]).with_config(run_name=name)


def together_moa(
    proposers: Sequence[Any] | None = None,
    aggregator: Any = None,
    **options: Unpack[PresetOptions],
) -> Runnable:
    """Together MoA: 3 layers — Propose -> Synthesize (same agents) -> Aggregate.

    Args:
        proposers: the reference agents of layers 1 and 2 (default
            :data:`PAPER_PROPOSERS`).
        aggregator: the final agent (default Qwen1.5-110B-Chat on Together AI).
        **options: see :class:`PresetOptions`.
    """
    return _build(
        "together_moa",
        PAPER_PROPOSERS if proposers is None else proposers,
        TOGETHER_MOA_AGGREGATOR if aggregator is None else aggregator,
        synthesize=True,
        **options,
    )


def moa_lite(
    proposers: Sequence[Any] | None = None,
    aggregator: Any = None,
    **options: Unpack[PresetOptions],
) -> Runnable:
    """MoA-Lite: 2 layers — Propose -> Aggregate (Qwen1.5-72B-Chat by default).

    Arguments as for :func:`together_moa`.
    """
    return _build(
        "moa_lite",
        PAPER_PROPOSERS if proposers is None else proposers,
        MOA_LITE_AGGREGATOR if aggregator is None else aggregator,
        **options,
    )


def self_moa(
    model: Any, k: int = 6, aggregator: Any = None, **options: Unpack[PresetOptions]
) -> Runnable:
    """Self-MoA: one model sampled ``k`` times, then aggregated (by default by itself).

    Args:
        model: the one proposer (any agent spec).
        k: number of samples (>= 1); diversity comes from ``temperature``.
        aggregator: defaults to ``model``.
        **options: see :class:`PresetOptions`.
    """
    k = validate_positive_int(k, "k")
    return _build("self_moa", [model] * k, model if aggregator is None else aggregator, **options)


def robust_moa(
    proposers: Sequence[Any],
    aggregator: Any,
    *,
    dropout: float = 0.2,
    seed: int | None = None,
    **options: Unpack[PresetOptions],
) -> Runnable:
    """Propose -> Shuffle -> Dropout -> Aggregate: against position bias and for diversity.

    Args:
        proposers: the reference agents (at least one).
        aggregator: the final agent.
        dropout: drop probability per reference, in [0, 1); at least one is kept.
        seed: makes Shuffle and Dropout reproducible.
        **options: see :class:`PresetOptions`.
    """
    middle = [Shuffle(seed=seed), Dropout(dropout, seed=seed)]
    return _build("robust_moa", proposers, aggregator, middle, **options)


def _references(options: PresetOptions) -> dict[str, Any]:
    return {
        "temperature": options.get("temperature", 0.7),
        "client": options.get("client"),
        "max_tokens": options.get("reference_max_tokens", 2048),
        "max_concurrency": options.get("max_concurrency"),
    }


def _final(options: PresetOptions) -> dict[str, Any]:
    return {
        "temperature": options.get("temperature", 0.7),
        "client": options.get("client"),
        "max_tokens": options.get("aggregator_max_tokens", 2048),
    }


def self_moa_seq(
    model: Any,
    k: int = 6,
    window: int = 3,
    aggregator: Any = None,
    **options: Unpack[PresetOptions],
) -> Runnable:
    """Self-MoA-Seq (Li et al. 2025, §5): ``k`` samples of one model, aggregated through
    a sliding window of ``window`` texts (the synthesis so far + ``window - 1`` new
    samples per call), so the aggregator's prompt stays bounded for any ``k``.

    Calls: ``k + 1 + ceil((k - window) / (window - 1))`` (k + 1 when k <= window).
    """
    k = validate_positive_int(k, "k")
    final = SequentialAggregate(
        model if aggregator is None else aggregator, window=window, **_final(options)
    )
    steps = [Propose([model] * k, **_references(options)), final]
    return pipeline(steps).with_config(run_name="self_moa_seq")


def _greedy_call(model: Any, refs: dict[str, Any]) -> Propose:
    """One greedy (temperature 0) call of ``model``: the first vote of a greedy-first vote."""
    return Propose(
        [model],
        temperature=0,
        max_tokens=refs["max_tokens"],
        client=refs["client"],
    )


def self_consistency(
    model: Any,
    k: int = 5,
    extract: Any = "number",
    *,
    greedy_first: bool = False,
    no_answer: str = "raise",
    **options: Unpack[PresetOptions],
) -> Runnable:
    """Self-consistency (Wang et al. 2022): ``k`` samples of one model, then the
    majority of their extracted answers (:class:`MajorityVote`, no extra call).

    ``extract``: ``"number"``, ``"choice"``, an extractor or a callable text -> answer;
    ``no_answer``: ``"raise"`` or ``"first"``, as for :class:`MajorityVote`. Calls: ``k``.

    ``greedy_first=True``: one greedy call (temperature 0) first, then the ``k`` samples
    (``Propose([model], temperature=0) | AdaptiveMajorityVote(model, min_samples=k + 1,
    max_samples=k + 1)``): the greedy answer is one vote and, being the earliest, wins
    ties. Calls: ``k + 1``, in two rounds (the greedy call, then the samples together).
    """
    k = validate_positive_int(k, "k")
    refs = _references(options)
    if greedy_first:
        vote = _sampling_vote(model, extract, no_answer, refs, min_samples=k + 1, max_samples=k + 1)
        return (_greedy_call(model, refs) | vote).with_config(run_name="self_consistency")
    vote = MajorityVote(extract, no_answer=no_answer)  # type: ignore[arg-type]
    steps = [Propose([model] * k, **refs), vote]
    return pipeline(steps).with_config(run_name="self_consistency")


def adaptive_consistency(
    model: Any,
    max_samples: int = 5,
    extract: Any = "number",
    *,
    greedy_first: bool = False,
    no_answer: str = "raise",
    **options: Unpack[PresetOptions],
) -> Runnable:
    """Adaptive-Consistency (Aggarwal et al. 2023): samples drawn one round at a time
    until the majority is settled (:class:`AdaptiveMajorityVote` with its defaults:
    2 samples first, then 1 per round, stop at a 0.7 share or when the leader cannot
    be overtaken). ``no_answer="first"``: a question whose samples hold no extractable
    answer returns the first sample after 2 calls. Calls: 2 .. ``max_samples``.

    ``greedy_first=True``: the first call is greedy (temperature 0) and counts as the
    first sample (its answer wins ties, being the earliest); then one sample at a time
    at ``temperature``. Calls: still 2 .. ``max_samples``, the greedy one included.
    """
    refs = _references(options)
    max_samples = validate_positive_int(max_samples, "max_samples")
    if greedy_first:
        if max_samples < 2:
            raise ConfigurationError(
                f"max_samples must be >= 2 with greedy_first=True (the greedy call and at "
                f"least one sample), got {max_samples}"
            )
        vote = _sampling_vote(
            model, extract, no_answer, refs, min_samples=2, max_samples=max_samples
        )
        return (_greedy_call(model, refs) | vote).with_config(run_name="adaptive_consistency")
    step = _sampling_vote(
        model, extract, no_answer, refs, min_samples=min(2, max_samples), max_samples=max_samples
    )
    return step.with_config(run_name="adaptive_consistency")


def _sampling_vote(
    model: Any,
    extract: Any,
    no_answer: str,
    refs: dict[str, Any],
    *,
    min_samples: int,
    max_samples: int,
) -> AdaptiveMajorityVote:
    return AdaptiveMajorityVote(
        model,
        extract=extract,
        max_samples=max_samples,
        min_samples=min_samples,
        no_answer=no_answer,  # type: ignore[arg-type]
        temperature=refs["temperature"],
        max_tokens=refs["max_tokens"],
        max_concurrency=refs["max_concurrency"],
        client=refs["client"],
    )


def fusion(
    proposers: Sequence[Any],
    judge: Any,
    writer: Any = None,
    **options: Unpack[PresetOptions],
) -> Runnable:
    """Fusion (OpenRouter style): Propose -> :class:`Fusion` (a judge's structured
    analysis of the candidates, then a writer's answer; the writer defaults to the
    judge). Calls: ``len(proposers) + 2``.
    """
    if not proposers:
        raise ConfigurationError(f"proposers must be a non-empty list of agents, got {proposers!r}")
    final = _final(options)
    step = Fusion(
        judge,
        writer,
        writer_temperature=final["temperature"],
        writer_max_tokens=final["max_tokens"],
        client=final["client"],
    )
    return pipeline([Propose(list(proposers), **_references(options)), step]).with_config(
        run_name="fusion"
    )


def rsa(
    model: Any,
    n: int = 4,
    k: int = 2,
    rounds: int = 2,
    *,
    extract: Any = None,
    seed: int | None = None,
    **options: Unpack[PresetOptions],
) -> Runnable:
    """Recursive self-aggregation (Venkatraman et al. 2025): a population of ``n``
    samples of ``model``; ``rounds`` rounds in which each of the ``n`` members is
    rewritten by ``model`` from a random subset of ``k`` (seedable); then the final
    population's majority answer (``extract`` given: :class:`MajorityVote`, no call)
    or one :class:`Aggregate` call over it (``extract=None``).

    Calls: ``n + n * rounds`` (+1 with ``extract=None``).
    """
    n = validate_positive_int(n, "n")
    refs = _references(options)
    population = Propose([model] * n, **refs)
    recombine = RecursiveAggregate(
        model,
        k=k,
        rounds=rounds,
        seed=seed,
        temperature=refs["temperature"],
        max_tokens=refs["max_tokens"],
        max_concurrency=refs["max_concurrency"],
        client=refs["client"],
    )
    final = MajorityVote(extract) if extract is not None else Aggregate(model, **_final(options))
    return pipeline([population, recombine, final]).with_config(run_name="rsa")
