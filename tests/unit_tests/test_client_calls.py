"""Client-function agents: a call nobody observes goes straight to the client (no
LangChain chat-model run), a sync layer of async clients runs on the shared client
loop, and any observer (a tracer, a usage or streaming handler, a cache) brings the
LangChain run back with the same records."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler, get_usage_metadata_callback
from langchain_core.tracers.context import collect_runs

from langchain_moa import Aggregate, MoAHistoryHandler, Propose, Synthesize
from langchain_moa.steps._base import DEFAULT_SYNC_WORKERS

RECORD_FIELDS = (
    "step",
    "layer",
    "agent_index",
    "model",
    "response_model",
    "messages",
    "output",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "error",
)


class Client:
    """A mixture-llm style async client; ``barrier`` calls wait until that many are
    in flight at once (so a bound below it never finishes: the wait times out), other
    calls stay in flight ``hold`` seconds."""

    def __init__(self, barrier: int = 0, hold: float = 0.0) -> None:
        self.barrier = barrier
        self.hold = hold
        self.calls: list[tuple[Any, ...]] = []
        self.threads: set[str] = set()
        self.in_flight = 0
        self.peak = 0
        self._all_in: asyncio.Event | None = None

    async def __call__(self, model: str, messages: list[dict], temp: float, max_tokens: int):
        self.calls.append((model, messages, temp, max_tokens))
        self.threads.add(threading.current_thread().name)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        if self.barrier:
            if self._all_in is None:
                self._all_in = asyncio.Event()
            if self.in_flight >= self.barrier:
                self._all_in.set()
            await asyncio.wait_for(self._all_in.wait(), timeout=10)
        else:
            await asyncio.sleep(self.hold)
        self.in_flight -= 1
        return f"{model} on {messages[-1]['content'][:12]!r}", 11, 4


class ChatRuns(BaseCallbackHandler):
    """Observes chat-model runs (as a tracer or a usage handler does)."""

    run_inline = True

    def __init__(self) -> None:
        self.names: list[str] = []

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self.names.append(kwargs.get("name") or "")


def pipeline(client: Client) -> Any:
    return (
        Propose(["m0", "m1", "m2"], client=client)
        | Synthesize(["s0", "s1"], client=client)
        | Aggregate("agg", client=client)
    )


def records(history: MoAHistoryHandler) -> list[dict[str, Any]]:
    return [{k: getattr(c, k) for k in RECORD_FIELDS} for c in history.calls]


# -- nobody observes: one hop per layer, no thread per call --------------------------


def test_a_sync_layer_of_async_clients_runs_at_once_on_the_client_loop() -> None:
    """Before: one pool thread per call, at most DEFAULT_SYNC_WORKERS in flight (the
    barrier below was never reached). Now the whole layer is on the client loop."""
    width = DEFAULT_SYNC_WORKERS + 36
    client = Client(barrier=width)
    history = MoAHistoryHandler()
    out = Propose(["m"] * width, client=client).invoke("q", {"callbacks": [history]})
    assert len(out.candidates) == width
    assert client.peak == width
    assert client.threads == {"langchain-moa-client-loop"}
    assert [c.ok for c in history.calls] == [True] * width


def test_a_sync_batch_of_async_clients_runs_at_once_on_the_client_loop() -> None:
    """Before: LangChain's batch ran an input per thread (min(32, cores + 4) threads
    by default), so the barrier was never reached."""
    inputs = 40
    client = Client(barrier=inputs * 2)
    history = MoAHistoryHandler()
    moa = Propose(["m0", "m1"], client=client) | Aggregate("agg", client=client)
    outs = moa.batch([f"q{i}" for i in range(inputs)], {"callbacks": [history]})
    assert [o.text for o in outs] == [f"agg on 'q{i}'" for i in range(inputs)]
    assert client.peak == inputs * 2
    assert client.threads == {"langchain-moa-client-loop"}
    assert len(history.steps) == inputs * 2
    assert len(history.calls) == inputs * 3


def test_a_step_batched_on_its_own_with_a_history_runs_on_the_client_loop() -> None:
    client = Client(barrier=12 * 2)
    history = MoAHistoryHandler()
    outs = Propose(["m0", "m1"], client=client).batch(
        [f"q{i}" for i in range(12)], {"callbacks": [history]}
    )
    assert [len(o.candidates) for o in outs] == [2] * 12
    assert client.peak == 24
    assert len(history.calls) == 24


def test_max_concurrency_bounds_a_sync_batch_of_async_clients() -> None:
    client = Client(hold=0.01)
    moa = Propose(["m0", "m1"], client=client)
    outs = moa.batch([f"q{i}" for i in range(12)], {"max_concurrency": 3})
    assert [len(o.candidates) for o in outs] == [2] * 12
    assert client.peak <= 3 * 2


def test_max_concurrency_still_bounds_a_sync_layer_of_async_clients() -> None:
    client = Client(hold=0.01)
    out = Propose(["m"] * 20, client=client, max_concurrency=5).invoke("q")
    assert len(out.candidates) == 20
    assert len(client.calls) == 20
    assert client.peak <= 5


def test_sync_clients_keep_the_bounded_thread_pool() -> None:
    lock = threading.Lock()
    state = {"in_flight": 0, "peak": 0, "threads": set()}

    def sync_client(model: str, messages: list[dict], temp: float, max_tokens: int):
        with lock:
            state["in_flight"] += 1
            state["peak"] = max(state["peak"], state["in_flight"])
            state["threads"].add(threading.current_thread().name)
        time.sleep(0.01)
        with lock:
            state["in_flight"] -= 1
        return "x", 1, 1

    out = Propose(["m"] * (DEFAULT_SYNC_WORKERS + 36), client=sync_client).invoke("q")
    assert len(out.candidates) == DEFAULT_SYNC_WORKERS + 36
    assert 1 < state["peak"] <= DEFAULT_SYNC_WORKERS
    assert all(name.startswith("langchain-moa-fanout") for name in state["threads"])


# -- observed: the LangChain run is back, the records are the same -----------------


def run_with(client: Client, observe: str, mode: str) -> tuple[Any, MoAHistoryHandler, Any]:
    history = MoAHistoryHandler()
    observer: Any = None
    callbacks: list[Any] = [history]
    if observe == "handler":
        observer = ChatRuns()
        callbacks.append(observer)
    config = {"callbacks": callbacks}
    moa = pipeline(client)

    def call() -> Any:
        if mode == "sync":
            return moa.invoke("what is 2+2?", config)
        return asyncio.run(moa.ainvoke("what is 2+2?", config))

    if observe == "collect_runs":
        with collect_runs() as observer:
            out = call()
    else:
        out = call()
    return out, history, observer


def llm_run_names(run: Any) -> list[str]:
    names = [run.name] if run.run_type == "llm" else []
    for child in run.child_runs:
        names.extend(llm_run_names(child))
    return names


EXPECTED_RUNS = sorted(
    ["Propose[0] m0", "Propose[1] m1", "Propose[2] m2", "Synthesize[0] s0"]
    + ["Synthesize[1] s1", "Aggregate[0] agg"]
)


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("observe", ["handler", "collect_runs"])
def test_an_observer_sees_every_call_and_the_history_is_the_same(observe, mode) -> None:
    plain_client, observed_client = Client(), Client()
    plain, plain_history, _ = run_with(plain_client, "nobody", mode)
    observed, observed_history, observer = run_with(observed_client, observe, mode)
    if observe == "handler":
        assert sorted(observer.names) == EXPECTED_RUNS
    else:
        [root] = observer.traced_runs
        assert sorted(llm_run_names(root)) == EXPECTED_RUNS
    assert plain.text == observed.text
    assert plain.usage_metadata == observed.usage_metadata
    assert plain.response_metadata["model_name"] == observed.response_metadata["model_name"]
    assert plain.id.startswith("lc_run--") and observed.id.startswith("lc_run--")
    assert records(plain_history) == records(observed_history)
    assert len(plain_history.calls) == 6
    # observed sync calls run on pool threads, in any order
    assert sorted(map(repr, plain_client.calls)) == sorted(map(repr, observed_client.calls))


def test_usage_callback_counts_every_client_call() -> None:
    client = Client()
    with get_usage_metadata_callback() as usage:
        pipeline(client).invoke("q", {"callbacks": [MoAHistoryHandler()]})
    assert len(client.calls) == 6
    totals = {
        model: (u["input_tokens"], u["output_tokens"]) for model, u in usage.usage_metadata.items()
    }
    assert totals == {
        "m0": (11, 4),
        "m1": (11, 4),
        "m2": (11, 4),
        "s0": (11, 4),
        "s1": (11, 4),
        "agg": (11, 4),
    }


async def test_astream_events_shows_every_client_call() -> None:
    client = Client()
    events = [e async for e in pipeline(client).astream_events("q", version="v2")]
    ends = [e["name"] for e in events if e["event"] == "on_chat_model_end"]
    assert sorted(ends) == EXPECTED_RUNS


def test_a_subclass_keeps_the_langchain_run() -> None:
    """A subclass may change what a call does (here: its _agenerate), so its calls are
    LangChain runs even when nobody observes them."""
    from langchain_core.outputs import ChatResult

    from langchain_moa import ClientChatModel

    class Shouting(ClientChatModel):
        async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:  # type: ignore[no-untyped-def]
            result = await super()._agenerate(messages, stop, run_manager, **kwargs)
            message = result.generations[0].message
            message.content = message.content.upper()
            return result

    client = Client()
    history = MoAHistoryHandler()
    agent = Shouting(client=client, model="m")
    out = asyncio.run(Propose([agent, agent]).ainvoke("q", {"callbacks": [history]}))
    assert out.texts == ["M ON 'Q'", "M ON 'Q'"]
    assert [c.output for c in history.calls] == ["M ON 'Q'", "M ON 'Q'"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_rate_limiter_keeps_the_langchain_run(mode) -> None:
    """LangChain applies a chat model's rate_limiter in its run: every call still
    acquires it."""
    from langchain_core.rate_limiters import BaseRateLimiter

    from langchain_moa import ClientChatModel

    class Counting(BaseRateLimiter):
        def __init__(self) -> None:
            self.acquired = 0

        def acquire(self, *, blocking: bool = True) -> bool:
            self.acquired += 1
            return True

        async def aacquire(self, *, blocking: bool = True) -> bool:
            self.acquired += 1
            return True

    limiter = Counting()
    agent = ClientChatModel(client=Client(), model="m", rate_limiter=limiter)
    step = Propose([agent] * 3)
    config = {"callbacks": [MoAHistoryHandler()]}
    out = step.invoke("q", config) if mode == "sync" else asyncio.run(step.ainvoke("q", config))
    assert len(out.candidates) == 3
    assert limiter.acquired == 3
