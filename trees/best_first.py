"""Best-first tree construction under a node budget: greedy (the paper's) and empirical-optimal.

- ``greedy``: the Medusa paper's construction. Under the independence model a path's acceptance
  probability is the product of its heads' rank accuracies, which never grows from a node to its
  child, so the ``node_budget - 1`` most probable paths form a prefix-closed tree and that tree
  maximises ``1 + sum P(path)``. Found best-first with a heap; ties go to the shorter path, then the
  lexicographically smaller one, so the result is deterministic.
- ``empirical``: the same construction with the empirical joint model (the fraction of
  calibration positions whose true ranks start with the path; also non-increasing along a path),
  which gives the optimal tree under that model. Paths never seen in calibration rank after all
  seen ones, ordered by their independence probability.

The tree space is limited by a maximum depth and a top-k cap per depth (`depth_caps`); a budget
beyond that space is an error. `search_tree` is the core every other search builds on (the
hardware-aware `trees.optuna_search` calls it inside each trial; `trees.holdout` scores its trees).

Usage::

    from trees.best_first import search_tree
    result = search_tree("empirical", 64, inputs.marginals, inputs.stats)
    result.tree, result.predicted_empirical
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.errors import WorkbenchError
from trees.acceptance_model import (
    CALIBRATE_COMMAND,
    Marginals,
    PathStats,
    ReplayModel,
    expected_tokens,
)
from trees.tree import Path_, Tree

BEST_FIRST = ("greedy", "empirical")

TopK = int | Sequence[int] | None
Key = Callable[[Path_, float], tuple[tuple, float]]


@dataclass(frozen=True)
class ParetoPoint:
    """One Pareto-optimal (or best) Optuna trial: its number, objective values, parameters and tree."""

    trial: int
    values: tuple[float, ...]
    params: dict[str, Any]
    tree: Tree | None = None
    attrs: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class SearchResult:
    """A searched tree with its predicted tokens per step under the acceptance models."""

    tree: Tree
    method: str
    predicted_independence: float | None
    predicted_empirical: float | None
    search_s: float
    accuracy_source: str = ""
    predicted_tokens_per_s: float | None = None
    verify_s: float | None = None
    predicted_replay: float | None = None
    study_name: str | None = None
    storage: str | None = None
    pareto: tuple[ParetoPoint, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def node_budget(self) -> int:
        return self.tree.node_budget


# ---- the tree space -----------------------------------------------------------------------------
def depth_caps(marginals: Marginals, max_depth: int | None, top_k: TopK) -> list[int]:
    """Per-depth rank caps (list length = usable depth), checked against the accuracy table."""
    num_heads, top_r = marginals.num_heads, marginals.top_r
    if max_depth is not None:
        if max_depth < 1:
            raise WorkbenchError(f"max depth must be >= 1, got {max_depth}")
        if max_depth > num_heads:
            raise WorkbenchError(f"max depth {max_depth} exceeds the {num_heads} heads in the accuracy table")
    depth = max_depth if max_depth is not None else num_heads
    if top_k is None:
        caps = [top_r] * depth
    elif isinstance(top_k, int):
        caps = [top_k] * depth
    else:
        caps = [int(k) for k in top_k][:depth]
        if not caps:
            raise WorkbenchError("top-k caps are empty")
    for k in caps:
        if k < 1:
            raise WorkbenchError(f"top-k must be >= 1, got {k}")
        if k > top_r:
            raise WorkbenchError(f"top-k {k} exceeds the {top_r} ranks measured in the accuracy table")
    return caps


def space_size(caps: Sequence[int]) -> int:
    """Number of paths in the tree space: sum over depths of the product of caps so far."""
    total, width = 0, 1
    for k in caps:
        width *= k
        total += width
    return total


def check_budget(node_budget: int, caps: Sequence[int]) -> None:
    """Raise unless `node_budget` (root included) is >= 1 and fits the space the caps allow."""
    if node_budget < 1:
        raise WorkbenchError(f"node budget must be >= 1 (the root alone), got {node_budget}")
    space = space_size(caps)
    if node_budget - 1 > space:
        shape = " x ".join(map(str, caps))
        raise WorkbenchError(
            f"node budget {node_budget} exceeds the tree space: depth {len(caps)} with top-k {shape} "
            f"allows {space} nodes + the root = {space + 1}"
        )


# ---- best-first construction --------------------------------------------------------------------
def best_paths(n_paths: int, caps: Sequence[int], key: Key) -> list[Path_]:
    """The first `n_paths` paths in `key` order, grown best-first from the root.

    `key(path, parent_value) -> (sort key, value)`; the sort key must never decrease from a path
    to its child, so the first n paths are prefix-closed and the heap pops them in global order.
    """
    heap: list[tuple[tuple, Path_, float]] = []
    for r in range(caps[0] if caps else 0):
        k, v = key((r,), 1.0)
        heap.append((k, (r,), v))
    heapq.heapify(heap)
    out: list[Path_] = []
    while heap and len(out) < n_paths:
        _, p, v = heapq.heappop(heap)
        out.append(p)
        d = len(p)
        if d < len(caps):
            for r in range(caps[d]):
                child = p + (r,)
                k, cv = key(child, v)
                heapq.heappush(heap, (k, child, cv))
    return out


def greedy_key(marginals: Marginals) -> Key:
    """Order by independence probability (descending), then shorter, then lexicographic."""
    acc = marginals.accuracy

    def key(path: Path_, parent: float) -> tuple[tuple, float]:
        p = parent * float(acc[len(path) - 1, path[-1]])
        return (-p, len(path), path), p

    return key


def empirical_key(marginals: Marginals, stats: PathStats) -> Key:
    """Order by calibration count (descending), then independence probability, then as greedy."""
    acc, counts = marginals.accuracy, stats.count

    def key(path: Path_, parent: float) -> tuple[tuple, float]:
        indep = parent * float(acc[len(path) - 1, path[-1]]) if len(path) <= acc.shape[0] else 0.0
        return (-counts.get(path, 0), -indep, len(path), path), indep

    return key


def search_tree(
    method: str,
    node_budget: int,
    marginals: Marginals,
    stats: PathStats | None = None,
    max_depth: int | None = None,
    top_k: TopK = None,
    name: str | None = None,
    source: str = "",
    replay: ReplayModel | None = None,
) -> SearchResult:
    """`greedy` or `empirical` tree on already-loaded models, scored under every model given."""
    if method not in BEST_FIRST:
        raise WorkbenchError(f"unknown method {method!r} for a best-first tree (use {' or '.join(BEST_FIRST)})")
    if method == "empirical" and stats is None:
        raise WorkbenchError(
            f"method empirical needs path statistics (paths.csv from `{CALIBRATE_COMMAND}`); "
            "only a marginal accuracy table was given"
        )
    t0 = time.perf_counter()
    caps = depth_caps(marginals, max_depth, top_k)
    check_budget(node_budget, caps)
    key = greedy_key(marginals) if method == "greedy" else empirical_key(marginals, stats)
    tree = Tree.from_paths(best_paths(node_budget - 1, caps, key), name=name or f"{method}_{node_budget}")
    elapsed = time.perf_counter() - t0
    pi = expected_tokens(tree, marginals)
    pe = expected_tokens(tree, stats) if stats is not None else None
    pr = expected_tokens(tree, replay) if replay is not None else None
    meta = {
        "method": method,
        "max_depth": len(caps),
        "top_k": caps,
        "accuracy": source,
        "predicted_independence": pi,
        "predicted_empirical": pe,
        "predicted_replay": pr,
        "search_s": elapsed,
    }
    tree = Tree.from_paths(tree.paths, name=tree.name, meta=meta)
    return SearchResult(tree=tree, method=method, predicted_independence=pi, predicted_empirical=pe,
                        search_s=elapsed, accuracy_source=source, predicted_replay=pr)
