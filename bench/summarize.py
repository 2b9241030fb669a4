"""Summarise a benchmark run: speedups with bootstrap intervals, accepted length, losslessness, quality.

    python -m bench.summarize results/bench/mtbench [--bootstrap 2000] [--seed 0]

Reads ``records.csv`` and ``tokens.jsonl`` (`bench.records`), writes ``summary.csv`` (tidy: method,
category, metric, value, lo, hi, n), ``mismatches.csv`` and ``summary.md``, and prints the Markdown.

Statistics, per method and category (and ``all``). The unit is a prompt turn (question_id, turn);
repeats of a unit are pooled (tokens and seconds summed). Intervals are 95% percentile bootstraps
over units (paired: a resample draws the same units for a method and its baseline).

- ``tokens_per_s``: total new tokens / total wall seconds.
- ``speedup_vs_<base>_mean``: mean over units of tokens/s(method) / tokens/s(base);
  ``speedup_vs_<base>_total``: ratio of the two totals' tokens/s; base is ``hf-greedy`` and ``ar``.
- ``mean_accepted_length``: accepted tokens / verification steps (engine methods; 1.0 for ``ar``).
- ``identical_to_hf_greedy`` (greedy methods): share of records whose output ids equal hf-greedy's
  for the same (question, turn, repeat) exactly; a different length is a mismatch. Every mismatch
  goes to ``mismatches.csv`` with its first divergent position (for a truncated output, the
  shorter length). ``mismatches`` counts them.
- quality, for every method (read sampled methods beside ``hf-sample``): ``loglik_per_token`` (mean
  log p_T of each answer token under the backbone at the run's temperature), ``argmax_agreement``
  (share of answer tokens that are the backbone's argmax given their prefix), ``greedy_prefix``
  (tokens shared with hf-greedy's answer before the first divergence), ``distinct_2`` (distinct
  bigrams / bigrams), ``repetition_rate`` (share of 4-grams repeating an earlier 4-gram of the same
  answer) and ``answer_tokens``.

- the machine, from each record's 1-minute load average just before and after its timed call
  (``load_start``/``load_end``, `bench.records`): ``max_load`` (the highest of either over the
  method's records) and ``overloaded`` (how many records had a load above their run's thread count
  times its concurrent shards (`run_concurrency`: a run split into n shards runs n processes at
  once) plus `LOAD_MARGIN`: other processes were running beside the timed threads); ``n`` counts the
  records with a load. Records written before the load was kept have none, and get neither metric.

The Markdown names how each method decodes, from its records (`decoding`: ``greedy``, or ``T=0.7``
with typical acceptance's eps and delta when it has them), and the temperature the quality scores
use; a run of greedy methods only never reads as sampled. An interval over fewer than
`MIN_BOOTSTRAP_N` prompt turns gets one warning line, and so do overloaded records
(`overload_warning`), in the Markdown and, from the CLI, on stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import records as R
from bench.quality import SAMPLING_REFERENCE, sampling_rows
from common.cli import BUSY_MARGIN, Parser, run_cli
from common.errors import WorkbenchError
from common.io import atomic_write, write_csv

# The one place the reference is named: every greedy method must reproduce its output token for
# token, and it is the first speedup baseline (analysis reads these constants, never the names).
REFERENCE = "hf-greedy"
BASELINES = (REFERENCE, "ar")
IDENTICAL = "identical_to_" + REFERENCE.replace("-", "_")
QUALITY = ("loglik_per_token", "argmax_agreement", "greedy_prefix", "distinct_2", "repetition_rate", "answer_tokens")
SUMMARY_COLUMNS = ("method", "category", "metric", "value", "lo", "hi", "n")
ALL = "all"
MIN_BOOTSTRAP_N = 5  # prompt turns; fewer make a percentile interval too rough to read as 95%
# Column titles of the quality table; a metric added to QUALITY without one is titled by its name.
QUALITY_TITLES = {"loglik_per_token": "log-lik/token at T", "argmax_agreement": "argmax agreement",
                  "greedy_prefix": "greedy prefix", "distinct_2": "distinct-2", "repetition_rate": "repetition",
                  "answer_tokens": "answer tokens"}
QUALITY_DIGITS = {"greedy_prefix": 1, "answer_tokens": 1}
# A record is overloaded when its load average tops its thread count by more than an idle
# machine's background (0.1-0.3): the timed threads then shared the cores with other processes.
LOAD_MARGIN = BUSY_MARGIN
MAX_LOAD, OVERLOADED = "max_load", "overloaded"


def speedup_metric(base: str, kind: str = "mean") -> str:
    """The summary metric of the speedup over `base`: ``speedup_vs_<base>_mean`` or ``..._total``."""
    return f"speedup_vs_{base}_{kind}"


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """First index where the sequences differ (the shorter length if one is a prefix); None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def distinct_n(ids: Sequence[int], n: int) -> float:
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def repetition_rate(ids: Sequence[int], n: int = 4) -> float:
    d = distinct_n(ids, n)
    return 1.0 - d if d == d else float("nan")


