"""What every MoA step shares: input coercion, tracing, history events, and the
parallel execution of model calls (threads for sync, a gather for async, bounded by
``max_concurrency``)."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from uuid import UUID

from langchain_core.callbacks import (
    BaseCallbackHandler,
    dispatch_custom_event,
)
from langchain_core.callbacks.base import BaseCallbackManager
from langchain_core.callbacks.manager import (
    AsyncCallbackManager,
    AsyncCallbackManagerForChainRun,
    CallbackManager,
    CallbackManagerForChainRun,
    adispatch_custom_event,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    convert_to_messages,
    convert_to_openai_messages,
)
from langchain_core.prompt_values import ChatPromptValue, PromptValue
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import (
    ensure_config,
    get_async_callback_manager_for_config,
    get_callback_manager_for_config,
    get_config_list,
    set_config_context,
    var_child_runnable_config,
)
from langchain_core.runnables.utils import coro_with_context, gather_with_concurrency
from langchain_core.utils.uuid import uuid7
from pydantic import ConfigDict, PrivateAttr
from pydantic._internal._model_construction import ModelMetaclass

from langchain_moa import _budget, pricing
from langchain_moa._agents import Agent
from langchain_moa._settings import DEFAULT, _Default, check_reachable, step_values
from langchain_moa.client_model import ClientChatModel, ClientReply, run_in_background
from langchain_moa.errors import ConfigurationError
from langchain_moa.steps._threads import POOL_SIZE, map_bounded
from langchain_moa.types import CallRecord, MoAState

STEP_EVENT = "moa_step"
"""Custom event dispatched when a step ends (data: a :class:`StepRecord`-shaped dict
whose ``calls`` are the step's :class:`CallRecord` objects)."""
CALL_EVENT = "moa_call"
"""Custom event dispatched after each model call (data: a :class:`CallRecord` dict)."""


def to_state(value: Any) -> MoAState:
    """Coerce a pipeline input into a :class:`MoAState`.

    Accepts a state, anything a chat model accepts (``str``, a ``PromptValue``, a
    message or a list of messages / message-like tuples and dicts), or a LangGraph
    style ``{"messages": [...]}`` dict.

    Raises:
        TypeError: for anything else.
    """
    if isinstance(value, MoAState):
        return value
    if isinstance(value, str):
        return MoAState(messages=[HumanMessage(content=value)])
    if isinstance(value, PromptValue):
        return MoAState(messages=value.to_messages())
    if isinstance(value, BaseMessage):
        return MoAState(messages=[value])
    if isinstance(value, dict) and "messages" in value:
        return MoAState(messages=convert_to_messages(value["messages"]))
    if isinstance(value, Sequence):
        return MoAState(messages=convert_to_messages(value))
    raise TypeError(
        f"an MoA pipeline takes a str, a PromptValue, messages or an MoAState, got "
        f"{type(value).__name__}"
    )


class _StepMeta(ModelMetaclass):
    """Catches a step *class* used where an instance belongs.

    ``seq | Shuffle`` (no parentheses) makes LangChain wrap the class in a
    RunnableLambda, which later calls ``Shuffle(state)``; that call lands here.
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if args and isinstance(args[0], MoAState):
            raise ConfigurationError(
                f"{cls.__name__} was put in a pipeline as a class; use an instance, "
                f"e.g. {cls.__name__}(...)"
            )
        # ``name`` is every Runnable's field; LangChain's configurable_fields passes it
        # back when it rebuilds a step, so each step's __init__ need not name it.
        name = kwargs.pop("name", None)
        step = super().__call__(*args, **kwargs)
        if name is not None:
            step.name = name
        return step


def _is_output_parser(other: Any) -> bool:
    from langchain_core.output_parsers import BaseGenerationOutputParser, BaseOutputParser

    return isinstance(other, (BaseOutputParser, BaseGenerationOutputParser))


def check_pipeline_part(other: Any) -> None:
    """Raise if ``other`` is a step class instead of an instance."""
    if isinstance(other, type):
        raise ConfigurationError(
            f"{other.__name__} is a class; put an instance in the pipeline, "
            f"e.g. {other.__name__}(...)"
        )


class Step(RunnableSerializable[Any, Any], metaclass=_StepMeta):
    """Base class of the MoA steps: a Runnable from an :class:`MoAState` (or chat
    input) to a new :class:`MoAState` (``Aggregate`` and ``Vote``: an ``AIMessage``).

    Each invocation is one chain run named after the step; it dispatches a
    ``"moa_step"`` custom event with the step's record when it ends (also when it
    fails), which :class:`langchain_moa.MoAHistoryHandler` collects.

    Steps are ``RunnableSerializable`` (pydantic models): ``configurable_fields`` /
    ``configurable_alternatives`` work on them, and ``dumpd`` / ``loads`` round-trip
    a pipeline whose agents are model strings or serialisable chat models (their
    secrets as ``lc_secrets``, never in the payload). Load with
    ``loads(text, valid_namespaces=["langchain_moa"], allowed_objects=[...])``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["langchain_moa"]

    def to_json(self) -> Any:
        """LangChain serialisation; agents are written as what the user passed."""
        out = super().to_json()
        kwargs = out.get("kwargs")
        if isinstance(kwargs, dict):
            if isinstance(kwargs.get("agents"), list):
                kwargs["agents"] = [getattr(a, "spec", a) for a in kwargs["agents"]]
            if isinstance(kwargs.get("agent"), Agent):
                kwargs["agent"] = kwargs["agent"].spec
        return out

    def __or__(self, other: Any) -> Any:
        check_pipeline_part(other)
        if self.OutputType is MoAState and _is_output_parser(other):
            raise ConfigurationError(
                f"{type(self).__name__} returns an MoAState, not a message, so "
                f"{type(other).__name__} cannot parse it: end the pipeline with Aggregate "
                f"or Vote before an output parser"
            )
        return super().__or__(other)

    def __ror__(self, other: Any) -> Any:
        check_pipeline_part(other)
        return super().__ror__(other)

    @property
    def params(self) -> dict[str, Any]:
        """The step's parameters, as recorded in the history."""
        return {}

    @property
    def InputType(self) -> Any:  # noqa: N802 - LangChain's name
        """What a chat model takes, a LangGraph ``{"messages": [...]}`` dict, or the
        previous step's :class:`MoAState` (see :func:`to_state`)."""
        return LanguageModelInput | MoAState | dict[str, Any]

    @property
    def OutputType(self) -> Any:  # noqa: N802 - LangChain's name
        return MoAState

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    __str__ = __repr__

    # -- running: subclasses implement _run (sync) and _arun (async) ---------

    # LangChain's _call_with_config would inspect the signature of the traced function
    # on every run; these do the same (one chain run, its child config, the context)
    # with no inspection. A run no handler reads chain events of is silent (see
    # _silent_run): nothing is dispatched for its start and end.

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        config = ensure_config(config)
        manager = get_callback_manager_for_config(config)
        run_id = config.pop("run_id", None)
        if _watches_chains(manager.handlers):
            name = config.get("run_name") or self.get_name()
            run_manager = manager.on_chain_start(
                None, input, run_type="chain", name=name, run_id=run_id
            )
        else:
            run_manager = _silent_run(_SilentChainRun, manager, run_id)
        try:
            step_config = _child_config(config, run_manager)
            with set_config_context(step_config) as context:
                out = context.run(self._traced_run, input, step_config, run_manager.handlers)
        except BaseException as exc:
            run_manager.on_chain_error(exc)
            raise
        run_manager.on_chain_end(out)
        return out

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self._ainvoke(input, ensure_config(config))

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """LangChain's ``abatch`` (each input's ``ainvoke`` gathered, at most
        ``max_concurrency`` at once), with each input's config ensured once, not twice."""
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))

        async def one(value: Any, config: RunnableConfig) -> Any:
            try:
                return await self._ainvoke(value, config)
            except Exception as exc:
                if return_exceptions:
                    return exc
                raise

        limit = configs[0].get("max_concurrency")
        return await gather_with_concurrency(limit, *map(one, inputs, configs))

    async def _ainvoke(self, input: Any, config: RunnableConfig) -> Any:
        """:meth:`ainvoke` for an ensured ``config``."""
        manager = get_async_callback_manager_for_config(config)
        run_id = config.pop("run_id", None)
        if _watches_chains(manager.handlers):
            name = config.get("run_name") or self.get_name()
            run_manager = await manager.on_chain_start(
                None, input, run_type="chain", name=name, run_id=run_id
            )
        else:
            run_manager = _silent_run(_AsyncSilentChainRun, manager, run_id)
        try:
            step_config = _child_config(config, run_manager)
            traced = self._traced_arun(input, step_config, run_manager.handlers)
            if isinstance(run_manager, _AsyncSilentChainRun):
                out = await _with_child_config(step_config, traced)
            else:
                with set_config_context(step_config) as context:
                    out = await coro_with_context(traced, context)
        except BaseException as exc:
            await run_manager.on_chain_error(exc)
            raise
        await run_manager.on_chain_end(out)
        return out

    def _traced_run(
        self, input: Any, step_config: RunnableConfig, handlers: list[BaseCallbackHandler]
    ) -> Any:
        report = StepReport(self, to_state(input), handlers)
        try:
            out = self._run(report, step_config)
        except BaseException as exc:
            emit(step_config, STEP_EVENT, lambda exc=exc: report.record(error=exc))
            raise
        emit(step_config, STEP_EVENT, lambda: report.record(out))
        return out

    async def _traced_arun(
        self, input: Any, step_config: RunnableConfig, handlers: list[BaseCallbackHandler]
    ) -> Any:
        report = StepReport(self, to_state(input), handlers)
        try:
            out = await self._arun(report, step_config)
        except BaseException as exc:
            await aemit(step_config, STEP_EVENT, lambda exc=exc: report.record(error=exc))
            raise
        await aemit(step_config, STEP_EVENT, lambda: report.record(out))
        return out

    def _run(self, report: StepReport, config: RunnableConfig) -> Any:
        raise NotImplementedError

    async def _arun(self, report: StepReport, config: RunnableConfig) -> Any:
        return self._run(report, config)


