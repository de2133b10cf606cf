"""``ProviderRouter``: a chat model that routes each request across deployments.

One request goes like this:

1. **Plan.** Deployments that cannot serve it are skipped with a reason
   (disabled, cooling down, circuit open, half-open probe in flight, context
   window too small, not the pinned ``model=``); the rest are ranked by the
   strategy (see :mod:`._strategies`).
2. **Fail over.** The ranked deployments become one attempt Runnable each
   (named after the deployment), chained with ``Runnable.with_fallbacks``.
   Right before sending, an attempt takes the limits (RPM, TPM, concurrency,
   router-wide and per deployment) and claims the deployment in the health
   store; if either refuses, the attempt is skipped and the next one runs.
   Errors are classified (see :mod:`._health`): failover kinds move to the
   next attempt, ``bad_request`` is raised at once.
3. **Wait.** If every attempt was skipped or failed, the router sleeps until
   the earliest deployment can take the request again (Retry-After end,
   circuit half-open, a limiter slot, a backoff after transient errors) and
   plans again, up to ``deadline`` seconds; time spent queued behind RPM / TPM /
   concurrency limits does not count against the deadline (requests queue,
   they do not fail). Deployments that can never serve the request (all
   disabled) fail fast with :class:`~langchain_moa.errors.NoDeploymentAvailableError`.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import math
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.chat_models import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import var_child_runnable_config
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr, field_validator

from langchain_moa.errors import (
    ConfigurationError,
    DeploymentDisabledError,
    MissingAPIKeyError,
    NoDeploymentAvailableError,
)
from langchain_moa.router._deployment import Deployment
from langchain_moa.router._health import (
    BREAKER_KINDS,
    DEFAULT_RETRY_POLICY,
    KINDS,
    HealthConfig,
    RetryPolicy,
    backoff,
    claim,
    classify_error,
    record_failure,
    record_success,
    state_of,
    unclaim,
)
from langchain_moa.router._limits import Lease, Limits, try_acquire
from langchain_moa.router._stats import DeploymentStats
from langchain_moa.router._store import InMemoryStore, RouterStore
from langchain_moa.router._strategies import STRATEGIES, rank

__all__ = ["ProviderRouter"]

ROUTER_SCOPE = "__router__"
DECISION_EVENT = "moa_router_decision"
"""Name of the custom callback event carrying the routing decision (invoke/ainvoke)."""
_END = object()


def _run_with_timeout(fn: Callable[[], Any], timeout: float | None) -> Any:
    """Run ``fn`` with a timeout (sync path): in its own daemon thread, abandoned on
    timeout. One thread per call rather than a bounded pool, so that a queue of calls
    waiting for a pool worker can never time out before it started."""
    if timeout is None:
        return fn()
    ctx = contextvars.copy_context()
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["result"] = ctx.run(fn)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=run, name="moa-router-attempt", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError(f"attempt timed out after {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["result"]


class _Waker:
    """Wakes requests waiting for a concurrency slot when one is given back in this
    process (threads and asyncio tasks alike). Slots freed by other processes (a
    shared store) are noticed by polling every ``SLOT_POLL_S`` seconds."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._lock = threading.Lock()
        self._futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def notify(self) -> None:
        with self._cond:
            self._cond.notify_all()
        with self._lock:
            futures, self._futures = self._futures, []
        for loop, fut in futures:
            try:
                loop.call_soon_threadsafe(lambda f=fut: f.done() or f.set_result(None))
            except RuntimeError:  # loop closed
                pass

    def wait(self, timeout: float) -> None:
        with self._cond:
            self._cond.wait(timeout)

    async def await_(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._futures.append((loop, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass


SLOT_POLL_S = 0.25


class _Failover(Exception):
    """Internal: this attempt did not produce an answer; try the next one."""

    def __init__(self, deployment: str, message: str) -> None:
        super().__init__(f"{deployment}: {message}")
        self.deployment = deployment


_STOP_SIGNALS = (GeneratorExit, KeyboardInterrupt, SystemExit, asyncio.CancelledError)


@dataclass
class _Request:
    messages: list[BaseMessage]
    stop: list[str] | None
    call_kwargs: dict[str, Any]
    streaming: bool
    strategy: str
    prompt_tokens: int
    max_tokens: int | None
    output_tokens: int
    pinned: set[str] | None
    started: float
    deadline_at: float | None
    passes: int = 0
    waited_s: float = 0.0
    queued_s: float = 0.0
    min_context: int | None = None
    errors: dict[str, Any] = field(default_factory=dict)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    blocked: dict[str, float | None] = field(default_factory=dict)
    queue_blocked: set[str] = field(default_factory=set)
    pass_failed: set[str] = field(default_factory=set)
    last_kind: dict[str, str] = field(default_factory=dict)
    tries: dict[str, int] = field(default_factory=dict)
    pending: str | None = None
    slot_blocked: set[str] = field(default_factory=set)
    wait_for_slot: bool = False
    skipped_once: set[str] = field(default_factory=set)
    skip_counts: dict[str, int] = field(default_factory=dict)
    exhausted: set[str] = field(default_factory=set)


def _has_token(chunk: ChatGenerationChunk) -> bool:
    m = chunk.message
    if m.content:
        return True
    if isinstance(m, AIMessageChunk) and m.tool_call_chunks:
        return True
    return bool(m.additional_kwargs.get("function_call") or m.additional_kwargs.get("tool_calls"))


def _to_chunk(gen: ChatGeneration) -> ChatGenerationChunk:
    m = gen.message
    tool_call_chunks = []
    if isinstance(m, AIMessage):
        for i, tc in enumerate(m.tool_calls):
            tool_call_chunks.append(
                {"name": tc["name"], "args": json.dumps(tc["args"]), "id": tc.get("id"), "index": i}
            )
    chunk = AIMessageChunk(
        content=m.content,
        additional_kwargs=dict(m.additional_kwargs),
        response_metadata=dict(m.response_metadata),
        usage_metadata=getattr(m, "usage_metadata", None),
        tool_call_chunks=tool_call_chunks,
        id=m.id,
    )
    return ChatGenerationChunk(message=chunk, generation_info=gen.generation_info)


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


class _Attempt(Runnable[Any, Any]):
    """One try of one deployment, traced as its own child run named after it."""

    def __init__(self, router: ProviderRouter, req: _Request, dep: Deployment, retry: int) -> None:
        self.router = router
        self.req = req
        self.dep = dep
        self.retry = retry
        self.name = dep.name if retry == 0 else f"{dep.name} (retry {retry})"

    @staticmethod
    def _nest(config: RunnableConfig | None) -> RunnableConfig | None:
        # RunnableWithFallbacks.invoke passes the *parent* config to each runnable
        # (langchain issue 36072) while setting the child config in a context var;
        # take the callbacks from there so the attempt nests under the fallbacks run.
        ctx = var_child_runnable_config.get()
        if ctx and ctx.get("callbacks") is not None:
            return {**(config or {}), "callbacks": ctx["callbacks"]}
        return config

    def _config(self, config: RunnableConfig | None) -> RunnableConfig:
        cfg: RunnableConfig = dict(self._nest(config) or {})  # type: ignore[assignment]
        cfg.pop("run_name", None)
        cfg["metadata"] = {
            **(cfg.get("metadata") or {}),
            "router_deployment": self.dep.name,
            "router_model": self.dep.model or self.dep.model_id,
            "router_retry": self.retry,
        }
        return cfg

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(
            lambda x: self.router._attempt_invoke(self.req, self.dep, self.retry, x),
            input,
            self._config(config),
        )

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        async def run(x: Any) -> Any:
            return await self.router._attempt_ainvoke(self.req, self.dep, self.retry, x)

        return await self._acall_with_config(run, input, self._config(config))

    def stream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        def gen(inputs: Iterator[Any]) -> Iterator[Any]:
            msgs = None
            for x in inputs:
                msgs = x
            yield from self.router._attempt_stream(self.req, self.dep, self.retry, msgs)

        yield from self._transform_stream_with_config(iter([input]), gen, self._config(config))

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        async def one() -> AsyncIterator[Any]:
            yield input

        async def gen(inputs: AsyncIterator[Any]) -> AsyncIterator[Any]:
            msgs = None
            async for x in inputs:
                msgs = x
            async for c in self.router._attempt_astream(self.req, self.dep, self.retry, msgs):
                yield c

        async for c in self._atransform_stream_with_config(one(), gen, self._config(config)):
            yield c


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
    In ``stream``/``astream`` LangChain does not hand the run manager to the model,
    so attempts of a stream are not nested under the router's run.
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
    _rng: random.Random = PrivateAttr()
    _rng_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _health_cfg: HealthConfig = PrivateAttr()
    _policies: dict[str, RetryPolicy] = PrivateAttr()
    _by_name: dict[str, Deployment] = PrivateAttr()
    _waker: _Waker = PrivateAttr(default_factory=_Waker)

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

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
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
        if self.strategy not in STRATEGIES:
            raise ConfigurationError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
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
        self._rng = random.Random(self.seed)
        self._health_cfg = HealthConfig(
            failure_threshold=self.failure_threshold,
            circuit_cooldown=self.circuit_cooldown,
            rate_limit_initial=lo,
            rate_limit_max=hi,
            probe_timeout=max(60.0, 2 * (self.timeout or 30.0)),
        )
        policies = dict(DEFAULT_RETRY_POLICY)
        for k in BREAKER_KINDS:
            policies[k] = RetryPolicy(retries=self.max_retries)
        policies.update(self.retry_policy)
        self._policies = policies
        self._by_name = {str(d.name): d for d in self.deployments}

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
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools; each call passes them to the chosen deployment's own ``bind_tools``.

        Tools are converted to the OpenAI tool format (which every LangChain chat
        model's ``bind_tools`` accepts); ``tool_choice`` is passed as given.
        """
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
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
        "parsing_error"}`` like every LangChain chat model.

        Raises:
            ConfigurationError: unknown ``method``.
        """
        if method == "function_calling":
            return super().with_structured_output(schema, include_raw=include_raw, **kwargs)
        if method not in ("json_mode", "json_schema"):
            raise ConfigurationError(
                f"method must be 'function_calling', 'json_mode' or 'json_schema', got {method!r}"
            )
        from operator import itemgetter

        from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
        from langchain_core.runnables import RunnableMap, RunnablePassthrough
        from langchain_core.utils.function_calling import convert_to_json_schema
        from pydantic import BaseModel as _BaseModel

        is_model = isinstance(schema, type) and issubclass(schema, _BaseModel)
        if method == "json_mode":
            fmt: dict[str, Any] = {"type": "json_object"}
        else:
            js = convert_to_json_schema(schema)
            name = js.get("title") or getattr(schema, "__name__", None) or "output"
            body: dict[str, Any] = {"name": name, "schema": js}
            if strict is not None:
                body["strict"] = strict
            fmt = {"type": "json_schema", "json_schema": body}
        llm = self.bind(response_format=fmt, **kwargs)
        parser: Runnable = (
            PydanticOutputParser(pydantic_object=schema) if is_model else JsonOutputParser()
        )
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        failed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks([failed], exception_key="parsing_error")

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
        """Put a disabled (or cooling) deployment back into service."""
        if name not in self._by_name:
            raise ConfigurationError(f"no deployment named {name!r}; names: {list(self._by_name)}")
        self._store.health_update(name, lambda r: ({"state": "healthy"}, None))

    # ------------------------------------------------------------------ planning
    def _estimate_tokens(self, messages: list[BaseMessage]) -> int:
        if self.token_counter is not None:
            return int(self.token_counter(messages))
        chars = 0
        for m in messages:
            c = m.content
            chars += len(c) if isinstance(c, str) else len(json.dumps(c, default=str))
        return chars // 4 + 4 * len(messages)

    def _new_request(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        streaming: bool,
    ) -> _Request:
        kwargs = dict(kwargs)
        strategy = kwargs.pop("strategy", None) or self.strategy
        if strategy not in STRATEGIES:
            raise ConfigurationError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        pinned = None
        model = kwargs.pop("model", None)
        if model is not None:
            pinned = {
                str(d.name) for d in self.deployments if model in (d.name, d.model, d.model_id)
            }
            if not pinned:
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
        return _Request(
            messages=messages,
            stop=stop,
            call_kwargs=kwargs,
            streaming=streaming,
            strategy=strategy,
            prompt_tokens=self._estimate_tokens(messages),
            max_tokens=max_tokens,
            output_tokens=int(max_tokens or self.expected_output_tokens),
            pinned=pinned,
            started=now,
            deadline_at=None if self.deadline is None else now + self.deadline,
        )

    def _considered(self, req: _Request) -> list[Deployment]:
        return [d for d in self.deployments if req.pinned is None or d.name in req.pinned]

    def _context_skip(self, req: _Request, d: Deployment) -> str | None:
        if req.min_context is not None and (
            d.context_window is None or d.context_window <= req.min_context
        ):
            return (
                f"context window {d.context_window} not larger than {req.min_context} "
                "(context-length error)"
            )
        if d.context_window is not None and req.prompt_tokens > d.context_window:
            return f"prompt ~{req.prompt_tokens} tokens > context_window {d.context_window}"
        return None

    def _plan(self, req: _Request) -> list[tuple[Deployment, int]]:
        req.passes += 1
        req.blocked.clear()
        req.queue_blocked.clear()
        req.pass_failed.clear()
        req.slot_blocked.clear()
        req.wait_for_slot = False
        now = time.time()
        eligible: list[Deployment] = []
        skipped: list[dict[str, Any]] = []
        for d in self._considered(req):
            rec = self._store.health_get(str(d.name))
            state, until = state_of(rec, now)
            reason = None
            if state == "disabled":
                reason = f"disabled: {rec.get('reason', '')}"
            elif state in ("cooling", "open") and until is not None:
                word = "cooling down" if state == "cooling" else "circuit open"
                reason = f"{word} for {until - now:.2f} s ({rec.get('reason', '')})"
            elif (
                state == "half-open"
                and rec.get("probe_at") is not None
                and now - rec["probe_at"] < self._health_cfg.probe_timeout
            ):
                reason = "half-open: probe in flight"
            else:
                reason = self._context_skip(req, d)
            if reason:
                skipped.append(
                    {"deployment": d.name, "score": None, "note": None, "skipped": reason}
                )
            else:
                eligible.append(d)
        with self._rng_lock:
            ranked = rank(
                req.strategy,
                eligible,
                prompt_tokens=req.prompt_tokens,
                output_tokens=req.output_tokens,
                streaming=req.streaming,
                stats=self._stats,
                in_flight=self._busy,
                rng=self._rng,
            )
            if req.strategy == "least-busy" and ranked:
                # count the request against its first choice right away, so that
                # concurrent requests planned before this one is sent spread out
                self._release_pending(req)
                req.pending = str(ranked[0][0].name)
                self._store.slot_acquire(f"pending:{req.pending}", None)
        req.candidates = [
            {
                "deployment": d.name,
                "rank": i + 1,
                "score": _finite(s),
                "note": note,
                "skipped": None,
            }
            for i, (d, s, note) in enumerate(ranked)
        ] + skipped
        max_retries = max((p.retries for p in self._policies.values()), default=0)
        entries: list[tuple[Deployment, int]] = []
        for d, _, _ in ranked:
            entries.append((d, 0))
            entries.extend((d, i) for i in range(1, max_retries + 1))
        return entries

    def _sleep(self, req: _Request, wait: float) -> None:
        if req.wait_for_slot:
            self._waker.wait(wait)  # queue time already added by _next_wait
        else:
            time.sleep(wait)

    async def _asleep(self, req: _Request, wait: float) -> None:
        if req.wait_for_slot:
            await self._waker.await_(wait)  # queue time already added by _next_wait
        else:
            await asyncio.sleep(wait)

    def _busy(self, name: str) -> int:
        return self._store.slot_count(f"inflight:{name}") + self._store.slot_count(
            f"pending:{name}"
        )

    def _release_pending(self, req: _Request) -> None:
        if req.pending is not None:
            self._store.slot_release(f"pending:{req.pending}")
            req.pending = None

    def _next_wait(self, req: _Request) -> float:
        """Seconds until the earliest deployment may serve the request, or raise."""
        now = time.time()
        ready: dict[str, tuple[float, bool]] = {}
        for d in self._considered(req):
            name = str(d.name)
            if self._context_skip(req, d) or name in req.exhausted:
                continue
            rec = self._store.health_get(name)
            state, until = state_of(rec, now)
            if state == "disabled":
                continue
            t = now
            if state in ("cooling", "open") and until is not None:
                t = until
            elif state == "half-open" and rec.get("probe_at") is not None:
                t = now + 0.05
            queued = False
            if name in req.blocked:
                b = req.blocked[name]
                if b is None:
                    continue
                if name in req.queue_blocked and b >= t:
                    queued = True
                t = max(t, b)
            if name in req.pass_failed:
                t = max(t, now + backoff(req.passes, 0.25, 5.0))
            ready[name] = (t, queued)
        if not ready:
            raise NoDeploymentAvailableError(
                "no deployment can serve this request", errors=self._error_report(req)
            )
        name, (t, queued) = min(ready.items(), key=lambda kv: kv[1][0])
        wait = max(0.0, t - now)
        if name in req.slot_blocked:
            # woken when a slot is given back; the poll interval bounds the wait
            req.wait_for_slot = True
            wait = SLOT_POLL_S
        if queued:
            req.queued_s += wait
            if req.deadline_at is not None:
                req.deadline_at += wait
        if req.deadline_at is not None and now + wait > req.deadline_at:
            raise NoDeploymentAvailableError(
                f"no deployment available within the deadline of {self.deadline:g} s "
                f"(earliest: {name} in {wait:.2f} s)",
                errors=self._error_report(req),
            )
        req.waited_s += wait
        return wait

    def _error_report(self, req: _Request) -> dict[str, Any]:
        out: dict[str, Any] = {}
        skip = {c["deployment"]: c["skipped"] for c in req.candidates if c.get("skipped")}
        for d in self._considered(req):
            name = str(d.name)
            if name in req.errors:
                out[name] = req.errors[name]
            elif name in skip:
                out[name] = skip[name]
            else:
                rec = self._store.health_get(name)
                out[name] = rec.get("reason") or rec.get("last_error") or "not tried"
        return out

    # ------------------------------------------------------------------ one attempt
    def _attempt_timeout(self, req: _Request, d: Deployment) -> float | None:
        t = d.timeout or self.timeout
        if req.deadline_at is not None:
            left = req.deadline_at - time.time()
            t = max(0.05, min(t, left)) if t is not None else max(0.05, left)
        return t

    def _retry_delay(self, req: _Request, d: Deployment, retry: int) -> float | None:
        """``None``: this retry entry is not needed; else seconds to back off first."""
        if retry == 0:
            return 0.0
        name = str(d.name)
        kind = req.last_kind.get(name)
        if kind is None or kind not in BREAKER_KINDS or name not in req.pass_failed:
            return None
        if self._policies[kind].retries < retry:
            return None
        return backoff(retry, 0.25, 5.0)

    def _gate(self, req: _Request, d: Deployment) -> tuple[Lease, bool]:
        """Take the limits and claim the deployment, or raise ``_Failover`` (skipped)."""
        name = str(d.name)
        ctx_reason = self._context_skip(req, d)
        if ctx_reason:
            req.blocked[name] = None
            self._note_skip(req, d, ctx_reason)
            raise _Failover(name, ctx_reason)
        now = time.time()
        scopes = [
            (
                ROUTER_SCOPE,
                Limits(self.rpm, self.tpm, self.max_concurrency, window=self.limit_window),
            ),
            (name, Limits(d.rpm, d.tpm, d.max_concurrency, window=self.limit_window)),
        ]
        tokens = req.prompt_tokens + req.output_tokens
        lease, wait, why = try_acquire(self._store, scopes, tokens, now)
        if lease is not None:
            self._release_pending(req)
            lease.on_release = self._waker.notify
        if lease is None:
            req.blocked[name] = now + wait
            req.queue_blocked.add(name)
            if "max_concurrency" in why:
                req.slot_blocked.add(name)
            self._note_skip(req, d, f"limit: {why}")
            raise _Failover(name, why)
        allowed, reason, ready_at, is_probe = self._store.health_update(
            name, lambda r: claim(r, now, self._health_cfg)
        )
        if not allowed:
            lease.release(refund=True)
            req.blocked[name] = ready_at
            self._note_skip(req, d, reason)
            raise _Failover(name, reason)
        return lease, is_probe

    def _note_skip(self, req: _Request, d: Deployment, reason: str) -> None:
        """Record a skip once per deployment and request (queued requests re-check
        often; repeats only bump the entry's ``count``)."""
        name = str(d.name)
        req.skip_counts[name] = req.skip_counts.get(name, 0) + 1
        if name in req.skipped_once:
            for a in reversed(req.attempts):
                if a["deployment"] == name and a["outcome"] == "skipped":
                    a["reason"], a["count"] = reason, req.skip_counts[name]
                    break
            return
        req.skipped_once.add(name)
        self._stats[name].skip()
        req.attempts.append(
            {
                "deployment": name,
                "outcome": "skipped",
                "reason": reason,
                "count": 1,
                "pass": req.passes,
            }
        )

    def _prepare(self, req: _Request, d: Deployment) -> tuple[BaseChatModel, dict[str, Any]]:
        llm = d.chat_model(d.timeout or self.timeout)
        kw = dict(req.call_kwargs)
        tools = kw.pop("tools", None)
        tool_choice = kw.pop("tool_choice", None)
        if tools:
            bound = (
                llm.bind_tools(tools, tool_choice=tool_choice)
                if tool_choice is not None
                else llm.bind_tools(tools)
            )
            kw = {**getattr(bound, "kwargs", {}), **kw}
        return llm, kw

    def _prepare_or_fail(
        self, req: _Request, d: Deployment
    ) -> tuple[BaseChatModel, dict[str, Any]]:
        """Build the client *before* taking the limits, so that admission time is send
        time (building a client takes long enough on first use to bunch paced requests)."""
        try:
            return self._prepare(req, d)
        except MissingAPIKeyError as e:  # disables the deployment, names the variable
            self._on_error(req, d, e, 0.0, probe=False)
            raise
        except ConfigurationError:  # a wrong setting does not get better elsewhere
            raise
        except BaseException as e:  # noqa: BLE001
            self._on_error(req, d, e, 0.0, probe=False)
            raise

    def _on_error(
        self,
        req: _Request,
        d: Deployment,
        exc: BaseException,
        latency: float,
        probe: bool,
        after_first: bool = False,
    ) -> None:
        """Record a failed attempt and raise what the policy says (always raises)."""
        name = str(d.name)
        if isinstance(exc, _STOP_SIGNALS):
            if probe:
                self._store.health_update(name, unclaim)
            raise exc
        info = classify_error(exc)
        self._stats[name].failure(info.kind, info.message, latency)
        disable_reason = ""
        if info.kind == "auth":
            env = d.api_key_env
            where = (
                f"the environment variable {env}" if env else "the api_key given to the deployment"
            )
            what = f"HTTP {info.status}" if info.status else "missing key"
            disable_reason = f"{what} from {name}: check the API key in {where} ({info.message})"
        elif info.kind == "not_found":
            disable_reason = (
                f"HTTP 404 from {name}: model {d.model_id!r} not found on provider "
                f"{d.provider or 'custom'} ({info.message})"
            )
        now = time.time()
        state = self._store.health_update(
            name, lambda r: record_failure(r, info, now, self._health_cfg, disable_reason)
        )
        err: Any = exc
        if disable_reason:
            err = DeploymentDisabledError(f"deployment {name!r} disabled: {disable_reason}")
            err.__cause__ = exc
        req.errors[name] = err
        req.last_kind[name] = info.kind
        if info.kind in BREAKER_KINDS:
            req.pass_failed.add(name)
        if info.kind == "unknown":
            # not an HTTP or transport failure (a bug, an unexpected reply type):
            # try each deployment once per request rather than retry until the deadline
            req.exhausted.add(name)
        req.attempts.append(
            {
                "deployment": name,
                "outcome": "error",
                "error_kind": info.kind,
                "status": info.status,
                "retry_after_s": info.retry_after,
                "error": info.message,
                "state_after": state,
                "latency_s": round(latency, 4),
                "after_first_token": after_first,
                "pass": req.passes,
            }
        )
        if after_first:
            raise exc
        policy = self._policies[info.kind]
        if not policy.failover:
            raise exc
        if info.kind == "context_length":
            req.min_context = max(req.min_context or 0, d.context_window or req.prompt_tokens)
            if not any(
                self._context_skip(req, o) is None
                and self._store.health_get(str(o.name)).get("state") != "disabled"
                for o in self._considered(req)
            ):
                raise exc
        raise _Failover(name, info.message) from exc

    def _on_success(
        self,
        req: _Request,
        d: Deployment,
        msg: AIMessage | AIMessageChunk,
        lease: Lease,
        latency: float,
        ttft: float | None,
        probe: bool,
    ) -> dict[str, Any]:
        name = str(d.name)
        usage = msg.usage_metadata or {}
        tin, tout = int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))
        prices = d.prices()
        cost = (tin * prices[0] + tout * prices[1]) / 1e6 if prices else None
        self._stats[name].success(latency, ttft, tin, tout, cost)
        self._store.health_update(name, record_success)
        if usage:
            lease.reconcile_tokens(tin + tout)
        lease.release()
        req.attempts.append(
            {
                "deployment": name,
                "outcome": "ok",
                "latency_s": round(latency, 4),
                "ttft_s": None if ttft is None else round(ttft, 4),
                "pass": req.passes,
            }
        )
        return {
            "deployment": name,
            "model": d.model or d.model_id,
            "strategy": req.strategy,
            "candidates": req.candidates,
            "attempts": req.attempts,
            "passes": req.passes,
            "waited_s": round(req.waited_s, 4),
            "queued_s": round(req.queued_s, 4),
            "cost_usd": cost,
            "prompt_tokens_estimate": req.prompt_tokens,
        }

    @staticmethod
    def _finish_message(result: ChatResult, d: Deployment, decision: dict[str, Any]) -> AIMessage:
        gen = result.generations[0]
        msg = gen.message
        llm_output = {k: v for k, v in (result.llm_output or {}).items() if k != "token_usage"}
        meta = {**llm_output, **(gen.generation_info or {}), **msg.response_metadata}
        meta.setdefault("model_name", d.model_id)
        meta["router"] = decision
        msg.response_metadata = meta
        return msg  # type: ignore[return-value]

    def _attempt_invoke(
        self, req: _Request, d: Deployment, retry: int, messages: list[BaseMessage]
    ) -> AIMessage:
        delay = self._retry_delay(req, d, retry)
        if delay is None:
            raise _Failover(str(d.name), "no retry needed")
        if delay:
            time.sleep(delay)
        llm, kw = self._prepare_or_fail(req, d)
        lease, probe = self._gate(req, d)
        t0 = time.monotonic()
        try:
            result = _run_with_timeout(
                lambda: llm._generate(messages, stop=req.stop, **kw), self._attempt_timeout(req, d)
            )
        except BaseException as e:  # noqa: BLE001
            lease.release()
            self._on_error(req, d, e, time.monotonic() - t0, probe)
            raise  # unreachable
        decision = self._on_success(
            req, d, result.generations[0].message, lease, time.monotonic() - t0, None, probe
        )
        return self._finish_message(result, d, decision)

    async def _attempt_ainvoke(
        self, req: _Request, d: Deployment, retry: int, messages: list[BaseMessage]
    ) -> AIMessage:
        delay = self._retry_delay(req, d, retry)
        if delay is None:
            raise _Failover(str(d.name), "no retry needed")
        if delay:
            await asyncio.sleep(delay)
        llm, kw = self._prepare_or_fail(req, d)
        lease, probe = self._gate(req, d)
        t0 = time.monotonic()
        try:
            timeout = self._attempt_timeout(req, d)
            result = await asyncio.wait_for(llm._agenerate(messages, stop=req.stop, **kw), timeout)
        except BaseException as e:  # noqa: BLE001
            lease.release()
            self._on_error(req, d, e, time.monotonic() - t0, probe)
            raise
        decision = self._on_success(
            req, d, result.generations[0].message, lease, time.monotonic() - t0, None, probe
        )
        return self._finish_message(result, d, decision)

    @staticmethod
    def _inner_stream(
        llm: BaseChatModel, messages: list[BaseMessage], stop: Any, kw: dict[str, Any]
    ) -> Iterator[ChatGenerationChunk]:
        if type(llm)._stream is BaseChatModel._stream:
            result = llm._generate(messages, stop=stop, **kw)
            yield _to_chunk(result.generations[0])
            return
        yield from llm._stream(messages, stop=stop, **kw)

    @staticmethod
    async def _ainner_stream(
        llm: BaseChatModel, messages: list[BaseMessage], stop: Any, kw: dict[str, Any]
    ) -> AsyncIterator[ChatGenerationChunk]:
        if (
            type(llm)._astream is BaseChatModel._astream
            and type(llm)._stream is BaseChatModel._stream
        ):
            result = await llm._agenerate(messages, stop=stop, **kw)
            yield _to_chunk(result.generations[0])
            return
        async for c in llm._astream(messages, stop=stop, **kw):
            yield c

    def _final_chunk(
        self, acc: ChatGenerationChunk | None, d: Deployment, decision: dict[str, Any]
    ) -> ChatGenerationChunk:
        meta: dict[str, Any] = {"router": decision}
        have = {}
        if acc is not None:
            have = {**(acc.generation_info or {}), **acc.message.response_metadata}
        if "model_name" not in have:
            meta["model_name"] = d.model_id
        return ChatGenerationChunk(message=AIMessageChunk(content="", response_metadata=meta))

    def _attempt_stream(
        self, req: _Request, d: Deployment, retry: int, messages: list[BaseMessage]
    ) -> Iterator[ChatGenerationChunk]:
        delay = self._retry_delay(req, d, retry)
        if delay is None:
            raise _Failover(str(d.name), "no retry needed")
        if delay:
            time.sleep(delay)
        llm, kw = self._prepare_or_fail(req, d)
        lease, probe = self._gate(req, d)
        t0 = time.monotonic()
        buffered: list[ChatGenerationChunk] = []
        ended = False
        try:
            timeout = self._attempt_timeout(req, d)
            it = iter(self._inner_stream(llm, messages, req.stop, kw))
            while True:  # until the first token, failures fall over
                c = _run_with_timeout(lambda: next(it, _END), timeout)
                if c is _END:
                    ended = True
                    break
                buffered.append(c)
                if _has_token(c):
                    break
        except BaseException as e:  # noqa: BLE001
            lease.release()
            self._on_error(req, d, e, time.monotonic() - t0, probe)
            raise
        ttft = time.monotonic() - t0
        acc: ChatGenerationChunk | None = None
        try:
            for c in buffered:
                acc = c if acc is None else acc + c
                yield c
            if not ended:
                for c in it:
                    acc = c if acc is None else acc + c
                    yield c
        except BaseException as e:  # noqa: BLE001
            lease.release()
            self._on_error(req, d, e, time.monotonic() - t0, probe, after_first=True)
            raise
        msg = acc.message if acc is not None else AIMessageChunk(content="")
        decision = self._on_success(req, d, msg, lease, time.monotonic() - t0, ttft, probe)  # type: ignore[arg-type]
        yield self._final_chunk(acc, d, decision)

    async def _attempt_astream(
        self, req: _Request, d: Deployment, retry: int, messages: list[BaseMessage]
    ) -> AsyncIterator[ChatGenerationChunk]:
        delay = self._retry_delay(req, d, retry)
        if delay is None:
            raise _Failover(str(d.name), "no retry needed")
        if delay:
            await asyncio.sleep(delay)
        llm, kw = self._prepare_or_fail(req, d)
        lease, probe = self._gate(req, d)
        t0 = time.monotonic()
        buffered: list[ChatGenerationChunk] = []
        ended = False
        it: AsyncIterator[ChatGenerationChunk] | None = None
        try:
            timeout = self._attempt_timeout(req, d)
            it = self._ainner_stream(llm, messages, req.stop, kw).__aiter__()
            while True:
                try:
                    c = await asyncio.wait_for(it.__anext__(), timeout)
                except StopAsyncIteration:
                    ended = True
                    break
                buffered.append(c)
                if _has_token(c):
                    break
        except BaseException as e:  # noqa: BLE001
            lease.release()
            self._on_error(req, d, e, time.monotonic() - t0, probe)
            raise
        ttft = time.monotonic() - t0
        acc: ChatGenerationChunk | None = None
        try:
            for c in buffered:
                acc = c if acc is None else acc + c
                yield c
            if not ended and it is not None:
                async for c in it:
                    acc = c if acc is None else acc + c
                    yield c
        except BaseException as e:  # noqa: BLE001
            lease.release()
            self._on_error(req, d, e, time.monotonic() - t0, probe, after_first=True)
            raise
        msg = acc.message if acc is not None else AIMessageChunk(content="")
        decision = self._on_success(req, d, msg, lease, time.monotonic() - t0, ttft, probe)  # type: ignore[arg-type]
        yield self._final_chunk(acc, d, decision)

    # ------------------------------------------------------------------ the loop
    def _chain(self, req: _Request, entries: list[tuple[Deployment, int]]) -> Runnable:
        attempts = [_Attempt(self, req, d, r) for d, r in entries]
        return attempts[0].with_fallbacks(attempts[1:], exceptions_to_handle=(_Failover,))

    @staticmethod
    def _chain_config(run_manager: Any) -> RunnableConfig:
        cfg: RunnableConfig = {"run_name": "router-failover"}
        if run_manager is not None:
            # LLM run managers have no get_child(); build the child manager the same
            # way ParentRunManager.get_child() does so attempts nest under the router run.
            cls = (
                AsyncCallbackManager
                if isinstance(run_manager, AsyncCallbackManagerForLLMRun)
                else CallbackManager
            )
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
                entries = self._plan(req)
                if entries:
                    try:
                        msg = self._chain(req, entries).invoke(
                            messages, self._chain_config(run_manager)
                        )
                        if run_manager is not None:
                            self._chain_config(run_manager)["callbacks"].on_custom_event(
                                DECISION_EVENT,
                                msg.response_metadata["router"],
                                run_id=run_manager.run_id,
                            )
                        return ChatResult(generations=[ChatGeneration(message=msg)])
                    except _Failover:
                        pass
                self._sleep(req, self._next_wait(req))
        finally:
            self._release_pending(req)

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
                entries = self._plan(req)
                if entries:
                    try:
                        msg = await self._chain(req, entries).ainvoke(
                            messages, self._chain_config(run_manager)
                        )
                        if run_manager is not None:
                            await self._chain_config(run_manager)["callbacks"].on_custom_event(
                                DECISION_EVENT,
                                msg.response_metadata["router"],
                                run_id=run_manager.run_id,
                            )
                        return ChatResult(generations=[ChatGeneration(message=msg)])
                    except _Failover:
                        pass
                await self._asleep(req, self._next_wait(req))
        finally:
            self._release_pending(req)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        req = self._new_request(messages, stop, kwargs, streaming=True)
        try:
            while True:
                entries = self._plan(req)
                if entries:
                    it = self._chain(req, entries).stream(messages, self._chain_config(run_manager))
                    try:
                        first = next(it)
                    except _Failover:
                        first = None
                    if first is not None:
                        yield first
                        yield from it
                        return
                self._sleep(req, self._next_wait(req))
        finally:
            self._release_pending(req)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        req = self._new_request(messages, stop, kwargs, streaming=True)
        try:
            while True:
                entries = self._plan(req)
                if entries:
                    chain = self._chain(req, entries)
                    it = chain.astream(messages, self._chain_config(run_manager)).__aiter__()
                    try:
                        first = await it.__anext__()
                    except _Failover:
                        first = None
                    if first is not None:
                        yield first
                        async for c in it:
                            yield c
                        return
                await self._asleep(req, self._next_wait(req))
        finally:
            self._release_pending(req)
