"""Transforms: Shuffle, Dropout, Sample, Take, Filter, Map — behaviour, seeds,
construction errors, and step classes used where an instance belongs."""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage

from langchain_moa import (
    Aggregate,
    AggregatorError,
    ConfigurationError,
    Dropout,
    Filter,
    LayerFailedError,
    Map,
    MoAState,
    Propose,
    Sample,
    Shuffle,
    Take,
    pipeline,
)
from langchain_moa.types import Candidate
from tests.unit_tests.moa_fakes import chat


def state_of(*texts: str) -> MoAState:
    return MoAState(
        messages=[HumanMessage("q")],
        candidates=[
            Candidate(text=t, model=f"m{i}", step="Propose", layer=1, agent_index=i, call_index=i)
            for i, t in enumerate(texts)
        ],
        layer=1,
    )


TEN = [f"c{i}" for i in range(10)]


# -- Shuffle ---------------------------------------------------------------------


def test_shuffle_is_a_permutation_and_seed_makes_it_reproducible():
    out = Shuffle(seed=7).invoke(state_of(*TEN))
    assert sorted(out.texts) == sorted(TEN)
    assert out.texts != TEN
    assert Shuffle(seed=7).invoke(state_of(*TEN)).texts == out.texts
    # the same step gives the same order on every invocation (fresh RNG per call)
    step = Shuffle(seed=7)
    assert step.invoke(state_of(*TEN)).texts == step.invoke(state_of(*TEN)).texts == out.texts
    assert Shuffle(seed=8).invoke(state_of(*TEN)).texts != out.texts


def test_shuffle_without_seed_varies():
    orders = {tuple(Shuffle().invoke(state_of(*TEN)).texts) for _ in range(5)}
    assert len(orders) > 1


def test_shuffle_keeps_provenance_and_calls():
    state = state_of(*TEN)
    out = Shuffle(seed=1).invoke(state)
    for c in out.candidates:
        assert c.model == f"m{c.agent_index}" and c.text == f"c{c.call_index}"
    assert out.messages == state.messages and out.layer == 1


# -- Dropout ---------------------------------------------------------------------


def test_dropout_drops_some_keeps_order_and_is_reproducible():
    out = Dropout(0.5, seed=3).invoke(state_of(*TEN))
    assert 0 < len(out.texts) < 10
    assert out.texts == [t for t in TEN if t in out.texts]  # order kept
    assert Dropout(0.5, seed=3).invoke(state_of(*TEN)).texts == out.texts


def test_dropout_rate_zero_keeps_everything():
    assert Dropout(0.0, seed=1).invoke(state_of(*TEN)).texts == TEN


def test_dropout_always_keeps_at_least_one():
    for seed in range(20):
        out = Dropout(0.99, seed=seed).invoke(state_of("a", "b", "c"))
        assert len(out.texts) >= 1


@pytest.mark.parametrize("rate", [1, 1.0, -0.1, 1.5, "0.2", None, True])
def test_dropout_rate_outside_range_raises_naming_rate(rate):
    with pytest.raises(ConfigurationError, match=r"rate must be in \[0, 1\)"):
        Dropout(rate)


# -- Sample ----------------------------------------------------------------------


def test_sample_keeps_n_in_original_order_reproducibly():
    out = Sample(3, seed=11).invoke(state_of(*TEN))
    assert len(out.texts) == 3
    assert out.texts == sorted(out.texts, key=TEN.index)
    assert Sample(3, seed=11).invoke(state_of(*TEN)).texts == out.texts
    samples = {tuple(Sample(3, seed=s).invoke(state_of(*TEN)).texts) for s in range(10)}
    assert len(samples) > 1


def test_sample_keeps_all_when_fewer_than_n():
    assert Sample(5, seed=1).invoke(state_of("a", "b")).texts == ["a", "b"]


# -- Take ------------------------------------------------------------------------


def test_take_keeps_the_first_n():
    assert Take(2).invoke(state_of("a", "b", "c")).texts == ["a", "b"]
    assert Take(5).invoke(state_of("a", "b")).texts == ["a", "b"]


@pytest.mark.parametrize("step", [Take, Sample])
@pytest.mark.parametrize("n", [0, -1, 1.5, "2", True])
def test_n_below_one_or_not_int_raises_naming_n(step, n):
    with pytest.raises(ConfigurationError, match="n must be an int >= 1"):
        step(n)


@pytest.mark.parametrize(
    "step",
    [lambda: Shuffle(seed="x"), lambda: Dropout(0.1, seed=1.5), lambda: Sample(2, seed=True)],
)
def test_bad_seed_raises_naming_seed(step):
    with pytest.raises(ConfigurationError, match="seed"):
        step()


# -- Filter / Map ----------------------------------------------------------------


