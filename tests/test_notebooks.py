"""The notebooks run headless (nbclient, kernel `python3` of this venv) without error, on the
committed results/ and on a synthetic results folder; every plotting cell shows an image; they are
committed with outputs stripped.

Plotting cells are tagged ``plot`` in their metadata (JupyterLab: property inspector -> cell tags).
A cell that calls a plotting helper (`PLOT_CALL`) must carry the tag, and after execution every
tagged cell must hold at least one ``image/png`` output per plotting call. A figure that is drawn
but not shown (``display(fig)`` of a bare matplotlib `Figure` shows only its text repr, as two
cells once did) therefore fails; `test_the_image_check_catches_a_plot_that_does_not_appear` proves
it on a planted notebook. The kernel runs with the backend a JupyterLab kernel would pick
(``MPLBACKEND`` unset): no module of the workbench may choose one on import
(`test_no_module_chooses_a_matplotlib_backend_on_import`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import synthetic_results

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ("01_head_accuracy", "02_tree_search", "03_speedup_and_quality")
TIMEOUT_S = 120
PLOT_TAG = "plot"
# Statements that show an image: a registered figure, a figure drawn in the cell, a searched tree
# (a helper passed to a widget, e.g. inside a lambda, is not a statement of the cell).
PLOT_CALL = re.compile(r"^[ \t]*(?:[\w, ]+=[ \t]*)?(?:show_figure|show_plot|show_tree)\(", re.MULTILINE)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return synthetic_results.build(tmp_path_factory.mktemp("results"))


def execute(nb: nbformat.NotebookNode, results: Path | None, monkeypatch) -> nbformat.NotebookNode:
    if results is None:
        monkeypatch.delenv("MEDUSA_RESULTS", raising=False)
    else:
        monkeypatch.setenv("MEDUSA_RESULTS", str(results))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own default, as in JupyterLab
    client = nbclient.NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return nb


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def is_plot_cell(cell: nbformat.NotebookNode) -> bool:
    return cell.cell_type == "code" and PLOT_TAG in cell.metadata.get("tags", [])


def plot_problems(nb: nbformat.NotebookNode) -> list[str]:
    """What is wrong with the plotting cells of an executed notebook (empty: every plot appeared)."""
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        calls = len(PLOT_CALL.findall(cell.source))
        if calls and not is_plot_cell(cell):
            problems.append(f"cell {i} calls a plotting helper but is not tagged {PLOT_TAG!r}")
        if not is_plot_cell(cell):
            continue
        images = sum("image/png" in o.get("data", {}) for o in cell.outputs)
        if images < max(1, calls):
            shown = [o.get("text") or o.get("data", {}).get("text/plain", "") for o in cell.outputs]
            problems.append(f"cell {i} showed {images} image(s) for {max(1, calls)} plot(s): {shown}")
    return problems


def test_notebooks_exist_and_are_stripped():
    for name in NAMES:
        nb = read(name)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name}: outputs not stripped"
        assert any(is_plot_cell(c) for c in nb.cells), f"{name}: no cell tagged {PLOT_TAG!r}"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_on_synthetic_results(name, synthetic, monkeypatch):
    nb = execute(read(name), synthetic, monkeypatch)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not any(o.output_type == "error" for o in outputs)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{name} showed no figure"
    assert not any("skipped" in o.get("text", "") for o in outputs if o.output_type == "stream")
    assert plot_problems(nb) == []


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_on_committed_results(name, monkeypatch):
    nb = execute(read(name), None, monkeypatch)
    assert not any(o.output_type == "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert plot_problems(nb) == []


def test_the_image_check_catches_a_plot_that_does_not_appear(monkeypatch):
    """A planted notebook: a shown plot passes, a bare `display(fig)` and an untagged plot fail."""
    v4 = nbformat.v4
    draw = ("from matplotlib.figure import Figure\n"
            "fig = Figure(figsize=(2, 2))\n"
            "fig.subplots().plot([0, 1], [1, 0])\n")
    good = v4.new_code_cell(draw + "from analysis.notebook import show_plot\nshow_plot(fig)", metadata={"tags": [PLOT_TAG]})
    silent = v4.new_code_cell(draw + "from IPython.display import display\ndisplay(fig)", metadata={"tags": [PLOT_TAG]})
    untagged = v4.new_code_cell(draw + "from analysis.notebook import show_plot\nshow_plot(fig)")
    nb = v4.new_notebook(cells=[good, silent, untagged])
    execute(nb, None, monkeypatch)
    assert [o.output_type for o in nb.cells[1].outputs] == ["display_data"]  # text repr only
    problems = plot_problems(nb)
    assert len(problems) == 2
    assert problems[0].startswith("cell 1 showed 0 image(s)") and "Figure" in problems[0]
    assert problems[1] == f"cell 2 calls a plotting helper but is not tagged {PLOT_TAG!r}"
    assert plot_problems(v4.new_notebook(cells=[nb.cells[0]])) == []


def test_no_module_chooses_a_matplotlib_backend_on_import():
    """Importing the analysis and plotting modules leaves matplotlib's backend unresolved and pyplot
    unloaded, so a notebook kernel keeps its inline backend and a CLI picks its own."""
    code = ("import sys, matplotlib\n"
            "import analysis.figures, analysis.notebook, analysis.explore, trees.plot\n"
            "assert matplotlib.rcParams._get_backend_or_none() is None, matplotlib.rcParams._get_backend_or_none()\n"
            "assert 'matplotlib.pyplot' not in sys.modules\n")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_kernel_python3_is_this_interpreter():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import sys; print(sys.executable)")]
    nbclient.NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3").execute()
    assert Path(nb.cells[0].outputs[0]["text"].strip()).resolve() == Path(sys.executable).resolve()
