"""Figures of the benchmark runs under results/bench/: speedup, node budget, typical acceptance.

Drawn through the registry in `analysis.figures` (``python -m analysis.figures speedup budget
typical``); `budget_points`, `typical_points` and the label tables are shared with
`analysis.tables`, which tabulates the same points.

1. ``speedup``: `speedup_by_category` -> speedup_by_category. Paper Fig. 3b. Speedup over the
   reference (``bench.summarize.REFERENCE``, hf-greedy) per prompt category for every other method
   of the main benchmark run, from its summary (metric ``speedup_vs_hf-greedy_mean``, 95% bootstrap
   interval over prompts). Each category's tick names the reference's own tokens/s and n (prompt
   turns). Main run: ``--run NAME``, else the reference run (`common.paths.REFERENCE_RUN`,
   `analysis.load.pick_run`).
2. ``budget``: `tree_budget` -> tree_budget. Paper Fig. 4. Mean accepted length (left) and tokens/s
   (right) against the node budget, one point per (run, method, tree) of every greedy method that
   decodes with a tree (records' ``greedy``, ``tree`` and ``node_budget`` columns: medusa, and ar as
   the plain 1-node point) over *all* runs under ``bench/`` (summary metrics
   ``mean_accepted_length`` and ``tokens_per_s``), grouped by tree family from the tree name:
   ``chain_*``, ``dense_*``, ``mc_sim_7b_63`` (paper), ``root`` (plain), anything else = sparse
   searched tree; a tree found by the Optuna search (run.json tree meta ``method: optuna``) is its
   own family. Like is compared with like: one row of panels per measuring condition
   (`CONDITION_COLUMNS`: device, threads, processes sharing the machine = the run's shard count in
   run.json, max new tokens, turns), the conditions with most trees first, at most
   `MAX_CONDITIONS` rows (the others are named in a note). The fastest tree of each row is ringed
   by a hollow star that leaves its marker visible.
3. ``typical``: `typical_acceptance` -> typical_acceptance. Paper Fig. 5. Accepted length against
   each quality measure of the summary (log-likelihood per token at T, argmax agreement, greedy
   prefix, distinct-2, repetition rate) over an eps sweep of the method whose records carry an eps
   (typical acceptance: ``medusa-typical``), i.e. its runs grouped by the records'
   ``posterior_threshold`` at one ``temperature`` (``--temperature``, else the temperature with the
   most eps values, and the tree most of its runs used); eps is told by colour and marker, named in
   the legend panel (no labels on the data). References at the same temperature, one per other
   method present (the run with the most prompts), labelled by `REFERENCE_KINDS` or their traits:
   greedy decoding (``hf-greedy``), greedy acceptance on the same tree (``medusa``), plain sampling
   (``hf-sample``), lossless sampling on the same tree (``medusa-sample``); plain decoding is drawn
   at accepted length 1, a reference that uses a tree also as a line at its accepted length.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.lines import Line2D
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


def runs_records(runs: Sequence[load.Run], names: set[str]) -> pd.DataFrame:
    return pd.concat([r.records for r in runs if r.name in names], ignore_index=True)


def speedup_methods(summary: pd.DataFrame, metric: str) -> list[str]:
    """The methods of a run's summary that have `metric` (every method but the baseline itself)."""
    return list(dict.fromkeys(summary.loc[summary["metric"] == metric, "method"]))


