"""Answer extractors for majority voting: text -> canonical answer (or ``None``).

An extractor is any callable ``(text: str) -> Hashable | None``; two candidates vote
for the same answer when their extracted values are equal. ``None`` means "no answer
found": the candidate abstains. The built-in ones canonicalise what the same answer
looks like when written differently:

=====================  =================================================================
``NumberAnswer()``     GSM8K style: the last explicit marker (``Answer: <n>``,
                       ``answer is <n>``, ``#### <n>``, ``\\boxed{...}``) wins, else the
                       last number; ``1,000`` -> ``"1000"``, ``12.50`` -> ``"12.5"``,
                       ``12.0`` -> ``"12"``, ``$5`` -> ``"5"``
``ChoiceAnswer()``     a multiple-choice letter (``"ABCD"`` by default): the last
                       ``Answer: X`` / ``answer is (X)`` / ``\\boxed{X}``, else a reply that
                       starts with the letter (``"B"``, ``"(B)"``, ``"B. Paris"``)
``RegexAnswer(p)``     the last match of pattern ``p`` (group 1 if it has groups),
                       whitespace collapsed, case-folded unless ``casefold=False``
``JsonFieldAnswer(f)`` field ``f`` (dotted path, ``"a.b"``) of the first complete JSON
                       object in the text
=====================  =================================================================

``extractor("number")`` / ``extractor("choice")`` name the first two.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Hashable
from decimal import Decimal, InvalidOperation
from typing import Any

from langchain_moa.errors import ConfigurationError

__all__ = [
    "Extractor",
    "NumberAnswer",
    "ChoiceAnswer",
    "RegexAnswer",
    "JsonFieldAnswer",
    "extractor",
]

Extractor = Callable[[str], Hashable | None]
"""``(text) -> canonical answer``, or ``None`` when the text holds no answer."""

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_NUMBER_MARKER = re.compile(
    r"(?:answer(?:\s+is)?\s*[:=]?|####)\s*(?:\*\*)?\s*\\?\(?\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)",
    re.I,
)
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
_FRAC = re.compile(r"^\s*(-?)\\d?frac\{\s*(\d+)\s*\}\{\s*(\d+)\s*\}\s*$")


def _to_decimal(text: str) -> Decimal | None:
    text = text.replace(",", "").strip().rstrip(".")
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def _canonical_number(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


class NumberAnswer:
    """The final number of a reply, canonicalised (GSM8K-style answers).

    Rule: the *last explicit answer marker* wins — ``Answer: <n>`` (also ``answer is
    <n>``, ``#### <n>``) or ``\\boxed{...}`` (its last number, or ``a/b`` for a plain
    ``\\frac{a}{b}``); with no marker, the last number anywhere in the reply. Commas
    are removed and trailing zeros dropped, so ``"1,000"``, ``"1000.00"`` and
    ``"1000"`` all give ``"1000"``. ``None`` when the reply holds no number.
    """

    def __call__(self, text: str) -> str | None:
        if not text:
            return None
        markers: list[tuple[int, Decimal]] = []
        for m in _NUMBER_MARKER.finditer(text):
            value = _to_decimal(m.group(1))
            if value is not None:
                markers.append((m.start(), value))
        for m in _BOXED.finditer(text):
            content = m.group(1)
            frac = _FRAC.match(content)
            if frac:
                sign, num, den = frac.groups()
                if int(den) != 0:
                    markers.append((m.start(), Decimal(sign + num) / Decimal(den)))
                continue
            numbers = _NUMBER.findall(content.replace("{,}", ","))
            value = _to_decimal(numbers[-1]) if numbers else None
            if value is not None:
                markers.append((m.start(), value))
        if markers:
            return _canonical_number(max(markers, key=lambda mv: mv[0])[1])
        for raw in reversed(_NUMBER.findall(text)):
            value = _to_decimal(raw)
            if value is not None:
                return _canonical_number(value)
        return None

    def __repr__(self) -> str:
        return "NumberAnswer()"


class ChoiceAnswer:
    """A multiple-choice letter, upper-cased.

    Rule: the last explicit marker (``Answer: C``, ``answer is (C)``, ``\\boxed{C}``)
    wins; else a reply that *starts* with a letter on its own (``"C"``, ``"(C)"``,
    ``"C. Paris"``, ``"C) Paris"``). A letter inside prose ("A cat...", "I think")
    never counts.

    Args:
        choices: the valid letters (2 to 26 distinct ASCII letters), default ``"ABCD"``.

    Raises:
        ConfigurationError: ``choices`` is not 2-26 distinct letters.
    """

    def __init__(self, choices: str = "ABCD") -> None:
        if (
            not isinstance(choices, str)
            or not 2 <= len(choices) <= 26
            or not choices.isascii()
            or not choices.isalpha()
            or len(set(choices.upper())) != len(choices)
        ):
            raise ConfigurationError(
                f"choices must be 2 to 26 distinct ASCII letters, e.g. 'ABCD', got {choices!r}"
            )
        self.choices = choices.upper()
        letters = re.escape(self.choices + self.choices.lower())
        self._marker = re.compile(
            rf"(?:answer(?:\s+is)?\s*[:=]?|####)\s*(?:\*\*)?\s*[\(\[]?\s*([{letters}])\b"
            rf"|\\boxed\{{\s*(?:\\text\{{)?([{letters}])\b",
            re.I,
        )
        upper = re.escape(self.choices)
        self._start = re.compile(
            rf"^\s*(?:\*\*)?(?:[\(\[]([{upper}])[\)\]]|([{upper}])(?:[\).:]|\*\*|\s*$))"
        )

    def __call__(self, text: str) -> str | None:
        if not text:
            return None
        found = [m.group(1) or m.group(2) for m in self._marker.finditer(text)]
        if found:
            return found[-1].upper()
        m = self._start.match(text)
        return (m.group(1) or m.group(2)) if m else None

    def __repr__(self) -> str:
        return f"ChoiceAnswer({self.choices!r})"


class RegexAnswer:
    """The last match of a regular expression.

    Args:
        pattern: a regex (string or compiled). With groups, group 1 is the answer
            (``group=`` picks another); without, the whole match.
        group: which group holds the answer.
        casefold: compare answers case-insensitively (default True).

    Whitespace inside the answer is collapsed to single spaces.

    Raises:
        ConfigurationError: the pattern does not compile, or has no such group.
    """

    def __init__(
        self, pattern: str | re.Pattern[str], group: int | None = None, *, casefold: bool = True
    ) -> None:
        try:
            self.pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        except re.error as exc:
            raise ConfigurationError(f"pattern is not a valid regular expression: {exc}") from None
        if not isinstance(self.pattern, re.Pattern):
            raise ConfigurationError(f"pattern must be a str or re.Pattern, got {pattern!r}")
        if group is None:
            group = 1 if self.pattern.groups else 0
        if (
            isinstance(group, bool)
            or not isinstance(group, int)
            or not 0 <= group <= self.pattern.groups
        ):
            raise ConfigurationError(
                f"group must be an int in [0, {self.pattern.groups}] for this pattern, "
                f"got {group!r}"
            )
        self.group = group
        self.casefold = bool(casefold)

    def __call__(self, text: str) -> str | None:
        matches = list(self.pattern.finditer(text or ""))
        if not matches:
            return None
        value = matches[-1].group(self.group)
        if value is None:
            return None
        value = " ".join(value.split())
        if not value:
            return None
        return value.casefold() if self.casefold else value

    def __repr__(self) -> str:
        return f"RegexAnswer({self.pattern.pattern!r}, group={self.group})"


class JsonFieldAnswer:
    """A field of the first complete JSON object in the text.

    Args:
        field: the key, or a dotted path into nested objects (``"result.answer"``).

    Strings are compared stripped; numbers canonically (``12.50 == 12.5``); other
    values by their sorted-key JSON. A missing field or no JSON object abstains.

    Raises:
        ConfigurationError: ``field`` is empty.
    """

    def __init__(self, field: str) -> None:
        if not isinstance(field, str) or not field or any(not p for p in field.split(".")):
            raise ConfigurationError(
                f"field must be a key or dotted path such as 'a.b', got {field!r}"
            )
        self.field = field
        self._path = field.split(".")

    def __call__(self, text: str) -> Hashable | None:
        obj = _first_json_object(text or "")
        for key in self._path:
            if not isinstance(obj, dict) or key not in obj:
                return None
            obj = obj[key]
        if obj is None:
            return None
        if isinstance(obj, bool):
            return json.dumps(obj)
        if isinstance(obj, (int, float)):
            value = _to_decimal(repr(obj))
            return None if value is None else _canonical_number(value)
        if isinstance(obj, str):
            return obj.strip() or None
        return json.dumps(obj, sort_keys=True, ensure_ascii=False)

    def __repr__(self) -> str:
        return f"JsonFieldAnswer({self.field!r})"


def _first_json_object(text: str) -> Any:
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
        start = text.find("{", start + 1)
    return None


_NAMED: dict[str, Callable[[], Extractor]] = {"number": NumberAnswer, "choice": ChoiceAnswer}


def extractor(spec: Any, parameter: str = "extract") -> Extractor:
    """An extractor from ``"number"``, ``"choice"`` or any callable ``text -> answer``.

    Raises:
        ConfigurationError: anything else, naming ``parameter``.
    """
    if isinstance(spec, str):
        if spec in _NAMED:
            return _NAMED[spec]()
        raise ConfigurationError(
            f"{parameter} must be 'number', 'choice', an extractor such as RegexAnswer(...) "
            f"or a callable text -> answer, got {spec!r}"
        )
    if isinstance(spec, type) or not callable(spec):
        raise ConfigurationError(
            f"{parameter} must be 'number', 'choice' or a callable text -> answer "
            f"(an instance, e.g. NumberAnswer()), got {spec!r}"
        )
    return spec
