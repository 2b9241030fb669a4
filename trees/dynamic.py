"""Per-step dynamic trees: the best tree of at most N nodes for THIS step's head confidences.

A static tree is searched once from average rank accuracies; a dynamic tree is rebuilt every
step from the heads' own probabilities of their current top-k, mapped to calibrated acceptance
probabilities (`trees.confidence`). Estimating a path's acceptance as the product of the
calibrated probabilities along it (head d's candidate at depth d), the tree maximising the sum
of its nodes' path values (the expected accepted length, the root counting 1) is the N - 1 most
valuable paths: a child's value never exceeds its parent's (probabilities are <= 1), so those
paths are prefix-closed, the same argument as the Medusa paper's greedy tree and EAGLE-2's
expansion + reranking. Ties go to the shorter path, then the lexicographically smaller one, the
order `trees.best_first.greedy_key` uses, so on a probability matrix the dynamic tree equals the
greedy search's tree under those marginals.

How, without a heap: level by level, the children of the kept nodes of depth d are scored at
once (value = parent value x probability), and the N - 1 best of them are kept (none of the
others can be in the answer: N - 1 nodes of that depth already beat them); the union of all
levels is ranked once more by a stable sort. Everything is numpy over at most (N - 1) x top_k
candidates per level, on the CPU.

Nodes come out in the canonical `trees.tree.Tree` order (by depth, then rank path), so node i is
``tree().paths[i - 1]`` and `medusa.tree_attention.buffers_from_parents(parents, depth, head,
rank0)` equals `tree_buffers(tree())`. `priority` lists the non-root nodes best first; every
prefix of it is prefix-closed (what `medusa.hybrid` takes to fill a budget).

Usage::

    from trees.dynamic import DynamicConfig, dynamic_tree
    probs = cmap.apply(torch.softmax(head_logits, -1).topk(10).values)   # (K, 10) calibrated
    dt = dynamic_tree(probs, DynamicConfig(budget=64))
    dt.expected_tokens, dt.tree(), dt.parents, dt.rank0
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from common.errors import WorkbenchError
from trees.tree import Path_, Tree


@dataclass(frozen=True)
class DynamicConfig:
    """The shape limits of a per-step tree; each default is defined here only."""

    budget: int = 64  # nodes verified per step, root included
    max_depth: int | None = None  # None: as many levels as heads
    top_k: int | None = None  # children per node at most; None: every column of the probabilities

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise WorkbenchError(f"dynamic tree budget must be >= 1 (the root alone), got {self.budget}")
        if self.max_depth is not None and self.max_depth < 1:
            raise WorkbenchError(f"dynamic tree max_depth must be >= 1, got {self.max_depth}")
        if self.top_k is not None and self.top_k < 1:
            raise WorkbenchError(f"dynamic tree top_k must be >= 1, got {self.top_k}")


@dataclass(frozen=True)
class DynamicTree:
    """A per-step tree as node arrays (root = node 0, canonical `Tree` order), numpy int64 / float64."""

    parents: np.ndarray  # (N,) parent node, -1 for the root
    depth: np.ndarray  # (N,) 0 for the root
    head: np.ndarray  # (N,) 1-based head a node reads (== depth), 0 for the root
    rank0: np.ndarray  # (N,) 0-based rank in that head's top-k, 0 for the root
    value: np.ndarray  # (N,) estimated path acceptance (product of probabilities), 1 for the root
    priority: np.ndarray  # (N - 1,) non-root nodes, most valuable first

    @property
    def num_nodes(self) -> int:
        return int(self.parents.shape[0])

    @property
    def expected_tokens(self) -> float:
        """Estimated accepted length per step: the sum of the nodes' path values (root included)."""
        return float(self.value.sum())

    @cached_property
    def paths(self) -> tuple[Path_, ...]:
        """Rank path of every non-root node, in node order (the `medusa_choices` of `tree()`)."""
        out: list[Path_] = [()]
        for parent, rank in zip(self.parents[1:].tolist(), self.rank0[1:].tolist()):
            out.append(out[parent] + (rank,))  # parents come first, so theirs is already there
        return tuple(out[1:])

    def tree(self, name: str = "dynamic") -> Tree:
        """The `Tree` of these paths (same node order)."""
        return Tree(paths=self.paths, name=name, meta={"expected_tokens": self.expected_tokens})


def dynamic_tree(probs: torch.Tensor | np.ndarray, config: DynamicConfig | None = None) -> DynamicTree:
    """The tree of at most `config.budget` nodes maximising the summed path values of `probs`.

    `probs` is (K, top_k): row k holds head k + 1's calibrated acceptance probability of each rank
    (any order of values; ranks are the columns). Fewer nodes come back only when the tree space
    (depth x top_k) holds fewer.
    """
    config = config or DynamicConfig()
    p = probs.detach().to("cpu", torch.float64).numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs, float)
    if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 1:
        raise WorkbenchError(f"dynamic tree needs probabilities of shape (heads, top_k), got {p.shape}")
    if not ((p >= 0) & (p <= 1)).all():  # NaN fails both comparisons
        raise WorkbenchError("dynamic tree probabilities must lie in [0, 1] (map raw probabilities through "
                             "trees.confidence first)")
    depth_max = p.shape[0] if config.max_depth is None else min(config.max_depth, p.shape[0])
    width = p.shape[1] if config.top_k is None else min(config.top_k, p.shape[1])
    keep = config.budget - 1
    p = p[:depth_max, :width]

    # Level by level: candidates in (parent, rank) order are in lexicographic path order as long
    # as the parents are, so every kept set is re-sorted by index before it spawns children.
    level_value = [np.ones(1)]
    level_parent = [np.full(1, -1)]  # index into the previous level
    level_rank = [np.zeros(1, dtype=np.int64)]  # the root reads rank 0 of no head
    for d in range(depth_max if keep > 0 else 0):
        value = (level_value[-1][:, None] * p[d][None, :]).reshape(-1)
        best = np.sort(np.argsort(-value, kind="stable")[:keep])  # stable: ties keep lexicographic order
        level_value.append(value[best])
        level_parent.append(best // width)
        level_rank.append(best % width)

    sizes = np.array([v.size for v in level_value])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    value = np.concatenate(level_value)
    depth = np.repeat(np.arange(sizes.size), sizes)
    rank = np.concatenate(level_rank)
    parent = np.concatenate([level_parent[0]] + [lp + offsets[d] for d, lp in enumerate(level_parent[1:])])
    # All levels in (depth, lexicographic) order: a stable sort by value ranks exactly like
    # greedy_key (value desc, shorter, lexicographic), and a node's parent always precedes it.
    order = 1 + np.argsort(-value[1:], kind="stable")[:keep]
    chosen = np.sort(np.concatenate([[0], order]))  # canonical order = the concatenation order
    new_index = np.full(value.size, -1)
    new_index[chosen] = np.arange(chosen.size)
    parents = np.where(parent[chosen] >= 0, new_index[np.maximum(parent[chosen], 0)], -1)

    node_depth = depth[chosen]
    return DynamicTree(
        parents=parents.astype(np.int64),
        depth=node_depth.astype(np.int64),
        head=node_depth.astype(np.int64),
        rank0=rank[chosen],
        value=value[chosen],
        priority=new_index[order].astype(np.int64),
    )
