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

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig

from langchain_moa.client_model import ClientChatModel
from langchain_moa.errors import ConfigurationError
from langchain_moa.providers import (
    LOCAL_PROVIDER,
    PROVIDERS,
    openai_compatible_chat_model,
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
    """

    def __init__(self, spec: Any, client: Callable[..., Any] | None = None) -> None:
        self.name = agent_name(spec)
        self._spec = spec
        self._client = client
        self._runnable: Runnable | None = None
        self._lock = threading.Lock()
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
                    self._runnable = openai_compatible_chat_model(parsed.provider, parsed.model)
        elif callable(spec):
            self._runnable = ClientChatModel(client=spec, model=self.name)
        else:
            raise ConfigurationError(
                f"agent {spec!r} is not a model string, a chat model, a Runnable or a "
                f"client function"
            )

    def runnable(self, config: RunnableConfig | None = None) -> Runnable:
        """The Runnable to call.

        Raises:
            ConfigurationError: a bare model name and no client function.
            LocalModelError: a ``local/...`` model cannot be started.
        """
        if isinstance(self._spec, str):
            # A client (the step's, or run(..., client=)'s) serves every model string,
            # as in mixture-llm, whose names may look like "qwen/qwen-2.5-72b-instruct".
            client = self._client or (config or {}).get("configurable", {}).get(CLIENT_CONFIG_KEY)
            if client is not None:
                return ClientChatModel(client=client, model=self._spec)
        if self._runnable is not None:
            return self._runnable
        with self._lock:
            if self._runnable is None:
                self._runnable = _resolve_string(self._spec)
            return self._runnable

    def bound(
        self, config: RunnableConfig | None, temperature: float | None, max_tokens: int | None
    ) -> Runnable:
        """The Runnable with ``temperature`` / ``max_tokens`` bound, for chat models.

        Other Runnables (a chain returning an ``AIMessage``) are returned unchanged:
        they have no such parameters to set.
        """
        runnable = self.runnable(config)
        params = {
            k: v
            for k, v in (("temperature", temperature), ("max_tokens", max_tokens))
            if v is not None
        }
        if params and _is_chat_model(runnable):
            return runnable.bind(**params)
        return runnable


def _known_provider(name: str) -> bool:
    """True when ``name`` starts with a registered provider (or ``local``).

    Other prefixed names (``"qwen/qwen-2.5-72b-instruct"``, an OpenRouter or Groq
    model id) wait for a client like bare names do.
    """
    provider, _ = split_model_name(name)
    return provider == LOCAL_PROVIDER or provider in PROVIDERS


def _resolve_string(name: str) -> Runnable:
    if split_model_name(name)[0] is None:
        raise ConfigurationError(
            f"agent {name!r} has no provider: write 'provider/model' (e.g. 'openai/{name}') "
            f"or give the step a client function with client="
        )
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
    return openai_compatible_chat_model(parsed.provider, parsed.model)


def _is_chat_model(runnable: Runnable) -> bool:
    while isinstance(runnable, RunnableBinding):
        runnable = runnable.bound
    return isinstance(runnable, BaseChatModel)


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
    return [Agent(a, client) for a in agents]
