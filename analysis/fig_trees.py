"""Figures of the heads, the tree and its search: head accuracy, searched tree, validation, Pareto.

Drawn through the registry in `analysis.figures` (``python -m analysis.figures head-accuracy tree
validation pareto``) from the calibration tables, tree files and Pareto fronts under results/.

4. ``head-accuracy``: `head_accuracy` -> head_accuracy. Cumulative top-i accuracy per head with 95%
   Wilson intervals (a) and the per-rank accuracy heatmap (b), from
   ``calibration/<heads>/accuracy.csv`` (else the heads' training report ``heads/<heads>/accuracy.csv``).
5. ``tree``: `searched_tree` -> searched_tree. The tree ``trees/default.json`` (``--tree NAME``,
   else the newest ``trees/*.json``) drawn by `trees.plot.plot_tree`, nodes labelled head/rank0,
   coloured by P(accepted) under the empirical model (``calibration/<heads>/paths.csv``).
6. ``validation``: `acceptance_validation` -> acceptance_validation. Predicted (independence,
   empirical and replay model) against measured accepted length per tree (a), and the signed
   relative error (predicted - measured) / measured in % per tree (b: right of 0 = the model
   over-predicts), from ``calibration/*/validation*.csv`` (`bench.validate`).
9. ``pareto``: `pareto_front` -> pareto_<front>. The hardware-aware search's Pareto front of
   predicted accepted length (tokens/step) against verify time per step on the latency profile's
   machine, from ``trees/<name>_pareto.csv`` (``--tree NAME``, else the newest front) written by
   ``python -m trees.search --method optuna --pareto``; the chosen (fastest) tree is starred and
   the dashed line through the origin is its tokens/s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from analysis import load, load_calibration
from analysis.style import caption, new_figure, save, uncrowded
from trees.acceptance_model import expected_tokens
from trees.plot import plot_tree
from trees.tree import Tree


# ---- 4. head accuracy ---------------------------------------------------------------------------
def head_accuracy(results: Path, out: Path, calibration: str | None = None, **_: Any) -> list[Path]:
    acc = load_calibration.head_accuracy(results, calibration)
    t = acc.table
    fig, axes = new_figure(ncols=2, width=4.8, height=3.6)
    ax = axes[0, 0]
    for k in range(1, acc.num_heads + 1):
        g = t[t["head"] == k]
        line, = ax.plot(g["topk"], 100 * g["accuracy"], marker="o", ms=3, label=f"head {k}")
        if g["lo"].notna().any():
            ax.fill_between(g["topk"], 100 * g["lo"], 100 * g["hi"], color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlabel("i (true token within the head's top-i)")
    ax.set_ylabel("top-i accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("(a) cumulative top-i accuracy, 95% Wilson band")
    ax.legend(frameon=False)
    ax = axes[0, 1]
    im = ax.imshow(100 * acc.per_rank, aspect="auto", cmap="viridis", vmin=0)
    for (k, i), v in np.ndenumerate(acc.per_rank):
        ax.text(i, k, f"{100 * v:.0f}", ha="center", va="center", fontsize=6,
                color="white" if v < 0.6 * acc.per_rank.max() else "black")
    ax.set_xticks(range(acc.per_rank.shape[1]))
    ax.set_yticks(range(acc.num_heads), [str(k + 1) for k in range(acc.num_heads)])
    ax.set_xlabel("rank0 of the true token (0 = top-1)")
    ax.set_ylabel("head (1-based)")
    ax.set_title("(b) P(rank of true token = i) (%)")
    ax.grid(False)
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    caption(fig, load_calibration.calibration_caption(acc.meta, acc.source))
    return save(fig, out, "head_accuracy")


# ---- 5. the searched tree -----------------------------------------------------------------------
def searched_tree(results: Path, out: Path, tree: str | None = None, calibration: str | None = None, **_: Any) -> list[Path]:
    path = load_calibration.tree_file(results, tree)
    t = Tree.load(path)
    model, kind, cal = load_calibration.acceptance_model(results, calibration)

    meta = load.read_json(cal / "calibration.json")
    source = cal / ("paths.csv" if kind == "empirical" else "accuracy.csv")
    title = (f"{t.name} ({path.name}): {t.node_budget} nodes, labels head/rank0, colour = {kind} P(accepted), "
             f"E[tokens/step] = {expected_tokens(t, model):.2f}\n"
             + load_calibration.calibration_caption(meta, source).replace(" | source:", "\nsource:"))
    Path(out).mkdir(parents=True, exist_ok=True)
    return [plot_tree(t, model, Path(out) / f"searched_tree.{fmt}", title=title) for fmt in ("png", "pdf")]


# ---- 6. predicted vs measured accepted length ---------------------------------------------------
def acceptance_validation(results: Path, out: Path, **_: Any) -> list[Path]:
    v = load_calibration.load_validation(results)
    models = [(c, m) for c, m in (("independence", "o"), ("empirical", "s"), ("replay", "^"))
              if f"predicted_{c}" in v.columns and v[f"predicted_{c}"].notna().any()]
    fig, axes = new_figure(ncols=2, width=4.6, height=4.0)
    ax = axes[0, 0]
    for j, (model, marker) in enumerate(models):
        for by, fill in (("engine", True), ("replay", False)):
            g = v[(v["measured_by"] == by) & v[f"predicted_{model}"].notna()]
            if len(g):
                ax.scatter(g["measured"], g[f"predicted_{model}"], marker=marker, s=36, color=f"C{j}",
                           facecolors=f"C{j}" if fill else "none", label=f"{model} model vs {by}")
    cols = ["measured"] + [f"predicted_{m}" for m, _ in models]
    lo, hi = float(np.nanmin(v[cols].to_numpy(float))), float(np.nanmax(v[cols].to_numpy(float)))
    pad = 0.05 * max(hi - lo, 0.1)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.4", lw=0.8, ls="--", label="prediction = measurement")
    ax.set_xlabel("measured accepted length (tokens/step)")
    ax.set_ylabel("predicted accepted length (tokens/step)")
    ax.set_title("(a) prediction against measurement, per tree")
    ax.legend(frameon=False, fontsize=6)
    ax = axes[0, 1]
    labels = [f"{r.tree} ({int(r.node_budget)}, {r.measured_by})" for r in v.itertuples()]
    y = np.arange(len(v))
    width = 0.8 / max(1, len(models))
    for j, (model, _) in enumerate(models):
        err = 100 * (v[f"predicted_{model}"].astype(float) - v["measured"]) / v["measured"]
        ax.barh(y - 0.4 + (j + 0.5) * width, err, width, color=f"C{j}", label=model)
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_yticks(y, labels, fontsize=6)
    ax.set_xlabel("signed error: (predicted - measured) / measured (%)")
    ax.set_title("(b) signed relative error per tree (nodes, measured by)\n> 0: model over-predicts, < 0: under-predicts",
                 pad=16)
    # Above the bars, never on them: the bars fill whichever side the errors fall on.
    ax.legend(frameon=False, ncols=len(models), loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=6.5,
              borderaxespad=0.1)
    cal = load.results_path(results) / "calibration" / str(v["calibration"].iloc[0])
    meta = load.read_json(cal / "calibration.json")
    runs = "; ".join(f"{by}: {int(g['prompts'].iloc[0])} MT-Bench prompts x {int(g['max_new_tokens'].iloc[0])} tokens"
                     for by, g in v.groupby("measured_by", sort=False)) if {"prompts", "max_new_tokens"} <= set(v.columns) else ""
    caption(fig, load_calibration.calibration_caption(meta, cal / ", ".join(dict.fromkeys(v["file"].astype(str))))
            + (f"; greedy, {runs}" if runs else ""))
    return save(fig, out, "acceptance_validation")



# ---- 9. Pareto front of the hardware-aware search ----------------------------------------------
PARETO_COMMAND = "python -m trees.search --method optuna --pareto --budget 64"
PARETO_REQUIRED = ("node_budget", "tokens_per_step", "verify_s", "tokens_per_s", "chosen")


def pareto_file(results: Path, tree: str | None = None) -> Path:
    """trees/<tree>_pareto.csv, else the newest trees/*_pareto.csv."""
    root = results / "trees"
    if tree is not None:
        return Path(tree) if tree.endswith(".csv") else root / f"{Path(tree).stem}_pareto.csv"
    found = sorted(root.glob("*_pareto.csv"), key=lambda p: (p.stat().st_mtime, p.name)) if root.is_dir() else []
    if not found:
        raise load.MissingResult(f"no Pareto front under {load.display(root)} (run `{PARETO_COMMAND}` first)")
    return found[-1]


def pareto_front(results: Path, out: Path, tree: str | None = None, **_: Any) -> list[Path]:
    path = pareto_file(results, tree)
    front = load.read_table(path, PARETO_REQUIRED, PARETO_COMMAND, "Pareto front").sort_values("verify_s")
    ms = 1e3 * front["verify_s"].astype(float)
    fig, axes = new_figure(width=5.5, height=3.8)
    ax = axes[0, 0]
    ax.plot(ms, front["tokens_per_step"], drawstyle="steps-post", color="0.6", lw=0.8, zorder=1)
    ax.scatter(ms, front["tokens_per_step"], s=22, color="C0", zorder=2, label="Pareto-optimal tree")
    is_chosen = (front["chosen"].astype(str).str.lower() == "true").to_numpy()
    # Node budgets as labels where they do not crowd each other; the chosen tree's is in the legend
    # (its neighbours stay unlabelled, clear of the star).
    show = uncrowded(ms, front["tokens_per_step"], min_gap=0.06, keep=[*np.flatnonzero(is_chosen), len(front) - 1])
    for x, y, n, s, c in zip(ms, front["tokens_per_step"], front["node_budget"], show, is_chosen):
        if s and not c:
            ax.annotate(f"{int(n)}", (x, y), textcoords="offset points", xytext=(3, -8), fontsize=6, color="0.3")
    chosen = front[is_chosen]
    if len(chosen):
        c = chosen.iloc[0]
        # Hollow, so the chosen tree's own point stays visible inside it.
        ax.scatter([1e3 * c["verify_s"]], [c["tokens_per_step"]], marker="*", s=260, facecolors="none",
                   edgecolors="C3", linewidths=1.3, zorder=3,
                   label=f"fastest: {int(c['node_budget'])} nodes, {c['tokens_per_s']:.1f} tokens/s")
        xs = np.array([0.0, float(ms.max()) * 1.05])
        ax.plot(xs, c["tokens_per_s"] * xs / 1e3, color="C3", lw=0.8, ls="--", label="same tokens/s")
    ax.set_xlim(0, float(ms.max()) * 1.08)
    ax.set_ylim(0.9, float(front["tokens_per_step"].max()) * 1.08)
    ax.set_xlabel("verify time per step (ms, latency profile)")
    ax.set_ylabel("predicted accepted length (tokens/step)")
    ax.set_title("accepted length against verify cost (labels: node budget, where uncrowded)")
    ax.legend(frameon=False, fontsize=6.5, loc="lower right")
    first = front.iloc[0]
    parts = [f"latency profile: {first['latency']}" if "latency" in front.columns else "",
             f"accuracy: {first['accuracy']}" if "accuracy" in front.columns else "",
             f"source: {load.display(path)}", f"commit {first['commit']}" if "commit" in front.columns else ""]
    caption(fig, " | ".join(p for p in parts if p))
    return save(fig, out, f"pareto_{path.stem.removesuffix('_pareto')}")
