"""Medusa-2: backbone (LoRA through `peft`, or full) and heads trained together.

    L = L_backbone + lambda(t) * L_medusa1

`L_backbone` is, by default, the KL divergence KL(p_original || p_tuned) of the next-token
distributions on self-distilled data (the paper's recipe to keep the backbone's quality); with
``--backbone-loss ce`` it is plain next-token cross-entropy on the given data. The original model's
distribution comes from the same weights with the LoRA adapter disabled (a frozen copy for full
fine-tuning). Heads learn at ``--heads-lr-mult`` (default 4) times the backbone's learning rate.
For the first ``--heads-warmup`` steps the heads train alone (hidden states detached, no backbone
loss); then lambda ramps linearly from 0 to ``--lambda0`` over ``--lambda-ramp`` steps. Starting
from Medusa-1 heads (``--init-heads``) is the paper's advice.

Greedy decoding with the result is lossless **with respect to the fine-tuned backbone**, not the
original: to decode, load the tuned backbone (``<out>/merged``, a plain HF folder) with its heads
(``<out>/heads``). How far the tuned backbone moved is measured on the held-out distilled answers
(`drift.json`): teacher-forced top-1 agreement with the original, mean KL, mean log-likelihood of
the original's greedy tokens under both models, and greedy-generation token agreement on a few
held-out prompts. Head accuracy (`accuracy.csv`) is measured on the tuned backbone's hidden states
against the original's distilled tokens; `accuracy_before.csv` scores the initial heads on the
original backbone on the same rows.

Output: ``adapter/`` (LoRA) or ``backbone/`` (full), ``merged/`` (tuned backbone + tokenizer),
``heads/``, ``loss.csv``, ``accuracy.csv``, ``accuracy_before.csv``, ``drift.json``,
``training_record.json``.

Usage::

    python -m medusa.train --stage 2 --data data/distill/smollm2-train --eval-data data/distill/smollm2-eval \\
        --init-heads results/heads/smollm2-135m-medusa1 --out results/_scratch/medusa2 --steps 60
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from medusa.backbone import Backbone, load_backbone, parse_dtype
from medusa.distill import Sample, ensure_writable, read_samples, write_atomic
from medusa.errors import WorkbenchError
from medusa.heads import HeadsConfig, MedusaHeads, load_heads
from medusa.train import (
    CommonTrainConfig,
    check_data_fits,
    check_heads_fit,
    cosine_lr,
    data_summary,
    git_commit,
    head_targets,
    head_weights,
    medusa_loss,
    topk_accuracy,
    write_csv_atomic,
)

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BACKBONE_LOSSES = ("kl", "ce")


@dataclass(frozen=True)
class Stage2Config(CommonTrainConfig):
    """Medusa-2 options; each default is defined here once (shared ones in CommonTrainConfig)."""

    steps: int = 200
    batch_size: int = 4
    max_length: int = 384
    lr: float = 5e-5
    heads_lr_mult: float = 4.0
    lambda0: float = 0.2
    heads_warmup: int = 20
    lambda_ramp: int = 20
    backbone_loss: str = "kl"
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_targets: tuple[str, ...] = field(default=LORA_TARGETS)
    eval_samples: int = 24
    drift_prompts: int = 4
    drift_tokens: int = 64

    def __post_init__(self) -> None:
        if self.backbone_loss not in BACKBONE_LOSSES:
            raise WorkbenchError(f"backbone_loss must be one of {BACKBONE_LOSSES}, got {self.backbone_loss!r}")
        for name in ("steps", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise WorkbenchError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.heads_lr_mult <= 0 or self.lr <= 0:
            raise WorkbenchError("lr and heads_lr_mult must be > 0")


def lambda_at(step: int, config: Stage2Config) -> float:
    """Weight of the Medusa loss at `step` (0 during the heads-only warm-up, then ramped to lambda0)."""
    if step < config.heads_warmup:
        return 0.0
    ramp = step - config.heads_warmup + 1
    return config.lambda0 * min(1.0, ramp / max(1, config.lambda_ramp))


class Stage2Model(nn.Module):
    """Trainable backbone (LoRA or full) + heads; forward returns the losses of one batch."""

    def __init__(self, model: nn.Module, heads: MedusaHeads, teacher: nn.Module | None, config: Stage2Config) -> None:
        super().__init__()
        self.model = model
        self.heads = heads
        self._teacher = (teacher,)  # frozen copy for full fine-tuning; None with LoRA
        self.config = config
        self.register_buffer("weights", head_weights(heads.num_heads, config.decay), persistent=False)

    def decoder(self) -> nn.Module:
        m = self.model
        return m.get_base_model().model if hasattr(m, "get_base_model") else m.model

    def lm_head(self) -> nn.Module:
        return self.model.get_output_embeddings()

    @torch.no_grad()
    def original_logprobs(self, ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """log p_original at the (batch, position) `rows`: (n, V)."""
        teacher = self._teacher[0]
        if teacher is not None:
            h = teacher.model(input_ids=ids, attention_mask=mask).last_hidden_state
            return F.log_softmax(teacher.get_output_embeddings()(h[rows[:, 0], rows[:, 1]]).float(), dim=-1)
        with self.model.disable_adapter():
            h = self.decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
            return F.log_softmax(self.lm_head()(h[rows[:, 0], rows[:, 1]]).float(), dim=-1)

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, next_rows: torch.Tensor, head_rows: torch.Tensor,
        head_tgt: torch.Tensor, heads_only: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(backbone loss, weighted medusa loss, per-head CE). next_rows (n, 2): positions whose next token is generated."""
        hidden = self.decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        if heads_only:
            backbone_loss = hidden.new_zeros(())
        else:
            logits = self.lm_head()(hidden[next_rows[:, 0], next_rows[:, 1]]).float()
            logp = F.log_softmax(logits, dim=-1)
            if self.config.backbone_loss == "kl":
                ref = self.original_logprobs(ids, mask, next_rows)
                backbone_loss = (ref.exp() * (ref - logp)).sum(-1).mean()
            else:
                target = ids[next_rows[:, 0], next_rows[:, 1] + 1]
                backbone_loss = F.nll_loss(logp, target)
        h = hidden[head_rows[:, 0], head_rows[:, 1]]
        if heads_only:
            h = h.detach()
        feats = self.heads.features(h)
        weighted, per_head = medusa_loss(feats, head_tgt, lambda k, x: self.heads.projection(k)(x), self.weights)
        return backbone_loss, weighted, per_head


