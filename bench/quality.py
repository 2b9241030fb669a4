"""How far a sampled method's outputs are from plain sampling's: paired quality gaps and token divergence.

Typical acceptance changes the output distribution by design; lossless tree sampling
(`medusa-sample`) does not. Read against plain sampling (`hf-sample`, the reference) in the same run
and at the same temperature, per method:

- ``<metric>_gap_vs_hf-sample`` for each per-record quality proxy the frame carries
  (`GAP_METRICS`: log-likelihood per token at T, argmax agreement, distinct-2, repetition rate):
  the mean over prompt turns of (method - reference), repeats of a turn averaged first; a 95%
  percentile bootstrap interval over turns, paired (a resample draws the same turns for both).
- ``token_jsd_vs_hf-sample``: the Jensen-Shannon divergence (bits) between the frequencies of the
  tokens the method emitted and those the reference emitted, pooled over the same turns, with a
  paired bootstrap interval. Finite samples put a floor under it: a lossless method (medusa-sample)
  shows that floor, so a lossy method is judged by how far it sits above medusa-sample, not above 0.

`sampling_rows(frame, tokens)` returns these as summary rows (`bench.summarize`'s tidy columns,
category ``all``); `frame` is a run's records (`bench.records.load_run`), optionally with the text
metrics `bench.summarize.add_token_metrics` adds (distinct_2, repetition_rate).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

SAMPLING_REFERENCE = "hf-sample"
GAP_METRICS = ("loglik_per_token", "argmax_agreement", "distinct_2", "repetition_rate")
ROW_COLUMNS = ("method", "category", "metric", "value", "lo", "hi", "n")
_BLOCK = 250  # bootstrap resamples per block of the token divergence (bounds memory: block x vocabulary)


def gap_metric(metric: str, reference: str = SAMPLING_REFERENCE) -> str:
    return f"{metric}_gap_vs_{reference}"


def jsd_metric(reference: str = SAMPLING_REFERENCE) -> str:
    return f"token_jsd_vs_{reference}"


def _resample_weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) how often each unit is drawn in each bootstrap resample."""
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    weights = np.zeros((resamples, n))
    np.add.at(weights, (np.arange(resamples)[:, None], idx), 1.0)
    return weights


def _interval(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """JS divergence in bits between count (or probability) vectors along the last axis."""
    p = p / p.sum(-1, keepdims=True)
    q = q / q.sum(-1, keepdims=True)
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(a > 0, a * np.log2(a / m), 0.0).sum(-1)

    return 0.5 * kl(p) + 0.5 * kl(q)


def token_jsd(method_units: Sequence[Sequence[int]], reference_units: Sequence[Sequence[int]],
              resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(JSD, lo, hi) of pooled token frequencies; unit i of both lists is the same prompt turn."""
    n = len(method_units)
    if n != len(reference_units):
        raise ValueError(f"{n} method units but {len(reference_units)} reference units")
    support = sorted({t for u in [*method_units, *reference_units] for t in u})
    if n == 0 or not support:
        return float("nan"), float("nan"), float("nan")
    column = {t: i for i, t in enumerate(support)}

    def counts(units: Sequence[Sequence[int]]) -> np.ndarray:
        c = np.zeros((n, len(support)))
        for i, u in enumerate(units):
            np.add.at(c[i], [column[t] for t in u], 1.0)
        return c

    a, b = counts(method_units), counts(reference_units)
    point = float(jensen_shannon(a.sum(0), b.sum(0)))
    if n < 2 or resamples < 1:
        return point, float("nan"), float("nan")
    weights = _resample_weights(n, resamples, seed)
    values = np.concatenate([jensen_shannon(w @ a, w @ b) for w in np.split(weights, range(_BLOCK, resamples, _BLOCK))])
    return (point, *_interval(values))


def paired_gap(method: np.ndarray, reference: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean of method - reference, lo, hi) over paired units (NaN pairs dropped)."""
    diff = np.asarray(method, float) - np.asarray(reference, float)
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        return float("nan"), float("nan"), float("nan")
    point = float(diff.mean())
    if diff.size < 2 or resamples < 1:
        return point, float("nan"), float("nan")
    weights = _resample_weights(diff.size, resamples, seed)
    return (point, *_interval(weights @ diff / diff.size))


def _units(frame: pd.DataFrame, method: str, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per (question_id, turn) of `method`: its metrics averaged over repeats."""
    rows = frame[frame["method"] == method]
    return rows.groupby(["question_id", "turn"], sort=True)[list(metrics)].mean()


def _unit_tokens(frame: pd.DataFrame, tokens: Mapping[tuple, Mapping[str, Any]], method: str) -> dict[tuple, list[int]]:
    """(question_id, turn) -> the output ids of every repeat of `method`, concatenated."""
    out: dict[tuple, list[int]] = {}
    for r in frame[frame["method"] == method].itertuples():
        out.setdefault((r.question_id, r.turn), []).extend(tokens[(r.question_id, r.turn, r.method, r.repeat)]["output_ids"])
    return out


def sampling_rows(frame: pd.DataFrame, tokens: Mapping[tuple, Mapping[str, Any]], resamples: int = 2000,
                  seed: int = 0, reference: str = SAMPLING_REFERENCE) -> pd.DataFrame:
    """Summary rows (`ROW_COLUMNS`) comparing every sampled method with `reference`; empty without it."""
    out: list[dict[str, Any]] = []
    methods = [m for m in dict.fromkeys(frame["method"]) if m != reference
               and not frame.loc[frame["method"] == m, "greedy"].astype(bool).any()]
    if reference not in set(frame["method"]) or not methods:
        return pd.DataFrame(out, columns=list(ROW_COLUMNS))
    metrics = [m for m in GAP_METRICS if m in frame.columns]
    ref_units, ref_tokens = _units(frame, reference, metrics), _unit_tokens(frame, tokens, reference)
    for method in methods:
        units = _units(frame, method, metrics)
        common = units.index.intersection(ref_units.index)
        for metric in metrics:
            a, b = units.loc[common, metric].to_numpy(float), ref_units.loc[common, metric].to_numpy(float)
            n = int(np.isfinite(a - b).sum())
            out.append({"method": method, "category": "all", "metric": gap_metric(metric, reference),
                        **dict(zip(("value", "lo", "hi"), paired_gap(a, b, resamples, seed))), "n": n})
        mine = _unit_tokens(frame, tokens, method)
        value, lo, hi = token_jsd([mine[k] for k in common], [ref_tokens[k] for k in common], resamples, seed)
        out.append({"method": method, "category": "all", "metric": jsd_metric(reference), "value": value,
                    "lo": lo, "hi": hi, "n": len(common)})
    return pd.DataFrame(out, columns=list(ROW_COLUMNS))
