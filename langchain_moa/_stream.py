"""``stream``/``astream`` through ``transform``/``atransform``.

LangChain's ``Runnable.stream`` defaults to yielding ``invoke``'s one result; a Runnable
that streams for real implements ``transform`` and routes ``stream`` to it, as
``RunnableLambda`` and the output parsers do. This mixin is that routing, once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.runnables import RunnableConfig

__all__ = ["StreamsByTransform"]


class StreamsByTransform:
    """Mixin for a Runnable whose ``transform``/``atransform`` stream: ``stream`` and
    ``astream`` of one input are the transform of a one-item input stream."""

    def stream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        yield from self.transform(iter([input]), config, **kwargs)  # type: ignore[attr-defined]

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        async def one() -> AsyncIterator[Any]:
            yield input

        async for chunk in self.atransform(one(), config, **kwargs):  # type: ignore[attr-defined]
            yield chunk
