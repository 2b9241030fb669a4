"""Shared look of the workbench's figures: one palette per method, captions, saving.

Figures are bare matplotlib `Figure`s (no pyplot, so no backend or global figure registry is
touched) drawn inside `styled()`, a `matplotlib.rc_context` with the workbench's sizes and grid:
nothing here changes process-wide matplotlib settings. `analysis.figures.make` applies `styled()`
around every figure. Every figure is saved twice (PNG at 150 dpi and PDF) through
`common.io.atomic_write`, so an interrupted `python -m analysis.figures` never leaves half an
image. The caption line at the bottom of each figure names the device and model the data came
from (`caption`).

    from analysis.style import new_figure, caption, save, styled
    with styled():
        fig, axes = new_figure()
        caption(fig, "AMD EPYC, 1 thread, float32 | smollm2-135m + medusa heads")
        save(fig, out_dir, "speedup_by_category")   # -> [out_dir/speedup_by_category.png, .pdf]
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from common.io import atomic_write

FORMATS = ("png", "pdf")
DPI = 150

# Fixed colours so a method looks the same in every figure; other methods take the cycle's colours.
METHOD_COLORS = {
    "medusa": "#1f77b4",
    "medusa-typical": "#9467bd",
    "hf-pld": "#ff7f0e",
    "ar": "#2ca02c",
    "hf-greedy": "#7f7f7f",
    "hf-sample": "#8c564b",
    "medusa-sample": "#17becf",
}
FAMILY_STYLE = {  # tree family -> (colour, marker)
    "sparse": ("#1f77b4", "o"),
    "paper": ("#d62728", "D"),
    "dense": ("#ff7f0e", "s"),
    "chain": ("#2ca02c", "^"),
    "plain": ("#7f7f7f", "x"),
    "optuna": ("#9467bd", "P"),
}
CYCLE = matplotlib.rcParamsDefault["axes.prop_cycle"].by_key()["color"]

STYLE = {
    "figure.dpi": 100,
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}


@contextlib.contextmanager
def styled() -> Iterator[None]:
    """The workbench's matplotlib settings for the figures drawn inside (restored afterwards)."""
    with matplotlib.rc_context(STYLE):
        yield


def method_color(method: str, index: int = 0) -> str:
    return METHOD_COLORS.get(method, CYCLE[index % len(CYCLE)])


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 5.5, height: float = 3.6, **kw) -> tuple[Figure, np.ndarray]:
    """A bare `Figure` with an (nrows, ncols) array of axes, at the workbench's default size per panel."""
    fig = Figure(figsize=(width * ncols, height * nrows))
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


def caption(fig: Figure, text: str) -> None:
    """Put the provenance line (device, model, source) under the figure."""
    fig.text(0.01, 0.005, text, ha="left", va="bottom", fontsize=6.5, color="0.35", wrap=True)
    fig.tight_layout(rect=(0, 0.045, 1, 1))


def yerr(value: Iterable[float], lo: Iterable[float], hi: Iterable[float]) -> np.ndarray | None:
    """Asymmetric error bars from interval ends (NaN ends give no bar); None if there are none."""
    v, lo_, hi_ = (np.asarray(list(a), dtype=float) for a in (value, lo, hi))
    if v.size == 0 or not (np.isfinite(lo_).any() or np.isfinite(hi_).any()):
        return None
    return np.vstack([np.where(np.isfinite(lo_), v - lo_, 0.0), np.where(np.isfinite(hi_), hi_ - v, 0.0)]).clip(0)


def uncrowded(x: Iterable[float], y: Iterable[float], min_gap: float = 0.05, keep: Iterable[int] = ()) -> list[bool]:
    """Which points may carry a text label without touching another label: points are taken in
    order (those in `keep` first) and one is labelled when it lies at least `min_gap` (in units of
    the data's range on each axis, Chebyshev distance) from every point labelled before it."""
    xs, ys = (np.asarray(list(a), dtype=float) for a in (x, y))
    span = lambda a: float(np.nanmax(a) - np.nanmin(a)) or 1.0  # noqa: E731
    pts = np.column_stack([(xs - np.nanmin(xs)) / span(xs), (ys - np.nanmin(ys)) / span(ys)]) if xs.size else xs
    order = list(dict.fromkeys([*keep, *range(len(xs))]))
    chosen: list[int] = []
    for i in order:
        if all(np.max(np.abs(pts[i] - pts[j])) >= min_gap for j in chosen):
            chosen.append(i)
    return [i in chosen for i in range(len(xs))]


def save(fig: Figure, out_dir: str | os.PathLike, stem: str) -> list[Path]:
    """Write `stem.png` and `stem.pdf` atomically under `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = out / f"{stem}.{fmt}"
        atomic_write(path, lambda tmp, fmt=fmt: fig.savefig(tmp, dpi=DPI, format=fmt))
        paths.append(path)
    return paths
