"""Figures of the benchmark runs under results/bench/: speedup, node budget, typical acceptance.

Drawn through the registry in `analysis.figures` (``python -m analysis.figures speedup budget
typical``); `budget_points`, `typical_points` and the label tables are shared with
`analysis.tables`, which tabulates the same points.

1. ``speedup``: `speedup_by_category` -> speedup_by_category. Paper Fig. 3b. Speedup over the
   reference (``bench.summarize.REFERENCE``, hf-greedy) per prompt category for every other method
   of the main benchmark run, from its summary (metric ``speedup_vs_hf-greedy_mean``, 95% bootstrap
   interval over prompts). Main run: ``--run NAME``, else ``bench/mtbench``, else the largest run
   holding the reference and another method.
2. ``budget``: `tree_budget` -> tree_budget. Paper Fig. 4. Mean accepted length (a) and tokens/s (b)
   against the node budget, one point per (run, method, tree) of every greedy method that decodes
   with a tree (records' ``greedy``, ``tree`` and ``node_budget`` columns: medusa, and ar as the
   plain 1-node point) over *all* runs under ``bench/`` (summary metrics ``mean_accepted_length``
   and ``tokens_per_s``), grouped by tree family from the tree name: ``chain_*``, ``dense_*``,
   ``mc_sim_7b_63`` (paper), ``root`` (plain), anything else = sparse searched tree. Only runs of
   the most common device and thread count are drawn. The fastest measured tree is starred (the
   hardware-aware optimum); a tree found by the Optuna search (run.json tree meta
   ``method: optuna``) is ringed.
3. ``typical``: `typical_acceptance` -> typical_acceptance. Paper Fig. 5. Accepted length against
   each quality measure of the summary (log-likelihood per token at T, argmax agreement, greedy
   prefix, distinct-2, repetition rate) over an eps sweep of the method whose records carry an eps
   (typical acceptance: ``medusa-typical``), i.e. its runs grouped by the records'
   ``posterior_threshold`` at one ``temperature`` (``--temperature``, else the temperature with the
   most eps values, and the tree most of its runs used); references at the same temperature, one
   per other method (the run with the most prompts): greedy methods (e.g. ``medusa``, greedy
   acceptance on the same tree; ``hf-greedy``) and sampling (``hf-sample``); plain decoding is drawn
   at accepted length 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter

from analysis import load
from analysis.style import FAMILY_STYLE, caption, method_color, new_figure, save, yerr
from bench.summarize import REFERENCE, speedup_metric
from common.errors import WorkbenchError

QUALITY_LABELS = {
    "loglik_per_token": "log-likelihood per token at T (nats)",
    "argmax_agreement": "argmax agreement (share of tokens)",
    "greedy_prefix": f"prefix shared with {REFERENCE} (tokens)",
    "distinct_2": "distinct-2 (share of bigrams)",
    "repetition_rate": "repetition rate (share of 4-grams)",
}
FAMILY_LABELS = {"sparse": "sparse (searched)", "paper": "mc_sim_7b_63 (paper)", "dense": "dense",
                 "chain": "chain (top-1)", "plain": "plain decoding (root only)", "optuna": "Optuna search (hardware-aware)"}


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


def speedup_methods(summary: pd.DataFrame, metric: str) -> list[str]:
    """The methods of a run's summary that have `metric` (every method but the baseline itself)."""
    return list(dict.fromkeys(summary.loc[summary["metric"] == metric, "method"]))


# ---- 1. speedup per category --------------------------------------------------------------------
def speedup_by_category(results: Path, out: Path, run: str | None = None, **_: Any) -> list[Path]:
    runs = load.load_runs(results)
    r = load.pick_run(runs, run, need=(REFERENCE,))
    metric = speedup_metric(REFERENCE)
    methods = speedup_methods(r.summary, metric)
    s = r.summary[r.summary["metric"] == metric]
    if not methods:
        raise load.MissingResult(f"run {r.name} has no speedup over {REFERENCE} (run `{load.BENCH_COMMAND}` first)")
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
    ax.set_ylabel(f"speedup over {REFERENCE} (x, tokens/s ratio)")
    ax.set_title(f"Speedup per category (run {r.name}; mean of per-prompt ratios, 95% bootstrap CI)")
    ax.legend(ncols=len(methods), loc="upper left", frameon=False)
    caption(fig, load.caption_from_records(r.records, f"run: {load.display(r.dir)}"))
    return save(fig, out, "speedup_by_category")


# ---- 2. accepted length and tokens/s against node budget ----------------------------------------
BUDGET_COMMAND = ("python -m bench.run --methods medusa --budget N --out results/bench/budget-N` for several N "
                  "and `--preset chain_4` / `--preset dense_4x2`")


def budget_points(runs: Sequence[load.Run]) -> pd.DataFrame:
    """One row per (run, method, tree) of the greedy methods that decode with a tree (records with a
    `tree`; the root-only tree is the plain 1-node point): family, node_budget, accepted length, tokens/s."""
    w = load.wide(load.sweep_frame(runs), ["mean_accepted_length", "tokens_per_s"])
    has_tree = w["tree"].notna() & (w["tree"].astype(str) != "")
    pts = w[w["greedy"].astype(bool) & has_tree].copy()
    pts = pts[pts["tokens_per_s"].notna()]
    optuna = (pts["tree_method"] == "optuna") | pts["tree"].astype(str).str.startswith("optuna")
    pts.loc[optuna & (pts["family"] != "plain"), "family"] = "optuna"
    if pts.loc[pts["family"] != "plain", "tree"].nunique() < 2:
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
REFERENCE_MARKERS = ("s", "D", "v", "^", "P", "X")


