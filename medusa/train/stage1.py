"""Medusa-1 training: frozen backbone, heads only, on cached hidden states.

The backbone is frozen, so it runs **once** over the distilled data (`medusa.distill`) and its last
hidden states are cached on disk (`medusa.train.cache`); epochs then cost only the heads. The loss
(`medusa.train.losses`) weights head k's cross-entropy by decay^k; AdamW, cosine schedule with
linear warmup (`medusa.train.schedule`). With the `shared` LM projection the 49152x576 projection
is the backbone's frozen LM head: it needs no weight gradient, only the gradient to its input, and
`--proj-dtype bfloat16` runs both products in bf16 (about 2x faster on a CPU with AVX512-BF16; the
loss itself is fp32). `--train-vocab seen` shrinks it further: the training softmax runs over the
tokens that occur as targets in the training data (a few thousand of the 49152) plus `--negatives`
tokens resampled every step with the log(unseen/drawn) correction (sampled softmax); evaluation
always uses the full vocabulary. The ResBlocks are cheap next to the projection, so extra
`--layers` cost little.

Every `--eval-every` steps the heads are scored on (`--eval-rows` positions of) the held-out cache,
and at the end on all of it (`--final-eval-rows`): per-head cumulative top-1..10 accuracy
(`accuracy_history.csv`: step, head, topk, accuracy, count; heads 1-based). The last evaluation is
`accuracy.csv`; the loss curve (total and per head) is `loss.csv`. The output folder receives
heads.safetensors + config.json (training record under `training`), training_record.json
(`medusa.train.record`) and the prompt ids used (`prompts.txt`). A checkpoint
(`<out>/checkpoint`, via accelerate) is saved every `--save-every` steps; running the same command
again resumes from it, and it is removed when the run finishes. Batches and sampled negatives are
functions of (seed, step), so a resumed run matches an uninterrupted one.

The same code runs as one CPU process or data-parallel under `accelerate launch` / `torchrun`
(each process takes its slice of every global batch; the cache is built once by the main process).

Teacher-forced data (`medusa.teacher`, a folder whose run.json says `"kind": "teacher"`) needs no
cache: its shards already hold the hidden states (`medusa.train.cache.TeacherCache`), and they also
hold the backbone's top-k distribution, so `--loss soft` (or `mix`, `--soft-weight`) trains on it
(`medusa.train.losses.soft_cross_entropy`); `--loss hard` (the default) is the cross-entropy on the
backbone's argmax, as on self-distilled data. `--eval-data` may be either kind.

Phases of `train_stage1`: read the data, load the backbone, build the caches, make the trainer,
resume, run the steps (train, evaluate, log, checkpoint), write the outputs.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from tqdm import tqdm

from common.errors import WorkbenchError
from common.io import (
    atomic_folder,
    atomic_write,
    ensure_writable,
    read_json,
    write_csv,
    write_npy,
    write_parquet,
)
from medusa.backbone import Backbone, load_backbone, parse_dtype
from medusa.distill import Sample, read_samples
from medusa.heads import HeadsConfig, MedusaHeads, deepen, heads_fingerprint, load_heads
from medusa.subvocab import TARGET_COUNTS
from medusa.teacher import is_teacher_folder
from medusa.train.cache import (
    HiddenCache,
    TeacherCache,
    build_cache,
    open_teacher_cache,
    sample_positions,
    teacher_keys,
    teacher_summary,
)
from medusa.train.config import TrainConfig
from medusa.train.inputs import check_data_fits, data_summary
from medusa.train.losses import (
    ProjectedHeads,
    accuracy_from_ranks,
    draw_negatives,
    head_ranks,
    head_weights,
    top1_by_head,
)
from medusa.train.record import write_training_record
from medusa.train.schedule import batch_indices, cosine_lr, eval_subset

CHECKPOINT = "checkpoint"
EVAL_RANKS = "eval_ranks.parquet"  # held-out ranks of the final evaluation (self-distilled --eval-data)
FLOAT_FORMAT = "%.6g"


@dataclass
class RunLog:
    """What a run has logged so far (a loss row per step, accuracy evaluations); a checkpoint keeps it."""

    loss: list[dict[str, Any]] = field(default_factory=list)
    accuracy: list[pd.DataFrame] = field(default_factory=list)

    def history(self) -> pd.DataFrame | None:
        return pd.concat(self.accuracy, ignore_index=True) if self.accuracy else None

    def progress(self, step: int, config: TrainConfig) -> dict[str, Any]:
        """The checkpoint's progress.json: the step reached, the settings and the logs."""
        history = self.history()
        return {"step": step, "config": asdict(config), "loss": self.loss,
                "accuracy": history.to_dict("records") if history is not None else []}

    @classmethod
    def from_progress(cls, progress: dict[str, Any]) -> RunLog:
        return cls(list(progress["loss"]), [pd.DataFrame(progress["accuracy"])] if progress["accuracy"] else [])