# ---- 1. speedup per category --------------------------------------------------------------------
def baseline_ticks(summary: pd.DataFrame, speedups: pd.DataFrame, cats: Sequence[str]) -> list[str]:
    """Tick labels ``category / 13.9 tok/s / n=20``: the reference's absolute tokens/s and its number
    of prompt turns per category, plus ``medusa n=18`` for a method whose paired n differs."""
    ref = summary[(summary["method"] == REFERENCE) & (summary["metric"] == "tokens_per_s")]
    ref = ref.set_index(ref["category"].astype(str))
    labels = []
    for c in cats:
        tps = f"{ref.loc[c, 'value']:.1f} tok/s" if c in ref.index else "? tok/s"
        n = int(ref.loc[c, "n"]) if c in ref.index and pd.notna(ref.loc[c, "n"]) else None
        other = [f"{m} n={int(k)}" for m, k in speedups.loc[speedups["category"].astype(str) == c, ["method", "n"]].itertuples(index=False)
                 if pd.notna(k) and int(k) != n]
        labels.append("\n".join([c, tps, f"n={n if n is not None else '?'}", *other]))
    return labels


def speedup_by_category(results: Path, out: Path, run: str | None = None, **_: Any) -> list[Path]:
    runs = load.load_runs(results)
    r = load.pick_run(runs, run, need=(REFERENCE,))
    metric = speedup_metric(REFERENCE)
    methods = speedup_methods(r.summary, metric)
    s = r.summary[r.summary["metric"] == metric]
    if not methods:
        raise load.MissingResult(f"run {r.name} has no speedup over {REFERENCE} (run `{load.BENCH_COMMAND}` first)")
    cats = [c for c in dict.fromkeys(s["category"].astype(str)) if c != "all"] + ["all"]
    fig, axes = new_figure(width=min(10.0, 3.0 + 0.3 * len(cats) * len(methods)), height=4.0)
    ax = axes[0, 0]
    width = 0.8 / len(methods)
    x = np.arange(len(cats))
    for i, m in enumerate(methods):
        g = s[s["method"] == m].set_index(s[s["method"] == m]["category"].astype(str)).reindex(cats)
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, g["value"], width, label=m, color=method_color(m, i),
               yerr=yerr(g["value"], g["lo"], g["hi"]), capsize=2, error_kw={"lw": 0.8})
    ax.axhline(1.0, color="0.3", lw=0.8, ls="--")
    ax.set_xticks(x, baseline_ticks(r.summary, s, cats), rotation=0, fontsize=6.5)
    source = load.mode_value(r.records["source"]) or "prompts"
    ax.set_xlabel(f"{'MT-Bench' if source == 'mtbench' else source} category: {REFERENCE} tokens/s, "
                  "n = prompt turns (a method's own n when it differs)")
    ax.set_ylabel(f"speedup over {REFERENCE} (x, tokens/s ratio)")
    ax.set_title(f"Speedup per category (run {r.name}; mean of per-prompt ratios, 95% bootstrap CI)")
    ax.legend(ncols=len(methods), loc="upper left", frameon=False)
    caption(fig, load.caption_from_records(r.records, f"run: {load.display(r.dir)}"))
    return save(fig, out, "speedup_by_category")


# ---- 2. accepted length and tokens/s against node budget ----------------------------------------
BUDGET_COMMAND = ("python -m bench.run --methods medusa --budget N --out results/bench/budget-N` for several N "
                  "and `--preset chain_4` / `--preset dense_4x2`")
# What must be equal for two speeds to share a panel: the machine, its load and the work per answer.
CONDITION_COLUMNS = ("device_name", "threads", "processes", "max_new_tokens", "turns")
STAR_COLOR = "goldenrod"
MAX_CONDITIONS = 3  # panels (rows) of the budget figure; further conditions are named in a note


def _shards(info: dict[str, Any], method: str) -> int:
    """How many processes shared the machine for `method` in a run: the largest shard count
    (``--shard i/n``, run.json sessions) of the sessions that ran it; 1 when none is recorded."""
    counts = [1]
    for session in info.get("sessions") or []:
        if method in (session.get("methods") or [method]):
            try:
                counts.append(int(str(session.get("shard", "0/1")).split("/")[1]))
            except (IndexError, ValueError):
                continue
    return max(counts)