def _at(values: pd.Series, temperature: float) -> pd.Series:
    return pd.Series(np.isclose(pd.to_numeric(values, errors="coerce").astype(float), temperature), index=values.index)


def _swept(w: pd.DataFrame, temperature: float | None) -> tuple[pd.DataFrame, float]:
    """Rows of the typical-acceptance method (records with an eps) with the most eps values, at one T."""
    swept = w[pd.to_numeric(w["posterior_threshold"], errors="coerce").notna()]
    if swept.empty:
        raise load.MissingResult(f"no typical-acceptance runs (records with an eps) for the eps sweep (run `{TYPICAL_COMMAND} first)")
    if temperature is not None:
        swept = swept[_at(swept["temperature"], temperature)]
        if swept.empty:
            raise load.MissingResult(f"no typical-acceptance runs at temperature {temperature} (run `{TYPICAL_COMMAND} first)")
    method, temp = swept.groupby(["method", "temperature"])["posterior_threshold"].nunique().idxmax()
    typ = swept[(swept["method"] == method) & _at(swept["temperature"], temp)]
    typ = typ[typ["tree"] == typ["tree"].mode().iloc[0]]
    if typ["posterior_threshold"].nunique() < 2:
        raise load.MissingResult(f"the eps sweep needs {method} at two or more eps values at T={temp:g} "
                                 f"(run `{TYPICAL_COMMAND} first)")
    return typ.sort_values("posterior_threshold", ignore_index=True), float(temp)


def typical_points(runs: Sequence[load.Run], temperature: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """(rows of the eps-swept method at one temperature sorted by eps, reference rows, the temperature).

    The swept method is the one whose records carry an eps (typical acceptance); the references are
    every other method at that temperature, one row each (the run with the most prompt turns): greedy
    methods (same tree if they use one) and plain sampling. A method without accepted length (plain
    decoding) is drawn at 1 token/step; the `plain` column says which.
    """
    w = load.wide(load.sweep_frame(runs), ["mean_accepted_length", *QUALITY_LABELS])
    typ, temperature = _swept(w, temperature)
    tree = typ["tree"].iloc[0]
    # Greedy records carry temperature 0 but their quality is scored at their run's T: take them
    # from runs with records at T; sampling methods (no eps) from any run at T.
    runs_at_t = set(w.loc[_at(w["temperature"], temperature), "run"])
    greedy = w["greedy"].astype(bool)
    no_eps = pd.to_numeric(w["posterior_threshold"], errors="coerce").isna()
    refs = w[(greedy & w["run"].isin(runs_at_t)) | (~greedy & no_eps & _at(w["temperature"], temperature))]
    no_tree = refs["tree"].isna() | (refs["tree"].astype(str) == "")
    refs = refs[no_tree | (refs["tree"] == tree)].copy()
    refs = refs.sort_values(["n", "run"]).drop_duplicates("method", keep="last")
    refs["plain"] = refs["mean_accepted_length"].isna()
    refs.loc[refs["plain"], "mean_accepted_length"] = 1.0
    refs.loc[refs["plain"], ["mean_accepted_length_lo", "mean_accepted_length_hi"]] = np.nan
    refs = refs.assign(_sampled=~refs["greedy"].astype(bool)).sort_values(["_sampled", "plain", "method"])
    return typ, refs.drop(columns="_sampled").reset_index(drop=True), temperature


def reference_label(ref: pd.Series) -> str:
    """How a reference of the eps sweep decodes: greedy acceptance, greedy decoding or plain sampling."""
    kind = "plain sampling" if not bool(ref["greedy"]) else "greedy decoding" if ref["plain"] else "greedy acceptance"
    return f"{kind} ({ref['method']})"


def typical_acceptance(results: Path, out: Path, temperature: float | None = None, **_: Any) -> list[Path]:
    runs = load.load_runs(results)
    typ, refs, temp = typical_points(runs, temperature)
    swept = str(typ["method"].iloc[0])
    measures = [q for q in QUALITY_LABELS if typ[q].notna().any()]
    if not measures:
        raise WorkbenchError(f"the {swept} runs carry no quality metric (rerun without --no-quality)")
    ncols = min(3, len(measures))
    nrows = -(-len(measures) // ncols)
    fig, axes = new_figure(ncols=ncols, nrows=nrows, width=4.0, height=3.3)
    for i, q in enumerate(measures):
        ax = axes.flat[i]
        ax.errorbar(typ[q], typ["mean_accepted_length"],
                    xerr=yerr(typ[q], typ[q + "_lo"], typ[q + "_hi"]),
                    yerr=yerr(typ["mean_accepted_length"], typ["mean_accepted_length_lo"], typ["mean_accepted_length_hi"]),
                    color=method_color(swept), marker="o", ms=4, lw=1, capsize=2,
                    label=f"{swept} (tree {typ['tree'].iloc[0]})")
        for _, r in typ.iterrows():
            ax.annotate(f"eps={r['posterior_threshold']:g}", (r[q], r["mean_accepted_length"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
        for j, (_, ref) in enumerate(refs.iterrows()):
            if pd.isna(ref[q]):
                continue
            ax.errorbar([ref[q]], [ref["mean_accepted_length"]], xerr=yerr([ref[q]], [ref[q + "_lo"]], [ref[q + "_hi"]]),
                        yerr=yerr([ref["mean_accepted_length"]], [ref["mean_accepted_length_lo"]],
                                  [ref["mean_accepted_length_hi"]]),
                        color=method_color(ref["method"], j + 1), marker=REFERENCE_MARKERS[j % len(REFERENCE_MARKERS)],
                        ls="none", ms=6, capsize=2, label=reference_label(ref))
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
