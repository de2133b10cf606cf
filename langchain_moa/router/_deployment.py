"""A deployment: one model on one provider, with its price, limits and weight."""

from __future__ import annotations

import os
import threading
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.load.serializable import Serializable
from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    model_validator,
)

from langchain_moa.errors import ConfigurationError
from langchain_moa.pricing import price_of
from langchain_moa.providers import (
    LOCAL_PROVIDER,
    PROVIDERS,
    build_chat_model,
    openai_compatible_chat_model,
    parse_model_name,
    validate_base_url,
)

__all__ = ["Deployment"]

LOCAL_BASE_URL_ENV = "LANGCHAIN_MOA_LOCAL_BASE_URL"


class Deployment(Serializable):
    """One place a request can go.

    Give either ``model`` (``"provider/model"`` or ``"provider:model"``; a
    ``ChatOpenAI``-compatible client is built for the provider's base URL or
    ``base_url``) or ``llm`` (any LangChain ``BaseChatModel``).

    Attributes:
        model: model string; the provider's key is read from its environment
            variable (e.g. ``OPENAI_API_KEY``) unless ``api_key`` is given.
        llm: a ready chat model instead of ``model``.
        name: unique name within a router; defaults to ``model`` (or the llm's model name).
        base_url: override the provider's OpenAI-compatible base URL.
        api_key: override the key from the environment.
        price_in / price_out: USD per **million** input / output tokens; default
            from :mod:`langchain_moa.pricing` (``None`` if unknown).
        rpm: requests per minute; tpm: tokens per minute (prompt + completion);
            max_concurrency: requests in flight. ``None`` = unlimited.
        weight: relative share for the ``"weighted"`` strategy (> 0).
        priority: lower goes first for the ``"priority"`` strategy (ties: list order).
        context_window: prompt + completion tokens the model accepts; used to skip
            deployments that are too small and to fall over on context-length errors.
        timeout: seconds per attempt (overrides the router's ``timeout``).
        model_kwargs: extra keyword arguments for the built client (e.g. ``temperature``).

    Serialisable with LangChain's ``dumpd`` / ``loads`` (namespace ``langchain_moa``):
    ``api_key`` is written as a secret reference to the provider's key variable
    (:attr:`lc_secrets`, e.g. ``OPENAI_API_KEY``), never as its value.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    model: str | None = None
    llm: BaseChatModel | None = None
    name: str | None = None
    base_url: str | None = None
    api_key: SecretStr | None = None
    price_in: float | None = Field(default=None, ge=0)
    price_out: float | None = Field(default=None, ge=0)
    rpm: float | None = Field(default=None, gt=0)
    tpm: float | None = Field(default=None, gt=0)
    max_concurrency: int | None = Field(default=None, ge=1)
    weight: float = Field(default=1.0, gt=0)
    priority: int = 0
    context_window: int | None = Field(default=None, ge=1)
    timeout: float | None = Field(default=None, gt=0)
    model_kwargs: dict[str, Any] = Field(default_factory=dict)

    _built: BaseChatModel | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, **data: Any) -> None:
        """Raises :class:`ConfigurationError` naming the parameter (never pydantic's
        ``ValidationError``): a bad ``model`` or ``base_url``, a value out of range."""
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _configuration_error(exc) from None

    @model_validator(mode="after")
    def _check(self) -> Deployment:
        if (self.model is None) == (self.llm is None):
            raise ValueError(
                "Deployment needs exactly one of model='provider/model' or llm=<BaseChatModel>"
            )
        if self.model is not None:
            parse_model_name(self.model)  # raises ConfigurationError naming known providers
        if self.base_url is not None:
            validate_base_url(self.base_url)  # "htp://..." fails now, not as retried I/O
        if self.name is None:
            if self.model is not None:
                self.name = self.model
            else:
                mid = getattr(self.llm, "model_name", None) or getattr(self.llm, "model", None)
                self.name = mid if isinstance(mid, str) and mid else type(self.llm).__name__
        return self

    # ------------------------------------------------------------------ serialisation
    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["langchain_moa", "router"]

    @property
    def lc_secrets(self) -> dict[str, str]:
        """``api_key`` is serialised as a reference to this environment variable: the
        provider's key variable (``OPENAI_API_KEY``), else ``<PROVIDER>_API_KEY`` for a
        keyless provider given a key (``LLAMACPP_API_KEY``)."""
        provider = self.provider or "langchain_moa"
        spec = PROVIDERS.get(provider)
        env = spec.api_key_env if spec and spec.api_key_env else None
        return {"api_key": env or f"{provider.upper().replace('-', '_')}_API_KEY"}

    # ------------------------------------------------------------------ properties
    @property
    def provider(self) -> str | None:
        """Provider name (``None`` for ``llm=`` deployments)."""
        return parse_model_name(self.model).provider if self.model else None

    @property
    def model_id(self) -> str:
        """The provider's own model id (what ``response_metadata['model_name']`` reports)."""
        if self.model:
            return parse_model_name(self.model).model
        mid = getattr(self.llm, "model_name", None) or getattr(self.llm, "model", None)
        return mid if isinstance(mid, str) and mid else str(self.name)

    @property
    def api_key_env(self) -> str | None:
        """Environment variable holding this deployment's key (``None`` if keyless / given)."""
        if self.api_key is not None or not self.model:
            return None
        p = PROVIDERS.get(self.provider or "")
        return p.api_key_env if p else None

    def prices(self) -> tuple[float, float] | None:
        """``(input, output)`` USD per million tokens, or ``None`` when unknown."""
        table = price_of(self.model) if self.model else None
        pin = self.price_in if self.price_in is not None else (table[0] if table else None)
        pout = self.price_out if self.price_out is not None else (table[1] if table else None)
        if pin is None and pout is None:
            return None
        return (pin or 0.0, pout or 0.0)

    # ------------------------------------------------------------------ client
    def chat_model(self, timeout: float | None) -> BaseChatModel:
        """The chat model to call (built once, lazily).

        Built clients use ``max_retries=0`` (the router does the retrying),
        ``stream_usage=True`` (token usage on streams from any OpenAI-compatible
        server) and ``timeout`` seconds. Non-OpenAI providers get
        ``BaseChatOpenAI``, which sends ``max_tokens`` (not ``max_completion_tokens``,
        which llama.cpp and older vLLM ignore).

        Raises:
            MissingAPIKeyError: the provider's key variable is unset (names it).
            ConfigurationError: a ``local/...`` model without a base URL.
        """
        if self.llm is not None:
            return self.llm
        with self._lock:
            if self._built is None:
                self._built = self._build(timeout)
            return self._built

    def _build(self, timeout: float | None) -> BaseChatModel:
        spec = parse_model_name(str(self.model))
        key = self.api_key.get_secret_value() if self.api_key is not None else None
        kwargs = {"timeout": timeout, **self.model_kwargs}
        if spec.provider == LOCAL_PROVIDER:
            base_url = self.base_url or os.environ.get(LOCAL_BASE_URL_ENV)
            if not base_url:
                raise ConfigurationError(
                    f"deployment {self.name!r}: model {self.model!r} needs base_url= (or the "
                    f"environment variable {LOCAL_BASE_URL_ENV}) pointing at the local server"
                )
            return openai_compatible_chat_model(
                "llamacpp", spec.model, base_url=base_url, api_key=key or "not-needed", **kwargs
            )
        return build_chat_model(
            spec.provider, spec.model, base_url=self.base_url, api_key=key, **kwargs
        )


def _configuration_error(exc: ValidationError) -> ConfigurationError:
    """The first error of a ``Deployment`` validation as a :class:`ConfigurationError`:
    our own (raised in a validator) as is, pydantic's naming the field and the input."""
    first = exc.errors()[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigurationError):
        return cause
    message = first.get("msg", str(exc)).removeprefix("Value error, ")
    field = ".".join(str(part) for part in first.get("loc", ()))
    if not field:
        return ConfigurationError(message)
    return ConfigurationError(f"Deployment {field}: {message} (got {first.get('input')!r})")
