"""Helpers the notebooks share: where the results are, and showing a figure or table or why not.

The notebooks read ``$MEDUSA_RESULTS`` when set (the tests point it at a synthetic folder), else
the repository's ``results/``. Figures are written to a scratch folder (never into results/) and
shown inline; a figure or table whose inputs are missing shows the one line naming the command to
run first instead of failing, so every notebook runs top to bottom on any results folder.

Every image is shown as PNG bytes (`IPython.display.Image`), never through a matplotlib backend:
the workbench draws bare `Figure`s (no pyplot) and no module calls ``matplotlib.use``, so what a
cell shows does not depend on which backend the kernel, a CLI or a test picked. A figure drawn in
a notebook cell goes through `show_plot(fig)`; ``display(fig)`` of a bare `Figure` shows only its
text repr, which is the bug `tests/test_notebooks.py` guards against (cells tagged ``plot`` must
show an image).

    from analysis.notebook import results_dir, show_figure, show_plot, show_table
    RESULTS = results_dir()
    show_figure("head-accuracy", RESULTS)     # a registered figure (analysis.figures)
    fig, axes = new_figure(); ...; show_plot(fig)   # a figure drawn in the cell

Commit notebooks with outputs stripped: ``jupyter nbconvert --clear-output --inplace notebooks/*.ipynb``
(`tests/test_notebooks.py` checks it and executes each one headless).
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from analysis import explore, figures, load, tables
from analysis.style import DPI
from common.errors import WorkbenchError

_SCRATCH: Path | None = None


def results_dir() -> Path:
    """``$MEDUSA_RESULTS`` or the repository's results/ folder."""
    env = os.environ.get("MEDUSA_RESULTS")
    return Path(env) if env else load.DEFAULT_RESULTS


def scratch_dir() -> Path:
    """A temporary folder for the notebook's images (one per kernel)."""
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = Path(tempfile.mkdtemp(prefix="medusa-figures-"))
    return _SCRATCH


def show_figure(name: str, results: str | Path | None = None, **options: Any) -> list[Path]:
    """Make figure `name` (see `analysis.figures.FIGURES`) and display its PNGs inline."""
    from IPython.display import Image, display

    try:
        paths = figures.make(name, results or results_dir(), scratch_dir(), **options)
    except WorkbenchError as e:
        print(f"skipped {name}: {e}")
        return []
    for p in paths:
        if p.suffix == ".png":
            display(Image(filename=str(p)))
    return paths


def show_plot(fig: Figure) -> bytes:
    """Show a figure drawn in a cell inline as a PNG (whatever the matplotlib backend); returns the bytes."""
    from IPython.display import Image, display

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    display(Image(data=buf.getvalue(), format="png"))
    return buf.getvalue()


def show_tree(cal: explore.Calibration | None, budget: int, method: str) -> Path | None:
    """Search a `method` tree of `budget` nodes on calibration `cal` and show it, or say why not."""
    from IPython.display import Image, display

    if cal is None:
        print("no calibration: run `python -m bench.calibrate` first")
        return None
    try:
        path = explore.draw_searched_tree(cal, int(budget), method, scratch_dir() / f"tree_{method}_{int(budget)}.png")
    except WorkbenchError as e:
        print("error:", e)
        return None
    display(Image(filename=str(path)))
    return path


def show_table(name: str, results: str | Path | None = None, **options: Any) -> str:
    """Display table `name` (see `analysis.tables.TABLES`) as Markdown; returns its text."""
    from IPython.display import Markdown, display

    try:
        text = tables.make(name, results or results_dir(), **options)
    except WorkbenchError as e:
        print(f"skipped {name}: {e}")
        return ""
    display(Markdown(text))
    return text
