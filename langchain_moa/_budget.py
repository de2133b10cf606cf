"""Run-wide budgets: a cap on model calls, tokens and USD shared by every step of a run.

A :class:`Budget` travels in the run config (``config["configurable"]["moa_budget"]``,
see :data:`BUDGET_CONFIG_KEY`), so every step of a pipeline — and every pipeline the
same config reaches — draws on the same allowance::

    budget = Budget(max_calls=6, max_tokens=4000, max_cost_usd=0.01)
    moa.invoke(question, config={"configurable": {"moa_budget": budget}})
    budget.spent()      # {"calls": 6, "tokens": 3120, "cost_usd": 0.0021}

**Before each call** the step reserves what the call may use: one call, the prompt's
estimated tokens (about 4 characters per token) plus the step's ``max_tokens``, and
their price (:mod:`langchain_moa.pricing`; an unpriced model counts 0 USD). If a limit
would be passed, the call is not made and :class:`BudgetExceededError` is raised: the
step fails (its history record carries the error) and so does the run. **After** the
call the reservation is replaced by the real usage. Calls in flight when the limit is
reached finish and are counted.

To get the best answer so far instead of the error, wrap the pipeline:
``with_budget(moa, budget, on_exceed="best")`` returns the most recent successful reply
of the deepest layer that invocation reached, as an ``AIMessage`` marked
``response_metadata["moa"]["budget_exhausted"] = True`` (and still raises when no call
of it had succeeded). Each invocation keeps its own calls, so a budget shared by many
runs never answers one question with another's reply. A budget put straight into the
config has no invocation to keep apart: its error's ``best`` comes from every call made
on that budget.
"""

from __future__ import annotations

import math
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.callbacks import dispatch_custom_event
from langchain_core.callbacks.manager import adispatch_custom_event
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import ensure_config, patch_config

from langchain_moa import pricing
from langchain_moa._stream import StreamsByTransform
from langchain_moa.errors import ConfigurationError, MoAError
from langchain_moa.types import CallRecord

__all__ = [
    "BUDGET_CONFIG_KEY",
    "BUDGET_EVENT",
    "Budget",
    "BudgetExceededError",
    "with_budget",
]

BUDGET_CONFIG_KEY = "moa_budget"
"""``config["configurable"]`` key that carries the run's :class:`Budget`."""
BUDGET_EVENT = "moa_budget"
"""Custom event :func:`with_budget` dispatches when it answers with the best so far."""
_RUN_CONFIG_KEY = "moa_budget_run"
CHARS_PER_TOKEN = 4
"""Prompt-size estimate used for the reservation (the real count settles it)."""

Limit = Literal["calls", "tokens", "cost_usd"]


class BudgetExceededError(MoAError):
    """A call would pass the run's budget, so it was not made.

    Attributes:
        limit: ``"calls"``, ``"tokens"`` or ``"cost_usd"``.
        maximum: the cap that would be passed.
        spent: ``{"calls", "tokens", "cost_usd"}`` settled and reserved so far.
        requested: what the refused call would have reserved (same keys).
        best: the best answer so far (an ``AIMessage``) or ``None``.
    """

    def __init__(
        self,
        limit: Limit,
        maximum: float,
        spent: dict[str, float],
        requested: dict[str, float],
        best: AIMessage | None,
    ) -> None:
        self.limit = limit
        self.maximum = maximum
        self.spent = spent
        self.requested = requested
        self.best = best
        super().__init__(
            f"budget of {maximum:g} {limit} reached: {spent[limit]:g} spent or reserved, "
            f"the next call needs {requested[limit]:g} more"
        )


