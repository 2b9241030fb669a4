"""The notebooks run headless (nbclient, kernel `python3` of this venv) without error, on the
committed results/ and on a synthetic results folder, and are committed with outputs stripped."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import synthetic_results

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("01_head_accuracy", "02_tree_search", "03_speedup_and_quality")
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return synthetic_results.build(tmp_path_factory.mktemp("results"))


def execute(name: str, results: Path | None, monkeypatch) -> nbformat.NotebookNode:
    if results is None:
        monkeypatch.delenv("MEDUSA_RESULTS", raising=False)
    else:
        monkeypatch.setenv("MEDUSA_RESULTS", str(results))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return nb


def test_notebooks_exist_and_are_stripped():
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs not stripped"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_on_synthetic_results(name, synthetic, monkeypatch):
    nb = execute(name, synthetic, monkeypatch)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not any(o.output_type == "error" for o in outputs)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{name} showed no figure"
    assert not any("skipped" in o.get("text", "") for o in outputs if o.output_type == "stream")


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_on_committed_results(name, monkeypatch):
    execute(name, None, monkeypatch)


def test_kernel_python3_is_this_interpreter():
    import sys

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import sys; print(sys.executable)")]
    nbclient.NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3").execute()
    assert Path(nb.cells[0].outputs[0]["text"].strip()).resolve() == Path(sys.executable).resolve()