def _watches_chains(handlers: list[BaseCallbackHandler]) -> bool:
    """True when a handler reads chain events (``ignore_chain`` false): a tracer,
    ``collect_runs``, ``astream_events``, LangGraph's streaming, most user handlers."""
    return any(not handler.ignore_chain for handler in handlers)


def _silent_run(cls: type[Any], manager: BaseCallbackManager, run_id: UUID | None) -> Any:
    """The run manager ``on_chain_start`` would return (a run id, the handlers, tags
    and metadata its child runs and custom events inherit), built without dispatching
    the start: for a run no handler reads chain events of."""
    return cls(
        run_id=run_id or uuid7(),
        handlers=manager.handlers,
        inheritable_handlers=manager.inheritable_handlers,
        parent_run_id=manager.parent_run_id,
        tags=manager.tags,
        inheritable_tags=manager.inheritable_tags,
        metadata=manager.metadata,
        inheritable_metadata=manager.inheritable_metadata,
    )


class _SilentChainRun(CallbackManagerForChainRun):
    """A chain run manager that dispatches nothing for its end or error: every
    handler would skip them (``ignore_chain``). Made by :func:`_silent_run`."""

    def on_chain_end(self, outputs: Any, **kwargs: Any) -> None:
        pass

    def on_chain_error(self, error: BaseException, **kwargs: Any) -> None:
        pass


