"""Acceptance models: how many tokens per step a candidate tree is expected to yield.

Under greedy acceptance a tree node with rank path ``(i_1, ..., i_d)`` is accepted exactly when, at
the current position, the true next-but-k token sits at rank ``i_k`` of head k for every k <= d
(ranks are unique, so at most one node per depth is accepted). Hence the expected accepted length,
root token included, is::

    E[tokens per step](tree) = 1 + sum over nodes of P(node's path accepted)

with P from one of two models fitted on a calibration ranks table (written by `bench.calibrate`):

- `independence` (the Medusa paper's): ``P(i_1..i_d) = prod_k a_k(i_k)``, the product of the
  heads' marginal rank accuracies ``a_k(i) = P(rank of head k == i)`` (`Marginals`).
- `empirical` (the joint): ``P(i_1..i_d)`` = fraction of calibration positions whose true ranks
  start with that path (`PathStats`); heads' errors are correlated, which this model keeps.

Both average over *positions*. The engine, however, averages over *steps*, and a step that
accepts A tokens skips the next A-1 positions, so easy stretches of text (long acceptances, in
runs) get fewer steps than positions: the per-step mean is lower than the per-position one whenever
acceptance is autocorrelated, as it is in text. The third model, `replay` (`ReplayModel`), replays
the greedy engine over the calibration prompts' rank matrices (`simulate_steps`) and so predicts
the per-step mean directly; it is not additive over nodes, so it scores trees rather than builds them.

`trees.holdout` fits all three on part of the calibration prompts and compares their
predictions with what the engine would get on the other part.

Table formats read here (written by `bench.calibrate` and `medusa.train`):

- accuracy CSV ``head,rank0,accuracy,count``: heads 1-based, ranks 0-based, ``rank0 == -1`` is
  "not in the top-R list" (so counts per head sum to the positions seen);
- cumulative accuracy CSV ``head,topk,accuracy,count`` (the heads' training report): converted to
  per-rank marginals by differencing consecutive top-k accuracies;
- paths CSV ``path,depth,count,fraction``: path as ``"0-1-0"``; the empty path (depth 0) holds the
  number of positions.

Usage::

    from trees.acceptance_model import load_marginals, load_path_stats, expected_tokens
    acc = load_marginals("results/calibration/smollm2-135m-medusa1/accuracy.csv")
    stats = load_path_stats("results/calibration/smollm2-135m-medusa1/paths.csv")
    expected_tokens(tree, acc), expected_tokens(tree, stats)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import WorkbenchError
from trees.tree import Path_, Tree

RANKS_COLUMNS = ["prompt", "position", "head", "rank0"]
ACCURACY_COLUMNS = ["head", "rank0", "accuracy", "count"]
CUMULATIVE_COLUMNS = ["head", "topk", "accuracy", "count"]
PATHS_COLUMNS = ["path", "depth", "count", "fraction"]
MODELS = ("independence", "empirical", "replay")
CALIBRATE_COMMAND = "python -m bench.calibrate"  # what writes the calibration tables read here


def path_str(path: Sequence[int]) -> str:
    """``(0, 1, 0)`` -> ``"0-1-0"``; the empty path is ``""``."""
    return "-".join(str(int(r)) for r in path)


def parse_path(text: str) -> Path_:
    """``"0-1-0"`` -> ``(0, 1, 0)``; ``""`` -> ``()``."""
    text = "" if text is None or (isinstance(text, float) and np.isnan(text)) else str(text).strip()
    if not text:
        return ()
    try:
        path = tuple(int(r) for r in text.split("-"))
    except ValueError:
        raise WorkbenchError(f"malformed rank path {text!r} (expected ranks joined by '-', e.g. 0-1-0)") from None
    if any(r < 0 for r in path):
        raise WorkbenchError(f"rank path {text!r} has a negative rank")
    return path


# ---- the independence model ---------------------------------------------------------------------
@dataclass(frozen=True)
class Marginals:
    """Per-head rank accuracies: ``accuracy[k-1, i] = P(rank of head k == i)`` for i < top_r."""

    accuracy: np.ndarray  # (K, R) float
    count: np.ndarray  # (K, R) int: positions where head k had the true token at rank i
    positions: np.ndarray  # (K,) int: positions seen per head (0 when unknown)
    source: str = ""

    def __post_init__(self) -> None:
        if self.accuracy.ndim != 2 or self.accuracy.shape[0] < 1 or self.accuracy.shape[1] < 1:
            raise WorkbenchError(f"accuracy table must have at least one head and one rank, got shape {self.accuracy.shape}")
        where = f" {self.source}" if self.source else ""
        if not np.all(np.isfinite(self.accuracy)) or self.accuracy.min() < 0 or self.accuracy.max() > 1:
            raise WorkbenchError(f"accuracy table{where} has accuracies outside [0, 1]")
        if np.any(self.accuracy.sum(1) > 1 + 1e-6):
            raise WorkbenchError(f"accuracy table{where}: a head's rank accuracies sum to more than 1")

    @property
    def num_heads(self) -> int:
        return int(self.accuracy.shape[0])

    @property
    def top_r(self) -> int:
        return int(self.accuracy.shape[1])

    def probability(self, path: Sequence[int]) -> float:
        """P(path accepted) under independence: the product of the marginals along the path."""
        p = 1.0
        for k, r in enumerate(path):
            if k >= self.num_heads or r >= self.top_r:
                return 0.0
            p *= float(self.accuracy[k, r])
        return p

    def to_frame(self) -> pd.DataFrame:
        """The tidy accuracy table, `rank0 == -1` rows holding the "absent from top-R" mass."""
        rows = []
        for k in range(self.num_heads):
            total = int(self.positions[k])
            for r in range(self.top_r):
                rows.append((k + 1, r, float(self.accuracy[k, r]), int(self.count[k, r])))
            absent = max(0.0, 1.0 - float(self.accuracy[k].sum()))
            rows.append((k + 1, -1, absent, max(0, total - int(self.count[k].sum()))))
        return pd.DataFrame(rows, columns=ACCURACY_COLUMNS).sort_values(["head", "rank0"], ignore_index=True)


def marginals_from_ranks(ranks: pd.DataFrame, top_r: int | None = None, source: str = "") -> Marginals:
    """Fit the marginals on a tidy ranks table (prompt, position, head, rank0; -1 = absent)."""
    check_ranks(ranks)
    num_heads = int(ranks["head"].max())
    top_r = int(top_r if top_r is not None else max(int(ranks["rank0"].max()) + 1, 1))
    count = np.zeros((num_heads, top_r), dtype=np.int64)
    positions = np.zeros(num_heads, dtype=np.int64)
    heads = ranks["head"].to_numpy(np.int64) - 1
    r = ranks["rank0"].to_numpy(np.int64)
    np.add.at(positions, heads, 1)
    hit = (r >= 0) & (r < top_r)
    np.add.at(count, (heads[hit], r[hit]), 1)
    acc = count / np.maximum(positions, 1)[:, None]
    return Marginals(accuracy=acc, count=count, positions=positions, source=source)


def marginals_from_frame(df: pd.DataFrame, source: str = "") -> Marginals:
    """Marginals from an accuracy table (per-rank or cumulative top-k form, see module docstring)."""
    where = f" {source}" if source else ""
    if set(ACCURACY_COLUMNS) <= set(df.columns):
        cols = ACCURACY_COLUMNS
    elif set(CUMULATIVE_COLUMNS) <= set(df.columns):
        return _marginals_from_cumulative(df, source)
    else:
        raise WorkbenchError(
            f"accuracy table{where} has columns {list(df.columns)}; expected {','.join(ACCURACY_COLUMNS)} "
            f"or {','.join(CUMULATIVE_COLUMNS)}"
        )
    df = _numeric(df, cols, where)
    if df.empty:
        raise WorkbenchError(f"accuracy table{where} has no rows")
    if df["head"].min() < 1:
        raise WorkbenchError(f"accuracy table{where} has head < 1 (heads are numbered from 1)")
    if df["rank0"].min() < -1:
        raise WorkbenchError(f"accuracy table{where} has rank0 < -1")
    if df.duplicated(["head", "rank0"]).any():
        raise WorkbenchError(f"accuracy table{where} lists a (head, rank0) pair twice")
    num_heads = int(df["head"].max())
    ranked = df[df["rank0"] >= 0]
    if ranked.empty:
        raise WorkbenchError(f"accuracy table{where} has no rank0 >= 0 rows")
    top_r = int(ranked["rank0"].max()) + 1
    acc = np.zeros((num_heads, top_r))
    count = np.zeros((num_heads, top_r), dtype=np.int64)
    for h, r, a, c in ranked[cols].itertuples(index=False):
        acc[int(h) - 1, int(r)] = a
        count[int(h) - 1, int(r)] = int(c)
    missing = sorted(set(range(1, num_heads + 1)) - set(ranked["head"].astype(int)))
    if missing:
        raise WorkbenchError(f"accuracy table{where} has no rows for head(s) {missing}")
    positions = np.zeros(num_heads, dtype=np.int64)
    for h, group in df.groupby("head"):
        positions[int(h) - 1] = int(group["count"].sum()) if (group["rank0"] == -1).any() else 0
    return Marginals(accuracy=acc, count=count, positions=positions, source=source)


def _numeric(df: pd.DataFrame, cols: Sequence[str], where: str) -> pd.DataFrame:
    out = df[list(cols)].copy()
    for c in cols:
        out[c] = pd.to_numeric(out[c], errors="coerce")
    if out.isna().any().any():
        raise WorkbenchError(f"accuracy table{where} has missing or non-numeric values in {list(cols)}")
    return out


def _marginals_from_cumulative(df: pd.DataFrame, source: str) -> Marginals:
    """Per-rank marginals from cumulative top-k accuracies (topk 1..R, contiguous per head)."""
    where = f" {source}" if source else ""
    df = _numeric(df, CUMULATIVE_COLUMNS, where)
    if df.empty:
        raise WorkbenchError(f"accuracy table{where} has no rows")
    if df["head"].min() < 1 or df["topk"].min() < 1:
        raise WorkbenchError(f"accuracy table{where} needs head >= 1 and topk >= 1")
    num_heads = int(df["head"].max())
    top_r = int(df["topk"].max())
    acc = np.zeros((num_heads, top_r))
    count = np.zeros((num_heads, top_r), dtype=np.int64)
    positions = np.zeros(num_heads, dtype=np.int64)
    for h in range(1, num_heads + 1):
        g = df[df["head"] == h].sort_values("topk")
        ks = g["topk"].astype(int).tolist()
        if ks != list(range(1, top_r + 1)):
            raise WorkbenchError(
                f"cumulative accuracy table{where} must list topk = 1..{top_r} for every head; head {h} has {ks}"
            )
        cum = g["accuracy"].to_numpy(float)
        if np.any(np.diff(cum) < -1e-9):
            raise WorkbenchError(f"cumulative accuracy table{where}: head {h}'s top-k accuracy decreases with k")
        acc[h - 1] = np.clip(np.diff(np.concatenate([[0.0], cum])), 0.0, 1.0)
        n = int(g["count"].iloc[0])
        positions[h - 1] = n
        count[h - 1] = np.rint(acc[h - 1] * n).astype(np.int64)
    return Marginals(accuracy=acc, count=count, positions=positions, source=source)


def load_marginals(source: str | os.PathLike | pd.DataFrame) -> Marginals:
    """Marginals from an accuracy CSV path or DataFrame (either format of the module docstring)."""
    if isinstance(source, pd.DataFrame):
        return marginals_from_frame(source, "(DataFrame)")
    path = Path(source)
    if not path.is_file():
        raise WorkbenchError(f"accuracy file not found: {path}")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise WorkbenchError(f"accuracy file {path} is not a readable CSV: {str(e).splitlines()[0]}") from None
    return marginals_from_frame(df, str(path))


# ---- the empirical (joint) model ----------------------------------------------------------------
@dataclass(frozen=True)
class PathStats:
    """How often each rank-path prefix occurred: ``count[path]`` of ``positions`` positions."""

    count: dict[Path_, int]
    positions: int
    num_heads: int
    top_r: int
    source: str = ""

    def __post_init__(self) -> None:
        if self.positions < 1:
            raise WorkbenchError(f"path statistics {self.source or '(unnamed)'} hold no positions")

    def probability(self, path: Sequence[int]) -> float:
        """Fraction of positions whose true ranks start with `path` (1 for the empty path)."""
        if len(path) == 0:
            return 1.0
        return self.count.get(tuple(path), 0) / self.positions

    def to_frame(self) -> pd.DataFrame:
        rows = [("", 0, self.positions, 1.0)]
        for p in sorted(self.count, key=lambda q: (len(q), q)):
            rows.append((path_str(p), len(p), self.count[p], self.count[p] / self.positions))
        return pd.DataFrame(rows, columns=PATHS_COLUMNS)


def rank_matrix(ranks: pd.DataFrame) -> np.ndarray:
    """(positions, K) matrix of rank0 per head, rows ordered by (prompt, position)."""
    check_ranks(ranks)
    wide = ranks.pivot_table(index=["prompt", "position"], columns="head", values="rank0", aggfunc="first")
    wide = wide.reindex(columns=range(1, int(ranks["head"].max()) + 1))
    if wide.isna().any().any():
        raise WorkbenchError("ranks table is not complete: some (prompt, position) lacks a head's rank")
    return wide.to_numpy(np.int64)


def path_stats_from_ranks(ranks: pd.DataFrame, top_r: int | None = None, source: str = "") -> PathStats:
    """Count every rank-path prefix (up to the first absent rank) over all positions."""
    mat = rank_matrix(ranks)
    top_r = int(top_r if top_r is not None else max(int(mat.max()) + 1, 1))
    return path_stats_from_matrix(mat, top_r, source)


def path_stats_from_matrix(mat: np.ndarray, top_r: int, source: str = "") -> PathStats:
    """`PathStats` of a (positions, K) rank matrix (-1 or >= top_r = absent)."""
    n, k = mat.shape
    counts: dict[Path_, int] = {}
    alive = np.ones(n, dtype=bool)
    for d in range(1, k + 1):
        alive &= (mat[:, d - 1] >= 0) & (mat[:, d - 1] < top_r)
        if not alive.any():
            break
        prefixes, freq = np.unique(mat[alive, :d], axis=0, return_counts=True)
        for row, c in zip(prefixes, freq):
            counts[tuple(int(r) for r in row)] = int(c)
    return PathStats(count=counts, positions=int(n), num_heads=int(k), top_r=int(top_r), source=source)


def load_path_stats(source: str | os.PathLike | pd.DataFrame) -> PathStats:
    """Path statistics from a paths CSV (path, depth, count, fraction) or DataFrame."""
    label = "(DataFrame)" if isinstance(source, pd.DataFrame) else str(source)
    if isinstance(source, pd.DataFrame):
        df = source
    else:
        path = Path(source)
        if not path.is_file():
            raise WorkbenchError(f"path statistics file not found: {path} (run `{CALIBRATE_COMMAND}`)")
        try:
            df = pd.read_csv(path, dtype={"path": str}, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise WorkbenchError(f"path statistics {path} is not a readable CSV: {str(e).splitlines()[0]}") from None
    if not set(PATHS_COLUMNS) <= set(df.columns):
        raise WorkbenchError(f"path statistics {label} has columns {list(df.columns)}; expected {','.join(PATHS_COLUMNS)}")
    counts: dict[Path_, int] = {}
    positions = 0
    for text, c in zip(df["path"], pd.to_numeric(df["count"], errors="coerce")):
        if pd.isna(c) or c < 0:
            raise WorkbenchError(f"path statistics {label} has a missing or negative count")
        p = parse_path(text)
        if p:
            counts[p] = int(c)
        else:
            positions = int(c)
    if positions < 1:
        raise WorkbenchError(f"path statistics {label} lacks the empty-path row holding the number of positions")
    num_heads = max((len(p) for p in counts), default=1)
    top_r = max((max(p) + 1 for p in counts), default=1)
    return PathStats(count=counts, positions=positions, num_heads=num_heads, top_r=top_r, source=label)


# ---- the replay (sequential) model ------------------------------------------------------------
@dataclass(frozen=True)
class ReplayModel:
    """The calibration prompts' (positions, K) rank matrices; scores a tree by replaying the engine."""

    matrices: tuple[np.ndarray, ...]
    source: str = ""

    @property
    def positions(self) -> int:
        return int(sum(len(m) for m in self.matrices))

    def steps(self, tree: Tree | Iterable[Sequence[int]]) -> list[int]:
        """Accepted length of every replayed step, prompts in order."""
        tree = tree if isinstance(tree, Tree) else Tree.from_paths(tree)
        out: list[int] = []
        for m in self.matrices:
            out.extend(simulate_steps(m, tree))
        return out

    def tokens_per_step(self, tree: Tree | Iterable[Sequence[int]]) -> float:
        lengths = self.steps(tree)
        if not lengths:
            raise WorkbenchError("the replay model holds no positions")
        return sum(lengths) / len(lengths)