def make_batch(samples: Sequence[Sample], num_heads: int, max_length: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded ids/mask, rows predicting a generated next token, and head rows/targets."""
    seqs = [s.ids[:max_length] for s in samples]
    width = max(len(x) for x in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    next_rows, head_rows, head_tgt = [], [], []
    for b, (s, x) in enumerate(zip(samples, seqs)):
        ids[b, : len(x)] = torch.tensor(x)
        mask[b, : len(x)] = 1
        spans = [(a, min(e, len(x))) for a, e in s.spans if a < len(x)]
        for a, e in spans:
            next_rows.extend((b, t) for t in range(max(a - 1, 0), e - 1))
        pos, tgt = head_targets(x, spans, num_heads)
        head_rows.extend((b, int(t)) for t in pos)
        head_tgt.append(tgt)
    if not next_rows:
        raise WorkbenchError("batch has no generated tokens within max_length")
    return {
        "ids": ids.to(device), "mask": mask.to(device),
        "next_rows": torch.tensor(next_rows, dtype=torch.long, device=device),
        "head_rows": torch.tensor(head_rows, dtype=torch.long, device=device).view(-1, 2),
        "head_tgt": torch.from_numpy(np.concatenate(head_tgt)).to(device),
    }


def param_groups(model: Stage2Model, lr: float, heads_lr_mult: float, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: trainable backbone parameters at lr, heads at lr * heads_lr_mult."""
    head_ids = {id(p) for p in model.heads.parameters()}
    backbone = [p for p in model.model.parameters() if p.requires_grad and id(p) not in head_ids]
    heads = [p for p in model.heads.parameters() if p.requires_grad]
    return [
        {"params": backbone, "lr": lr, "weight_decay": weight_decay, "name": "backbone"},
        {"params": heads, "lr": lr * heads_lr_mult, "weight_decay": weight_decay, "name": "heads"},
    ]


def build(config: Stage2Config, backbone: Backbone) -> Stage2Model:
    """Wrap the backbone for training (LoRA adapter or full) and attach heads (fresh or --init-heads)."""
    if config.init_heads:
        heads = load_heads(config.init_heads, backbone)
    else:
        hc = HeadsConfig(num_heads=config.num_heads, num_layers=config.num_layers, lm_projection=config.lm_projection)
        check_heads_fit(hc, backbone)
        heads = MedusaHeads.for_backbone(backbone, hc)
    heads.train()
    for p in heads.parameters():
        p.requires_grad_(True)
    model = backbone.model
    teacher = None
    if config.lora:
        from peft import LoraConfig, get_peft_model

        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        targets = [t for t in config.lora_targets if t in present]
        if not targets:
            raise WorkbenchError(f"none of the LoRA targets {list(config.lora_targets)} exist in {backbone.name}")
        model = get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                                 target_modules=targets, lora_dropout=0.0, bias="none"))
    else:
        teacher = copy.deepcopy(model).eval().requires_grad_(False) if config.backbone_loss == "kl" else None
        for p in model.parameters():
            # The shared projection (tied to the embeddings in SmolLM2) stays frozen so heads keep a fixed target.
            p.requires_grad_(not (config.lm_projection == "shared" and p is model.get_output_embeddings().weight))
    model.train()
    return Stage2Model(model, heads, teacher, config)


