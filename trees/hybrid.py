"""Hybrid per-step trees as data: a prompt-lookup chain as one more branch of the heads' tree.

The heads guess well right after the root and badly deeper; prompt lookup guesses nothing most
steps and a long exact run when the text repeats. One verify forward can check both: the chain
hangs from the root as its own branch, and where a head candidate has the same token as a chain
node at the same place (same parent) the two are one node (dedup), whose head children then grow
under it.

Budget: at most `budget` nodes, root included. The chain takes up to `lookup_nodes` of them
(fewer when shorter; none when there is no match) and the heads' paths fill the rest in the
order given, so a deduplicated node frees its slot for the next head path. With `pad` every
step has exactly `budget` nodes: what is left is filled with more of the heads' candidates,
breadth first (one shape for a compiled verify). The heads' paths must be prefix-closed in every
prefix of that order: a static `Tree`'s ``paths`` are, and so is a dynamic tree's best-first
order (`priority_paths`).

Pure functions over token lists, shared by the engine (`medusa.hybrid` turns the nodes into
tensors and tree buffers) and the replay model (`trees.policy_replay`, which walks the same nodes
over recorded calibration text), so what is replayed is what the engine verifies.

Usage::

    from trees.hybrid import HybridConfig, hybrid_nodes
    nodes = hybrid_nodes(root, tree.paths, head_topk_ids, chain, HybridConfig(budget=4, lookup_nodes=3, pad=True))
    nodes.tokens, nodes.parents        # root first, every parent before its children
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from common.errors import WorkbenchError
from trees.dynamic import DynamicTree
from trees.tree import Path_, Tree

ROOT, HEADS, LOOKUP, BOTH = 0, 1, 2, 3
SOURCES = {ROOT: "root", HEADS: "heads", LOOKUP: "lookup", BOTH: "heads+lookup"}


@dataclass(frozen=True)
class HybridConfig:
    """The node budget and the lookup chain's share of it; each default is defined here only."""

    budget: int = 64  # nodes verified per step, root included
    lookup_nodes: int = 10  # most nodes the lookup chain may take
    # Fill every step to exactly `budget` nodes with more of the heads' candidates (a compiled
    # verify then sees one shape); off, a step verifies what the chain and the heads' paths give.
    pad: bool = False

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise WorkbenchError(f"hybrid tree budget must be >= 1 (the root alone), got {self.budget}")
        if self.lookup_nodes < 0:
            raise WorkbenchError(f"hybrid tree lookup_nodes must be >= 0, got {self.lookup_nodes}")


@dataclass(frozen=True)
class HybridNodes:
    """One step's hybrid tree, root first, every parent before its children."""

    tokens: tuple[int, ...]  # candidate token per node, the root's first
    parents: tuple[int, ...]  # -1 for the root
    depth: tuple[int, ...]
    head: tuple[int, ...]  # 1-based head, 0 for the root, -1 for lookup-only nodes
    rank0: tuple[int, ...]  # rank in that head's top-k, 0 for the root and lookup-only nodes
    source: tuple[int, ...]  # ROOT, HEADS, LOOKUP or BOTH
    heads_tree: Tree  # the head nodes' rank paths

    @property
    def num_nodes(self) -> int:
        return len(self.tokens)

    @property
    def lookup_nodes(self) -> int:
        """Nodes the chain contributed (shared ones included)."""
        return sum(s in (LOOKUP, BOTH) for s in self.source)


def priority_paths(tree: DynamicTree) -> list[Path_]:
    """A dynamic tree's rank paths best first (every prefix of the list is prefix-closed)."""
    paths = tree.paths
    return [paths[i - 1] for i in tree.priority.tolist()]


