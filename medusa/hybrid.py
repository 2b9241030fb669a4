"""Hybrid per-step trees on the model side: `trees.hybrid`'s nodes as tensors and tree buffers.

The tree itself (a prompt-lookup chain as one more branch of the heads' tree, deduplicated,
within a node budget, optionally padded to it) is built by the pure `trees.hybrid.hybrid_nodes`,
which the replay model walks too; this module gives the engine its tensors. `HybridTree`
lists node tokens, parents and depths (all the greedy, typical and sample acceptance rules and
the verify forward need), with head / rank0 per node (-1 / 0 for lookup-only nodes) and where
each node came from (`SOURCES`). `HybridTree.buffers()` builds its `TreeBuffers`
(`medusa.tree_attention.buffers_from_parents`); their ``tree`` is the `Tree` of the head nodes'
rank paths (what the heads must supply), so its node budget counts head nodes only: the
verified count is ``buffers.num_nodes``.

Usage::

    from medusa.hybrid import HybridConfig, hybrid_tree
    chain = lookup_chain(tokens_so_far)                       # ids end with the pending root
    hyb = hybrid_tree(root, tree.paths, head_topk, chain, HybridConfig(budget=64, lookup_nodes=10))
    buffers = hyb.buffers(device); candidates = hyb.tokens.to(device)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from medusa.tree_attention import TreeBuffers, buffers_from_parents
from trees.hybrid import (
    BOTH,
    HEADS,
    LOOKUP,
    ROOT,
    SOURCES,
    HybridConfig,
    hybrid_nodes,
    priority_paths,
)
from trees.tree import Tree

__all__ = ["BOTH", "HEADS", "LOOKUP", "ROOT", "SOURCES", "HybridConfig", "HybridTree", "hybrid_tree", "priority_paths"]


@dataclass(frozen=True)
class HybridTree:
    """Node arrays of one step's hybrid tree, root first, every parent before its children (CPU long tensors)."""

    tokens: torch.Tensor  # (N,) candidate token per node, the root's first
    parents: torch.Tensor  # (N,) -1 for the root
    depth: torch.Tensor  # (N,)
    head: torch.Tensor  # (N,) 1-based head, 0 for the root, -1 for lookup-only nodes
    rank0: torch.Tensor  # (N,) rank in that head's top-k, 0 for the root and lookup-only nodes
    source: torch.Tensor  # (N,) ROOT, HEADS, LOOKUP or BOTH
    heads_tree: Tree  # the head nodes' rank paths

    @property
    def num_nodes(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def lookup_nodes(self) -> int:
        """Nodes the chain contributed (shared ones included)."""
        return int(((self.source == LOOKUP) | (self.source == BOTH)).sum())

    def buffers(self, device: torch.device | str = "cpu") -> TreeBuffers:
        return buffers_from_parents(self.parents, self.depth, self.head, self.rank0, tree=self.heads_tree,
                                    device=device)


def hybrid_tree(
    root: int,
    head_paths: Sequence[Sequence[int]],
    head_topk: torch.Tensor | Sequence[Sequence[int]],
    chain: Sequence[int],
    config: HybridConfig | None = None,
) -> HybridTree:
    """Merge the lookup `chain` and the heads' `head_paths` (ranks into `head_topk` (K, top_k) ids) under `root`."""
    topk = head_topk.tolist() if isinstance(head_topk, torch.Tensor) else head_topk
    n = hybrid_nodes(root, head_paths, topk, chain, config)

    def long(values: tuple[int, ...]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long)

    return HybridTree(tokens=long(n.tokens), parents=long(n.parents), depth=long(n.depth), head=long(n.head),
                      rank0=long(n.rank0), source=long(n.source), heads_tree=n.heads_tree)
