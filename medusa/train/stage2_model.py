"""Medusa-2's model: the trainable backbone (LoRA through `peft`, or in full) with the heads, its
batches and its two optimiser groups. The training loop is `medusa.train.stage2`.

    L = L_backbone + lambda(t) * L_medusa1

`L_backbone` is, by default, the KL divergence KL(p_original || p_tuned) of the next-token
distributions (the paper's recipe to keep the backbone's quality); with ``backbone_loss="ce"`` it
is plain next-token cross-entropy. The original model's distribution comes from the same weights
with the LoRA adapter disabled (a frozen copy for full fine-tuning). For the first `heads_warmup`
steps the heads train alone; then lambda ramps from 0 to `lambda0` (`lambda_at`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.errors import WorkbenchError
from medusa.backbone import Backbone
from medusa.distill import Sample
from medusa.heads import HeadsConfig, MedusaHeads, load_heads
from medusa.train.config import Stage2Config
from medusa.train.inputs import check_heads_fit
from medusa.train.losses import head_targets, head_weights, medusa_loss


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


def _lora(model: nn.Module, config: Stage2Config, backbone_name: str) -> nn.Module:
    # peft is imported here, not at the top: only LoRA training needs it, and it is slow to import.
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in config.lora_targets if t in present]
    if not targets:
        raise WorkbenchError(f"none of the LoRA targets {list(config.lora_targets)} exist in {backbone_name}")
    return get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                            target_modules=targets, lora_dropout=0.0, bias="none"))


def build(config: Stage2Config, backbone: Backbone) -> Stage2Model:
    """Wrap the backbone for training (LoRA adapter or full) and attach heads (fresh or --init-heads).

    LoRA's initialisation draws from torch's global generator: callers that want it reproducible
    run this under `medusa.distill.seeded` (as `train_stage2` does).
    """
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
        model = _lora(model, config, backbone.name)
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
