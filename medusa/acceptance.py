"""Greedy and typical acceptance of a verified candidate tree, as pure functions.

Given the tree's candidate tokens and the base model's logits at every node that has children,
decide which root-to-node path is kept:

- greedy (temperature 0): node i is accepted when its token is the argmax of its parent's logits.
  The kept path is exactly what plain greedy decoding would have produced, hence lossless.
- typical (temperature T > 0, Medusa paper Sec. 2.3.1): node i is accepted when
  ``p_T(x) > min(posterior_threshold, posterior_alpha * exp(-H(p_T)))`` under its parent's
  distribution at temperature T. Among accepted paths the longest wins; ties go to the highest
  summed log-probability.

A node is kept only if its whole ancestry is accepted. The root (the token the base model already
chose) is always accepted. The defaults below are the only definition of eps and delta.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.errors import WorkbenchError
from medusa.tree_attention import TreeBuffers


@dataclass(frozen=True)
class AcceptanceConfig:
    """temperature 0 = greedy. eps = posterior_threshold, delta = posterior_alpha."""

    temperature: float = 0.0
    posterior_threshold: float = 0.09
    posterior_alpha: float = 0.3

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise WorkbenchError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.posterior_threshold <= 1:
            raise WorkbenchError(f"posterior_threshold (eps) must be in (0, 1], got {self.posterior_threshold}")
        if self.posterior_alpha <= 0:
            raise WorkbenchError(f"posterior_alpha (delta) must be > 0, got {self.posterior_alpha}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class Accepted:
    """The kept path: node indices from the root (always node 0), and its length."""

    nodes: torch.Tensor  # (length,) long, root first

    @property
    def length(self) -> int:
        return int(self.nodes.shape[0])

    @property
    def last(self) -> int:
        return int(self.nodes[-1])


def typical_threshold(logits: torch.Tensor, config: AcceptanceConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p_T over the vocabulary, acceptance threshold per row) for logits (..., V)."""
    logp = torch.log_softmax(logits.float() / config.temperature, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    threshold = torch.minimum(
        torch.full_like(entropy, config.posterior_threshold),
        config.posterior_alpha * torch.exp(-entropy),
    )
    return logp, threshold


def node_acceptance(
    candidates: torch.Tensor, internal_logits: torch.Tensor, buffers: TreeBuffers, config: AcceptanceConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per node: (accepted given its parent, log p_T of its token under the parent) -> (N,), (N,).

    `internal_logits` is (M, V) for `buffers.internal` in order. The root is accepted, log p 0.
    """
    n = buffers.num_nodes
    ok = torch.ones(n, dtype=torch.bool, device=candidates.device)
    logp_node = torch.zeros(n, dtype=torch.float32, device=candidates.device)
    if n == 1:
        return ok, logp_node
    row_of = torch.full((n,), -1, dtype=torch.long, device=candidates.device)
    row_of[buffers.internal] = torch.arange(buffers.internal.shape[0], device=candidates.device)
    parent_row = row_of[buffers.parent[1:]]  # (N-1,) row of each child's parent
    child_tokens = candidates[1:]
    if config.greedy:
        pred = internal_logits.argmax(-1)  # (M,)
        ok[1:] = pred[parent_row] == child_tokens
    else:
        logp, threshold = typical_threshold(internal_logits, config)
        lp = logp[parent_row, child_tokens]
        ok[1:] = lp.exp() > threshold[parent_row]
        logp_node[1:] = lp
    return ok, logp_node


def accept(
    candidates: torch.Tensor, internal_logits: torch.Tensor, buffers: TreeBuffers, config: AcceptanceConfig
) -> Accepted:
    """The longest accepted root-to-node path (ties: highest summed log p_T, then first leaf)."""
    ok, logp_node = node_acceptance(candidates, internal_logits, buffers, config)
    ri = buffers.retrieve_indices  # (L, D+1)
    valid = ri >= 0
    safe = ri.clamp(min=0)
    alive = torch.cumprod((ok[safe] & valid).long(), dim=1)  # (L, D+1)
    length = alive.sum(1)  # (L,)
    score = (logp_node[safe] * alive).sum(1)
    best_len = length.max()
    # Among the longest, the highest score; argmax returns the first maximum, so ties are stable.
    key = torch.where(length == best_len, score, torch.full_like(score, -float("inf")))
    leaf_row = int(key.argmax())
    return Accepted(nodes=ri[leaf_row, : int(best_len)].clone())