def test_filter_keeps_matching_candidates():
    out = Filter(lambda t: "keep" in t).invoke(state_of("keep 1", "drop", "keep 2"))
    assert out.texts == ["keep 1", "keep 2"]
    assert [c.agent_index for c in out.candidates] == [0, 2]


def test_filter_to_nothing_makes_the_next_llm_step_raise():
    moa = Propose([chat("a"), chat("b")]) | Filter(lambda t: False) | Aggregate(chat("x"))
    with pytest.raises(AggregatorError, match="no candidates"):
        moa.invoke("q")
    moa2 = Propose([chat("a")]) | Filter(lambda t: False) | Take(1)
    assert moa2.invoke("q").candidates == []


def test_map_rewrites_text_and_keeps_provenance():
    out = Map(str.upper).invoke(state_of("a", "b"))
    assert out.texts == ["A", "B"]
    assert [c.model for c in out.candidates] == ["m0", "m1"]
    assert [c.call_index for c in out.candidates] == [0, 1]


def test_map_returning_non_string_raises_type_error():
    with pytest.raises(TypeError, match="must return a str"):
        Map(len).invoke(state_of("abc"))


@pytest.mark.parametrize("step", [Filter, Map])
@pytest.mark.parametrize("fn", [None, "upper", 3, str])
def test_non_callable_fn_raises_naming_fn(step, fn):
    with pytest.raises(ConfigurationError, match="fn must be a function"):
        step(fn)


def test_transforms_in_a_full_pipeline_reach_the_aggregator():
    agg = chat("final")
    moa = (
        Propose([chat("one"), chat("two"), chat("three"), chat("four")])
        | Map(lambda t: t + "!")
        | Filter(lambda t: t != "two!")
        | Take(2)
        | Aggregate(agg)
    )
    assert moa.invoke("q").content == "final"
    assert agg.received()[0].content.endswith("Responses from models:\n\n1. one!\n\n2. three!")


def test_transforms_accept_chat_input_directly():
    out = Take(1).invoke("hello")
    assert isinstance(out, MoAState) and out.candidates == [] and out.messages[0].content == "hello"


# -- step classes where an instance belongs ------------------------------------


def test_class_after_a_step_raises_at_construction():
    with pytest.raises(ConfigurationError, match="Shuffle is a class"):
        Propose([chat("a")]) | Shuffle


def test_class_before_a_step_raises_at_construction():
    with pytest.raises(ConfigurationError, match="Shuffle is a class"):
        Shuffle | Aggregate(chat("a"))


def test_class_in_pipeline_list_raises_naming_the_position():
    with pytest.raises(ConfigurationError, match=r"steps\[1\].*Shuffle is a class"):
        pipeline([Propose([chat("a")]), Shuffle, Aggregate(chat("b"))])


def test_class_after_a_sequence_raises_at_run_time():
    seq = Propose([chat("a")]) | Take(1)
    broken = seq | Shuffle  # RunnableSequence.__or__ wraps the class in a RunnableLambda
    with pytest.raises(ConfigurationError, match="Shuffle was put in a pipeline as a class"):
        broken.invoke("q")


@pytest.mark.parametrize("cls", [Take, Dropout, Sample, Filter, Map])
def test_other_classes_after_a_sequence_raise_at_run_time(cls):
    broken = (Propose([chat("a")]) | Take(1)) | cls
    with pytest.raises(ConfigurationError, match=f"{cls.__name__} was put in a pipeline"):
        broken.invoke("q")


async def test_class_after_a_sequence_raises_at_run_time_async():
    broken = (Propose([chat("a")]) | Take(1)) | Shuffle
    with pytest.raises(ConfigurationError, match="as a class"):
        await broken.ainvoke("q")


@pytest.mark.parametrize("entry", ["Shuffle", 42, None, object()])
def test_non_runnable_entries_in_pipeline_raise(entry):
    with pytest.raises(ConfigurationError, match=r"steps\[1\] is not a step or Runnable"):
        pipeline([Propose([chat("a")]), entry])


def test_empty_pipeline_raises():
    with pytest.raises(ConfigurationError, match="steps must be a non-empty list"):
        pipeline([])


def test_pipeline_equals_pipe_composition():
    a1, a2 = chat("x"), chat("x")
    g1, g2 = chat("done"), chat("done")
    by_list = pipeline([Propose([a1]), Take(1), Aggregate(g1)]).invoke("q")
    by_pipe = (Propose([a2]) | Take(1) | Aggregate(g2)).invoke("q")
    assert by_list.content == by_pipe.content == "done"
    assert g1.received() == g2.received()


def test_transform_layer_failure_type_is_unchanged_by_transforms():
    # a transform never hides an earlier failure: the failed layer raises first
    moa = Propose([chat(RuntimeError("down"))]) | Shuffle(seed=1)
    with pytest.raises(LayerFailedError):
        moa.invoke("q")
