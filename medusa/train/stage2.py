"""Medusa-2 training: backbone (LoRA through `peft`, or full) and heads trained together.

    L = L_backbone + lambda(t) * L_medusa1          (the model and its loss: `medusa.train.stage2_model`)

`L_backbone` is, by default, the KL divergence KL(p_original || p_tuned) of the next-token
distributions on self-distilled data (the paper's recipe to keep the backbone's quality); with
``--backbone-loss ce`` it is plain next-token cross-entropy on the given data. Heads learn at
``--heads-lr-mult`` (default 4) times the backbone's learning rate. For the first
``--heads-warmup`` steps the heads train alone (hidden states detached, no backbone loss); then
lambda ramps linearly from 0 to ``--lambda0`` over ``--lambda-ramp`` steps. Starting from Medusa-1
heads (``--init-heads``) is the paper's advice.

Greedy decoding with the result is lossless **with respect to the fine-tuned backbone**, not the
original: to decode, load the tuned backbone (``<out>/merged``, a plain HF folder) with its heads
(``<out>/heads``). How far the tuned backbone moved is measured on the held-out distilled answers
(`drift.json`, `medusa.train.drift`). Head accuracy (`accuracy.csv`) is measured on the tuned
backbone's hidden states against the original's distilled tokens; `accuracy_before.csv` scores the
initial heads on the original backbone on the same rows.

Output: ``adapter/`` (LoRA) or ``backbone/`` (full), ``merged/`` (tuned backbone + tokenizer),
``heads/``, ``loss.csv``, ``accuracy.csv``, ``accuracy_before.csv``, ``drift.json``,
``training_record.json``. Folders are written whole (`common.io.atomic_folder`).

Usage::

    python -m medusa.train --stage 2 --data data/distill/smollm2-train --eval-data data/distill/smollm2-eval \\
        --init-heads results/heads/smollm2-135m-medusa1 --out results/_scratch/medusa2 --steps 60
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from tqdm import tqdm

from common.errors import WorkbenchError
from common.io import atomic_folder, ensure_writable, write_csv, write_json
from medusa.backbone import Backbone, load_backbone, parse_dtype
from medusa.distill import Sample, read_samples, seeded
from medusa.train.config import Stage2Config
from medusa.train.drift import measure_drift
from medusa.train.inputs import check_data_fits, data_summary
from medusa.train.losses import top1_by_head, topk_accuracy
from medusa.train.record import write_training_record
from medusa.train.schedule import cosine_lr
from medusa.train.stage2_model import (
    Stage2Model,
    build,
    hidden_rows,
    lambda_at,
    make_batch,
    param_groups,
)

FLOAT_FORMAT = "%.6g"
MIN_GENERATED_IN_WINDOW = 8  # a sequence trains only if this many of its tokens fit in max_length


@dataclass(frozen=True)
class Stage2Inputs:
    """What a Medusa-2 run reads: its settings, the output folder, the backbone and the samples."""

    config: Stage2Config
    out: Path
    backbone: Backbone
    train: list[Sample]
    held_out: list[Sample]


def _fits(sample: Sample, max_length: int) -> bool:
    return bool(sample.spans) and sample.spans[0][0] + MIN_GENERATED_IN_WINDOW <= max_length


def read_data(config: Stage2Config) -> tuple[list[Sample], list[Sample]]:
    """Training samples with generated tokens inside max_length, and up to `eval_samples` held-out ones."""
    if not config.data or not config.out:
        raise WorkbenchError("--data and --out are required")
    train = [s for s in read_samples(config.data) if _fits(s, config.max_length)]
    if not train:
        raise WorkbenchError(f"no distilled sample has generated tokens within max_length {config.max_length}")
    held_out = [s for s in read_samples(config.eval_data) if _fits(s, config.max_length)] if config.eval_data else []
    if len(held_out) > config.eval_samples:  # evenly spaced: shards are ordered by prompt length
        held_out = [held_out[i] for i in np.linspace(0, len(held_out) - 1, config.eval_samples).astype(int)]
    return train, held_out


def head_accuracy(model: Stage2Model, run: Stage2Inputs, original: bool = False) -> pd.DataFrame:
    """Top-1..10 accuracy of the heads on the held-out samples' hidden states (of the original
    backbone, LoRA adapter disabled, when `original`)."""
    config, device = run.config, run.backbone.device
    if original and config.lora:
        with model.model.disable_adapter():
            h, t = hidden_rows(model.decoder(), run.held_out, model.heads.num_heads, config.max_length, device)
    else:
        h, t = hidden_rows(model.decoder(), run.held_out, model.heads.num_heads, config.max_length, device)
    return topk_accuracy(model.heads, h.to(run.backbone.dtype), t)


def run_steps(run: Stage2Inputs, model: Stage2Model, accelerator: Accelerator, progress: bool) -> list[dict[str, Any]]:
    """The optimisation loop; returns one loss row per step (loss.csv is rewritten every 10 steps)."""
    config = run.config
    optimizer = torch.optim.AdamW(param_groups(model, config.lr, config.heads_lr_mult, config.weight_decay))
    warmup = int(config.warmup_ratio * config.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(cosine_lr, total=config.steps, warmup=warmup))
    # The scheduler stays unprepared: it steps once per optimizer step (see medusa.train.stage1).
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    world, rank = accelerator.num_processes, accelerator.process_index
    rng = np.random.default_rng(config.seed)
    global_batch = config.batch_size * world
    rows: list[dict[str, Any]] = []
    bar = tqdm(range(config.steps), desc="train stage 2", disable=not (progress and accelerator.is_main_process))
    for step in bar:
        pick = rng.choice(len(run.train), size=global_batch, replace=len(run.train) < global_batch)
        batch = make_batch([run.train[i] for i in pick[rank::world]], model.heads.num_heads, config.max_length,
                           accelerator.device)
        heads_only = step < config.heads_warmup
        lam = lambda_at(step, config)
        bb_loss, med_loss, per_head = wrapped(batch["ids"], batch["mask"], batch["next_rows"], batch["head_rows"],
                                              batch["head_tgt"], heads_only)
        # During the heads-only warm-up the medusa loss trains the heads alone, at full weight.
        loss = med_loss if heads_only else bb_loss + lam * med_loss
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        rows.append({"step": step + 1, "loss": loss.item(), "backbone_loss": bb_loss.item(), "lambda": lam,
                     "medusa_loss": med_loss.item(), "lr_backbone": scheduler.get_last_lr()[0],
                     **{f"loss_head{k + 1}": float(per_head[k]) for k in range(len(per_head))}})
        bar.set_postfix(bb=f"{bb_loss.item():.3f}", med=f"{med_loss.item():.3f}")
        if accelerator.is_main_process and (step + 1) % 10 == 0:
            write_csv(pd.DataFrame(rows), run.out / "loss.csv", float_format=FLOAT_FORMAT)
    bar.close()
    accelerator.wait_for_everyone()
    return rows


def save_backbone(run: Stage2Inputs, model: Stage2Model) -> tuple[torch.nn.Module, Path]:
    """The adapter (LoRA), then the tuned backbone merged into a plain HF folder with the tokenizer."""
    if run.config.lora:
        with atomic_folder(run.out / "adapter") as tmp:
            model.model.save_pretrained(str(tmp))  # before merging, which removes the LoRA layers
    tuned = model.model.merge_and_unload() if run.config.lora else model.model
    merged = run.out / ("merged" if run.config.lora else "backbone")
    with atomic_folder(merged) as tmp:
        tuned.save_pretrained(str(tmp))
        if run.backbone.tokenizer is not None:
            run.backbone.tokenizer.save_pretrained(str(tmp))
    return tuned, merged


def write_outputs(run: Stage2Inputs, model: Stage2Model, before: pd.DataFrame | None,
                  loss_rows: list[dict[str, Any]], train_s: float, t_start: float, world: int) -> dict[str, Any]:
    """loss.csv, accuracy.csv, adapter/merged folders, drift.json, heads/ and the training record."""
    config, out = run.config, run.out
    model.eval()
    write_csv(pd.DataFrame(loss_rows), out / "loss.csv", float_format=FLOAT_FORMAT)
    after = None
    if run.held_out:
        after = head_accuracy(model, run)
        write_csv(after, out / "accuracy.csv", float_format=FLOAT_FORMAT)
    tuned, merged = save_backbone(run, model)
    drift = None
    if run.held_out:
        original = load_backbone(config.backbone, dtype=run.backbone.dtype, device=str(run.backbone.device))
        drift = measure_drift(original, tuned.eval(), run.held_out, config)
        write_json(drift, out / "drift.json", indent=1)
    record = {
        "stage": 2,
        "config": {**asdict(config), "lora_targets": list(config.lora_targets)},
        "train_data": data_summary(config.data, run.train),
        "eval_samples": len(run.held_out),
        "top1_accuracy_by_head_before": top1_by_head(before),
        "top1_accuracy_by_head": top1_by_head(after),
        "drift": drift,
        "backbone_folder": str(merged),
        "train_s": round(train_s, 1),
        "wall_s": round(time.perf_counter() - t_start, 1),
        "processes": world,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": "greedy decoding is lossless with respect to the tuned backbone in backbone_folder",
    }
    model.heads.save(out / "heads", extra={"training": {"stage": 2, "backbone_folder": str(merged),
                                                        "top1_accuracy_by_head": record["top1_accuracy_by_head"]}})
    return write_training_record(out, record, str(run.backbone.device), run.backbone.dtype)


def train_stage2(config: Stage2Config, progress: bool = True) -> dict[str, Any]:
    """Train backbone and heads together; returns the training record (on the main process)."""
    train, held_out = read_data(config)
    out = Path(config.out)
    ensure_writable(out)
    accelerator = Accelerator(cpu=config.device == "cpu",
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    device = accelerator.device
    t_start = time.perf_counter()
    backbone = load_backbone(config.backbone, dtype=parse_dtype(config.dtype, str(device)), device=str(device))
    for folder in (config.data, config.eval_data):
        if folder:
            check_data_fits(folder, backbone)
    run = Stage2Inputs(config, out, backbone, train, held_out)
    with seeded(config.seed, device):  # LoRA's initialisation, reproducible without reseeding the process
        model = build(config, backbone)
    before = None
    if held_out and accelerator.is_main_process:
        before = head_accuracy(model, run, original=True)
        write_csv(before, out / "accuracy_before.csv", float_format=FLOAT_FORMAT)
    loss_rows = run_steps(run, model, accelerator, progress)
    train_s = time.perf_counter() - t_start
    record: dict[str, Any] = {}
    if accelerator.is_main_process:
        record = write_outputs(run, accelerator.unwrap_model(model), before, loss_rows, train_s, t_start,
                               accelerator.num_processes)
    accelerator.wait_for_everyone()
    return record
