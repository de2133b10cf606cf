"""What a step's ``temperature`` / ``max_tokens`` do to an agent: one rule, one function.

The rule (the same for every agent kind):

1. A value **passed to the step** (``Propose(..., temperature=0.2)``, ``max_tokens=64``,
   a preset's parameter) is sent on every call of that step, overriding whatever the
   agent was built or bound with.
2. A value the step was **not given** (its default: 0.7 / 2048 for the layers and
   Aggregate, 0 / 512 for the judges) is sent only when the agent did not set that
   setting itself. "Set itself" means: a constructor field given explicitly
   (``ChatOpenAI(temperature=0)``, ``ProviderRouter(..., max_tokens=50)``,
   ``ClientChatModel(..., temperature=0.1)``), a ``.bind(temperature=...)``, a value in
   ``init_chat_model(..., temperature=...)`` or in the run config's ``configurable``
   for a configurable model.
3. ``None`` passed to the step sends nothing: every agent keeps its own setting (for
   models that reject a parameter, e.g. reasoning models and ``temperature``).

It reaches every agent kind: a chat model (a ``BaseChatModel``, the router, a
``ClientChatModel`` around a mixture-llm client function) is bound with the values;
a bound model keeps its other bound arguments; ``with_fallbacks`` applies the rule to
the primary and to each fallback on its own; ``init_chat_model(configurable_fields=...)``
models are bound too (their kwargs reach the model chosen at run time); in a chain
(``prompt | llm | parser``) the rule applies to every chat model of the chain. A
Runnable with no chat model inside cannot take the values: a step given explicit
values for such an agent raises :class:`~langchain_moa.errors.ConfigurationError` at
construction instead of dropping them.

Caching: LangChain's cache key is ``(prompt, llm_string)``; a step calling the same
model several times on the same prompt (Self-MoA, ``Propose([m] * 3)``) would read one
cached answer three times. The *i*-th call of a step (``i >= 1``) therefore goes
through :class:`SampleCache`, which adds ``moa_sample=i`` to the ``llm_string`` of
the cache in effect (the model's ``cache=`` or ``set_llm_cache``): each sample has its
own entry, and a rerun of the same step hits all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.caches import BaseCache
from langchain_core.globals import get_llm_cache
from langchain_core.language_models import BaseChatModel
from langchain_core.outputs import Generation
from langchain_core.runnables import (
    Runnable,
    RunnableBinding,
    RunnableConfig,
    RunnableSequence,
    RunnableWithFallbacks,
)

from langchain_moa.errors import ConfigurationError

SETTINGS = ("temperature", "max_tokens")
"""The sampling settings a step controls."""


class _Default:
    """A step setting the caller did not give: the step's default, unless the agent
    set that setting itself (rule 2 above). Falsy and a singleton, so LangChain's
    serialisation leaves it out and pickling keeps it the same object."""

    _instance: _Default | None = None

    def __new__(cls) -> _Default:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "<step default>"

    def __reduce__(self) -> str:
        return "DEFAULT"


DEFAULT = _Default()
"""Default of the steps' ``temperature`` and ``max_tokens``: see the module docstring."""


