"""Two real providers: two llama.cpp servers with the bundled model (issue 4).

Two independent ``llama-server`` processes serve the local 0.5B model as two
deployments of one router. One is stopped while a batch is running; every request
of the batch must still get an answer (the in-flight ones and those that would have
gone to the stopped server fall over to the other one).

Kept small on purpose: generation is ~40 tokens/s on 2 shared cores, so the batch
has 10 requests of at most 8 tokens.
"""

from __future__ import annotations

import threading
import time

import pytest
from langchain_core.messages import AIMessage

from langchain_moa.router import Deployment, ProviderRouter

pytestmark = pytest.mark.local_model

N_REQUESTS = 10
MAX_TOKENS = 8


def _deployment(server, name: str) -> Deployment:
    alias = getattr(server, "model_alias", None) or "local"
    return Deployment(
        model=f"llamacpp/{alias}",
        base_url=server.base_url,
        name=name,
        timeout=60.0,
        # one request at a time per deployment, so the batch spreads over both servers
        # and one is certainly busy when it is stopped
        max_concurrency=1,
        model_kwargs={"max_tokens": MAX_TOKENS, "temperature": 0.0},
    )


def _successes(router: ProviderRouter, name: str) -> int:
    stats = router.stats()
    entry = stats.get("deployments", stats).get(name) if isinstance(stats, dict) else None
    if entry is None:
        raise AssertionError(f"no stats for {name!r}: {stats!r}")
    return int(entry["successes"])


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_stopping_one_server_mid_batch_loses_no_request(local_server, local_server_factory, how):
    """``stop``: SIGTERM (llama-server stops; a request in flight there fails and is re-routed);
    ``kill``: SIGKILL while a request is in flight on it (a crash: that request's
    connection is reset and it must be answered by the other server)."""
    doomed = local_server_factory(n_threads=1)  # 2 shared cores: do not oversubscribe
    router = ProviderRouter(
        deployments=[_deployment(doomed, "doomed"), _deployment(local_server, "survivor")],
        strategy="least-busy",
        deadline=300.0,
    )
    prompts = [f"Reply with the number {i} and nothing else." for i in range(N_REQUESTS)]
    stopped_at: dict[str, float] = {}
    done = threading.Event()

    def stop_when_busy() -> None:
        # stop once the doomed server has answered a request of the batch and is
        # busy with the next one
        while not done.is_set():
            stats = router.stats()["doomed"]
            if stats["successes"] >= 1 and stats["in_flight"] >= 1:
                stopped_at["answered"] = _successes(router, "doomed") + _successes(
                    router, "survivor"
                )
                doomed.kill() if how == "kill" else doomed.stop()
                stopped_at["t"] = time.monotonic()
                return
            time.sleep(0.01)

    stopper = threading.Thread(target=stop_when_busy, daemon=True)
    stopper.start()
    t0 = time.monotonic()
    try:
        replies = router.batch(prompts, config={"max_concurrency": 4})
    finally:
        done.set()
        stopper.join(30)
    t_end = time.monotonic()

    assert "t" in stopped_at, "the doomed server never answered; the test did not test"
    # the stop really happened mid-batch: requests were still unanswered
    assert stopped_at["answered"] < N_REQUESTS - 1, stopped_at
    # no request lost: one non-empty answer per prompt
    assert len(replies) == N_REQUESTS
    for reply in replies:
        assert isinstance(reply, AIMessage), reply
        assert isinstance(reply.content, str) and reply.content.strip()
        assert reply.usage_metadata and reply.usage_metadata["output_tokens"] <= MAX_TOKENS
    served_doomed = _successes(router, "doomed")
    served_survivor = _successes(router, "survivor")
    assert served_doomed >= 1 and served_survivor >= 1
    assert served_doomed + served_survivor == N_REQUESTS
    doomed_stats = router.stats()["doomed"]
    if how == "kill":  # the request in flight at the crash failed there and was re-routed
        assert doomed_stats["failures"] >= 1, doomed_stats
    print(
        f"\n[two llama.cpp, {how}] doomed served {served_doomed}, survivor {served_survivor}, "
        f"stop at {stopped_at['t'] - t0:.1f} s of {t_end - t0:.1f} s after "
        f"{stopped_at['answered']} answers; "
        f"stats: {router.stats()}"
    )
