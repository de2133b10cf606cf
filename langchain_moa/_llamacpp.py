"""The chat model for llama.cpp's ``llama-server`` (the local engine and ``llamacpp/...``).

``LlamaServerChatModel`` is ``BaseChatOpenAI`` with three differences, each for something
llama.cpp's server does its own way (checked against llama.cpp's
``tools/server/README.md`` and ``common/chat.cpp`` of the version the ``local`` extra
builds):

* ``with_structured_output`` defaults to ``method="json_schema"``: OpenAI's
  ``response_format`` with the schema, which the server enforces with a grammar, so
  every reply parses (``"function_calling"`` would send a ``tool_choice`` naming the
  function, which the server does not honour).
* **A required tool call is grammar-enforced.** ``bind_tools(..., tool_choice=
  "required"/"any"/True)`` also sends ``response_format`` with a JSON schema of one call
  (``{"name": <a bound tool>, "arguments": <its parameters>}``), which the server
  enforces with a grammar; the server's own grammar for ``"required"`` lets a model
  write anything before the template's call tags, and a small model never reaches
  them (the 0.5B model ran to ``max_tokens``). A named choice (``tool_choice=
  "<name>"`` or ``{"type": "function", "function": {"name": ...}}``, which the server
  does not accept) binds that one tool, required. One call per reply.
* **Tool calls written as text are recovered.** The server parses a model's tool call
  only in the chat template's own syntax (for Qwen2.5, ``<tool_call>{...}</tool_call>``);
  small models often write the same call as a bare JSON object, or in a fenced
  ``json`` block. When tools were bound and the reply opens with such calls
  (``{"name": <a bound tool>, "arguments": {...}}`` objects or a list of them, each
  optionally fenced or in ``<tool_call>`` tags), they become ``tool_calls`` with
  ``finish_reason="tool_calls"``, as the server would have returned them; exact
  repeats count once, and whatever the model wrote after its calls (an imagined tool
  result such as ``{"result": 3}``, a repeat cut off at ``max_tokens``) is dropped from
  the message (callbacks saw it as tokens). A reply that opens with anything else
  (prose, another object) is left as it was. A stream with tools bound holds back a
  reply that opens like a call (``{``, ``[``, a fence, a tag) until it ends, then
  yields the calls as one chunk with ``tool_call_chunks``; a prose reply streams token
  by token as before (callbacks' ``on_llm_new_token`` always see the raw tokens).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.tool import tool_call, tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_openai.chat_models.base import BaseChatOpenAI

__all__ = ["LlamaServerChatModel", "recover_tool_calls"]

# what may stand before, between and after calls written as text: whitespace, fences, tags
_SEPARATOR = re.compile(r"(?:\s|```(?:json)?|</?tool_call>)*")


class LlamaServerChatModel(BaseChatOpenAI):
    """``BaseChatOpenAI`` for llama.cpp's server; see the module docstring for what
    differs (structured output, a named ``tool_choice``, tool calls written as text)."""

    def with_structured_output(  # type: ignore[override]
        self, schema: Any = None, *, method: str = "json_schema", **kwargs: Any
    ) -> Any:
        return super().with_structured_output(schema, method=method, **kwargs)

    def bind_tools(  # type: ignore[override]
        self, tools: Any, *, tool_choice: Any = None, **kwargs: Any
    ) -> Any:
        name = _named_choice(tool_choice)
        if name is not None:
            chosen = [t for t in tools if _function(t).get("name") == name]
            if chosen:
                tools, tool_choice = chosen, "required"
        if tool_choice in ("required", "any", True) and tools:
            kwargs["extra_body"] = {
                **(self.extra_body or {}),
                **(kwargs.get("extra_body") or {}),
                "response_format": _one_call_format(tools),
            }
        return super().bind_tools(tools, tool_choice=tool_choice, **kwargs)

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any):  # type: ignore[no-untyped-def]
        result = super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)
        return recover_tool_calls(result, kwargs.get("tools"))

    async def _agenerate(  # type: ignore[no-untyped-def]
        self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
    ):
        result = await super()._agenerate(messages, stop=stop, run_manager=run_manager, **kwargs)
        return recover_tool_calls(result, kwargs.get("tools"))

    def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any):  # type: ignore[no-untyped-def]
        held = _HeldStream(_tool_names(kwargs.get("tools")))
        for chunk in super()._stream(messages, stop=stop, run_manager=run_manager, **kwargs):
            yield from held.add(chunk)
        yield from held.finish()

    async def _astream(  # type: ignore[no-untyped-def]
        self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
    ):
        held = _HeldStream(_tool_names(kwargs.get("tools")))
        async for chunk in super()._astream(messages, stop=stop, run_manager=run_manager, **kwargs):
            for out in held.add(chunk):
                yield out
        for out in held.finish():
            yield out


class _HeldStream:
    """Holds back a streamed reply that opens like a tool call written as text, to
    yield it as a call when it ends; passes anything else straight through."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self.held: list[ChatGenerationChunk] = []
        self.passing = not names

    def add(self, chunk: ChatGenerationChunk) -> list[ChatGenerationChunk]:
        if self.passing:
            return [chunk]
        self.held.append(chunk)
        text = "".join(c.text for c in self.held).lstrip()
        if (text and not text.startswith(_CALL_OPENINGS)) or chunk.message.tool_call_chunks:
            self.passing = True  # prose, or the server parsed a call itself
            out, self.held = self.held, []
            return out
        return []

    def finish(self) -> list[ChatGenerationChunk]:
        if not self.held:
            return []
        total = self.held[0]
        for chunk in self.held[1:]:
            total = total + chunk
        calls = _calls_in(total.text, self.names)
        if not calls:
            return self.held
        message = total.message
        call_chunks = [
            tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
            for i, c in enumerate(calls)
        ]
        info = {**(total.generation_info or {}), "finish_reason": "tool_calls"}
        return [
            ChatGenerationChunk(
                message=AIMessageChunk(
                    content="",
                    id=message.id,
                    tool_call_chunks=call_chunks,
                    usage_metadata=message.usage_metadata,
                    response_metadata={**message.response_metadata, "finish_reason": "tool_calls"},
                    chunk_position="last",
                ),
                generation_info=info,
            )
        ]


