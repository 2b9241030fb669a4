"""Figures of the machine and of training: latency profile, training curves.

Drawn through the registry in `analysis.figures` (``python -m analysis.figures latency training``)
from the latency profiles (`bench.latency`) and the heads' training logs (`medusa.train`).

7. ``latency``: `latency_profile` -> latency_<device>. Verify time against query tokens per context
   (median, p10-p90 bars) with the weights-over-bandwidth floor and the compute floor
   (2 x parameters x tokens / measured matmul FLOP/s), one figure per ``latency/<device>.csv``.
8. ``training``: `training_curves` -> training_<heads>. Loss per head (a, ``heads/<heads>/loss.csv``:
   step, loss, loss_head<k>) and held-out top-1 accuracy per head (b, ``accuracy_history.csv`` rows
   with topk 1, Wilson bands; else the final ``accuracy.csv``) against the step (`medusa.train`);
   provenance from ``training_record.json`` and ``config.json``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter

from analysis import load, load_calibration, load_latency
from analysis.style import caption, new_figure, save, yerr


def _threads(n: Any) -> str:
    return f"{int(n)} thread{'s' if int(n) != 1 else ''}"


# ---- 7. latency profile -------------------------------------------------------------------------
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1}


def latency_profile(results: Path, out: Path, **_: Any) -> list[Path]:
    written: list[Path] = []
    for path in load_latency.latency_files(results):
        df = load_latency.load_latency(path)
        for (backbone, dtype), d in df.groupby(["backbone", "dtype"], sort=False):
            fig, axes = new_figure(width=6.0, height=4.0)
            ax = axes[0, 0]
            for j, (ctx, g) in enumerate(d.groupby("context")):
                g = g.sort_values("n_query")
                ax.errorbar(g["n_query"], 1e3 * g["median_s"],
                            yerr=yerr(1e3 * g["median_s"], 1e3 * g["p10_s"], 1e3 * g["p90_s"]),
                            marker="o", ms=3, lw=1, capsize=2, color=f"C{j}", label=f"context {int(ctx)} tokens")
            n = np.unique(d["n_query"].to_numpy(float))
            first = d.iloc[0]
            mem = 1e3 * float(first["floor_s"])
            params = float(first["weight_bytes"]) / DTYPE_BYTES.get(str(dtype), 4)
            compute = 1e3 * 2 * params * n / (float(first["matmul_gflops"]) * 1e9)
            ax.plot(n, np.full_like(n, mem), color="k", ls="--", lw=1,
                    label=f"memory floor: weights / {float(first['mem_bandwidth_gbs']):.0f} GB/s")
            ax.plot(n, compute, color="0.5", ls=":", lw=1.2,
                    label=f"compute floor: 2 x params x n / {float(first['matmul_gflops']):.0f} GFLOP/s")
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_yscale("log")
            ax.set_xlabel("query tokens verified in one forward (n)")
            ax.set_ylabel("verify forward time (ms)")
            ax.set_title(f"Latency profile: {backbone} {dtype} (median, p10-p90 bars)")
            ax.legend(frameon=False, fontsize=6.5)
            threads = f", {_threads(first['threads'])}" if "threads" in d.columns and pd.notna(first.get("threads")) else ""
            commit = f" | commit {first['commit']}" if "commit" in d.columns and pd.notna(first.get("commit")) else ""
            caption(fig, f"device: {first['device_name']}{threads}, {dtype} | model: {backbone} | source: {load.display(path)}{commit}")
            stem = f"latency_{path.stem}" if df.groupby(["backbone", "dtype"]).ngroups == 1 else \
                f"latency_{path.stem}_{re.sub(r'[^A-Za-z0-9]+', '-', f'{backbone}-{dtype}')}"
            written += save(fig, out, stem)
    return written


# ---- 8. training curves -------------------------------------------------------------------------
def training_curves(results: Path, out: Path, **_: Any) -> list[Path]:
    written: list[Path] = []
    for d in load.heads_dirs(results):
        tr = load.load_training(d)
        loss = tr.loss.sort_values("step")
        fig, axes = new_figure(ncols=2, width=4.8, height=3.6)
        ax = axes[0, 0]
        ax.plot(loss["step"], loss["loss"], color="k", lw=1.2, label="total (decay-weighted sum)")
        for k, c in tr.head_loss_columns().items():
            ax.plot(loss["step"], loss[c], color=f"C{k - 1}", lw=1, label=f"head {k}")
        ax.set_xlabel("training step (optimizer updates)")
        ax.set_ylabel("cross-entropy loss (nats/token)")
        ax.set_title("(a) training loss per head")
        ax.legend(frameon=False, fontsize=6.5)
        ax = axes[0, 1]
        if tr.history is not None:
            h = tr.history[tr.history["topk"] == 1].sort_values("step")
            for k, g in h.groupby("head"):
                lo, hi = load_calibration.wilson(g["accuracy"].to_numpy(float), g["count"].to_numpy(float))
                line, = ax.plot(g["step"], 100 * g["accuracy"], marker="o", ms=2.5, lw=1, color=f"C{int(k) - 1}",
                                label=f"head {int(k)}")
                ax.fill_between(g["step"], 100 * lo, 100 * hi, color=line.get_color(), alpha=0.2, lw=0)
            ax.set_xlabel("training step (optimizer updates)")
            ax.set_title("(b) held-out top-1 accuracy per head, 95% Wilson band")
            ax.legend(frameon=False, fontsize=6.5)
        elif (d / "accuracy.csv").is_file():
            acc = load_calibration.head_accuracy_from_file(d / "accuracy.csv")
            top1 = acc.table[acc.table["topk"] == 1]
            ax.bar(top1["head"], 100 * top1["accuracy"], color=[f"C{k - 1}" for k in top1["head"]], capsize=3,
                   yerr=yerr(100 * top1["accuracy"], 100 * top1["lo"], 100 * top1["hi"]))
            ax.set_xlabel("head (1-based)")
            ax.set_title("(b) final held-out top-1 accuracy per head (95% Wilson CI)")
        else:
            ax.text(0.5, 0.5, "no accuracy_history.csv or accuracy.csv", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlabel("training step (optimizer updates)")
        ax.set_ylabel("top-1 accuracy (%)")
        m = tr.meta
        device = f"device: {m.get('device', 'unknown device')}" + (f", {_threads(m['threads'])}" if "threads" in m else "") \
            + (f", {m['dtype']}" if "dtype" in m else "")
        commit = f" | commit {m['commit']}" if "commit" in m else ""
        caption(fig, f"{device} | model: {m.get('backbone', 'unknown model')} + heads {d.name} | "
                     f"source: {load.display(d / 'loss.csv')}{commit}")
        written += save(fig, out, f"training_{d.name}")
    return written
