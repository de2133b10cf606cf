"""The history of an MoA run, collected through LangChain callbacks.

Every step dispatches a ``"moa_step"`` custom event when it ends (also when it
fails) and a ``"moa_call"`` event after each model call; both are visible in
``astream_events`` as ``on_custom_event`` for live progress.
:class:`MoAHistoryHandler` collects the step events::

    history = MoAHistoryHandler()
    answer = pipeline.invoke("question", config={"callbacks": [history]})
    history.steps[0].calls[0].latency_s
    history.to_json()
"""

from __future__ import annotations

import json
import threading
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages.ai import UsageMetadata
from pydantic import BaseModel, Field

from langchain_moa.steps._base import CALL_EVENT, STEP_EVENT
from langchain_moa.types import CallRecord, sum_usage

__all__ = ["MoAHistoryHandler", "StepRecord", "STEP_EVENT", "CALL_EVENT"]


class StepRecord(BaseModel):
    """What one step did.

    Attributes:
        step: the step's name (``"Propose"``, ``"Shuffle"``, ...).
        params: the step's parameters (agents by name, temperature, n, seed, ...).
        layer: the MoA layer the step produced or judged.
        inputs: candidate texts the step received.
        outputs: candidate texts it passed on (the final text for Aggregate / Vote).
        calls: its model calls, failed ones included, in issue order.
        time_s: the step's wall time in seconds.
        error: ``"ExceptionType: message"`` when the step raised, else ``None``.
        run_id: the LangChain run id of the step.
    """

    step: str
    params: dict[str, Any] = Field(default_factory=dict)
    layer: int = 0
    inputs: list[str] = Field(default_factory=list)
    outputs: list[str] = Field(default_factory=list)
    calls: list[CallRecord] = Field(default_factory=list)
    time_s: float = 0.0
    error: str | None = None
    run_id: str | None = None


def _step_record(data: dict[str, Any], run_id: str) -> StepRecord:
    """A :class:`StepRecord` from a step's event, validated (faster than
    ``model_construct`` here); its calls are the step's own :class:`CallRecord`
    objects, kept as they are (pydantic does not revalidate instances)."""
    return StepRecord(**data, run_id=run_id)


class MoAHistoryHandler(BaseCallbackHandler):
    """Callback handler that records each MoA step of the runs it is attached to.

    Attach it through ``config={"callbacks": [handler]}``; one handler per run keeps
    runs apart (with ``batch``, the steps of all inputs interleave, each carrying
    its own ``run_id``).

    The handler runs inline (``run_inline = True``): LangChain calls it in the thread
    or task that dispatched the event, with no thread-pool hop; appending a record is
    guarded by a lock, so concurrent steps (``batch``, sync fan-out threads) are safe.

    Attributes:
        steps: the :class:`StepRecord` of every finished step, in finishing order.
    """

    run_inline: bool = True
    # Only custom events are read; LangChain skips this handler for everything else.
    ignore_llm: bool = True
    ignore_chat_model: bool = True
    ignore_chain: bool = True
    ignore_agent: bool = True
    ignore_retriever: bool = True
    ignore_retry: bool = True
    moa_events: frozenset[str] = frozenset({STEP_EVENT})
    """The MoA custom events this handler reads: steps dispatch the others (one
    ``moa_call`` per model call) only when some handler wants them."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[StepRecord] = []
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def on_custom_event(
        self,
        name: str,
        data: Any,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if name == STEP_EVENT:
            record = _step_record(data, str(run_id))
            with self._lock:
                self.steps.append(record)

    @property
    def calls(self) -> list[CallRecord]:
        """Every model call of the recorded steps, in order."""
        return [call for step in self.steps for call in step.calls]

    def usage(self) -> UsageMetadata:
        """Tokens summed over every recorded call."""
        return sum_usage(self.calls)

    def cost_usd(self) -> float | None:
        """USD summed over the priced calls; ``None`` when no call had a price."""
        costs = [c.cost_usd for c in self.calls if c.cost_usd is not None]
        return sum(costs) if costs else None

    def to_list(self) -> list[dict[str, Any]]:
        """The steps as plain dicts (JSON-ready)."""
        return [step.model_dump() for step in self.steps]

    def to_json(self, indent: int | None = 2) -> str:
        """The steps as a JSON array of objects (one per step, calls nested)."""
        return json.dumps(self.to_list(), indent=indent, ensure_ascii=False)

    def clear(self) -> None:
        """Forget the recorded steps."""
        self.steps.clear()
