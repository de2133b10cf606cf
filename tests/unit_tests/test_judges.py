"""Rank and Vote: structured output (native tool calling and the JSON fallback),
never digits scraped from prose; failures raise and are recorded."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_moa import (
    AggregatorError,
    ConfigurationError,
    MoAHistoryHandler,
    Propose,
    Rank,
    Vote,
)
from langchain_moa._prompts import JSON_RANK_INSTRUCTION, JSON_VOTE_INSTRUCTION, RANK_PROMPT
from tests.unit_tests.moa_fakes import ToolJudge, chat


def proposers():
    return [chat("answer A", name="a"), chat("answer B", name="b"), chat("answer C", name="c")]


# -- Vote --------------------------------------------------------------------------


def test_vote_json_reply_returns_the_chosen_candidate_verbatim():
    judge = chat('{"choice": 2}', name="judge", input_tokens=40, output_tokens=5)
    out = (Propose(proposers()) | Vote(judge)).invoke("q")
    assert isinstance(out, AIMessage)
    assert out.content == "answer B"
    assert out.response_metadata["moa"]["chosen"] == 1
    assert out.response_metadata["model_name"] == "judge"
    # usage sums the three proposers (10 in, 2 out each) and the judge
    assert out.usage_metadata == {"input_tokens": 70, "output_tokens": 11, "total_tokens": 81}


def test_vote_accepts_fenced_json():
    judge = chat('```json\n{"choice": 3}\n```')
    assert (Propose(proposers()) | Vote(judge)).invoke("q").content == "answer C"


@pytest.mark.parametrize(
    "reply",
    [
        "I think 2 is best",
        "Response 2 is the consensus.",
        "2",
        '{"pick": 2}',
        '{"choice": "the second"}',
        '{"choice": 2',  # cut off at max_tokens: not a complete JSON object
        "",
    ],
)
def test_vote_never_scrapes_digits_from_prose(reply):
    judge = chat(reply, name="judge")
    with pytest.raises(AggregatorError) as info:
        (Propose(proposers()) | Vote(judge)).invoke("q")
    assert info.value.step == "Vote"
    assert "answer B" not in str(info.value)


@pytest.mark.parametrize("choice", [0, 4, -1])
def test_vote_choice_out_of_range_raises(choice):
    judge = chat(json.dumps({"choice": choice}))
    with pytest.raises(AggregatorError, match="not a response number"):
        (Propose(proposers()) | Vote(judge)).invoke("q")


def test_vote_native_structured_output():
    judge = ToolJudge(model_name="judge", tool_args={"choice": 3})
    history = MoAHistoryHandler()
    out = (Propose(proposers()) | Vote(judge)).invoke("q", config={"callbacks": [history]})
    # the judgement of a tool-calling reply is visible in the history
    assert history.steps[-1].calls[0].output == '[{"choice": 3}]'
    assert out.content == "answer C"
    assert len(judge.calls) == 1
    tools = judge.kwargs()["tools"]
    assert tools[0]["function"]["name"] == "VoteJudgement"
    assert out.response_metadata["moa"]["calls"] == 4
    # the tool-calling reply's usage is counted
    assert out.usage_metadata["input_tokens"] == 3 * 10 + 7


def test_native_failure_falls_back_to_json_with_both_calls_recorded():
    judge = ToolJudge(
        model_name="judge",
        tool_error=RuntimeError("json_schema not supported"),
        replies=['{"choice": 1}'],
    )
    history = MoAHistoryHandler()
    out = (Propose(proposers()) | Vote(judge)).invoke("q", config={"callbacks": [history]})
    assert out.content == "answer A"
    assert len(judge.calls) == 2
    assert "tools" in judge.kwargs(0) and "tools" not in judge.kwargs(1)
    vote = history.steps[-1]
    assert vote.step == "Vote"
    assert len(vote.calls) == 2
    assert "json_schema not supported" in vote.calls[0].error
    assert vote.calls[1].ok and vote.calls[1].output == '{"choice": 1}'
    assert out.response_metadata["moa"]["calls"] == 5
    assert out.response_metadata["moa"]["failed_calls"] == 1


async def test_native_failure_falls_back_to_json_async():
    judge = ToolJudge(tool_error=RuntimeError("no tools"), replies=['{"choice": 2}'])
    out = await (Propose(proposers()) | Vote(judge)).ainvoke("q")
    assert out.content == "answer B"
    assert len(judge.calls) == 2


def test_after_a_native_failure_the_agent_goes_straight_to_json():
    judge = ToolJudge(tool_error=RuntimeError("no tools"), replies=['{"choice": 2}'])
    moa = Propose(proposers()) | Vote(judge)
    moa.invoke("q")
    moa.invoke("q")
    assert ["tools" in c["kwargs"] for c in judge.calls] == [True, False, False]


def test_native_reply_with_invalid_arguments_falls_back_to_json():
    """A tool call whose arguments do not validate is a failed native call."""
    judge = ToolJudge(tool_args={"choice": "second"}, replies=['{"choice": 2}'])
    history = MoAHistoryHandler()
    out = (Propose(proposers()) | Vote(judge)).invoke("q", config={"callbacks": [history]})
    assert out.content == "answer B"
    calls = history.steps[-1].calls
    assert len(calls) == 2 and calls[0].error and calls[1].ok


def test_native_reply_with_json_text_instead_of_a_tool_call_is_accepted():
    class TextJudge(ToolJudge):
        def _next(self, messages, kwargs):
            kwargs = {k: v for k, v in kwargs.items() if k != "tools"}
            return ScriptedChatNext(self, messages, kwargs)

    from tests.unit_tests.moa_fakes import ScriptedChat

    def ScriptedChatNext(self, messages, kwargs):  # noqa: N802
        return ScriptedChat._next(self, messages, kwargs)

    judge = TextJudge(replies=['{"choice": 3}'])
    assert (Propose(proposers()) | Vote(judge)).invoke("q").content == "answer C"
    assert len(judge.calls) == 1


def test_structured_json_never_binds_tools():
    judge = ToolJudge(tool_args={"choice": 3}, replies=['{"choice": 1}'])
    out = (Propose(proposers()) | Vote(judge, structured="json")).invoke("q")
    assert out.content == "answer A"
    assert "tools" not in judge.kwargs()


def test_structured_native_without_support_raises():
    with pytest.raises(AggregatorError, match="structured='native'"):
        (Propose(proposers()) | Vote(chat('{"choice": 1}'), structured="native")).invoke("q")


def test_structured_native_does_not_fall_back():
    judge = ToolJudge(tool_error=RuntimeError("no tools"), replies=['{"choice": 1}'])
    with pytest.raises(AggregatorError, match="no tools"):
        (Propose(proposers()) | Vote(judge, structured="native")).invoke("q")
    assert len(judge.calls) == 1


def test_bad_structured_option_raises():
    with pytest.raises(ConfigurationError, match="structured must be"):
        Vote(chat("x"), structured="yes")


def test_failed_judge_raises_and_never_returns_a_candidate():
    judge = chat(RuntimeError("judge down"), name="judge")
    with pytest.raises(AggregatorError, match="judge down") as info:
        (Propose(proposers()) | Vote(judge)).invoke("q")
    assert info.value.agent == "judge"


def test_vote_without_candidates_raises():
    with pytest.raises(AggregatorError, match="no candidates"):
        Vote(chat('{"choice": 1}')).invoke("q")


def test_judge_messages_put_candidates_in_the_system_prompt_and_ask_last():
    judge = chat('{"ranking": [1, 2, 3]}')
    convo = [SystemMessage("You are terse."), HumanMessage("Which is right?")]
    (Propose(proposers()) | Rank(judge, n=3)).invoke(convo)
    system, user, ask = judge.received()
    assert system.content.startswith("You are terse.\n\n" + RANK_PROMPT)
    assert system.content.endswith(
        "Candidate responses:\n\n1. answer A\n\n2. answer B\n\n3. answer C"
    )
    assert user == HumanMessage("Which is right?")
    assert isinstance(ask, HumanMessage) and ask.content == JSON_RANK_INSTRUCTION


def test_vote_prompt_override_with_braces_and_json_hint_kept():
    judge = chat('{"choice": 1}')
    prompt = "Pick the {most} consistent one."
    (Propose(proposers()) | Vote(judge, prompt=prompt)).invoke("q")
    system, _, ask = judge.received()
    assert system.content.startswith(prompt + "\n\nCandidate responses:")
    assert ask.content == JSON_VOTE_INSTRUCTION


def test_judges_use_temperature_zero_unless_given_and_accept_temp():
    j1, j2 = chat('{"choice": 1}'), chat('{"ranking": [1]}')
    (Propose(proposers()) | Vote(j1)).invoke("q")
    (Propose(proposers()) | Rank(j2, n=1, temp=0.4, max_tokens=64)).invoke("q")
    assert j1.kwargs() == {"temperature": 0.0, "max_tokens": 512}
    assert j2.kwargs() == {"temperature": 0.4, "max_tokens": 64}


def test_vote_in_a_prompt_chain_with_str_output_parser():
    prompt = ChatPromptTemplate.from_messages([("system", "Be exact."), ("human", "{q}")])
    p = chat("forty-two", name="p")
    chain = prompt | Propose([p, chat("42")]) | Vote(chat('{"choice": 1}')) | StrOutputParser()
    assert chain.invoke({"q": "6*7?"}) == "forty-two"
    assert p.received()[0].content == "Be exact."


# -- Rank --------------------------------------------------------------------------


def test_rank_keeps_the_n_best_in_ranked_order_with_provenance():
    judge = chat('{"ranking": [3, 1, 2]}', name="judge")
    state = (Propose(proposers()) | Rank(judge, n=2)).invoke("q")
    assert state.texts == ["answer C", "answer A"]
    assert [c.model for c in state.candidates] == ["c", "a"]
    assert [state.calls[c.call_index].output for c in state.candidates] == state.texts
    assert len(state.calls) == 4 and state.calls[-1].step == "Rank"


def test_rank_native_structured_output():
    judge = ToolJudge(tool_args={"ranking": [2, 3, 1]})
    state = (Propose(proposers()) | Rank(judge, n=1)).invoke("q")
    assert state.texts == ["answer B"]
    assert judge.kwargs()["tools"][0]["function"]["name"] == "RankingJudgement"


def test_rank_with_n_above_count_keeps_all_reordered():
    judge = chat('{"ranking": [2, 1, 3]}')
    state = (Propose(proposers()) | Rank(judge, n=10)).invoke("q")
    assert state.texts == ["answer B", "answer A", "answer C"]


def test_rank_ignores_out_of_range_and_repeated_numbers():
    judge = chat('{"ranking": [7, 2, 2, 0, 1]}')
    assert (Propose(proposers()) | Rank(judge, n=2)).invoke("q").texts == ["answer B", "answer A"]


@pytest.mark.parametrize(
    "reply",
    [
        '{"ranking": [1]}',  # too few for n=2
        '{"ranking": [2, 2]}',  # one distinct
        '{"ranking": [9, 8]}',  # out of range
        "The best is 3, then 1.",
        "[3, 1, 2]",
        '{"ranking": "3, 1"}',
    ],
)
def test_rank_invalid_judgement_raises(reply):
    with pytest.raises(AggregatorError) as info:
        (Propose(proposers()) | Rank(chat(reply), n=2)).invoke("q")
    assert info.value.step == "Rank"


async def test_rank_async():
    judge = chat('{"ranking": [2, 1]}')
    state = await (Propose(proposers()) | Rank(judge, n=1)).ainvoke("q")
    assert state.texts == ["answer B"]


@pytest.mark.parametrize("n", [0, -2, 1.5, None])
def test_rank_n_below_one_raises_naming_n(n):
    with pytest.raises(ConfigurationError, match="n must be an int >= 1"):
        Rank(chat("x"), n=n)


def test_rank_rejects_a_list_of_judges():
    with pytest.raises(ConfigurationError, match="single agent"):
        Rank([chat("x"), chat("y")], n=1)


@pytest.mark.parametrize(
    "transient",
    [
        TimeoutError("request timed out"),
        # the SDK's own errors count too (read from the loaded SDK, see _judges._transient)
        openai.APITimeoutError(request=httpx.Request("POST", "http://127.0.0.1/v1")),
    ],
    ids=["TimeoutError", "openai.APITimeoutError"],
)
def test_a_transient_native_failure_does_not_disable_structured_output_for_good(transient):
    class FlakyOnce(ToolJudge):
        def _next(self, messages, kwargs):
            if "tools" in kwargs and not any("tools" in c["kwargs"] for c in self.calls):
                self.calls.append({"messages": list(messages), "kwargs": dict(kwargs)})
                raise transient
            return super()._next(messages, kwargs)

    judge = FlakyOnce(tool_args={"choice": 2}, replies=['{"choice": 1}'])
    moa = Propose(proposers()) | Vote(judge)
    assert moa.invoke("q").content == "answer A"  # the JSON fallback
    assert moa.invoke("q").content == "answer B"  # native again once the timeout is over
