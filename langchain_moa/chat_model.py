"""An MoA pipeline wherever a chat model goes: ``MoAChatModel``.

A pipeline (``Propose(...) | Aggregate(...)``) is a Runnable, not a chat model, so
LangChain's agent builders, which call ``bind_tools`` and ``with_structured_output``
on their model, refuse it. ``MoAChatModel`` is a ``BaseChatModel`` that runs the
pipeline as its generation::

    from langchain.agents import create_agent
    from langchain_moa import Aggregate, MoAChatModel, Propose

    moa = MoAChatModel(pipeline=Propose(["groq/llama-3.1-8b-instant"] * 3)
                       | Aggregate("openai/gpt-4o-mini"))
    agent = create_agent(moa, tools=[get_weather])

What each part sees when tools are bound (``bind_tools``, ``with_structured_output``,
``create_agent``, LangGraph's ``create_react_agent``):

* **proposers** get the whole conversation, earlier tool calls and tool results
  included, but **no tools**: they answer in prose, as in the MoA paper;
* the **aggregator** (the final ``Aggregate``) gets the tools (its own
  ``bind_tools``, so any provider's tool format works) and writes either the final
  answer or the tool call, informed by the proposers' answers.

A pipeline ending in ``Vote`` answers without tools (``Vote`` picks one of the
candidates and writes nothing new), so ``bind_tools`` on it raises.

Usage, streaming and tracing: the model's ``AIMessage`` carries the pipeline's
``usage_metadata`` (every call of the run summed) and ``response_metadata["moa"]``;
``stream`` yields the aggregator's tokens. Each inner call is a child run of the
model's run. The inner calls run with LangGraph's ``nostream`` tag, so
``stream_mode="messages"`` shows the tokens once (the MoA model's), and the message
has no ``response_metadata["model_name"]``, so LangChain's
``UsageMetadataCallbackHandler`` counts each inner call under its own model, never
the sum a second time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.chat_models import (
    agenerate_from_stream,
    generate_from_stream,
)
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, RunnableSequence
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, field_validator

from langchain_moa.errors import ConfigurationError
from langchain_moa.steps import Aggregate, Vote
from langchain_moa.steps._aggregate import AGGREGATOR_CALL_KEY

__all__ = ["MoAChatModel"]

NOSTREAM_TAG = "nostream"
"""LangGraph's tag (``langgraph.constants.TAG_NOSTREAM``) keeping a chat model's tokens
out of ``stream_mode="messages"``; put on the inner calls so tokens appear once."""


def _final_step(pipeline: Runnable) -> Runnable:
    if isinstance(pipeline, RunnableSequence):
        return pipeline.last
    return pipeline


class MoAChatModel(BaseChatModel):
    """A chat model whose every generation is one run of an MoA ``pipeline``.

    Args:
        pipeline: a pipeline ending in ``Aggregate`` or ``Vote`` (a Runnable from
            chat messages to an ``AIMessage``), e.g. ``Propose([...]) | Aggregate(...)``
            or a preset such as ``self_moa(...)``; a list of steps is joined with ``|``.
        temperature, max_tokens, stop: LangChain's standard parameters, applied to the
            **aggregator's** call only (proposers keep their steps' settings);
            ``None`` leaves the ``Aggregate`` step's own setting.
        streaming: ``invoke`` streams the aggregator's reply, so callbacks (and
            LangGraph's ``stream_mode="messages"``) get its tokens.

    Tools and structured output (``bind_tools``, ``with_structured_output``) reach the
    final ``Aggregate``'s agent only; proposers answer in prose without tools (see the
    module docstring). ``stop`` sequences also apply to the aggregator only.

    Raises:
        ConfigurationError: at construction, ``pipeline`` is not a Runnable or does not
            end in ``Aggregate``/``Vote``, an unknown parameter, ``temperature``
            outside [0, 2] or ``max_tokens`` < 1; ``bind_tools`` on a pipeline ending in
            ``Vote``, or whose aggregator has no ``bind_tools`` (at call time).
        LayerFailedError, AggregatorError: from the pipeline, as when it is invoked.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    pipeline: Runnable = Field(description="an MoA pipeline ending in Aggregate or Vote")
    temperature: float | None = Field(default=None, ge=0, le=2)
    """Sampling temperature of the aggregator's call (``None``: the step's)."""
    max_tokens: int | None = Field(default=None, ge=1)
    """Output budget of the aggregator's call, in tokens (``None``: the step's)."""
    stop: list[str] | None = None
    """Stop sequences of the aggregator's call."""
    streaming: bool = False
    """``invoke`` streams the aggregator's reply (callbacks see its tokens)."""

    @field_validator("pipeline", mode="before")
    @classmethod
    def _check_pipeline(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            from langchain_moa._run import pipeline as join

            value = join(value)
        if not isinstance(value, Runnable):
            raise ConfigurationError(
                f"pipeline must be a Runnable such as Propose([...]) | Aggregate(...), "
                f"got {type(value).__name__}"
            )
        if not isinstance(_final_step(value), (Aggregate, Vote)):
            raise ConfigurationError(
                f"pipeline must end with Aggregate or Vote (it returns the AIMessage), "
                f"but it ends with {_final_step(value).get_name()}"
            )
        return value

    @classmethod
    def is_lc_serializable(cls) -> bool:
        """``dumpd`` / ``loads`` round-trip it when its pipeline's steps and agents are
        serialisable (model strings, serialisable chat models, a ``ProviderRouter``)."""
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["langchain_moa"]

    def __init__(self, pipeline: Any = None, **kwargs: Any) -> None:
        """``MoAChatModel(pipeline)`` or ``MoAChatModel(pipeline=...)``; a list of steps
        is joined with ``|``. Raises :class:`ConfigurationError` (never pydantic's
        ``ValidationError``) for a bad pipeline."""
        from pydantic import ValidationError

        if pipeline is not None:
            kwargs["pipeline"] = pipeline
        try:
            super().__init__(**kwargs)
        except ValidationError as exc:
            first = exc.errors()[0]
            cause = (first.get("ctx") or {}).get("error")
            if isinstance(cause, ConfigurationError):
                raise cause from None
            field = ".".join(str(p) for p in first.get("loc", ()))
            raise ConfigurationError(
                f"MoAChatModel {field}: {first.get('msg')} (got {first.get('input')!r})"
            ) from None

    @property
    def _llm_type(self) -> str:
        return "moa"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "pipeline": repr(self.pipeline),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stop": self.stop,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "langchain_moa"
        params["ls_model_name"] = kwargs.get("model") or _final_step(self.pipeline).get_name()
        for key, value in (
            ("ls_temperature", kwargs.get("temperature", self.temperature)),
            ("ls_max_tokens", kwargs.get("max_tokens", self.max_tokens)),
            ("ls_stop", stop or self.stop),
        ):
            if value is not None:
                params[key] = value
        return params

    # -- tools ------------------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Give the aggregator ``tools`` (OpenAI tool schemas, pydantic models,
        functions or ``BaseTool``s); it may answer with ``tool_calls``.

        ``tool_choice`` and other keyword arguments (``strict``, ``parallel_tool_calls``)
        are passed to the aggregator's own ``bind_tools``.

        Raises:
            ConfigurationError: the pipeline ends in ``Vote`` (it cannot call tools).
        """
        final = _final_step(self.pipeline)
        if not isinstance(final, Aggregate):
            raise ConfigurationError(
                f"bind_tools needs a pipeline ending in Aggregate; it ends in "
                f"{final.get_name()}, which picks a candidate and cannot call tools"
            )
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        tool_kwargs = dict(kwargs)
        if tool_choice is not None:
            tool_kwargs["tool_choice"] = tool_choice
        return self.bind(moa_tools=formatted, moa_tool_kwargs=tool_kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        include_raw: bool = False,
        method: str = "function_calling",
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """Answers shaped by ``schema`` (a pydantic class, a ``TypedDict`` or a JSON schema).

        ``method="function_calling"`` (default, any aggregator with ``bind_tools``): the
        aggregator is made to call one tool whose arguments are the answer.
        ``method="json_schema"`` / ``"json_mode"`` (OpenAI-compatible aggregators,
        e.g. llama.cpp's server, which enforces the schema by grammar): the aggregator's
        call gets OpenAI's ``response_format`` and its reply text is parsed. Proposers
        answer in prose either way.

        Raises:
            ConfigurationError: an unknown ``method``, or arguments LangChain does not
                define for ``with_structured_output``.
        """
        if kwargs:
            raise ConfigurationError(f"with_structured_output: unknown arguments {sorted(kwargs)}")
        if method == "function_calling":
            return super().with_structured_output(schema, include_raw=include_raw)
        if method not in ("json_schema", "json_mode"):
            raise ConfigurationError(
                f"method must be 'function_calling', 'json_schema' or 'json_mode', got {method!r}"
            )
        from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
        from langchain_core.runnables import RunnableMap, RunnablePassthrough
        from langchain_core.utils.pydantic import is_basemodel_subclass

        pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        if method == "json_mode":
            response_format: dict[str, Any] = {"type": "json_object"}
        else:
            tool = convert_to_openai_tool(schema)["function"]
            json_schema: dict[str, Any] = {"name": tool["name"], "schema": tool["parameters"]}
            if strict is not None:
                json_schema["strict"] = strict
            response_format = {"type": "json_schema", "json_schema": json_schema}
        llm = self.bind(response_format=response_format)
        parser = PydanticOutputParser(pydantic_object=schema) if pydantic else JsonOutputParser()
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(
            parsed=lambda x: parser.invoke(x["raw"]), parsing_error=lambda _: None
        ).with_fallbacks(
            [RunnablePassthrough.assign(parsed=lambda _: None)], exception_key="parsing_error"
        )
        return RunnableMap(raw=llm) | parsed

    # -- generation ---------------------------------------------------------------

    def _config(
        self, run_manager: Any, stop: list[str] | None, kwargs: dict[str, Any]
    ) -> RunnableConfig:
        tools = kwargs.pop("moa_tools", None)
        tool_kwargs = kwargs.pop("moa_tool_kwargs", None) or {}
        call_kwargs = {
            k: v
            for k, v in (
                ("temperature", self.temperature),
                ("max_tokens", self.max_tokens),
                ("stop", stop or self.stop),
            )
            if v is not None
        }
        call_kwargs.update(kwargs)
        config: RunnableConfig = {"tags": [NOSTREAM_TAG]}
        if run_manager is not None:
            config["callbacks"] = _child_callbacks(run_manager)
        if tools or call_kwargs:
            config["configurable"] = {
                AGGREGATOR_CALL_KEY: {
                    "tools": tools,
                    "tool_kwargs": tool_kwargs,
                    "kwargs": call_kwargs,
                }
            }
        return config

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
        reply = self.pipeline.invoke(messages, self._config(run_manager, stop, kwargs))
        return ChatResult(generations=[ChatGeneration(message=_outer_message(reply))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))
        reply = await self.pipeline.ainvoke(messages, self._config(run_manager, stop, kwargs))
        return ChatResult(generations=[ChatGeneration(message=_outer_message(reply))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        config = self._config(run_manager, stop, kwargs)
        for chunk in self.pipeline.stream(messages, config):
            yield ChatGenerationChunk(message=_outer_chunk(chunk))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        config = self._config(run_manager, stop, kwargs)
        async for chunk in self.pipeline.astream(messages, config):
            yield ChatGenerationChunk(message=_outer_chunk(chunk))


def _child_callbacks(run_manager: Any) -> Any:
    """Callbacks for the pipeline's runs, nested under this model's run (an LLM run
    manager has no ``get_child``; this is what a chain run manager's does)."""
    from langchain_core.callbacks import AsyncCallbackManager, CallbackManager

    async_run = isinstance(run_manager, AsyncCallbackManagerForLLMRun)
    manager = (AsyncCallbackManager if async_run else CallbackManager)(
        handlers=[], parent_run_id=run_manager.run_id
    )
    manager.set_handlers(run_manager.inheritable_handlers)
    manager.add_tags(run_manager.inheritable_tags)
    manager.add_metadata(run_manager.inheritable_metadata)
    return manager


def _without_model_name(metadata: dict[str, Any]) -> dict[str, Any]:
    """``response_metadata`` without ``model_name`` (kept as ``moa_model_name``), so a
    usage callback does not count the summed usage a second time."""
    out = dict(metadata)
    name = out.pop("model_name", None)
    if name is not None:
        out["moa_model_name"] = name
    return out


def _outer_message(reply: Any) -> AIMessage:
    if not isinstance(reply, AIMessage):
        raise ConfigurationError(
            f"the pipeline returned a {type(reply).__name__}, not an AIMessage: end it "
            f"with Aggregate or Vote"
        )
    # id=None: LangChain gives the message this model run's id
    return reply.model_copy(
        update={"id": None, "response_metadata": _without_model_name(reply.response_metadata)}
    )


def _outer_chunk(chunk: Any) -> AIMessageChunk:
    if isinstance(chunk, AIMessageChunk):
        message = chunk
    elif isinstance(chunk, AIMessage):  # a step that does not stream (Vote)
        message = AIMessageChunk(
            content=chunk.content,
            usage_metadata=chunk.usage_metadata,
            response_metadata=chunk.response_metadata,
            tool_call_chunks=[
                {"name": c["name"], "args": _json(c["args"]), "id": c["id"], "index": i}
                for i, c in enumerate(chunk.tool_calls)
            ],
        )
    else:
        raise ConfigurationError(
            f"the pipeline streamed a {type(chunk).__name__}, not message chunks: end it "
            f"with Aggregate or Vote"
        )
    return message.model_copy(
        update={"id": None, "response_metadata": _without_model_name(message.response_metadata)}
    )


def _json(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)
