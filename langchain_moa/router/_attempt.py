"""One attempt: one try of one deployment for one request.

:class:`Attempt` is the Runnable the failover chain is built from (traced as its own
child run, named after the deployment); :class:`Attempts` does the work: back off
before a retry, build the deployment's client, pass the gate (limits and health
claim), call the model within the timeout, and record the outcome. A stream falls
over only until its first token; after that an error is raised to the caller.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, NoReturn

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import var_child_runnable_config

from langchain_moa.errors import ConfigurationError, MissingAPIKeyError
from langchain_moa.router._deployment import Deployment
from langchain_moa.router._health import (
    BREAKER_KINDS,
    MalformedResponseError,
    RetryPolicy,
    backoff,
    is_client_side,
)
from langchain_moa.router._limits import Lease
from langchain_moa.router._outcome import Outcomes
from langchain_moa.router._planner import Planner
from langchain_moa.router._request import Failover, Request, attempt_timeout, run_with_timeout

__all__ = ["Attempt", "Attempts"]


def _has_token(chunk: ChatGenerationChunk) -> bool:
    m = chunk.message
    if m.content:
        return True
    if isinstance(m, AIMessageChunk) and m.tool_call_chunks:
        return True
    return bool(m.additional_kwargs.get("function_call") or m.additional_kwargs.get("tool_calls"))


def _finish_reason(chunk: ChatGenerationChunk) -> Any:
    info = chunk.generation_info or {}
    meta = chunk.message.response_metadata or {}
    return info.get("finish_reason") or meta.get("finish_reason") or meta.get("stop_reason")


def _needs_finish_reason(llm: BaseChatModel) -> bool:
    """OpenAI-compatible streams (``BaseChatOpenAI``) end with a chunk carrying
    ``finish_reason``; one that ends without it was cut short. Other chat models are
    not held to it. (Checked by class name: importing langchain-openai costs ~1 s.)"""
    streams = type(llm)._stream is not BaseChatModel._stream
    return streams and any(
        c.__name__ == "BaseChatOpenAI" and c.__module__.startswith("langchain_openai")
        for c in type(llm).__mro__
    )


class _StreamWatch:
    """What a stream has shown so far: a token? a ``finish_reason``? Decides whether
    its end is a complete answer (:meth:`problem`)."""

    def __init__(self, needs_finish: bool) -> None:
        self.needs_finish = needs_finish
        self.token = False
        self.finished = False

    def see(self, c: ChatGenerationChunk) -> bool:
        """Note chunk ``c``; whether it carries a token (content or a tool call)."""
        if _finish_reason(c):
            self.finished = True
        t = _has_token(c)
        self.token = self.token or t
        return t

    def problem(self) -> str | None:
        """Why the stream's end is not a complete answer (``None``: it is)."""
        if not self.token and not self.finished:
            return (
                "the stream ended without any token or finish_reason (an empty stream, "
                "or a 200 reply that is not server-sent events)"
            )
        if self.needs_finish and not self.finished:
            return "the stream closed without a finish_reason (cut short)"
        return None


def _to_chunk(gen: ChatGeneration) -> ChatGenerationChunk:
    m = gen.message
    tool_call_chunks = []
    if isinstance(m, AIMessage):
        for i, tc in enumerate(m.tool_calls):
            tool_call_chunks.append(
                {"name": tc["name"], "args": json.dumps(tc["args"]), "id": tc.get("id"), "index": i}
            )
    chunk = AIMessageChunk(
        content=m.content,
        additional_kwargs=dict(m.additional_kwargs),
        response_metadata=dict(m.response_metadata),
        usage_metadata=getattr(m, "usage_metadata", None),
        tool_call_chunks=tool_call_chunks,
        id=m.id,
    )
    return ChatGenerationChunk(message=chunk, generation_info=gen.generation_info)


def _add(acc: ChatGenerationChunk | None, c: ChatGenerationChunk) -> ChatGenerationChunk:
    return c if acc is None else acc + c


def _inner_stream(
    llm: BaseChatModel, messages: list[BaseMessage], stop: Any, kw: dict[str, Any]
) -> Iterator[ChatGenerationChunk]:
    if type(llm)._stream is BaseChatModel._stream:
        result = llm._generate(messages, stop=stop, **kw)
        yield _to_chunk(result.generations[0])
        return
    yield from llm._stream(messages, stop=stop, **kw)


