"""Choosing the models and building the pipeline for the ``moa`` command.

Default models (when no ``--proposer`` / ``--aggregator`` is given):

* no provider key set: the bundled local model ``local/qwen2.5-coder-0.5b``;
* otherwise the cheap default of the first provider, in :data:`HOSTED_DEFAULTS`
  order, whose key variable is set (``OPENAI_API_KEY`` -> ``openai/gpt-4o-mini``, ...).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.runnables import Runnable

from langchain_moa.errors import ConfigurationError
from langchain_moa.providers import (
    LOCAL_PROVIDER,
    PROVIDERS,
    openai_compatible_chat_model,
    parse_model_name,
    validate_base_url,
)

__all__ = [
    "LOCAL_DEFAULT",
    "HOSTED_DEFAULTS",
    "PRESETS",
    "RunSettings",
    "default_model",
    "build_pipeline",
]

LOCAL_DEFAULT = "local/qwen2.5-coder-0.5b"
"""The model used when no provider key is set (bundled, installed by the ``local`` extra)."""

HOSTED_DEFAULTS: dict[str, str] = {
    "OPENAI_API_KEY": "openai/gpt-4o-mini",
    "ANTHROPIC_API_KEY": "anthropic/claude-3-5-haiku-latest",
    "GROQ_API_KEY": "groq/llama-3.1-8b-instant",
    "TOGETHER_API_KEY": "together/meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
    "OPENROUTER_API_KEY": "openrouter/openai/gpt-4o-mini",
    "DEEPSEEK_API_KEY": "deepseek/deepseek-chat",
    "MISTRAL_API_KEY": "mistralai/mistral-small-latest",
    "FIREWORKS_API_KEY": "fireworks/accounts/fireworks/models/llama-v3p1-8b-instruct",
    "DEEPINFRA_API_KEY": "deepinfra/meta-llama/Meta-Llama-3.1-8B-Instruct",
    "XAI_API_KEY": "xai/grok-3-mini",
}
"""Cheap default model per provider key variable, in the order they are tried."""

PRESETS = (
    "auto",
    "adaptive",
    "self-consistency",
    "self-moa",
    "moa-lite",
    "together-moa",
    "robust",
)
"""``--preset`` values. ``auto``: :data:`DEFAULT_PRESET` with no ``--proposer``,
``self-moa`` for one proposer, ``moa-lite`` for several."""

DEFAULT_PRESET = "adaptive"
"""What ``moa "question"`` runs with no ``--proposer``: the method that measured best on
the bundled model per unit of cost (README, "Answer quality"): Adaptive-Consistency with
the greedy answer first — one greedy call, then samples at :data:`VOTE_TEMPERATURE` one at
a time until the majority of their extracted final numbers is settled, at most
``--samples`` calls in all (default 6), ties to the greedy answer
(:func:`~langchain_moa.presets.adaptive_consistency` with ``greedy_first``). A question
whose replies hold no number (free text) costs 2 calls and returns the greedy reply."""
VOTE_PRESETS = ("adaptive", "self-consistency")
VOTE_TEMPERATURE = 0.3
"""Default sampling temperature of the vote presets. Measured on the bundled 0.5B model
(GSM8K, README "Answer quality"): at 0.7 a sample was right less often than the greedy
answer (20.7 % vs 27.6 %, 29 questions); at 0.3 about as often (24.4 % vs 26.0 %, 100
questions)."""
MOA_TEMPERATURE = 0.7
"""Default sampling temperature of the MoA presets, as in both MoA papers."""
GREEDY_FIRST = True
"""Default of ``--greedy-first`` for the vote presets: the first call is greedy
(temperature 0) and its answer one vote that wins ties. On GSM8K it kept the votes from
losing questions one greedy call gets right (README "Answer quality")."""
DEFAULT_SAMPLES = {"adaptive": 6, "self-consistency": 5}
"""``--samples`` when not given, per preset; 3 for the others. ``adaptive``: at most 6 calls
(with the greedy one, as the benchmark's ``greedy_adaptive``); ``self-consistency``: 5
samples (+ the greedy call)."""

ONE_MODEL_PRESETS = ("adaptive", "self-consistency", "self-moa")


def default_model(environ: Mapping[str, str] | None = None) -> str:
    """The default agent: a hosted model if a provider key is set, else the local model.

    Only providers of :data:`langchain_moa.providers.PROVIDERS` that need a key count;
    the first variable of :data:`HOSTED_DEFAULTS` that is set (non-empty) wins.
    """
    env = os.environ if environ is None else environ
    key_vars = {p.api_key_env for p in PROVIDERS.values() if p.api_key_env}
    for var, model in HOSTED_DEFAULTS.items():
        if var in key_vars and env.get(var):
            return model
    return LOCAL_DEFAULT


@dataclass
class RunSettings:
    """What the command line asked for (validated by :func:`build_pipeline`)."""

    preset: str = "auto"
    proposers: list[str] = field(default_factory=list)
    aggregator: str | None = None
    samples: int | None = None
    temperature: float | None = None
    max_tokens: int = 512
    aggregator_max_tokens: int | None = None
    base_url: str | None = None
    api_key: str | None = None
    seed: int | None = None
    dropout: float = 0.2
    greedy_first: bool | None = None

    def resolved_preset(self) -> str:
        if self.preset != "auto":
            return self.preset
        if not self.proposers:
            return DEFAULT_PRESET
        return "moa-lite" if len(set(self.proposers)) > 1 else "self-moa"

    def resolved_temperature(self) -> float:
        """``--temperature``, else :data:`VOTE_TEMPERATURE` for the vote presets and
        :data:`MOA_TEMPERATURE` for the MoA presets."""
        if self.temperature is not None:
            return self.temperature
        return VOTE_TEMPERATURE if self.resolved_preset() in VOTE_PRESETS else MOA_TEMPERATURE

    def resolved_samples(self) -> int:
        """``--samples``, else :data:`DEFAULT_SAMPLES` for the preset (3 if not listed)."""
        if self.samples is not None:
            return self.samples
        return DEFAULT_SAMPLES.get(self.resolved_preset(), 3)

    def resolved_greedy_first(self) -> bool:
        """``--greedy-first`` / ``--no-greedy-first``, else :data:`GREEDY_FIRST`."""
        return GREEDY_FIRST if self.greedy_first is None else self.greedy_first


def _check(settings: RunSettings) -> None:
    if settings.preset not in PRESETS:
        raise ConfigurationError(
            f"--preset must be one of {', '.join(PRESETS)}; got {settings.preset!r}"
        )
    if settings.samples is not None and not 1 <= settings.samples <= 64:
        raise ConfigurationError(f"--samples must be between 1 and 64, got {settings.samples}")
    if settings.temperature is not None and not 0 <= settings.temperature <= 2:
        raise ConfigurationError(
            f"--temperature must be between 0 and 2, got {settings.temperature}"
        )
    for name, value in (
        ("--max-tokens", settings.max_tokens),
        ("--aggregator-max-tokens", settings.aggregator_max_tokens),
    ):
        if value is not None and value < 1:
            raise ConfigurationError(f"{name} must be a positive number of tokens, got {value}")
    if not 0 <= settings.dropout < 1:
        raise ConfigurationError(f"--dropout must be in [0, 1), got {settings.dropout}")
    if settings.base_url is not None:
        validate_base_url(settings.base_url, "--base-url")
    preset = settings.resolved_preset()
    if settings.greedy_first is not None and preset not in VOTE_PRESETS:
        raise ConfigurationError(
            f"--greedy-first / --no-greedy-first apply to the vote presets "
            f"({', '.join(VOTE_PRESETS)}), not to --preset {preset}"
        )
    if (
        settings.resolved_greedy_first()
        and preset == "adaptive"
        and settings.resolved_samples() < 2
    ):
        raise ConfigurationError(
            f"--samples must be at least 2 with --greedy-first (the default for the vote "
            f"presets; the greedy call counts as one; --no-greedy-first turns it off), got "
            f"{settings.resolved_samples()}"
        )
    if preset in ONE_MODEL_PRESETS and len(set(settings.proposers)) > 1:
        raise ConfigurationError(
            f"--preset {preset} samples one model: give one --proposer "
            "(or use --preset moa-lite for several)"
        )


def _agent(name: str, settings: RunSettings) -> Any:
    """A model string (checked now, so a typo or a missing key fails before any call),
    or a chat model on ``--base-url``."""
    if settings.base_url is not None:
        return openai_compatible_chat_model(
            None, name, base_url=settings.base_url, api_key=settings.api_key
        )
    spec = parse_model_name(name)
    if spec.provider != LOCAL_PROVIDER:
        PROVIDERS[spec.provider].api_key(required=True)
    return name


def local_models(settings: RunSettings, models: Sequence[str]) -> list[str]:
    """The local model names among ``models`` (``local/<name>`` strings), checked.

    Raises:
        ConfigurationError: an unknown bundled name.
        LocalModelError: a ``.gguf`` path that is not a file.
    """
    from pathlib import Path

    from langchain_moa.errors import LocalModelError
    from langchain_moa.local import resolve_bundled_model

    if settings.base_url is not None:
        return []
    out = []
    for name in models:
        spec = parse_model_name(name)
        if spec.provider != LOCAL_PROVIDER or spec.model in out:
            continue
        if spec.model.lower().endswith(".gguf"):
            if not Path(spec.model).expanduser().is_file():
                raise LocalModelError(f"model file {spec.model} does not exist")
        else:
            resolve_bundled_model(spec.model)
        out.append(spec.model)
    return out


def chosen_models(settings: RunSettings) -> tuple[list[str], str]:
    """(proposer names, aggregator name) after defaults.

    No ``--proposer``: the default model (see :func:`default_model`) sampled
    ``--samples`` times (with ``--base-url``: the model id ``"default"``, which
    single-model servers such as llama.cpp accept). One ``--proposer`` with the
    ``self-moa`` preset: that model sampled ``--samples`` times. The aggregator
    defaults to the first proposer.
    """
    _check(settings)
    preset = settings.resolved_preset()
    base = settings.proposers or ["default" if settings.base_url is not None else default_model()]
    if preset in ONE_MODEL_PRESETS or not settings.proposers:
        proposers = [base[0]] * settings.resolved_samples()
    else:
        proposers = list(base)
    return proposers, settings.aggregator or base[0]


def build_pipeline(settings: RunSettings) -> tuple[Runnable, list[str], str]:
    """Build the preset's Runnable.

    Returns:
        (pipeline, proposer names, aggregator name).

    Raises:
        ConfigurationError: an option is out of range, an unknown provider.
        MissingAPIKeyError: a hosted model's key variable is unset.
    """
    from langchain_moa import presets

    proposers, aggregator = chosen_models(settings)
    refs = [_agent(p, settings) for p in proposers]
    agg = _agent(aggregator, settings)
    common: dict[str, Any] = {
        "temperature": settings.resolved_temperature(),
        "reference_max_tokens": settings.max_tokens,
        "aggregator_max_tokens": settings.aggregator_max_tokens or settings.max_tokens,
    }
    preset = settings.resolved_preset()
    vote = {"no_answer": "first", "greedy_first": settings.resolved_greedy_first()}
    if preset == "adaptive":
        runnable = presets.adaptive_consistency(refs[0], max_samples=len(refs), **vote, **common)
    elif preset == "self-consistency":
        runnable = presets.self_consistency(refs[0], k=len(refs), **vote, **common)
    elif preset == "self-moa":
        runnable = presets.self_moa(refs[0], k=len(refs), aggregator=agg, **common)
    elif preset == "moa-lite":
        runnable = presets.moa_lite(refs, agg, **common)
    elif preset == "together-moa":
        runnable = presets.together_moa(refs, agg, **common)
    else:
        runnable = presets.robust_moa(
            refs, agg, dropout=settings.dropout, seed=settings.seed, **common
        )
    return runnable, proposers, aggregator