class _AsyncSilentChainRun(AsyncCallbackManagerForChainRun):
    """Async :class:`_SilentChainRun`."""

    async def on_chain_end(self, outputs: Any, **kwargs: Any) -> None:
        pass

    async def on_chain_error(self, error: BaseException, **kwargs: Any) -> None:
        pass


async def _with_child_config(config: RunnableConfig, coro: Awaitable[Any]) -> Any:
    """Await ``coro`` with ``config`` as the child runnable config (what a nested
    ``ensure_config()`` sees), in the current task. A silent run has no tracer whose
    context LangChain's ``set_config_context`` would also set, so it needs no task of
    its own; within a pipeline each step already runs in a task LangChain made."""
    token = var_child_runnable_config.set(config)
    try:
        return await coro
    finally:
        var_child_runnable_config.reset(token)


def _child_config(config: RunnableConfig, run_manager: Any) -> RunnableConfig:
    """``patch_config(config, callbacks=run_manager.get_child())`` for an ensured
    ``config`` (no second copy of it): the step's calls are children of its run."""
    child: RunnableConfig = {**config, "callbacks": run_manager.get_child()}  # type: ignore[typeddict-item]
    child.pop("run_name", None)  # named the step's own run only
    return child


def emit(config: RunnableConfig, name: str, data: Callable[[], Any]) -> None:
    """Dispatch custom event ``name`` to the handlers of the run ``config`` belongs to
    (as ``dispatch_custom_event`` does, without configuring a new callback manager);
    ``data()`` is only built when a handler listens."""
    manager = config.get("callbacks")
    if isinstance(manager, CallbackManager) and manager.parent_run_id is not None:
        if _listens(manager.handlers, name):
            manager.on_custom_event(name, data(), run_id=manager.parent_run_id)
        return
    dispatch_custom_event(name, data(), config=config)


def _listens(handlers: list[Any], name: str) -> bool:
    """True when a handler may want event ``name``: one that does not say which MoA
    events it reads (``moa_events``), or says it reads this one."""
    for handler in handlers:
        wanted = getattr(handler, "moa_events", None)
        if wanted is None or name in wanted:
            return True
    return False


