"""The headline tables the README quotes, as Markdown, from tidy files under results/ only.

    python -m analysis.tables                      # every table whose inputs exist
    python -m analysis.tables speed heads          # only these (exit 2 if one cannot be made)
    python -m analysis.tables --run mtbench-ref          # the reference run (the default)
    python -m analysis.tables speed --results results/_scratch --run mtbench   # a run of your own

Tables go to stdout (paste-ready Markdown, each under a ``###`` heading with a provenance line);
a table whose inputs are missing is reported on stderr as ``skipped <name>: <reason>`` naming the
command to run first, and the exit status stays 0 unless that table was asked for by name. The
speed tables report the run named ``--run`` (default `common.paths.REFERENCE_RUN`, ``mtbench-ref``),
never whichever run is biggest or sits in a default folder.
Intervals are the 95% bootstrap intervals of `bench.summarize` (Wilson intervals for accuracies).

Tables (they read what the figure of the same subject reads, see `analysis.figures`):
``speed`` (main run, category all: tokens/s, speedups, accepted length, losslessness),
``categories`` (speedup over hf-greedy per category), ``budget`` (accepted length and tokens/s per
tree), ``typical`` (the eps sweep), ``heads`` (top-i accuracy per head), ``validation`` (predicted
vs measured accepted length), ``latency`` (verify time by query tokens).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import fig_bench, load, load_calibration, load_latency
from bench.summarize import BASELINES, IDENTICAL, REFERENCE, speedup_metric
from common.cli import Parser, run_cli
from common.errors import WorkbenchError
from common.paths import REFERENCE_RUN


def fmt(value: Any, lo: Any = np.nan, hi: Any = np.nan, digits: int = 2, pct: bool = False) -> str:
    """``1.61 [1.53, 1.71]``; empty for a missing value; percentages with ``pct``."""
    try:
        v, lo, hi = float(value), float(lo), float(hi)
    except (TypeError, ValueError):
        return ""
    if not np.isfinite(v):
        return ""
    f = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.{digits}f}")
    s = f(v)
    if np.isfinite(lo) and np.isfinite(hi):
        s += f" [{f(lo)}, {f(hi)}]"
    return s


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _section(title: str, provenance: str, body: str) -> str:
    return f"### {title}\n\n_{provenance}_\n\n{body}\n"


def _metric(summary: pd.DataFrame, method: str, category: str, metric: str) -> pd.Series | None:
    g = summary[(summary["method"] == method) & (summary["category"].astype(str) == category) & (summary["metric"] == metric)]
    return None if g.empty else g.iloc[0]


def _cell(summary: pd.DataFrame, method: str, category: str, metric: str, **kw: Any) -> str:
    r = _metric(summary, method, category, metric)
    return "" if r is None else fmt(r["value"], r["lo"], r["hi"], **kw)


# ---- tables -------------------------------------------------------------------------------------
def speed(results: Path, run: str | None = None, **_: Any) -> str:
    r = load.pick_run(load.load_runs(results), run, need=(REFERENCE,))
    s = r.summary
    rows = []
    for m in r.methods:
        n = _metric(s, m, "all", "tokens_per_s")
        rows.append([m, "" if n is None else int(n["n"]) if "n" in n and pd.notna(n["n"]) else "",
                     _cell(s, m, "all", "tokens_per_s", digits=1)]
                    + [_cell(s, m, "all", speedup_metric(b)) for b in BASELINES]
                    + [_cell(s, m, "all", "mean_accepted_length"), _cell(s, m, "all", IDENTICAL, pct=True)])
    body = markdown_table(["method", "prompt turns", "tokens/s"] + [f"speedup vs {b}" for b in BASELINES]
                          + ["accepted length (tokens/step)", f"identical to {REFERENCE}"], rows)
    return _section(f"Speed, run {r.name} (all categories; 95% bootstrap CI)",
                    load.caption_from_records(r.records, f"run: {load.display(r.dir)}"), body)


def categories(results: Path, run: str | None = None, **_: Any) -> str:
    r = load.pick_run(load.load_runs(results), run, need=(REFERENCE,))
    s = r.summary
    metric = speedup_metric(REFERENCE)
    methods = fig_bench.speedup_methods(s, metric)
    cats = [c for c in dict.fromkeys(s["category"].astype(str)) if c != "all"] + ["all"]
    rows = [[c] + [_cell(s, m, c, metric) for m in methods] for c in cats]
    body = markdown_table(["category"] + [f"{m} speedup" for m in methods], rows)
    return _section(f"Speedup over {REFERENCE} per category, run {r.name} (mean of per-prompt ratios)",
                    load.caption_from_records(r.records, f"run: {load.display(r.dir)}"), body)


def budget(results: Path, **_: Any) -> str:
    runs = load.load_runs(results, quiet=True)
    pts = fig_bench.budget_points(runs)
    pts = pts.sort_values(["node_budget", "family"])
    rows = [[p.tree if p.family != "plain" else f"(plain, {p.method})", fig_bench.FAMILY_LABELS[p.family], int(p.node_budget),
             fmt(p.mean_accepted_length, p.mean_accepted_length_lo, p.mean_accepted_length_hi),
             fmt(p.tokens_per_s, p.tokens_per_s_lo, p.tokens_per_s_hi, digits=1), p.run] for p in pts.itertuples()]
    body = markdown_table(["tree", "family", "nodes", "accepted length (tokens/step)", "tokens/s", "run"], rows)
    names = set(pts["run"])
    return _section("Accepted length and speed against tree size (greedy methods with a tree)",
                    load.caption_from_records(fig_bench.runs_records(runs, names), f"{len(names)} runs"), body)


def typical(results: Path, temperature: float | None = None, **_: Any) -> str:
    runs = load.load_runs(results, quiet=True)
    typ, refs, temp = fig_bench.typical_points(runs, temperature)
    swept = typ["method"].iloc[0]
    measures = [q for q in fig_bench.QUALITY_LABELS if typ[q].notna().any() or refs[q].notna().any()]
    rows = []
    for p in pd.concat([typ, refs], ignore_index=True).itertuples():
        label = f"{p.method} eps={p.posterior_threshold:g}" if p.method == swept else p.method
        rows.append([label, fmt(p.mean_accepted_length, p.mean_accepted_length_lo, p.mean_accepted_length_hi)]
                    + [fmt(getattr(p, q), getattr(p, q + "_lo"), getattr(p, q + "_hi"), digits=3) for q in measures])
    body = markdown_table(["method", "accepted length (tokens/step)"] + [fig_bench.QUALITY_LABELS[q] for q in measures], rows)
    names = set(typ["run"]) | set(refs["run"])
    return _section(f"Typical acceptance at T={temp:g}: accepted length and quality per eps",
                    load.caption_from_records(fig_bench.runs_records(runs, names), f"{len(names)} runs"), body)


def heads(results: Path, calibration: str | None = None, **_: Any) -> str:
    acc = load_calibration.head_accuracy(results, calibration)
    t = acc.table
    r_max = int(t["topk"].max())
    ks = [k for k in (1, 2, 3, 5, 10) if k <= r_max] + ([r_max] if r_max not in (1, 2, 3, 5, 10) else [])
    rows = []
    for h in range(1, acc.num_heads + 1):
        g = t[t["head"] == h].set_index("topk")
        rows.append([h, int(g["positions"].iloc[0])] + [fmt(g.loc[k, "accuracy"], g.loc[k, "lo"], g.loc[k, "hi"], pct=True) for k in ks])
    body = markdown_table(["head (1-based)", "positions"] + [f"top-{k}" for k in ks], rows)
    return _section("Head accuracy: true token within the head's top-i (95% Wilson CI)",
                    load_calibration.calibration_caption(acc.meta, acc.source), body)


def validation(results: Path, **_: Any) -> str:
    v = load_calibration.load_validation(results)
    models = [c for c in ("independence", "empirical", "replay") if f"predicted_{c}" in v.columns]

    def predicted(value: float, measured: float) -> str:
        return f"{value:.3f} ({100 * (value - measured) / measured:+.1f}%)" if pd.notna(value) else ""

    rows = []
    for r in v.itertuples():
        rows.append([r.tree, r.kind, int(r.node_budget)] + [predicted(getattr(r, f"predicted_{c}"), r.measured) for c in models]
                    + [f"{r.measured:.3f}", f"{r.measured_by}, {int(r.prompts)} x {int(r.max_new_tokens)}",
                       f"{r.tokens_per_s:.1f}" if "tokens_per_s" in v.columns and pd.notna(r.tokens_per_s) else ""])
    body = markdown_table(["tree", "kind", "nodes"] + [f"predicted, {c}" for c in models]
                          + ["measured accepted length", "measured by (prompts x tokens)", "tokens/s"], rows)
    cal = load.results_path(results) / "calibration" / str(v["calibration"].iloc[0])
    files = ", ".join(dict.fromkeys(v["file"].astype(str)))
    return _section("Acceptance models: predicted vs measured accepted length (tokens/step)",
                    load_calibration.calibration_caption(load.read_json(cal / "calibration.json"), cal / files), body)


def latency(results: Path, **_: Any) -> str:
    parts = []
    for path in load_latency.latency_files(results):
        df = load_latency.load_latency(path)
        for (backbone, dtype), d in df.groupby(["backbone", "dtype"], sort=False):
            ctxs = sorted(d["context"].unique())
            wide = d.pivot_table(index="n_query", columns="context", values="median_s", aggfunc="first")
            rows = [[int(n)] + [f"{1e3 * wide.loc[n, c]:.2f}" if pd.notna(wide.loc[n, c]) else "" for c in ctxs] for n in wide.index]
            first = d.iloc[0]
            body = markdown_table(["query tokens"] + [f"ms @ context {int(c)}" for c in ctxs], rows)
            body += (f"\n\nMemory floor (weights / {first['mem_bandwidth_gbs']:.1f} GB/s): {1e3 * first['floor_s']:.2f} ms; "
                     f"matmul {first['matmul_gflops']:.0f} GFLOP/s.")
            parts.append(_section(f"Verify forward time, {backbone} {dtype} (median)",
                                  f"device: {first['device_name']} | model: {backbone} | source: {load.display(path)}", body))
    return "\n".join(parts)


TABLES: dict[str, Callable[..., str]] = {
    "speed": speed, "categories": categories, "budget": budget, "typical": typical,
    "heads": heads, "validation": validation, "latency": latency,
}


def make(name: str, results: str | Path | None = None, **options: Any) -> str:
    """One table as Markdown by registry name (raises `WorkbenchError` when it cannot be made)."""
    if name not in TABLES:
        raise WorkbenchError(f"unknown table {name!r} (known: {', '.join(TABLES)})")
    return TABLES[name](load.results_path(results), **options)


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m analysis.tables", description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", help=f"tables to print (default: all): {', '.join(TABLES)}")
    p.add_argument("--results", default=None, help="results folder (default: the repository's results/)")
    p.add_argument("--run", default=None, help=f"benchmark run for the speed tables (default {REFERENCE_RUN})")
    p.add_argument("--calibration", default=None, help="calibration folder name (default: the shipped heads')")
    p.add_argument("--temperature", type=float, default=None, help="temperature of the eps sweep")
    a = p.parse_args(argv)
    results = load.results_path(a.results)
    if not results.is_dir():
        raise WorkbenchError(f"results folder not found: {results}")
    options = {"run": a.run, "calibration": a.calibration, "temperature": a.temperature}
    unknown = [n for n in a.names if n not in TABLES]
    if unknown:
        raise WorkbenchError(f"unknown table {unknown[0]!r} (known: {', '.join(TABLES)})")
    for name in a.names or TABLES:
        try:
            print(make(name, results, **options))
        except WorkbenchError as e:
            if a.names:
                raise
            print(f"skipped {name}: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