def bootstrap(stat: Callable[..., np.ndarray], arrays: Sequence[np.ndarray], resamples: int, seed: int) -> tuple[float, float, float]:
    """(point, lo, hi): `stat` maps arrays (..., units) to (...,); 95% percentile interval over units."""
    n = len(arrays[0])
    point = float(stat(*[a[None, :] for a in arrays])[0])
    if n < 2 or resamples < 1:
        return point, float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    vals = stat(*[a[idx] for a in arrays])
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return point, float("nan"), float("nan")
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return point, float(lo), float(hi)


def _ratio_of_sums(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return num.sum(-1) / den.sum(-1)


def _mean(v: np.ndarray) -> np.ndarray:
    return v.mean(-1)


def _mean_ratio(tm: np.ndarray, wm: np.ndarray, tb: np.ndarray, wb: np.ndarray) -> np.ndarray:
    return ((tm / wm) / (tb / wb)).mean(-1)


def _total_ratio(tm: np.ndarray, wm: np.ndarray, tb: np.ndarray, wb: np.ndarray) -> np.ndarray:
    return (tm.sum(-1) / wm.sum(-1)) / (tb.sum(-1) / wb.sum(-1))


def add_token_metrics(frame: pd.DataFrame, tokens: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-record text metrics and the lossless comparison against hf-greedy; (frame, mismatches)."""
    frame = frame.copy()
    outs = [tokens[(r.question_id, r.turn, r.method, r.repeat)] for r in frame.itertuples()]
    frame["distinct_2"] = [distinct_n(t["output_ids"], 2) for t in outs]
    frame["repetition_rate"] = [repetition_rate(t["output_ids"]) for t in outs]
    frame["answer_tokens"] = frame["new_tokens"].astype(float)
    identical, prefix, rows = [], [], []
    ref = {(r.question_id, r.turn, r.repeat): tokens[(r.question_id, r.turn, r.method, r.repeat)]
           for r in frame.itertuples() if r.method == REFERENCE}
    ref0 = {(q, t): v for (q, t, rep), v in ref.items() if rep == 0}
    for r, t in zip(frame.itertuples(), outs):
        other = ref.get((r.question_id, r.turn, r.repeat)) or ref0.get((r.question_id, r.turn))
        if other is None:
            identical.append(np.nan)
            prefix.append(np.nan)
            continue
        pos = first_divergence(t["output_ids"], other["output_ids"])
        prefix.append(float(len(t["output_ids"]) if pos is None else pos))
        if not r.greedy or r.method == REFERENCE:
            identical.append(np.nan)
            continue
        identical.append(float(pos is None))
        if pos is not None:
            rows.append({"method": r.method, "question_id": r.question_id, "category": r.category, "turn": r.turn,
                         "repeat": r.repeat, "first_divergence": pos, "method_tokens": len(t["output_ids"]),
                         "reference_tokens": len(other["output_ids"]),
                         "same_prompt": t["prompt_ids"] == other["prompt_ids"]})
    frame["identical"] = identical
    frame["greedy_prefix"] = prefix
    cols = ["method", "question_id", "category", "turn", "repeat", "first_divergence", "method_tokens",
            "reference_tokens", "same_prompt"]
    return frame, pd.DataFrame(rows, columns=cols)


def record_load(frame: pd.DataFrame) -> pd.Series:
    """Each record's highest load average around its timed call (NaN where none was recorded)."""
    return frame[list(R.LOAD_COLUMNS)].apply(pd.to_numeric, errors="coerce").max(axis=1, skipna=True)


def overloaded(frame: pd.DataFrame, concurrency: int = 1) -> pd.Series:
    """Per record: its load topped its thread count x the run's concurrent shards by more than
    `LOAD_MARGIN` (False where unknown)."""
    return record_load(frame) > pd.to_numeric(frame["threads"], errors="coerce") * concurrency + LOAD_MARGIN


def run_concurrency(info: dict[str, Any]) -> int:
    """How many shard processes a run ran at once: the largest n of its sessions' shards "i/n" (1 unsharded)."""
    counts = [1]
    for session in info.get("sessions", []) if isinstance(info, dict) else []:
        shard = str(session.get("shard", "")) if isinstance(session, dict) else ""
        if "/" in shard and shard.split("/")[1].isdigit():
            counts.append(int(shard.split("/")[1]))
    return max(counts)


def _units(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (method, question_id, turn): summed tokens, seconds, steps, accepted; mean quality metrics."""
    agg: dict[str, Any] = {"category": "first", "new_tokens": "sum", "wall_s": "sum", "steps": "sum",
                           "accepted_tokens": "sum", **{q: "mean" for q in QUALITY}}
    return frame.groupby(["method", "question_id", "turn"], sort=False).agg(agg).reset_index()


def summarize_frame(frame: pd.DataFrame, tokens: dict, resamples: int = 2000, seed: int = 0,
                    concurrency: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(tidy summary, mismatches) of a run's records; `concurrency`: its shards that ran at once."""
    frame, mismatches = add_token_metrics(frame, tokens)
    units = _units(frame)
    methods = list(dict.fromkeys(frame["method"]))
    categories = list(dict.fromkeys(frame["category"])) + [ALL]
    out: list[dict[str, Any]] = []

    def emit(method: str, category: str, metric: str, value: float, lo: float, hi: float, n: int) -> None:
        out.append({"method": method, "category": category, "metric": metric, "value": value, "lo": lo, "hi": hi, "n": n})

    for category in categories:
        cu = units if category == ALL else units[units["category"] == category]
        for method in methods:
            mu = cu[cu["method"] == method].set_index(["question_id", "turn"])
            if mu.empty:
                continue
            n = len(mu)
            tok, wall = mu["new_tokens"].to_numpy(float), mu["wall_s"].to_numpy(float)
            recs = frame[(frame["method"] == method) & ((frame["category"] == category) | (category == ALL))]
            emit(method, category, "records", float(len(recs)), np.nan, np.nan, n)
            load = record_load(recs)
            if load.notna().any():
                emit(method, category, MAX_LOAD, float(load.max()), np.nan, np.nan, int(load.notna().sum()))
                emit(method, category, OVERLOADED, float(overloaded(recs, concurrency).sum()), np.nan, np.nan,
                     int(load.notna().sum()))
            emit(method, category, "tokens_per_s", *bootstrap(_ratio_of_sums, [tok, wall], resamples, seed), n)
            for base in BASELINES:
                if base == method or base not in methods:
                    continue
                bu = cu[cu["method"] == base].set_index(["question_id", "turn"])
                common = mu.index.intersection(bu.index)
                if len(common) == 0:
                    continue
                arrays = [mu.loc[common, "new_tokens"].to_numpy(float), mu.loc[common, "wall_s"].to_numpy(float),
                          bu.loc[common, "new_tokens"].to_numpy(float), bu.loc[common, "wall_s"].to_numpy(float)]
                emit(method, category, speedup_metric(base, "mean"), *bootstrap(_mean_ratio, arrays, resamples, seed), len(common))
                emit(method, category, speedup_metric(base, "total"), *bootstrap(_total_ratio, arrays, resamples, seed), len(common))
            steps = mu["steps"].to_numpy(float)
            if np.nansum(steps) > 0:
                emit(method, category, "mean_accepted_length",
                     *bootstrap(_ratio_of_sums, [mu["accepted_tokens"].to_numpy(float), steps], resamples, seed), n)
            ident = recs["identical"].dropna()
            if len(ident):
                emit(method, category, IDENTICAL, float(ident.mean()), np.nan, np.nan, len(ident))
                emit(method, category, "mismatches", float((ident == 0).sum()), np.nan, np.nan, len(ident))
            for q in QUALITY:
                v = mu[q].to_numpy(float)
                v = v[np.isfinite(v)]
                if v.size:
                    emit(method, category, q, *bootstrap(_mean, [v], resamples, seed), int(v.size))
    # Sampled methods against plain sampling: paired quality gaps and token-frequency divergence.
    out.extend(sampling_rows(frame, tokens, resamples, seed).to_dict("records"))
    return pd.DataFrame(out, columns=list(SUMMARY_COLUMNS)), mismatches


def _fmt(row: pd.Series | None, digits: int = 2, pct: bool = False) -> str:
    if row is None or not np.isfinite(row["value"]):
        return ""
    f = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.{digits}f}")
    s = f(row["value"])
    if np.isfinite(row["lo"]) and np.isfinite(row["hi"]):
        s += f" [{f(row['lo'])}, {f(row['hi'])}]"
    return s


def _setting(values: pd.Series) -> float | None:
    v = pd.to_numeric(values, errors="coerce").dropna()
    return float(v.mode().iloc[0]) if len(v) else None


def decoding(frame: pd.DataFrame) -> dict[str, str]:
    """How each method of a run's records decodes: ``greedy``, or ``T=0.7`` plus ``eps=0.09,
    delta=0.3`` when its records carry typical acceptance's settings (the records' own columns,
    never the run's defaults, which greedy methods ignore)."""
    out = {}
    for method, recs in frame.groupby("method", sort=False):
        if recs["greedy"].astype(bool).all():
            out[str(method)] = "greedy"
            continue
        t, eps, delta = (_setting(recs[c]) for c in ("temperature", "posterior_threshold", "posterior_alpha"))
        text = f"T={t:g}" if t is not None else "sampled"
        if eps is not None:
            text += f", eps={eps:g}" + (f", delta={delta:g}" if delta is not None else "")
        out[str(method)] = text
    return out


def tiny_n_warning(summary: pd.DataFrame, min_n: int = MIN_BOOTSTRAP_N) -> str | None:
    """One line when some bootstrap interval rests on fewer than `min_n` prompt turns, else None."""
    ci = summary[np.isfinite(summary["lo"].astype(float)) & np.isfinite(summary["hi"].astype(float))]
    small = ci[pd.to_numeric(ci["n"], errors="coerce") < min_n]
    if small.empty:
        return None
    cats = list(dict.fromkeys(small["category"].astype(str)))
    return (f"warning: {len(small)} of {len(ci)} bootstrap intervals rest on fewer than {min_n} prompt turns "
            f"(smallest n = {int(small['n'].min())}; categories {', '.join(cats[:4])}{' ...' if len(cats) > 4 else ''}): "
            "read them as rough, not as 95% intervals")


def overload_warning(summary: pd.DataFrame) -> str | None:
    """One line naming the methods with overloaded records (category all), else None."""
    rows = summary[(summary["metric"] == OVERLOADED) & (summary["category"].astype(str) == ALL)]
    rows = rows[rows["value"].astype(float) > 0]
    if rows.empty:
        return None
    loads = summary[(summary["metric"] == MAX_LOAD) & (summary["category"].astype(str) == ALL)]
    peak = dict(zip(loads["method"], loads["value"].astype(float)))
    per = ", ".join(f"{r.method} {int(r.value)} of {int(r.n)} (load up to {peak.get(r.method, np.nan):.2f})"
                    for r in rows.itertuples(index=False))
    k = int(rows["value"].sum())
    return (f"warning: {k} record{'s' if k != 1 else ''} ran with the load average above their thread count "
            f"(x concurrent shards, +{LOAD_MARGIN:g}): {per}; other processes shared the cores, so those timings are slower and "
            "noisier: measure them again on an idle machine")


def markdown(summary: pd.DataFrame, mismatches: pd.DataFrame, run_info: dict[str, Any],
             methods_decoding: dict[str, str] | None = None) -> str:
    """The summary as Markdown tables (speed and losslessness per method and category; quality).

    `methods_decoding` (`decoding(records)`) names how each method decodes; without it the header
    says nothing about temperature, rather than the run's default that greedy methods ignore."""
    get = {(r.method, r.category, r.metric): r._asdict() for r in summary.itertuples(index=False)}

    def cell(m: str, c: str, metric: str, **kw: Any) -> str:
        return _fmt(get.get((m, c, metric)), **kw)

    ident = run_info.get("identity", {})
    tree = ident.get("tree") or {}
    methods_decoding = methods_decoding or {}
    score_t = ident.get("temperature")
    warnings = [w for w in (tiny_n_warning(summary), overload_warning(summary)) if w]
    lines = [f"# Benchmark {run_info.get('name', '')}".rstrip(), "",
             f"prompts {ident.get('prompts', '?')}, backbone {ident.get('backbone', '?')}, heads {ident.get('heads') or '-'}, "
             f"tree {tree.get('name', '-')} (budget {tree.get('node_budget', '-')}), max new tokens "
             f"{ident.get('max_new_tokens', '?')}, {ident.get('device', '?')} {ident.get('dtype', '')} x{ident.get('threads', '?')} threads", ""]
    if methods_decoding:
        lines += ["Decoding: " + "; ".join(f"{m} {d}" for m, d in methods_decoding.items()) + ".", ""]
    for warning in warnings:
        lines += [f"**{warning}**", ""]
    lines += ["Speed: value [95% bootstrap interval over prompts]; speedups as mean of per-prompt ratios and ratio of totals.", "",
             "| method | category | n | tokens/s | "
             + "".join(f"vs {b} (mean) | vs {b} (total) | " for b in BASELINES)
             + f"accepted length | identical to {REFERENCE} |",
             "|---|---|---|---|" + "---|---|" * len(BASELINES) + "---|---|"]
    methods = list(dict.fromkeys(summary["method"]))
    categories = list(dict.fromkeys(summary["category"]))
    for c in categories:
        for m in methods:
            n = get.get((m, c, "tokens_per_s"))
            if n is None:
                continue
            speedups = "".join(f"{cell(m, c, speedup_metric(b, 'mean'))} | {cell(m, c, speedup_metric(b, 'total'))} | "
                               for b in BASELINES)
            lines.append(f"| {m} | {c} | {n['n']} | {cell(m, c, 'tokens_per_s', digits=1)} | {speedups}"
                         f"{cell(m, c, 'mean_accepted_length')} | {cell(m, c, IDENTICAL, pct=True)} |")
    quality = [q for q in QUALITY if any((m, ALL, q) in get for m in methods)]
    scored = f"; log-likelihood scored at T={score_t:g} for every method, whatever its decoding" \
        if isinstance(score_t, (int, float)) and score_t > 0 else ""
    lines += ["", f"Quality (category all; read sampled methods beside hf-sample{scored}):", "",
              "| method | " + " | ".join(QUALITY_TITLES.get(q, q) for q in quality) + " |",
              "|---|" + "---|" * len(quality)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(cell(m, ALL, q, digits=QUALITY_DIGITS.get(q, 3)) for q in quality) + " |")
    gaps = [r for r in summary.itertuples(index=False) if r.metric.endswith(f"_vs_{SAMPLING_REFERENCE}")]
    if gaps:
        lines += ["", f"Sampled methods against {SAMPLING_REFERENCE} (paired over prompts; a lossless method's values "
                  "are the finite-sample floor):", "", "| method | metric | value [95% interval] | n |", "|---|---|---|---|"]
        lines += [f"| {r.method} | {r.metric} | {_fmt(pd.Series(r._asdict()), digits=3)} | {r.n} |" for r in gaps]
    if len(mismatches):
        lines += ["", f"Mismatches against {REFERENCE}: {len(mismatches)} (first divergent position; see mismatches.csv)", "",
                  f"| method | question | turn | repeat | first divergence | tokens | {REFERENCE} tokens | same prompt |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in mismatches.head(20).itertuples(index=False):
            lines.append(f"| {r.method} | {r.question_id} | {r.turn} | {r.repeat} | {r.first_divergence} | "
                         f"{r.method_tokens} | {r.reference_tokens} | {r.same_prompt} |")
    elif any(k[2] == IDENTICAL for k in get):
        lines += ["", f"Every greedy record is token-identical to {REFERENCE}."]
    return "\n".join(lines) + "\n"


def summarize_run(run_dir: str | Path, resamples: int = 2000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Summarise a run folder and write summary.csv, mismatches.csv and summary.md into it."""
    run_dir = Path(run_dir)
    frame, tokens, info = R.load_run(run_dir)
    if frame.empty:
        raise WorkbenchError(f"{run_dir} holds no records yet")
    summary, mismatches = summarize_frame(frame, tokens, resamples, seed, run_concurrency(info))
    text = markdown(summary, mismatches, {**info, "name": run_dir.name}, decoding(frame))
    write_csv(summary, run_dir / R.SUMMARY_FILE)
    write_csv(mismatches, run_dir / R.MISMATCHES_FILE)
    atomic_write(run_dir / "summary.md", text)
    return summary, mismatches, text


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m bench.summarize", description=__doc__.split("\n")[0])
    p.add_argument("run", help="run folder (results/bench/NAME)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (0: no intervals)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if not Path(a.run).is_dir():
        raise WorkbenchError(f"run folder not found: {a.run}")
    summary, _, text = summarize_run(a.run, a.bootstrap, a.seed)
    print(text, end="")
    for warning in (tiny_n_warning(summary), overload_warning(summary)):
        if warning:
            print(warning, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
