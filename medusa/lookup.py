"""Prompt lookup: draft the tokens that followed the last earlier occurrence of the current n-gram.

Saxena's prompt lookup decoding (and transformers' ``prompt_lookup_num_tokens``): when the text
repeats itself (code edits, quoting the prompt, a second turn restating the first answer), the
tokens after an earlier occurrence of the last n tokens are a free guess of what comes next.
`lookup_chain` tries n = max_ngram down to min_ngram and, for the first n with a match, returns
up to `max_chain` tokens that followed the MOST RECENT earlier occurrence (transformers takes the
earliest; the latest is usually the closer context; `match="first"` gives transformers' choice).
An occurrence counts only when at least one token follows it inside the sequence (the suffix
itself is never its own match); no match gives an empty chain.

Pass the ids the engine holds at a step: prompt + output including the pending root, so the
chain's first token is the candidate for the position right after the root (depth 1 in a tree;
`medusa.hybrid` merges the chain into the heads' tree).

How it stays fast on ~2k tokens every step: one vectorised comparison finds the positions equal
to the last token, and each longer n only filters those positions (numpy, no Python loop over the
sequence); `python -m bench.per_step_speed` prints its per-call time.

Usage::

    from medusa.lookup import LookupConfig, lookup_chain
    lookup_chain([5, 6, 7, 8, 5, 6], LookupConfig(max_ngram=3, max_chain=4))   # [7, 8, 5, 6]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from common.errors import WorkbenchError

MATCHES = ("latest", "first")


@dataclass(frozen=True)
class LookupConfig:
    """Which n-grams are looked up and how long a chain may be; each default is defined here only."""

    max_ngram: int = 3
    min_ngram: int = 1
    max_chain: int = 10
    match: str = "latest"  # which earlier occurrence drafts: the latest, or the first (transformers)

    def __post_init__(self) -> None:
        if self.min_ngram < 1 or self.max_ngram < self.min_ngram:
            raise WorkbenchError(f"prompt lookup needs 1 <= min_ngram <= max_ngram, got {self.min_ngram} and "
                                 f"{self.max_ngram}")
        if self.max_chain < 1:
            raise WorkbenchError(f"prompt lookup max_chain must be >= 1, got {self.max_chain}")
        if self.match not in MATCHES:
            raise WorkbenchError(f"prompt lookup match must be one of {', '.join(MATCHES)}, got {self.match!r}")


def _as_array(ids: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(ids, torch.Tensor):
        return ids.detach().reshape(-1).cpu().numpy()
    if isinstance(ids, np.ndarray):
        return ids.reshape(-1)
    return np.fromiter(ids, dtype=np.int64, count=len(ids))


def lookup_chain(ids: Sequence[int] | np.ndarray | torch.Tensor, config: LookupConfig | None = None) -> list[int]:
    """Up to `max_chain` tokens that followed the chosen earlier occurrence of the longest matching suffix n-gram."""
    config = config or LookupConfig()
    seq = _as_array(ids)
    n_tokens = int(seq.shape[0])
    if n_tokens < config.min_ngram + 1:
        return []
    # Candidate match ends e < n - 1 (a token must follow) where seq[e] equals the last token;
    # an n-gram match ending at e also needs seq[e - j] == seq[n - 1 - j] for j < n.
    ends = np.flatnonzero(seq[:-1] == seq[-1])
    best: np.ndarray | None = None
    for n in range(1, config.max_ngram + 1):
        ends = ends[ends >= n - 1]
        if n > 1:
            ends = ends[seq[ends - (n - 1)] == seq[n_tokens - n]]
        if ends.size == 0:
            break
        if n >= config.min_ngram:
            best = ends
    if best is None:
        return []
    start = int(best[-1] if config.match == "latest" else best[0]) + 1
    return seq[start: start + config.max_chain].tolist()