def step_values(
    temperature: Any, max_tokens: Any, defaults: tuple[float, int]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a step's settings into ``(forced, defaults)``: values to send whatever the
    agent says, and defaults to send unless the agent set that setting itself."""
    forced: dict[str, Any] = {}
    fallback: dict[str, Any] = {}
    for key, value, default in zip(SETTINGS, (temperature, max_tokens), defaults, strict=True):
        if value is DEFAULT:
            fallback[key] = default
        elif value is not None:
            forced[key] = value
    return forced, fallback


def is_configurable_model(runnable: Any) -> bool:
    """True for ``init_chat_model(configurable_fields=...)``'s model."""
    return type(runnable).__name__ == "_ConfigurableModel" and hasattr(runnable, "_default_config")


def reaches_a_model(runnable: Runnable) -> bool:
    """True when :func:`configure` can set sampling settings on ``runnable``."""
    if isinstance(runnable, BaseChatModel) or is_configurable_model(runnable):
        return True
    if isinstance(runnable, RunnableBinding):
        return reaches_a_model(runnable.bound)
    if isinstance(runnable, RunnableWithFallbacks):
        return all(reaches_a_model(r) for r in runnable.runnables)
    if isinstance(runnable, RunnableSequence):
        return any(reaches_a_model(r) for r in runnable.steps)
    return False


def check_reachable(name: str, runnable: Runnable, forced: dict[str, Any]) -> None:
    """Raise when a step was given explicit settings an agent cannot take.

    Raises:
        ConfigurationError: ``forced`` is not empty and ``runnable`` holds no chat model.
    """
    if forced and not reaches_a_model(runnable):
        given = ", ".join(f"{k}={v!r}" for k, v in forced.items())
        raise ConfigurationError(
            f"agent {name!r} is a {type(runnable).__name__} with no chat model inside, so "
            f"the step's {given} cannot reach it; set them on the model inside it, or "
            f"pass temperature=None, max_tokens=None to the step"
        )


def configure(
    runnable: Runnable,
    forced: dict[str, Any],
    fallback: dict[str, Any],
    sample: int = 0,
    config: RunnableConfig | None = None,
) -> Runnable:
    """``runnable`` with the step's settings applied by the rule above, and, for
    ``sample >= 1`` when a cache is in effect, its own cache entries.

    ``config`` is the run's config (a configurable model's run-time values count as
    set by the agent). Opaque Runnables come back unchanged (see
    :func:`check_reachable`).
    """
    return _configure(runnable, forced, fallback, sample, config, frozenset())


def _configure(
    runnable: Runnable,
    forced: dict[str, Any],
    fallback: dict[str, Any],
    sample: int,
    config: RunnableConfig | None,
    bound_keys: frozenset[str],
) -> Runnable:
    if isinstance(runnable, RunnableBinding):
        keys = bound_keys | frozenset(k for k in SETTINGS if k in runnable.kwargs)
        inner = _configure(runnable.bound, forced, fallback, sample, config, keys)
        kwargs = {**runnable.kwargs, **{k: v for k, v in forced.items() if k in runnable.kwargs}}
        if inner is runnable.bound and kwargs == runnable.kwargs:
            return runnable
        return runnable.model_copy(update={"bound": inner, "kwargs": kwargs})
    if isinstance(runnable, RunnableWithFallbacks):
        parts = [
            _configure(r, forced, fallback, sample, config, bound_keys) for r in runnable.runnables
        ]
        return runnable.model_copy(update={"runnable": parts[0], "fallbacks": parts[1:]})
    if isinstance(runnable, RunnableSequence):
        steps = [
            _configure(s, forced, fallback, sample, config, bound_keys) if reaches_a_model(s) else s
            for s in runnable.steps
        ]
        return runnable.model_copy(
            update={"first": steps[0], "middle": steps[1:-1], "last": steps[-1]}
        )
    if isinstance(runnable, BaseChatModel):
        own = bound_keys | _fields_set(runnable)
        params = {**{k: v for k, v in fallback.items() if k not in own}, **forced}
        model = _with_sample_cache(runnable, sample)
        return model.bind(**params) if params else model
    if is_configurable_model(runnable):
        own = bound_keys | frozenset(runnable._default_config) | _configured_keys(runnable, config)
        params = {**{k: v for k, v in fallback.items() if k not in own}, **forced}
        model = _configurable_with_sample_cache(runnable, sample)
        return model.bind(**params) if params else model
    return runnable


def _fields_set(model: BaseChatModel) -> frozenset[str]:
    """The settings given explicitly to the model's constructor."""
    return frozenset(k for k in SETTINGS if k in model.model_fields_set)


def _configured_keys(model: Any, config: RunnableConfig | None) -> frozenset[str]:
    """The settings a run config's ``configurable`` gives a configurable model."""
    if not config:
        return frozenset()
    prefix = model._config_prefix
    keys = {k[len(prefix) :] for k in config.get("configurable", {}) if k.startswith(prefix)}
    fields = model._configurable_fields
    return frozenset(k for k in keys & set(SETTINGS) if fields == "any" or k in fields)


# -- caching: one entry per sample ---------------------------------------------


class SampleCache(BaseCache):
    """A view of a LangChain cache in which sample ``sample`` has its own entries.

    Args:
        inner: the cache to read and write; ``None`` means the global one
            (``set_llm_cache``), looked up at each call.
        sample: the call's position in its step (>= 1); added to ``llm_string`` as
            ``---moa_sample=<sample>``.
    """

    def __init__(self, inner: BaseCache | None, sample: int) -> None:
        self.inner = inner
        self.sample = sample

    def _cache(self) -> BaseCache | None:
        return self.inner if self.inner is not None else get_llm_cache()

    def _key(self, llm_string: str) -> str:
        return f"{llm_string}---moa_sample={self.sample}"

    def lookup(self, prompt: str, llm_string: str) -> Sequence[Generation] | None:
        cache = self._cache()
        return None if cache is None else cache.lookup(prompt, self._key(llm_string))

    def update(self, prompt: str, llm_string: str, return_val: Sequence[Generation]) -> None:
        cache = self._cache()
        if cache is not None:
            cache.update(prompt, self._key(llm_string), return_val)

    async def alookup(self, prompt: str, llm_string: str) -> Sequence[Generation] | None:
        cache = self._cache()
        return None if cache is None else await cache.alookup(prompt, self._key(llm_string))

    async def aupdate(self, prompt: str, llm_string: str, return_val: Sequence[Generation]) -> None:
        cache = self._cache()
        if cache is not None:
            await cache.aupdate(prompt, self._key(llm_string), return_val)

    def clear(self, **kwargs: Any) -> None:
        cache = self._cache()
        if cache is not None:
            cache.clear(**kwargs)


def cache_in_effect(model: Any) -> bool:
    """True when a call of ``model`` would use a LangChain cache."""
    cache = getattr(model, "cache", None)
    if cache is False:
        return False
    return isinstance(cache, BaseCache) or get_llm_cache() is not None


def _with_sample_cache(model: BaseChatModel, sample: int) -> BaseChatModel:
    if sample < 1 or model.cache is False:
        return model
    inner = model.cache if isinstance(model.cache, BaseCache) else None
    if isinstance(inner, SampleCache):
        inner = inner.inner
    return model.model_copy(update={"cache": SampleCache(inner, sample)})


def _configurable_with_sample_cache(model: Any, sample: int) -> Any:
    cache = model._default_config.get("cache")
    if sample < 1 or cache is False:
        return model
    inner = cache if isinstance(cache, BaseCache) else None
    return type(model)(
        default_config={**model._default_config, "cache": SampleCache(inner, sample)},
        configurable_fields=model._configurable_fields,
        config_prefix=model._config_prefix,
        queued_declarative_operations=model._queued_declarative_operations,
    )
