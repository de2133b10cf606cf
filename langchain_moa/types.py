"""The typed state that flows between MoA steps.

A pipeline's first step turns its input (whatever a chat model accepts) into a
:class:`MoAState`; every later step takes a state and returns a new one, except
``Aggregate`` and ``Vote``, which return an ``AIMessage``.

Provenance is kept twice over, on purpose: ``MoAState.calls`` is the append-only
log of every model call of the run (failures included, in the order the steps
issued them), and each :class:`Candidate` names the call that produced it through
``call_index``, so outputs always line up with the calls that made them.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AnyMessage
from langchain_core.messages.ai import UsageMetadata
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CallRecord", "Candidate", "MoAState", "sum_usage"]


class CallRecord(BaseModel):
    """One model call made by a step.

    Attributes:
        step: the step that made the call (``"Propose"``, ``"Aggregate"``, ...).
        layer: the MoA layer the call belongs to (1 = the proposers' layer).
        agent_index: position of the agent in the step's agent list.
        model: the agent's name (model string, model id or Runnable name).
        response_model: the model id the provider reported
            (``response_metadata["model_name"]``), e.g. the deployment a router chose.
        messages: the messages sent, as OpenAI-style ``{"role", "content"}`` dicts.
        output: the reply text; ``None`` when the call failed.
        input_tokens, output_tokens: token counts reported by the model (0 if unknown).
        latency_s: wall time of the call in seconds.
        cost_usd: cost in US dollars when a price is known
            (see :mod:`langchain_moa.pricing`), else ``None``.
        error: ``"ExceptionType: message"`` when the call failed or returned an
            empty reply, else ``None``.
        router: when the agent is a :class:`~langchain_moa.router.ProviderRouter`, its
            decision (``response_metadata["router"]``): the deployment that answered,
            the candidates with scores and skip reasons, every attempt, waits, cost.
    """

    step: str
    layer: int
    agent_index: int
    model: str
    response_model: str | None = None
    messages: list[dict[str, Any]] = Field(default_factory=list)
    output: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float | None = None
    error: str | None = None
    router: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """True when the call returned a non-empty reply."""
        return self.error is None


class Candidate(BaseModel):
    """A candidate answer and where it came from.

    Attributes:
        text: the current text (a ``Map`` step may have transformed it).
        model: the agent that produced it.
        step: the step that produced it.
        layer: its MoA layer.
        agent_index: the agent's position in that step.
        call_index: index of the producing call in :attr:`MoAState.calls`.
        input_tokens, output_tokens, latency_s, cost_usd: copied from that call.
    """

    text: str
    model: str
    step: str
    layer: int
    agent_index: int
    call_index: int
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float | None = None


class MoAState(BaseModel):
    """What flows between MoA steps.

    Attributes:
        messages: the conversation the pipeline was called with (system messages and
            multi-turn history preserved), unchanged by the steps.
        candidates: the current candidate answers, in order.
        calls: every model call of the run so far, failed ones included.
        layer: the number of candidate-producing layers run so far.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    messages: list[AnyMessage]
    candidates: list[Candidate] = Field(default_factory=list)
    calls: list[CallRecord] = Field(default_factory=list)
    layer: int = 0

    @property
    def texts(self) -> list[str]:
        """The candidates' texts, in order."""
        return [c.text for c in self.candidates]

    @property
    def errors(self) -> list[CallRecord]:
        """The failed calls of the run."""
        return [c for c in self.calls if not c.ok]

    def usage(self) -> UsageMetadata:
        """Token usage summed over every call of the run."""
        return sum_usage(self.calls)

    def cost_usd(self) -> float | None:
        """Total cost in USD of the priced calls, ``None`` if no call had a price."""
        costs = [c.cost_usd for c in self.calls if c.cost_usd is not None]
        return sum(costs) if costs else None


def sum_usage(calls: list[CallRecord]) -> UsageMetadata:
    """Add up the token counts of ``calls`` into LangChain's ``UsageMetadata`` shape."""
    input_tokens = sum(c.input_tokens for c in calls)
    output_tokens = sum(c.output_tokens for c in calls)
    return UsageMetadata(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=input_tokens + output_tokens,
    )
