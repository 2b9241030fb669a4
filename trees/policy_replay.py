"""Replay of per-step tree policies (static, dynamic, hybrid with prompt lookup) over calibration text.

`trees.acceptance_model.ReplayModel` replays static trees from the heads' true ranks alone. A
hybrid tree (`trees.hybrid`) also holds a prompt-lookup chain, which comes from the text itself,
and its dedup of chain and head candidates depends on token ids, so its replay needs what
`bench.calibrate --fresh` records beside the ranks: the decoded text (the sequence table
``tokens.parquet``: ``prompt, position, token``, positions counted from the first output token,
the prompt's negative) and each candidate's token id (the ``token`` column of the candidates
table ``probs.parquet``). The walk is the engine's greedy loop: the step whose root is output
position s builds its tree from that position's candidates (and the chain the lookup proposes
from the text up to the root), accepts 1 + the depth of the deepest node that spells the text
after the root (`trees.hybrid.accepted_length`), and the next step starts that many positions
later. The nodes are built by the very function the engine uses (`trees.hybrid.hybrid_nodes`).

This module stays model-free: lookup chains are passed in (`chains_for`: the caller's proposer,
e.g. `medusa.lookup.lookup_chain`), as are trees and the confidence map. `split_table` replays
every (node budget, lookup share) pair and, given verify times, predicts tokens/s, from which
`best_split` picks the split per budget and overall (the hardware-aware search over the hybrid's
lookup/heads split); `bench.policy_replay` is the command that runs it on a calibration.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import WorkbenchError
from common.io import read_csv
from trees.confidence import ConfidenceMap
from trees.dynamic import DynamicConfig, dynamic_tree
from trees.hybrid import HybridConfig, HybridNodes, accepted_length, hybrid_nodes, priority_paths
from trees.tree import Tree

SEQUENCE_COLUMNS = ["prompt", "position", "token"]
SEQUENCE_STEM = "tokens"  # tokens.parquet (or .csv, as the ranks table) beside ranks.parquet
SEQUENCE_FILES = (f"{SEQUENCE_STEM}.parquet", f"{SEQUENCE_STEM}.csv")
MAKE_COMMAND = "python -m bench.calibrate --fresh"
SPLIT_COLUMNS = ["budget", "lookup_nodes", "heads_tree", "tokens_per_step", "steps", "positions", "lookup_share",
                 "verify_s", "tokens_per_s"]


def load_sequences(path: str | os.PathLike) -> pd.DataFrame:
    """A sequence table (parquet or CSV) with `SEQUENCE_COLUMNS`, or one `WorkbenchError` line."""
    df = read_csv(path, "sequence table", required=SEQUENCE_COLUMNS, command=MAKE_COMMAND,
                  dtype={"prompt": str} if Path(path).suffix != ".parquet" else None)
    return df.astype({"prompt": str, "position": "int64", "token": "int64"})


@dataclass(frozen=True)
class PromptText:
    """One calibration prompt: its whole text and, per scored output position, the heads' top-R candidates."""

    name: str
    text: np.ndarray  # (L,) prompt + output ids
    first: int  # index in `text` of output position 0 (the prompt's length)
    topk: np.ndarray  # (P, K, R) candidate ids; row s: the heads at the step whose root is output position s
    probs: np.ndarray  # (P, K, R) the heads' probabilities of them

    @property
    def positions(self) -> int:
        return int(self.topk.shape[0])

    def prefix(self, s: int) -> np.ndarray:
        """What the engine holds at the step whose root is output position s: prompt + output up to the root."""
        return self.text[: self.first + s + 1]

    def truth(self, s: int) -> np.ndarray:
        """The greedy tokens after that root."""
        return self.text[self.first + s + 1:]


def prompt_texts(candidates: pd.DataFrame, sequences: pd.DataFrame) -> list[PromptText]:
    """Per prompt (sorted by name): the text and the (P, K, R) candidate ids and probabilities."""
    if "token" not in candidates.columns:
        raise WorkbenchError(f"the candidates table has no token column (made before it was recorded): "
                             f"run `{MAKE_COMMAND}` to replay hybrid trees")
    texts = {name: g.sort_values("position") for name, g in sequences.groupby("prompt", sort=False)}
    missing = sorted(set(candidates["prompt"]) - set(texts))
    if missing:
        raise WorkbenchError(f"the sequence table lacks {len(missing)} prompt(s) of the candidates table "
                             f"(e.g. {missing[0]!r}): run `{MAKE_COMMAND}`")
    heads = int(candidates["head"].max())
    width = int(candidates["rank0"].max()) + 1
    out = []
    for name, g in candidates.groupby("prompt", sort=True):
        t = texts[name]
        positions = t["position"].to_numpy()
        if not np.array_equal(positions, np.arange(positions[0], positions[-1] + 1)) or positions[0] > 0:
            raise WorkbenchError(f"sequence of prompt {name!r} is not contiguous from the prompt through the output")
        n_pos = int(g["position"].max()) + 1
        topk = np.full((n_pos, heads, width), -1, dtype=np.int64)
        probs = np.zeros((n_pos, heads, width))
        idx = (g["position"].to_numpy(), g["head"].to_numpy() - 1, g["rank0"].to_numpy())
        topk[idx] = g["token"].to_numpy()
        probs[idx] = g["prob"].to_numpy()
        out.append(PromptText(str(name), t["token"].to_numpy(np.int64), int(-positions[0]), topk, probs))
    return out


# ---- policies: the nodes of the step at output position s ---------------------------------------
StepNodes = Callable[[PromptText, int, Sequence[int]], HybridNodes]


