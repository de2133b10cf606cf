"""Transforms: steps that reorder, drop, subset or rewrite candidates without a model call.

Randomised transforms take a ``seed``; with a seed, every invocation makes the same
choice for the same number of candidates (a fresh ``random.Random(seed)`` per call,
so results do not depend on how many runs came before, and batches are safe).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from langchain_core.runnables import RunnableConfig

from langchain_moa.errors import ConfigurationError
from langchain_moa.steps._base import Step, StepReport, validate_positive_int
from langchain_moa.types import Candidate, MoAState


class _Transform(Step):
    def _run(self, report: StepReport, config: RunnableConfig) -> MoAState:
        state = report.state
        return state.model_copy(update={"candidates": self.apply(list(state.candidates))})

    def apply(self, candidates: list[Candidate]) -> list[Candidate]:
        raise NotImplementedError


def _check_seed(seed: Any) -> int | None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigurationError(f"seed must be an int or None, got {seed!r}")
    return seed


class _Random(_Transform):
    seed: int | None = None

    def __init__(self, seed: int | None = None, **fields: Any) -> None:
        super().__init__(seed=_check_seed(seed), **fields)

    def rng(self) -> random.Random:
        return random.Random(self.seed)


class Shuffle(_Random):
    """Randomly reorder the candidates (counters the aggregator's position bias).

    Args:
        seed: makes the order reproducible.
    """

    @property
    def params(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def apply(self, candidates: list[Candidate]) -> list[Candidate]:
        self.rng().shuffle(candidates)
        return candidates


class Dropout(_Random):
    """Drop each candidate independently with probability ``rate``.

    At least one candidate is always kept (a random one when every draw says drop),
    so a following Aggregate has something to work with.

    Args:
        rate: drop probability, in [0, 1).
        seed: makes the draws reproducible.

    Raises:
        ConfigurationError: ``rate`` outside [0, 1).
    """

    rate: float

    def __init__(self, rate: float, *, seed: int | None = None) -> None:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ConfigurationError(f"rate must be in [0, 1), got {rate!r}")
        super().__init__(seed, rate=float(rate))

    @property
    def params(self) -> dict[str, Any]:
        return {"rate": self.rate, "seed": self.seed}

    def apply(self, candidates: list[Candidate]) -> list[Candidate]:
        if not candidates:
            return candidates
        rng = self.rng()
        kept = [c for c in candidates if rng.random() >= self.rate]
        return kept or [rng.choice(candidates)]


class Sample(_Random):
    """Keep a random subset of ``n`` candidates, in their original order.

    Args:
        n: how many to keep (>= 1); all are kept when there are fewer.
        seed: makes the choice reproducible.
    """

    n: int

    def __init__(self, n: int, *, seed: int | None = None) -> None:
        super().__init__(seed, n=validate_positive_int(n, "n"))

    @property
    def params(self) -> dict[str, Any]:
        return {"n": self.n, "seed": self.seed}

    def apply(self, candidates: list[Candidate]) -> list[Candidate]:
        if len(candidates) <= self.n:
            return candidates
        chosen = sorted(self.rng().sample(range(len(candidates)), self.n))
        return [candidates[i] for i in chosen]


class Take(_Transform):
    """Keep the first ``n`` candidates.

    Args:
        n: how many to keep (>= 1).
    """

    n: int

    def __init__(self, n: int) -> None:
        super().__init__(n=validate_positive_int(n, "n"))

    @property
    def params(self) -> dict[str, Any]:
        return {"n": self.n}

    def apply(self, candidates: list[Candidate]) -> list[Candidate]:
        return candidates[: self.n]


def _check_callable(fn: Any, name: str) -> Callable[[str], Any]:
    if not callable(fn) or isinstance(fn, type):
        raise ConfigurationError(f"{name} must be a function of the candidate text, got {fn!r}")
    return fn


class Filter(_Transform):
    """Keep the candidates whose text satisfies ``fn``.

    Args:
        fn: ``str -> bool``, called with each candidate's text.

    A filter may leave no candidates; the next LLM step then raises
    (``LayerFailedError`` / ``AggregatorError``: "no candidates").
    """

    fn: Callable[[str], bool]

    def __init__(self, fn: Callable[[str], bool]) -> None:
        super().__init__(fn=_check_callable(fn, "fn"))

    @property
    def params(self) -> dict[str, Any]:
        return {"fn": getattr(self.fn, "__name__", repr(self.fn))}

    def apply(self, candidates: list[Candidate]) -> list[Candidate]:
        return [c for c in candidates if self.fn(c.text)]


class Map(_Transform):
    """Rewrite each candidate's text with ``fn`` (provenance is kept).

    Args:
        fn: ``str -> str``, called with each candidate's text.

    Raises:
        TypeError: at run time, when ``fn`` returns something other than a str.
    """

    fn: Callable[[str], str]

    def __init__(self, fn: Callable[[str], str]) -> None:
        super().__init__(fn=_check_callable(fn, "fn"))

    @property
    def params(self) -> dict[str, Any]:
        return {"fn": getattr(self.fn, "__name__", repr(self.fn))}

    def apply(self, candidates: list[Candidate]) -> list[Candidate]:
        out = []
        for c in candidates:
            text = self.fn(c.text)
            if not isinstance(text, str):
                raise TypeError(f"Map's fn must return a str, got {type(text).__name__}")
            out.append(c.model_copy(update={"text": text}))
        return out