async def aemit(config: RunnableConfig, name: str, data: Callable[[], Any]) -> None:
    """Async :func:`emit`."""
    manager = config.get("callbacks")
    if isinstance(manager, AsyncCallbackManager) and manager.parent_run_id is not None:
        if _listens(manager.handlers, name):
            await manager.on_custom_event(name, data(), run_id=manager.parent_run_id)
        return
    if isinstance(manager, CallbackManager) and manager.parent_run_id is not None:
        emit(config, name, data)
        return
    await adispatch_custom_event(name, data(), config=config)


@dataclass
class StepReport:
    """The state a step started from, the calls it made, and its timing."""

    step: Step
    state: MoAState
    handlers: list[BaseCallbackHandler] | None = None
    """The handlers of the step's run (LangChain's ``configure`` added the tracer, debug
    and configure-hook handlers to them): what each model call's run would get.
    ``None`` when not known: every call is then a LangChain run."""
    calls: list[CallRecord] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def record(self, out: Any = None, error: BaseException | None = None) -> dict[str, Any]:
        if isinstance(out, MoAState):
            outputs = out.texts
        elif isinstance(out, AIMessage):
            outputs = [out.text]
        else:
            outputs = []
        return {
            "step": type(self.step).__name__,
            "params": self.step.params,
            "layer": out.layer if isinstance(out, MoAState) else self.state.layer + 1,
            "inputs": self.state.texts,
            "outputs": outputs,
            "calls": list(self.calls),
            "time_s": time.perf_counter() - self.started,
            "error": None if error is None else _describe(error),
        }


def record_dict(record: CallRecord) -> dict[str, Any]:
    """``record.model_dump()`` for a flat :class:`CallRecord` (its fields are plain
    values), without pydantic's serialisation pass."""
    return dict(record.__dict__)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# -- model calls --------------------------------------------------------------


@dataclass(slots=True)
class Job:
    """One model call a step wants made."""

    agent: Agent
    agent_index: int
    messages: list[BaseMessage]
    runnable: Runnable
    layer: int
    fallback: Runnable | None = None
    """Tried once (and recorded as its own call) when ``runnable`` raises."""
    _openai: list[dict[str, Any]] | None = field(default=None, init=False, repr=False)

    def openai_messages(self) -> list[dict[str, Any]]:
        """``messages`` as OpenAI-style dicts (memoised per conversation and job)."""
        if self._openai is None:
            self._openai = _openai_messages(self.messages)
        return self._openai


@dataclass(slots=True)
class Result:
    """A finished :class:`Job`: its call record(s) and the reply, if any."""

    job: Job
    record: CallRecord
    output: Any = None
    """The agent's reply: an ``AIMessage`` (or what the agent returned), or a
    :class:`ClientReply` for a direct client call (no message built)."""
    exception: BaseException | None = None
    replaced: Result | None = None
    """The failed first attempt, when the job's fallback ran."""

    @property
    def ok(self) -> bool:
        return self.record.ok

    @property
    def records(self) -> list[CallRecord]:
        """Every call of the job, the replaced attempt first."""
        return [*(self.replaced.records if self.replaced else []), self.record]

    def or_fallback(self, retry: Callable[[], Result]) -> Result:
        """This result, or (when it failed and the job has a fallback) ``retry()``'s."""
        if self.ok or self.job.fallback is None:
            return self
        result = retry()
        result.replaced = self
        return result

    async def or_afallback(self, retry: Callable[[], Awaitable[Result]]) -> Result:
        """Async :meth:`or_fallback`."""
        if self.ok or self.job.fallback is None:
            return self
        result = await retry()
        result.replaced = self
        return result


DEFAULT_SYNC_WORKERS = POOL_SIZE
"""Threads a sync fan-out (``invoke``) uses at most when neither the step nor the run
config sets ``max_concurrency`` (64, from the process-wide pool of
:mod:`langchain_moa.steps._threads`); ``ainvoke`` runs every call at once on the
event loop, and so does a sync fan-out whose calls all go to unobserved async client
functions (on the shared client loop, see :meth:`LLMStep.run_jobs`)."""