@torch.no_grad()
def hidden_rows(decoder: nn.Module, samples: Sequence[Sample], num_heads: int, max_length: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states and head targets at every trained position of `samples` (one sample at a time)."""
    hs, ts = [], []
    for s in samples:
        batch = make_batch([s], num_heads, max_length, device)
        h = decoder(input_ids=batch["ids"], attention_mask=batch["mask"]).last_hidden_state
        r = batch["head_rows"]
        hs.append(h[r[:, 0], r[:, 1]].float().cpu())
        ts.append(batch["head_tgt"].cpu())
    return torch.cat(hs), torch.cat(ts)


@torch.no_grad()
def measure_drift(original: Backbone, tuned_model: nn.Module, samples: Sequence[Sample], config: Stage2Config) -> dict[str, Any]:
    """How far the tuned backbone's outputs moved from the original's on held-out distilled answers."""
    agree = total = 0
    kl_sum = ll_orig = ll_tuned = 0.0
    for s in samples:
        b = make_batch([s], config.num_heads, config.max_length, original.device)
        rows = b["next_rows"]
        target = b["ids"][rows[:, 0], rows[:, 1] + 1]
        lo = F.log_softmax(original.model(input_ids=b["ids"]).logits[rows[:, 0], rows[:, 1]].float(), -1)
        lt = F.log_softmax(tuned_model(input_ids=b["ids"]).logits[rows[:, 0], rows[:, 1]].float(), -1)
        agree += int((lo.argmax(-1) == lt.argmax(-1)).sum())
        total += rows.shape[0]
        kl_sum += float((lo.exp() * (lo - lt)).sum())
        ll_orig += float(lo.gather(1, target[:, None]).sum())
        ll_tuned += float(lt.gather(1, target[:, None]).sum())
    gen_agree = gen_total = identical = 0
    for s in samples[: config.drift_prompts]:
        start = s.spans[0][0]
        prompt = torch.tensor([s.ids[:start]], device=original.device)
        kw = dict(max_new_tokens=config.drift_tokens, do_sample=False, attention_mask=torch.ones_like(prompt),
                  pad_token_id=original.config.pad_token_id)
        a = original.model.generate(prompt, **kw)[0, start:].tolist()
        b_ = tuned_model.generate(prompt, **kw)[0, start:].tolist()
        n = min(len(a), len(b_))
        gen_agree += sum(x == y for x, y in zip(a[:n], b_[:n]))
        gen_total += n
        identical += int(a == b_)
    return {
        "positions": total,
        "teacher_forced_top1_agreement": agree / total,
        "mean_kl_original_to_tuned": kl_sum / total,
        "mean_loglik_original_greedy_tokens": {"original": ll_orig / total, "tuned": ll_tuned / total},
        "greedy_generation": {"prompts": min(len(samples), config.drift_prompts), "max_new_tokens": config.drift_tokens,
                              "positional_token_agreement": gen_agree / gen_total if gen_total else float("nan"),
                              "identical_outputs": identical},
    }


def train(config: Stage2Config, progress: bool = True) -> dict[str, Any]:
    from accelerate import Accelerator, DistributedDataParallelKwargs

    if not config.data or not config.out:
        raise WorkbenchError("--data and --out are required")
    out = Path(config.out)
    ensure_writable(out)
    if config.threads:
        torch.set_num_threads(config.threads)
    accelerator = Accelerator(cpu=config.device == "cpu",
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    device = accelerator.device
    t_start = time.perf_counter()
    torch.manual_seed(config.seed)
    dtype = parse_dtype(config.backbone_dtype, str(device))
    backbone = load_backbone(config.backbone, dtype=dtype, device=str(device))
    # Sequences are cut at max_length; keep those with at least a few generated tokens inside it.
    train_samples = [s for s in read_samples(config.data) if s.spans and s.spans[0][0] + 8 <= config.max_length]
    if not train_samples:
        raise WorkbenchError(f"no distilled sample has generated tokens within max_length {config.max_length}")
    eval_samples = read_samples(config.eval_data) if config.eval_data else []
    eval_samples = [s for s in eval_samples if s.spans and s.spans[0][0] + 8 <= config.max_length]
    if len(eval_samples) > config.eval_samples:  # evenly spaced: shards are ordered by prompt length
        eval_samples = [eval_samples[i] for i in np.linspace(0, len(eval_samples) - 1, config.eval_samples).astype(int)]
    for folder in (config.data, config.eval_data):
        if folder:
            check_data_fits(folder, backbone)
    model = build(config, backbone)
    before = None
    if eval_samples and accelerator.is_main_process:
        h, t = hidden_rows(model.decoder(), eval_samples, model.heads.num_heads, config.max_length, device)
        if config.lora:
            with model.model.disable_adapter():
                h, t = hidden_rows(model.decoder(), eval_samples, model.heads.num_heads, config.max_length, device)
        before = topk_accuracy(model.heads, h.to(dtype), t)
        write_csv_atomic(before, out / "accuracy_before.csv")

    groups = param_groups(model, config.lr, config.heads_lr_mult, config.weight_decay)
    optimizer = torch.optim.AdamW(groups)
    warmup = int(config.warmup_ratio * config.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_lr(s, config.steps, warmup))
    wrapped, optimizer = accelerator.prepare(model, optimizer)  # scheduler: once per step, see medusa.train

    world, rank = accelerator.num_processes, accelerator.process_index
    rng = np.random.default_rng(config.seed)
    loss_rows = []
    bar = tqdm(range(config.steps), desc="train stage 2", disable=not (progress and accelerator.is_main_process))
    for step in bar:
        pick = rng.choice(len(train_samples), size=config.batch_size * world, replace=len(train_samples) < config.batch_size * world)
        batch = make_batch([train_samples[i] for i in pick[rank::world]], model.heads.num_heads, config.max_length, device)
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
        loss_rows.append({"step": step + 1, "loss": loss.item(), "backbone_loss": bb_loss.item(), "lambda": lam,
                          "medusa_loss": med_loss.item(), "lr_backbone": scheduler.get_last_lr()[0],
                          **{f"loss_head{k + 1}": float(per_head[k]) for k in range(len(per_head))}})
        bar.set_postfix(bb=f"{bb_loss.item():.3f}", med=f"{med_loss.item():.3f}")
        if accelerator.is_main_process and (step + 1) % 10 == 0:
            write_csv_atomic(pd.DataFrame(loss_rows), out / "loss.csv")
    bar.close()
    train_s = time.perf_counter() - t_start
    accelerator.wait_for_everyone()
    record: dict[str, Any] = {}
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(wrapped)
        model.eval()
        write_csv_atomic(pd.DataFrame(loss_rows), out / "loss.csv")
        after = None
        if eval_samples:
            h, t = hidden_rows(model.decoder(), eval_samples, model.heads.num_heads, config.max_length, device)
            after = topk_accuracy(model.heads, h.to(dtype), t)
            write_csv_atomic(after, out / "accuracy.csv")
        if config.lora:
            model.model.save_pretrained(str(out / "adapter"))  # before merging, which removes the LoRA layers
        tuned = model.model.merge_and_unload() if config.lora else model.model
        drift = None
        if eval_samples:
            original = load_backbone(config.backbone, dtype=dtype, device=str(device))
            drift = measure_drift(original, tuned.eval(), eval_samples, config)
            write_atomic(out / "drift.json", json.dumps(drift, indent=1) + "\n")
        merged = out / ("merged" if config.lora else "backbone")
        tmp = out / f".{merged.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tuned.save_pretrained(str(tmp))
        if backbone.tokenizer is not None:
            backbone.tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(merged, ignore_errors=True)
        os.replace(tmp, merged)

        def top1(df: pd.DataFrame | None) -> dict[int, float]:
            return {int(r.head): round(float(r.accuracy), 4) for r in df.itertuples() if r.topk == 1} if df is not None else {}

        record = {
            "stage": 2,
            "config": {**asdict(config), "lora_targets": list(config.lora_targets)},
            "train_data": data_summary(config.data, train_samples),
            "eval_samples": len(eval_samples),
            "top1_accuracy_by_head_before": top1(before),
            "top1_accuracy_by_head": top1(after),
            "drift": drift,
            "backbone_folder": str(merged),
            "train_s": round(train_s, 1),
            "wall_s": round(time.perf_counter() - t_start, 1),
            "processes": world,
            "device": str(device),
            "git_commit": git_commit(),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "note": "greedy decoding is lossless with respect to the tuned backbone in backbone_folder",
        }
        model.heads.save(out / "heads", extra={"training": {"stage": 2, "backbone_folder": str(merged),
                                                            "top1_accuracy_by_head": record["top1_accuracy_by_head"]}})
        write_atomic(out / "training_record.json", json.dumps(record, indent=1) + "\n")
    accelerator.wait_for_everyone()
    return record


def add_args(p: argparse.ArgumentParser) -> None:
    """Stage-2-only options of `python -m medusa.train` (the common ones live in medusa.train)."""
    d = Stage2Config()
    g = p.add_argument_group("stage 2")
    g.add_argument("--max-length", type=int, default=d.max_length, help="tokens per training sequence")
    g.add_argument("--heads-lr-mult", type=float, default=d.heads_lr_mult)
    g.add_argument("--lambda0", type=float, default=d.lambda0)
    g.add_argument("--heads-warmup", type=int, default=d.heads_warmup, help="steps training the heads alone")
    g.add_argument("--lambda-ramp", type=int, default=d.lambda_ramp, help="steps to ramp lambda to lambda0")
    g.add_argument("--backbone-loss", default=d.backbone_loss, choices=BACKBONE_LOSSES)
    g.add_argument("--full", action="store_true", help="fine-tune all backbone weights instead of LoRA")
    g.add_argument("--lora-r", type=int, default=d.lora_r)
    g.add_argument("--lora-alpha", type=int, default=d.lora_alpha)
    g.add_argument("--eval-samples", type=int, default=d.eval_samples, help="held-out sequences for accuracy and drift")
