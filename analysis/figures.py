"""The paper-style figures, each made from tidy files under results/ only (no model is run).

    python -m analysis.figures                         # every figure whose inputs exist
    python -m analysis.figures speedup latency         # only these (exit 2 if one cannot be made)
    python -m analysis.figures --results results/ --out results/figures/ --run mtbench
    python -m analysis.figures --list

Behaviour: without names, every figure whose inputs exist is written (PNG and PDF) and each one
that cannot be made is reported on one line ``skipped <name>: <reason>`` naming the command to run
first; the exit status is 0. Named figures must all be made: the first that cannot ends the command
with one ``error: ...`` line and exit status 2.

Figures (name: function -> file stem; what it reads):

1. ``speedup``: `speedup_by_category` -> speedup_by_category. Paper Fig. 3b. Speedup over
   ``hf-greedy`` per prompt category for medusa, medusa-typical, hf-pld and ar, from the main
   benchmark run's summary (metric ``speedup_vs_hf-greedy_mean``, 95% bootstrap interval over
   prompts). Main run: ``--run NAME``, else ``bench/mtbench``, else the largest run holding
   hf-greedy and another method.
2. ``budget``: `tree_budget` -> tree_budget. Paper Fig. 4. Mean accepted length (a) and tokens/s (b)
   against the node budget, one point per (run, tree) of method ``medusa`` over *all* runs under
   ``bench/`` (records' ``tree`` and ``node_budget`` columns; summary metrics
   ``mean_accepted_length`` and ``tokens_per_s``), grouped by tree family from the tree name:
   ``chain_*``, ``dense_*``, ``mc_sim_7b_63`` (paper), anything else = sparse searched tree; ``ar``
   is the plain 1-node point. Only runs of the most common device and thread count are drawn. The
   fastest measured tree is starred (the hardware-aware optimum); a tree found by the Optuna search
   (run.json tree meta ``method: optuna``) is ringed.
3. ``typical``: `typical_acceptance` -> typical_acceptance. Paper Fig. 5. Accepted length against
   each quality measure of the summary (log-likelihood per token at T, argmax agreement, greedy
   prefix, distinct-2, repetition rate) for ``medusa-typical`` over an eps sweep, i.e. its runs
   grouped by the records' ``posterior_threshold`` at one ``temperature`` (``--temperature``, else
   the temperature with the most eps values, and the tree most of its runs used); references at the
   same temperature, one each (the run with the most prompts): ``medusa`` (greedy acceptance, same
   tree), ``hf-greedy`` and ``hf-sample`` (plain decoding, accepted length 1).
4. ``head-accuracy``: `head_accuracy` -> head_accuracy. Cumulative top-i accuracy per head with 95%
   Wilson intervals (a) and the per-rank accuracy heatmap (b), from
   ``calibration/<heads>/accuracy.csv`` (else the heads' training report ``heads/<heads>/accuracy.csv``).
5. ``tree``: `searched_tree` -> searched_tree. The tree ``trees/default.json`` (``--tree NAME``,
   else the newest ``trees/*.json``) drawn by `trees.plot.plot_tree`, nodes labelled head/rank0,
   coloured by P(accepted) under the empirical model (``calibration/<heads>/paths.csv``).
6. ``validation``: `acceptance_validation` -> acceptance_validation. Predicted (independence and
   empirical model) against measured accepted length per tree, from
   ``calibration/*/validation*.csv`` (`trees.validate`).
7. ``latency``: `latency_profile` -> latency_<device>. Verify time against query tokens per context
   (median, p10-p90 bars) with the weights-over-bandwidth floor and the compute floor
   (2 x parameters x tokens / measured matmul FLOP/s), one figure per ``latency/<device>.csv``.
8. ``training``: `training_curves` -> training_<heads>. Loss per head (a, ``heads/<heads>/loss.csv``:
   step, loss, loss_head<k>) and held-out top-1 accuracy per head (b, ``accuracy_history.csv`` rows
   with topk 1, Wilson bands; else the final ``accuracy.csv``) against the step (`medusa.train`);
   provenance from ``training_record.json`` and ``config.json``.

Every figure carries axis labels with units and a caption line naming device and model.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter

from analysis import load
from analysis.style import FAMILY_STYLE, caption, method_color, new_figure, save, yerr
from medusa.errors import WorkbenchError, run_cli

DEFAULT_OUT = load.DEFAULT_RESULTS / "figures"
SPEEDUP_METHODS = ("medusa", "medusa-typical", "hf-pld", "ar")
QUALITY_LABELS = {
    "loglik_per_token": "log-likelihood per token at T (nats)",
    "argmax_agreement": "argmax agreement (share of tokens)",
    "greedy_prefix": "prefix shared with hf-greedy (tokens)",
    "distinct_2": "distinct-2 (share of bigrams)",
    "repetition_rate": "repetition rate (share of 4-grams)",
}
FAMILY_LABELS = {"sparse": "sparse (searched)", "paper": "mc_sim_7b_63 (paper)", "dense": "dense",
                 "chain": "chain (top-1)", "plain": "plain decoding (ar)", "optuna": "Optuna search (hardware-aware)"}


def _device_filter(rows: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Keep rows measured on the most common (device, threads); name the ones dropped."""
    key = rows["device_name"].astype(str) + ", " + rows["threads"].astype(int).astype(str) + " threads"
    top = key.mode().iloc[0]
    dropped = sorted(set(key) - {top})
    if dropped:
        load.note(f"tokens/s from other machines left out: {', '.join(dropped)}")
    return rows[key == top], top