async def _ainner_stream(
    llm: BaseChatModel, messages: list[BaseMessage], stop: Any, kw: dict[str, Any]
) -> AsyncIterator[ChatGenerationChunk]:
    if type(llm)._astream is BaseChatModel._astream and type(llm)._stream is BaseChatModel._stream:
        result = await llm._agenerate(messages, stop=stop, **kw)
        yield _to_chunk(result.generations[0])
        return
    async for c in llm._astream(messages, stop=stop, **kw):
        yield c


def _takes_strict(llm: BaseChatModel) -> bool:
    """Whether ``llm.bind_tools`` has a ``strict`` parameter (``BaseChatOpenAI`` does)."""
    try:
        return "strict" in inspect.signature(llm.bind_tools).parameters
    except (TypeError, ValueError):
        return False


def _finish_message(result: ChatResult, d: Deployment, decision: dict[str, Any]) -> AIMessage:
    gen = result.generations[0]
    msg = gen.message
    llm_output = {k: v for k, v in (result.llm_output or {}).items() if k != "token_usage"}
    meta = {**llm_output, **(gen.generation_info or {}), **msg.response_metadata}
    meta.setdefault("model_name", d.model_id)
    meta["router"] = decision
    msg.response_metadata = meta
    return msg  # type: ignore[return-value]


def _final_chunk(
    acc: ChatGenerationChunk | None, d: Deployment, decision: dict[str, Any]
) -> ChatGenerationChunk:
    meta: dict[str, Any] = {"router": decision}
    have = {}
    if acc is not None:
        have = {**(acc.generation_info or {}), **acc.message.response_metadata}
    if "model_name" not in have:
        meta["model_name"] = d.model_id
    return ChatGenerationChunk(message=AIMessageChunk(content="", response_metadata=meta))