def _pad(tokens: list[int], budget: int, topk: list[list[int]], node_of: dict[tuple[int, ...], int],
         head_rank: list[tuple[int, ...]], child: dict[tuple[int, int], int],
         add: Callable[[int, int, int, int, int], int]) -> None:
    """Add head candidates breadth first (shallow, then by rank) until there are `budget` nodes.

    Every added node is a real candidate of the heads (head d, rank r under an existing head path),
    so every acceptance rule treats it as any other node; a token already under the same parent is
    skipped. Stops early only when the heads' top-k offers nothing more.
    """
    frontier = [()]
    for d in range(1, len(topk) + 1):
        grown = []
        for parent_path in frontier:
            parent = node_of[parent_path]
            for r, token in enumerate(topk[d - 1]):
                if len(tokens) >= budget:
                    return
                path = (*parent_path, r)
                if path in node_of:
                    grown.append(path)
                    continue
                if (parent, int(token)) in child:
                    continue
                node_of[path] = add(parent, int(token), d, r, HEADS)
                head_rank.append(path)
                grown.append(path)
        frontier = grown


def hybrid_nodes(
    root: int,
    head_paths: Sequence[Sequence[int]],
    head_topk: Sequence[Sequence[int]],
    chain: Sequence[int],
    config: HybridConfig | None = None,
) -> HybridNodes:
    """Merge the lookup `chain` and the heads' `head_paths` (ranks into `head_topk`, (K, top_k) ids) under `root`."""
    config = config or HybridConfig()
    topk = [[int(t) for t in row] for row in head_topk]
    tokens, parents, depth, head, rank0, source = [int(root)], [-1], [0], [0], [0], [ROOT]
    child: dict[tuple[int, int], int] = {}  # (parent node, token) -> node

    def add(parent: int, token: int, h: int, r: int, src: int) -> int:
        node = len(tokens)
        tokens.append(token)
        parents.append(parent)
        depth.append(depth[parent] + 1)
        head.append(h)
        rank0.append(r)
        source.append(src)
        child[(parent, token)] = node
        return node

    node = 0
    for token in list(chain)[: min(config.lookup_nodes, config.budget - 1)]:
        node = add(node, int(token), -1, 0, LOOKUP)

    node_of: dict[tuple[int, ...], int] = {(): 0}
    head_rank: list[tuple[int, ...]] = []
    for raw in head_paths:
        path = raw if isinstance(raw, tuple) else tuple(int(r) for r in raw)
        parent = node_of.get(path[:-1]) if path else None
        if parent is None:  # the root is implicit; a path whose parent did not fit is dropped
            continue
        d, r = len(path), path[-1]
        if d > len(topk) or r >= len(topk[d - 1]):
            raise WorkbenchError(f"head path {list(path)} needs head {d} rank {r}, but the heads gave "
                                 f"{len(topk)} x {len(topk[0]) if topk else 0} candidates")
        token = topk[d - 1][r]
        node = child.get((parent, token), -1)
        if node >= 0:
            if source[node] != LOOKUP:
                continue  # a repeated token among one head's candidates: the first one stands
            head[node], rank0[node], source[node] = d, r, BOTH  # the chain proposed it too: one node
        elif len(tokens) < config.budget:
            node = add(parent, token, d, r, HEADS)
        else:
            continue
        node_of[path] = node
        head_rank.append(path)
    if config.pad:
        _pad(tokens, config.budget, topk, node_of, head_rank, child, add)
    return HybridNodes(
        tokens=tuple(tokens), parents=tuple(parents), depth=tuple(depth), head=tuple(head),
        rank0=tuple(rank0), source=tuple(source),
        # Valid by construction (distinct, prefix-closed): sorted into canonical order, not re-validated.
        heads_tree=Tree(paths=tuple(sorted(head_rank, key=lambda q: (len(q), q))), name="hybrid"),
    )


def accepted_length(nodes: HybridNodes, truth: Sequence[int]) -> int:
    """Tokens a greedy step accepts: 1 + the depth of the deepest node whose path from the root
    spells the start of `truth` (the base model's greedy tokens after the root)."""
    children: dict[tuple[int, int], int] = {(p, t): i for i, (p, t) in enumerate(zip(nodes.parents, nodes.tokens)) if i}
    node, a = 0, 1
    for token in truth:
        node = children.get((node, int(token)), -1)
        if node < 0:
            break
        a += 1
    return a
