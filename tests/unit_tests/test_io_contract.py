"""The input/output contract: what a pipeline accepts, what reaches the models, and
what comes back (an AIMessage with summed usage, or the typed state with provenance)."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_moa import (
    Aggregate,
    Candidate,
    MoAState,
    Propose,
    Refine,
    Shuffle,
    Synthesize,
)
from langchain_moa._prompts import AGGREGATE_PROMPT
from langchain_moa.pricing import PRICES
from tests.unit_tests.moa_fakes import chat

CONVERSATION = [
    SystemMessage("You are a careful math tutor."),
    HumanMessage("What is 2+2?"),
    AIMessage("4."),
    HumanMessage("And times 3?"),
]


def moa_with(agg=None, props=None):
    props = props or [chat("twelve", name="a"), chat("12", name="b")]
    agg = agg or chat("It is 12.", name="agg")
    return Propose(props) | Aggregate(agg), props, agg


# -- inputs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "And times 3?",
        HumanMessage("And times 3?"),
        [HumanMessage("And times 3?")],
        [("human", "And times 3?")],
        [{"role": "user", "content": "And times 3?"}],
        ChatPromptTemplate.from_messages([("human", "{q}")]).invoke({"q": "And times 3?"}),
        {"messages": [("user", "And times 3?")]},
    ],
    ids=["str", "message", "messages", "tuples", "dicts", "prompt-value", "graph-state"],
)
def test_pipeline_accepts_what_a_chat_model_accepts(value):
    moa, props, agg = moa_with()
    assert moa.invoke(value).content == "It is 12."
    assert props[0].received() == [HumanMessage("And times 3?")]


@pytest.mark.parametrize("value", [42, None, {"question": "x"}])
def test_other_inputs_raise_type_error(value):
    moa, _, _ = moa_with()
    with pytest.raises(TypeError, match="takes a str, a PromptValue, messages"):
        moa.invoke(value)


def test_multi_turn_and_system_message_reach_the_proposers_unchanged():
    moa, props, _ = moa_with()
    moa.invoke(CONVERSATION)
    for p in props:
        assert p.received() == CONVERSATION


def test_aggregate_prompt_is_appended_to_the_existing_system_message():
    moa, _, agg = moa_with()
    moa.invoke(CONVERSATION)
    expected_system = (
        "You are a careful math tutor.\n\n"
        + AGGREGATE_PROMPT
        + "\n\nResponses from models:\n\n1. twelve\n\n2. 12"
    )
    assert agg.received() == [SystemMessage(expected_system), *CONVERSATION[1:]]


def test_aggregate_prompt_is_a_new_system_message_before_the_users_turns():
    moa, _, agg = moa_with()
    turns = CONVERSATION[1:]
    moa.invoke(turns)
    system = SystemMessage(AGGREGATE_PROMPT + "\n\nResponses from models:\n\n1. twelve\n\n2. 12")
    assert agg.received() == [system, *turns]


def test_prompt_template_input_keeps_its_system_message():
    prompt = ChatPromptTemplate.from_messages([("system", "Answer in {lang}."), ("human", "{q}")])
    moa, props, agg = moa_with()
    out = (prompt | moa | StrOutputParser()).invoke({"lang": "French", "q": "2+2?"})
    assert out == "It is 12."
    assert props[0].received() == [SystemMessage("Answer in French."), HumanMessage("2+2?")]
    assert agg.received()[0].content.startswith("Answer in French.\n\n" + AGGREGATE_PROMPT)


async def test_prompt_pipeline_parser_astream_yields_text_tokens():
    prompt = ChatPromptTemplate.from_messages([("human", "{q}")])
    moa, _, _ = moa_with(agg=chat("one two three"))
    chunks = [c async for c in (prompt | moa | StrOutputParser()).astream({"q": "x"})]
    assert all(isinstance(c, str) for c in chunks)
    assert "".join(chunks) == "one two three"
    assert len([c for c in chunks if c.strip()]) == 3


# -- outputs ---------------------------------------------------------------------


def test_final_message_usage_sums_every_call_including_failed_ones():
    props = [
        chat("a", name="a", input_tokens=11, output_tokens=1),
        chat(RuntimeError("down"), name="b"),
        chat("c", name="c", input_tokens=13, output_tokens=3),
    ]
    synth = [chat("s", name="s", input_tokens=17, output_tokens=5)]
    agg = chat("final", name="agg", input_tokens=19, output_tokens=7)
    out = (Propose(props) | Synthesize(synth) | Aggregate(agg)).invoke("q")
    assert out.usage_metadata == {
        "input_tokens": 11 + 13 + 17 + 19,
        "output_tokens": 1 + 3 + 5 + 7,
        "total_tokens": 11 + 13 + 17 + 19 + 1 + 3 + 5 + 7,
    }
    moa = out.response_metadata["moa"]
    assert moa == {"layers": 3, "calls": 5, "failed_calls": 1, "cost_usd": None}


def test_non_final_pipeline_returns_state_with_provenance():
    props = [
        chat("first", name="a", input_tokens=3, output_tokens=1, delay=0.01),
        chat(RuntimeError("down"), name="b"),
        chat("third", name="c", input_tokens=5, output_tokens=2),
    ]
    refiner = chat(lambda msgs: "refined " + msgs[-2].content, name="r", input_tokens=8)
    state = (Propose(props) | Shuffle(seed=2) | Refine([refiner])).invoke("q")
    assert isinstance(state, MoAState)
    assert len(state.calls) == 5  # 3 proposals (one failed) + 2 refinements
    assert all(isinstance(c, Candidate) for c in state.candidates)
    for cand in state.candidates:
        call = state.calls[cand.call_index]
        assert call.output == cand.text
        assert (call.model, call.layer, call.step, call.agent_index) == (
            cand.model,
            cand.layer,
            cand.step,
            cand.agent_index,
        )
        assert (call.input_tokens, call.output_tokens) == (cand.input_tokens, cand.output_tokens)
        assert cand.latency_s == call.latency_s > 0
        assert cand.step == "Refine" and cand.layer == 2 and cand.model == "r"
    assert state.calls[1].error == "RuntimeError: down" and state.calls[1].layer == 1
    assert state.usage()["input_tokens"] == 3 + 5 + 8 + 8


def test_proposer_latency_is_measured_in_seconds():
    state = Propose([chat("slow", delay=0.2)]).invoke("q")
    assert 0.2 <= state.candidates[0].latency_s < 2


def test_cost_with_explicit_prices_in_usd_per_million_tokens():
    props = [chat("a b c", name="cheap", input_tokens=1000)]  # 3 output tokens
    state = Propose(props, prices={"cheap": (2.0, 10.0)}).invoke("q")
    expected = (1000 * 2.0 + 3 * 10.0) / 1_000_000
    assert state.candidates[0].cost_usd == pytest.approx(expected)
    assert state.calls[0].cost_usd == pytest.approx(expected)
    assert state.cost_usd() == pytest.approx(expected)


def test_cost_of_a_known_model_from_the_price_table():
    assert "openai/gpt-4o-mini" in PRICES
    price_in, price_out = PRICES["openai/gpt-4o-mini"]
    props = [chat("x y", name="openai/gpt-4o-mini", input_tokens=500)]
    agg = chat("z", name="openai/gpt-4o-mini", input_tokens=100)
    out = (Propose(props) | Aggregate(agg)).invoke("q")
    expected = (600 * price_in + 3 * price_out) / 1_000_000
    assert out.response_metadata["moa"]["cost_usd"] == pytest.approx(expected)


def test_cost_falls_back_to_the_agent_name_when_the_reported_model_is_unpriced():
    """OpenAI reports dated ids (gpt-4o-mini-2024-07-18) that the table does not list."""
    price_in, price_out = PRICES["openai/gpt-4o-mini"]
    agent = chat(
        "x", name="openai/gpt-4o-mini", response_model="gpt-4o-mini-2024-07-18", input_tokens=1000
    )
    state = Propose([agent]).invoke("q")
    assert state.calls[0].response_model == "gpt-4o-mini-2024-07-18"
    assert state.calls[0].cost_usd == pytest.approx((1000 * price_in + price_out) / 1_000_000)


def test_unknown_model_has_no_cost():
    state = Propose([chat("x", name="who-knows")]).invoke("q")
    assert state.calls[0].cost_usd is None and state.cost_usd() is None


def test_failed_calls_carry_no_output_and_no_cost():
    state = Propose(
        [chat("ok", name="x"), chat(RuntimeError("e"), name="x")], prices={"x": (1.0, 1.0)}
    ).invoke("q")
    failed = state.errors[0]
    assert failed.output is None and failed.cost_usd is None and failed.error
    assert state.calls[0].cost_usd is not None


def test_state_round_trips_through_json():
    state = Propose([chat("a"), chat(RuntimeError("x"))]).invoke(CONVERSATION)
    again = MoAState.model_validate_json(state.model_dump_json())
    assert again.texts == state.texts
    assert again.calls == state.calls
    assert [type(m) for m in again.messages] == [type(m) for m in CONVERSATION]


def test_state_can_be_passed_back_in():
    first = Propose([chat("a"), chat("b")]).invoke("q")
    agg = chat("merged")
    out = Aggregate(agg).invoke(first)
    assert out.content == "merged"
    assert out.response_metadata["moa"]["calls"] == 3


def test_usage_includes_judge_and_refine_calls():
    from langchain_moa import Rank

    props = [chat("a", input_tokens=1, output_tokens=1), chat("b", input_tokens=2, output_tokens=1)]
    judge = chat('{"ranking": [2, 1]}', input_tokens=30, output_tokens=4)
    refiner = chat("b+", input_tokens=50, output_tokens=6)
    agg = chat("end", input_tokens=70, output_tokens=8)
    out = (Propose(props) | Rank(judge, n=1) | Refine([refiner]) | Aggregate(agg)).invoke("q")
    assert out.usage_metadata["input_tokens"] == 1 + 2 + 30 + 50 + 70
    assert out.usage_metadata["output_tokens"] == 1 + 1 + 4 + 6 + 8
    assert out.response_metadata["moa"]["calls"] == 5
    assert agg.received()[0].content.endswith("Responses from models:\n\n1. b+")


def test_langchain_fake_models_with_usage_as_agents():
    from langchain_core.language_models.fake_chat_models import (
        FakeMessagesListChatModel,
        GenericFakeChatModel,
    )

    def reply(text, n_in, n_out):
        return AIMessage(
            content=text,
            usage_metadata={
                "input_tokens": n_in,
                "output_tokens": n_out,
                "total_tokens": n_in + n_out,
            },
        )

    proposer = FakeMessagesListChatModel(responses=[reply("p", 3, 1)])
    other = GenericFakeChatModel(messages=iter([reply("g", 4, 2)]))
    agg = FakeMessagesListChatModel(responses=[reply("final", 5, 3)])
    out = (Propose([proposer, other]) | Aggregate(agg)).invoke("q")
    assert out.content == "final"
    assert out.usage_metadata == {"input_tokens": 12, "output_tokens": 6, "total_tokens": 18}