def run_conditions(runs: Sequence[load.Run]) -> pd.DataFrame:
    """Per (run, method): the measuring conditions that change tokens/s besides the tree:
    `max_new_tokens`, `turns` ("1" or "1-2", from the records), `processes` (shards run at once)."""
    rows = []
    for run in runs:
        for method, recs in run.records.groupby("method", sort=False):
            turns = sorted({int(t) for t in pd.to_numeric(recs["turn"], errors="coerce").dropna()})
            tokens = pd.to_numeric(recs["max_new_tokens"], errors="coerce").dropna()
            rows.append({"run": run.name, "method": method,
                         "max_new_tokens": int(tokens.mode().iloc[0]) if len(tokens) else -1,
                         "turns": "-".join(str(t) for t in (turns[:1] + turns[-1:] if len(turns) > 1 else turns)),
                         "processes": _shards(run.info, str(method))})
    return pd.DataFrame(rows, columns=["run", "method", "max_new_tokens", "turns", "processes"])


def condition_label(row: Any) -> str:
    """``AMD EPYC, 1 thread, 1 process at once; 64 new tokens, turn 1`` for a row with `CONDITION_COLUMNS`
    (the machine part, then the work part, split at ``; ``)."""
    threads, procs = int(row["threads"]), int(row["processes"])
    turns = str(row["turns"])
    return (f"{row['device_name']}, {threads} thread{'s' if threads != 1 else ''}, "
            f"{procs} process{'es' if procs != 1 else ''} at once; {int(row['max_new_tokens'])} new tokens, "
            f"turn{'s' if '-' in turns else ''} {turns}")


def budget_points(runs: Sequence[load.Run], per_condition: bool = False) -> pd.DataFrame:
    """One row per (run, method, tree) of the greedy methods that decode with a tree (records with a
    `tree`; the root-only tree is the plain 1-node point): family, node_budget, accepted length,
    tokens/s, the measuring conditions (`CONDITION_COLUMNS`) and their `condition` label.

    A tree measured in several runs keeps the run with the most prompt turns: one row per tree, or
    with `per_condition` one row per tree and condition (what the figure draws, a panel each)."""
    w = load.wide(load.sweep_frame(runs), ["mean_accepted_length", "tokens_per_s"])
    has_tree = w["tree"].notna() & (w["tree"].astype(str) != "")
    pts = w[w["greedy"].astype(bool) & has_tree].copy()
    pts = pts[pts["tokens_per_s"].notna()]
    # static trees only: per-step policies (medusa-dynamic's dynamic_N, medusa-lookup's lookupL+tree)
    # verify a different tree every step, so a node budget does not place them on this sweep
    pts = pts[~pts["tree"].astype(str).str.match(r"(dynamic_\d|lookup\d)")]
    optuna = (pts["tree_method"] == "optuna") | pts["tree"].astype(str).str.startswith("optuna")
    pts.loc[optuna & (pts["family"] != "plain"), "family"] = "optuna"
    if pts.loc[pts["family"] != "plain", "tree"].nunique() < 2:
        raise load.MissingResult(f"the budget sweep needs medusa runs with at least two trees (run `{BUDGET_COMMAND} first)")
    pts = pts.merge(run_conditions(runs), on=["run", "method"], how="left")
    pts["condition"] = [condition_label(r) for _, r in pts.iterrows()]
    pts["_n"] = pts["n"] if "n" in pts.columns else 0
    keys = ["method", "tree", "node_budget"] + (["condition"] if per_condition else [])
    pts = pts.sort_values(["_n", "run"]).drop_duplicates(keys, keep="last")
    return pts.drop(columns="_n").sort_values(["family", "node_budget"], ignore_index=True)


