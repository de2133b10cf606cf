"""Executes notebooks/quickstart.ipynb top to bottom with nbclient (kernel python3)
on the real local model, and checks that it produced its table and its plot."""

from __future__ import annotations

from pathlib import Path

import pytest

from langchain_moa.local import LOCAL_BASE_URL_ENV, LocalServer

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

pytestmark = pytest.mark.local_model

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs_and_plots(
    local_server: LocalServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    # the kernel inherits the environment: use the session's server, not a second one
    monkeypatch.setenv(LOCAL_BASE_URL_ENV, local_server.base_url)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=300,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError on any failing cell

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1, "the tokens/latency plot is missing"
    tables = [o for o in outputs if "<table" in o.get("data", {}).get("text/html", "")]
    assert tables, "the history table is missing"
    table = tables[0]["data"]["text/html"]
    # one row per call (pandas or the plain HTML table): the greedy call (Propose), then
    # 1 to 5 samples of AdaptiveMajorityVote
    assert table.count(">Propose<") == 1, table
    assert 1 <= table.count(">AdaptiveMajorityVote<") <= 5, table
