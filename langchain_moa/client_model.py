"""A chat model around a mixture-llm style client function.

mixture-llm pipelines call an async function
``client(model, messages, temp, max_tokens) -> (text, input_tokens, output_tokens)``
where ``messages`` are OpenAI-style dicts. :class:`ClientChatModel` wraps such a
function so it can serve as an MoA agent, or anywhere a LangChain chat model goes.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, convert_to_openai_messages
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatResult

__all__ = ["ClientChatModel", "ClientFunction"]

ClientFunction = Callable[
    [str, list[dict[str, Any]], float, int],
    Awaitable[tuple[str, int, int]] | tuple[str, int, int],
]
"""``(model, messages, temp, max_tokens) -> (text, input_tokens, output_tokens)``,
async or plain."""


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

    def _arguments(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> tuple:
        temp = kwargs.get("temperature", kwargs.get("temp", self.temperature))
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        return (self.model, convert_to_openai_messages(messages), temp, max_tokens)

    def _result(self, reply: tuple[str, int, int]) -> ChatResult:
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
        message = AIMessage(
            content=text or "",
            usage_metadata=usage,
            response_metadata={"model_name": self.model},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        reply = self.client(*self._arguments(messages, kwargs))
        if inspect.isawaitable(reply):
            reply = _run_coroutine(reply)
        return self._result(reply)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        reply = self.client(*self._arguments(messages, kwargs))
        if inspect.isawaitable(reply):
            reply = await reply
        return self._result(reply)


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
