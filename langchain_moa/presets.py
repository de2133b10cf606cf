"""Pipelines from the papers, with the papers' layer counts.

=================  ===========================================  ====================
preset             layers                                       calls (6 proposers)
=================  ===========================================  ====================
``together_moa``   Propose 6 -> Synthesize 6 -> Aggregate (3)   13
``moa_lite``       Propose 6 -> Aggregate (2)                   7
``self_moa``       Propose k x one model -> Aggregate (2)       k + 1
``robust_moa``     Propose -> Shuffle -> Dropout -> Aggregate   proposers + 1
=================  ===========================================  ====================

Sources: Wang et al. 2024, "Mixture-of-Agents Enhances Large Language Model
Capabilities" (arXiv 2406.04692), §3: Together MoA uses 3 MoA layers with six
open-source proposers and Qwen1.5-110B-Chat as the final aggregator; MoA-Lite uses
2 layers and Qwen1.5-72B-Chat; temperature 0.7. (mixture-llm's own presets put one
Synthesize layer too many into both.) Li et al. 2025, "Rethinking Mixture-of-Agents:
Is Mixing Different LLMs Beneficial?" (arXiv 2502.00674): Self-MoA samples one
top model several times and aggregates with the same model.

Every preset returns a Runnable ending in ``Aggregate``, so its output is an
``AIMessage`` whose ``usage_metadata`` sums the whole run. The default agents are the
papers' models on Together AI (``TOGETHER_API_KEY``); pass your own for anything else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.runnables import Runnable

from langchain_moa.errors import ConfigurationError
from langchain_moa.steps import Aggregate, Dropout, Propose, Shuffle, Synthesize
from langchain_moa.steps._base import validate_positive_int

__all__ = [
    "PAPER_PROPOSERS",
    "together_moa",
    "moa_lite",
    "self_moa",
    "robust_moa",
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


def _sampling(
    temperature: float,
    reference_max_tokens: int | None,
    aggregator_max_tokens: int | None,
    client: Callable[..., Any] | None,
    max_concurrency: int | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    shared = {"temperature": temperature, "client": client}
    references = {**shared, "max_tokens": reference_max_tokens, "max_concurrency": max_concurrency}
    return references, {**shared, "max_tokens": aggregator_max_tokens}


def together_moa(
    proposers: Sequence[Any] | None = None,
    aggregator: Any = None,
    *,
    temperature: float = 0.7,
    reference_max_tokens: int | None = 2048,
    aggregator_max_tokens: int | None = 2048,
    client: Callable[..., Any] | None = None,
    max_concurrency: int | None = None,
) -> Runnable:
    """Together MoA: 3 layers — Propose -> Synthesize (same agents) -> Aggregate.

    Args:
        proposers: the reference agents of layers 1 and 2 (default
            :data:`PAPER_PROPOSERS`).
        aggregator: the final agent (default Qwen1.5-110B-Chat on Together AI).
        temperature: for every call; 0.7 as in the paper.
        reference_max_tokens, aggregator_max_tokens: separate output budgets (tokens)
            for the references and the aggregator; 2048 as in the paper's evaluation.
        client: mixture-llm client serving string agents.
        max_concurrency: bound on simultaneous calls within a layer.
    """
    proposers = list(PAPER_PROPOSERS if proposers is None else proposers)
    refs, agg = _sampling(
        temperature, reference_max_tokens, aggregator_max_tokens, client, max_concurrency
    )
    return (
        Propose(proposers, **refs)
        | Synthesize(proposers, **refs)
        | Aggregate(TOGETHER_MOA_AGGREGATOR if aggregator is None else aggregator, **agg)
    ).with_config(run_name="together_moa")


def moa_lite(
    proposers: Sequence[Any] | None = None,
    aggregator: Any = None,
    *,
    temperature: float = 0.7,
    reference_max_tokens: int | None = 2048,
    aggregator_max_tokens: int | None = 2048,
    client: Callable[..., Any] | None = None,
    max_concurrency: int | None = None,
) -> Runnable:
    """MoA-Lite: 2 layers — Propose -> Aggregate (Qwen1.5-72B-Chat by default).

    Arguments as for :func:`together_moa`.
    """
    proposers = list(PAPER_PROPOSERS if proposers is None else proposers)
    refs, agg = _sampling(
        temperature, reference_max_tokens, aggregator_max_tokens, client, max_concurrency
    )
    return (
        Propose(proposers, **refs)
        | Aggregate(MOA_LITE_AGGREGATOR if aggregator is None else aggregator, **agg)
    ).with_config(run_name="moa_lite")


def self_moa(
    model: Any,
    k: int = 6,
    aggregator: Any = None,
    *,
    temperature: float = 0.7,
    reference_max_tokens: int | None = 2048,
    aggregator_max_tokens: int | None = 2048,
    client: Callable[..., Any] | None = None,
    max_concurrency: int | None = None,
) -> Runnable:
    """Self-MoA: one model sampled ``k`` times, then aggregated (by default by itself).

    Args:
        model: the one proposer (any agent spec).
        k: number of samples (>= 1); diversity comes from ``temperature``.
        aggregator: defaults to ``model``.
        Others as for :func:`together_moa`.
    """
    k = validate_positive_int(k, "k")
    refs, agg = _sampling(
        temperature, reference_max_tokens, aggregator_max_tokens, client, max_concurrency
    )
    return (
        Propose([model] * k, **refs) | Aggregate(model if aggregator is None else aggregator, **agg)
    ).with_config(run_name="self_moa")


def robust_moa(
    proposers: Sequence[Any],
    aggregator: Any,
    *,
    dropout: float = 0.2,
    seed: int | None = None,
    temperature: float = 0.7,
    reference_max_tokens: int | None = 2048,
    aggregator_max_tokens: int | None = 2048,
    client: Callable[..., Any] | None = None,
    max_concurrency: int | None = None,
) -> Runnable:
    """Propose -> Shuffle -> Dropout -> Aggregate: against position bias and for diversity.

    Args:
        proposers: the reference agents (at least one).
        aggregator: the final agent.
        dropout: drop probability per reference, in [0, 1); at least one is kept.
        seed: makes Shuffle and Dropout reproducible.
        Others as for :func:`together_moa`.
    """
    if not proposers:
        raise ConfigurationError("proposers must be a non-empty list of agents")
    refs, agg = _sampling(
        temperature, reference_max_tokens, aggregator_max_tokens, client, max_concurrency
    )
    return (
        Propose(list(proposers), **refs)
        | Shuffle(seed=seed)
        | Dropout(dropout, seed=seed)
        | Aggregate(aggregator, **agg)
    ).with_config(run_name="robust_moa")
