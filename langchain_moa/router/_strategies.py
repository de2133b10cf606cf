"""Ranking strategies: the order in which deployments are tried.

Each strategy turns the eligible deployments into ``(deployment, score, note)``
triples, best first. Lower score is better except for ``weighted``, where the
score is the random sort key (higher first). Ties keep the list order.

* ``priority``: ``Deployment.priority`` (lower first), then list order.
* ``cost``: expected USD of this request = prompt tokens x ``price_in`` +
  expected completion tokens (``max_tokens`` if set, else the router's
  ``expected_output_tokens``) x ``price_out``, per million. Unknown prices last.
* ``latency``: exponentially weighted moving average of recent latency (time to
  first token when streaming and known). Untried deployments score 0 so each gets
  measured (LiteLLM's latency routing does the same).
* ``weighted``: random order, each deployment drawn with probability
  proportional to ``weight`` (Efraimidis-Spirakis keys ``u**(1/w)``); seedable.
* ``least-busy``: fewest requests in flight plus requests already planned for
  the deployment but not yet sent (both from the store, so shared across
  processes with Redis), ties by list order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

from langchain_moa.router._deployment import Deployment

__all__ = ["STRATEGIES", "rank"]

STRATEGIES = ("priority", "cost", "latency", "weighted", "least-busy")

Ranked = list[tuple[Deployment, float, str]]


def rank(
    strategy: str,
    deployments: list[Deployment],
    *,
    prompt_tokens: int,
    output_tokens: int,
    streaming: bool,
    stats: dict[str, Any],
    in_flight: Callable[[str], int],
    rng: random.Random,
) -> Ranked:
    """Order ``deployments`` by ``strategy`` (see the module docstring)."""
    order = {d.name: i for i, d in enumerate(deployments)}
    scored: Ranked = []
    if strategy == "priority":
        scored = [(d, float(d.priority), f"priority {d.priority}") for d in deployments]
        scored.sort(key=lambda t: (t[1], order[t[0].name]))
    elif strategy == "cost":
        for d in deployments:
            p = d.prices()
            if p is None:
                scored.append((d, math.inf, "price unknown"))
            else:
                c = (prompt_tokens * p[0] + output_tokens * p[1]) / 1e6
                scored.append(
                    (d, c, f"expected ${c:.8f} ({prompt_tokens} in + {output_tokens} out tokens)")
                )
        scored.sort(key=lambda t: (t[1], order[t[0].name]))
    elif strategy == "latency":
        for d in deployments:
            st = stats[d.name]
            v = st.ewma_ttft if streaming and st.ewma_ttft is not None else st.ewma_latency
            what = "ttft" if streaming and st.ewma_ttft is not None else "latency"
            if v is None:
                scored.append((d, 0.0, "untried: explored first"))
            else:
                scored.append((d, float(v), f"EWMA {what} {v:.3f} s"))
        scored.sort(key=lambda t: (t[1], order[t[0].name]))
    elif strategy == "weighted":
        total = sum(d.weight for d in deployments) or 1.0
        for d in deployments:
            u = rng.random()
            key = u ** (1.0 / d.weight) if u > 0 else 0.0
            scored.append(
                (d, key, f"weight {d.weight:g} ({d.weight / total:.0%} share), key {key:.4f}")
            )
        scored.sort(key=lambda t: (-t[1], order[t[0].name]))
    elif strategy == "least-busy":
        for d in deployments:
            n = in_flight(d.name)
            scored.append((d, float(n), f"{n} in flight"))
        scored.sort(key=lambda t: (t[1], order[t[0].name]))
    else:  # validated at construction
        raise ValueError(f"unknown strategy {strategy!r}")
    return scored
