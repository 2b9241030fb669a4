"""Replay of per-step dynamic trees: what `medusa-dynamic` would accept, from a calibration's candidates.

The replay model (`trees.acceptance_model.ReplayModel`) walks the engine's greedy steps over the
calibration prompts with one static tree. A dynamic tree (`trees.dynamic`) is rebuilt every step
from the heads' probabilities of their top-R candidates, mapped to acceptance chances by the
calibrated confidence map (`trees.confidence`); `bench.calibrate --fresh` records exactly those
probabilities per position (the candidates table ``probs.parquet``: prompt, position, head,
rank0, prob, hit), so the same walk can rebuild the tree at each step: at position s the tree of
`budget` nodes is built from that position's (K, R) probabilities, the step accepts 1 + the
longest tree path the true ranks start with (the true rank of head k is the rank0 of its hit
row, absent when no candidate hit), and the next step starts that many positions later.

The map is fitted on the same candidates it is replayed on (in-sample, like the static tree
searched on the calibration it is replayed on); `trees.holdout` style splits can come later.

    python -m trees.dynamic_replay --calibration results/calibration/smollm2-135m-medusa1 --budgets 5,16,64
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from common.cli import Parser, comma_list, run_cli
from common.errors import WorkbenchError
from common.io import one_of
from trees.acceptance_model import ReplayModel, replay_walk
from trees.confidence import CANDIDATES_FILES, ConfidenceMap, fit_confidence, load_candidates
from trees.dynamic import DynamicConfig, dynamic_tree
from trees.search import search


@dataclass(frozen=True)
class PromptCandidates:
    """One prompt's true ranks (P, K), -1 = absent, and its heads' top-R probabilities (K, P, R)."""

    ranks: np.ndarray
    probs: np.ndarray


def prompt_candidates(candidates: pd.DataFrame) -> list[PromptCandidates]:
    """Per prompt (sorted), positions in order: true ranks and candidate probabilities."""
    out = []
    heads = int(candidates["head"].max())
    top_r = int(candidates["rank0"].max()) + 1
    for _, g in candidates.groupby("prompt", sort=True):
        positions = np.sort(g["position"].unique())
        row = np.searchsorted(positions, g["position"].to_numpy())
        probs = np.zeros((heads, len(positions), top_r))
        probs[g["head"].to_numpy() - 1, row, g["rank0"].to_numpy()] = g["prob"].to_numpy()
        ranks = np.full((len(positions), heads), -1, dtype=np.int64)
        hit = g["hit"].to_numpy(bool)
        ranks[row[hit], g["head"].to_numpy()[hit] - 1] = g["rank0"].to_numpy()[hit]
        out.append(PromptCandidates(ranks, probs))
    return out


def simulate_dynamic_steps(prompt: PromptCandidates, cmap: ConfidenceMap, config: DynamicConfig) -> list[int]:
    """Accepted length of each greedy step on one prompt with a tree rebuilt every step."""
    calibrated = cmap.apply(prompt.probs)  # (K, P, R)
    return replay_walk(prompt.ranks, lambda s: set(dynamic_tree(calibrated[:, s, :], config).paths))


def dynamic_tokens_per_step(prompts: Sequence[PromptCandidates], cmap: ConfidenceMap, config: DynamicConfig) -> float:
    lengths = [a for p in prompts for a in simulate_dynamic_steps(p, cmap, config)]
    if not lengths:
        raise WorkbenchError("the candidates table holds no positions")
    return sum(lengths) / len(lengths)


def static_vs_dynamic(candidates: pd.DataFrame, budgets: Sequence[int]) -> pd.DataFrame:
    """Replayed tokens per step of the empirical static tree and of the dynamic tree, per budget."""
    prompts = prompt_candidates(candidates)
    cmap = fit_confidence(candidates, "candidates")
    ranks = pd.concat([pd.DataFrame({"prompt": i, "position": np.repeat(np.arange(len(p.ranks)), p.ranks.shape[1]),
                                     "head": np.tile(np.arange(1, p.ranks.shape[1] + 1), len(p.ranks)),
                                     "rank0": p.ranks.ravel()}) for i, p in enumerate(prompts)], ignore_index=True)
    replay = ReplayModel(tuple(p.ranks for p in prompts))
    rows = []
    for budget in budgets:
        static = search("empirical", budget, ranks=ranks).tree
        rows.append({"budget": budget, "static": round(replay.tokens_per_step(static), 4),
                     "dynamic": round(dynamic_tokens_per_step(prompts, cmap, DynamicConfig(budget=budget)), 4),
                     "positions": replay.positions})
    return pd.DataFrame(rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m trees.dynamic_replay", description=__doc__.split("\n")[0])
    p.add_argument("--calibration", required=True, help="calibration folder with probs.parquet (bench.calibrate --fresh)")
    p.add_argument("--budgets", default="5,16,64", help="node budgets, comma-separated")
    args = p.parse_args(argv)
    budgets = comma_list(args.budgets, int, "--budgets")
    print(static_vs_dynamic(load_candidates(one_of(args.calibration, CANDIDATES_FILES)), budgets).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