class _Run:
    """The calls of one run under a budget, for its best answer so far. Every
    :func:`with_budget` invocation has its own, so a budget shared by several runs
    never answers one question with another's reply."""

    def __init__(self) -> None:
        self.best: CallRecord | None = None
        self.records: list[CallRecord] = []

    def add(self, record: CallRecord) -> None:
        self.records.append(record)
        if record.ok and (self.best is None or record.layer >= self.best.layer):
            self.best = record

    def best_message(self) -> AIMessage | None:
        """The most recent successful reply of the deepest layer, with the usage of
        every call of the run."""
        best = self.best
        if best is None:
            return None
        records = list(self.records)
        costs = [r.cost_usd for r in records if r.cost_usd is not None]
        inp = sum(r.input_tokens for r in records)
        out = sum(r.output_tokens for r in records)
        return AIMessage(
            content=best.output or "",
            usage_metadata={"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out},
            response_metadata={
                "model_name": best.response_model or best.model,
                "moa": {
                    "layers": best.layer,
                    "calls": len(records),
                    "failed_calls": sum(1 for r in records if not r.ok),
                    "cost_usd": sum(costs) if costs else None,
                    "budget_exhausted": True,
                    "best_from": {
                        "step": best.step,
                        "layer": best.layer,
                        "agent_index": best.agent_index,
                    },
                },
            },
        )


@dataclass
class _Reservation:
    budget: Budget
    run: _Run
    calls: int
    tokens: int
    cost_usd: float

    def settle(self, record: CallRecord) -> CallRecord:
        """Replace the reservation by ``record``'s real usage; return the record."""
        self.budget._settle(self, record)
        return record


class _NoBudget:
    def settle(self, record: CallRecord) -> CallRecord:
        return record


NO_BUDGET = _NoBudget()


class Budget:
    """A cap on calls, tokens (input + output) and USD for a run; thread-safe.

    Args:
        max_calls: model calls (failed ones count), >= 1, or ``None``.
        max_tokens: input + output tokens, >= 1, or ``None``.
        max_cost_usd: US dollars, > 0, or ``None``.

    One budget may serve several runs (a cap per session); create a new one per run
    for a per-run cap.

    Raises:
        ConfigurationError: a limit out of range, or no limit at all.
    """

    def __init__(
        self,
        max_calls: int | None = None,
        max_tokens: int | None = None,
        max_cost_usd: float | None = None,
    ) -> None:
        for name, value in (("max_calls", max_calls), ("max_tokens", max_tokens)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigurationError(f"{name} must be an int >= 1 or None, got {value!r}")
        if max_cost_usd is not None and (
            isinstance(max_cost_usd, bool)
            or not isinstance(max_cost_usd, (int, float))
            or not max_cost_usd > 0
        ):
            raise ConfigurationError(
                f"max_cost_usd must be a number > 0 or None, got {max_cost_usd!r}"
            )
        if max_calls is None and max_tokens is None and max_cost_usd is None:
            raise ConfigurationError("give at least one of max_calls, max_tokens, max_cost_usd")
        self.max_calls = max_calls
        self.max_tokens = max_tokens
        self.max_cost_usd = None if max_cost_usd is None else float(max_cost_usd)
        self._lock = threading.Lock()
        self._calls = 0
        self._tokens = 0
        self._cost = 0.0
        self._run = _Run()  # every call on this budget: the run when none is given

    def __repr__(self) -> str:
        return (
            f"Budget(max_calls={self.max_calls}, max_tokens={self.max_tokens}, "
            f"max_cost_usd={self.max_cost_usd}, spent={self.spent()})"
        )

    def spent(self) -> dict[str, float]:
        """``{"calls", "tokens", "cost_usd"}`` settled plus reserved (calls in flight)."""
        with self._lock:
            return {"calls": self._calls, "tokens": self._tokens, "cost_usd": self._cost}

    def remaining(self) -> dict[str, float | None]:
        """What is left of each cap (``None``: no cap)."""
        spent = self.spent()
        return {
            "calls": None if self.max_calls is None else self.max_calls - spent["calls"],
            "tokens": None if self.max_tokens is None else self.max_tokens - spent["tokens"],
            "cost_usd": None
            if self.max_cost_usd is None
            else self.max_cost_usd - spent["cost_usd"],
        }

    def reserve(
        self,
        model: str,
        messages: list[BaseMessage],
        max_tokens: int | None,
        prices: dict[str, tuple[float, float]] | None = None,
        run: _Run | None = None,
    ) -> _Reservation:
        """Reserve one call of ``model`` on ``messages`` answering up to ``max_tokens``;
        ``run`` collects the calls the error's best answer comes from (default: every
        call on this budget).

        Raises:
            BudgetExceededError: the reservation would pass a cap; nothing is reserved.
        """
        prompt = math.ceil(sum(len(_text(m)) for m in messages) / CHARS_PER_TOKEN)
        out = max_tokens or 0
        cost = pricing.cost_usd(model, prompt, out, prices) or 0.0
        request = {"calls": 1, "tokens": prompt + out, "cost_usd": cost}
        with self._lock:
            spent = {"calls": self._calls, "tokens": self._tokens, "cost_usd": self._cost}
            for limit, cap in (
                ("calls", self.max_calls),
                ("tokens", self.max_tokens),
                ("cost_usd", self.max_cost_usd),
            ):
                if cap is not None and spent[limit] + request[limit] > cap:
                    best = (run or self._run).best_message()
                    raise BudgetExceededError(limit, cap, spent, request, best)  # type: ignore[arg-type]
            self._calls += 1
            self._tokens += prompt + out
            self._cost += cost
        return _Reservation(self, run or self._run, 1, prompt + out, cost)

    def _settle(self, reservation: _Reservation, record: CallRecord) -> None:
        with self._lock:
            self._tokens += record.input_tokens + record.output_tokens - reservation.tokens
            self._cost += (record.cost_usd or 0.0) - reservation.cost_usd
            if reservation.run is not self._run:
                self._run.add(record)
            reservation.run.add(record)


def _text(message: BaseMessage) -> str:
    content = message.content
    return content if isinstance(content, str) else str(content)


def budget_of(config: RunnableConfig | None) -> Budget | None:
    """The :class:`Budget` in ``config["configurable"]``, if any.

    Raises:
        ConfigurationError: the key holds something other than a Budget.
    """
    budget = ((config or {}).get("configurable") or {}).get(BUDGET_CONFIG_KEY)
    if budget is None or isinstance(budget, Budget):
        return budget
    raise ConfigurationError(
        f"config['configurable']['{BUDGET_CONFIG_KEY}'] must be a Budget, "
        f"got {type(budget).__name__}"
    )


def reserve(config: RunnableConfig | None, step: Any, job: Any) -> _Reservation | _NoBudget:
    """The hook a step runs before each model call: reserve the call on the run's
    budget (nothing to do without one). ``step`` is the calling ``LLMStep`` (its
    ``max_tokens`` setting and ``prices``), ``job`` the call.

    Raises:
        BudgetExceededError: the call would pass the budget.
    """
    budget = budget_of(config)
    if budget is None:
        return NO_BUDGET
    settings = {**getattr(step, "_fallback", {}), **getattr(step, "_forced", {})}
    max_tokens = settings.get("max_tokens")
    run = (config or {}).get("configurable", {}).get(_RUN_CONFIG_KEY)
    return budget.reserve(
        job.agent.name, job.messages, max_tokens, getattr(step, "prices", None), run
    )


class _Budgeted(StreamsByTransform, Runnable[Any, Any]):
    """See :func:`with_budget`. One chain run named ``with_budget`` around the pipeline."""

    name = "with_budget"

    def __init__(self, runnable: Runnable, budget: Budget, on_exceed: str) -> None:
        self.runnable = runnable
        self.budget = budget
        self.on_exceed = on_exceed

    @property
    def InputType(self) -> Any:  # noqa: N802
        return self.runnable.InputType

    @property
    def OutputType(self) -> Any:  # noqa: N802
        return self.runnable.OutputType

    def _config(self, config: RunnableConfig | None) -> RunnableConfig:
        cfg = ensure_config(config)
        cfg["configurable"] = {
            **cfg.get("configurable", {}),
            BUDGET_CONFIG_KEY: self.budget,
            _RUN_CONFIG_KEY: _Run(),  # this invocation's calls, for its best answer
        }
        return cfg

    def _fallback(self, exc: BudgetExceededError) -> AIMessage:
        if self.on_exceed == "raise" or exc.best is None:
            raise exc
        return exc.best

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(self._invoke, input, self._config(config))

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self._acall_with_config(self._ainvoke, input, self._config(config))

    def _invoke(self, input: Any, run_manager: Any, config: RunnableConfig) -> Any:
        child = patch_config(config, callbacks=run_manager.get_child())
        try:
            return self.runnable.invoke(input, child)
        except BudgetExceededError as exc:
            best = self._fallback(exc)
            dispatch_custom_event(BUDGET_EVENT, _event(exc), config=child)
            return best

    async def _ainvoke(self, input: Any, run_manager: Any, config: RunnableConfig) -> Any:
        child = patch_config(config, callbacks=run_manager.get_child())
        try:
            return await self.runnable.ainvoke(input, child)
        except BudgetExceededError as exc:
            best = self._fallback(exc)
            await adispatch_custom_event(BUDGET_EVENT, _event(exc), config=child)
            return best

    # -- streaming: the pipeline's chunks as they come (the aggregator's tokens) ----

    def transform(
        self, input: Iterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        yield from self._transform_stream_with_config(input, self._stream, self._config(config))

    async def atransform(
        self, input: AsyncIterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        async for chunk in self._atransform_stream_with_config(
            input, self._astream, self._config(config)
        ):
            yield chunk

    def _stream(self, inputs: Iterator[Any], run_manager: Any, config: RunnableConfig) -> Any:
        """The budget is reserved before each call, so it can only run out before the
        aggregator's first token: then nothing has been yielded and ``"best"`` yields
        the best answer so far as the one item of the stream."""
        child = patch_config(config, callbacks=run_manager.get_child())
        try:
            yield from self.runnable.transform(inputs, child)
        except BudgetExceededError as exc:
            best = self._fallback(exc)
            dispatch_custom_event(BUDGET_EVENT, _event(exc), config=child)
            yield best

    async def _astream(
        self, inputs: AsyncIterator[Any], run_manager: Any, config: RunnableConfig
    ) -> Any:
        child = patch_config(config, callbacks=run_manager.get_child())
        try:
            async for chunk in self.runnable.atransform(inputs, child):
                yield chunk
        except BudgetExceededError as exc:
            best = self._fallback(exc)
            await adispatch_custom_event(BUDGET_EVENT, _event(exc), config=child)
            yield best


def _event(exc: BudgetExceededError) -> dict[str, Any]:
    return {"limit": exc.limit, "maximum": exc.maximum, "spent": exc.spent, "error": str(exc)}


def with_budget(
    runnable: Runnable, budget: Budget, on_exceed: Literal["raise", "best"] = "raise"
) -> Runnable:
    """``runnable`` run under ``budget`` (put in every invocation's config).

    Args:
        runnable: a pipeline (or any Runnable whose steps make the calls).
        budget: the shared :class:`Budget`.
        on_exceed: ``"raise"`` (default) lets :class:`BudgetExceededError` through;
            ``"best"`` returns the best answer so far (see the module docstring) and
            dispatches a ``"moa_budget"`` custom event; with no successful call yet it
            raises anyway.

    Raises:
        ConfigurationError: ``budget`` is not a Budget or ``on_exceed`` is unknown.
    """
    if not isinstance(budget, Budget):
        raise ConfigurationError(f"budget must be a Budget, got {type(budget).__name__}")
    if on_exceed not in ("raise", "best"):
        raise ConfigurationError(f"on_exceed must be 'raise' or 'best', got {on_exceed!r}")
    if not isinstance(runnable, Runnable):
        raise ConfigurationError(f"runnable must be a Runnable, got {type(runnable).__name__}")
    return _Budgeted(runnable, budget, on_exceed)