def runs_records(runs: Sequence[load.Run], names: set[str]) -> pd.DataFrame:
    return pd.concat([r.records for r in runs if r.name in names], ignore_index=True)


# ---- 1. speedup per category --------------------------------------------------------------------
def speedup_by_category(results: Path, out: Path, run: str | None = None, **_: Any) -> list[Path]:
    runs = load.load_runs(results)
    r = load.pick_run(runs, run, need=("hf-greedy",))
    s = r.summary
    metric = "speedup_vs_hf-greedy_mean"
    s = s[s["metric"] == metric]
    methods = [m for m in SPEEDUP_METHODS if m in set(s["method"])]
    if not methods:
        raise load.MissingResult(f"run {r.name} has no speedup over hf-greedy (run `{load.BENCH_COMMAND}` first)")
    cats = [c for c in dict.fromkeys(s["category"].astype(str)) if c != "all"] + ["all"]
    fig, axes = new_figure(width=min(10.0, 3.0 + 0.3 * len(cats) * len(methods)), height=3.8)
    ax = axes[0, 0]
    width = 0.8 / len(methods)
    x = np.arange(len(cats))
    for i, m in enumerate(methods):
        g = s[s["method"] == m].set_index(s[s["method"] == m]["category"].astype(str)).reindex(cats)
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, g["value"], width, label=m, color=method_color(m, i),
               yerr=yerr(g["value"], g["lo"], g["hi"]), capsize=2, error_kw={"lw": 0.8})
    ax.axhline(1.0, color="0.3", lw=0.8, ls="--")
    ax.set_xticks(x, cats, rotation=30, ha="right")
    source = load.mode_value(r.records["source"]) or "prompts"
    ax.set_xlabel(f"{'MT-Bench' if source == 'mtbench' else source} category")
    ax.set_ylabel("speedup over hf-greedy (x, tokens/s ratio)")
    ax.set_title(f"Speedup per category (run {r.name}; mean of per-prompt ratios, 95% bootstrap CI)")
    ax.legend(ncols=len(methods), loc="upper left", frameon=False)
    caption(fig, load.caption_from_records(r.records, f"run: {load.display(r.dir)}"))
    return save(fig, out, "speedup_by_category")


# ---- 2. accepted length and tokens/s against node budget ----------------------------------------
BUDGET_COMMAND = ("python -m bench.run --methods medusa --budget N --out results/bench/budget-N` for several N "
                  "and `--preset chain_4` / `--preset dense_4x2`")