def budget_panels(pts: pd.DataFrame) -> tuple[list[tuple[str, pd.DataFrame]], list[str]]:
    """The points grouped by measuring condition, most trees first: ([(condition, points)] for at most
    `MAX_CONDITIONS` conditions holding a tree other than the plain one, [conditions left out])."""
    groups = [(c, g) for c, g in pts.groupby("condition", sort=False)]
    groups.sort(key=lambda cg: (-(cg[1]["family"] != "plain").sum(), -len(cg[1]), cg[0]))
    drawn = [cg for cg in groups if (cg[1]["family"] != "plain").any()][:MAX_CONDITIONS]
    left = [c for c, _ in groups if c not in {d for d, _ in drawn}]
    return drawn, left


def _budget_row(axes: np.ndarray, pts: pd.DataFrame, condition: str, row: int) -> None:
    """One condition's panels: accepted length (left) and tokens/s (right) against the node budget;
    the titles name the condition (machine on the right, work per answer and n on the left)."""
    best = pts.loc[pts["tokens_per_s"].idxmax()]
    n = pd.to_numeric(pts["n"], errors="coerce").dropna() if "n" in pts.columns else pd.Series(dtype=float)
    n_text = "?" if n.empty else f"{int(n.min())}" if n.nunique() == 1 else f"{int(n.min())}-{int(n.max())}"
    machine, _, work = condition.partition("; ")
    titles = (f"accepted length: {work}, n = {n_text} prompt turns",
              f"speed: {machine}\nfastest: {best['tree']} ({best['tokens_per_s']:.1f} tokens/s)")
    for col, (metric, label) in enumerate((("mean_accepted_length", "mean accepted length (tokens/step)"),
                                           ("tokens_per_s", "decoding speed (tokens/s)"))):
        ax = axes[row, col]
        for fam in FAMILY_STYLE:
            g = pts[pts["family"] == fam].sort_values("node_budget")
            if g.empty:
                continue
            color, marker = FAMILY_STYLE[fam]
            ax.errorbar(g["node_budget"], g[metric], yerr=yerr(g[metric], g[metric + "_lo"], g[metric + "_hi"]),
                        color=color, marker=marker, ms=5, lw=1, capsize=2, label=FAMILY_LABELS[fam], zorder=3,
                        ls="-" if fam in ("sparse", "dense", "chain") else "none")
        # A hollow star behind the points: it rings the fastest tree without hiding its own marker.
        ax.scatter([best["node_budget"]], [best[metric]], s=380, marker="*", facecolors="none", edgecolors=STAR_COLOR,
                   linewidths=1.4, zorder=2)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("node budget (tokens verified per step, root included)")
        ax.set_ylabel(label)
        ax.set_title(f"({'abcdefgh'[2 * row + col]}) {titles[col]}", fontsize=7.5)


