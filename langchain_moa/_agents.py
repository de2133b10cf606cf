"""Turning what a user passes as an agent into a Runnable that returns an AIMessage.

Accepted agent specs (DESIGN §2):

* ``"provider/model"`` or ``"provider:model"`` — an OpenAI-compatible provider from
  :data:`langchain_moa.providers.PROVIDERS`, or ``"local/<name>"`` for the bundled
  GGUF models (started on first use);
* a bare model name such as ``"gpt-4o"`` together with a mixture-llm style client
  function (``client=`` on the step, or ``run(..., client=)``);
* a ``BaseChatModel``, or any Runnable returning an ``AIMessage`` (e.g. the router);
* a mixture-llm style client function itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from langchain_core.caches import BaseCache
from langchain_core.globals import get_llm_cache
from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import (
    Runnable,
    RunnableBinding,
    RunnableConfig,
    RunnableSequence,
    RunnableWithFallbacks,
)

from langchain_moa._settings import configure, is_configurable_model
from langchain_moa.client_model import ClientChatModel
from langchain_moa.errors import ConfigurationError
from langchain_moa.providers import (
    LOCAL_PROVIDER,
    PROVIDERS,
    build_chat_model,
    parse_model_name,
    split_model_name,
)

AgentLike = str | Runnable | Callable[..., Any]

CLIENT_CONFIG_KEY = "moa_client"
"""``config["configurable"]`` key through which :func:`langchain_moa.run` hands a
client function to string agents."""


def agent_name(spec: Any) -> str:
    """A readable name for an agent spec: the model string or model id."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, RunnableBinding):
        return agent_name(spec.bound)
    for attr in ("model_name", "model", "model_id"):
        value = getattr(spec, attr, None)
        if isinstance(value, str) and value:
            return value
    if isinstance(spec, Runnable):
        return spec.get_name()
    return getattr(spec, "__name__", type(spec).__name__)


class Agent:
    """One agent of a step: a name and the Runnable it resolves to.

    Model strings with a provider are resolved at construction (so a missing key
    fails early, naming its variable), except ``local/...`` models, whose server is
    started on first call. Bare names wait for a client from the step or the config.
    Resolved and configured Runnables are kept, so a call builds no model object.

    Attributes:
        name: the agent's readable name (model string or model id).
        spec: what the user passed (serialised by the steps' ``to_json``).
    """

    def __init__(self, spec: Any, client: Callable[..., Any] | None = None) -> None:
        self.name = agent_name(spec)
        self.spec = spec
        self._client = client
        self._runnable: Runnable | None = None
        self._client_models: dict[Any, ClientChatModel] = {}
        self._configured: dict[tuple[Any, ...], Runnable] = {}
        self._own_cache: bool | None = None
        self.structured_output_failed = False
        """Set by Rank / Vote when the agent's native structured output failed once."""
        if isinstance(spec, type):
            raise ConfigurationError(
                f"agent {spec.__name__} is a class; pass an instance, e.g. "
                f"{spec.__name__}(model=...)"
            )
        if isinstance(spec, Runnable):
            self._runnable = spec
        elif isinstance(spec, str):
            if client is None and _known_provider(spec):
                parsed = parse_model_name(spec)
                if parsed.provider != LOCAL_PROVIDER:
                    self._runnable = build_chat_model(parsed.provider, parsed.model)
        elif callable(spec):
            self._runnable = ClientChatModel(client=spec, model=self.name)
        else:
            raise ConfigurationError(
                f"agent {spec!r} is not a model string, a chat model, a Runnable or a "
                f"client function"
            )

    def __repr__(self) -> str:
        return f"Agent({self.name!r})"

    def __getstate__(self) -> dict[str, Any]:
        # Models built from a string are rebuilt on first use after unpickling
        # (they hold HTTP clients); the user's own Runnables pickle as LangChain allows.
        state = dict(self.__dict__)
        state["_configured"] = {}
        state["_client_models"] = {}
        if not isinstance(self.spec, Runnable) and isinstance(self.spec, str):
            state["_runnable"] = None
        return state

    def runnable(self, config: RunnableConfig | None = None) -> Runnable:
        """The Runnable to call.

        Raises:
            ConfigurationError: a bare model name and no client function.
            LocalModelError: a ``local/...`` model cannot be started.
        """
        if isinstance(self.spec, str):
            # A client (the step's, or run(..., client=)'s) serves every model string,
            # as in mixture-llm, whose names may look like "qwen/qwen-2.5-72b-instruct".
            client = self._client
            if client is None and config:
                client = config.get("configurable", {}).get(CLIENT_CONFIG_KEY)
            if client is not None:
                model = self._client_models.get(client)
                if model is None:
                    model = ClientChatModel(client=client, model=self.spec)
                    self._client_models[client] = model
                return model
        if self._runnable is not None:
            return self._runnable
        with _RESOLVE_LOCK:
            if self._runnable is None:
                self._runnable = _resolve_string(self.spec)
            return self._runnable

    def client_model(self, config: RunnableConfig | None = None) -> ClientChatModel | None:
        """The :class:`ClientChatModel` this agent calls under ``config``, if it calls
        one (a client function, or a model name served by one); nothing is resolved
        or started to find out."""
        if isinstance(self.spec, str):
            served = self._client is not None or bool(
                config and config.get("configurable", {}).get(CLIENT_CONFIG_KEY)
            )
            runnable = self.runnable(config) if served else None
        else:
            runnable = self._runnable
        while isinstance(runnable, RunnableBinding):
            runnable = runnable.bound
        return runnable if isinstance(runnable, ClientChatModel) else None

    def configured(
        self,
        config: RunnableConfig | None,
        forced: dict[str, Any],
        fallback: dict[str, Any],
        sample: int = 0,
    ) -> Runnable:
        """The Runnable with a step's settings applied (see :mod:`langchain_moa._settings`);
        ``sample`` (the call's position in its step) gives it its own cache entries
        when a LangChain cache is in effect."""
        runnable = self.runnable(config)
        if sample and not (get_llm_cache() is not None or self._has_own_cache(runnable)):
            sample = 0
        if _depends_on_config(runnable):
            return configure(runnable, forced, fallback, sample, config)
        key = (id(runnable), *forced.items(), None, *fallback.items(), sample)
        done = self._configured.get(key)
        if done is None:
            done = configure(runnable, forced, fallback, sample, config)
            self._configured[key] = done
        return done

    def _has_own_cache(self, runnable: Runnable) -> bool:
        if self._own_cache is None:
            self._own_cache = _has_own_cache(runnable)
        return self._own_cache


