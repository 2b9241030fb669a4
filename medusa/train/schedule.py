"""Learning-rate schedule and seeded row sampling: pure functions of the step, so a resumed run
continues exactly where an uninterrupted one would be (no sampler state to save)."""

from __future__ import annotations

import math

import numpy as np


def cosine_lr(step: int, total: int, warmup: int) -> float:
    """Multiplier of the base lr at `step`: linear warmup, then cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def batch_indices(rows: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Rows of global batch `step`: epochs of seeded permutations, so resuming needs only the step."""
    start = step * batch_size
    out: list[int] = []
    while len(out) < batch_size:
        epoch, offset = divmod(start, rows)
        perm = np.random.default_rng([seed, epoch]).permutation(rows)
        take = perm[offset : offset + batch_size - len(out)]
        out.extend(take.tolist())
        start += len(take)
    return np.asarray(out)


def eval_subset(rows: int, limit: int, seed: int = 0) -> np.ndarray:
    """At most `limit` of `rows` held-out rows, sorted, the same for every evaluation of a run."""
    if rows <= limit:
        return np.arange(rows)
    return np.sort(np.random.default_rng([seed, 10**6]).choice(rows, size=limit, replace=False))