def tree_budget(results: Path, out: Path, **_: Any) -> list[Path]:
    runs = load.load_runs(results)
    panels, left = budget_panels(budget_points(runs, per_condition=True))
    if left:
        load.note(f"budget figure: points measured under other conditions left out: {'; '.join(left)}")
    fig, axes = new_figure(ncols=2, nrows=len(panels), width=5.0, height=3.6, sharex=True)
    for row, (condition, pts) in enumerate(panels):
        _budget_row(axes, pts, condition, row)
    for ax in axes[:-1].flat:
        ax.set_xlabel("")
    handles = {h_label: h for ax in axes.flat for h, h_label in zip(*ax.get_legend_handles_labels())}
    handles["fastest measured in the row (tokens/s)"] = Line2D([], [], marker="*", ms=11, mfc="none", mec=STAR_COLOR, ls="none")
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncols=min(4, len(handles)), frameon=False,
               fontsize=7, bbox_to_anchor=(0.5, 0.03))
    names = set().union(*(set(p["run"]) for _, p in panels))
    note = f"; {len(left)} other condition(s) not drawn" if left else ""
    caption(fig, load.caption_from_records(runs_records(runs, names),
                                           f"{len(names)} runs under results/bench, one row of panels per measuring condition{note}"))
    fig.tight_layout(rect=(0, 0.045 + 0.05 * (-(-len(handles) // 4)) / len(panels), 1, 1))
    return save(fig, out, "tree_budget")


# ---- 3. typical acceptance: accepted length against quality -------------------------------------
TYPICAL_COMMAND = ("python -m bench.run --methods medusa-typical,medusa,hf-sample,hf-greedy --temperature 0.7 "
                   "--posterior-threshold EPS --out results/bench/typical-EPS` for several EPS")
REFERENCE_MARKERS = ("s", "D", "P", "X", "*")
EPS_MARKERS = ("o", "^", "v", "<", ">", "h", "p")  # distinct from the references'


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

    The swept method is the one whose records carry the most eps values (typical acceptance); the
    references are every other method at that temperature, one row each (the run with the most
    prompt turns): greedy methods (same tree if they use one), plain sampling and any other sampling
    method (e.g. lossless sampling with a tree). A method without accepted length (plain decoding)
    is drawn at 1 token/step; the `plain` column says which.
    """
    w = load.wide(load.sweep_frame(runs), ["mean_accepted_length", *QUALITY_LABELS])
    typ, temperature = _swept(w, temperature)
    tree = typ["tree"].iloc[0]
    # Greedy records carry temperature 0 but their quality is scored at their run's T: take them
    # from runs with records at T; sampling methods from any run at T.
    runs_at_t = set(w.loc[_at(w["temperature"], temperature), "run"])
    greedy = w["greedy"].astype(bool)
    refs = w[(w["method"] != typ["method"].iloc[0])
             & ((greedy & w["run"].isin(runs_at_t)) | (~greedy & _at(w["temperature"], temperature)))]
    no_tree = refs["tree"].isna() | (refs["tree"].astype(str) == "")
    refs = refs[no_tree | (refs["tree"] == tree)].copy()
    refs = refs.sort_values(["n", "run"]).drop_duplicates("method", keep="last")
    refs["plain"] = refs["mean_accepted_length"].isna()
    refs.loc[refs["plain"], "mean_accepted_length"] = 1.0
    refs.loc[refs["plain"], ["mean_accepted_length_lo", "mean_accepted_length_hi"]] = np.nan
    refs = refs.assign(_sampled=~refs["greedy"].astype(bool)).sort_values(["_sampled", "plain", "method"])
    return typ, refs.drop(columns="_sampled").reset_index(drop=True), temperature


# How a reference decodes, by method; a method not named here is described by its traits.
REFERENCE_KINDS = {
    "hf-greedy": "greedy decoding",
    "hf-sample": "plain sampling",
    "medusa": "greedy acceptance",
    "medusa-sample": "lossless sampling",
}


def reference_label(ref: pd.Series) -> str:
    """How a reference of the eps sweep decodes (`REFERENCE_KINDS`, else from its traits: greedy
    decoding or acceptance, plain sampling or sampling with a tree), with the method's name."""
    greedy, plain = bool(ref["greedy"]), bool(ref["plain"])
    traits = ("greedy decoding" if plain else "greedy acceptance") if greedy else \
        ("plain sampling" if plain else "sampling with a tree")
    return f"{REFERENCE_KINDS.get(str(ref['method']), traits)} ({ref['method']})"


def _eps_colors(n: int) -> list[Any]:
    """One colour per eps, light (small eps) to dark, so points need no text labels."""
    return [colormaps["Purples"](v) for v in np.linspace(0.35, 1.0, n)]


def _typical_panel(ax: Any, typ: pd.DataFrame, refs: pd.DataFrame, q: str, swept: str) -> None:
    """Accepted length against quality measure `q`: the eps sweep (a line through points coloured by
    eps) and each reference (a marker; a dotted line at its accepted length if it uses a tree)."""
    ax.plot(typ[q], typ["mean_accepted_length"], color=method_color(swept), lw=0.8, zorder=2,
            label=f"{swept} eps sweep (tree {typ['tree'].iloc[0]})")
    for i, ((_, r), color) in enumerate(zip(typ.iterrows(), _eps_colors(len(typ)))):
        ax.errorbar([r[q]], [r["mean_accepted_length"]], xerr=yerr([r[q]], [r[q + "_lo"]], [r[q + "_hi"]]),
                    yerr=yerr([r["mean_accepted_length"]], [r["mean_accepted_length_lo"]], [r["mean_accepted_length_hi"]]),
                    color=color, marker=EPS_MARKERS[i % len(EPS_MARKERS)], ms=5, mec="0.2", mew=0.4, elinewidth=0.8, capsize=2, ls="none", zorder=3,
                    label=f"eps = {r['posterior_threshold']:g}")
    for j, (_, ref) in enumerate(refs.iterrows()):
        color = method_color(ref["method"], j + 1)
        if not ref["plain"]:
            ax.axhline(ref["mean_accepted_length"], color=color, lw=0.8, ls=":" if ref["greedy"] else "--", zorder=1)
        if pd.isna(ref[q]):
            continue
        ax.errorbar([ref[q]], [ref["mean_accepted_length"]], xerr=yerr([ref[q]], [ref[q + "_lo"]], [ref[q + "_hi"]]),
                    yerr=yerr([ref["mean_accepted_length"]], [ref["mean_accepted_length_lo"]], [ref["mean_accepted_length_hi"]]),
                    color=color, marker=REFERENCE_MARKERS[j % len(REFERENCE_MARKERS)], ls="none", ms=6, capsize=2,
                    zorder=3, label=reference_label(ref))
    ax.set_xlabel(QUALITY_LABELS[q])
    ax.set_ylabel("mean accepted length (tokens/step)")


def typical_acceptance(results: Path, out: Path, temperature: float | None = None, **_: Any) -> list[Path]:
    runs = load.load_runs(results)
    typ, refs, temp = typical_points(runs, temperature)
    swept = str(typ["method"].iloc[0])
    measures = [q for q in QUALITY_LABELS if typ[q].notna().any()]
    if not measures:
        raise WorkbenchError(f"the {swept} runs carry no quality metric (rerun without --no-quality)")
    # One more slot than measures: the legend takes the last panel (labels never sit on the data).
    ncols = min(3, len(measures) + 1)
    nrows = -(-(len(measures) + 1) // ncols)
    fig, axes = new_figure(ncols=ncols, nrows=nrows, width=4.0, height=3.3)
    for i, q in enumerate(measures):
        _typical_panel(axes.flat[i], typ, refs, q, swept)
    handles = {label: h for ax in axes.flat[:len(measures)] for h, label in zip(*ax.get_legend_handles_labels())}
    key = axes.flat[len(measures)]
    key.axis("off")
    key.legend(handles.values(), handles.keys(), loc="center", frameon=False, fontsize=7,
               title="accepted length against quality", title_fontsize=7.5)
    for ax in axes.flat[len(measures) + 1:]:
        ax.set_visible(False)
    lines = "; dotted/dashed line: accepted length of a greedy/sampling reference with a tree" \
        if (~refs["plain"]).any() else ""
    fig.suptitle(f"Typical acceptance: eps sweep at T={temp:g} (delta={typ['posterior_alpha'].iloc[0]:g}); "
                 f"95% bootstrap CIs over prompts{lines}", fontsize=9)
    names = set(typ["run"]) | set(refs["run"])
    n = pd.to_numeric(pd.concat([typ["n"], refs["n"]]), errors="coerce").dropna()
    n_text = f", n = {int(n.min())}" + (f"-{int(n.max())}" if n.nunique() > 1 else "") + " prompt turns per point" if len(n) else ""
    caption(fig, load.caption_from_records(runs_records(runs, names), f"{len(names)} runs under results/bench{n_text}"))
    return save(fig, out, "typical_acceptance")