def budget_points(runs: Sequence[load.Run]) -> pd.DataFrame:
    """One row per (run, tree) of method medusa plus ar: family, node_budget, accepted length, tokens/s."""
    w = load.wide(load.sweep_frame(runs), ["mean_accepted_length", "tokens_per_s"])
    pts = w[w["method"].isin(["medusa", "ar"])].copy()
    pts.loc[pts["method"] == "ar", "family"] = "plain"
    pts.loc[pts["method"] == "ar", "node_budget"] = 1.0
    pts = pts[pts["tokens_per_s"].notna()]
    optuna = (pts["tree_method"] == "optuna") | pts["tree"].astype(str).str.startswith("optuna")
    pts.loc[optuna & (pts["method"] == "medusa"), "family"] = "optuna"
    if pts[pts["method"] == "medusa"]["tree"].nunique() < 2:
        raise load.MissingResult(f"the budget sweep needs medusa runs with at least two trees (run `{BUDGET_COMMAND} first)")
    # The same tree measured in several runs: keep the run with the most prompt turns.
    pts["_n"] = pts["n"] if "n" in pts.columns else 0
    pts = pts.sort_values(["_n", "run"]).drop_duplicates(["method", "tree", "node_budget", "device_name", "threads"], keep="last")
    return pts.drop(columns="_n").sort_values(["family", "node_budget"], ignore_index=True)


def tree_budget(results: Path, out: Path, **_: Any) -> list[Path]:
    runs = load.load_runs(results)
    pts, machine = _device_filter(budget_points(runs))
    fig, axes = new_figure(ncols=2, width=5.0, height=3.8)
    for ax, metric, label in ((axes[0, 0], "mean_accepted_length", "mean accepted length (tokens/step)"),
                              (axes[0, 1], "tokens_per_s", "decoding speed (tokens/s)")):
        for fam in ("sparse", "paper", "dense", "chain", "plain", "optuna"):
            g = pts[pts["family"] == fam].sort_values("node_budget")
            if g.empty:
                continue
            color, marker = FAMILY_STYLE[fam]
            ax.errorbar(g["node_budget"], g[metric], yerr=yerr(g[metric], g[metric + "_lo"], g[metric + "_hi"]),
                        color=color, marker=marker, ms=5, lw=1, capsize=2, label=FAMILY_LABELS[fam],
                        ls="-" if fam in ("sparse", "dense", "chain") else "none")
        best = pts.loc[pts["tokens_per_s"].idxmax()]
        ax.scatter([best["node_budget"]], [best[metric]], s=220, marker="*", color="gold", edgecolors="k",
                   zorder=5, label=f"fastest measured: {best['tree']}")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("node budget (tokens verified per step, root included)")
        ax.set_ylabel(label)
    axes[0, 0].set_title("(a) accepted length against tree size")
    axes[0, 1].set_title("(b) speed against tree size")
    axes[0, 1].legend(frameon=False, loc="best")
    names = set(pts["run"])
    caption(fig, load.caption_from_records(runs_records(runs, names), f"{len(names)} runs under results/bench ({machine})"))
    return save(fig, out, "tree_budget")


# ---- 3. typical acceptance: accepted length against quality -------------------------------------
TYPICAL_COMMAND = ("python -m bench.run --methods medusa-typical,medusa,hf-sample,hf-greedy --temperature 0.7 "
                   "--posterior-threshold EPS --out results/bench/typical-EPS` for several EPS")


