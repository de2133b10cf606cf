"""``pipeline()`` and ``run()``: the list-of-steps entry points mixture-llm users know."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import ensure_config

from langchain_moa._agents import CLIENT_CONFIG_KEY
from langchain_moa.errors import ConfigurationError
from langchain_moa.history import MoAHistoryHandler
from langchain_moa.steps._base import check_pipeline_part
from langchain_moa.types import MoAState


def pipeline(steps: Sequence[Any]) -> Runnable:
    """Join a list of steps with ``|``.

    ``pipeline([Propose([...]), Aggregate(...)])`` equals ``Propose([...]) | Aggregate(...)``.
    Any Runnable may appear; an entry that is neither a Runnable nor a step instance
    (a step class, a string, ...) raises instead of being ignored.

    Raises:
        ConfigurationError: an empty list, or an entry that is not a Runnable; the
            message gives its position.
    """
    if isinstance(steps, Runnable):
        return steps
    if not isinstance(steps, Sequence) or isinstance(steps, str) or not steps:
        raise ConfigurationError(f"steps must be a non-empty list of steps, got {steps!r}")
    for i, step in enumerate(steps):
        try:
            check_pipeline_part(step)
        except ConfigurationError as exc:
            raise ConfigurationError(f"steps[{i}]: {exc}") from None
        if not isinstance(step, Runnable):
            raise ConfigurationError(
                f"steps[{i}] is not a step or Runnable: {step!r} ({type(step).__name__})"
            )
    if len(steps) == 1:
        return steps[0]
    first, *rest = steps
    chained = first
    for step in rest:
        chained = chained | step
    return chained


async def run(
    steps: Sequence[Any] | Runnable,
    query: str | Sequence[BaseMessage] | Any,
    client: Callable[..., Any] | None = None,
    *,
    config: RunnableConfig | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """Run a pipeline and return ``(answer_text, history)``, as mixture-llm's ``run`` does.

    Args:
        steps: a list of steps (or an already joined pipeline).
        query: the question (str) or a conversation (messages / PromptValue).
        client: optional mixture-llm client ``(model, messages, temp, max_tokens) ->
            (text, input_tokens, output_tokens)`` that serves every agent given as a
            model-name string.
        config: extra LangChain config (callbacks, tags, ...).

    Returns:
        ``answer_text`` — the final message's text, or the first candidate's text
        when the pipeline does not end in Aggregate / Vote; ``history`` — one dict per
        step (see :class:`langchain_moa.history.StepRecord`).

    Raises:
        Whatever the steps raise (``LayerFailedError``, ``AggregatorError``, ...).
    """
    runnable = pipeline(steps)
    history = MoAHistoryHandler()
    cfg = ensure_config(config)
    cfg["callbacks"] = _with_handler(cfg.get("callbacks"), history)
    if client is not None:
        cfg["configurable"] = {**cfg.get("configurable", {}), CLIENT_CONFIG_KEY: client}
    out = await runnable.ainvoke(query, cfg)
    return _answer_text(out), history.to_list()


def _with_handler(callbacks: Any, handler: MoAHistoryHandler) -> Any:
    if callbacks is None:
        return [handler]
    if isinstance(callbacks, list):
        return [*callbacks, handler]
    manager = callbacks.copy()
    manager.add_handler(handler, inherit=True)
    return manager


def _answer_text(out: Any) -> str:
    if isinstance(out, BaseMessage):
        return out.text
    if isinstance(out, MoAState):
        return out.candidates[0].text if out.candidates else ""
    return str(out)


__all__ = ["pipeline", "run"]
