"""Aggregate: one agent merges all candidates into the final answer (MoA's last layer)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, ClassVar

from langchain_core.callbacks import dispatch_custom_event
from langchain_core.callbacks.manager import adispatch_custom_event
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.runnables import RunnableBinding, RunnableConfig, RunnableSequence
from langchain_core.runnables.config import patch_config

from langchain_moa import _budget
from langchain_moa._agents import Agent, make_agents
from langchain_moa._budget import BudgetExceededError
from langchain_moa._prompts import AGGREGATE_PROMPT, reference_messages
from langchain_moa._stream import StreamsByTransform
from langchain_moa.client_model import ClientReply, run_message_id
from langchain_moa.errors import AggregatorError, ConfigurationError
from langchain_moa.steps._base import (
    CALL_EVENT,
    DEFAULT,
    STEP_EVENT,
    Job,
    Result,
    SingleAgentStep,
    StepReport,
    _Default,
    to_state,
)
from langchain_moa.steps._layers import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE
from langchain_moa.types import CallRecord, MoAState, sum_usage


def single_agent(agent: Any, client: Callable[..., Any] | None) -> Agent:
    """Wrap the one agent of a final step; a list is a mistake worth naming."""
    if isinstance(agent, Agent):
        return agent
    if isinstance(agent, (list, tuple)):
        raise ConfigurationError(
            f"agent must be a single agent, got a list of {len(agent)}; "
            f"use Propose/Synthesize for several agents"
        )
    return make_agents([agent], client, parameter="agent")[0]


AGGREGATOR_CALL_KEY = "moa_aggregator_call"
"""``config["configurable"]`` key through which :class:`langchain_moa.MoAChatModel` hands
``{"tools": [...], "tool_kwargs": {...}, "kwargs": {...}}`` to the pipeline's final
``Aggregate``: its agent gets ``bind_tools(tools, **tool_kwargs)`` and ``bind(**kwargs)``
(e.g. ``stop``) for that call; the proposers never see them."""


def final_message(
    text: str,
    calls: list[CallRecord],
    layer: int,
    record: CallRecord,
    chosen: int | None = None,
    reply: Any = None,
) -> AIMessage:
    """The ``AIMessage`` a pipeline ends with.

    ``usage_metadata`` sums every call of the run (so ``prompt | pipeline`` reports
    the whole mixture's tokens); ``response_metadata["model_name"]`` is the final
    agent's model and ``response_metadata["moa"]`` summarises the run. With the final
    agent's ``reply`` (an ``AIMessage``), the message keeps its ``id`` (so LangGraph's
    ``stream_mode="messages"`` sees the streamed tokens and this message as one) and
    its ``tool_calls`` (an aggregator with tools bound).
    """
    costs = [c.cost_usd for c in calls if c.cost_usd is not None]
    summary = {
        "layers": layer,
        "calls": len(calls),
        "failed_calls": sum(1 for c in calls if not c.ok),
        "cost_usd": sum(costs) if costs else None,
    }
    if chosen is not None:
        summary["chosen"] = chosen
    extra: dict[str, Any] = {}
    if isinstance(reply, ClientReply):  # a direct client call: its message, named
        reply = reply.message(run_message_id())
    if isinstance(reply, AIMessage):
        extra["id"] = reply.id
        if reply.tool_calls or reply.invalid_tool_calls:
            text = reply.text  # the record holds the calls' arguments as text
            extra["tool_calls"] = reply.tool_calls
            extra["invalid_tool_calls"] = reply.invalid_tool_calls
    return AIMessage(
        content=text,
        usage_metadata=sum_usage(calls),
        response_metadata={"model_name": record.response_model or record.model, "moa": summary},
        **extra,
    )


class Aggregate(StreamsByTransform, SingleAgentStep):
    """One agent merges all current candidates into the final answer.

    The agent sees the conversation with the aggregate-and-synthesize prompt
    (Wang et al. 2024, Table 1) and the numbered candidates in a system message
    placed before the user's turns (appended to an existing system message).

    Args:
        agent: the aggregator (model string, chat model, Runnable or client function).
        temperature: sampling temperature (alias ``temp``); default 0.7. As for
            :class:`Propose`, a value given here overrides the agent's own, the default
            does not, ``None`` sends nothing; the same for ``max_tokens``.
        max_tokens: output budget in tokens; default 2048 — the aggregator often needs
            more room than the references, so presets set it separately.
        prompt: replaces the instruction; the numbered responses are still appended.
            Never formatted, so literal braces are safe.
        client, prices: as for :class:`Propose`.

    Input: an :class:`MoAState` with at least one candidate.
    Output: an ``AIMessage`` whose ``usage_metadata`` sums every call of the run.
    ``stream``/``astream`` yield the aggregator's tokens as ``AIMessageChunk``s; the
    last chunk carries the earlier calls' usage so the summed stream equals ``invoke``.

    Raises:
        AggregatorError: no candidates, or the aggregator's call failed or came back
            empty. A proposer's answer is never returned in its place.
    """

    defaults: ClassVar[tuple[float, int]] = (DEFAULT_TEMPERATURE, DEFAULT_MAX_TOKENS)

    def __init__(
        self,
        agent: Any,
        *,
        temperature: float | None | _Default = DEFAULT,
        max_tokens: int | None | _Default = DEFAULT,
        temp: float | None = None,
        prompt: str | None = None,
        client: Callable[..., Any] | None = None,
        prices: dict[str, tuple[float, float]] | None = None,
        max_concurrency: int | None = None,
    ) -> None:
        settings = self.check_settings(
            temperature=temperature,
            max_tokens=max_tokens,
            temp=temp,
            max_concurrency=max_concurrency,
            prompt=prompt,
        )
        super().__init__(agent=single_agent(agent, client), prices=prices, **settings)

    @property
    def OutputType(self) -> Any:  # noqa: N802
        return AIMessage

    def _job(self, state: MoAState, config: RunnableConfig) -> Job:
        if not state.candidates:
            raise AggregatorError(
                type(self).__name__, self.agent.name, "no candidates to aggregate"
            )
        messages = reference_messages(state.messages, self.prompt or AGGREGATE_PROMPT, state.texts)
        job = self.job(self.agent, 0, messages, state.layer + 1, config)
        call = (config.get("configurable") or {}).get(AGGREGATOR_CALL_KEY)
        if call:
            job.runnable = _with_call_options(job.runnable, call, self.agent.name)
        return job

    def _message(self, report: StepReport, result: Result) -> AIMessage:
        if not result.ok:
            raise AggregatorError(type(self).__name__, self.agent.name, result.record.error)
        calls = [*report.state.calls, *report.calls]
        return final_message(
            result.record.output or "", calls, result.job.layer, result.record, reply=result.output
        )

    def _run(self, report: StepReport, config: RunnableConfig) -> AIMessage:
        [result] = self.run_jobs([self._job(report.state, config)], report, config)
        return self._message(report, result)

    async def _arun(self, report: StepReport, config: RunnableConfig) -> AIMessage:
        [result] = await self.arun_jobs([self._job(report.state, config)], report, config)
        return self._message(report, result)

    # -- streaming: the aggregator's tokens as they come ------------------------

    def transform(
        self, input: Iterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[AIMessageChunk]:
        yield from self._transform_stream_with_config(
            input, self._stream_tokens, config, run_type="chain"
        )

    async def atransform(
        self, input: AsyncIterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[AIMessageChunk]:
        async for chunk in self._atransform_stream_with_config(
            input, self._astream_tokens, config, run_type="chain"
        ):
            yield chunk

    def _stream_tokens(
        self, inputs: Iterator[Any], run_manager: Any, config: RunnableConfig
    ) -> Iterator[AIMessageChunk]:
        step_config = patch_config(config, callbacks=run_manager.get_child())
        stream = _TokenStream(self, StepReport(self, to_state(_last(inputs))))
        try:
            job = stream.start(step_config)
            for chunk in job.runnable.stream(job.messages, self.call_config(job, step_config)):
                if (out := stream.add(chunk)) is not None:
                    yield out
            final = stream.finish()
        except Exception as exc:
            error = stream.fail(exc)
            for name, data in stream.events(error):
                dispatch_custom_event(name, data, config=step_config)
            raise error from exc
        for name, data in stream.events(None):
            dispatch_custom_event(name, data, config=step_config)
        yield final

    async def _astream_tokens(
        self, inputs: AsyncIterator[Any], run_manager: Any, config: RunnableConfig
    ) -> AsyncIterator[AIMessageChunk]:
        step_config = patch_config(config, callbacks=run_manager.get_child())
        last = None
        async for last in inputs:  # noqa: B007 - the upstream step yields its final state last
            pass
        stream = _TokenStream(self, StepReport(self, to_state(last)))
        try:
            job = stream.start(step_config)
            async for chunk in job.runnable.astream(
                job.messages, self.call_config(job, step_config)
            ):
                if (out := stream.add(chunk)) is not None:
                    yield out
            final = stream.finish()
        except Exception as exc:
            error = stream.fail(exc)
            for name, data in stream.events(error):
                await adispatch_custom_event(name, data, config=step_config)
            raise error from exc
        for name, data in stream.events(None):
            await adispatch_custom_event(name, data, config=step_config)
        yield final


class _TokenStream:
    """Accumulates the aggregator's streamed chunks into one call record.

    Chunks without text or tool-call parts (a finish reason, a usage-only chunk, the
    ``chunk_position="last"`` marker) are held back and merged into the next chunk
    with content, or into the one closing chunk, so a stream ends with one empty
    chunk (usage, ``response_metadata["moa"]``), not three.
    """

    def __init__(self, step: Aggregate, report: StepReport) -> None:
        self.step = step
        self.report = report
        self.total: AIMessageChunk | None = None
        self.started = time.perf_counter()
        self.job: Job | None = None
        self.message: AIMessage | None = None
        self.held: AIMessageChunk | None = None
        self.charge: Any = None

    def start(self, config: RunnableConfig) -> Job:
        """Build the aggregator's call and reserve it on the run's budget, as a
        non-streamed call does (raises :class:`BudgetExceededError` past the budget)."""
        self.job = self.step._job(self.report.state, config)
        self.charge = _budget.reserve(config, self.step, self.job)
        self.started = time.perf_counter()
        return self.job

    def add(self, chunk: Any) -> AIMessageChunk | None:
        """Add a chunk; return it to yield now, or ``None`` while it is held back."""
        if not isinstance(chunk, AIMessageChunk):
            chunk = _as_chunk(chunk)
        self.total = chunk if self.total is None else self.total + chunk
        if self.held is not None:
            chunk, self.held = self.held + chunk, None
        if not chunk.content and not chunk.tool_call_chunks:
            self.held = chunk
            return None
        return chunk

    def _record(self, error: BaseException | None) -> CallRecord:
        assert self.job is not None
        record = self.charge.settle(
            self.step.make_record(self.job, self.total, self.started, error)
        )
        self.report.calls.append(record)
        return record

    def finish(self) -> AIMessageChunk:
        """Record the call; return the closing chunk with the earlier calls' usage."""
        record = self._record(None)
        if not record.ok:
            raise AggregatorError(type(self.step).__name__, self.step.agent.name, record.error)
        calls = [*self.report.state.calls, record]
        assert self.job is not None
        self.message = final_message(
            record.output or "", calls, self.job.layer, record, reply=_as_message(self.total)
        )
        closing = AIMessageChunk(
            content="",
            id=self.message.id,
            usage_metadata=sum_usage(self.report.state.calls),
            response_metadata={"moa": self.message.response_metadata["moa"]},
        )
        return closing if self.held is None else self.held + closing

    def fail(self, exc: Exception) -> AggregatorError:
        """Record a call that raised mid-stream; return the error to raise."""
        if isinstance(exc, AggregatorError | BudgetExceededError):
            return exc
        if self.charge is not None:
            self._record(exc)
        return AggregatorError(type(self.step).__name__, self.step.agent.name, exc)

    def events(self, error: BaseException | None) -> list[tuple[str, dict[str, Any]]]:
        """The custom events to dispatch: the call (if made) and the step."""
        calls = [(CALL_EVENT, c.model_dump()) for c in self.report.calls]
        return [*calls, (STEP_EVENT, self.report.record(self.message, error=error))]


