"""The hidden-state cache of stage 1: the frozen backbone runs once over the distilled data.

Stage 1 never changes the backbone, so its last hidden states are computed once and stored on
disk, memory-mapped in fp16 with the targets of every head (`HiddenCache`); epochs then cost only
the heads. The cache is kept in chunks (consecutive samples of one distilled shard, at most
`CACHE_CHUNK`), each in a folder named by a hash of its content and the backbone (`cache_key`), so
a distilled folder that grew since the last run only caches its new shards. Each chunk folder is
built under a temporary name and swapped in whole (`common.io.atomic_folder`): an interrupted
build leaves no half chunk behind.

Teacher-forced data (`medusa.teacher`) already holds the hidden states, so it needs no cache:
`TeacherCache` opens its shards memory-mapped and serves the same batches (hidden states and the
hard targets, the backbone's argmax at each head's target position) plus the backbone's top-k
distribution there (`soft_batch`) for the soft loss.
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
import pandas as pd
import torch
from tqdm import tqdm

from common.errors import WorkbenchError
from common.io import atomic_folder, ensure_writable
from medusa.backbone import Backbone
from medusa.distill import Sample, data_parts, read_run
from medusa.teacher import NEXT_ID, done_keys, read_shard
from medusa.teacher import iter_shards as teacher_shards
from medusa.train.losses import IGNORE, SoftTargets, head_targets

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

    def target_counts(self, vocab_size: int) -> np.ndarray:
        """(V,) how often each token id is a target, over all heads and rows."""
        counts = np.zeros(vocab_size, dtype=np.int64)
        for _, t in self.parts:
            t = np.asarray(t).ravel()
            counts += np.bincount(t[t != IGNORE], minlength=vocab_size)[:vocab_size]
        return counts

    def target_vocab(self) -> torch.Tensor:
        """Sorted token ids that occur as a target anywhere in the cache."""
        top = max((int(np.asarray(t).max()) for _, t in self.parts if len(t)), default=0)
        return torch.from_numpy(np.flatnonzero(self.target_counts(max(top, 0) + 1)))

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


def sample_positions(samples: Sequence[Sample], num_heads: int) -> pd.DataFrame:
    """(prompt, position) of every row of the samples' cache, in row order: the key of its sample and
    t counted from the first row of that sample (rows are consecutive positions of generated text)."""
    keys, positions = [], []
    for s in samples:
        pos, _ = head_targets(s.ids, s.spans, num_heads)
        keys += [s.key] * len(pos)
        positions.append(pos - (pos[0] if len(pos) else 0))
    return pd.DataFrame({"prompt": keys, "position": np.concatenate(positions) if positions else np.zeros(0, int)})


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


# ---- teacher-forced shards ----------------------------------------------------------------------
def teacher_target_rows(seq: np.ndarray, pos: np.ndarray, scored: np.ndarray, num_heads: int) -> np.ndarray:
    """(rows, K) row index of head k's target distribution for each row, -1 where it has none.

    Head k (1-based) on position t of a record is scored against the distribution at position t+k
    of the same record (the backbone's logits there predict token t+k+1); a shard stores a
    record's positions in order, so that is row r+k when it has the same record and position t+k
    and is scored (its next token is assistant text).
    """
    rows = len(pos)
    out = np.full((rows, num_heads), -1, dtype=np.int64)
    r = np.arange(rows)
    for k in range(1, num_heads + 1):
        j = r[: max(rows - k, 0)] + k
        ok = (seq[j] == seq[j - k]) & (pos[j] == pos[j - k] + k) & scored[j]
        out[j[ok] - k, k - 1] = j[ok]
    return out


@dataclass
class TeacherCache:
    """Teacher-forced shards as training rows: rows with at least one head target, memory-mapped."""

    parts: list[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]]  # arrays, rows kept, target rows
    meta: dict[str, Any]

    def __post_init__(self) -> None:
        self.offsets = np.cumsum([0] + [len(rows) for _, rows, _ in self.parts])

    @property
    def rows(self) -> int:
        return int(self.offsets[-1])

    def _gather(self, idx: np.ndarray):
        idx = np.sort(np.asarray(idx))
        part = np.searchsorted(self.offsets, idx, side="right") - 1
        for p in np.unique(part):
            arrays, kept, target_rows = self.parts[p]
            local = idx[part == p] - self.offsets[p]
            yield arrays, kept[local], target_rows[kept[local]]

    def batch(self, idx: np.ndarray, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states (n, H) fp32 and hard targets (n, K): the argmax at each head's target, IGNORE where none."""
        hs, ts = [], []
        for arrays, rows, trows in self._gather(idx):
            bits = np.asarray(arrays["hidden"][rows]).view(np.int16)
            hs.append(torch.from_numpy(bits).view(torch.bfloat16).float())
            top1 = np.asarray(arrays["topk_ids"][np.maximum(trows, 0).ravel(), 0], dtype=np.int64).reshape(trows.shape)
            ts.append(torch.from_numpy(np.where(trows >= 0, top1, IGNORE)))
        return torch.cat(hs).to(device), torch.cat(ts).to(device)

    def soft_batch(self, idx: np.ndarray, device: torch.device | str = "cpu") -> SoftTargets:
        """The backbone's top-k distribution at each head's target position for rows `idx` (sorted, as `batch`)."""
        ids, logp, rest = [], [], []
        for arrays, _, trows in self._gather(idx):
            flat = np.maximum(trows, 0).ravel()
            n, K = trows.shape
            ids.append(torch.from_numpy(np.asarray(arrays["topk_ids"][flat], dtype=np.int64).reshape(n, K, -1)))
            logp.append(torch.from_numpy(np.asarray(arrays["topk_logp"][flat], dtype=np.float32).reshape(n, K, -1)))
            rest.append(torch.from_numpy(np.asarray(arrays["rest_logp"][flat], dtype=np.float32).reshape(n, K)))
        return SoftTargets(torch.cat(ids).to(device), torch.cat(logp).to(device), torch.cat(rest).to(device))

    def target_counts(self, vocab_size: int) -> np.ndarray:
        """(V,) how often each token id is a hard target (the argmax at a head's target row), over all heads."""
        counts = np.zeros(vocab_size, dtype=np.int64)
        for arrays, kept, t in self.parts:
            rows = t[kept]
            counts += np.bincount(np.asarray(arrays["topk_ids"][rows[rows >= 0], 0]), minlength=vocab_size)[:vocab_size]
        return counts

    def target_vocab(self) -> torch.Tensor:
        """Sorted token ids that occur as a hard target anywhere in the data."""
        top = max(int(np.asarray(a["topk_ids"][:, 0]).max()) for a, _, _ in self.parts)
        return torch.from_numpy(np.flatnonzero(self.target_counts(top + 1)))


def on_path_rows(target_rows: np.ndarray, topk_ids: np.ndarray, next_id: np.ndarray) -> np.ndarray:
    """`target_rows` with head k's target at t dropped (-1) unless the text's tokens t+1..t+k are the
    backbone's argmax at t..t+k-1: the only case in which decoding asks head k anything.

    `teacher_target_rows` already requires rows t..t+k to be consecutive positions of one record,
    so row r+j is position t+j; `agree[r]` says the text's next token is the argmax at row r.
    """
    agree = np.asarray(topk_ids[:, 0]) == np.asarray(next_id)
    out = target_rows.copy()
    on = np.ones(len(agree), dtype=bool)
    for k in range(1, target_rows.shape[1] + 1):
        cut = max(len(agree) - k + 1, 0)
        on[:cut] &= agree[k - 1:]  # row r also needs agree[r + k - 1]
        on[cut:] = False           # ... which is past the last row
        out[~on, k - 1] = -1
    return out


def open_teacher_cache(spec: str, num_heads: int, hidden_size: int, on_path: bool = False,
                       max_records: int | None = None) -> TeacherCache:
    """The teacher-forced shards of one or more `medusa.teacher` folders (comma-separated) as training rows.

    With `on_path`, head k at t trains only where the text followed the backbone's greedy path for
    k tokens (`on_path_rows`); that needs the shards' next_id.npy. `max_records` keeps whole shards,
    in order, until that many records are in (a data-size point of a study).
    """
    parts = []
    keys: set[str] = set()
    for shard in (s for folder in data_parts(spec) for s in teacher_shards(folder)):
        if max_records is not None and len(keys) >= max_records:
            break
        arrays, meta = read_shard(shard)
        if arrays["hidden"].shape[1] != hidden_size:
            raise WorkbenchError(f"{shard} holds hidden states of size {arrays['hidden'].shape[1]}, not {hidden_size}")
        if keys & set(meta["keys"]):
            raise WorkbenchError(f"{shard} repeats records of an earlier shard; give each folder once")
        keys.update(meta["keys"])
        target_rows = teacher_target_rows(np.asarray(arrays["seq"]), np.asarray(arrays["pos"]),
                                          np.asarray(arrays["scored"]), num_heads)
        if on_path:
            if NEXT_ID not in arrays:
                raise WorkbenchError(f"{shard} has no {NEXT_ID}.npy (written before it existed); run "
                                     f"`python -m medusa.teacher --out {shard.parent} --backfill-next-ids` first")
            target_rows = on_path_rows(target_rows, arrays["topk_ids"], arrays[NEXT_ID])
        kept = np.flatnonzero((target_rows >= 0).any(axis=1))
        parts.append((arrays, kept, target_rows))
    if not parts:
        raise WorkbenchError(f"{spec} holds no teacher shards; run `python -m medusa.teacher --out {spec}` first")
    targets = np.stack([(t[kept] >= 0).sum(axis=0) for _, kept, t in parts]).sum(axis=0)
    return TeacherCache(parts, {"kind": "teacher", "shards": len(parts), "records": len(keys), "on_path": on_path,
                                "targets_by_head": [int(x) for x in targets], "chunks_built": 0, "build_s": 0.0})


def teacher_summary(spec: str, cache: TeacherCache) -> dict[str, Any]:
    """Size and settings of the teacher-forced data a run trained on (for its training record)."""
    runs = [read_run(part) for part in data_parts(spec)]
    return {
        "path": str(spec), "kind": "teacher", "records": cache.meta["records"], "rows": cache.rows,
        "teacher_settings": runs[0].get("settings", {}) if runs else {},
        "teacher_cpu_s": round(sum(float(r.get("cpu_s") or 0.0) for r in runs), 1),
    }


def teacher_keys(spec: str) -> list[str]:
    """Sorted prompt keys of the records in teacher-forced folders."""
    return sorted(set().union(*(done_keys(Path(folder)) for folder in data_parts(spec))))
