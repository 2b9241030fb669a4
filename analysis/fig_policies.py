"""Per-step tree policies against node budget: static, dynamic and hybrid (prompt lookup + heads).

``policies``: `policy_budget` -> policy_budget. From ``calibration/<heads>/policies.csv``
(`bench.policy_replay`: every policy replayed on the calibration text at every budget, hybrids at
every lookup share) and, when present, ``policy_validation.csv`` beside it (a bench run's
measured accepted length). (a) accepted length per step against node budget: static tree,
dynamic tree, and the hybrids at their best lookup share (the number beside each point), with the
runs' measured points (a marker per method; black: both turns, grey: each turn alone); the number L beside a static-heads hybrid point is its lookup share; (b) predicted tokens/s on the latency profile
the table was made with (accepted length / verify time of that many nodes), the same policies.

``dynamic-trees``: `dynamic_trees` -> dynamic_trees_16. Three real per-step dynamic trees from the
calibration's candidates (``probs.parquet``) and confidence map, at steps where head 1 was sure,
middling and lost, with the path the text took.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import cm, colors

from analysis import load, load_calibration
from analysis.style import caption, new_figure, save
from common.errors import MissingResult
from common.io import one_of, read_csv
from trees.confidence import CANDIDATES_FILES, load_candidates, load_confidence
from trees.dynamic import DynamicConfig, dynamic_tree
from trees.plot import layout

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
            if policy == "hybrid":  # the dynamic-heads hybrid's shares are nearly always the same
                for _, r in g.iterrows():
                    ax.annotate(f"L{int(r['lookup_nodes'])}", (r["budget"], r[key]), fontsize=6,
                                xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(table["budget"].unique()))
        ax.set_xticklabels([str(b) for b in sorted(table["budget"].unique())])
        ax.minorticks_off()
        ax.set_xlabel("node budget (tokens verified per step)")
        ax.set_ylabel(ylabel)
    val_path = cal / VALIDATION_FILE
    if val_path.is_file():
        val = read_csv(val_path, "policy validation", required=["method", "turn", "nodes", "measured"])
        ax = axes[0, 0]
        markers = dict(zip(sorted(val["method"].unique()), "xP*^v"))
        for (method, turn), g in val.groupby(["method", "turn"], sort=False):
            every = str(turn) == "all"
            ax.scatter(g["nodes"], g["measured"], marker=markers[method], s=40 if every else 14,
                       color="k" if every else "0.6", zorder=5, label=f"{method}, measured" if every else None)
    axes[0, 0].set_title("(a) replayed on the calibration text")
    axes[0, 0].legend(frameon=False, fontsize=7)
    if has_speed:
        axes[0, 1].set_title("(b) predicted speed: best lookup share per budget")
    meta_path = cal / "calibration.json"
    meta = load.read_json(meta_path) if meta_path.is_file() else {}
    latency = f" | latency: {table['latency'].iloc[0]}" if has_speed and "latency" in table.columns else ""
    caption(fig, load_calibration.calibration_caption(meta, path) + latency)
    return save(fig, out, "policy_budget")


def dynamic_trees(results: Path, out: Path, calibration: str | None = None, budget: int = 16, **_: Any) -> list[Path]:
    """Three real per-step dynamic trees of `budget` nodes, from calibration steps where head 1 was
    sure, middling and lost (its top candidate's calibrated confidence at the 90th, 50th and 10th
    percentile over all positions): the tree the engine's `medusa-dynamic` builds at that step,
    nodes labelled head/rank0 and coloured by estimated path acceptance, the true path in red."""
    cal = load_calibration.calibration_dir(results, calibration)
    cand_path = one_of(cal, CANDIDATES_FILES)
    if not cand_path.is_file():
        raise MissingResult(f"no candidates table in {load.display(cal)} (run `python -m bench.calibrate --fresh` first)")
    cmap = load_confidence(cal)
    cand = load_candidates(cand_path)
    heads, width = int(cand["head"].max()), int(cand["rank0"].max()) + 1
    top1 = cand[(cand["head"] == 1) & (cand["rank0"] == 0)].copy()
    top1["confidence"] = cmap.apply(top1["prob"].to_numpy()[None, :])[0]
    picks = [top1.iloc[(top1["confidence"] - top1["confidence"].quantile(q)).abs().argmin()] for q in (0.9, 0.5, 0.1)]
    fig, axes = new_figure(ncols=3, width=3.4, height=4.2)
    norm, colour = colors.Normalize(0, 1), matplotlib.colormaps["viridis"]
    for ax, pick, label in zip(axes[0], picks, ("sure", "middling", "lost")):
        rows = cand[(cand["prompt"] == pick["prompt"]) & (cand["position"] == pick["position"])]
        probs = np.zeros((heads, width))
        probs[rows["head"].to_numpy() - 1, rows["rank0"].to_numpy()] = rows["prob"].to_numpy()
        hit = {(int(r.head), int(r.rank0)) for r in rows.itertuples() if r.hit}
        dt = dynamic_tree(cmap.apply(probs), DynamicConfig(budget=budget))
        tree = dt.tree()
        pos = layout(tree)
        true_path = [()]
        for h in range(1, heads + 1):
            r = next((r for (hh, r) in hit if hh == h), None)
            if r is None or (*true_path[-1], r) not in tree.paths:
                break
            true_path.append((*true_path[-1], r))
        on_true = {0} | {tree.paths.index(p) + 1 for p in true_path[1:]}
        for i, p in enumerate(dt.parents.tolist()):
            if p >= 0:
                red = i in on_true and p in on_true
                ax.plot([pos[p][0], pos[i][0]], [pos[p][1], pos[i][1]], color="C3" if red else "0.7",
                        lw=1.6 if red else 0.8, zorder=1)
        for i, (x, y) in enumerate(pos):
            c = "0.3" if i == 0 else colour(norm(dt.value[i]))
            ax.scatter([x], [y], s=150, color=c, edgecolors="C3" if i in on_true and i else "0.2",
                       linewidths=1.2 if i in on_true and i else 0.4, zorder=2)
            text = "root" if i == 0 else f"{int(dt.head[i])}/{int(dt.rank0[i])}"
            ax.annotate(text, (x, y), ha="center", va="center", fontsize=4.5,
                        color="white" if i == 0 or norm(dt.value[i]) < 0.6 else "black", zorder=3)
        ax.set_title(f"head 1 {label}: top-1 confidence {pick['confidence']:.2f}\n"
                     f"E[tokens/step] {dt.expected_tokens:.2f}, accepted {len(true_path)}", fontsize=7)
        ax.set_xlabel("depth (head)")
        ax.set_xticks(range(int(dt.depth.max()) + 1))
        ax.set_yticks([])
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=colour), ax=axes[0, -1], fraction=0.05, pad=0.02,
                 label="estimated path acceptance")
    meta_path = cal / "calibration.json"
    meta = load.read_json(meta_path) if meta_path.is_file() else {}
    caption(fig, f"dynamic trees of {budget} nodes at three real steps; colour = estimated path acceptance, "
                 f"red = the true path | " + load_calibration.calibration_caption(meta, cand_path))
    return save(fig, out, f"dynamic_trees_{budget}")
