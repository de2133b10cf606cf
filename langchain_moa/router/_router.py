"""``ProviderRouter``: a chat model that routes each request across deployments.

One request goes like this:

1. **Plan** (:mod:`._planner`). Deployments that cannot serve it are skipped
   with a reason (disabled, cooling down, circuit open, half-open probe in
   flight, context window too small, not the pinned ``model=``); the rest are
   ranked by the strategy (see :mod:`._strategies`).
2. **Fail over** (:mod:`._attempt`). The ranked deployments become one attempt
   Runnable each (named after the deployment), chained with
   ``Runnable.with_fallbacks``. Right before sending, an attempt takes the limits
   (RPM, TPM, concurrency, router-wide and per deployment) and claims the
   deployment in the health store; if either refuses, the attempt is skipped and
   the next one runs. Errors are classified (see :mod:`._health`) and recorded
   (:mod:`._outcome`): failover kinds move to the next attempt, ``bad_request``
   is raised at once.
3. **Wait** (:mod:`._planner`). If every attempt was skipped or failed, the
   router sleeps until the earliest deployment can take the request again
   (Retry-After end, circuit half-open, a limiter slot, a backoff after transient
   errors) and plans again, up to ``deadline`` seconds; time spent queued behind
   RPM / TPM / concurrency limits does not count against the deadline (requests
   queue, they do not fail). Deployments that can never serve the request (all
   disabled) fail fast with :class:`~langchain_moa.errors.NoDeploymentAvailableError`.

The per-request state shared by these steps is :class:`._request.Request`.
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from types import SimpleNamespace
from typing import Any, Literal
from uuid import UUID

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    BaseCallbackHandler,
    BaseCallbackManager,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.chat_models import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, ensure_config
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from langchain_moa.errors import ConfigurationError, InvalidRequestError
from langchain_moa.router._attempt import Attempt, Attempts
from langchain_moa.router._deployment import Deployment
from langchain_moa.router._health import (
    BREAKER_KINDS,
    DEFAULT_RETRY_POLICY,
    KINDS,
    Event,
    HealthConfig,
    RetryPolicy,
    apply,
    state_of,
)
from langchain_moa.router._limits import Limits
from langchain_moa.router._outcome import Outcomes
from langchain_moa.router._planner import Planner
from langchain_moa.router._redact import Redactor
from langchain_moa.router._request import Failover, Request, estimate_tokens
from langchain_moa.router._stats import DeploymentStats
from langchain_moa.router._store import InMemoryStore, RouterStore
from langchain_moa.router._strategies import STRATEGIES

__all__ = ["ProviderRouter"]

DECISION_EVENT = "moa_router_decision"
"""Name of the custom callback event carrying the routing decision (invoke/ainvoke)."""


TEMPERATURE_RANGE = (0.0, 2.0)
"""Valid ``temperature`` values (OpenAI's range, which OpenAI-compatible servers share)."""


def _check_kwargs(cls: type[BaseModel], data: dict[str, Any]) -> None:
    """Reject unknown keyword arguments (a typo is not silently ignored) and a
    ``temperature`` outside :data:`TEMPERATURE_RANGE`."""
    known = set(cls.model_fields) | {
        f.alias for f in cls.model_fields.values() if f.alias is not None
    }
    unknown = sorted(set(data) - known)
    if unknown:
        hint = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        raise ConfigurationError(
            f"{cls.__name__} got unknown parameter {unknown[0]!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + (f"; also unknown: {unknown[1:]}" if len(unknown) > 1 else "")
        )
    t = data.get("temperature")
    lo, hi = TEMPERATURE_RANGE
    bad_type = isinstance(t, bool) or not isinstance(t, int | float)
    if t is not None and (bad_type or not lo <= t <= hi):
        raise ConfigurationError(f"temperature must be a number in [{lo:g}, {hi:g}], got {t!r}")


def _configuration_error(exc: ValidationError) -> ConfigurationError:
    """The first error of a pydantic validation as a :class:`ConfigurationError` naming
    the parameter and the value given."""
    first = exc.errors()[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigurationError):
        return cause
    field = ".".join(str(part) for part in first.get("loc", ()))
    message = first.get("msg", str(exc)).removeprefix("Value error, ")
    return ConfigurationError(f"ProviderRouter {field}: {message} (got {first.get('input')!r})")


def _check_strategy(strategy: Any) -> None:
    if strategy not in STRATEGIES:
        raise ConfigurationError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


class _RunCapture(BaseCallbackHandler):
    """Notes the run id of the router's own chat-model run when it streams:
    ``BaseChatModel.stream`` does not hand its run manager to ``_stream``, so without
    it the failover chain would become a separate root trace."""

    run_inline = True

    def __init__(self) -> None:
        self.run_id: UUID | None = None
        self.tags: list[str] = []
        self.metadata: dict[str, Any] = {}

    def on_chat_model_start(
        self, serialized: Any, messages: Any, *, run_id: UUID, **kwargs: Any
    ) -> None:
        if self.run_id is None:  # the router's run comes first; later ones are children
            self.run_id = run_id
            self.tags = list(kwargs.get("tags") or [])
            self.metadata = dict(kwargs.get("metadata") or {})


_STREAM_PARENT: contextvars.ContextVar[tuple[int, _RunCapture, RunnableConfig] | None] = (
    contextvars.ContextVar("moa_router_stream_parent", default=None)
)
"""(router id, capture, config) of the ``stream``/``astream`` call in progress."""


def _with_capture(config: RunnableConfig | None) -> tuple[RunnableConfig, _RunCapture]:
    cfg = ensure_config(config)
    capture = _RunCapture()
    callbacks = cfg.get("callbacks")
    if callbacks is None:
        cfg["callbacks"] = [capture]
    elif isinstance(callbacks, BaseCallbackManager):
        manager = callbacks.copy()
        manager.add_handler(capture, inherit=True)
        cfg["callbacks"] = manager
    else:
        cfg["callbacks"] = [*callbacks, capture]
    return cfg, capture


def _reset(var: contextvars.ContextVar[Any], token: contextvars.Token[Any]) -> None:
    try:
        var.reset(token)
    except ValueError:  # the generator was closed from another context
        pass


class ProviderRouter(BaseChatModel):
    """A chat model that sends each request to one of several deployments.

    Use it anywhere a chat model goes: ``prompt | router``, as an MoA agent,
    in a LangGraph node; ``invoke`` / ``ainvoke`` / ``batch`` / ``stream`` /
    ``astream``; ``bind_tools`` and ``with_structured_output`` pass through to
    the deployment that serves the request.

    Example::

        router = ProviderRouter(
            deployments=[
                Deployment(model="groq/llama-3.1-8b-instant", rpm=30),
                Deployment(model="together/meta-llama/Llama-3.1-8B-Instruct-Turbo"),
                Deployment(model="llamacpp/qwen", base_url="http://127.0.0.1:8080/v1"),
            ],
            strategy="cost",
        )
        msg = router.invoke("hi")
        msg.response_metadata["router"]["deployment"]   # who answered, and why

    Args:
        deployments: :class:`Deployment` objects (or model strings, or chat
            models); names must be unique.
        strategy: ``"priority"``, ``"cost"``, ``"latency"``, ``"weighted"`` or
            ``"least-busy"`` (per call: ``invoke(..., strategy="cost")``).
        timeout: seconds per attempt (``Deployment.timeout`` overrides).
        deadline: seconds for one request including waits for cooldowns (time
            queued behind rate/concurrency limits is not counted); ``None`` = no limit.
        seed: seed of the ``"weighted"`` strategy's random generator.
        store: :class:`~langchain_moa.router.RouterStore` holding limiter and
            health state (default: a new ``InMemoryStore``; ``RedisStore`` to
            share one quota between processes).
        rpm / tpm / max_concurrency: router-wide limits (``None`` = unlimited).
        temperature / max_tokens / stop: defaults sent to every deployment.
        max_retries: extra attempts on the same deployment after a transient
            error (5xx, timeout, connection, malformed) before failing over.
        retry_policy: per error kind overrides, e.g.
            ``{"server": RetryPolicy(retries=2), "timeout": RetryPolicy(failover=False)}``.
        failure_threshold: consecutive transient failures that open the circuit.
        circuit_cooldown: seconds the circuit stays open before the half-open probe.
        rate_limit_backoff: ``(initial, max)`` seconds of the jittered exponential
            cooldown after a 429 without Retry-After.
        expected_output_tokens: completion tokens assumed when ``max_tokens`` is
            unset (cost ranking and TPM reservation).
        token_counter: ``messages -> int`` prompt token estimate (default: 4
            characters per token + 4 per message).
        limit_window: seconds of the RPM/TPM window (60; shorter only for tests).

    Raises (from calls):
        NoDeploymentAvailableError: nobody could answer within the deadline;
            ``.errors`` maps every deployment to its last error or skip reason.
        openai.BadRequestError (or the provider's equivalent): a bad request,
            raised at once without failover.

    Decision metadata: every answer's ``response_metadata["router"]`` (the last
    chunk's, when streaming) holds ``deployment``, ``model``, ``strategy``,
    ``candidates`` (each deployment's ``rank``, ``score``, ``note`` or ``skipped``
    reason), ``attempts`` (deployment, ``outcome`` ok/error/skipped, ``error_kind``,
    ``status``, ``retry_after_s``, ``latency_s``, ``ttft_s``), ``passes``,
    ``waited_s``, ``queued_s``, ``cost_usd``. ``invoke``/``ainvoke`` also send it to
    callback handlers as the custom event ``"moa_router_decision"``.

    Tracing: the router's chat-model run has one child chain run
    ``"router-failover"`` (the ``with_fallbacks`` chain) whose children are the
    attempts, each named after its deployment (``"a"``, ``"a (retry 1)"``).
    Deployments are called below the callback layer, so token usage is reported
    once, by the router's run (``UsageMetadataCallbackHandler`` counts each call
    once). ``response_metadata["model_name"]`` is the model id the provider reported.
    ``stream``/``astream`` nest the same way (LangChain does not hand ``_stream`` its
    run manager; the router notes its run id with a callback handler instead).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    deployments: list[Deployment]
    strategy: Literal["priority", "cost", "latency", "weighted", "least-busy"] = "priority"
    timeout: float | None = Field(default=30.0, gt=0)
    deadline: float | None = Field(default=120.0, gt=0)
    seed: int | None = None
    store: Any = None
    rpm: float | None = Field(default=None, gt=0)
    tpm: float | None = Field(default=None, gt=0)
    max_concurrency: int | None = Field(default=None, ge=1)
    temperature: float | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    stop: list[str] | None = None
    max_retries: int = Field(default=0, ge=0)
    retry_policy: dict[str, RetryPolicy] = Field(default_factory=dict)
    failure_threshold: int = Field(default=3, ge=1)
    circuit_cooldown: float = Field(default=30.0, gt=0)
    rate_limit_backoff: tuple[float, float] = (1.0, 60.0)
    expected_output_tokens: int = Field(default=256, ge=1)
    token_counter: Callable[[list[BaseMessage]], int] | None = None
    limit_window: float = Field(default=60.0, gt=0)

    _store: RouterStore = PrivateAttr()
    _stats: dict[str, DeploymentStats] = PrivateAttr()
    _by_name: dict[str, Deployment] = PrivateAttr()
    _planner: Planner = PrivateAttr()
    _attempts: Attempts = PrivateAttr()

    @field_validator("deployments", mode="before")
    @classmethod
    def _coerce(cls, v: Any) -> Any:
        if not isinstance(v, list | tuple):
            return v
        out = []
        for d in v:
            if isinstance(d, str):
                out.append(Deployment(model=d))
            elif isinstance(d, BaseChatModel):
                out.append(Deployment(llm=d))
            else:
                out.append(d)
        return out

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["langchain_moa", "router"]

    def to_json(self) -> Any:
        """LangChain serialisation: deployments with their keys as secret references
        (:attr:`Deployment.lc_secrets`), retry policies as plain values. A custom
        ``store`` or ``token_counter`` is written as ``not_implemented``, so ``loads``
        refuses it; limiter and health state are never serialised."""
        out = super().to_json()
        kwargs = out.get("kwargs")
        if isinstance(kwargs, dict) and isinstance(kwargs.get("retry_policy"), dict):
            kwargs["retry_policy"] = {
                kind: dataclasses.asdict(policy) if dataclasses.is_dataclass(policy) else policy
                for kind, policy in kwargs["retry_policy"].items()
            }
        return out

    def __init__(self, **data: Any) -> None:
        """Raises :class:`ConfigurationError` naming the parameter: an unknown keyword
        (``temprature=``), ``temperature`` outside [0, 2], any other invalid value."""
        _check_kwargs(type(self), data)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _configuration_error(exc) from None
        self._check_config()  # outside pydantic so ConfigurationError reaches the caller as is

    def _check_config(self) -> None:
        if not self.deployments:
            raise ConfigurationError("deployments must list at least one Deployment")
        seen: set[str] = set()
        for d in self.deployments:
            if d.name in seen:
                raise ConfigurationError(
                    f"deployment names must be unique: {d.name!r} appears twice "
                    "(give each Deployment a distinct name=)"
                )
            seen.add(str(d.name))
        _check_strategy(self.strategy)
        unknown = set(self.retry_policy) - set(KINDS)
        if unknown:
            raise ConfigurationError(
                f"retry_policy has unknown error kinds {sorted(unknown)}; "
                f"valid kinds: {list(KINDS)}"
            )
        lo, hi = self.rate_limit_backoff
        if not (0 < lo <= hi):
            raise ConfigurationError(
                "rate_limit_backoff must be (initial, max) with 0 < initial <= max, "
                f"got {self.rate_limit_backoff}"
            )
        if self.store is not None and not isinstance(self.store, RouterStore):
            raise ConfigurationError(
                f"store must be a RouterStore, got {type(self.store).__name__}"
            )

    def model_post_init(self, __context: Any) -> None:
        lo, hi = self.rate_limit_backoff
        self._store = self.store if self.store is not None else InMemoryStore()
        self._stats = {str(d.name): DeploymentStats() for d in self.deployments}
        health_cfg = HealthConfig(
            failure_threshold=self.failure_threshold,
            circuit_cooldown=self.circuit_cooldown,
            rate_limit_initial=lo,
            rate_limit_max=hi,
        )
        policies = dict(DEFAULT_RETRY_POLICY)
        for k in BREAKER_KINDS:
            policies[k] = RetryPolicy(retries=self.max_retries)
        policies.update(self.retry_policy)
        self._by_name = {str(d.name): d for d in self.deployments}
        shared = {"store": self._store, "stats": self._stats, "health_cfg": health_cfg}
        self._planner = Planner(**shared, policies=policies, seed=self.seed)
        outcomes = Outcomes(**shared, policies=policies, redactor=Redactor(self.deployments))
        self._attempts = Attempts(self._planner, outcomes, policies)

    # ------------------------------------------------------------------ LangChain glue
    @property
    def _llm_type(self) -> str:
        return "provider-router"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "deployments": [d.name for d in self.deployments],
            "strategy": self.strategy,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="langchain-moa-router",
            ls_model_name=kwargs.get("model")
            if isinstance(kwargs.get("model"), str)
            else "router[" + ",".join(str(d.name) for d in self.deployments) + "]",
            ls_model_type="chat",
        )
        t = kwargs.get("temperature", self.temperature)
        if isinstance(t, int | float):
            params["ls_temperature"] = t
        mt = kwargs.get("max_tokens", self.max_tokens)
        if isinstance(mt, int):
            params["ls_max_tokens"] = mt
        s = stop or self.stop
        if s:
            params["ls_stop"] = s
        return params

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: str | dict | bool | None = None,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools; each call passes them to the chosen deployment's own ``bind_tools``.

        Tools are converted to the OpenAI tool format (which every LangChain chat
        model's ``bind_tools`` accepts); ``tool_choice`` is passed as given.
        ``strict`` (OpenAI structured outputs, as in ``BaseChatOpenAI.bind_tools``)
        is set as each tool's ``function.strict`` and passed to the deployment's
        ``bind_tools`` when that takes a ``strict`` argument; ``None`` sends none.
        """
        formatted = [convert_to_openai_tool(t, strict=strict) for t in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        if strict is not None:
            kwargs["strict"] = strict
        return self.bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        include_raw: bool = False,
        method: Literal["function_calling", "json_mode", "json_schema"] = "function_calling",
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """Structured output through whichever deployment answers.

        ``method="function_calling"`` (default) binds the schema as a tool (the
        deployment's own ``bind_tools``); ``"json_schema"`` and ``"json_mode"`` send
        OpenAI's ``response_format`` (``json_schema`` with the schema, or
        ``json_object``) and parse the JSON reply (pydantic class -> instance,
        otherwise a dict). ``include_raw=True`` returns ``{"raw", "parsed",
        "parsing_error"}`` like every LangChain chat model. ``strict`` is passed on
        as ``BaseChatOpenAI.with_structured_output`` does: to :meth:`bind_tools`
        (``function_calling``) or into the ``json_schema`` (``None``: not sent).

        Raises:
            ConfigurationError: unknown ``method``.
        """
        if method not in ("function_calling", "json_mode", "json_schema"):
            raise ConfigurationError(
                f"method must be 'function_calling', 'json_mode' or 'json_schema', got {method!r}"
            )
        from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
        from langchain_core.output_parsers.openai_tools import (
            JsonOutputKeyToolsParser,
            PydanticToolsParser,
        )
        from langchain_core.utils.function_calling import convert_to_json_schema
        from langchain_core.utils.pydantic import is_basemodel_subclass

        is_model = isinstance(schema, type) and is_basemodel_subclass(schema)  # pydantic v1 or v2
        parser: Runnable
        if method == "function_calling":
            # as BaseChatModel.with_structured_output, plus ``strict``
            llm = self.bind_tools(
                [schema],
                tool_choice="any",
                strict=strict,
                ls_structured_output_format={
                    "kwargs": {"method": method, "strict": strict},
                    "schema": schema,
                },
                **kwargs,
            )
            if is_model:
                parser = PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
            else:
                key = convert_to_openai_tool(schema)["function"]["name"]
                parser = JsonOutputKeyToolsParser(key_name=key, first_tool_only=True)
            return _with_parser(llm, parser, include_raw)
        if method == "json_mode":
            fmt: dict[str, Any] = {"type": "json_object"}
        else:
            js = convert_to_json_schema(schema)
            name = js.get("title") or getattr(schema, "__name__", None) or "output"
            body: dict[str, Any] = {"name": name, "schema": js}
            if strict is not None:
                body["strict"] = strict
            fmt = {"type": "json_schema", "json_schema": body}
        llm = self.bind(
            response_format=fmt,
            # what LangChain reports to callbacks (LangSmith) as the run's output format
            ls_structured_output_format={
                "kwargs": {"method": method, "strict": strict},
                "schema": schema,
            },
            **kwargs,
        )
        parser = PydanticOutputParser(pydantic_object=schema) if is_model else JsonOutputParser()
        return _with_parser(llm, parser, include_raw)

    # ------------------------------------------------------------------ public helpers
    @classmethod
    def from_logical_model(
        cls,
        name: str,
        providers: list[str] | None = None,
        *,
        deployment_kwargs: dict[str, dict[str, Any]] | None = None,
        **router_kwargs: Any,
    ) -> ProviderRouter:
        """A router over one logical model served by several providers.

        Example::

            router = ProviderRouter.from_logical_model(
                "llama-3.1-8b", ["groq", "together", "openrouter"], strategy="cost"
            )

        Args:
            name: a key of :data:`langchain_moa.providers.LOGICAL_MODELS`
                (add your own with ``register_logical_model``).
            providers: which providers, in priority order (default: all listed).
            deployment_kwargs: per provider extra ``Deployment`` fields
                (``{"groq": {"rpm": 30}}``).
            **router_kwargs: the router's own parameters.
        """
        from langchain_moa.providers import resolve_logical_model

        extra = deployment_kwargs or {}
        deps = []
        for model in resolve_logical_model(name, providers):
            provider = model.split("/", 1)[0]
            deps.append(Deployment(model=model, **extra.get(provider, {})))
        return cls(deployments=deps, **router_kwargs)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per deployment: counters, latency p50/p95 (s), health and spend.

        Keys of each entry: ``successes``, ``failures``, ``failures_by_kind``,
        ``skips``, ``latency_p50_s``, ``latency_p95_s``, ``ttft_p50_s``,
        ``ttft_p95_s``, ``ewma_latency_s``, ``ewma_ttft_s``, ``input_tokens``,
        ``output_tokens``, ``tokens``, ``spend_usd``, ``last_error``, ``state``
        (``"healthy"``, ``"cooling"``, ``"open"``, ``"half-open"``, ``"disabled"``),
        ``cooldown_until`` (epoch seconds or ``None``), ``cooldown_remaining_s``,
        ``state_reason``, ``in_flight``, ``model``.
        """
        now = time.time()
        out: dict[str, dict[str, Any]] = {}
        for d in self.deployments:
            name = str(d.name)
            snap = self._stats[name].snapshot()
            rec = self._store.health_get(name)
            state, until = state_of(rec, now)
            snap.update(
                model=d.model or d.model_id,
                state=state,
                cooldown_until=until,
                cooldown_remaining_s=max(0.0, until - now) if until else 0.0,
                state_reason=rec.get("reason") if state != "healthy" else None,
                in_flight=self._store.slot_count(f"inflight:{name}"),
            )
            out[name] = snap
        return out

    def enable(self, name: str) -> None:
        """Put a disabled (or cooling, or open) deployment back into service: the
        operator's reset, the one event that may end a window early."""
        if name not in self._by_name:
            raise ConfigurationError(f"no deployment named {name!r}; names: {list(self._by_name)}")
        self._store.health_update(name, apply(Event.enabled(), HealthConfig()))

    # ------------------------------------------------------------------ the loop
    def _new_request(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        streaming: bool,
    ) -> Request:
        _check_encodable(messages)
        kwargs = dict(kwargs)
        strategy = kwargs.pop("strategy", None) or self.strategy
        _check_strategy(strategy)
        deployments = self.deployments
        model = kwargs.pop("model", None)
        if model is not None:
            deployments = [d for d in self.deployments if model in (d.name, d.model, d.model_id)]
            if not deployments:
                raise ConfigurationError(
                    f"model={model!r} matches no deployment; "
                    f"names: {[d.name for d in self.deployments]}"
                )
        if self.temperature is not None:
            kwargs.setdefault("temperature", self.temperature)
        if self.max_tokens is not None:
            kwargs.setdefault("max_tokens", self.max_tokens)
        stop = stop or self.stop or None
        max_tokens = kwargs.get("max_tokens") or kwargs.get("max_completion_tokens")
        now = time.time()
        return Request(
            messages=messages,
            stop=stop,
            call_kwargs=kwargs,
            streaming=streaming,
            strategy=strategy,
            prompt_tokens=estimate_tokens(messages, self.token_counter),
            output_tokens=int(max_tokens or self.expected_output_tokens),
            deployments=list(deployments),
            timeout=self.timeout,
            limits=Limits(self.rpm, self.tpm, self.max_concurrency, window=self.limit_window),
            deadline=self.deadline,
            started=now,
            deadline_at=None if self.deadline is None else now + self.deadline,
        )

    def _pass_chain(self, req: Request, run_manager: Any) -> tuple[Runnable, RunnableConfig] | None:
        """Plan a pass: the failover chain of its attempts and the chain's config, or
        ``None`` when no deployment can be tried now."""
        entries = self._planner.plan(req)
        if not entries:
            return None
        attempts = [Attempt(self._attempts, req, d, r) for d, r in entries]
        chain = attempts[0].with_fallbacks(attempts[1:], exceptions_to_handle=(Failover,))
        return chain, self._chain_config(run_manager)

    @staticmethod
    def _chain_config(run_manager: Any) -> RunnableConfig:
        cfg: RunnableConfig = {"run_name": "router-failover"}
        if run_manager is not None:
            # LLM run managers have no get_child(); build the child manager the same
            # way ParentRunManager.get_child() does so attempts nest under the router run.
            is_async = getattr(run_manager, "is_async", None)
            if is_async is None:
                is_async = isinstance(run_manager, AsyncCallbackManagerForLLMRun)
            cls = AsyncCallbackManager if is_async else CallbackManager
            manager = cls(handlers=[], parent_run_id=run_manager.run_id)
            manager.set_handlers(run_manager.inheritable_handlers)
            manager.add_tags(run_manager.inheritable_tags)
            manager.add_metadata(run_manager.inheritable_metadata)
            cfg["callbacks"] = manager
        return cfg

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        req = self._new_request(messages, stop, kwargs, streaming=False)
        try:
            while True:
                step = self._pass_chain(req, run_manager)
                if step is not None:
                    chain, cfg = step
                    try:
                        msg = chain.invoke(messages, cfg)
                        if run_manager is not None:
                            cfg["callbacks"].on_custom_event(
                                DECISION_EVENT,
                                msg.response_metadata["router"],
                                run_id=run_manager.run_id,
                            )
                        return ChatResult(generations=[ChatGeneration(message=msg)])
                    except Failover:
                        pass
                self._planner.sleep(req, self._planner.next_wait(req))
        finally:
            self._planner.release_pending(req)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        req = self._new_request(messages, stop, kwargs, streaming=False)
        try:
            while True:
                step = self._pass_chain(req, run_manager)
                if step is not None:
                    chain, cfg = step
                    try:
                        msg = await chain.ainvoke(messages, cfg)
                        if run_manager is not None:
                            await cfg["callbacks"].on_custom_event(
                                DECISION_EVENT,
                                msg.response_metadata["router"],
                                run_id=run_manager.run_id,
                            )
                        return ChatResult(generations=[ChatGeneration(message=msg)])
                    except Failover:
                        pass
                await self._planner.asleep(req, self._planner.next_wait(req))
        finally:
            self._planner.release_pending(req)

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        """As ``BaseChatModel.stream``; the failover chain (one child run per attempt)
        nests under this call's run, as with ``invoke``."""
        cfg, capture = _with_capture(config)
        token = _STREAM_PARENT.set((id(self), capture, cfg))
        try:
            yield from super().stream(input, cfg, stop=stop, **kwargs)
        finally:
            _reset(_STREAM_PARENT, token)

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        """As ``BaseChatModel.astream``; attempts nest under this call's run."""
        cfg, capture = _with_capture(config)
        token = _STREAM_PARENT.set((id(self), capture, cfg))
        try:
            async for chunk in super().astream(input, cfg, stop=stop, **kwargs):
                yield chunk
        finally:
            _reset(_STREAM_PARENT, token)

    def _stream_parent(self, is_async: bool) -> Any:
        """A stand-in for the run manager ``_stream`` is not given: the router run's id
        and the handlers, tags and metadata its children inherit (``None`` when this
        router is not streaming through :meth:`stream` / :meth:`astream`)."""
        held = _STREAM_PARENT.get()
        if held is None or held[0] != id(self) or held[1].run_id is None:
            return None
        _, capture, cfg = held
        cls = AsyncCallbackManager if is_async else CallbackManager
        manager = cls.configure(
            cfg.get("callbacks"),
            None,
            self.verbose,
            cfg.get("tags"),
            None,
            {**(cfg.get("metadata") or {}), **capture.metadata},
            None,
        )
        return SimpleNamespace(
            run_id=capture.run_id,
            is_async=is_async,
            inheritable_handlers=manager.handlers,
            inheritable_tags=manager.inheritable_tags,
            inheritable_metadata=manager.inheritable_metadata,
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        req = self._new_request(messages, stop, kwargs, streaming=True)
        run_manager = run_manager or self._stream_parent(is_async=False)
        try:
            while True:
                step = self._pass_chain(req, run_manager)
                if step is not None:
                    it = step[0].stream(messages, step[1])
                    try:
                        first = next(it)
                    except Failover:
                        first = None
                    if first is not None:
                        yield first
                        yield from it
                        return
                self._planner.sleep(req, self._planner.next_wait(req))
        finally:
            self._planner.release_pending(req)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        req = self._new_request(messages, stop, kwargs, streaming=True)
        run_manager = run_manager or self._stream_parent(is_async=True)
        try:
            while True:
                step = self._pass_chain(req, run_manager)
                if step is not None:
                    it = step[0].astream(messages, step[1]).__aiter__()
                    try:
                        first = await it.__anext__()
                    except Failover:
                        first = None
                    if first is not None:
                        yield first
                        async for c in it:
                            yield c
                        return
                await self._planner.asleep(req, self._planner.next_wait(req))
        finally:
            self._planner.release_pending(req)


def _check_encodable(messages: list[BaseMessage]) -> None:
    """Raise :class:`InvalidRequestError` at once when a message's text cannot be sent
    as UTF-8 (a lone surrogate such as ``"\\ud800"``): nothing is sent and no
    deployment is charged with a failure."""
    for i, m in enumerate(messages):
        parts = (
            [m.content]
            if isinstance(m.content, str)
            else [
                p if isinstance(p, str) else (p.get("text") if isinstance(p, dict) else None)
                for p in m.content
            ]
        )
        for text in parts:
            if not isinstance(text, str):
                continue
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidRequestError(
                    f"message {i} ({m.type}) cannot be encoded as UTF-8 at character "
                    f"{exc.start} ({exc.reason}); nothing was sent"
                ) from exc


def _with_parser(llm: Runnable, parser: Runnable, include_raw: bool) -> Runnable:
    """``llm | parser``; with ``include_raw`` ``{"raw", "parsed", "parsing_error"}`` as
    every LangChain chat model's ``with_structured_output``."""
    from operator import itemgetter

    from langchain_core.runnables import RunnableMap, RunnablePassthrough

    if not include_raw:
        return llm | parser
    parsed = RunnablePassthrough.assign(
        parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
    )
    failed = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=llm) | parsed.with_fallbacks([failed], exception_key="parsing_error")