class Attempts:
    """Runs attempts (invoke, ainvoke, stream, astream) for one router.

    Args:
        planner: the gate (limits and health claim) and skip records.
        outcomes: records successes and failures, decides failover.
        policies: retry policy per error kind (how many retries on one deployment).
    """

    def __init__(
        self, planner: Planner, outcomes: Outcomes, policies: dict[str, RetryPolicy]
    ) -> None:
        self.planner = planner
        self.outcomes = outcomes
        self.policies = policies

    # ------------------------------------------------------------------ shared steps
    def _retry_delay(self, req: Request, d: Deployment, retry: int) -> float:
        """Seconds to back off before this try (0 for the first); raise ``Failover``
        when this retry is not needed (no transient error on ``d`` in this pass), not
        allowed (the error kind's policy has fewer retries), or its backoff would end
        past the request's deadline (then the next deployment is tried at once, and
        with none left the planner raises ``NoDeploymentAvailableError``)."""
        if retry == 0:
            return 0.0
        name = str(d.name)
        kind = req.last_kind.get(name)
        if (
            kind is None
            or kind not in BREAKER_KINDS
            or name not in req.pass_failed
            or self.policies[kind].retries < retry
        ):
            raise Failover(name, "no retry needed")
        delay = backoff(retry, 0.25, 5.0)
        if req.deadline_at is not None and time.time() + delay > req.deadline_at:
            reason = f"retry {retry} skipped: its {delay:.2f} s backoff would end past the deadline"
            self.planner.note_skip(req, d, reason)
            raise Failover(name, reason)
        return delay

    @staticmethod
    def _prepare(req: Request, d: Deployment) -> tuple[BaseChatModel, dict[str, Any]]:
        llm = d.chat_model(d.timeout or req.timeout)
        kw = dict(req.call_kwargs)
        tools = kw.pop("tools", None)
        tool_choice = kw.pop("tool_choice", None)
        if tools:
            strict = kw.pop("strict", None)
            extra: dict[str, Any] = {}
            if tool_choice is not None:
                extra["tool_choice"] = tool_choice
            if strict is not None and _takes_strict(llm):
                extra["strict"] = strict  # otherwise the tools' function.strict carries it
            bound = llm.bind_tools(tools, **extra)
            kw = {**getattr(bound, "kwargs", {}), **kw}
        return llm, kw

    def _start(
        self, req: Request, d: Deployment
    ) -> tuple[BaseChatModel, dict[str, Any], Lease, bool]:
        """Build the client, then pass the gate: ``(llm, call kwargs, lease, probe)``.

        The client is built *before* taking the limits, so that admission time is send
        time (building a client takes long enough on first use to bunch paced requests)."""
        try:
            llm, kw = self._prepare(req, d)
        except ConfigurationError as e:
            if not isinstance(e, MissingAPIKeyError):
                raise  # a wrong setting does not get better elsewhere
            self.outcomes.failed(req, d, e, 0.0, probe=False)  # disables, names the variable
        except BaseException as e:  # noqa: BLE001
            self.outcomes.failed(req, d, e, 0.0, probe=False)
        req.sent_at = None
        lease, probe = self.planner.gate(req, d)
        return llm, kw, lease, probe

    def _fail(
        self,
        req: Request,
        d: Deployment,
        lease: Lease,
        exc: BaseException,
        t0: float,
        probe: bool,
        after_first: bool = False,
    ) -> NoReturn:
        # a client-side error sent nothing: its rate-limit reservation is refunded
        lease.release(refund=is_client_side(exc))
        self.outcomes.failed(
            req, d, exc, time.monotonic() - t0, probe, after_first, sent_at=req.sent_at
        )
        raise exc  # not reached: failed() always raises

    # ------------------------------------------------------------------ invoke
    def invoke(
        self, req: Request, d: Deployment, retry: int, messages: list[BaseMessage]
    ) -> AIMessage:
        delay = self._retry_delay(req, d, retry)
        if delay:
            time.sleep(delay)
        llm, kw, lease, probe = self._start(req, d)
        t0 = time.monotonic()
        try:
            result = run_with_timeout(
                lambda: llm._generate(messages, stop=req.stop, **kw), attempt_timeout(req, d)
            )
        except BaseException as e:  # noqa: BLE001
            self._fail(req, d, lease, e, t0, probe)
        return self._invoke_end(req, d, lease, t0, result, probe)

    async def ainvoke(
        self, req: Request, d: Deployment, retry: int, messages: list[BaseMessage]
    ) -> AIMessage:
        delay = self._retry_delay(req, d, retry)
        if delay:
            await asyncio.sleep(delay)
        llm, kw, lease, probe = self._start(req, d)
        t0 = time.monotonic()
        try:
            timeout = attempt_timeout(req, d)
            result = await asyncio.wait_for(llm._agenerate(messages, stop=req.stop, **kw), timeout)
        except BaseException as e:  # noqa: BLE001
            self._fail(req, d, lease, e, t0, probe)
        return self._invoke_end(req, d, lease, t0, result, probe)

    # ------------------------------------------------------------------ stream
    def stream(
        self, req: Request, d: Deployment, retry: int, messages: list[BaseMessage]
    ) -> Iterator[ChatGenerationChunk]:
        delay = self._retry_delay(req, d, retry)
        if delay:
            time.sleep(delay)
        llm, kw, lease, probe = self._start(req, d)
        t0 = time.monotonic()
        buffered: list[ChatGenerationChunk] = []
        ended = False
        watch = _StreamWatch(_needs_finish_reason(llm))
        try:
            it = iter(_inner_stream(llm, messages, req.stop, kw))

            def until_first_token() -> bool:
                """Read chunks up to the first token; whether the stream ended."""
                for c in it:
                    buffered.append(c)
                    if watch.see(c):
                        return False
                return True

            # until the first token (one thread, the attempt's timeout), failures fall over
            ended = run_with_timeout(until_first_token, attempt_timeout(req, d))
            if ended and not watch.token and (why := watch.problem()):
                raise MalformedResponseError(why)
        except BaseException as e:  # noqa: BLE001
            self._fail(req, d, lease, e, t0, probe)
        ttft = time.monotonic() - t0
        acc: ChatGenerationChunk | None = None
        try:
            for c in buffered:
                acc = _add(acc, c)
                yield c
            if not ended:
                for c in it:
                    watch.see(c)
                    acc = _add(acc, c)
                    yield c
            if why := watch.problem():
                raise MalformedResponseError(why)
        except BaseException as e:  # noqa: BLE001
            self._fail(req, d, lease, e, t0, probe, after_first=True)
        yield self._stream_end(req, d, lease, t0, ttft, acc, probe)

    async def astream(
        self, req: Request, d: Deployment, retry: int, messages: list[BaseMessage]
    ) -> AsyncIterator[ChatGenerationChunk]:
        delay = self._retry_delay(req, d, retry)
        if delay:
            await asyncio.sleep(delay)
        llm, kw, lease, probe = self._start(req, d)
        t0 = time.monotonic()
        buffered: list[ChatGenerationChunk] = []
        ended = False
        watch = _StreamWatch(_needs_finish_reason(llm))
        try:
            timeout = attempt_timeout(req, d)
            it = _ainner_stream(llm, messages, req.stop, kw).__aiter__()
            while True:  # until the first token, failures fall over
                try:
                    c = await asyncio.wait_for(it.__anext__(), timeout)
                except StopAsyncIteration:
                    ended = True
                    break
                buffered.append(c)
                if watch.see(c):
                    break
            if ended and not watch.token and (why := watch.problem()):
                raise MalformedResponseError(why)
        except BaseException as e:  # noqa: BLE001
            self._fail(req, d, lease, e, t0, probe)
        ttft = time.monotonic() - t0
        acc: ChatGenerationChunk | None = None
        try:
            for c in buffered:
                acc = _add(acc, c)
                yield c
            if not ended:
                async for c in it:
                    watch.see(c)
                    acc = _add(acc, c)
                    yield c
            if why := watch.problem():
                raise MalformedResponseError(why)
        except BaseException as e:  # noqa: BLE001
            self._fail(req, d, lease, e, t0, probe, after_first=True)
        yield self._stream_end(req, d, lease, t0, ttft, acc, probe)

    def _invoke_end(
        self,
        req: Request,
        d: Deployment,
        lease: Lease,
        t0: float,
        result: ChatResult,
        probe: bool,
    ) -> AIMessage:
        """Record the answer; its ``response_metadata`` carries the decision."""
        latency = time.monotonic() - t0
        decision = self.outcomes.succeeded(
            req, d, result.generations[0].message, lease, latency, None, probe, req.sent_at
        )
        return _finish_message(result, d, decision)

    def _stream_end(
        self,
        req: Request,
        d: Deployment,
        lease: Lease,
        t0: float,
        ttft: float,
        acc: ChatGenerationChunk | None,
        probe: bool,
    ) -> ChatGenerationChunk:
        """Record the finished stream; the last chunk carries the decision."""
        msg: Any = acc.message if acc is not None else AIMessageChunk(content="")
        latency = time.monotonic() - t0
        decision = self.outcomes.succeeded(req, d, msg, lease, latency, ttft, probe, req.sent_at)
        return _final_chunk(acc, d, decision)


