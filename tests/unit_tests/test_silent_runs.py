"""A step run no handler reads chain events of is silent: nothing is dispatched for
its start and end, yet it keeps its run id (the history's ``run_id``, a caller's
``config["run_id"]``), parents its model calls' runs, and carries tags and
metadata to them, exactly as a dispatched run would. Any handler that reads chain
events gets every step's start and end as before."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler

from langchain_moa import Aggregate, MoAHistoryHandler, Propose
from langchain_moa.errors import LayerFailedError
from langchain_moa.testing import chat


class ModelRuns(BaseCallbackHandler):
    """Reads chat-model starts only (``ignore_chain``): sees each call's parent run."""

    ignore_chain: bool = True

    def __init__(self) -> None:
        self.parents: list[str] = []
        self.tags: list[list[str]] = []
        self.metadata: list[dict[str, Any]] = []

    def on_chat_model_start(
        self,
        serialized,
        messages,
        *,
        run_id,
        parent_run_id=None,
        tags=None,
        metadata=None,
        **kwargs,
    ):  # type: ignore[no-untyped-def]
        self.parents.append(str(parent_run_id))
        self.tags.append(list(tags or []))
        self.metadata.append(dict(metadata or {}))


class ChainRuns(BaseCallbackHandler):
    """Reads chain events: every step's start and end."""

    def __init__(self) -> None:
        self.started: dict[str, str] = {}
        self.ended: set[str] = set()
        self.errors: set[str] = set()

    def on_chain_start(self, serialized, inputs, *, run_id, **kwargs):  # type: ignore[no-untyped-def]
        self.started[str(run_id)] = kwargs.get("name")

    def on_chain_end(self, outputs, *, run_id, **kwargs):  # type: ignore[no-untyped-def]
        self.ended.add(str(run_id))

    def on_chain_error(self, error, *, run_id, **kwargs):  # type: ignore[no-untyped-def]
        self.errors.add(str(run_id))


def pipeline() -> Any:
    return Propose([chat("a", name="p0"), chat("b", name="p1")]) | Aggregate(chat("c", name="agg"))


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_silent_step_runs_parent_their_calls(mode: str) -> None:
    history, models = MoAHistoryHandler(), ModelRuns()
    config = {"callbacks": [history, models], "tags": ["mine"], "metadata": {"user": "u1"}}
    if mode == "sync":
        answer = pipeline().invoke("q", config)
    else:
        answer = await pipeline().ainvoke("q", config)
    assert answer.text == "c"
    step_ids = [s.run_id for s in history.steps]
    assert [s.step for s in history.steps] == ["Propose", "Aggregate"]
    assert len(set(step_ids)) == 2 and all(uuid.UUID(i) for i in step_ids)
    # each call's run is a child of its step's run, with the caller's tags and metadata
    assert sorted(models.parents) == sorted([step_ids[0], step_ids[0], step_ids[1]])
    assert all("mine" in tags for tags in models.tags)
    assert all(meta.get("user") == "u1" for meta in models.metadata)


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_silent_step_run_keeps_the_callers_run_id(mode: str) -> None:
    history = MoAHistoryHandler()
    run_id = uuid.uuid4()
    step = Propose([chat("a"), chat("b")])
    config = {"callbacks": [history], "run_id": run_id}
    state = step.invoke("q", config) if mode == "sync" else await step.ainvoke("q", config)
    assert state.texts == ["a", "b"]
    assert [s.run_id for s in history.steps] == [str(run_id)]


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_chain_handler_sees_every_step_run(mode: str) -> None:
    history, chains = MoAHistoryHandler(), ChainRuns()
    config = {"callbacks": [history, chains]}
    if mode == "sync":
        pipeline().invoke("q", config)
    else:
        await pipeline().ainvoke("q", config)
    steps = {s.run_id: s.step for s in history.steps}
    # the history's run ids are the dispatched step runs, each started and ended
    assert {run: chains.started[run] for run in steps} == steps
    assert set(steps) <= chains.ended


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_failed_silent_step_is_recorded(mode: str) -> None:
    history, chains = MoAHistoryHandler(), ChainRuns()
    step = Propose([chat(RuntimeError("down")), chat(RuntimeError("down"))])
    for callbacks in ([history], [chains]):
        with pytest.raises(LayerFailedError):
            if mode == "sync":
                step.invoke("q", {"callbacks": callbacks})
            else:
                await step.ainvoke("q", {"callbacks": callbacks})
    [record] = history.steps
    assert record.error and record.error.startswith("LayerFailedError")
    assert len(record.calls) == 2 and all(c.error for c in record.calls)
    assert len(chains.errors) == 1  # a watching handler still gets the step's error


async def test_silent_step_is_the_config_context_of_what_it_calls() -> None:
    # code a call runs (here a client function) sees the step's run as its parent
    # through ensure_config(), and the caller's own context is back after the step
    from langchain_core.runnables.config import ensure_config, var_child_runnable_config

    seen: list[str] = []

    async def client(model: str, messages: list, temp: float, max_tokens: int) -> tuple:
        seen.append(str(ensure_config()["callbacks"].parent_run_id))
        return ("answer " + model, 3, 2)

    history = MoAHistoryHandler()
    step = Propose(["solo"], client=client)  # one call: made in the step's own task
    before = var_child_runnable_config.get()
    state = await step.ainvoke("q", {"callbacks": [history]})
    assert state.texts == ["answer solo"]
    assert seen == [history.steps[0].run_id]
    assert var_child_runnable_config.get() is before
