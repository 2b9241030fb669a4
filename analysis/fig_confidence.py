"""Reliability of the heads' probabilities: the calibrated confidence map per head.

``confidence``: `reliability` -> confidence_reliability. From ``calibration/<heads>/confidence.csv``
(`bench.calibrate`, read through `trees.confidence.load_confidence`): (a) per head, the isotonic
map from a candidate's softmax probability to the measured chance that it is the true token
(each block drawn over its probability range; on the dashed diagonal a head would be calibrated
as it is, below it the head is over-confident), (b) the share of candidates at or below each
probability (where the heads' probabilities actually lie, so where the map matters).

Calibrations made before the table existed lack it: the figure is then skipped with the command
that makes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from analysis import load, load_calibration
from analysis.style import caption, new_figure, save
from trees.confidence import CONFIDENCE_FILE, load_confidence


def reliability(results: Path, out: Path, calibration: str | None = None, **_: Any) -> list[Path]:
    cal = load_calibration.calibration_dir(results, calibration)
    cmap = load_confidence(cal)
    meta_path = cal / "calibration.json"
    meta = load.read_json(meta_path) if meta_path.is_file() else {}
    fig, axes = new_figure(ncols=2, width=4.8, height=3.6)
    ax, share = axes[0, 0], axes[0, 1]
    for head, g in cmap.table.groupby("head"):
        # A step per block over [prob_lo, prob_hi] at its measured hit rate.
        x = np.column_stack([g["prob_lo"], g["prob_hi"]]).ravel()
        y = np.repeat(g["confidence"].to_numpy(), 2)
        line, = ax.plot(x, y, lw=1.4, label=f"head {head}")
        counts = g["count"].to_numpy()
        share.step(g["prob_hi"], 100 * np.cumsum(counts) / counts.sum(), where="post", color=line.get_color(),
                   label=f"head {head}")
    ax.plot([0, 1], [0, 1], ls="--", color="0.5", lw=1, label="calibrated")
    ax.set_xlabel("head softmax probability of the candidate")
    ax.set_ylabel("P(candidate is the true token)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("(a) reliability: isotonic map per head")
    ax.legend(frameon=False, fontsize=7)
    share.set_xscale("log")
    share.set_xlabel("head softmax probability (log scale)")
    share.set_ylabel("candidates at or below (%)")
    share.set_ylim(0, 100)
    share.set_title("(b) where the probabilities lie")
    caption(fig, load_calibration.calibration_caption(meta, cal / CONFIDENCE_FILE))
    return save(fig, out, "confidence_reliability")