@dataclass
class Stage1Data:
    """The samples a run reads and their hidden-state caches."""

    train: list[Sample]
    eval: list[Sample]
    train_cache: HiddenCache | TeacherCache
    eval_cache: HiddenCache | TeacherCache | None
    cache_s: float


@dataclass
class Trainer:
    """The heads, the module the steps run (DDP-wrapped when distributed) and its optimiser."""

    heads: MedusaHeads
    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    vocab: torch.Tensor | None
    negatives_pool: int
    negatives: int


# ---- phases -----------------------------------------------------------------------------------
def read_data(config: TrainConfig) -> tuple[list[Sample], list[Sample]]:
    """Training and held-out samples (read before the backbone loads, so bad data fails fast)."""
    if not config.data or not config.out:
        raise WorkbenchError("--data and --out are required")
    if config.on_path and not teacher_data(config.data):
        raise WorkbenchError(f"--on-path needs teacher-forced data (python -m medusa.teacher); {config.data} is self-distilled")
    if teacher_data(config.data):
        train: list[Sample] = []
    elif config.effective_soft_weight > 0:
        raise WorkbenchError(f"--loss {config.loss} needs teacher-forced data (python -m medusa.teacher); {config.data} is self-distilled")
    else:
        train = read_samples(config.data, limit=config.max_samples)
    held_out = read_samples(config.eval_data) if config.eval_data and not teacher_data(config.eval_data) else []
    return train, held_out


def teacher_data(spec: str) -> bool:
    """Whether a `--data` value names teacher-forced folders (`medusa.teacher`), not distilled ones."""
    return is_teacher_folder(spec.split(",")[0].strip())


def open_cache(spec: str, samples: list[Sample], config: TrainConfig, backbone: Backbone,
               progress: bool) -> HiddenCache | TeacherCache:
    """Teacher-forced shards as they are, or the hidden-state cache of distilled samples."""
    if teacher_data(spec):
        return open_teacher_cache(spec, config.num_heads, backbone.hidden_size, config.on_path and spec == config.data,
                                  config.max_samples if spec == config.data else None)
    return build_cache(backbone, samples, config.num_heads, config.cache_root, progress=progress)


def build_caches(config: TrainConfig, backbone: Backbone, train: list[Sample], held_out: list[Sample],
                 accelerator: Accelerator, progress: bool) -> Stage1Data:
    """Hidden-state caches of both sets, built by the main process first, then opened by the others."""
    for folder in (config.data, config.eval_data):
        if folder:
            check_data_fits(folder, backbone)
    with accelerator.main_process_first():
        t0 = time.perf_counter()
        train_cache = open_cache(config.data, train, config, backbone, progress and accelerator.is_main_process)
        eval_cache = open_cache(config.eval_data, held_out, config, backbone, False) if config.eval_data else None
    return Stage1Data(train, held_out, train_cache, eval_cache, time.perf_counter() - t0)


def make_heads(config: TrainConfig, backbone: Backbone) -> MedusaHeads:
    """Fresh heads (their initialisation draws no random numbers) or `--init-heads` (deepened with
    identity blocks when `--layers` asks for more than they have), in fp32."""
    if config.init_heads:
        heads = load_heads(config.init_heads, backbone)
        if config.num_layers > heads.config.num_layers:  # --layers above the init heads': add identity blocks
            heads = deepen(heads, config.num_layers)
    else:
        shape = HeadsConfig(num_heads=config.num_heads, num_layers=config.num_layers, lm_projection=config.lm_projection)
        heads = MedusaHeads.for_backbone(backbone, shape)
    if heads.config.num_heads != config.num_heads:
        raise WorkbenchError(f"--init-heads has {heads.config.num_heads} heads but --num-heads is {config.num_heads}")
    heads.requires_grad_(True)
    heads.train()
    # Heads train in fp32. The backbone is not needed after caching, so its (shared) LM head is made
    # fp32 in place too: evaluation then scores the full vocabulary in fp32 on every device.
    heads.to(torch.float32)
    backbone.model.get_output_embeddings().to(torch.float32)
    return heads


