"""MajorityVote and AdaptiveMajorityVote (self-consistency, Adaptive-Consistency) and
the answer extractors, on scripted fake models."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.embeddings import Embeddings
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser

from langchain_moa import (
    AdaptiveMajorityVote,
    AggregatorError,
    ChoiceAnswer,
    ConfigurationError,
    JsonFieldAnswer,
    MajorityVote,
    MoAHistoryHandler,
    NumberAnswer,
    Propose,
    RegexAnswer,
)
from langchain_moa.steps._consensus import beta_confidence, tally
from tests.unit_tests.moa_fakes import chat

# -- extractors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so 1,000 apples.\nAnswer: 1,000", "1000"),
        ("12.50", "12.5"),
        ("it costs $12.00 in total", "12"),
        ("#### 72", "72"),
        ("First 3, then 4. The answer is 18 dollars. Check: 2 + 16", "18"),
        ("Answer: 5\n\nWait, recompute. Answer: 7", "7"),
        ("\\boxed{1{,}234}", "1234"),
        ("\\boxed{\\frac{3}{4}}", "0.75"),
        ("x = -4", "-4"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_number_answer(text, expected):
    assert NumberAnswer()(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("(C) Paris", "C"),
        ("B. Lyon", "B"),
        ("**D**", "D"),
        ("Reasoning... The answer is (D).", "D"),
        ("Answer: b", "B"),
        ("I would say Answer: A, no wait, Answer: C", "C"),
        ("\\boxed{A}", "A"),
        ("A cat sat on the mat", None),
        ("I think so", None),
        ("Answer: E", None),
    ],
)
def test_choice_answer(text, expected):
    assert ChoiceAnswer()(text) == expected


def test_choice_answer_other_letters_and_bad_choices():
    assert ChoiceAnswer("ABCDE")("Answer: E") == "E"
    for bad in ["A", "AAB", "A1", "", 3]:
        with pytest.raises(ConfigurationError, match="choices"):
            ChoiceAnswer(bad)


def test_regex_answer_last_match_group_and_casefold():
    extract = RegexAnswer(r"capital is (\w+)")
    assert extract("the capital is Lyon... no, the capital is PARIS") == "paris"
    assert RegexAnswer(r"is:(.*)$")("answer is:  New   York ") == "new york"
    assert RegexAnswer(r"capital is (\w+)", casefold=False)("capital is Paris") == "Paris"
    assert RegexAnswer(r"\d+")("a 12 b 34") == "34"
    assert extract("nothing") is None
    with pytest.raises(ConfigurationError, match="pattern"):
        RegexAnswer("(unclosed")
    with pytest.raises(ConfigurationError, match="group"):
        RegexAnswer(r"(a)", group=2)


def test_json_field_answer():
    extract = JsonFieldAnswer("result.answer")
    assert extract('Here: {"result": {"answer": " Paris "}} done') == "Paris"
    assert extract('{"result": {"answer": 12.50}}') == "12.5"
    assert extract('{"result": {"answer": [2, 1]}}') == "[2, 1]"
    assert extract('{"result": {}}') is None
    assert extract("no json") is None
    with pytest.raises(ConfigurationError, match="field"):
        JsonFieldAnswer("a..b")


def test_tally_tie_rule_is_earliest_first_supporter():
    result = tally(["7", None, "12", "7", "12"])
    assert result.winner == "7" and result.supporters == (0, 3)
    assert result.votes == {"7": 2, "12": 2}
    assert result.shares() == {"7": 0.4, "12": 0.4}
    assert tally([None, None]).winner is None


# -- MajorityVote --------------------------------------------------------------------


def proposers(*texts):
    return [chat(t, name=f"p{i}") for i, t in enumerate(texts)]


def test_majority_vote_returns_most_frequent_answer_with_metadata_and_no_call():
    history = MoAHistoryHandler()
    moa = (
        Propose(proposers("x = 3. Answer: 12", "Answer: 7", "so 12.00", "nothing")) | MajorityVote()
    )
    out = moa.invoke("q", config={"callbacks": [history]})
    assert isinstance(out, AIMessage)
    assert out.content == "x = 3. Answer: 12"  # the first supporter, verbatim
    meta = out.response_metadata["moa"]
    assert meta["answer"] == "12"
    assert meta["votes"] == {"12": 2, "7": 1}
    assert meta["shares"] == {"12": 0.5, "7": 0.25}
    assert meta["supporters"] == [0, 2] and meta["abstained"] == [3]
    assert meta["chosen"] == 0 and meta["calls"] == 4
    assert [p["model"] for p in meta["provenance"]] == ["p0", "p2"]
    assert [p["call_index"] for p in meta["provenance"]] == [0, 2]
    assert out.response_metadata["model_name"] == "p0"
    # usage sums the run (4 proposer calls; the vote made none)
    assert out.usage_metadata["input_tokens"] == 40
    assert [s.step for s in history.steps] == ["Propose", "MajorityVote"]
    assert history.steps[1].calls == []
    assert history.steps[1].outputs == [out.content]


def test_majority_vote_output_answer_and_str_parser():
    moa = Propose(proposers("Answer: 1,000", "1000.0", "5")) | MajorityVote(output="answer")
    assert (moa | StrOutputParser()).invoke("q") == "1000"


def test_majority_vote_tie_goes_to_the_earliest_candidate():
    out = (
        Propose(proposers("Answer: 5", "Answer: 9", "Answer: 9", "Answer: 5")) | MajorityVote()
    ).invoke("q")
    assert out.response_metadata["moa"]["answer"] == "5"
    assert out.response_metadata["moa"]["chosen"] == 0


def test_majority_vote_choice_and_callable_extractors():
    moa = Propose(proposers("B", "(C) because", "The answer is C.")) | MajorityVote("choice")
    assert moa.invoke("q").response_metadata["moa"]["answer"] == "C"
    moa = Propose(proposers("yes!", "No.", "YES")) | MajorityVote(lambda t: t.strip(" !.").lower())
    assert moa.invoke("q").content == "yes!"


def test_majority_vote_no_extractable_answer_raises():
    with pytest.raises(AggregatorError, match="no answer could be extracted"):
        (Propose(proposers("none", "nothing")) | MajorityVote()).invoke("q")


def test_majority_vote_equivalence_judge_groups_free_text():
    judge = chat('{"groups": [[1, 3], [2]]}', name="judge", input_tokens=50, output_tokens=9)
    history = MoAHistoryHandler()
    moa = Propose(proposers("Paris", "Lyon", "It is Paris.")) | MajorityVote(judge=judge)
    out = moa.invoke("q", config={"callbacks": [history]})
    assert out.content == "Paris"
    assert out.response_metadata["moa"]["supporters"] == [0, 2]
    assert out.response_metadata["moa"]["mode"] == "judge"
    # the judge saw every candidate and its call is in the history and the usage
    [call] = history.steps[1].calls
    assert call.model == "judge" and "It is Paris." in call.messages[0]["content"]
    assert out.usage_metadata["input_tokens"] == 3 * 10 + 50


def test_majority_vote_judge_failure_raises_and_is_recorded():
    judge = chat("I think they mostly agree", name="judge")
    history = MoAHistoryHandler()
    with pytest.raises(AggregatorError):
        (Propose(proposers("a", "b")) | MajorityVote(judge=judge)).invoke(
            "q", config={"callbacks": [history]}
        )
    assert history.steps[-1].step == "MajorityVote" and history.steps[-1].error


class WordEmbeddings(Embeddings):
    """Bag-of-first-word vectors: texts sharing their first word are identical."""

    def _vec(self, text: str) -> list[float]:
        word = text.split()[0].lower().strip(".,")
        return [1.0 if word == w else 0.0 for w in ("paris", "lyon", "nice")]

    def embed_documents(self, texts):
        return [self._vec(t) for t in texts]

    def embed_query(self, text):
        return self._vec(text)


def test_majority_vote_embedding_clusters():
    moa = Propose(proposers("Lyon.", "Paris is it", "paris, surely", "Nice")) | MajorityVote(
        embeddings=WordEmbeddings(), similarity=0.99
    )
    out = moa.invoke("q")
    assert out.content == "Paris is it"
    assert out.response_metadata["moa"]["supporters"] == [1, 2]
    assert asyncio.run(moa.ainvoke("q")).content == "Paris is it"


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"extract": "letters"}, "extract"),
        ({"extract": 3}, "extract"),
        ({"extract": NumberAnswer}, "extract"),
        ({"output": "text"}, "output"),
        ({"similarity": 0, "embeddings": WordEmbeddings()}, "similarity"),
        ({"embeddings": object()}, "embeddings"),
        ({"extract": "number", "judge": "openai/gpt-4o-mini"}, "extract and judge"),
        ({"temperature": 3}, "temperature"),
    ],
)
def test_majority_vote_rejects_bad_parameters_at_construction(kwargs, name):
    with pytest.raises(ConfigurationError, match=name):
        MajorityVote(**kwargs)


def test_majority_vote_async_batch_stream():
    moa = Propose(proposers("Answer: 3", "Answer: 3", "Answer: 4")) | MajorityVote()
    assert asyncio.run(moa.ainvoke("q")).content == "Answer: 3"
    assert [m.content for m in moa.batch(["q1", "q2"])] == ["Answer: 3", "Answer: 3"]
    assert "".join(c.content for c in moa.stream("q")) == "Answer: 3"


# -- AdaptiveMajorityVote --------------------------------------------------------------


def test_adaptive_stops_after_two_agreeing_samples():
    model = chat("Answer: 4", "Answer: 4", "Answer: 5")
    history = MoAHistoryHandler()
    out = AdaptiveMajorityVote(model).invoke("q", config={"callbacks": [history]})
    assert out.content == "Answer: 4"
    meta = out.response_metadata["moa"]
    assert meta["samples"] == 2 and meta["stopped"] == "threshold" and meta["calls"] == 2
    assert len(model.calls) == 2
    assert len(history.steps[0].calls) == 2
    assert model.kwargs(0)["temperature"] == 0.7


def test_adaptive_draws_more_on_disagreement_and_stops_at_max_samples():
    model = chat("Answer: 4", "Answer: 5", "Answer: 5", "Answer: 6", "Answer: 6", "Answer: 9")
    out = AdaptiveMajorityVote(model, max_samples=5).invoke("q")
    meta = out.response_metadata["moa"]
    assert meta["samples"] == 5 and meta["stopped"] == "max_samples"
    assert meta["answer"] == "5"  # 5 and 6 tie at 2; 5's first supporter is earlier
    assert len(model.calls) == 5


def test_adaptive_stops_when_leader_cannot_be_overtaken():
    # threshold 1.0 never fires early; 3 votes vs 0 with 2 samples left is settled
    model = chat("Answer: 8")
    out = AdaptiveMajorityVote(
        model, max_samples=5, min_samples=3, threshold=1.0, criterion="beta"
    ).invoke("q")
    assert out.response_metadata["moa"]["stopped"] == "unbeatable"
    assert len(model.calls) == 3


def test_adaptive_beta_criterion_follows_the_paper_formula():
    assert beta_confidence(2, 0) == pytest.approx(0.875)
    assert beta_confidence(4, 0) == pytest.approx(1 - 1 / 32)
    assert beta_confidence(3, 3) == pytest.approx(0.5)
    step = AdaptiveMajorityVote(chat("x"), max_samples=40, criterion="beta", threshold=0.95)
    assert step.stop_reason(tally(["1"] * 4), 4) == "threshold"
    assert step.stop_reason(tally(["1"] * 3), 3) is None


def test_adaptive_counts_existing_candidates_and_round_size():
    sampler = chat("Answer: 2", "Answer: 2", "Answer: 2")
    moa = Propose(proposers("Answer: 1", "Answer: 2")) | AdaptiveMajorityVote(
        sampler, max_samples=6, round_size=2
    )
    out = moa.invoke("q")
    meta = out.response_metadata["moa"]
    # 2 drawn by Propose (split), then one round of 2: 3 of 4 say 2 (share 0.75 >= 0.7)
    assert meta["samples"] == 4 and meta["rounds"] == 1 and len(sampler.calls) == 2
    assert meta["answer"] == "2" and meta["calls"] == 4
    assert meta["supporters"] == [1, 2, 3]
    assert [p["step"] for p in meta["provenance"]] == [
        "Propose",
        "AdaptiveMajorityVote",
        "AdaptiveMajorityVote",
    ]


def test_adaptive_failed_calls_count_and_are_recorded():
    model = chat(RuntimeError("boom"), "Answer: 3", "Answer: 3")
    history = MoAHistoryHandler()
    out = AdaptiveMajorityVote(model, max_samples=4).invoke("q", config={"callbacks": [history]})
    calls = history.steps[0].calls
    assert [c.ok for c in calls] == [False, True, True]
    assert out.response_metadata["moa"]["failed_calls"] == 1
    assert out.response_metadata["moa"]["samples"] == 3


def test_adaptive_all_failed_raises():
    model = chat(RuntimeError("down"))
    with pytest.raises(AggregatorError, match="none of 3 sample"):
        AdaptiveMajorityVote(model, max_samples=3).invoke("q")


def test_adaptive_async():
    model = chat("Answer: 4", "Answer: 4")
    out = asyncio.run(AdaptiveMajorityVote(model).ainvoke("q"))
    assert out.response_metadata["moa"]["samples"] == 2


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_samples": 0}, "max_samples"),
        ({"min_samples": 6}, "min_samples"),
        ({"round_size": 0}, "round_size"),
        ({"criterion": "bayes"}, "criterion"),
        ({"threshold": 1.5}, "threshold"),
        ({"extract": "words"}, "extract"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_adaptive_rejects_bad_parameters(kwargs, name):
    with pytest.raises(ConfigurationError, match=name):
        AdaptiveMajorityVote(chat("x"), **kwargs)


def test_no_answer_first_returns_the_first_candidate_marked():
    moa = Propose(proposers("CRDTs merge without coordination.", "They converge.")) | MajorityVote(
        no_answer="first"
    )
    out = moa.invoke("Explain CRDTs")
    meta = out.response_metadata["moa"]
    assert out.content == "CRDTs merge without coordination."
    assert meta["no_answer"] is True and meta["answer"] is None and meta["chosen"] == 0
    assert meta["abstained"] == [0, 1] and meta["provenance"][0]["index"] == 0


def test_adaptive_no_answer_first_stops_after_min_samples():
    model = chat("CRDTs converge.", "They merge.", "Answer: 3")
    out = AdaptiveMajorityVote(model, max_samples=5, no_answer="first").invoke("Explain CRDTs")
    meta = out.response_metadata["moa"]
    assert meta["stopped"] == "no_answer" and meta["samples"] == 2 and len(model.calls) == 2
    assert out.content == "CRDTs converge." and meta["no_answer"] is True
    # every call failed: nothing to return, it raises
    with pytest.raises(AggregatorError):
        AdaptiveMajorityVote(chat(RuntimeError("x")), max_samples=2, no_answer="first").invoke("q")
    with pytest.raises(ConfigurationError, match="no_answer"):
        MajorityVote(no_answer="ignore")
