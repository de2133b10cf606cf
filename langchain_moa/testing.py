"""Test doubles for your own tests of MoA pipelines (no sockets, no keys).

As ``langchain_core.language_models.fake_chat_models`` and ``httpx.MockTransport``
do for their libraries, this module ships the fake chat models langchain-moa's own
test suite uses:

* :class:`ScriptedChat` — a ``BaseChatModel`` that replies from a script (strings,
  exceptions to raise, or functions of the received messages), records every call
  (the messages and the keyword arguments such as ``temperature`` / ``max_tokens``),
  reports token usage, streams word by word with the usage on the last chunk, and can
  sleep while a shared :class:`Gauge` counts how many calls are in flight;
* :class:`ToolJudge` — adds ``bind_tools``, so ``with_structured_output`` (Rank,
  Vote) takes the native tool-calling path;
* :func:`chat` — a :class:`ScriptedChat` in one call.

Example::

    from langchain_moa import Aggregate, Propose
    from langchain_moa.testing import chat

    proposer, aggregator = chat("4", "four"), chat("The answer is 4.")
    answer = (Propose([proposer, proposer]) | Aggregate(aggregator)).invoke("2 + 2?")
    assert answer.content == "The answer is 4."
    assert proposer.kwargs(0)["temperature"] == 0.7   # what the step sent
"""

from __future__ import annotations

__all__ = ["Gauge", "Reply", "ScriptedChat", "ToolJudge", "chat", "text_of"]

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field


class Gauge:
    """Counts calls in flight (thread-safe) and remembers the peak."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.total = 0

    def enter(self) -> None:
        with self._lock:
            self.active += 1
            self.total += 1
            self.peak = max(self.peak, self.active)

    def exit(self) -> None:
        with self._lock:
            self.active -= 1


Reply = str | BaseException | Callable[[list[BaseMessage]], str]
"""A scripted reply: text, an exception to raise, or a function of the messages."""

_CALLS_LOCK = threading.Lock()
"""Guards the call logs (module level, so a fake model pickles)."""


class ScriptedChat(BaseChatModel):
    """Replies with ``replies[i]`` on its i-th call (the last one repeats).

    A reply may be a string (``""`` makes an empty reply), an exception instance
    (raised), or a function of the received messages returning a string.
    ``input_tokens`` / ``output_tokens`` are reported as usage (output defaults to
    the number of whitespace-separated words). ``calls`` records one dict per call:
    ``{"messages": [...], "kwargs": {...}}``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    replies: list[Any] = Field(default_factory=lambda: ["ok"])
    model_name: str = "fake"
    response_model: str | None = None
    """reported as ``response_metadata["model_name"]`` (default: ``model_name``)."""
    input_tokens: int = 10
    output_tokens: int | None = None
    delay: float = 0.0
    gauge: Any = None
    fail_mid_stream: bool = False
    calls: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted-fake"

    @property
    def lock(self) -> Any:
        """The lock guarding :attr:`calls` (for subclasses that log calls themselves)."""
        return _CALLS_LOCK

    def _next(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> AIMessage:
        with _CALLS_LOCK:
            i = len(self.calls)
            self.calls.append({"messages": list(messages), "kwargs": dict(kwargs)})
        reply = self.replies[min(i, len(self.replies) - 1)]
        if isinstance(reply, BaseException):
            raise reply
        if callable(reply):
            reply = reply(messages)
        out = self.output_tokens if self.output_tokens is not None else len(reply.split())
        return AIMessage(
            content=reply,
            usage_metadata=UsageMetadata(
                input_tokens=self.input_tokens,
                output_tokens=out,
                total_tokens=self.input_tokens + out,
            ),
            response_metadata={"model_name": self.response_model or self.model_name},
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.gauge is not None:
            self.gauge.enter()
        try:
            if self.delay:
                time.sleep(self.delay)
            message = self._next(messages, kwargs)
        finally:
            if self.gauge is not None:
                self.gauge.exit()
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.gauge is not None:
            self.gauge.enter()
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            message = self._next(messages, kwargs)
        finally:
            if self.gauge is not None:
                self.gauge.exit()
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _chunks(self, message: AIMessage) -> Iterator[AIMessageChunk]:
        tokens = [t for t in re.split(r"(\s)", message.text) if t]
        for i, token in enumerate(tokens):
            if self.fail_mid_stream and i == 1:
                raise RuntimeError("connection dropped mid-stream")
            last = i == len(tokens) - 1
            yield AIMessageChunk(
                content=token,
                usage_metadata=message.usage_metadata if last else None,
                response_metadata=message.response_metadata if last else {},
            )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        message = self._next(messages, kwargs)
        for chunk in self._chunks(message):
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=ChatGenerationChunk(message=chunk))
            yield ChatGenerationChunk(message=chunk)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        message = self._next(messages, kwargs)
        for chunk in self._chunks(message):
            if run_manager:
                await run_manager.on_llm_new_token(
                    chunk.text, chunk=ChatGenerationChunk(message=chunk)
                )
            yield ChatGenerationChunk(message=chunk)

    # -- helpers for assertions ------------------------------------------------

    def received(self, i: int = -1) -> list[BaseMessage]:
        """The messages of call ``i``."""
        return self.calls[i]["messages"]

    def kwargs(self, i: int = -1) -> dict[str, Any]:
        """The keyword arguments of call ``i``."""
        return self.calls[i]["kwargs"]


class ToolJudge(ScriptedChat):
    """A judge with native tool calling: ``with_structured_output`` uses ``bind_tools``.

    In tool mode (``tools`` bound) it replies with one tool call whose arguments are
    ``tool_args`` (or raises ``tool_error`` when set); without tools it replies from
    ``replies`` like :class:`ScriptedChat`.
    """

    tool_args: dict[str, Any] = Field(default_factory=dict)
    tool_error: Any = None

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _next(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> AIMessage:
        if "tools" not in kwargs:
            return super()._next(messages, kwargs)
        with _CALLS_LOCK:
            self.calls.append({"messages": list(messages), "kwargs": dict(kwargs)})
        if self.tool_error is not None:
            raise self.tool_error
        name = kwargs["tools"][0]["function"]["name"]
        return AIMessage(
            content="",
            tool_calls=[{"name": name, "args": dict(self.tool_args), "id": "call_1"}],
            usage_metadata=UsageMetadata(input_tokens=7, output_tokens=3, total_tokens=10),
            response_metadata={"model_name": self.model_name},
        )


def chat(*replies: Any, name: str = "fake", **kwargs: Any) -> ScriptedChat:
    """A :class:`ScriptedChat` with the given replies."""
    return ScriptedChat(replies=list(replies) or ["ok"], model_name=name, **kwargs)


def text_of(message: BaseMessage) -> str:
    """A message's text (its content, as a string, when the content is a list)."""
    return message.text if isinstance(message.content, str) else str(message.content)
