"""Medusa-1 training (frozen backbone, heads only) and the `python -m medusa.train` entry point.

Stage 1 (this file): the backbone is frozen, so it runs **once** over the distilled data
(`medusa.distill`) and its last hidden states are cached on disk, memory-mapped in fp16 with the
targets of every head (`HiddenCache`); epochs then cost only the heads. Loss

    L = sum_k decay^k * CE(head_k(h_t), token t+k+1)       k = 1..K, decay = 0.8

over positions whose target lies in a generated span; AdamW, cosine schedule with linear warmup.
With the `shared` LM projection the 49152x576 projection is the backbone's frozen LM head: it needs
no weight gradient, only the gradient to its input, and `--proj-dtype bfloat16` runs both products
in bf16 (about 2x faster on a CPU with AVX512-BF16; the loss itself is fp32). `--train-vocab seen`
shrinks it further: the training softmax runs over the tokens that occur as targets in the training
data (a few thousand of the 49152) plus `--negatives` tokens resampled every step with the
log(unseen/drawn) correction (sampled softmax); evaluation always uses the full vocabulary. The
ResBlocks are cheap next to the projection, so extra `--layers` cost little.

Every `--eval-every` steps the heads are scored on (`--eval-rows` positions of) the held-out cache,
and at the end on all of it (`--final-eval-rows`): per-head cumulative top-1..10 accuracy (`accuracy_history.csv`: step, head, topk, accuracy, count; heads 1-based). The last
evaluation is `accuracy.csv`; the loss curve (total and per head) is `loss.csv`. The output folder
receives heads.safetensors + config.json (training record under `training`), training_record.json
and the prompt ids used (`prompts.txt`). A checkpoint (`<out>/checkpoint`, via accelerate) is saved
every `--save-every` steps; running the same command again resumes from it, and it is removed when
the run finishes.

Stage 2 (`--stage 2`, `medusa.train_stage2`) trains backbone and heads together.

The same script runs as one CPU process or data-parallel under `accelerate launch` / `torchrun`
(each process takes its slice of every global batch; the cache is built once by the main process).

Usage::

    python -m medusa.train --stage 1 --data data/distill/smollm2-train --eval-data data/distill/smollm2-eval \\
        --out results/heads/smollm2-135m-medusa1 --steps 2000 --batch-size 256 --proj-dtype bfloat16
    accelerate launch -m medusa.train --stage 1 --data ... --device cuda
    python -m medusa.train --stage 2 --data ... --out results/_scratch/m2   # see medusa.train_stage2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from medusa.backbone import DEFAULT_BACKBONE, Backbone, BackboneIdentity, load_backbone, parse_dtype
from medusa.distill import Sample, data_parts, ensure_writable, read_run, read_samples, write_atomic
from medusa.errors import WorkbenchError, run_cli
from medusa.heads import REPO_ROOT, HeadsConfig, MedusaHeads, load_heads

IGNORE = -100
TOPK = 10
DEFAULT_CACHE_ROOT = REPO_ROOT / "data" / "cache"
TRAIN_VOCABS = ("full", "seen")


@dataclass(frozen=True)
class CommonTrainConfig:
    """Options both stages share (data, backbone, heads shape, optimiser basics); defined here once."""

    data: str = ""
    eval_data: str = ""
    out: str = ""
    backbone: str = DEFAULT_BACKBONE
    backbone_dtype: str = "auto"
    device: str = "cpu"
    init_heads: str = ""
    num_heads: int = 4
    num_layers: int = 1
    lm_projection: str = "shared"
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    decay: float = 0.8
    seed: int = 0
    threads: int | None = None


@dataclass(frozen=True)
class TrainConfig(CommonTrainConfig):
    """Medusa-1 options; each default is defined here once (the CLI reads them)."""

    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    proj_dtype: str = "float32"
    train_vocab: str = "full"
    negatives: int = 4096
    eval_every: int = 250
    eval_rows: int = 8192
    final_eval_rows: int | None = None
    save_every: int = 250
    cache_root: str = str(DEFAULT_CACHE_ROOT)
    max_samples: int | None = None
    cache_only: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "save_every", "eval_rows"):
            if getattr(self, name) < 1:
                raise WorkbenchError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise WorkbenchError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.lr <= 0:
            raise WorkbenchError(f"lr must be > 0, got {self.lr}")
        if self.train_vocab not in TRAIN_VOCABS:
            raise WorkbenchError(f"train_vocab must be one of {TRAIN_VOCABS}, got {self.train_vocab!r}")


# ---- loss pieces ------------------------------------------------------------------------------
def head_weights(num_heads: int, decay: float = TrainConfig.decay) -> torch.Tensor:
    """Loss weight of heads 1..K: decay**k."""
    return torch.tensor([decay**k for k in range(1, num_heads + 1)], dtype=torch.float32)


def head_targets(ids: Sequence[int], spans: Sequence[tuple[int, int]], num_heads: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions t that train at least one head, and their targets (rows, K) with IGNORE elsewhere.

    Head k (1-based) at position t is scored against ids[t + k + 1], and only where that token lies
    in a generated span (the prompt is not the backbone's text).
    """
    n = len(ids)
    ids_arr = np.asarray(ids, dtype=np.int64)
    generated = np.zeros(n + num_heads + 2, dtype=bool)
    for s, e in spans:
        generated[s:e] = True
    t = np.arange(n)
    targets = np.full((n, num_heads), IGNORE, dtype=np.int64)
    for k in range(1, num_heads + 1):
        idx = t + k + 1
        ok = generated[idx] & (idx < n)
        targets[ok, k - 1] = ids_arr[idx[ok]]
    keep = (targets != IGNORE).any(axis=1)
    return t[keep], targets[keep]