class LLMStep(Step):
    """A step that calls agents. Holds the shared sampling parameters.

    ``temperature`` / ``max_tokens`` follow one rule for every agent kind (see
    :mod:`langchain_moa._settings`): a value given to the step is sent on every call;
    the step's default is sent unless the agent set that setting itself; ``None``
    sends nothing.
    """

    defaults: ClassVar[tuple[float, int]] = (0.7, 2048)
    """The step's default ``(temperature, max_tokens)``."""

    temperature: float | None | _Default = DEFAULT
    max_tokens: int | None | _Default = DEFAULT
    max_concurrency: int | None = None
    prices: dict[str, tuple[float, float]] | None = None
    prompt: str | None = None
    _forced: dict[str, Any] = PrivateAttr(default_factory=dict)
    _fallback: dict[str, Any] = PrivateAttr(default_factory=dict)

    @staticmethod
    def check_settings(
        *,
        temperature: Any,
        max_tokens: Any,
        max_concurrency: Any,
        prompt: Any,
        temp: float | None = None,
    ) -> dict[str, Any]:
        """Validate the shared parameters (``temp`` is ``temperature``'s alias).

        Raises:
            ConfigurationError: a parameter out of range, naming it.
        """
        if prompt is not None and not isinstance(prompt, str):
            raise ConfigurationError(f"prompt must be a string, got {type(prompt).__name__}")
        if temp is not None:
            if temperature is not DEFAULT and temperature != temp:
                raise ConfigurationError("give temperature or temp (its alias), not both")
            temperature = temp
        if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
            if not 0 <= temperature <= 2:
                raise ConfigurationError(f"temperature must be in [0, 2], got {temperature!r}")
        elif temperature is not None and temperature is not DEFAULT:
            raise ConfigurationError(f"temperature must be in [0, 2], got {temperature!r}")
        if (
            max_tokens is not None
            and max_tokens is not DEFAULT
            and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1)
        ):
            raise ConfigurationError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
        if max_concurrency is not None and (
            isinstance(max_concurrency, bool)
            or not isinstance(max_concurrency, int)
            or max_concurrency < 1
        ):
            raise ConfigurationError(
                f"max_concurrency must be an int >= 1 or None, got {max_concurrency!r}"
            )
        return {
            "temperature": temperature,
            "max_tokens": max_tokens,
            "max_concurrency": max_concurrency,
            "prompt": prompt,
        }

    def __init__(self, **fields: Any) -> None:
        super().__init__(**fields)
        # outside pydantic's validation, so the error is a ConfigurationError
        for agent in self.step_agents():
            if agent._runnable is not None:
                check_reachable(agent.name, agent._runnable, self._forced)

    def model_post_init(self, context: Any, /) -> None:
        self._forced, self._fallback = step_values(self.temperature, self.max_tokens, self.defaults)

    def step_agents(self) -> list[Agent]:
        """The step's agents."""
        return []

    def _settings(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(self._forced, self._fallback)``, read from pydantic's private storage
        directly: ``self._forced`` goes through pydantic's ``__getattr__``, which raises
        and catches an ``AttributeError`` on every read (about 4 us here, per call)."""
        private = self.__pydantic_private__
        return private["_forced"], private["_fallback"]

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """LangChain's ``batch`` (a thread per input, at most ``max_concurrency``);
        when every agent is an async client function nobody observes (see
        :meth:`ClientChatModel.unobserved`), the inputs run as ``abatch`` on the shared
        client loop instead: one thread hop for the whole batch."""
        configs = get_config_list(config, len(inputs))
        if len(inputs) > 1 and self._async_clients_only(configs):
            return run_in_background(
                lambda: self.abatch(inputs, configs, return_exceptions=return_exceptions, **kwargs)
            )
        return super().batch(inputs, configs, return_exceptions=return_exceptions, **kwargs)

    def _async_clients_only(self, configs: list[RunnableConfig]) -> bool:
        agents = self.step_agents()
        if not agents:
            return False
        for config in configs:
            handlers = _call_handlers(config)
            if not all(_loop_client(agent.client_model(config), handlers) for agent in agents):
                return False
        return True

    def get_graph(self, config: RunnableConfig | None = None) -> Any:
        """The step, then each of its agents (named as in the history), then its output."""
        from langchain_moa._graph import step_graph

        return step_graph(self, config)

    @property
    def params(self) -> dict[str, Any]:
        t, m = self.defaults
        return {
            "temperature": t if self.temperature is DEFAULT else self.temperature,
            "max_tokens": m if self.max_tokens is DEFAULT else self.max_tokens,
        }

    def job(
        self,
        agent: Agent,
        agent_index: int,
        messages: list[BaseMessage],
        layer: int,
        config: RunnableConfig,
        sample: int = 0,
    ) -> Job:
        """One call: ``agent`` with the step's settings applied; ``sample`` (its
        position in the step) keeps its cache entries apart from the other calls'."""
        forced, fallback = self._settings()
        runnable = agent.configured(config, forced, fallback, sample)
        return Job(agent, agent_index, messages, runnable, layer)

    def call_config(self, job: Job, config: RunnableConfig) -> RunnableConfig:
        """Config of one call: named after the agent, tagged with step, layer and index."""
        step = type(self).__name__
        tags = [f"moa:step:{step}", f"moa:layer:{job.layer}", f"moa:agent:{job.agent_index}"]
        metadata = {"moa_step": step, "moa_layer": job.layer, "moa_agent_index": job.agent_index}
        child: RunnableConfig = {**config}  # type: ignore[typeddict-item]
        child.pop("run_id", None)
        child["run_name"] = f"{step}[{job.agent_index}] {job.agent.name}"
        child["tags"] = [*config.get("tags", []), *tags]
        child["metadata"] = {**config.get("metadata", {}), **metadata}
        return child

    def make_record(
        self, job: Job, reply: Any, started: float, error: BaseException | None
    ) -> CallRecord:
        """A :class:`CallRecord` for a finished call; empty replies count as errors."""
        message = reply.get("raw") if isinstance(reply, dict) else reply
        replied = isinstance(message, (BaseMessage, ClientReply))
        text = message.text if replied else None
        if not (text or "").strip() and _has_tool_calls(message):
            # a native structured reply: keep the judgement visible in the history
            text = json.dumps([call["args"] for call in message.tool_calls], ensure_ascii=False)
        usage = getattr(message, "usage_metadata", None) or {}
        metadata = getattr(message, "response_metadata", None) or {}
        response_model = metadata.get("model_name")
        routing = metadata.get("router") if isinstance(metadata.get("router"), dict) else None
        parsing_error = reply.get("parsing_error") if isinstance(reply, dict) else None
        if error is None and message is None:
            error_text = "no reply"
        elif error is None and not replied:
            error_text = (
                f"TypeError: the agent returned a {type(message).__name__}, expected an "
                f"AIMessage (end a Runnable agent with a chat model)"
            )
        elif error is None and parsing_error is not None:
            # with_structured_output(include_raw=True) reports invalid structured
            # output here instead of raising: a failed call (the judge falls back).
            error_text = _describe(parsing_error)
        elif error is None and not (text or "").strip() and not _has_tool_calls(message):
            error_text = "EmptyResponseError: the model returned an empty reply"
        else:
            error_text = None if error is None else _describe(error)
        input_tokens = int(usage.get("input_tokens", 0) or 0)
        output_tokens = int(usage.get("output_tokens", 0) or 0)
        return CallRecord(
            step=type(self).__name__,
            layer=job.layer,
            agent_index=job.agent_index,
            model=job.agent.name,
            response_model=response_model,
            messages=job.openai_messages(),  # copied by validation
            output=text if error is None else None,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            latency_s=time.perf_counter() - started,
            cost_usd=self._cost(job, response_model, input_tokens, output_tokens, routing)
            if error is None
            else None,
            error=error_text,
            router=routing,
        )

    def _cost(
        self,
        job: Job,
        response_model: str | None,
        input_tokens: int,
        output_tokens: int,
        routing: dict[str, Any] | None,
    ) -> float | None:
        """USD of one call: the router's own figure (the deployment's price) when a
        ``ProviderRouter`` answered, else priced by the reported model, else by the
        agent's name (providers report dated ids such as ``gpt-4o-mini-2024-07-18``);
        a step's ``prices`` override the table."""
        if routing and routing.get("cost_usd") is not None and not self.prices:
            return float(routing["cost_usd"])
        for model in (response_model, job.agent.name):
            if model:
                cost = pricing.cost_usd(model, input_tokens, output_tokens, self.prices)
                if cost is not None:
                    return cost
        return None

    # -- executing jobs --------------------------------------------------------

    def _call(
        self, job: Job, runnable: Runnable, config: RunnableConfig, handlers: _Handlers
    ) -> Result:
        """One call, recorded. ``handlers`` are those its LangChain run would get (the
        step run's, :attr:`StepReport.handlers`): when none of them observes it, a
        client function is called directly."""
        charge = _budget.reserve(config, self, job)  # raises BudgetExceededError
        started = time.perf_counter()
        try:
            target, kwargs = _unbind(runnable)
            if _unobserved_client(target, handlers):
                reply = target.reply(list(job.openai_messages()), **kwargs)
            else:
                reply = target.invoke(
                    _model_input(target, job), self.call_config(job, config), **kwargs
                )
        except Exception as exc:  # recorded, then judged by the step's quorum rule
            record = charge.settle(self.make_record(job, None, started, exc))
            return Result(job, record, exception=exc)
        return Result(job, charge.settle(self.make_record(job, reply, started, None)), reply)

    async def _acall(
        self, job: Job, runnable: Runnable, config: RunnableConfig, handlers: _Handlers
    ) -> Result:
        """Async :meth:`_call`."""
        charge = _budget.reserve(config, self, job)  # raises BudgetExceededError
        started = time.perf_counter()
        try:
            target, kwargs = _unbind(runnable)
            if _unobserved_client(target, handlers):
                reply = await target.areply(list(job.openai_messages()), **kwargs)
            else:
                reply = await target.ainvoke(
                    _model_input(target, job), self.call_config(job, config), **kwargs
                )
        except Exception as exc:
            record = charge.settle(self.make_record(job, None, started, exc))
            return Result(job, record, exception=exc)
        return Result(job, charge.settle(self.make_record(job, reply, started, None)), reply)

    def _concurrency(self, config: RunnableConfig, jobs: int) -> int:
        """How many calls may run at once: the step's ``max_concurrency`` and the
        run config's ``max_concurrency`` (as LangChain's ``batch`` honours it), if set."""
        bounds = [b for b in (self.max_concurrency, config.get("max_concurrency")) if b]
        return max(1, min([jobs, *bounds]))

    def _workers(self, config: RunnableConfig, jobs: int) -> int:
        """Threads of a sync fan-out: :meth:`_concurrency`, at most
        :data:`DEFAULT_SYNC_WORKERS` unless a ``max_concurrency`` says otherwise."""
        if self.max_concurrency or config.get("max_concurrency"):
            return self._concurrency(config, jobs)
        return max(1, min(jobs, DEFAULT_SYNC_WORKERS))

    def run_jobs(self, jobs: list[Job], report: StepReport, config: RunnableConfig) -> list[Result]:
        """Run ``jobs`` in parallel threads (at most ``max_concurrency`` at once;
        :data:`DEFAULT_SYNC_WORKERS` when no ``max_concurrency`` is set). When every
        call goes to an async client function and nobody observes the calls (see
        :meth:`ClientChatModel.unobserved`), the jobs run as :meth:`arun_jobs` on the
        shared client loop instead: one thread hop for the layer, no thread per call.

        Results come back in job order, whatever order the calls finish in.
        """
        handlers = report.handlers
        if len(jobs) > 1 and all(_on_client_loop(job, handlers) for job in jobs):
            return run_in_background(lambda: self.arun_jobs(jobs, report, config))

        def one(job: Job) -> Result:
            result = self._call(job, job.runnable, config, handlers).or_fallback(
                lambda: self._call(job, job.fallback, config, handlers)
            )
            for record in result.records:
                emit(config, CALL_EVENT, lambda record=record: record_dict(record))
            return result

        if len(jobs) == 1:
            results = [one(jobs[0])]
            report.calls.extend(results[0].records)
            return results
        results = map_bounded(one, jobs, self._workers(config, len(jobs)))
        report.calls.extend(record for result in results for record in result.records)
        return results

    async def arun_jobs(
        self, jobs: list[Job], report: StepReport, config: RunnableConfig
    ) -> list[Result]:
        """Async :meth:`run_jobs`: ``asyncio.gather``, bounded by a semaphore when
        :meth:`_concurrency` is below the number of jobs (``RunnableParallel.ainvoke``
        would ignore ``max_concurrency``)."""
        handlers = report.handlers

        async def one(job: Job) -> Result:
            first = await self._acall(job, job.runnable, config, handlers)
            result = await first.or_afallback(
                lambda: self._acall(job, job.fallback, config, handlers)
            )
            for record in result.records:
                await aemit(config, CALL_EVENT, lambda record=record: record_dict(record))
            return result

        if len(jobs) == 1:  # no task to gather (an aggregator, a judge)
            results = [await one(jobs[0])]
        else:
            bound = self._concurrency(config, len(jobs))
            limit = bound if bound < len(jobs) else None
            results = await gather_with_concurrency(limit, *map(one, jobs))
        report.calls.extend(record for result in results for record in result.records)
        return results