def _named_choice(tool_choice: Any) -> str | None:
    if isinstance(tool_choice, dict):
        function = tool_choice.get("function")
        return function.get("name") if isinstance(function, dict) else None
    if isinstance(tool_choice, str) and tool_choice not in ("auto", "none", "required", "any"):
        return tool_choice
    return None


def _function(tool: Any) -> dict[str, Any]:
    """The OpenAI ``function`` object of a tool (``{}`` if it has none)."""
    function = convert_to_openai_tool(tool).get("function")
    return function if isinstance(function, dict) else {}


def _one_call_format(tools: Any) -> dict[str, Any]:
    """``response_format`` whose JSON schema is one call of one of ``tools``."""
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"const": f["name"]},
                "arguments": f.get("parameters") or {"type": "object", "properties": {}},
            },
            "required": ["name", "arguments"],
        }
        for f in map(_function, tools)
        if f.get("name")
    ]
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return {"type": "json_schema", "json_schema": {"name": "tool_call", "schema": schema}}


_CALL_OPENINGS = ("{", "[", "`", "<")


def _tool_names(tools: list[dict[str, Any]] | None) -> set[str]:
    """The function names of the tools in a request (``kwargs["tools"]``)."""
    return {
        t["function"]["name"]
        for t in tools or []
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
    }


def recover_tool_calls(result: ChatResult, tools: list[dict[str, Any]] | None) -> ChatResult:
    """``result`` with each reply that is only a tool call written as text (see the
    module docstring) turned into ``tool_calls``; unchanged without ``tools``."""
    names = _tool_names(tools)
    if not names:
        return result
    generations = []
    for generation in result.generations:
        message = generation.message
        calls = None
        if isinstance(message, AIMessage) and not message.tool_calls:
            calls = _calls_in(message.content, names)
        if calls:
            message = AIMessage(
                content="",
                id=message.id,
                tool_calls=calls,
                usage_metadata=message.usage_metadata,
                response_metadata={**message.response_metadata, "finish_reason": "tool_calls"},
                additional_kwargs=message.additional_kwargs,
            )
            info = {**(generation.generation_info or {}), "finish_reason": "tool_calls"}
            generation = ChatGeneration(message=message, generation_info=info)
        generations.append(generation)
    return ChatResult(generations=generations, llm_output=result.llm_output)


def _calls_in(content: Any, names: set[str]) -> list[Any] | None:
    """The calls ``content`` opens with (see the module docstring), or ``None``."""
    if not isinstance(content, str):
        return None
    decoder, text, pos = json.JSONDecoder(), content, 0
    calls: list[Any] = []
    seen: set[str] = set()
    while True:
        pos = _SEPARATOR.match(text, pos).end()
        try:
            value, pos = decoder.raw_decode(text, pos)
        except ValueError:
            break
        items = [_call(item, names) for item in (value if isinstance(value, list) else [value])]
        if not items or None in items:
            break
        for item in items:
            key = json.dumps(item, sort_keys=True)
            if key not in seen:
                seen.add(key)
                calls.append(tool_call(**item, id=f"call_{uuid.uuid4().hex[:24]}"))
    return calls or None


def _call(item: Any, names: set[str]) -> dict[str, Any] | None:
    """``{"name", "args"}`` of one call object of a bound tool, or ``None``."""
    if not isinstance(item, dict) or set(item) != {"name", "arguments"}:
        return None
    args = item["arguments"]
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if item["name"] not in names or not isinstance(args, dict):
        return None
    return {"name": item["name"], "args": args}