def medusa_loss(
    feats: torch.Tensor, targets: torch.Tensor, projection: Any, weights: torch.Tensor, proj_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted sum of per-head CE and the per-head CE values.

    feats (K, B, H) head features; targets (B, K) with IGNORE; projection(k, x) -> logits (B, V).
    """
    per_head = []
    for k in range(feats.shape[0]):
        tgt = targets[:, k]
        valid = tgt != IGNORE
        if not bool(valid.any()):
            per_head.append(feats.new_zeros(()))
            continue
        x = feats[k][valid]
        logits = projection(k, x if proj_dtype is None else x.to(proj_dtype)).float()
        per_head.append(F.cross_entropy(logits, tgt[valid]))
    per = torch.stack(per_head)
    return (per * weights.to(per.device)).sum(), per.detach()


class ProjectedHeads(nn.Module):
    """Heads + their LM projection as one module (what DDP wraps): forward(h, targets) -> losses.

    `vocab` (sorted token ids), when given, restricts the training softmax to a sampled one
    (`--train-vocab seen`): every token that occurs as a target in the training data, plus
    `negatives` tokens drawn afresh each step from the others, whose logits get the usual
    log(unseen / drawn) correction so the partition function stays unbiased. Targets are remapped
    to positions in the restricted list. Evaluation always scores the full vocabulary.
    """

    def __init__(self, heads: MedusaHeads, decay: float, proj_dtype: torch.dtype | None,
                 vocab: torch.Tensor | None = None, negatives: int = 0) -> None:
        super().__init__()
        self.heads = heads
        self.proj_dtype = proj_dtype
        self.register_buffer("weights", head_weights(heads.num_heads, decay), persistent=False)
        device = heads.projection(0).weight.device
        V = heads.config.vocab_size
        self._vocab = vocab.to(device) if vocab is not None else None
        self._remap = self._unseen = None
        self._step_ids: torch.Tensor | None = None
        self._step_w: torch.Tensor | None = None
        self._correction = 0.0
        if vocab is not None:
            remap = torch.full((V,), IGNORE, dtype=torch.long)
            remap[vocab] = torch.arange(len(vocab))
            self._remap = remap.to(device)
            unseen = (remap == IGNORE).nonzero().flatten()
            self.negatives = min(negatives, len(unseen))
            if self.negatives:
                self._unseen = unseen.to(device)
                self._correction = math.log(len(unseen) / self.negatives)
        self._shared = None
        if heads.lm_heads is None:
            # A frozen low-precision copy of the shared LM head, kept out of the state dict and DDP.
            w = heads.projection(0).weight.detach()
            self._shared = (w.to(proj_dtype) if proj_dtype is not None else w,)

    def _weight(self, k: int) -> torch.Tensor:
        if self._shared is None:
            w = self.heads.projection(k).weight
            return w if self._step_ids is None else w[self._step_ids]
        if self._step_ids is None:
            return self._shared[0]
        if self._step_w is None:
            self._step_w = self._shared[0][self._step_ids]
        return self._step_w

    def project(self, k: int, x: torch.Tensor) -> torch.Tensor:
        w = self._weight(k)
        logits = F.linear(x, w if x.dtype == w.dtype else w.to(x.dtype))
        if self._correction and self._vocab is not None:
            logits[:, len(self._vocab):] += self._correction
        return logits

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._remap is not None:
            targets = torch.where(targets == IGNORE, targets, self._remap[targets.clamp(min=0)])
            ids = self._vocab
            if self._unseen is not None:
                pick = torch.randperm(len(self._unseen), device=ids.device)[: self.negatives]
                ids = torch.cat([ids, self._unseen[pick]])
            self._step_ids = ids
        try:
            return medusa_loss(self.heads.features(hidden), targets, self.project, self.weights, self.proj_dtype)
        finally:
            self._step_ids = self._step_w = None


@torch.no_grad()
def topk_accuracy(
    heads: MedusaHeads, hidden: torch.Tensor, targets: torch.Tensor, chunk: int = 1024, topk: int = TOPK
) -> pd.DataFrame:
    """Cumulative top-1..topk accuracy per head (1-based) on rows of hidden (N, H) / targets (N, K)."""
    K = heads.num_heads
    hits = torch.zeros(K, topk, dtype=torch.long)
    counts = torch.zeros(K, dtype=torch.long)
    param = next(iter(heads.parameters()), heads.projection(0).weight)
    for i in range(0, hidden.shape[0], chunk):
        h = hidden[i : i + chunk].to(device=param.device, dtype=param.dtype)
        tgt = targets[i : i + chunk].to(param.device)
        logits = heads(h)  # (K, b, V)
        top = logits.topk(topk, dim=-1).indices  # (K, b, topk)
        for k in range(K):
            valid = tgt[:, k] != IGNORE
            match = top[k][valid] == tgt[valid, k][:, None]  # (n, topk), at most one True per row
            hits[k] += match.cumsum(dim=1).sum(dim=0).cpu()
            counts[k] += int(valid.sum())
    rows = []
    for k in range(K):
        for j in range(topk):
            n = int(counts[k])
            rows.append({"head": k + 1, "topk": j + 1, "accuracy": float(hits[k, j]) / n if n else float("nan"), "count": n})
    return pd.DataFrame(rows, columns=["head", "topk", "accuracy", "count"])


# ---- hidden-state cache -----------------------------------------------------------------------
@dataclass
class HiddenCache:
    """Last hidden states (rows, H) fp16 and the targets of every head (rows, K), memory-mapped.

    Stored in chunks (one per distilled shard), each keyed by its content, so a distilled folder
    that grew since the last run only caches its new shards.
    """

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


CACHE_CHUNK = 128


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
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    total = int(offsets[-1])
    hidden = np.lib.format.open_memmap(tmp / "hidden.npy", mode="w+", dtype=np.float16, shape=(total, backbone.hidden_size))
    targets = np.lib.format.open_memmap(tmp / "targets.npy", mode="w+", dtype=np.int32, shape=(total, num_heads))
    decoder = backbone.model.base_model
    lengths = [len(s.ids) for s in samples]
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
    (tmp / "meta.json").write_text(json.dumps({"rows": total, "samples": len(samples)}) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


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


def open_chunk(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        return np.load(folder / "hidden.npy", mmap_mode="r"), np.load(folder / "targets.npy", mmap_mode="r")
    except (OSError, ValueError) as e:
        raise WorkbenchError(f"hidden-state cache {folder} is unreadable ({e}); delete it to rebuild") from None


# ---- schedule, sampling, records --------------------------------------------------------------
def cosine_lr(step: int, total: int, warmup: int) -> float:
    """Multiplier of the base lr at `step`: linear warmup, then cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def batch_indices(rows: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Rows of global batch `step`: epochs of seeded permutations, so resuming needs only the step."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start, rows)
        perm = np.random.default_rng([seed, epoch]).permutation(rows)
        take = perm[offset : offset + batch_size - len(out)]
        out.extend(take.tolist())
        start += len(take)
    return np.asarray(out)


def eval_subset(rows: int, limit: int, seed: int = 0) -> np.ndarray:
    if rows <= limit:
        return np.arange(rows)
    return np.sort(np.random.default_rng([seed, 10**6]).choice(rows, size=limit, replace=False))


def write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False, float_format="%.6g")
    os.replace(tmp, path)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def data_summary(folder: str, samples: Sequence[Sample]) -> dict[str, Any]:
    runs = [read_run(part) if Path(part).is_dir() else {} for part in data_parts(folder)]
    keys = sorted(s.key for s in samples)
    return {
        "path": str(folder),
        "samples": len(samples),
        "tokens": int(sum(len(s.ids) for s in samples)),
        "generated_tokens": int(sum(s.generated for s in samples)),
        "prompt_keys_sha256": hashlib.sha256("\n".join(keys).encode()).hexdigest(),
        "distill_settings": runs[0].get("settings", {}),
        "distill_wall_s": round(sum(float(r.get("wall_s") or 0.0) for r in runs), 1),
    }


def check_data_fits(folder: str, backbone: Backbone) -> None:
    """Refuse distilled data whose run.json names a backbone with another tokenizer or shape."""
    for part in data_parts(folder):
        made_by = read_run(part).get("backbone") if Path(part).is_dir() else None
        if made_by:
            theirs = BackboneIdentity(**made_by)
            if not theirs.matches(backbone.identity):
                raise WorkbenchError(f"{part} was distilled with {theirs.describe()}, not backbone {backbone.identity.describe()}")


def check_heads_fit(config: HeadsConfig, backbone: Backbone) -> None:
    """Refuse a heads config shaped for another backbone."""
    if config.hidden_size and config.hidden_size != backbone.hidden_size:
        raise WorkbenchError(f"heads config has hidden size {config.hidden_size} but backbone {backbone.name} has {backbone.hidden_size}")
    if config.vocab_size and config.vocab_size != backbone.vocab_size:
        raise WorkbenchError(f"heads config has vocab {config.vocab_size} but backbone {backbone.name} has {backbone.vocab_size}")


# ---- stage 1 ----------------------------------------------------------------------------------
def train_stage1(config: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train Medusa-1 heads on cached hidden states; returns the training record."""
    from accelerate import Accelerator

    if not config.data or not config.out:
        raise WorkbenchError("--data and --out are required")
    out = Path(config.out)
    ensure_writable(out)
    if config.threads:
        torch.set_num_threads(config.threads)
    accelerator = Accelerator(cpu=config.device == "cpu")
    device = accelerator.device
    t_start = time.perf_counter()

    backbone = load_backbone(config.backbone, dtype=parse_dtype(config.backbone_dtype, str(device)), device=str(device))
    train_samples = read_samples(config.data, limit=config.max_samples)
    eval_samples = read_samples(config.eval_data) if config.eval_data else []
    for folder in (config.data, config.eval_data):
        if folder:
            check_data_fits(folder, backbone)
    heads_config = HeadsConfig(num_heads=config.num_heads, num_layers=config.num_layers, lm_projection=config.lm_projection)

    with accelerator.main_process_first():
        t0 = time.perf_counter()
        train_cache = build_cache(backbone, train_samples, config.num_heads, config.cache_root, progress=progress and accelerator.is_main_process)
        eval_cache = (build_cache(backbone, eval_samples, config.num_heads, config.cache_root, progress=False)
                      if eval_samples else None)
        cache_s = time.perf_counter() - t0
    if config.cache_only:
        accelerator.print(f"cached {train_cache.rows} training rows ({train_cache.meta['chunks_built']} new chunks) "
                          f"and {eval_cache.rows if eval_cache else 0} held-out rows in {cache_s:.0f} s")
        return {}

    torch.manual_seed(config.seed)
    heads = load_heads(config.init_heads, backbone) if config.init_heads else MedusaHeads.for_backbone(backbone, heads_config)
    if heads.config.num_heads != config.num_heads:
        raise WorkbenchError(f"--init-heads has {heads.config.num_heads} heads but --heads is {config.num_heads}")
    heads.requires_grad_(True)
    heads.train()
    # Heads train in fp32. The backbone is not needed after caching, so its (shared) LM head is made
    # fp32 in place too: evaluation then scores the full vocabulary in fp32 on every device.
    heads.to(torch.float32)
    backbone.model.get_output_embeddings().to(torch.float32)
    proj_dtype = None if config.proj_dtype in ("float32", "fp32") else parse_dtype(config.proj_dtype, str(device))
    vocab = train_cache.target_vocab() if config.train_vocab == "seen" else None
    module = ProjectedHeads(heads, config.decay, proj_dtype, vocab, config.negatives)
    optimizer = torch.optim.AdamW([p for p in heads.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    warmup = int(config.warmup_ratio * config.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr(s, config.steps, warmup))
    # The scheduler stays unprepared: every process takes a slice of one global batch, so it steps
    # once per optimizer step (accelerate would step it once per process).
    module, optimizer = accelerator.prepare(module, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    ckpt = out / "checkpoint"
    loss_rows: list[dict[str, Any]] = []
    acc_frames: list[pd.DataFrame] = []
    start_step = 0
    if (ckpt / "progress.json").is_file():
        prog = json.loads((ckpt / "progress.json").read_text())
        if prog.get("config") != asdict(config):
            raise WorkbenchError(f"{ckpt} belongs to a run with other settings; delete it or use another --out")
        accelerator.load_state(str(ckpt / "state"))
        start_step = int(prog["step"])
        loss_rows = prog["loss"]
        acc_frames = [pd.DataFrame(prog["accuracy"])] if prog["accuracy"] else []
        accelerator.print(f"resuming from step {start_step}")

    eval_idx = eval_subset(eval_cache.rows, config.eval_rows, config.seed) if eval_cache else None
    final_idx = (eval_subset(eval_cache.rows, config.final_eval_rows or eval_cache.rows, config.seed)
                 if eval_cache else None)

    def evaluate(step: int) -> pd.DataFrame | None:
        if eval_cache is None or not accelerator.is_main_process:
            return None
        h, tgt = eval_cache.batch(final_idx if step == config.steps else eval_idx)
        unwrapped = accelerator.unwrap_model(module).heads
        unwrapped.eval()
        df = topk_accuracy(unwrapped, h, tgt)
        unwrapped.train()
        df.insert(0, "step", step)
        acc_frames.append(df)
        write_csv_atomic(pd.concat(acc_frames, ignore_index=True), out / "accuracy_history.csv")
        write_csv_atomic(df.drop(columns="step"), out / "accuracy.csv")
        return df

    def save_checkpoint(step: int) -> None:
        tmp = out / ".checkpoint.tmp"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp / "state"))
        if accelerator.is_main_process:
            acc = pd.concat(acc_frames, ignore_index=True).to_dict("records") if acc_frames else []
            (tmp / "progress.json").write_text(json.dumps(
                {"step": step, "config": asdict(config), "loss": loss_rows, "accuracy": acc}))
            shutil.rmtree(ckpt, ignore_errors=True)
            os.replace(tmp, ckpt)
        accelerator.wait_for_everyone()

    world, rank = accelerator.num_processes, accelerator.process_index
    K = config.num_heads
    module.train()
    t_train = time.perf_counter()
    bar = tqdm(range(start_step, config.steps), initial=start_step, total=config.steps, desc="train stage 1",
               disable=not (progress and accelerator.is_main_process))
    for step in bar:
        idx = batch_indices(train_cache.rows, config.batch_size, step, config.seed)[rank::world]
        h, tgt = train_cache.batch(idx, device)
        loss, per_head = module(h, tgt)
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        per_head = accelerator.reduce(per_head, reduction="mean")
        total = float((per_head * head_weights(K, config.decay).to(per_head.device)).sum())
        loss_rows.append({"step": step + 1, "loss": total, "lr": scheduler.get_last_lr()[0],
                          **{f"loss_head{k + 1}": float(per_head[k]) for k in range(K)}})
        bar.set_postfix(loss=f"{total:.3f}")
        done = step + 1
        if done % config.eval_every == 0 or done == config.steps:
            df = evaluate(done)
            if df is not None:
                top1 = df[df.topk == 1].accuracy.tolist()
                bar.write(f"step {done}: top-1 " + " ".join(f"h{k + 1}={a:.3f}" for k, a in enumerate(top1)))
            if accelerator.is_main_process:
                write_csv_atomic(pd.DataFrame(loss_rows), out / "loss.csv")
        if done % config.save_every == 0 and done < config.steps:
            save_checkpoint(done)
    bar.close()
    train_s = time.perf_counter() - t_train

    record: dict[str, Any] = {}
    if accelerator.is_main_process:
        write_csv_atomic(pd.DataFrame(loss_rows), out / "loss.csv")
        final = acc_frames[-1] if acc_frames else None
        top1 = {int(r.head): round(float(r.accuracy), 4) for r in final.itertuples() if r.topk == 1} if final is not None else {}
        record = {
            "stage": 1,
            "config": asdict(config),
            "train_data": data_summary(config.data, train_samples),
            "eval_data": data_summary(config.eval_data, eval_samples) if eval_samples else None,
            "train_rows": train_cache.rows,
            "train_vocab_size": int(len(vocab)) if vocab is not None else heads.config.vocab_size,
            "eval_rows": int(len(eval_idx)) if eval_idx is not None else 0,
            "final_eval_rows": int(len(final_idx)) if final_idx is not None else 0,
            "token_samples_seen": config.steps * config.batch_size,
            "epochs": round(config.steps * config.batch_size / train_cache.rows, 3),
            "top1_accuracy_by_head": top1,
            "final_loss": loss_rows[-1]["loss"] if loss_rows else None,
            "cache_s": round(cache_s, 1),
            "cache": train_cache.meta,
            "train_s_this_run": round(train_s, 1),
            "wall_s_this_run": round(time.perf_counter() - t_start, 1),
            "resumed_from_step": start_step,
            "processes": world,
            "device": str(device),
            "torch_threads": torch.get_num_threads(),
            "git_commit": git_commit(),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        heads_out = accelerator.unwrap_model(module).heads
        heads_out.save(out, extra={"training": {k: record[k] for k in ("stage", "train_data", "top1_accuracy_by_head", "token_samples_seen")}})
        write_atomic(out / "training_record.json", json.dumps(record, indent=1) + "\n")
        ids = sorted({s.key for s in train_samples})
        write_atomic(out / "prompts.txt", "# sha256 prompt keys (medusa.data.prompt_hash) of the training prompts\n" + "\n".join(ids) + "\n")
        shutil.rmtree(ckpt, ignore_errors=True)
    accelerator.wait_for_everyone()
    return record


# ---- CLI --------------------------------------------------------------------------------------
def add_common_args(p: argparse.ArgumentParser) -> None:
    from medusa.train_stage2 import Stage2Config

    d = TrainConfig()
    p.add_argument("--data", required=True, help="distilled folder(s) (medusa.distill; several joined by commas) or a .jsonl of records")
    p.add_argument("--eval-data", default=d.eval_data, help="held-out distilled folder for accuracy")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--backbone", default=d.backbone)
    p.add_argument("--backbone-dtype", default=d.backbone_dtype)
    p.add_argument("--device", default=d.device, help="cpu or cuda (under accelerate launch: cuda)")
    p.add_argument("--init-heads", default=d.init_heads, help="start from these heads (stage 2: Medusa-1 heads, the paper's advice)")
    p.add_argument("--heads", type=int, default=d.num_heads, dest="num_heads")
    p.add_argument("--layers", type=int, default=d.num_layers, dest="num_layers")
    p.add_argument("--lm-projection", default=d.lm_projection, choices=("shared", "own"))
    p.add_argument("--steps", type=int, default=None, help=f"default: stage 1 {d.steps}, stage 2 {Stage2Config.steps}")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"global batch: stage 1 positions (default {d.batch_size}), stage 2 sequences (default {Stage2Config.batch_size})")
    p.add_argument("--lr", type=float, default=None, help=f"default: stage 1 {d.lr}, stage 2 (backbone) {Stage2Config.lr}")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio)
    p.add_argument("--decay", type=float, default=d.decay, help="head k's loss weight is decay**k")
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--eval-rows", type=int, default=d.eval_rows, help="held-out positions scored per evaluation")
    p.add_argument("--final-eval-rows", type=int, default=d.final_eval_rows, help="positions scored at the end (default: all)")
    p.add_argument("--save-every", type=int, default=d.save_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--max-samples", type=int, default=d.max_samples, help="use only the first N distilled samples")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medusa.train", description=__doc__.split("\n")[0])
    from medusa import train_stage2

    p.add_argument("--stage", type=int, choices=(1, 2), required=True)
    add_common_args(p)
    p.add_argument("--proj-dtype", default=TrainConfig.proj_dtype, help="stage 1: float32 or bfloat16 for the LM projection")
    p.add_argument("--cache-root", default=TrainConfig.cache_root, help="stage 1: hidden-state cache folder")
    p.add_argument("--train-vocab", default=TrainConfig.train_vocab, choices=TRAIN_VOCABS,
                   help="stage 1: softmax over the full vocabulary, or tokens seen as training targets + sampled negatives")
    p.add_argument("--cache-only", action="store_true", help="stage 1: build the hidden-state caches and stop")
    p.add_argument("--negatives", type=int, default=TrainConfig.negatives, help="stage 1: negatives per step with --train-vocab seen")
    train_stage2.add_args(p)
    args = p.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    if args.stage == 2:
        fields = set(train_stage2.Stage2Config.__dataclass_fields__)
        config2 = replace(train_stage2.Stage2Config(), lora=not args.full, **{k: v for k, v in given.items() if k in fields})
        record = train_stage2.train(config2, progress=not args.quiet)
    else:
        fields = set(TrainConfig.__dataclass_fields__)
        config = replace(TrainConfig(), **{k: v for k, v in given.items() if k in fields})
        record = train_stage1(config, progress=not args.quiet)
    if record:
        acc = record.get("top1_accuracy_by_head", {})
        print(f"{args.out}: top-1 by head {acc}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
