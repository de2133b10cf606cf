"""ProviderRouter.with_structured_output reports its output format to callbacks as
LangChain chat models do (``ls_structured_output_format`` in the run's options, which
LangSmith shows), for every method, over real HTTP to the fault server."""

from __future__ import annotations

import json

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.utils.function_calling import convert_to_json_schema
from pydantic import BaseModel

from langchain_moa import Deployment, ProviderRouter
from tests import fault_server as _fs
from tests.fault_server import Fault, FaultServer

fault_server = _fs.fault_server
fault_server_factory = _fs.fault_server_factory


class Joke(BaseModel):
    """A joke."""

    setup: str
    punchline: str


class Options(BaseCallbackHandler):
    def __init__(self) -> None:
        self.options: list[dict] = []

    def on_chat_model_start(self, serialized, messages, *, options=None, **kwargs):  # noqa: ANN001
        self.options.append(options or {})


@pytest.mark.parametrize("method", ["json_schema", "json_mode"])
def test_structured_output_format_reaches_callbacks(fault_server: FaultServer, method: str):
    fault_server.set_default(Fault.ok(json.dumps({"setup": "a", "punchline": "b"})))
    router = ProviderRouter(
        deployments=[Deployment(model="llamacpp/m", base_url=fault_server.base_url)]
    )
    seen = Options()
    joke = router.with_structured_output(Joke, method=method).invoke(
        "a joke", config={"callbacks": [seen]}
    )
    assert joke == Joke(setup="a", punchline="b")
    [options] = seen.options
    assert options["ls_structured_output_format"]["schema"] == convert_to_json_schema(Joke)
    assert options["ls_structured_output_format"]["kwargs"]["method"] == method
    sent = fault_server.chat_requests[0].body
    assert "ls_structured_output_format" not in sent  # reported, never sent
    expected = "json_schema" if method == "json_schema" else "json_object"
    assert sent["response_format"]["type"] == expected