class Attempt(Runnable[Any, Any]):
    """One try of one deployment, traced as its own child run named after it."""

    def __init__(self, attempts: Attempts, req: Request, dep: Deployment, retry: int) -> None:
        self.attempts = attempts
        self.req = req
        self.dep = dep
        self.retry = retry
        self.name = dep.name if retry == 0 else f"{dep.name} (retry {retry})"

    @staticmethod
    def _nest(config: RunnableConfig | None) -> RunnableConfig | None:
        # RunnableWithFallbacks.invoke passes the *parent* config to each runnable
        # (langchain issue 36072) while setting the child config in a context var;
        # take the callbacks from there so the attempt nests under the fallbacks run.
        ctx = var_child_runnable_config.get()
        if ctx and ctx.get("callbacks") is not None:
            return {**(config or {}), "callbacks": ctx["callbacks"]}
        return config

    def _config(self, config: RunnableConfig | None) -> RunnableConfig:
        cfg: RunnableConfig = dict(self._nest(config) or {})  # type: ignore[assignment]
        cfg.pop("run_name", None)
        cfg["metadata"] = {
            **(cfg.get("metadata") or {}),
            "router_deployment": self.dep.name,
            "router_model": self.dep.model or self.dep.model_id,
            "router_retry": self.retry,
        }
        return cfg

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(
            lambda x: self.attempts.invoke(self.req, self.dep, self.retry, x),
            input,
            self._config(config),
        )

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        async def run(x: Any) -> Any:
            return await self.attempts.ainvoke(self.req, self.dep, self.retry, x)

        return await self._acall_with_config(run, input, self._config(config))

    def stream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        def gen(inputs: Iterator[Any]) -> Iterator[Any]:
            msgs = None
            for x in inputs:
                msgs = x
            yield from self.attempts.stream(self.req, self.dep, self.retry, msgs)

        yield from self._transform_stream_with_config(iter([input]), gen, self._config(config))

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        async def one() -> AsyncIterator[Any]:
            yield input

        async def gen(inputs: AsyncIterator[Any]) -> AsyncIterator[Any]:
            msgs = None
            async for x in inputs:
                msgs = x
            async for c in self.attempts.astream(self.req, self.dep, self.retry, msgs):
                yield c

        async for c in self._atransform_stream_with_config(one(), gen, self._config(config)):
            yield c
