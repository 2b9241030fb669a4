"""Calibrated confidence: a head's softmax probability -> the chance its candidate is the true token.

A head's raw softmax probability is a poor acceptance estimate (heads are over- or under-confident,
and differently so per head). `bench.calibrate` records, for every held-out position, head and
rank of its top-R list, the head's probability of that candidate and whether it was the true
future token (the candidates table, ``probs.parquet``). `fit_confidence` fits, per head, the
monotone map probability -> P(true token) by isotonic regression (pool-adjacent-violators, so
a more probable candidate never gets a lower confidence), written as ``confidence.csv`` beside
``accuracy.csv``. A dynamic tree (`trees.dynamic`) multiplies these confidences along a path to
estimate its acceptance.

The table ``confidence.csv`` has one row per isotonic block: ``head, prob_lo, prob_hi, prob_mean,
confidence, hits, count`` (the block's probability range and mean, hits / count, the candidates
pooled in it). `ConfidenceMap.apply` interpolates linearly between the blocks' (prob_mean,
confidence) points and holds the end values outside them, vectorised over a (K, top_k) torch
tensor (any device) or numpy array; row k is head k + 1.

Calibrations made before this table existed lack it (and ``probs.parquet``); they load
everywhere else as before, and `load_confidence` says how to make the table.

Usage::

    from trees.confidence import fit_confidence, load_confidence
    cmap = fit_confidence(candidates)          # prompt, position, head, rank0, prob, hit
    cmap.save("results/_scratch/calibration/mine/confidence.csv")
    cmap = load_confidence("results/calibration/smollm2-135m-medusa1")   # folder or file
    acc = cmap.apply(torch.softmax(head_logits, -1).topk(10).values)      # (K, 10) calibrated
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from common.errors import MissingResult, WorkbenchError
from common.io import display, read_csv, write_csv

CANDIDATES_COLUMNS = ["prompt", "position", "head", "rank0", "prob", "hit"]  # required when read
# As written since the token column was added: the candidate's token id, which hybrid trees are
# replayed with (`trees.policy_replay`); older tables lack it and load without it.
CANDIDATE_TABLE_COLUMNS = [*CANDIDATES_COLUMNS, "token"]
CONFIDENCE_COLUMNS = ["head", "prob_lo", "prob_hi", "prob_mean", "confidence", "hits", "count"]
CONFIDENCE_FILE = "confidence.csv"
CANDIDATES_FILES = ("probs.parquet", "probs.csv")
MAKE_COMMAND = "python -m bench.calibrate --fresh"  # what writes both (an older calibration lacks them)


# ---- isotonic regression ------------------------------------------------------------------------
def isotonic_blocks(x: np.ndarray, hit: np.ndarray) -> pd.DataFrame:
    """Pool-adjacent-violators fit of P(hit | x), non-decreasing in x, as blocks of the sorted x.

    Equal x values are pooled first (a step cannot split them). Returns the columns of
    `CONFIDENCE_COLUMNS` without ``head``, one row per block, prob_mean strictly increasing.
    """
    x = np.asarray(x, dtype=np.float64)
    hit = np.asarray(hit, dtype=np.float64)
    if x.ndim != 1 or x.shape != hit.shape or x.size == 0:
        raise WorkbenchError(f"isotonic fit needs two equal-length non-empty vectors, got {x.shape} and {hit.shape}")
    values, inverse = np.unique(x, return_inverse=True)
    count = np.bincount(inverse).astype(np.float64)
    hits = np.bincount(inverse, weights=hit)
    # A stack of blocks [hits, count, sum of x, lowest x, highest x]; pool the last two while
    # their means decrease (compared as cross products: no division, exact on integer counts).
    blocks: list[list[float]] = []
    for v, c, hsum in zip(values.tolist(), count.tolist(), hits.tolist()):
        blocks.append([hsum, c, v * c, v, v])
        while len(blocks) > 1 and blocks[-2][0] * blocks[-1][1] >= blocks[-1][0] * blocks[-2][1]:
            last = blocks.pop()
            prev = blocks[-1]
            prev[0] += last[0]
            prev[1] += last[1]
            prev[2] += last[2]
            prev[4] = last[4]
    h, n, s, lo, hi = (np.array(col) for col in zip(*blocks))
    return pd.DataFrame({
        "prob_lo": lo, "prob_hi": hi, "prob_mean": s / n,
        "confidence": h / n, "hits": h.round().astype(np.int64), "count": n.astype(np.int64),
    })


# ---- the map ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConfidenceMap:
    """Per-head monotone map probability -> P(candidate is the true token); see the module docstring."""

    table: pd.DataFrame  # CONFIDENCE_COLUMNS, sorted by head then prob_mean
    source: str = ""
    # (K, B) knots, each row padded by repeating its last knot; per-device tensor copies in `_cache`.
    knots_x: np.ndarray = field(init=False, repr=False, compare=False)
    knots_y: np.ndarray = field(init=False, repr=False, compare=False)
    _cache: dict[Any, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, init=False, repr=False,
                                                                 compare=False)

    def __post_init__(self) -> None:
        table = check_confidence(self.table, self.source)
        object.__setattr__(self, "table", table)
        groups = [g for _, g in table.groupby("head", sort=True)]
        width = max(len(g) for g in groups)
        xs = np.empty((len(groups), width))
        ys = np.empty((len(groups), width))
        for k, g in enumerate(groups):
            x, y = g["prob_mean"].to_numpy(float), g["confidence"].to_numpy(float)
            xs[k], ys[k] = np.pad(x, (0, width - x.size), mode="edge"), np.pad(y, (0, width - y.size), mode="edge")
        object.__setattr__(self, "knots_x", xs)
        object.__setattr__(self, "knots_y", ys)

    @property
    def num_heads(self) -> int:
        return int(self.knots_x.shape[0])

    def _knots(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (str(device), dtype)
        if key not in self._cache:
            self._cache[key] = (torch.as_tensor(self.knots_x, dtype=dtype, device=device),
                                torch.as_tensor(self.knots_y, dtype=dtype, device=device))
        return self._cache[key]

    def apply(self, probs: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Calibrated confidences of probabilities (K, ...) (row k = head k + 1), same type, device and shape.

        Torch input stays on its device (float32/float64 kept, other dtypes computed in float32);
        a numpy array comes back as float64. K may be less than the heads in the map, not more.
        """
        if isinstance(probs, np.ndarray):
            return self.apply(torch.from_numpy(np.asarray(probs, dtype=np.float64))).numpy()
        if probs.ndim < 1 or probs.shape[0] > self.num_heads:
            raise WorkbenchError(f"confidence map{self._where()} covers {self.num_heads} heads, "
                                 f"got probabilities of shape {tuple(probs.shape)}")
        dtype = probs.dtype if probs.dtype in (torch.float32, torch.float64) else torch.float32
        k = probs.shape[0]
        x = probs.to(dtype).reshape(k, -1)
        xp, fp = self._knots(probs.device, dtype)
        xp, fp = xp[:k], fp[:k]
        last = xp.shape[1] - 1
        idx = torch.searchsorted(xp, x.contiguous(), right=True)  # first knot > x, per row
        hi, lo = idx.clamp(max=last), (idx - 1).clamp(min=0)
        x0, x1, y0, y1 = xp.gather(1, lo), xp.gather(1, hi), fp.gather(1, lo), fp.gather(1, hi)
        span = x1 - x0
        t = torch.where(span > 0, (x - x0) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(x))
        return (y0 + t.clamp(0, 1) * (y1 - y0)).reshape(probs.shape)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table (through `common.io.write_csv`, atomically)."""
        return write_csv(self.table, path)

    def _where(self) -> str:
        return f" {self.source}" if self.source else ""


def check_confidence(table: pd.DataFrame, source: str = "") -> pd.DataFrame:
    """The table sorted by (head, prob_mean), or one `WorkbenchError` line saying what is wrong."""
    where = f" {source}" if source else ""
    missing = [c for c in CONFIDENCE_COLUMNS if c not in table.columns]
    if missing:
        raise WorkbenchError(f"confidence table{where} lacks columns {missing}")
    if table.empty:
        raise WorkbenchError(f"confidence table{where} has no rows")
    table = table[CONFIDENCE_COLUMNS].copy()
    numeric = table.apply(pd.to_numeric, errors="coerce")
    if numeric.isna().any().any():
        raise WorkbenchError(f"confidence table{where} has non-numeric or empty cells")
    table = numeric.astype({"head": np.int64, "hits": np.int64, "count": np.int64})
    heads = np.sort(table["head"].unique())
    if heads[0] != 1 or not np.array_equal(heads, np.arange(1, heads.size + 1)):
        raise WorkbenchError(f"confidence table{where} must cover heads 1..K, has {heads.tolist()}")
    probs = table[["prob_lo", "prob_hi", "prob_mean", "confidence"]].to_numpy()
    if probs.min() < 0 or probs.max() > 1:
        raise WorkbenchError(f"confidence table{where} has probabilities outside [0, 1]")
    table = table.sort_values(["head", "prob_mean"], ignore_index=True)
    for head, g in table.groupby("head"):
        if (np.diff(g["prob_mean"].to_numpy()) <= 0).any() or (np.diff(g["confidence"].to_numpy()) < 0).any():
            raise WorkbenchError(f"confidence table{where}: head {head}'s map is not increasing in probability")
    return table


def fit_confidence(candidates: pd.DataFrame, source: str = "") -> ConfidenceMap:
    """Per-head isotonic map from a candidates table (``head, prob, hit``; see `CANDIDATES_COLUMNS`)."""
    missing = [c for c in ("head", "prob", "hit") if c not in candidates.columns]
    if missing:
        raise WorkbenchError(f"candidates table{' ' + source if source else ''} lacks columns {missing}")
    if candidates.empty:
        raise WorkbenchError(f"candidates table{' ' + source if source else ''} has no rows")
    parts = []
    for head, g in candidates.groupby("head", sort=True):
        blocks = isotonic_blocks(g["prob"].to_numpy(), g["hit"].to_numpy())
        blocks.insert(0, "head", int(head))
        parts.append(blocks)
    return ConfidenceMap(pd.concat(parts, ignore_index=True), source=source)


def load_confidence(source: str | os.PathLike) -> ConfidenceMap:
    """The confidence map of a calibration folder (its ``confidence.csv``) or of a table file.

    A missing table raises `MissingResult` saying that calibrations made before it existed lack
    it and which command makes it.
    """
    path = Path(source)
    if path.is_dir():
        path = path / CONFIDENCE_FILE
    if not path.is_file():
        raise MissingResult(
            f"no confidence table at {display(path)} (run `{MAKE_COMMAND} --heads <heads folder>` first: "
            f"calibrations made before it existed lack it; `--derive-only` makes it where {CANDIDATES_FILES[0]} exists)")
    table = read_csv(path, "confidence table", required=CONFIDENCE_COLUMNS)
    return ConfidenceMap(table, source=display(path))


def load_candidates(path: str | os.PathLike) -> pd.DataFrame:
    """A candidates table (parquet or CSV) with `CANDIDATES_COLUMNS`, or one `WorkbenchError` line."""
    df = read_csv(path, "candidates table", required=CANDIDATES_COLUMNS, command=MAKE_COMMAND,
                  dtype={"prompt": str} if Path(path).suffix != ".parquet" else None)
    return df.astype({"prompt": str, "position": "int64", "head": "int64", "rank0": "int64",
                      "prob": "float32", "hit": bool, **({"token": "int64"} if "token" in df.columns else {})})