def replay_model_from_ranks(ranks: pd.DataFrame, source: str = "") -> ReplayModel:
    check_ranks(ranks)
    mats = tuple(rank_matrix(g) for _, g in ranks.groupby("prompt", sort=True))
    return ReplayModel(matrices=mats, source=source)


# ---- predictions --------------------------------------------------------------------------------
Model = Marginals | PathStats | ReplayModel


def expected_tokens(tree: Tree | Iterable[Sequence[int]], model: Model) -> float:
    """Expected tokens per step, root included: 1 + sum of P(path accepted) over the tree's nodes
    (independence, empirical), or the replayed per-step mean (replay)."""
    if isinstance(model, ReplayModel):
        return model.tokens_per_step(tree)
    paths = tree.paths if isinstance(tree, Tree) else tree
    return 1.0 + float(sum(model.probability(p) for p in paths))


def node_probabilities(tree: Tree, model: Model) -> list[float]:
    """P(accepted) per node in node order (the root's is 1)."""
    return [1.0] + [model.probability(p) for p in tree.paths]


def simulate_steps(ranks: np.ndarray, tree: Tree) -> list[int]:
    """Accepted length of each greedy engine step on one prompt, replayed from its ranks.

    `ranks` is the prompt's (positions, K) rank matrix (position 0 = the first output token). A
    step at position s accepts 1 + the longest tree path that the true ranks at s start with, and
    the next step starts A positions later; replay stops when s leaves the matrix.
    """
    paths = set(tree.paths)
    return replay_walk(ranks, lambda s: paths)