def typical_points(runs: Sequence[load.Run], temperature: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """(medusa-typical rows at one temperature sorted by eps, reference rows, the temperature)."""
    w = load.wide(load.sweep_frame(runs), ["mean_accepted_length", *QUALITY_LABELS])
    typ = w[w["method"] == "medusa-typical"]
    if typ.empty:
        raise load.MissingResult(f"no medusa-typical runs for the eps sweep (run `{TYPICAL_COMMAND} first)")
    if temperature is None:
        temperature = float(typ.groupby("temperature")["posterior_threshold"].nunique().idxmax())
    typ = typ[np.isclose(typ["temperature"].astype(float), temperature)]
    if typ.empty:
        raise load.MissingResult(f"no medusa-typical runs at temperature {temperature} (run `{TYPICAL_COMMAND} first)")
    tree = typ["tree"].mode().iloc[0]
    typ = typ[typ["tree"] == tree]
    if typ["posterior_threshold"].nunique() < 2:
        raise load.MissingResult(f"the eps sweep needs medusa-typical at two or more eps values at T={temperature} "
                                 f"(run `{TYPICAL_COMMAND} first)")
    # Greedy records carry temperature 0 but their quality is scored at their run's T: take them
    # from runs with records at T; plain sampling from any run at T.
    runs_at_t = set(w.loc[np.isclose(w["temperature"].astype(float), temperature), "run"])
    greedy_ref = w["method"].isin(["medusa", "hf-greedy"]) & w["run"].isin(runs_at_t)
    sampled_ref = (w["method"] == "hf-sample") & np.isclose(w["temperature"].astype(float), temperature)
    refs = w[greedy_ref | sampled_ref]
    refs = refs[(refs["method"] != "medusa") | (refs["tree"] == tree)].copy()
    # One reference point per method: the run with the most prompt turns.
    refs = refs.sort_values(["n", "run"]).drop_duplicates("method", keep="last")
    plain = refs["method"] != "medusa"
    refs.loc[plain, "mean_accepted_length"] = 1.0
    refs.loc[plain, ["mean_accepted_length_lo", "mean_accepted_length_hi"]] = np.nan
    return typ.sort_values("posterior_threshold", ignore_index=True), refs.reset_index(drop=True), temperature


def typical_acceptance(results: Path, out: Path, temperature: float | None = None, **_: Any) -> list[Path]:
    runs = load.load_runs(results)
    typ, refs, temp = typical_points(runs, temperature)
    measures = [q for q in QUALITY_LABELS if typ[q].notna().any()]
    if not measures:
        raise WorkbenchError("the medusa-typical runs carry no quality metric (rerun without --no-quality)")
    ncols = min(3, len(measures))
    nrows = -(-len(measures) // ncols)
    fig, axes = new_figure(ncols=ncols, nrows=nrows, width=4.0, height=3.3)
    for i, q in enumerate(measures):
        ax = axes.flat[i]
        ax.errorbar(typ[q], typ["mean_accepted_length"],
                    xerr=yerr(typ[q], typ[q + "_lo"], typ[q + "_hi"]),
                    yerr=yerr(typ["mean_accepted_length"], typ["mean_accepted_length_lo"], typ["mean_accepted_length_hi"]),
                    color=method_color("medusa-typical"), marker="o", ms=4, lw=1, capsize=2,
                    label=f"medusa-typical (tree {typ['tree'].iloc[0]})")
        for _, r in typ.iterrows():
            ax.annotate(f"eps={r['posterior_threshold']:g}", (r[q], r["mean_accepted_length"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
        for method, marker in (("medusa", "s"), ("hf-greedy", "D"), ("hf-sample", "v")):
            g = refs[(refs["method"] == method) & refs[q].notna()]
            if g.empty:
                continue
            ax.errorbar(g[q], g["mean_accepted_length"], xerr=yerr(g[q], g[q + "_lo"], g[q + "_hi"]),
                        yerr=yerr(g["mean_accepted_length"], g["mean_accepted_length_lo"], g["mean_accepted_length_hi"]),
                        color=method_color(method), marker=marker, ls="none", ms=6, capsize=2,
                        label={"medusa": "greedy acceptance (medusa)", "hf-greedy": "greedy decoding (hf-greedy)",
                               "hf-sample": "plain sampling (hf-sample)"}[method])
        ax.set_xlabel(QUALITY_LABELS[q])
        ax.set_ylabel("mean accepted length (tokens/step)")
    for ax in axes.flat[len(measures):]:
        ax.set_visible(False)
    axes.flat[0].legend(frameon=False, fontsize=6.5)
    fig.suptitle(f"Typical acceptance: eps sweep at T={temp:g} (delta={typ['posterior_alpha'].iloc[0]:g}); 95% bootstrap CIs",
                 fontsize=9)
    names = set(typ["run"]) | set(refs["run"])
    caption(fig, load.caption_from_records(runs_records(runs, names), f"{len(names)} runs under results/bench"))
    return save(fig, out, "typical_acceptance")


# ---- 4. head accuracy ---------------------------------------------------------------------------
def head_accuracy(results: Path, out: Path, calibration: str | None = None, **_: Any) -> list[Path]:
    acc = load.head_accuracy(results, calibration)
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
    caption(fig, load.calibration_caption(acc.meta, acc.source))
    return save(fig, out, "head_accuracy")


# ---- 5. the searched tree -----------------------------------------------------------------------
def searched_tree(results: Path, out: Path, tree: str | None = None, calibration: str | None = None, **_: Any) -> list[Path]:
    from trees.acceptance_model import expected_tokens
    from trees.plot import plot_tree
    from trees.tree import Tree

    path = load.tree_file(results, tree)
    t = Tree.load(path)
    model, kind, cal = load.acceptance_model(results, calibration)

    meta = load.read_json(cal / "calibration.json")
    source = cal / ("paths.csv" if kind == "empirical" else "accuracy.csv")
    title = (f"{t.name} ({path.name}): {t.node_budget} nodes, labels head/rank0, colour = {kind} P(accepted), "
             f"E[tokens/step] = {expected_tokens(t, model):.2f}\n"
             + load.calibration_caption(meta, source).replace(" | source:", "\nsource:"))
    Path(out).mkdir(parents=True, exist_ok=True)
    return [plot_tree(t, model, Path(out) / f"searched_tree.{fmt}", title=title) for fmt in ("png", "pdf")]


# ---- 6. predicted vs measured accepted length ---------------------------------------------------
def acceptance_validation(results: Path, out: Path, **_: Any) -> list[Path]:
    v = load.load_validation(results)
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
    ax.set_xlabel("prediction error (% of measured accepted length)")
    ax.set_title("(b) relative error per tree (nodes, measured by)")
    ax.legend(frameon=False)
    cal = load.results_path(results) / "calibration" / str(v["calibration"].iloc[0])
    meta = load.read_json(cal / "calibration.json")
    runs = "; ".join(f"{by}: {int(g['prompts'].iloc[0])} MT-Bench prompts x {int(g['max_new_tokens'].iloc[0])} tokens"
                     for by, g in v.groupby("measured_by", sort=False)) if {"prompts", "max_new_tokens"} <= set(v.columns) else ""
    caption(fig, load.calibration_caption(meta, cal / ", ".join(dict.fromkeys(v["file"].astype(str))))
            + (f"; greedy, {runs}" if runs else ""))
    return save(fig, out, "acceptance_validation")


# ---- 7. latency profile -------------------------------------------------------------------------
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1}


def latency_profile(results: Path, out: Path, **_: Any) -> list[Path]:
    written: list[Path] = []
    for path in load.latency_files(results):
        df = load.load_latency(path)
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
            threads = f", {int(first['threads'])} threads" if "threads" in d.columns and pd.notna(first.get("threads")) else ""
            commit = f" | commit {first['commit']}" if "commit" in d.columns and pd.notna(first.get("commit")) else ""
            caption(fig, f"device: {first['device']}{threads}, {dtype} | model: {backbone} | source: {load.display(path)}{commit}")
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
                lo, hi = load.wilson(g["accuracy"].to_numpy(float), g["count"].to_numpy(float))
                line, = ax.plot(g["step"], 100 * g["accuracy"], marker="o", ms=2.5, lw=1, color=f"C{int(k) - 1}",
                                label=f"head {int(k)}")
                ax.fill_between(g["step"], 100 * lo, 100 * hi, color=line.get_color(), alpha=0.2, lw=0)
            ax.set_xlabel("training step (optimizer updates)")
            ax.set_title("(b) held-out top-1 accuracy per head, 95% Wilson band")
            ax.legend(frameon=False, fontsize=6.5)
        elif (d / "accuracy.csv").is_file():
            acc = load.head_accuracy_from_file(d / "accuracy.csv")
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
        device = f"device: {m.get('device', 'unknown device')}" + (f", {m['threads']} threads" if "threads" in m else "") \
            + (f", {m['dtype']}" if "dtype" in m else "")
        commit = f" | commit {m['commit']}" if "commit" in m else ""
        caption(fig, f"{device} | model: {m.get('backbone', 'unknown model')} + heads {d.name} | "
                     f"source: {load.display(d / 'loss.csv')}{commit}")
        written += save(fig, out, f"training_{d.name}")
    return written


# ---- registry and CLI ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FigureSpec:
    function: Callable[..., list[Path]]
    title: str


FIGURES: dict[str, FigureSpec] = {
    "speedup": FigureSpec(speedup_by_category, "speedup per category over hf-greedy (paper Fig. 3b)"),
    "budget": FigureSpec(tree_budget, "accepted length and tokens/s against node budget (paper Fig. 4)"),
    "typical": FigureSpec(typical_acceptance, "typical acceptance: accepted length against quality (paper Fig. 5)"),
    "head-accuracy": FigureSpec(head_accuracy, "head top-i accuracy per head"),
    "tree": FigureSpec(searched_tree, "the searched tree coloured by acceptance probability"),
    "validation": FigureSpec(acceptance_validation, "predicted vs measured accepted length per tree"),
    "latency": FigureSpec(latency_profile, "verify time against query tokens with machine floors"),
    "training": FigureSpec(training_curves, "training curves of the shipped heads"),
}


def make(name: str, results: str | Path | None = None, out: str | Path | None = None, **options: Any) -> list[Path]:
    """Make one figure by registry name; returns the written files (raises `WorkbenchError`)."""
    if name not in FIGURES:
        raise WorkbenchError(f"unknown figure {name!r} (known: {', '.join(FIGURES)})")
    return FIGURES[name].function(load.results_path(results), Path(out) if out is not None else DEFAULT_OUT, **options)


def make_all(results: str | Path | None = None, out: str | Path | None = None, **options: Any) -> dict[str, list[Path] | str]:
    """Every figure whose inputs exist: name -> written files, or the reason it was skipped."""
    done: dict[str, list[Path] | str] = {}
    for name in FIGURES:
        try:
            done[name] = make(name, results, out, **options)
        except WorkbenchError as e:
            done[name] = str(e)
    return done


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.figures", description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", help=f"figures to make (default: all): {', '.join(FIGURES)}")
    p.add_argument("--results", default=None, help="results folder (default: the repository's results/)")
    p.add_argument("--out", default=None, help="output folder (default: <results>/figures)")
    p.add_argument("--run", default=None, help="benchmark run for the speedup figure (default: mtbench or the largest)")
    p.add_argument("--tree", default=None, help="tree name or JSON for the tree figure (default: trees/default.json)")
    p.add_argument("--calibration", default=None, help="calibration folder name (default: the shipped heads')")
    p.add_argument("--temperature", type=float, default=None, help="temperature of the eps sweep (default: most eps values)")
    p.add_argument("--list", action="store_true", help="list the figures and exit")
    a = p.parse_args(argv)
    if a.list:
        for name, spec in FIGURES.items():
            print(f"{name:14s} {spec.title}")
        return 0
    results = load.results_path(a.results)
    if not results.is_dir():
        raise WorkbenchError(f"results folder not found: {results}")
    out = Path(a.out) if a.out else results / "figures"
    options = {"run": a.run, "tree": a.tree, "calibration": a.calibration, "temperature": a.temperature}
    unknown = [n for n in a.names if n not in FIGURES]
    if unknown:
        raise WorkbenchError(f"unknown figure {unknown[0]!r} (known: {', '.join(FIGURES)})")
    if a.names:
        for name in a.names:
            paths = make(name, results, out, **options)
            print(f"made {name}: {', '.join(load.display(q) for q in paths)}")
        return 0
    for name, res in make_all(results, out, **options).items():
        if isinstance(res, str):
            print(f"skipped {name}: {res}")
        else:
            print(f"made {name}: {', '.join(load.display(q) for q in res)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