def static_nodes(tree: Tree, hybrid: HybridConfig | None = None) -> StepNodes:
    """The static `tree` every step (with the chain when `hybrid` is given: its budget and lookup share).

    The heads supply their top `tree.top_k` ids per head, as the engine asks them to.
    """
    config = hybrid or HybridConfig(budget=tree.node_budget, lookup_nodes=0)
    width = max(tree.top_k, 1)
    paths = list(tree.paths)

    def nodes(prompt: PromptText, s: int, chain: Sequence[int]) -> HybridNodes:
        return hybrid_nodes(int(prompt.text[prompt.first + s]), paths, prompt.topk[s, :, :width].tolist(),
                            chain if hybrid is not None else (), config)
    return nodes


def dynamic_nodes(cmap: ConfidenceMap, config: DynamicConfig, hybrid: HybridConfig | None = None) -> StepNodes:
    """The dynamic tree of `config.budget` nodes (hybrid: of the hybrid budget) rebuilt every step, over
    the top `config.top_k` candidates (default: all recorded) of the first `config.max_depth` heads,
    as `medusa.policy.DynamicPolicy` builds it."""
    budget = hybrid.budget if hybrid is not None else config.budget
    hyb = hybrid or HybridConfig(budget=budget, lookup_nodes=0)

    def nodes(prompt: PromptText, s: int, chain: Sequence[int]) -> HybridNodes:
        heads, width = prompt.topk.shape[1], config.top_k or prompt.topk.shape[2]
        depth = min(config.max_depth or heads, heads, cmap.num_heads)
        dt = dynamic_tree(cmap.apply(prompt.probs[s, :depth, :width]), DynamicConfig(budget, depth, width))
        return hybrid_nodes(int(prompt.text[prompt.first + s]), priority_paths(dt), prompt.topk[s, :, :width].tolist(),
                            chain if hybrid is not None else (), hyb)
    return nodes


# ---- the walk ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Walk:
    """Accepted length per step of one prompt and how many of its steps had a lookup chain."""

    lengths: tuple[int, ...]
    chain_steps: int


def chains_for(prompt: PromptText, propose: Callable[[np.ndarray], Sequence[int]]) -> list[tuple[int, ...]]:
    """The proposer's chain at every output position (computed once, shared by every policy replayed)."""
    return [tuple(int(t) for t in propose(prompt.prefix(s))) for s in range(prompt.positions)]


def walk(prompt: PromptText, nodes_at: StepNodes, chains: Sequence[Sequence[int]] | None = None) -> Walk:
    """The greedy engine's steps over one prompt with the policy `nodes_at` (chains: none when None)."""
    lengths, with_chain, s = [], 0, 0
    while s < prompt.positions:
        chain = chains[s] if chains is not None else ()
        a = accepted_length(nodes_at(prompt, s, chain), prompt.truth(s))
        lengths.append(a)
        with_chain += bool(chain)
        s += a
    return Walk(tuple(lengths), with_chain)


def tokens_per_step(prompts: Sequence[PromptText], nodes_at: StepNodes,
                    chains: Sequence[Sequence[Sequence[int]]] | None = None) -> tuple[float, int, float]:
    """(mean accepted length over all steps, steps, share of steps with a chain) over `prompts`."""
    walks = [walk(p, nodes_at, None if chains is None else chains[i]) for i, p in enumerate(prompts)]
    steps = sum(len(w.lengths) for w in walks)
    if steps == 0:
        raise WorkbenchError("no positions to replay")
    return sum(sum(w.lengths) for w in walks) / steps, steps, sum(w.chain_steps for w in walks) / steps


# ---- the split search ----------------------------------------------------------------------------
def split_table(
    prompts: Sequence[PromptText],
    chains: Sequence[Sequence[Sequence[int]]],
    trees: Mapping[int, Tree],
    lookup_nodes: Sequence[int],
    verify_s: Callable[[int], float] | None = None,
    pad: bool = True,
    heads: Callable[[Tree, HybridConfig], StepNodes] = static_nodes,
) -> pd.DataFrame:
    """Replayed tokens per step of the hybrid at every (budget, lookup share); `trees[budget]` is the
    heads' static tree for that budget (its paths fill what the chain leaves; `heads` may build
    another heads' part, e.g. a dynamic tree of the budget). With `verify_s` (seconds per verify of
    N nodes, a device's latency profile) each row predicts tokens/s."""
    positions = sum(p.positions for p in prompts)
    rows = []
    for budget, tree in sorted(trees.items()):
        for lk in sorted({min(int(n), budget - 1) for n in lookup_nodes}):
            config = HybridConfig(budget=budget, lookup_nodes=lk, pad=pad)
            tau, steps, share = tokens_per_step(prompts, heads(tree, config), chains)
            t = float(verify_s(budget)) if verify_s is not None else float("nan")
            rows.append({"budget": budget, "lookup_nodes": lk, "heads_tree": tree.name, "tokens_per_step": tau,
                         "steps": steps, "positions": positions, "lookup_share": share if lk else 0.0,
                         "verify_s": t, "tokens_per_s": tau / t if verify_s is not None else float("nan")})
    return pd.DataFrame(rows, columns=SPLIT_COLUMNS)


def best_split(table: pd.DataFrame) -> pd.DataFrame:
    """The best lookup share per budget (by predicted tokens/s, else tokens per step), best budget first."""
    if table.empty:
        raise WorkbenchError("no (budget, lookup share) pairs were replayed")
    key = "tokens_per_s" if table["tokens_per_s"].notna().all() else "tokens_per_step"
    best = table.loc[table.groupby("budget")[key].idxmax()]
    return best.sort_values(key, ascending=False).reset_index(drop=True)
