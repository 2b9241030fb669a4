"""Heads that propose from a sub-vocabulary: the projection cut to the tokens heads ever need.

A Medusa step projects every head's feature onto the whole vocabulary (SmolLM2: 49152 x 576 fp32,
113 MB read per step for the shared projection), and on a CPU that read is most of the heads' cost.
The heads' training targets are the backbone's own greedy tokens, and a few thousand ids cover
nearly all of them, so `SubVocabHeads` keeps only the projection rows of the `size` most frequent
training targets (`proposal_vocab`, from the heads folder's ``target_counts.npy``, which stage 1 of
`medusa.train` writes): the read shrinks by V / size. Proposals are mapped back to token ids, so
the engine sees the same interface; a token outside the sub-vocabulary can never be proposed
(what that costs in accuracy is the coverage `proposal_vocab` reports), and acceptance is
unchanged (greedy stays lossless: the verify forward still scores the whole vocabulary).
`propose_scored` renormalises the softmax over the sub-vocabulary.

Usage::

    ids = proposal_vocab("results/heads/smollm2-135m-medusa1", 8192)
    heads = SubVocabHeads(load_heads(folder, backbone), ids)   # same propose / propose_scored
    python -m bench.run --methods medusa-compiled --method-option medusa-compiled.proposal_vocab=8192
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.errors import WorkbenchError

TARGET_COUNTS = "target_counts.npy"  # (V,) int64: how often each token id was a training target


def read_target_counts(directory: str | os.PathLike) -> np.ndarray:
    """The heads folder's target counts, or one error line naming what writes them."""
    path = Path(directory) / TARGET_COUNTS
    if not path.is_file():
        raise WorkbenchError(f"heads in {directory} have no {TARGET_COUNTS} (stage 1 of `python -m medusa.train` "
                             "writes it; heads trained before it existed cannot use a proposal vocabulary)")
    try:
        counts = np.load(path)
    except (OSError, ValueError) as e:
        raise WorkbenchError(f"{path} is unreadable ({e})") from None
    if counts.ndim != 1 or counts.min(initial=0) < 0:
        raise WorkbenchError(f"{path} is not a vector of counts")
    return counts


def proposal_vocab(directory: str | os.PathLike, size: int) -> torch.Tensor:
    """Sorted ids of the `size` most frequent training targets (ties: lower id first)."""
    counts = read_target_counts(directory)
    if not 1 <= size <= len(counts):
        raise WorkbenchError(f"proposal vocabulary size must be in [1, {len(counts)}], got {size}")
    order = np.lexsort((np.arange(len(counts)), -counts))[:size]
    return torch.from_numpy(np.sort(order).astype(np.int64))


def coverage(counts: np.ndarray, size: int) -> float:
    """Share of training targets that the `size` most frequent ids cover."""
    total = counts.sum()
    return float(np.sort(counts)[::-1][:size].sum() / total) if total else 0.0


class SubVocabHeads(nn.Module):
    """Medusa heads (`medusa.heads.MedusaHeads`) whose proposals come from `token_ids` only.

    forward(h): (..., H) -> logits over the sub-vocabulary (K, ..., S); propose / propose_scored
    return token ids of the full vocabulary.
    """

    def __init__(self, heads: nn.Module, token_ids: torch.Tensor) -> None:
        super().__init__()
        self.heads = heads
        self.config = heads.config
        first = heads.projection(0).weight
        ids = token_ids.to(device=first.device, dtype=torch.long)
        self.register_buffer("token_ids", ids)
        if heads.lm_heads is None:
            weight = first[ids]                                                          # (S, H)
        else:
            weight = torch.stack([heads.projection(k).weight[ids] for k in range(heads.num_heads)])  # (K, S, H)
        self.register_buffer("weight", weight.detach().clone())

    @property
    def num_heads(self) -> int:
        return self.heads.num_heads

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        feats = self.heads.features(hidden)  # (K, ..., H)
        if self.weight.dim() == 2:
            return feats @ self.weight.T
        return torch.einsum("k...h,ksh->k...s", feats, self.weight)

    @torch.no_grad()
    def propose(self, hidden: torch.Tensor, token_ids: Sequence[int], top_k: int) -> torch.Tensor:
        """Top-`top_k` token ids of each head from one hidden state (H,) -> (K, top_k)."""
        del token_ids
        return self.token_ids[torch.topk(self(hidden), top_k, dim=-1).indices]

    @torch.no_grad()
    def propose_scored(self, hidden: torch.Tensor, token_ids: Sequence[int], top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (K, top_k) and their softmax probabilities over the sub-vocabulary (K, top_k)."""
        del token_ids
        top = torch.topk(torch.softmax(self(hidden).float(), dim=-1), top_k, dim=-1)
        return self.token_ids[top.indices], top.values

    @torch.no_grad()
    def propose_batch(self, hidden: torch.Tensor, top_k: int) -> torch.Tensor:
        """`propose` for a batch of rows in one call: hidden (A, H) -> token ids (A, K, top_k)."""
        return self.token_ids[torch.topk(self(hidden), top_k, dim=-1).indices].transpose(0, 1)