class SingleAgentStep(LLMStep):
    """An :class:`LLMStep` with one agent, ``agent`` (recorded first in ``params``)."""

    agent: Agent

    def step_agents(self) -> list[Agent]:
        return [self.agent]

    @property
    def params(self) -> dict[str, Any]:
        return {"agent": self.agent.name, **super().params}


try:  # BaseChatModel.bind returns this RunnableBinding subclass (langchain-core >= 1.8)
    from langchain_core.language_models.chat_models import _ChatModelBinding

    _PLAIN_BINDINGS: tuple[type, ...] = (RunnableBinding, _ChatModelBinding)
except ImportError:  # pragma: no cover - older langchain-core
    _PLAIN_BINDINGS = (RunnableBinding,)


_Handlers = list[BaseCallbackHandler] | None


def _call_handlers(config: RunnableConfig) -> list[BaseCallbackHandler]:
    """The callback handlers a run started under ``config`` would get: the config's
    callbacks plus what LangChain's ``configure`` adds to every run (the env-enabled
    LangSmith tracer, the debug handler, configure hooks such as ``collect_runs``)."""
    return CallbackManager.configure(config.get("callbacks")).handlers


def _unobserved_client(target: Runnable | None, handlers: _Handlers) -> bool:
    """True when the call may go straight to a client function: ``target`` is a
    :class:`ClientChatModel` and none of ``handlers`` would see its LangChain run."""
    return (
        handlers is not None and isinstance(target, ClientChatModel) and target.unobserved(handlers)
    )


