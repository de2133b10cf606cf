"""LangChain's standard chat-model suites with ProviderRouter in front of the local model.

(The offline unit suite for the router is in tests/unit_tests/test_public_api.py.)
The integration suite talks to the bundled Qwen2.5-Coder-0.5B-Instruct served by
llama.cpp on 127.0.0.1 (the ``local_server`` fixture of ``conftest.py``); its base
URL reaches the class-level ``chat_model_params`` through the environment variable
``LANGCHAIN_MOA_LOCAL_BASE_URL``, set by an autouse fixture for each test.

The local engine is llama.cpp's ``llama-server``; the bundled model's client is
``LlamaServerChatModel`` (``langchain_moa._llamacpp``). The suite's tool-calling and
tool-choice tests run (a required call is grammar-enforced as a JSON schema of one
call; a call the model writes as text is recovered into ``tool_calls``). What still
cannot apply, and why:

* structured output: tried with ``method="json_schema"`` (grammar-enforced) and
  ``max_tokens=128``: all 9 tests passed in some runs, but in others the 0.5B model's
  grammar-constrained joke ran on to the 128-token limit (``LengthFinishReasonError``)
  in 1-2 of them, a different one each time, so they stay off to keep the suite
  deterministic; the plumbing is tested by ``test_json_schema_structured_output_is_
  enforced_by_the_server`` (test_local_model.py) and, for the router's
  ``ls_structured_output_format``, by tests/unit_tests/test_router_structured.py;
* ``test_agent_loop`` (expected failure, not strict): it binds the tool with
  ``tool_choice="auto"``, so nothing is grammar-enforced and the 0.5B model decides;
  greedy decoding is not reproducible across machines and slot prompt-cache states
  (the same run wrote the call as ``"San Francisco, CA"`` once and ``"San Francisco"``
  the next time), and in one CI run its reply held no call the client could recover;
* ``test_unicode_tool_call_integration``: the call is made, but the model sometimes
  writes a ``description`` argument long enough to run past ``max_tokens=64``
  (expected failure, not strict);
* JSON mode (``response_format: json_object``): supported by the server and the
  router, but the suite's joke-as-JSON answer does not fit the token budget of
  ``with_structured_output(method="json_mode")`` (it takes no extra kwargs here) and
  the reply is cut at ``max_tokens`` (``LengthFinishReasonError``);
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


class _LocalModel:
    @property
    def chat_model_class(self) -> type[ProviderRouter]:
        return ProviderRouter

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def structured_output_kwargs(self) -> dict[str, Any]:
        return {"method": "json_schema", "max_tokens": 128}

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
        return {**super().standard_chat_model_params, "max_tokens": 64}  # type: ignore[misc]


class TestProviderRouterStandardIntegration(_LocalModel, ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _local_base_url(self, local_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(BASE_URL_ENV, local_server.base_url)

    @pytest.mark.xfail(
        reason="the 0.5B model sometimes writes a long 'description' argument that runs "
        "past max_tokens=64, cutting the call's JSON (passes when it stops in time)",
        strict=False,
    )
    def test_unicode_tool_call_integration(self, model: Any) -> None:
        super().test_unicode_tool_call_integration(model)

    @pytest.mark.xfail(
        reason="tool_choice='auto' leaves the call to the 0.5B model, which on some "
        "machines answers without one (passes when it writes the call)",
        strict=False,
    )
    @pytest.mark.parametrize("model", [{}, {"output_version": "v1"}], indirect=True)
    def test_agent_loop(self, model: Any) -> None:
        super().test_agent_loop(model)

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return _params(os.environ[BASE_URL_ENV])