_RESOLVE_LOCK = threading.Lock()
"""Guards resolving model strings (module level, so agents and steps pickle)."""


def _depends_on_config(runnable: Runnable) -> bool:
    while isinstance(runnable, RunnableBinding):
        runnable = runnable.bound
    return is_configurable_model(runnable)


def _has_own_cache(runnable: Any) -> bool:
    """True when a chat model inside ``runnable`` has its own ``cache=``."""
    if isinstance(runnable, BaseChatModel):
        return isinstance(runnable.cache, BaseCache)
    if isinstance(runnable, RunnableBinding):
        return _has_own_cache(runnable.bound)
    if isinstance(runnable, RunnableWithFallbacks):
        return any(_has_own_cache(r) for r in runnable.runnables)
    if isinstance(runnable, RunnableSequence):
        return any(_has_own_cache(r) for r in runnable.steps)
    if is_configurable_model(runnable):
        return isinstance(runnable._default_config.get("cache"), BaseCache)
    return False


def _known_provider(name: str) -> bool:
    """True when ``name`` starts with a registered provider (or ``local``).

    Other prefixed names (``"qwen/qwen-2.5-72b-instruct"``, an OpenRouter or Groq
    model id) wait for a client like bare names do.
    """
    provider, _ = split_model_name(name)
    return provider == LOCAL_PROVIDER or provider in PROVIDERS


def _resolve_string(name: str) -> Runnable:
    # a bare id gets init_chat_model's inferred provider ("gpt-4o" -> openai)
    try:
        parsed = parse_model_name(name)
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"agent {name!r}: {exc}; or serve it with a client function "
            f"(client= on the step, or run(..., client=))"
        ) from None
    if parsed.provider == LOCAL_PROVIDER:
        from langchain_moa.local import get_local_chat_model

        return get_local_chat_model(parsed.model)
    return build_chat_model(parsed.provider, parsed.model)


def make_agents(
    agents: Any, client: Callable[..., Any] | None, parameter: str = "agents"
) -> list[Agent]:
    """Validate and wrap a step's agent list.

    Raises:
        ConfigurationError: the list is empty or not a list, naming ``parameter``.
    """
    if isinstance(agents, (str, Runnable)) or callable(agents):
        agents = [agents]
    if not isinstance(agents, (list, tuple)) or not agents:
        raise ConfigurationError(f"{parameter} must be a non-empty list of agents, got {agents!r}")
    return [a if isinstance(a, Agent) else Agent(a, client) for a in agents]
