"""Tree policies: which tree each engine step verifies, and its candidate tokens.

A policy turns (proposer, last hidden state, tokens so far, the pending root) into one step's
tree: node tokens (N,) and the `TreeBuffers` the verify and the acceptance rule use. Three kinds:

- `StaticPolicy`: one searched tree for every step (the paper's Medusa; `ar` is the root-only tree).
- `DynamicPolicy`: the tree is rebuilt every step from the heads' own probabilities of their
  top-k, mapped to calibrated acceptance probabilities (`trees.confidence`, fitted by
  `bench.calibrate`), keeping the `budget` nodes of highest estimated path acceptance
  (`trees.dynamic`). Always `budget` nodes, so a compiled verify sees one shape.
- `LookupPolicy`: a prompt-lookup chain (`medusa.lookup`) over prompt + output hangs from the root
  beside the heads' tree (static paths, or a dynamic tree's best-first order), merged where tokens
  coincide (`medusa.hybrid`); without a match every node goes to the heads.

Policies hold settings and fixed buffers only, never per-request state: the engine passes
everything a step needs. Verification is exact whatever the policy: a policy only changes what
is tried.

    policy = DynamicPolicy(load_confidence("results/calibration/smollm2-135m-medusa1"), DynamicConfig(budget=16))
    generate(backbone, heads, policy, prompt_ids, DecodeConfig())
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from common.errors import WorkbenchError
from medusa.hybrid import HybridConfig, hybrid_tree, priority_paths
from medusa.lookup import LookupConfig, lookup_chain
from medusa.tree_attention import TreeBuffers, buffers_from_parents, tree_buffers, tree_candidates
from trees.confidence import ConfidenceMap
from trees.dynamic import DynamicConfig, DynamicTree, dynamic_tree
from trees.tree import Tree


@dataclass(frozen=True)
class StepTree:
    """One step's tree: node tokens (N,) root first, and its buffers."""

    candidates: torch.Tensor
    buffers: TreeBuffers


class TreePolicy(Protocol):
    name: str
    node_budget: int  # most nodes a step verifies (root included)
    depth: int  # most heads a step reads
    per_step: bool  # True when the tree changes between steps

    def step(self, heads: Any, hidden: torch.Tensor, tokens: Sequence[int], root: int) -> StepTree: ...


def scored_topk(heads: Any, hidden: torch.Tensor, tokens: Sequence[int], top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (K, top_k) and their softmax probabilities (K, top_k) from a proposer."""
    if not hasattr(heads, "propose_scored"):
        raise WorkbenchError(f"{type(heads).__name__} gives no probabilities: dynamic trees need heads with propose_scored")
    return heads.propose_scored(hidden, tokens, top_k)


class StaticPolicy:
    """The same tree every step."""

    per_step = False

    def __init__(self, tree: Tree | TreeBuffers, device: torch.device | str = "cpu") -> None:
        buffers = tree if isinstance(tree, TreeBuffers) else tree_buffers(tree, device)
        if buffers.depth.device != torch.device(device):
            buffers = buffers.to(device)
        self.buffers = buffers
        self.name = buffers.tree.name
        self.node_budget = buffers.num_nodes
        self.depth = buffers.tree.depth

    def step(self, heads: Any, hidden: torch.Tensor, tokens: Sequence[int], root: int) -> StepTree:
        tree = self.buffers.tree
        if tree.depth == 0:
            return StepTree(torch.tensor([root], dtype=torch.long, device=self.buffers.depth.device), self.buffers)
        head_topk = heads.propose(hidden, tokens, max(tree.top_k, 1))  # (K, top_k)
        return StepTree(tree_candidates(self.buffers, root, head_topk), self.buffers)


class DynamicPolicy:
    """Per step, the `config.budget` nodes of highest calibrated path acceptance."""

    per_step = True

    def __init__(self, confidence: ConfidenceMap, config: DynamicConfig, top_k: int = 10,
                 device: torch.device | str = "cpu", num_heads: int | None = None) -> None:
        self.confidence = confidence
        self.config = config
        self.top_k = config.top_k or top_k
        self.device = torch.device(device)
        self.depth = min(config.max_depth or confidence.num_heads, num_heads or confidence.num_heads,
                         confidence.num_heads)
        self.node_budget = config.budget
        self.name = f"dynamic_{config.budget}"

    def heads_tree(self, heads: Any, hidden: torch.Tensor, tokens: Sequence[int], budget: int) -> tuple[torch.Tensor, DynamicTree]:
        """The heads' top-k ids (K, top_k) and this step's best tree of `budget` nodes over them."""
        ids, probs = scored_topk(heads, hidden, tokens, self.top_k)  # (K, top_k) each
        calibrated = self.confidence.apply(probs[: self.depth].float().cpu())
        return ids, dynamic_tree(calibrated, DynamicConfig(budget, self.depth, self.top_k))

    def step(self, heads: Any, hidden: torch.Tensor, tokens: Sequence[int], root: int) -> StepTree:
        ids, dt = self.heads_tree(heads, hidden, tokens, self.config.budget)
        buffers = buffers_from_parents(dt.parents, dt.depth, dt.head, dt.rank0, tree=dt.tree(self.name),
                                       device=self.device)
        return StepTree(tree_candidates(buffers, root, ids), buffers)


class LookupPolicy:
    """A prompt-lookup chain beside the heads' tree (static, or dynamic when given a `DynamicPolicy`)."""

    per_step = True

    def __init__(self, heads_part: StaticPolicy | DynamicPolicy, hybrid: HybridConfig, lookup: LookupConfig | None = None,
                 device: torch.device | str = "cpu") -> None:
        if hybrid.budget < heads_part.node_budget:
            raise WorkbenchError(f"hybrid budget {hybrid.budget} is below the heads tree's {heads_part.node_budget} nodes")
        self.heads_part = heads_part
        self.hybrid = hybrid
        self.lookup = lookup or LookupConfig()
        self.device = torch.device(device)
        self.depth = heads_part.depth
        self.node_budget = hybrid.budget
        self.name = f"lookup{hybrid.lookup_nodes}+{heads_part.name}"

    def step(self, heads: Any, hidden: torch.Tensor, tokens: Sequence[int], root: int) -> StepTree:
        chain = lookup_chain(tokens, self.lookup)  # tokens end with the pending root
        part = self.heads_part
        if isinstance(part, DynamicPolicy):
            ids, dt = part.heads_tree(heads, hidden, tokens, self.hybrid.budget)
            paths = priority_paths(dt)
        else:
            tree = part.buffers.tree
            if tree.depth == 0:
                ids, paths = torch.zeros(0, 1, dtype=torch.long), []
            else:
                ids, paths = heads.propose(hidden, tokens, max(tree.top_k, 1)), list(tree.paths)
        hybrid = hybrid_tree(root, paths, ids.cpu(), chain, self.hybrid)
        buffers = hybrid.buffers(self.device)
        return StepTree(hybrid.tokens.to(self.device), buffers)


def as_policy(tree: Tree | TreeBuffers | TreePolicy, device: torch.device | str) -> TreePolicy:
    """A policy from a tree (static) or a policy as it is."""
    if isinstance(tree, Tree | TreeBuffers):
        return StaticPolicy(tree, device)
    return tree
