"""Model prices and request cost.

Prices are **USD per million tokens**, as ``(input, output)`` pairs, taken from
each provider's public pricing page (early 2025 list prices; they change, so pass
your own table or set ``Deployment(price_in=..., price_out=...)`` when it matters).

Keys are ``"provider/model"``; a bare model id matches any provider that lists it
under that id. Self-hosted providers (``local``, ``llamacpp``, ``ollama``,
``vllm``, ``lmstudio``) cost 0.

Example::

    >>> cost_usd("openai/gpt-4o-mini", 1_000, 500)
    0.00045
    >>> cost_usd("nobody/knows", 1, 1) is None
    True
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

from langchain_moa.errors import ConfigurationError
from langchain_moa.providers import split_model_name

__all__ = ["PRICES", "FREE_PROVIDERS", "price_of", "cost_usd"]

Price = tuple[float, float]
"""``(input, output)`` in USD per million tokens."""

PRICES: dict[str, Price] = {
    # OpenAI
    "openai/gpt-4o": (2.50, 10.00),
    "openai/gpt-4o-mini": (0.15, 0.60),
    "openai/gpt-4.1": (2.00, 8.00),
    "openai/gpt-4.1-mini": (0.40, 1.60),
    "openai/gpt-4.1-nano": (0.10, 0.40),
    "openai/o3-mini": (1.10, 4.40),
    # Anthropic (OpenAI-compatible endpoint)
    "anthropic/claude-3-5-haiku-latest": (0.80, 4.00),
    "anthropic/claude-3-5-sonnet-latest": (3.00, 15.00),
    "anthropic/claude-3-7-sonnet-latest": (3.00, 15.00),
    "anthropic/claude-sonnet-4-0": (3.00, 15.00),
    "anthropic/claude-3-haiku-20240307": (0.25, 1.25),
    # Groq
    "groq/llama-3.1-8b-instant": (0.05, 0.08),
    "groq/llama-3.3-70b-versatile": (0.59, 0.79),
    "groq/gemma2-9b-it": (0.20, 0.20),
    # Together
    "together/meta-llama/Llama-3.1-8B-Instruct-Turbo": (0.18, 0.18),
    "together/meta-llama/Llama-3.3-70B-Instruct-Turbo": (0.88, 0.88),
    "together/Qwen/Qwen2.5-72B-Instruct-Turbo": (1.20, 1.20),
    # OpenRouter (provider price; OpenRouter may add a fee)
    "openrouter/meta-llama/llama-3.1-8b-instruct": (0.02, 0.03),
    "openrouter/openai/gpt-4o-mini": (0.15, 0.60),
    # DeepSeek
    "deepseek/deepseek-chat": (0.27, 1.10),
    "deepseek/deepseek-reasoner": (0.55, 2.19),
    # Mistral
    "mistral/mistral-small-latest": (0.10, 0.30),
    "mistral/mistral-large-latest": (2.00, 6.00),
    # Fireworks
    "fireworks/accounts/fireworks/models/llama-v3p1-8b-instruct": (0.20, 0.20),
    # DeepInfra
    "deepinfra/meta-llama/Meta-Llama-3.1-8B-Instruct": (0.03, 0.05),
    # xAI
    "xai/grok-2-latest": (2.00, 10.00),
    "xai/grok-3-mini": (0.30, 0.50),
}

_DATE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")

FREE_PROVIDERS = frozenset({"local", "llamacpp", "ollama", "vllm", "lmstudio"})
"""Providers whose models run on your own hardware: priced at 0."""


def price_of(model: str, prices: Mapping[str, Price] | None = None) -> Price | None:
    """The ``(input, output)`` price in USD per million tokens, or ``None`` if unknown.

    Lookup order: the exact key (``"provider/model"``, ``"provider:model"`` is
    normalised to ``/``), then the bare model id against every entry's model part,
    then 0 for self-hosted providers (:data:`FREE_PROVIDERS`). ``prices`` entries
    take precedence over :data:`PRICES`. Lookups in :data:`PRICES` alone are
    memoised (the table is indexed once per change of its size).
    """
    if prices:
        return _lookup(model, {**PRICES, **prices}, _index({**PRICES, **prices}))
    return _cached_price(model, len(PRICES))


@functools.lru_cache(maxsize=4096)
def _cached_price(model: str, size: int) -> Price | None:
    # ``size`` keys the cache to the table's size, so an entry added to PRICES at
    # run time is seen (changing an existing price needs _cached_price.cache_clear()).
    return _lookup(model, PRICES, _index(PRICES))


def _index(table: Mapping[str, Price]) -> dict[str, Price]:
    """Bare model id -> price (the first entry listing that id wins)."""
    by_id: dict[str, Price] = {}
    for k, v in table.items():
        by_id.setdefault(split_model_name(k)[1], v)
    return by_id


def _lookup(model: str, table: Mapping[str, Price], by_id: Mapping[str, Price]) -> Price | None:
    provider, model_id = split_model_name(model)
    key = f"{provider}/{model_id}" if provider else model_id
    if key in table:
        return table[key]
    if model in table:
        return table[model]
    if provider in FREE_PROVIDERS:
        return (0.0, 0.0)
    if model_id in by_id:
        return by_id[model_id]
    # dated snapshots ("gpt-4o-mini-2024-07-18", "claude-3-5-haiku-20241022") cost
    # what their alias costs
    undated = _DATE_SUFFIX.sub("", model_id)
    if undated != model_id:
        return _lookup(f"{provider}/{undated}" if provider else undated, table, by_id)
    return None


def cost_usd(
    model: str,
    input_tokens: int,
    output_tokens: int,
    prices: Mapping[str, Price] | None = None,
) -> float | None:
    """Cost in USD of one call: ``input_tokens * in + output_tokens * out`` (per million).

    Returns ``None`` when the model's price is unknown (the caller decides whether
    that means "free" or "not tracked").

    Raises:
        ConfigurationError: a token count is negative.
    """
    if input_tokens < 0 or output_tokens < 0:
        raise ConfigurationError(
            f"token counts must be >= 0, got input_tokens={input_tokens}, "
            f"output_tokens={output_tokens}"
        )
    price = price_of(model, prices)
    if price is None:
        return None
    return (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000
