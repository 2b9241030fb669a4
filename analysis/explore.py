"""What-if computations the notebooks show beside the committed figures: model-free, from results/.

Everything here reads the calibration tables and latency profiles under results/ and runs the
tree-side models of `trees` (acceptance models, best-first search, dense baselines, the cost
model); no backbone is loaded. The notebooks call these instead of importing `trees` directly
(notebooks use `analysis` only, see README "Architecture").

    from analysis import explore
    cal = explore.calibration(RESULTS)                  # marginals (+ path statistics) of the heads
    explore.chain_expectations(cal)                     # E[tokens/step] of top-1 chains per depth
    explore.budget_comparison(cal, [4, 16, 64], profile=explore.latency_profile(RESULTS))
    explore.draw_searched_tree(cal, 64, "empirical", "/tmp/tree.png")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis import load_calibration, load_latency
from common.errors import WorkbenchError
from trees.acceptance_model import (
    Marginals,
    PathStats,
    expected_tokens,
    load_marginals,
    load_path_stats,
)
from trees.baselines import best_dense
from trees.best_first import search_tree
from trees.cost import LatencyProfile, load_profile
from trees.plot import plot_tree
from trees.tree import Tree, chain


@dataclass(frozen=True)
class Calibration:
    """A heads' calibration: per-head marginals, and path statistics when they were collected."""

    dir: Path
    marginals: Marginals
    stats: PathStats | None

    @property
    def model(self) -> Marginals | PathStats:
        """The best acceptance model available: the empirical one if present."""
        return self.stats if self.stats is not None else self.marginals

    def describe(self) -> str:
        m = self.marginals
        return (f"calibration {self.dir.name}: {m.num_heads} heads, top-{m.top_r} lists, "
                f"{'with' if self.stats is not None else 'without'} path statistics")


def calibration(results: str | os.PathLike | None = None, name: str | None = None) -> Calibration:
    """The calibration of heads `name` (default: the shipped heads', else the first found)."""
    cal = load_calibration.calibration_dir(results, name)
    stats = load_path_stats(cal / "paths.csv") if (cal / "paths.csv").is_file() else None
    return Calibration(cal, load_marginals(cal / "accuracy.csv"), stats)


def latency_profile(results: str | os.PathLike | None = None) -> LatencyProfile:
    """The first latency profile under results/latency (the cost model of predicted tokens/s)."""
    return load_profile(load_latency.latency_files(results)[0])


def chain_expectations(cal: Calibration) -> pd.DataFrame:
    """Expected tokens/step of the top-1 chain using 1..K heads, under each acceptance model."""
    rows = []
    for d in range(1, cal.marginals.num_heads + 1):
        t = chain(d)
        rows.append({"heads used": d, "independence": expected_tokens(t, cal.marginals),
                     "empirical": expected_tokens(t, cal.stats) if cal.stats is not None else float("nan")})
    return pd.DataFrame(rows).set_index("heads used")


def _candidates(cal: Calibration, budget: int) -> list[tuple[str, Tree]]:
    """Searched trees (greedy, and empirical with path statistics), the best dense tree and the chain."""
    out = []
    for method in ("greedy", "empirical") if cal.stats is not None else ("greedy",):
        try:
            out.append((method, search_tree(method, budget, cal.marginals, cal.stats).tree))
        except WorkbenchError as e:
            print(f"budget {budget}, {method}: {e}")
    dense_tree = best_dense(budget, cal.model, cal.marginals.num_heads, cal.marginals.top_r)
    if dense_tree is not None:
        out.append(("dense", dense_tree))
    out.append(("chain", chain(min(budget - 1, cal.marginals.num_heads))))
    return out


def budget_comparison(cal: Calibration, budgets: Sequence[int], profile: LatencyProfile | None = None,
                      context: int = 512) -> pd.DataFrame:
    """Per node budget and tree kind: expected tokens/step under each model, and predicted tokens/s
    (the better model's tokens/step over the profile's verify time at `context`) when a profile is given."""
    rows = []
    for b in budgets:
        for method, t in _candidates(cal, b):
            e_ind = expected_tokens(t, cal.marginals)
            e_emp = expected_tokens(t, cal.stats) if cal.stats is not None else float("nan")
            best = e_emp if cal.stats is not None else e_ind
            tps = best / profile.verify_time(t.node_budget, context) if profile is not None else float("nan")
            rows.append({"budget": b, "method": method, "tree": t.name, "nodes": t.node_budget, "depth": t.depth,
                         "independence": e_ind, "empirical": e_emp, "predicted tokens/s": tps})
    return pd.DataFrame(rows)


def draw_searched_tree(cal: Calibration, budget: int, method: str, path: str | os.PathLike) -> Path:
    """Search a `method` tree of `budget` nodes and draw it coloured by P(accepted); returns the image."""
    method = method if cal.stats is not None else "greedy"
    tree = search_tree(method, int(budget), cal.marginals, cal.stats).tree
    return plot_tree(tree, cal.model, path)
