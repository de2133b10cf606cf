"""Prompts of the MoA steps and how they are placed in the conversation.

The aggregate-and-synthesize prompt follows Wang et al. 2024 (arXiv 2406.04692,
Table 1): a *system* message placed before the user's turns (appended to an
existing system message) that asks the model to synthesize the numbered
"Responses from models" into one answer, evaluating them critically instead of
copying them. No prompt is ever passed through ``str.format``, so user prompts
with literal braces are safe.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

AGGREGATE_PROMPT = (
    "You are given several responses that different models wrote to the user's latest "
    "query. Synthesize them into one single, high-quality response. Evaluate the "
    "information in them critically: some of it may be biased or incorrect. Do not "
    "simply replicate the given answers; offer a refined, accurate and comprehensive "
    "reply to the instruction, well-structured and coherent, held to the highest "
    "standards of accuracy and reliability."
)

REFINE_PROMPT = (
    "Below is a draft response to the user's latest query. Improve it: correct any "
    "mistakes, fill in what is missing and make it clearer. Reply with the improved "
    "response only, without commentary about the changes."
)

RANK_PROMPT = (
    "You are given several candidate responses to the user's latest query. Judge them "
    "on correctness, helpfulness and clarity, and rank them from best to worst."
)

VOTE_PROMPT = (
    "You are given several candidate responses to the user's latest query. Select the "
    "response that is most consistent with the others, i.e. the consensus answer "
    "(universal self-consistency)."
)

JSON_RANK_INSTRUCTION = (
    'Answer with a JSON object only, of the form {"ranking": [...]}: a list of the '
    "response numbers from best to worst, each number once."
)

JSON_VOTE_INSTRUCTION = (
    'Answer with a JSON object only, of the form {"choice": n}: n is the number of the '
    "consensus response."
)


def numbered(texts: Sequence[str], heading: str = "Responses from models:") -> str:
    """``heading`` followed by the texts as a numbered list (1-based)."""
    return heading + "".join(f"\n\n{i}. {t}" for i, t in enumerate(texts, 1))


def with_system(messages: Sequence[BaseMessage], text: str) -> list[BaseMessage]:
    """Put ``text`` in a system message before the user's turns.

    An existing leading system message keeps its content and gets ``text`` appended
    after a blank line; otherwise a new system message is inserted first. The other
    messages are passed through unchanged.
    """
    msgs = list(messages)
    if msgs and isinstance(msgs[0], SystemMessage) and isinstance(msgs[0].content, str):
        first = msgs[0]
        merged = f"{first.content}\n\n{text}" if first.content else text
        return [first.model_copy(update={"content": merged}), *msgs[1:]]
    return [SystemMessage(content=text), *msgs]


def reference_messages(
    messages: Sequence[BaseMessage], instruction: str, references: Sequence[str]
) -> list[BaseMessage]:
    """The conversation with ``instruction`` + numbered ``references`` as system prompt."""
    return with_system(messages, f"{instruction}\n\n{numbered(references)}")


def judge_messages(
    messages: Sequence[BaseMessage], instruction: str, candidates: Sequence[str], json_hint: str
) -> list[BaseMessage]:
    """Messages for Rank / Vote: the candidates in the system prompt, the question last.

    The conversation is kept; a final user turn asks for the judgement so that chat
    models that only answer the last user message still see the request.
    """
    system = f"{instruction}\n\n{numbered(candidates, 'Candidate responses:')}"
    return [*with_system(messages, system), HumanMessage(content=json_hint)]