def replay_walk(ranks: np.ndarray, paths_at: Callable[[int], Collection[Path_]]) -> list[int]:
    """The greedy engine's steps over one prompt's (positions, K) rank matrix: the step at position s
    verifies the tree whose rank paths are `paths_at(s)` and accepts 1 + the longest of them that
    the true ranks at s start with; the next step starts that many positions later."""
    out: list[int] = []
    s = 0
    while s < len(ranks):
        paths = paths_at(s)
        a, prefix = 1, ()
        for r in ranks[s]:
            prefix = prefix + (int(r),)
            if r < 0 or prefix not in paths:
                break
            a += 1
        out.append(a)
        s += a
    return out


def check_ranks(ranks: pd.DataFrame) -> None:
    """Raise `WorkbenchError` unless `ranks` is a tidy ranks table."""
    missing = set(RANKS_COLUMNS) - set(ranks.columns)
    if missing:
        raise WorkbenchError(f"ranks table lacks columns {sorted(missing)} (expected {','.join(RANKS_COLUMNS)})")
    if ranks.empty:
        raise WorkbenchError("ranks table has no rows")
    if ranks["head"].min() < 1 or ranks["rank0"].min() < -1:
        raise WorkbenchError("ranks table needs head >= 1 and rank0 >= -1 (-1 = absent from the top-R list)")


def load_ranks(path: str | os.PathLike) -> pd.DataFrame:
    """Read a ranks table (Parquet or CSV)."""
    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(f"ranks table not found: {path} (run `{CALIBRATE_COMMAND}`)")
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as e:  # pyarrow and pandas raise many types for a corrupt file
        raise WorkbenchError(f"ranks table {path} is unreadable: {str(e).splitlines()[0]}") from None
    check_ranks(df)
    return df