def _loop_client(target: Runnable | None, handlers: _Handlers) -> bool:
    """True when ``target`` is an async client function nobody observes: its calls
    can run on the shared client loop."""
    return _unobserved_client(target, handlers) and target.async_client  # type: ignore[union-attr]


def _on_client_loop(job: Job, handlers: _Handlers) -> bool:
    """True when each Runnable of ``job`` is an unobserved async client function."""
    runnables = [r for r in (job.runnable, job.fallback) if r is not None]
    return all(_loop_client(_unbind(r)[0], handlers) for r in runnables)


def _unbind(runnable: Runnable) -> tuple[Runnable, dict[str, Any]]:
    """A plain ``.bind(**kwargs)`` as ``(bound, kwargs)``: calling ``bound`` with the
    kwargs is what the binding does, minus a config merge per call."""
    if type(runnable) in _PLAIN_BINDINGS and not runnable.config and not runnable.config_factories:
        return runnable.bound, runnable.kwargs
    return runnable, {}


class _Conversation:
    """One conversation a layer sends to many agents, converted once per form."""

    __slots__ = ("messages", "_openai", "_prompt")

    def __init__(self, messages: tuple[BaseMessage, ...]) -> None:
        self.messages = messages  # held, so the ids in the memo key stay unique
        self._openai: list[dict[str, Any]] | None = None
        self._prompt: ChatPromptValue | None = None

    def openai(self) -> list[dict[str, Any]]:
        if self._openai is None:
            self._openai = convert_to_openai_messages(list(self.messages))
        return self._openai

    def prompt(self) -> ChatPromptValue:
        if self._prompt is None:
            # the messages are already BaseMessages: no validation pass
            self._prompt = ChatPromptValue.model_construct(messages=list(self.messages))
        return self._prompt