def make_trainer(config: TrainConfig, heads: MedusaHeads, cache: HiddenCache | TeacherCache,
                 accelerator: Accelerator) -> Trainer:
    """Loss module, AdamW and the cosine schedule, prepared for the accelerator."""
    device = str(accelerator.device)
    proj_dtype = None if config.proj_dtype in ("float32", "fp32") else parse_dtype(config.proj_dtype, device)
    vocab = cache.target_vocab() if config.train_vocab == "seen" else None
    module = ProjectedHeads(heads, config.decay, proj_dtype, vocab, config.negatives, config.effective_soft_weight)
    optimizer = torch.optim.AdamW([p for p in heads.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    warmup = int(config.warmup_ratio * config.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(cosine_lr, total=config.steps, warmup=warmup))
    pool, negatives = module.pool, module.negatives
    # The scheduler stays unprepared: every process takes a slice of one global batch, so it steps
    # once per optimizer step (accelerate would step it once per process).
    module, optimizer = accelerator.prepare(module, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    return Trainer(heads, module, optimizer, scheduler, vocab, pool, negatives)


def resume(config: TrainConfig, ckpt: Path, accelerator: Accelerator) -> tuple[int, RunLog]:
    """The step and logs of `<out>/checkpoint` (restoring model, optimiser and schedule), else a fresh start."""
    if not (ckpt / "progress.json").is_file():
        return 0, RunLog()
    progress = json.loads((ckpt / "progress.json").read_text())
    if progress.get("config") != asdict(config):
        raise WorkbenchError(f"{ckpt} belongs to a run with other settings; delete it or use another --out")
    accelerator.load_state(str(ckpt / "state"))
    accelerator.print(f"resuming from step {progress['step']}")
    return int(progress["step"]), RunLog.from_progress(progress)


def train_step(config: TrainConfig, trainer: Trainer, cache: HiddenCache | TeacherCache, step: int,
               accelerator: Accelerator) -> dict[str, Any]:
    """One optimiser step on global batch `step` (this process's slice); returns its loss row."""
    world, rank = accelerator.num_processes, accelerator.process_index
    idx = batch_indices(cache.rows, config.batch_size, step, config.seed)[rank::world]
    h, tgt = cache.batch(idx, accelerator.device)
    negatives = draw_negatives(trainer.negatives_pool, trainer.negatives, config.seed, step)
    soft = cache.soft_batch(idx, accelerator.device) if config.effective_soft_weight > 0 else None
    loss, per_head = trainer.module(h, tgt, negatives, soft)
    accelerator.backward(loss)
    trainer.optimizer.step()
    trainer.scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    per_head = accelerator.reduce(per_head, reduction="mean")
    total = float((per_head * head_weights(config.num_heads, config.decay).to(per_head.device)).sum())
    return {"step": step + 1, "loss": total, "lr": trainer.scheduler.get_last_lr()[0],
            **{f"loss_head{k + 1}": float(per_head[k]) for k in range(config.num_heads)}}


def evaluate(heads: MedusaHeads, cache: HiddenCache | TeacherCache, rows: np.ndarray,
             step: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Top-1..10 accuracy per head on held-out `rows`, tagged with `step`, and the (rows, K) ranks."""
    h, tgt = cache.batch(rows)
    heads.eval()
    try:
        ranks = head_ranks(heads, h, tgt)
    finally:
        heads.train()
    table = accuracy_from_ranks(ranks, tgt)
    table.insert(0, "step", step)
    return table, ranks


def evaluate_into(log: RunLog, heads: MedusaHeads, data: Stage1Data, rows: np.ndarray, step: int, final: bool,
                  out: Path) -> pd.DataFrame:
    """Evaluate on held-out `rows`, append the table to `log`; the final evaluation of every
    distilled held-out row also writes the ranks table (`EVAL_RANKS`)."""
    table, ranks = evaluate(heads, data.eval_cache, rows, step)
    log.accuracy.append(table)
    if final and data.eval and len(rows) == data.eval_cache.rows:
        write_parquet(ranks_table(ranks, data.eval, heads.config.num_heads), out / EVAL_RANKS)
    return table


def ranks_table(ranks: np.ndarray, samples: list[Sample], num_heads: int) -> pd.DataFrame:
    """The held-out ranks as a tidy ranks table (prompt, position, head, rank0), what
    `bench.calibrate` writes for the replay model, from the heads' final evaluation of every row."""
    where = sample_positions(samples, num_heads)
    return pd.DataFrame({"prompt": np.repeat(where["prompt"].to_numpy(), num_heads),
                         "position": np.repeat(where["position"].to_numpy(), num_heads),
                         "head": np.tile(np.arange(1, num_heads + 1), len(where)),
                         "rank0": ranks.reshape(-1)})


def write_logs(out: Path, log: RunLog) -> None:
    """loss.csv, and the accuracy history and latest accuracy when there are evaluations."""
    write_csv(pd.DataFrame(log.loss), out / "loss.csv", float_format=FLOAT_FORMAT)
    history = log.history()
    if history is not None:
        write_csv(history, out / "accuracy_history.csv", float_format=FLOAT_FORMAT)
        write_csv(log.accuracy[-1].drop(columns="step"), out / "accuracy.csv", float_format=FLOAT_FORMAT)


def save_checkpoint(accelerator: Accelerator, ckpt: Path, step: int, config: TrainConfig, log: RunLog) -> None:
    """Replace `ckpt` in one rename; every process takes part (each saves its own RNG state)."""
    main = accelerator.is_main_process
    with atomic_folder(ckpt) if main else contextlib.nullcontext(None) as staging:
        # Only the main process names the staging folder; the others learn it from it.
        folder = Path(broadcast_object_list([str(staging) if main else None])[0])
        accelerator.save_state(str(folder / "state"))
        if main:
            (folder / "progress.json").write_text(json.dumps(log.progress(step, config)))
        accelerator.wait_for_everyone()
    accelerator.wait_for_everyone()


def run_steps(config: TrainConfig, out: Path, trainer: Trainer, data: Stage1Data, log: RunLog, start_step: int,
              accelerator: Accelerator, progress: bool, deadline: float | None = None) -> int:
    """Steps `start_step`..`config.steps`, appending to `log`: evaluate and write logs every
    `eval_every` steps and at the end, checkpoint every `save_every`. Past `deadline`
    (`time.perf_counter()` seconds) the step in hand is the last one, evaluated as the final one.
    Returns the number of steps done."""
    eval_rows = final_rows = None
    if data.eval_cache is not None:
        eval_rows = eval_subset(data.eval_cache.rows, config.eval_rows, config.seed)
        final_rows = eval_subset(data.eval_cache.rows, config.final_eval_rows or data.eval_cache.rows, config.seed)
    main = accelerator.is_main_process
    trainer.module.train()
    bar = tqdm(range(start_step, config.steps), initial=start_step, total=config.steps, desc="train stage 1",
               disable=not (progress and main))
    done = start_step
    for step in bar:
        log.loss.append(train_step(config, trainer, data.train_cache, step, accelerator))
        bar.set_postfix(loss=f"{log.loss[-1]['loss']:.3f}")
        done = step + 1
        final = done == config.steps or out_of_time(deadline, accelerator)
        if done % config.eval_every == 0 or final:
            if main and data.eval_cache is not None:
                table = evaluate_into(log, trainer.heads, data, final_rows if final else eval_rows, done, final, out)
                top1 = table[table.topk == 1].accuracy.tolist()
                bar.write(f"step {done}: top-1 " + " ".join(f"h{k + 1}={a:.3f}" for k, a in enumerate(top1)))
            if main:
                write_logs(out, log)
        if final:
            if done < config.steps:
                bar.write(f"stopped at step {done} of {config.steps}: max_wall_s ({config.max_wall_s:g} s) reached")
            break
        if done % config.save_every == 0:
            save_checkpoint(accelerator, out / CHECKPOINT, done, config, log)
    bar.close()
    if config.steps == 0 and main and data.eval_cache is not None:  # evaluation only: a baseline for the study
        evaluate_into(log, trainer.heads, data, final_rows, 0, True, out)
    return done


def out_of_time(deadline: float | None, accelerator: Accelerator) -> bool:
    """Whether `deadline` has passed on any process (a max over processes, so all stop at the same step)."""
    if deadline is None:
        return False
    flag = torch.tensor([float(time.perf_counter() > deadline)], device=accelerator.device)
    return bool(accelerator.reduce(flag, "max").item()) if accelerator.num_processes > 1 else bool(flag.item())


def stage1_record(config: TrainConfig, trainer: Trainer, data: Stage1Data, log: RunLog, start_step: int,
                  steps_done: int, world: int, timings: dict[str, float]) -> dict[str, Any]:
    """The training record (before its provenance block is added)."""
    cache, held_out = data.train_cache, data.eval_cache
    final_rows = 0
    if held_out is not None:
        final_rows = min(config.final_eval_rows or held_out.rows, held_out.rows)
    return {
        "stage": 1,
        "config": asdict(config),
        "train_data": summary(config.data, data.train, cache),
        "eval_data": summary(config.eval_data, data.eval, held_out) if held_out is not None else None,
        "train_rows": cache.rows,
        "train_vocab_size": int(len(trainer.vocab)) if trainer.vocab is not None else trainer.heads.config.vocab_size,
        "eval_rows": min(config.eval_rows, held_out.rows) if held_out is not None else 0,
        "final_eval_rows": final_rows,
        "steps_done": steps_done,  # below config.steps when max_wall_s stopped the run
        "token_samples_seen": steps_done * config.batch_size,
        "epochs": round(steps_done * config.batch_size / max(cache.rows, 1), 3),
        "top1_accuracy_by_head": top1_by_head(log.accuracy[-1] if log.accuracy else None),
        "final_loss": log.loss[-1]["loss"] if log.loss else None,
        "cache_s": round(data.cache_s, 1),
        "cache": cache.meta,
        "train_s_this_run": round(timings["train_s"], 1),
        "wall_s_this_run": round(timings["wall_s"], 1),
        "resumed_from_step": start_step,
        # which weights a fine-tune started from (its folder may since hold other heads)
        "init_heads_fingerprint": heads_fingerprint(config.init_heads) if config.init_heads else None,
        # --steps 0 evaluates other heads: keep their recipe with the evaluation
        "evaluated_heads_record": read_json(Path(config.init_heads) / "training_record.json", "training record")
        if config.steps == 0 and (Path(config.init_heads) / "training_record.json").is_file() else None,
        "processes": world,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def summary(spec: str, samples: list[Sample], cache: HiddenCache | TeacherCache) -> dict[str, Any]:
    """What the training record says about one data set (distilled or teacher-forced)."""
    return teacher_summary(spec, cache) if isinstance(cache, TeacherCache) else data_summary(spec, samples)


def write_outputs(out: Path, record: dict[str, Any], heads: MedusaHeads, train: list[Sample],
                  device: str, dtype: torch.dtype, cache: HiddenCache | TeacherCache,
                  keys: list[str] | None = None) -> dict[str, Any]:
    """Heads + config.json, the training targets' counts (`medusa.subvocab`), training_record.json
    and prompts.txt; the checkpoint is removed."""
    heads.save(out, extra={"training": {k: record[k] for k in ("stage", "train_data", "top1_accuracy_by_head",
                                                                "token_samples_seen")}})
    write_npy(cache.target_counts(heads.config.vocab_size), out / TARGET_COUNTS)
    record = write_training_record(out, record, device, dtype)
    ids = keys if keys is not None else sorted({s.key for s in train})
    atomic_write(out / "prompts.txt", "# sha256 prompt keys (medusa.data.prompt_hash) of the training prompts\n"
                 + "\n".join(ids) + "\n")
    shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    return record


# ---- the whole run ----------------------------------------------------------------------------
def train_stage1(config: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """Train Medusa-1 heads on cached hidden states; returns the training record ({} with cache_only)."""
    train, held_out = read_data(config)
    out = Path(config.out)
    ensure_writable(out)
    accelerator = Accelerator(cpu=config.device == "cpu")
    device = str(accelerator.device)
    t_start = time.perf_counter()
    backbone = load_backbone(config.backbone, dtype=parse_dtype(config.dtype, device), device=device)
    dtype = backbone.dtype
    data = build_caches(config, backbone, train, held_out, accelerator, progress)
    if config.cache_only:
        accelerator.print(f"cached {data.train_cache.rows} training rows ({data.train_cache.meta['chunks_built']} new "
                          f"chunks) and {data.eval_cache.rows if data.eval_cache else 0} held-out rows in {data.cache_s:.0f} s")
        return {}
    trainer = make_trainer(config, make_heads(config, backbone), data.train_cache, accelerator)
    start_step, log = resume(config, out / CHECKPOINT, accelerator)
    t_train = time.perf_counter()
    deadline = t_start + config.max_wall_s if config.max_wall_s is not None else None
    steps_done = run_steps(config, out, trainer, data, log, start_step, accelerator, progress, deadline)
    timings = {"train_s": time.perf_counter() - t_train}
    record: dict[str, Any] = {}
    if accelerator.is_main_process:
        write_logs(out, log)
        timings["wall_s"] = time.perf_counter() - t_start
        record = stage1_record(config, trainer, data, log, start_step, steps_done, accelerator.num_processes, timings)
        heads = accelerator.unwrap_model(trainer.module).heads
        keys = teacher_keys(config.data) if isinstance(data.train_cache, TeacherCache) else None
        record = write_outputs(out, record, heads, train, device, dtype, data.train_cache, keys)
    accelerator.wait_for_everyone()
    return record
