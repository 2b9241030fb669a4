"""The hidden-state cache of stage 1: the frozen backbone runs once over the distilled data.

Stage 1 never changes the backbone, so its last hidden states are computed once and stored on
disk, memory-mapped in fp16 with the targets of every head (`HiddenCache`); epochs then cost only
the heads. The cache is kept in chunks (consecutive samples of one distilled shard, at most
`CACHE_CHUNK`), each in a folder named by a hash of its content and the backbone (`cache_key`), so
a distilled folder that grew since the last run only caches its new shards. Each chunk folder is
built under a temporary name and swapped in whole (`common.io.atomic_folder`): an interrupted
build leaves no half chunk behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from common.errors import WorkbenchError
from common.io import atomic_folder
from medusa.backbone import Backbone
from medusa.distill import Sample, ensure_writable
from medusa.train.losses import IGNORE, head_targets

CACHE_CHUNK = 128


@dataclass
class HiddenCache:
    """Last hidden states (rows, H) fp16 and the targets of every head (rows, K), memory-mapped."""

    parts: list[tuple[np.ndarray, np.ndarray]]
    meta: dict[str, Any]

    def __post_init__(self) -> None:
        self.offsets = np.cumsum([0] + [len(t) for _, t in self.parts])

    @property
    def rows(self) -> int:
        return int(self.offsets[-1])

    def target_vocab(self) -> torch.Tensor:
        """Sorted token ids that occur as a target anywhere in the cache."""
        seen = np.unique(np.concatenate([np.unique(np.asarray(t)) for _, t in self.parts]))
        return torch.from_numpy(seen[seen != IGNORE].astype(np.int64))

    def batch(self, idx: np.ndarray, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states (n, H) fp32 and targets (n, K) of global rows `idx` (returned in sorted order)."""
        idx = np.sort(np.asarray(idx))
        part = np.searchsorted(self.offsets, idx, side="right") - 1
        hs, ts = [], []
        for p in np.unique(part):
            local = idx[part == p] - self.offsets[p]
            hs.append(np.asarray(self.parts[p][0][local], dtype=np.float32))
            ts.append(np.asarray(self.parts[p][1][local], dtype=np.int64))
        return torch.from_numpy(np.concatenate(hs)).to(device), torch.from_numpy(np.concatenate(ts)).to(device)


def cache_key(backbone: Backbone, samples: Sequence[Sample], num_heads: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([backbone.identity.to_dict(), str(backbone.dtype), num_heads, 1]).encode())
    for s in samples:
        h.update(json.dumps([s.ids, s.spans]).encode())
    return h.hexdigest()[:20]


def cache_chunks(samples: Sequence[Sample]) -> list[list[Sample]]:
    """Consecutive samples of one shard file, at most CACHE_CHUNK each: shards never change once
    written, so their chunks (and cache keys) stay valid while a distillation run goes on."""
    chunks: list[list[Sample]] = []
    for s in samples:
        if not chunks or len(chunks[-1]) >= CACHE_CHUNK or chunks[-1][-1].shard != s.shard:
            chunks.append([])
        chunks[-1].append(s)
    return chunks


def _length_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        if cur and lengths[i] * (len(cur) + 1) > max_tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


@torch.inference_mode()
def _cache_chunk(backbone: Backbone, samples: Sequence[Sample], num_heads: int, folder: Path,
                 max_tokens: int, bar: tqdm) -> None:
    """Run the backbone over one chunk of samples and write its hidden states + targets atomically."""
    plan = [head_targets(s.ids, s.spans, num_heads) for s in samples]
    offsets = np.cumsum([0] + [len(p[0]) for p in plan])
    total = int(offsets[-1])
    decoder = backbone.model.base_model
    lengths = [len(s.ids) for s in samples]
    with atomic_folder(folder) as tmp:
        hidden = np.lib.format.open_memmap(tmp / "hidden.npy", mode="w+", dtype=np.float16,
                                           shape=(total, backbone.hidden_size))
        targets = np.lib.format.open_memmap(tmp / "targets.npy", mode="w+", dtype=np.int32, shape=(total, num_heads))
        for batch in _length_batches(lengths, max_tokens):
            width = max(lengths[i] for i in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):
                ids[r, : lengths[i]] = torch.tensor(samples[i].ids)
                mask[r, : lengths[i]] = 1
            out = decoder(input_ids=ids.to(backbone.device), attention_mask=mask.to(backbone.device)).last_hidden_state
            for r, i in enumerate(batch):
                pos, tgt = plan[i]
                a, b = offsets[i], offsets[i + 1]
                hidden[a:b] = out[r, torch.from_numpy(pos).to(out.device)].float().cpu().numpy()
                targets[a:b] = tgt
            bar.update(sum(lengths[i] for i in batch))
        hidden.flush()
        targets.flush()
        del hidden, targets
        # meta.json marks a finished chunk (build_cache skips folders that have it).
        (tmp / "meta.json").write_text(json.dumps({"rows": total, "samples": len(samples)}) + "\n")


def open_chunk(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        return np.load(folder / "hidden.npy", mmap_mode="r"), np.load(folder / "targets.npy", mmap_mode="r")
    except (OSError, ValueError) as e:
        raise WorkbenchError(f"hidden-state cache {folder} is unreadable ({e}); delete it to rebuild") from None


def build_cache(
    backbone: Backbone, samples: Sequence[Sample], num_heads: int, root: str | os.PathLike,
    max_tokens: int = 4096, progress: bool = True,
) -> HiddenCache:
    """Run the backbone once over `samples` and cache hidden states + targets (chunks reused when present)."""
    if not any(s.generated for s in samples):
        raise WorkbenchError("distilled data has no generated tokens to train on")
    root = Path(root)
    ensure_writable(root)
    chunks = cache_chunks(samples)
    folders = [root / cache_key(backbone, c, num_heads) for c in chunks]
    todo = [(c, f) for c, f in zip(chunks, folders) if not (f / "meta.json").is_file()]
    t0 = time.perf_counter()
    bar = tqdm(total=sum(len(s.ids) for c, _ in todo for s in c), desc="cache hidden states", unit="tok",
               disable=not (progress and todo))
    for c, f in todo:
        _cache_chunk(backbone, c, num_heads, f, max_tokens, bar)
    bar.close()
    parts = [open_chunk(f) for f in folders]
    meta = {"chunks": len(folders), "chunks_built": len(todo), "build_s": round(time.perf_counter() - t0, 1),
            "samples": len(samples), "backbone_dtype": str(backbone.dtype).replace("torch.", "")}
    return HiddenCache(parts, meta)