def _with_call_options(runnable: Any, call: dict[str, Any], agent: str) -> Any:
    """``runnable`` with the tools (``bind_tools``) and call kwargs of
    :data:`AGGREGATOR_CALL_KEY` bound.

    Raises:
        ConfigurationError: tools were given and the aggregator has no ``bind_tools``.
    """
    if call.get("tools"):
        tools, tool_kwargs = call["tools"], call.get("tool_kwargs") or {}
        try:
            runnable = _under_bindings(runnable, lambda r: r.bind_tools(tools, **tool_kwargs))
        except (AttributeError, NotImplementedError) as exc:
            raise ConfigurationError(
                f"the aggregator {agent} cannot call tools ({type(exc).__name__}: {exc}); "
                f"give Aggregate a chat model with bind_tools"
            ) from exc
    if call.get("kwargs"):
        runnable = runnable.bind(**call["kwargs"])
    return runnable


def _under_bindings(runnable: Any, apply: Callable[[Any], Any]) -> Any:
    """``apply`` to the model inside ``runnable``'s ``bind(...)`` layers, keeping them:
    ``RunnableBinding.bind_tools`` would call the inner model's and drop the step's
    bound ``temperature`` / ``max_tokens``."""
    if isinstance(runnable, RunnableBinding) and not isinstance(runnable.bound, RunnableSequence):
        return runnable.model_copy(update={"bound": _under_bindings(runnable.bound, apply)})
    return apply(runnable)


def _as_message(total: AIMessageChunk | None) -> AIMessage | None:
    """The summed stream as an ``AIMessage`` (tool-call chunks parsed into calls)."""
    if total is None:
        return None
    return AIMessage(
        content=total.content,
        id=total.id,
        tool_calls=total.tool_calls,
        invalid_tool_calls=total.invalid_tool_calls,
    )


def _as_chunk(value: Any) -> AIMessageChunk:
    if isinstance(value, BaseMessage):
        return AIMessageChunk(
            content=value.content,
            usage_metadata=getattr(value, "usage_metadata", None),
            response_metadata=value.response_metadata,
        )
    return AIMessageChunk(content=str(value))


def _last(values: Iterator[Any]) -> Any:
    last = None
    for last in values:  # noqa: B007 - the upstream step yields its final state last
        pass
    return last
