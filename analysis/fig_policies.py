"""Per-step tree policies against node budget: static, dynamic and hybrid (prompt lookup + heads).

``policies``: `policy_budget` -> policy_budget. From ``calibration/<heads>/policies.csv``
(`bench.policy_replay`: every policy replayed on the calibration text at every budget, hybrids at
every lookup share) and, when present, ``policy_validation.csv`` beside it (a bench run's
measured accepted length). (a) accepted length per step against node budget: static tree,
dynamic tree, and the hybrids at their best lookup share (the number beside each point), with the
run's measured points as crosses (labelled by turn); (b) predicted tokens/s on the latency profile
the table was made with (accepted length / verify time of that many nodes), the same policies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from analysis import load, load_calibration
from analysis.style import caption, new_figure, save
from common.errors import MissingResult
from common.io import read_csv

POLICIES_FILE = "policies.csv"
VALIDATION_FILE = "policy_validation.csv"
COMMAND = "python -m bench.policy_replay --out results/calibration/<heads>/policies.csv"
LABELS = {"static": "static tree", "dynamic": "dynamic tree", "hybrid": "hybrid: lookup + static heads",
          "hybrid-dynamic": "hybrid: lookup + dynamic heads"}


def best_rows(table: pd.DataFrame, key: str) -> pd.DataFrame:
    """Per policy and budget, the row with the highest `key` (the best lookup share of a hybrid)."""
    return table.loc[table.groupby(["policy", "budget"])[key].idxmax()].sort_values(["policy", "budget"])


def policy_budget(results: Path, out: Path, calibration: str | None = None, **_: Any) -> list[Path]:
    cal = load_calibration.calibration_dir(results, calibration)
    path = cal / POLICIES_FILE
    if not path.is_file():
        raise MissingResult(f"no {POLICIES_FILE} in {load.display(cal)} (run `{COMMAND}` first)")
    table = read_csv(path, "policies table", required=["policy", "budget", "lookup_nodes", "tokens_per_step"])
    has_speed = "tokens_per_s" in table.columns and table["tokens_per_s"].notna().all()
    fig, axes = new_figure(ncols=2 if has_speed else 1, width=4.8, height=3.6)
    panels = [("tokens_per_step", axes[0, 0], "accepted tokens per step")]
    if has_speed:
        panels.append(("tokens_per_s", axes[0, 1], "predicted tokens/s (latency profile)"))
    for key, ax, ylabel in panels:
        best = best_rows(table, key)
        for policy, g in best.groupby("policy", sort=False):
            ax.plot(g["budget"], g[key], marker="o", ms=3.5, lw=1.4, label=LABELS.get(policy, policy))
            if policy.startswith("hybrid"):
                for _, r in g.iterrows():
                    ax.annotate(f"L{int(r['lookup_nodes'])}", (r["budget"], r[key]), fontsize=6,
                                xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("node budget (tokens verified per step)")
        ax.set_ylabel(ylabel)
    val_path = cal / VALIDATION_FILE
    if val_path.is_file():
        val = read_csv(val_path, "policy validation", required=["method", "turn", "nodes", "measured"])
        ax = axes[0, 0]
        for (method, turn), g in val.groupby(["method", "turn"], sort=False):
            ax.scatter(g["nodes"], g["measured"], marker="x", s=30, color="k" if turn == "all" else "0.55", zorder=5)
            ax.annotate(f"{method} (turn {turn}) measured", (g["nodes"].iloc[0], g["measured"].iloc[0]), fontsize=6,
                        xytext=(4, -8), textcoords="offset points")
    axes[0, 0].set_title("(a) replayed on the calibration text")
    axes[0, 0].legend(frameon=False, fontsize=7)
    if has_speed:
        axes[0, 1].set_title("(b) predicted speed: best lookup share per budget")
    meta_path = cal / "calibration.json"
    meta = load.read_json(meta_path) if meta_path.is_file() else {}
    latency = f" | latency: {table['latency'].iloc[0]}" if has_speed and "latency" in table.columns else ""
    caption(fig, load_calibration.calibration_caption(meta, path) + latency)
    return save(fig, out, "policy_budget")
