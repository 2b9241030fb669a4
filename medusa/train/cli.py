"""`python -m medusa.train --stage 1|2`: the command line of both training stages.

Flags map one to one onto the config fields (`medusa.train.config`), whose defaults they show;
`--steps`, `--batch-size` and `--lr` default per stage. `--num-heads` is the number of heads
(`--heads` names a heads folder everywhere else), `--dtype` the backbone's dtype, `--threads`
torch's CPU threads (applied here, the only place that changes process-wide settings).

Usage::

    python -m medusa.train --stage 1 --data data/distill/smollm2-train --eval-data data/distill/smollm2-eval \\
        --out results/heads/smollm2-135m-medusa1 --steps 2000 --batch-size 256 --proj-dtype bfloat16
    python -m medusa.train --stage 1 --data data/teacher/smollm2-train --eval-data data/distill/smollm2-eval \
        --loss soft --out results/_scratch/soft     # teacher-forced data (medusa.teacher)
    accelerate launch -m medusa.train --stage 1 --data ... --device cuda
    python -m medusa.train --stage 2 --data ... --init-heads results/heads/smollm2-135m-medusa1 --out results/_scratch/m2
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any

from common.cli import Parser, add_dtype, add_threads, apply_threads
from medusa.train.config import (
    BACKBONE_LOSSES,
    LOSSES,
    TRAIN_VOCABS,
    CommonTrainConfig,
    Stage2Config,
    TrainConfig,
)
from medusa.train.stage1 import train_stage1
from medusa.train.stage2 import train_stage2

PROG = "python -m medusa.train"


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Options of both stages."""
    d, d2 = TrainConfig(), Stage2Config()
    p.add_argument("--data", required=True, help="distilled folder(s) (medusa.distill; several joined by commas) or a .jsonl of records")
    p.add_argument("--eval-data", default=d.eval_data, help="held-out distilled folder for accuracy")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--backbone", default=d.backbone)
    add_dtype(p, d.dtype)
    p.add_argument("--device", default=d.device, help="cpu or cuda (under accelerate launch: cuda)")
    p.add_argument("--init-heads", default=d.init_heads, help="start from this heads folder (stage 2: Medusa-1 heads, the paper's advice)")
    p.add_argument("--num-heads", type=int, default=d.num_heads, help="number of heads")
    p.add_argument("--layers", type=int, default=d.num_layers, dest="num_layers", help="residual blocks per head")
    p.add_argument("--lm-projection", default=d.lm_projection, choices=("shared", "own"))
    p.add_argument("--steps", type=int, default=None,
                   help=f"default: stage 1 {d.steps}, stage 2 {d2.steps}; stage 1 --steps 0 only evaluates --init-heads")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"global batch: stage 1 positions (default {d.batch_size}), stage 2 sequences (default {d2.batch_size})")
    p.add_argument("--lr", type=float, default=None, help=f"default: stage 1 {d.lr}, stage 2 (backbone) {d2.lr}")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio)
    p.add_argument("--decay", type=float, default=d.decay, help="head k's loss weight is decay**k")
    p.add_argument("--seed", type=int, default=d.seed)
    add_threads(p)
    p.add_argument("--quiet", action="store_true")


def add_stage1_args(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    g = p.add_argument_group("stage 1")
    g.add_argument("--eval-every", type=int, default=d.eval_every)
    g.add_argument("--eval-rows", type=int, default=d.eval_rows, help="held-out positions scored per evaluation")
    g.add_argument("--final-eval-rows", type=int, default=d.final_eval_rows, help="positions scored at the end (default: all)")
    g.add_argument("--save-every", type=int, default=d.save_every)
    g.add_argument("--max-wall-s", type=float, default=d.max_wall_s,
                   help="stop taking steps after this many seconds of the run (caches included), then evaluate and save")
    g.add_argument("--max-samples", type=int, default=d.max_samples, help="use only the first N distilled samples (teacher-forced data: records, in whole shards)")
    g.add_argument("--proj-dtype", default=d.proj_dtype, help="float32 or bfloat16 for the LM projection")
    g.add_argument("--cache-root", default=d.cache_root, help="hidden-state cache folder")
    g.add_argument("--train-vocab", default=d.train_vocab, choices=TRAIN_VOCABS,
                   help="softmax over the full vocabulary, or tokens seen as training targets + sampled negatives")
    g.add_argument("--cache-only", action="store_true", help="build the hidden-state caches and stop")
    g.add_argument("--negatives", type=int, default=d.negatives, help="negatives per step with --train-vocab seen")
    g.add_argument("--loss", default=d.loss, choices=LOSSES,
                   help="hard: CE on the backbone's argmax; soft: CE against its top-k distribution "
                        "(teacher-forced --data from medusa.teacher); mix: (1 - w) hard + w soft")
    g.add_argument("--soft-weight", type=float, default=d.soft_weight, help="w of --loss mix")
    g.add_argument("--on-path", action="store_true", default=None,
                   help="teacher-forced --data: train head k at t only where the text's tokens t+1..t+k are "
                        "the backbone's own argmax (the greedy path decoding follows)")


def add_stage2_args(p: argparse.ArgumentParser) -> None:
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


def build_parser() -> Parser:
    p = Parser(prog=PROG, description="Train Medusa heads: stage 1 (Medusa-1, frozen backbone) or stage 2 (Medusa-2).")
    p.add_argument("--stage", type=int, choices=(1, 2), required=True)
    add_common_args(p)
    add_stage1_args(p)
    add_stage2_args(p)
    return p


def config_from_args(args: argparse.Namespace) -> CommonTrainConfig:
    """The stage's config: its defaults, overridden by every flag given that names one of its fields."""
    given: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    if args.stage == 2:
        given["lora"] = not args.full
        cls: type[CommonTrainConfig] = Stage2Config
    else:
        cls = TrainConfig
    names = {f.name for f in fields(cls)}
    return replace(cls(), **{k: v for k, v in given.items() if k in names})


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    apply_threads(args.threads)
    if isinstance(config, Stage2Config):
        record = train_stage2(config, progress=not args.quiet)
    else:
        record = train_stage1(config, progress=not args.quiet)  # type: ignore[arg-type]
    if record:
        print(f"{args.out}: top-1 by head {record.get('top1_accuracy_by_head', {})}")
    return 0
