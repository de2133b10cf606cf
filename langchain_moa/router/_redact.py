"""Redacting the router's own API keys from every text it stores or raises.

The router knows its keys: each deployment's ``api_key``, the value of its
provider's key variable (``GROQ_API_KEY`` ...), and the key of an ``llm=`` chat
model (``openai_api_key`` / ``api_key``). An upstream that echoes the
``Authorization`` header in its error body would otherwise put the key into
``stats()``, exceptions, the attempt log, traces and shared (Redis) health records.

One place does it: :meth:`Redactor.exception` rewrites an exception (and its
``__cause__`` / ``__context__`` chain) in place before the router classifies,
records or raises it, so every text derived from it is already clean.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

from pydantic import SecretStr

__all__ = ["MASK", "Redactor"]

MASK = "***"
"""What a key is replaced with."""

MIN_SECRET_LEN = 8
"""Shorter values (``"not-needed"`` placeholders aside) are not treated as keys."""

_PLACEHOLDERS = frozenset({"not-needed", "none", "null", "sk-no-key-required", "EMPTY"})

_BEARER_RE = re.compile(r"(?i)(bearer\s+)([A-Za-z0-9._\-~+/=]{8,})")


def _plain(v: Any) -> str | None:
    if isinstance(v, SecretStr):
        v = v.get_secret_value()
    return v if isinstance(v, str) else None


class Redactor:
    """Replaces known keys (and any ``Bearer <token>``) by :data:`MASK`.

    Args:
        deployments: the router's deployments (their keys are read at each call,
            so keys set in the environment later are redacted too).
    """

    def __init__(self, deployments: Iterable[Any] = ()) -> None:
        self._deployments = list(deployments)

    def secrets(self) -> set[str]:
        """The keys the router may send (each at least ``MIN_SECRET_LEN`` chars)."""
        out: set[str] = set()
        for d in self._deployments:
            for v in (
                getattr(d, "api_key", None),
                os.environ.get(d.api_key_env) if getattr(d, "api_key_env", None) else None,
                getattr(d.llm, "openai_api_key", None) if getattr(d, "llm", None) else None,
                getattr(d.llm, "api_key", None) if getattr(d, "llm", None) else None,
            ):
                s = _plain(v)
                if s and len(s) >= MIN_SECRET_LEN and s not in _PLACEHOLDERS:
                    out.add(s)
        return out

    def text(self, s: str, secrets: set[str] | None = None) -> str:
        """``s`` with every known key and bearer token masked."""
        if not s:
            return s
        for key in sorted(self.secrets() if secrets is None else secrets, key=len, reverse=True):
            if key in s:
                s = s.replace(key, MASK)
        return _BEARER_RE.sub(lambda m: m.group(1) + MASK, s)

    def value(self, v: Any, secrets: set[str]) -> Any:
        """Redact strings inside a JSON-like value (error bodies)."""
        if isinstance(v, str):
            return self.text(v, secrets)
        if isinstance(v, dict):
            return {k: self.value(x, secrets) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return type(v)(self.value(x, secrets) for x in v)
        return v

    def exception(self, exc: BaseException) -> BaseException:
        """Redact ``exc`` in place (``args``, ``message``, ``body``; its cause and
        context chain too) and return it; its type is kept, so callers still catch
        ``openai.BadRequestError`` and friends."""
        secrets = self.secrets()
        seen: set[int] = set()
        e: BaseException | None = exc
        stack = [exc]
        while stack:
            e = stack.pop()
            if e is None or id(e) in seen:
                continue
            seen.add(id(e))
            try:
                e.args = tuple(self.value(a, secrets) for a in e.args)
                for attr in ("message", "body"):
                    if isinstance(getattr(e, attr, None), str | dict | list):
                        setattr(e, attr, self.value(getattr(e, attr), secrets))
            except (AttributeError, TypeError):  # read-only attributes: leave them
                pass
            stack.extend([e.__cause__, e.__context__])  # type: ignore[list-item]
        return exc
