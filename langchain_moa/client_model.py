"""A chat model around a mixture-llm style client function.

mixture-llm pipelines call an async function
``client(model, messages, temp, max_tokens) -> (text, input_tokens, output_tokens)``
where ``messages`` are OpenAI-style dicts. :class:`ClientChatModel` wraps such a
function so it can serve as an MoA agent, or anywhere a LangChain chat model goes.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import os
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    BaseCallbackHandler,
    CallbackManagerForLLMRun,
)
from langchain_core.globals import get_llm_cache
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    LC_ID_PREFIX,
    AIMessage,
    BaseMessage,
    convert_to_openai_messages,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables.utils import coro_with_context

__all__ = ["ClientChatModel", "ClientFunction", "ClientReply"]

ClientFunction = Callable[
    [str, list[dict[str, Any]], float, int],
    Awaitable[tuple[str, int, int]] | tuple[str, int, int],
]
"""``(model, messages, temp, max_tokens) -> (text, input_tokens, output_tokens)``,
async or plain."""


class ClientReply(NamedTuple):
    """A client function's reply before any ``AIMessage`` is built: what the MoA steps
    read of a reply (``text``, ``usage_metadata``, ``response_metadata``,
    ``tool_calls``, as on an ``AIMessage``). :meth:`message` builds the message."""

    text: str
    usage_metadata: UsageMetadata
    response_metadata: dict[str, Any]
    tool_calls: tuple[()] = ()

    def message(self, id: str | None = None) -> AIMessage:
        """The reply as an ``AIMessage`` with ``id`` (see :func:`run_message_id`)."""
        return AIMessage(
            content=self.text,
            usage_metadata=self.usage_metadata,
            response_metadata=self.response_metadata,
            id=id,
        )


def run_message_id() -> str:
    """A message id shaped like those LangChain gives a run's reply
    (``lc_run--<uuid>-0``), for a reply made with no LangChain run."""
    return f"{LC_ID_PREFIX}-{uuid.uuid4()}-0"


class ClientChatModel(BaseChatModel):
    """Chat model that delegates to a mixture-llm style client function.

    Args:
        client: ``(model, messages, temp, max_tokens) -> (text, input_tokens,
            output_tokens)``; async or plain. ``messages`` are OpenAI-style
            ``{"role", "content"}`` dicts.
        model: the model name passed to ``client``.
        temperature: default ``temp`` (0.7, the MoA paper's), overridden per call by
            ``temperature=`` (or ``temp=``) keyword arguments.
        max_tokens: default ``max_tokens`` (2048), overridable per call.

    The reply is an ``AIMessage`` with ``usage_metadata`` from the two token counts
    and ``response_metadata["model_name"] == model``.

    MoA steps call the client directly, with no LangChain chat-model run, when no one
    could see that run (:meth:`unobserved`): as mixture-llm does, at its cost per call.
    A tracer, a usage or streaming handler, a cache or a rate limiter brings the
    LangChain run back.
    """

    client: Callable[..., Any]
    model: str
    temperature: float = 0.7
    max_tokens: int = 2048

    @property
    def _llm_type(self) -> str:
        return "mixture-llm-client"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "temperature": self.temperature}

    def _arguments(self, messages: list[dict[str, Any]], kwargs: dict[str, Any]) -> tuple:
        temp = kwargs.get("temperature", kwargs.get("temp", self.temperature))
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        return (self.model, messages, temp, max_tokens)

    @property
    def async_client(self) -> bool:
        """True when the client is a coroutine function (or an object whose
        ``__call__`` is one)."""
        client = self.client
        return inspect.iscoroutinefunction(client) or inspect.iscoroutinefunction(
            type(client).__call__
        )

    def unobserved(self, handlers: list[BaseCallbackHandler]) -> bool:
        """True when a call whose LangChain run would get ``handlers`` may skip that
        run and nobody could tell: none of the handlers reads chat-model or LLM events
        (a LangSmith tracer, ``collect_runs``, a usage, streaming or ``astream_events``
        handler does), and the model adds nothing of its own: no cache in effect (its
        ``cache=`` or ``set_llm_cache``), no rate limiter, no callbacks, not
        ``verbose``, v0 output, and not a subclass (which may change what a call
        does)."""
        if type(self) is not ClientChatModel:
            return False
        cached = self.cache is not False and (self.cache is not None or get_llm_cache() is not None)
        if cached or self.rate_limiter is not None or self.callbacks or self.verbose:
            return False
        if self.output_version == "v1":
            return False
        return all(h.ignore_chat_model and h.ignore_llm for h in handlers)

    def reply(self, messages: list[dict[str, Any]], **kwargs: Any) -> ClientReply:
        """One call of the client with no LangChain run (see :meth:`unobserved`):
        OpenAI-style ``messages`` in, a :class:`ClientReply` out (no ``AIMessage`` is
        built; :meth:`ClientReply.message` makes one).

        Raises:
            TypeError: the client returned something other than a 3-tuple.
        """
        reply = self.client(*self._arguments(messages, kwargs))
        if inspect.isawaitable(reply):
            reply = _run_coroutine(reply)
        return self._client_reply(reply)

    async def areply(self, messages: list[dict[str, Any]], **kwargs: Any) -> ClientReply:
        """Async :meth:`reply`."""
        reply = self.client(*self._arguments(messages, kwargs))
        if inspect.isawaitable(reply):
            reply = await reply
        return self._client_reply(reply)

    def _client_reply(self, reply: tuple[str, int, int]) -> ClientReply:
        if not isinstance(reply, (tuple, list)) or len(reply) != 3:
            raise TypeError(
                f"the client function must return (text, input_tokens, output_tokens), "
                f"got {type(reply).__name__}: {reply!r:.100}"
            )
        text, input_tokens, output_tokens = reply
        usage = UsageMetadata(
            input_tokens=int(input_tokens),
            output_tokens=int(output_tokens),
            total_tokens=int(input_tokens) + int(output_tokens),
        )
        return ClientReply(text or "", usage, {"model_name": self.model})

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # LangChain's run names the reply (lc_run--<run id>-0)
        message = self.reply(convert_to_openai_messages(messages), **kwargs).message()
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        message = (await self.areply(convert_to_openai_messages(messages), **kwargs)).message()
        return ChatResult(generations=[ChatGeneration(message=message)])


def run_in_background(make: Callable[[], Awaitable[Any]]) -> Any:
    """Run the coroutine ``make()`` on the shared client loop (see
    :func:`_run_coroutine`) in a copy of the caller's context (LangChain's run config,
    tracing), and return its result."""
    context = contextvars.copy_context()

    async def in_context() -> Any:
        return await coro_with_context(make(), context)

    return _run_coroutine(in_context())


def _run_coroutine(coro: Awaitable[Any]) -> Any:
    """Run ``coro`` to completion from sync code.

    Coroutines of sync callers run on one shared event loop in a daemon thread
    (``asyncio.run`` per call would build and tear down a loop each time); a coroutine
    that itself calls back into sync code from that loop's thread gets a loop of its
    own in a worker thread instead of waiting on itself.
    """
    loop, thread = _background_loop()
    if threading.current_thread() is thread:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, coro).result()  # type: ignore[arg-type]
    return asyncio.run_coroutine_threadsafe(coro, loop).result()  # type: ignore[arg-type]


_LOOP: tuple[asyncio.AbstractEventLoop, threading.Thread, int] | None = None
_LOOP_LOCK = threading.Lock()


def _background_loop() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    """The shared loop and its thread, started on first use (again after a fork)."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP[2] != os.getpid() or not _LOOP[1].is_alive():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name="langchain-moa-client-loop", daemon=True
            )
            thread.start()
            _LOOP = (loop, thread, os.getpid())
        return _LOOP[0], _LOOP[1]