_CONVERSATIONS: OrderedDict[tuple[int, ...], _Conversation] = OrderedDict()
_CONVERSATIONS_LOCK = threading.Lock()


def _conversation(messages: list[BaseMessage]) -> _Conversation:
    """The memoised :class:`_Conversation` of ``messages`` (by message identity; the
    last 256 are kept): a layer's calls all send the same messages."""
    key = tuple(map(id, messages))
    with _CONVERSATIONS_LOCK:
        hit = _CONVERSATIONS.get(key)
        if hit is not None:
            _CONVERSATIONS.move_to_end(key)
            return hit
        hit = _CONVERSATIONS[key] = _Conversation(tuple(messages))
        if len(_CONVERSATIONS) > 256:
            _CONVERSATIONS.popitem(last=False)
        return hit


def _openai_messages(messages: list[BaseMessage]) -> list[dict[str, Any]]:
    """``convert_to_openai_messages(messages)``, once per conversation."""
    return _conversation(messages).openai()


def _model_input(target: Runnable, job: Job) -> Any:
    """What a call passes: a chat model gets a ``ChatPromptValue`` built once per
    conversation (LangChain would otherwise re-check and re-wrap the list on every
    call); any other Runnable gets the list of messages, as documented."""
    if isinstance(target, BaseChatModel):
        return _conversation(job.messages).prompt()
    return job.messages


def _has_tool_calls(message: Any) -> bool:
    return bool(getattr(message, "tool_calls", None))


def validate_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``value`` or raise a :class:`ConfigurationError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value
