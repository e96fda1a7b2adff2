"""reops in Jupyter (issue 12): the example notebook, executed headless against the lab.

`docs/examples/live.ipynb` runs in a real ipykernel (registered for this venv's Python in
a temporary prefix, so a clean clone needs no `jupyter kernelspec install`) driven by
nbclient, with the lab's inventory passed through $REOPS_INVENTORY. It proves, from the
executed notebook's own outputs:

- top-level `await exec_(...)` works in a cell (ipykernel's loop is not reops's), and
  awaiting does not block the kernel's loop (a quick pipeline started second finishes first);
- an Outcome renders as HTML (`text/html` naming every host with ✔), `.table()` gives the
  polars DataFrame;
- a background stream started in one cell keeps flowing while later cells run: a later cell
  awaits (bounded, event-driven) more of its Results, and the display it made is updated in
  place from reops's thread (the cell's display, empty at subscription, ends up naming
  every host).
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from reops import exec_, run
from reops.lab.fleet import LabInfo
from reops.sinks.notebook import display_live

NOTEBOOK = Path(__file__).resolve().parent.parent / "docs" / "examples" / "live.ipynb"
KERNEL = "reops-test-venv"
#: the whole notebook's bound (a cell waits at most 60 s for the background stream)
CELL_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def kernel_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A kernelspec for this venv's Python in a temp prefix: the JUPYTER_PATH to use."""
    prefix = tmp_path_factory.mktemp("jupyter")
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix),
                    "--name", KERNEL, "--display-name", "reops (test venv)"],
                   check=True, capture_output=True, timeout=120)
    spec = json.loads((prefix / "share/jupyter/kernels" / KERNEL / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    return str(prefix / "share" / "jupyter")


@pytest.fixture(scope="module")
def executed(lab: LabInfo, kernel_path: str, tmp_path_factory: pytest.TempPathFactory,
             ) -> dict[str, Any]:
    """The example notebook after a headless run against the lab: {tag: cell}."""
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PATH", kernel_path)
    mp.setenv("REOPS_INVENTORY", str(lab.inventory))
    workdir = tmp_path_factory.mktemp("notebook")
    cells: dict[str, Any] = {}
    try:
        nb = nbformat.read(NOTEBOOK, as_version=4)
        client = NotebookClient(nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT_S,
                                resources={"metadata": {"path": str(workdir)}})
        with client.setup_kernel():
            for i, cell in enumerate(nb.cells):
                client.execute_cell(cell, i)
                for tag in cell.metadata.get("tags", []):
                    cells[tag] = cell
                if "later" in cell.metadata.get("tags", []):
                    # the background cell's display as it was before `sub.dispose()`
                    cells["background, before stop"] = copy.deepcopy(cells["background"])
    finally:
        mp.undo()
    return cells


def outputs(cell: Any, kind: str) -> list[str]:
    """Every output of `cell` in mime type `kind` (stdout for "stream")."""
    if kind == "stream":
        return [o["text"] for o in cell.outputs if o["output_type"] == "stream"]
    return [o["data"][kind] for o in cell.outputs
            if o["output_type"] in ("display_data", "execute_result") and kind in o["data"]]


def test_an_awaited_outcome_renders_as_html_naming_each_host(
        executed: dict[str, Any], lab: LabInfo) -> None:
    pages = outputs(executed["outcome"], "text/html")
    assert len(pages) == 1, executed["outcome"].outputs
    page = pages[0]
    for host in lab.hosts:
        assert re.search(rf">{re.escape(host)}</td>", page), host
    assert page.count("✔") == len(lab.hosts) and "✘" not in page
    assert f"{len(lab.hosts)} ok" in page and "load average" in page


def test_hosts_render_as_html(executed: dict[str, Any], lab: LabInfo) -> None:
    page = outputs(executed["hosts"], "text/html")[0]
    assert f"{len(lab.hosts)} hosts" in page and all(h in page for h in lab.hosts)


def test_outcome_table_is_a_polars_frame_in_the_notebook(
        executed: dict[str, Any], lab: LabInfo) -> None:
    text = outputs(executed["table"], "text/plain")[0]
    assert text.startswith(f"shape: ({len(lab.hosts)}, 5)")
    first = next(iter(lab.hosts))
    assert first in text and "status" in text and "duration_s" in text
    assert outputs(executed["table"], "text/html")  # polars' own HTML table


def test_awaiting_leaves_the_kernel_loop_free(executed: dict[str, Any]) -> None:
    assert "finished in order: ['quick', 'slow']" in "".join(
        outputs(executed["concurrent"], "stream"))


def test_a_background_stream_flows_between_cells(
        executed: dict[str, Any], lab: LabInfo) -> None:
    said = "".join(outputs(executed["later"], "stream"))
    m = re.search(r"(\d+) more results while other cells ran, from (.*)", said)
    assert m, said
    assert int(m.group(1)) >= 2 * len(lab.hosts)
    assert sorted(m.group(2).split(", ")) == sorted(lab.hosts)
    # the later cell's own Outcome of the fresh Results, as HTML
    fresh = outputs(executed["later"], "text/html")[0]
    assert all(h in fresh for h in lab.hosts) and "✔" in fresh
    # the display the background cell made (empty then) was updated from reops's thread
    started = executed["background, before stop"]
    shown = outputs(started, "text/html")
    assert len(shown) == 1, started.outputs
    assert all(re.search(rf">{re.escape(h)}</td>", shown[0]) for h in lab.hosts), shown[0]
    assert "event.clock.tick | exec" in shown[0] and "✔" in shown[0]
    assert not outputs(started, "stream")  # nothing printed into the old cell


def test_display_live_outside_a_notebook_passes_results_on(lab: LabInfo) -> None:
    hosts = lab.as_hosts().glob("web*")
    out = run(exec_(hosts, "echo hi") | display_live())
    assert out.hosts == hosts.names and out.ok
    assert {r.out.strip() for r in out.results} == {"hi"}
