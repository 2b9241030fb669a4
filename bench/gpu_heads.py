"""Medusa heads from scratch on one lent GPU: self-distil ShareGPT, train, evaluate, bring them back.

On this repository's CPU, self-distillation costs ~2.5 h for 2070 prompts (README). On an
H100/H200 a decoding step of SmolLM2 is bound by kernel launches, so a batch of hundreds of
prompts decodes about as fast as one: the whole ShareGPT training split (~8150 prompts that fit
in 384 tokens) is answered in minutes, and the heads train on four times the data. One run, for
one device call of at most 10 minutes (planned for ~6), writes everything under ``--out``:

1. ``distill_eval``, ``distill_train``: batched greedy generation (bf16, left padding) through
   `medusa.distill.distill` with the loaded model, so the data is in its format and
   `medusa.train --data` reads it unchanged. The held-out eval split first (small), then the
   training split in blocks of ``--distill-block`` prompts (file order; each block sorted by
   length and answered ``--distill-batch-size`` at a time); no new block starts when it would end
   past ``--distill-budget-s``, so a slow machine trains on fewer prompts instead of timing out.
2. ``bundle_data``: the distilled data -> ``OUT/distill.tar.gz`` (``distill/train``,
   ``distill/eval``; a few MB), written before training so it comes back whatever happens next.
3. ``teacher`` (only ``--loss soft|mix``): teacher-forced data (`medusa.teacher`) over the
   self-distilled answers, i.e. the backbone's top-k distribution at every answer position, which
   the soft loss needs (``--teacher-budget-s``, in blocks like the distillation).
4. ``stage1``: Medusa-1 through `medusa.train.stage1.train_stage1` (the trainer's own caches, loop,
   checkpoints off, and its evaluation: top-1..10 per head on every held-out position).
5. ``stage2`` (``--stage2-steps N``, default 0): a short Medusa-2 run from those heads
   (`medusa.train.stage2.train_stage2`); its tuned backbone stays on the machine.
6. ``bundle_heads``: ``OUT/heads.tar.gz`` holds ``NAME/``, the heads folder as the trainer wrote it
   (heads.safetensors, config.json, training_record.json with provenance, accuracy*.csv, loss.csv,
   prompts.txt); ``OUT/medusa2.tar.gz`` holds ``NAME-medusa2/`` (stage 2's records and heads, not
   its tuned backbone). Unpack with ``tar xzf heads.tar.gz -C results/heads``.

``OUT/report.json`` (rewritten after every phase, so a killed run still reports) holds the
provenance (`common.provenance`), the settings, each phase's seconds and counts, top-1/top-5 per
head and the training records. The device returns at most 8 files of 16 MiB each: this writes 3-4
(``bench/gpu_heads.sh`` adds ``log.txt``); an archive over 16 MiB (heads of many blocks) is split
into ``.part0``, ``.part1``, ... (``cat X.part* > X``). On SIGINT (the wrapper's time limit) the
phase in flight is recorded as interrupted and what finished is still bundled.

The ShareGPT package is not installed on the GPU machine, so prompts travel as a pack made here::

    python -m bench.gpu_heads --pack-prompts          # -> .gpu_model/prompts.jsonl.gz (~1.6 MB)

It keeps the first turns of the train and eval splits in file order; the split is a function of
the text, so the GPU run selects exactly what ``python -m medusa.distill --split train`` would.
On the GPU machine, ``bash bench/gpu_heads.sh OUT .gpu_model [flags]`` joins the carried GGUF parts,
dequantises them and places the folder where `medusa.backbone` finds the short name
``smollm2-135m`` (``$MEDUSA_CACHE/models/smollm2-135m``), then runs::

    python -m bench.gpu_heads --out OUT --prompts-pack .gpu_model/prompts.jsonl.gz \\
        --loss hard --steps 4000 --batch-size 1024

``--distilled ARCHIVE`` skips generation: the two distill phases unpack and summarise an earlier
run's ``distill.tar.gz`` (``results/gpu/nvidia-h200/distill_7730.tar.gz`` holds the whole training
split, 1.6M tokens, and travels with the tracked tree), so a call's minutes all go to training.

``--smoke`` runs every phase at toy sizes with a tiny random model on the CPU in seconds
(`tests/test_gpu_heads.py`); ``--smoke --backbone smollm2-135m`` does the same with the real model.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import sys
import tarfile
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from common.cli import Parser, add_dtype, add_threads, apply_threads, run_cli
from common.errors import WorkbenchError
from common.io import atomic_write, ensure_writable, read_json, write_json
from common.paths import REPO_ROOT
from common.provenance import Provenance
from medusa.backbone import DEFAULT_BACKBONE, Backbone, load_backbone, parse_dtype
from medusa.data import LoadReport, Prompt, SplitConfig, load_jsonl_prompts, load_prompts, split_of
from medusa.distill import DistillConfig, Sample, distill, read_samples
from medusa.teacher import TeacherConfig, build_teacher_data
from medusa.testing import save_tiny_model, tiny_config
from medusa.train.config import LOSSES, Stage2Config, TrainConfig
from medusa.train.stage1 import train_stage1
from medusa.train.stage2 import train_stage2

DEFAULT_PACK = REPO_ROOT / ".gpu_model" / "prompts.jsonl.gz"
PACK_FORMAT = 1
PACK_SPLITS = ("train", "eval")
RETURN_FILE_LIMIT = 16 * 2**20  # the device tool returns files of at most 16 MiB
STAGE2_LEFT_BEHIND = ("adapter", "merged", "backbone")  # the tuned model: hundreds of MB
STAGE1_RESERVE_S = 20.0  # stage 1's final evaluation, saving and bundling (seconds on an H200, 10 MB of heads)
# Toy sizes of --smoke (flags given on the command line still win).
SMOKE = dict(limit=12, eval_limit=4, max_new_tokens=12, distill_batch_size=4, distill_block=8, teacher_block=8,
             steps=6, batch_size=32, eval_every=3, stage2_batch_size=2)
# Flags that set TrainConfig fields of the same name (--layers sets num_layers).
TRAIN_FIELDS = ("loss", "soft_weight", "steps", "batch_size", "lr", "num_heads", "num_layers", "proj_dtype",
                "eval_every", "seed")


@dataclass(frozen=True)
class RecipeConfig:
    """The recipe's own settings (the training settings are `TrainConfig`'s and `Stage2Config`'s)."""

    limit: int | None = None  # training prompts; None: all the split allows
    eval_limit: int | None = None  # held-out prompts; None: the whole eval split
    max_new_tokens: int = DistillConfig.max_new_tokens
    distill_batch_size: int = 1024
    distill_block: int = 2048
    distill_budget_s: float = 240.0
    teacher_block: int = 1024
    teacher_budget_s: float = 90.0
    stage2_steps: int = 0
    stage2_batch_size: int = Stage2Config.batch_size
    keep_data: bool = True
    # The whole run's seconds (bench/gpu_heads.sh passes its time limit): stage 1 stops taking steps
    # STAGE1_RESERVE_S before it, so its heads are evaluated, saved and bundled before the SIGINT.
    time_limit_s: float | None = None
    # A distill.tar.gz of an earlier run (its distill/train and distill/eval): train on it, generate nothing.
    distilled: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "distill_batch_size", "distill_block", "teacher_block", "stage2_batch_size"):
            if getattr(self, name) < 1:
                raise WorkbenchError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("limit", "eval_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise WorkbenchError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if min(self.distill_budget_s, self.teacher_budget_s) <= 0:
            raise WorkbenchError("--distill-budget-s and --teacher-budget-s must be > 0")
        if self.stage2_steps < 0:
            raise WorkbenchError(f"--stage2-steps must be >= 0, got {self.stage2_steps}")
        if self.time_limit_s is not None and self.time_limit_s <= 0:
            raise WorkbenchError(f"--time-limit-s must be > 0, got {self.time_limit_s}")


# ---- the prompt pack ----------------------------------------------------------------------------
def write_pack(prompts: Sequence[Prompt], path: str | Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write `prompts` (first turns) as a gzip JSONL pack: a header line, then one {id, prompt} per line."""
    # ASCII escapes: `medusa.data` splits JSONL with str.splitlines, which also breaks at U+2028 etc.
    body = "".join(json.dumps({"id": p.id, "prompt": p.text}) + "\n" for p in prompts)
    header = {**meta, "format": PACK_FORMAT, "prompts": len(prompts),
              "splits": dict(Counter(split_of(p.text) for p in prompts)),
              "sha256": hashlib.sha256(body.encode("utf-8")).hexdigest()}
    # mtime=0: the same prompts give the same bytes
    data = gzip.compress((json.dumps({"pack": header}) + "\n" + body).encode("utf-8"), compresslevel=9, mtime=0)
    atomic_write(path, data)
    return header


def pack_prompts(source: str, path: str | Path) -> dict[str, Any]:
    """Pack the train and eval split prompts of `source` (a prompt set or JSONL) in source order."""
    report = LoadReport()
    prompts = [p for p in load_prompts(source, report=report) if split_of(p.text) in PACK_SPLITS]
    if not prompts:
        raise WorkbenchError(f"{source} has no prompts in the {' or '.join(PACK_SPLITS)} split")
    return write_pack(prompts, path, {"source": source, "load_report": report.to_dict(), "split": SplitConfig().to_dict()})


def read_pack(path: str | Path) -> tuple[dict[str, Any], str]:
    """(header, JSONL body) of a pack, checked against the header's hash."""
    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(f"prompt pack {path} not found: make it with `python -m bench.gpu_heads --pack-prompts {path}` "
                             "and carry it into the device call")
    try:
        head, _, body = gzip.decompress(path.read_bytes()).decode("utf-8").partition("\n")
        meta = json.loads(head)["pack"]
        fmt = meta["format"]
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise WorkbenchError(f"{path} is not a prompt pack (bench.gpu_heads --pack-prompts writes one)") from None
    if fmt != PACK_FORMAT:
        raise WorkbenchError(f"{path} is a prompt pack of format {fmt}, this code reads format {PACK_FORMAT}")
    if hashlib.sha256(body.encode("utf-8")).hexdigest() != meta.get("sha256"):
        raise WorkbenchError(f"{path} does not match its own hash (cut off in transfer?); pack it again")
    if meta.get("split") != SplitConfig().to_dict():
        raise WorkbenchError(f"{path} was packed under another split ({meta.get('split')}); pack it again")
    return meta, body


def unpack_prompts(pack: str | Path, folder: Path) -> tuple[dict[str, Any], Path]:
    """Write a pack's prompts as a JSONL file `medusa.data` reads; returns (header, file).

    The file is named after the packed source (``sharegpt.jsonl``), so distilled records keep the
    source name they would have had.
    """
    meta, body = read_pack(pack)
    return meta, atomic_write(folder / f"{Path(str(meta.get('source', 'prompts'))).stem}.jsonl", body)


def word_prompts(n_train: int, n_eval: int, vocab_size: int, seed: int = 0) -> list[Prompt]:
    """Made-up prompts of the tiny tokenizer's words (`w1 w7 ...`), `n_train` in the train split
    and `n_eval` in the eval split (--smoke without a pack)."""
    rng = np.random.default_rng(seed)
    want = {"train": n_train, "eval": n_eval}
    out: list[Prompt] = []
    while any(want.values()):
        text = " ".join(f"w{i}" for i in rng.integers(1, vocab_size - 1, size=int(rng.integers(3, 10))))
        split = split_of(text)
        if want.get(split, 0) > 0:
            want[split] -= 1
            out.append(Prompt(f"smoke-{len(out)}", ({"role": "user", "content": text},), "smoke"))
    return out


# ---- phases -------------------------------------------------------------------------------------
def backbone_spec(backbone: str | None, smoke: bool, work: Path) -> str:
    """What every phase loads (`--backbone`, a short name or folder): as given, else the shipped
    model, or for --smoke a tiny random model written into `work`."""
    if backbone:
        return backbone
    return str(save_tiny_model(work / "models" / "tiny-llama")) if smoke else DEFAULT_BACKBONE


def distill_blocks(backbone: Backbone, config: DistillConfig, out: Path, block: int, budget_s: float,
                   log: Callable[[str], None]) -> dict[str, Any]:
    """Distil `config.limit` prompts (None: all) in blocks of `block`, stopping before a block that
    would end past `budget_s`; each call resumes the folder (`medusa.distill`)."""
    t0 = time.perf_counter()
    limit, complete = 0, False
    while True:
        limit = limit + block if config.limit is None else min(limit + block, config.limit)
        b0 = time.perf_counter()
        record = distill(replace(config, limit=limit), out, progress=False, backbone=backbone)
        last, elapsed = time.perf_counter() - b0, time.perf_counter() - t0
        log(f"distill {config.split}: {record['samples']} prompts, {record['new_tokens']} new tokens, {elapsed:.0f} s")
        if record["prompts_selected"] < limit or limit == config.limit:
            complete = True
            break
        if elapsed + last > budget_s:
            break
    return {"samples": record["samples"], "new_tokens": record["new_tokens"], "stops": record.get("stops", {}),
            "complete": complete, "budget_s": budget_s, "wall_s": round(time.perf_counter() - t0, 1),
            "new_tokens_per_s": round(record["new_tokens"] / max(time.perf_counter() - t0, 1e-9), 1),
            "skipped": record["load_report"]["skipped"], "settings": record["settings"]}


def unpack_distilled(archive: Path, work: Path) -> dict[str, Any]:
    """An earlier run's ``distill.tar.gz`` into ``work/distill/{train,eval}``."""
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    missing = [s for s in ("train", "eval") if not (work / "distill" / s / "run.json").is_file()]
    if missing:
        raise WorkbenchError(f"{archive} holds no distill/{'/, distill/'.join(missing)}/ folder (a bench.gpu_heads distill.tar.gz has both)")
    return {"archive": str(archive), "sha256": hashlib.sha256(archive.read_bytes()).hexdigest()}


def archived_summary(folder: Path) -> dict[str, Any]:
    """What `distill_blocks` reports, for unpacked data: samples, generated tokens, its settings."""
    samples = read_samples(folder)
    record = read_json(folder / "run.json", "distillation record")
    return {"samples": len(samples), "new_tokens": sum(s.generated for s in samples), "complete": True,
            "from_archive": True, "settings": record.get("settings", {})}


def teacher_source(samples: Sequence[Sample], prompts: dict[str, Prompt], backbone: Backbone, path: Path) -> Path:
    """A JSONL of conversations (prompt, self-distilled answer) for `medusa.teacher` to run over."""
    eos = set(backbone.eos_token_ids)
    lines = []
    for s in samples:
        start, end = s.spans[0]
        answer = list(s.ids[start:end])
        while answer and answer[-1] in eos:
            answer.pop()
        prompt = prompts[s.key]
        # ASCII escapes: `medusa.data` splits JSONL with str.splitlines, which also breaks at U+2028 etc.
        lines.append(json.dumps({"id": prompt.id, "messages": [
            {"role": "user", "content": prompt.text}, {"role": "assistant", "content": backbone.decode(answer)}]}))
    return atomic_write(path, "\n".join(lines) + "\n")


def teacher_blocks(backbone: Backbone, config: TeacherConfig, out: Path, block: int, budget_s: float,
                   log: Callable[[str], None]) -> dict[str, Any]:
    """Teacher-forced data of every record in `config.source`, in blocks of `block` within `budget_s`."""
    t0 = time.perf_counter()
    limit, complete = 0, False
    while True:
        limit += block
        b0 = time.perf_counter()
        run = build_teacher_data(replace(config, limit=limit), out, progress=False, backbone=backbone)
        last, elapsed = time.perf_counter() - b0, time.perf_counter() - t0
        log(f"teacher: {run.get('records', 0)} records, {run.get('positions', 0)} positions, {elapsed:.0f} s")
        if run["records_selected"] < limit:
            complete = True
            break
        if elapsed + last > budget_s:
            break
    return {"records": run.get("records", 0), "positions": run.get("positions", 0), "complete": complete,
            "budget_s": budget_s, "wall_s": round(time.perf_counter() - t0, 1), "settings": run["settings"]}


def accuracy_by_head(path: Path) -> dict[str, Any]:
    """Top-1 and top-5 accuracy per head (and the positions scored) from a trainer's accuracy CSV."""
    acc = pd.read_csv(path)
    pick = {k: acc[acc.topk == k].set_index("head") for k in (1, 5)}
    return {"top1_by_head": {int(h): round(float(a), 4) for h, a in pick[1].accuracy.items()},
            "top5_by_head": {int(h): round(float(a), 4) for h, a in pick[5].accuracy.items()},
            "positions_by_head": {int(h): int(n) for h, n in pick[1]["count"].items()}}


def write_tar(path: Path, members: Sequence[tuple[Path, str]], skip: Sequence[str] = ()) -> dict[str, int]:
    """A .tar.gz of folders (path, name inside the archive) without the archive paths in `skip`
    (and what is under them) or unfinished temporary files, fitted to the device's return limit
    (`split_for_return`); returns {file name: bytes} of what was written."""

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        base = info.name.rsplit("/", 1)[-1]
        left_out = any(info.name == d or info.name.startswith(d + "/") for d in skip)
        return None if left_out or (base.startswith(".") and base.endswith((".tmp", ".old"))) else info

    def write(tmp: Path) -> None:
        with tarfile.open(tmp, "w:gz") as tar:
            for folder, name in members:
                tar.add(folder, arcname=name, filter=keep)

    atomic_write(path, write)
    return {p.name: p.stat().st_size for p in split_for_return(path)}


def split_for_return(path: Path, limit: int = RETURN_FILE_LIMIT) -> list[Path]:
    """`path` itself when it is at most `limit` bytes, else `path.part0`, `.part1`, ... of at most
    `limit` bytes each (the original removed); `cat path.part* > path` joins them again."""
    size = path.stat().st_size
    if size <= limit:
        return [path]
    parts = []
    with open(path, "rb") as f:
        for i in range((size + limit - 1) // limit):
            parts.append(atomic_write(path.with_name(f"{path.name}.part{i}"), f.read(limit)))
    path.unlink()
    return parts


# ---- the run ------------------------------------------------------------------------------------
class Phases:
    """Runs named phases, records each one's result or error and seconds in the report, and
    rewrites OUT/report.json after each, so whatever ran is reported even if the process is killed."""

    def __init__(self, out: Path, report: dict[str, Any]) -> None:
        self.out, self.report = out, report
        self.interrupted = False
        report.setdefault("phases", {})

    def ok(self, name: str) -> bool:
        return "result" in self.report["phases"].get(name, {})

    def run(self, name: str, fn: Callable[[], Any], needs: Sequence[str] = (), always: bool = False) -> Any:
        missing = [n for n in needs if not self.ok(n)]
        if (self.interrupted and not always) or missing:
            why = "interrupted before it" if self.interrupted else f"needs {', '.join(missing)}"
            self.report["phases"][name] = {"skipped": why}
            self.save(name)
            return None
        t = time.perf_counter()
        result = None
        try:
            result = fn()
            entry: dict[str, Any] = {"result": result}
        except KeyboardInterrupt:  # bench/gpu_heads.sh's time limit: report, then bundle what exists
            self.interrupted = True
            entry = {"error": "interrupted (time limit)"}
        except Exception as e:  # a failing phase is recorded; phases that do not need it still run
            entry = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=4)}
        entry["seconds"] = round(time.perf_counter() - t, 1)
        self.report["phases"][name] = entry
        self.save(name)
        return result

    def save(self, name: str) -> None:
        write_json(self.report, self.out / "report.json", indent=1)
        print(f"[{name}] {json.dumps(self.report['phases'][name], default=str)[:600]}", flush=True)

    def failed(self) -> list[str]:
        return [k for k, v in self.report["phases"].items() if "error" in v]


@dataclass(frozen=True)
class Run:
    """One run's settings and where its phases read and write."""

    recipe: RecipeConfig
    train: TrainConfig
    out: Path
    work: Path
    model: str  # what each phase loads (`--backbone`)
    device: str
    dtype: str
    prompts_file: Path
    name: str  # of the heads folder
    started: float  # time.perf_counter() at the run's start (for --time-limit-s)

    def seconds_left(self) -> float | None:
        """Seconds until --time-limit-s, or None without one."""
        if self.recipe.time_limit_s is None:
            return None
        return self.recipe.time_limit_s - (time.perf_counter() - self.started)

    @property
    def data(self) -> Path:
        return self.work / "distill" / "train"

    @property
    def eval_data(self) -> Path:
        return self.work / "distill" / "eval"

    @property
    def heads_dir(self) -> Path:
        return self.work / "heads" / self.name

    @property
    def stage2_dir(self) -> Path:
        return self.work / "heads" / f"{self.name}-medusa2"


def say(line: str) -> None:
    print(line, flush=True)


def data_phases(run: Run, phases: Phases, backbone: Backbone) -> Path:
    """distill_eval, distill_train, bundle_data and (soft/mix loss) teacher with one loaded model;
    returns the folder stage 1 trains on."""
    recipe = run.recipe
    base = DistillConfig(backbone=run.model, dtype=run.dtype, source=str(run.prompts_file),
                         max_new_tokens=recipe.max_new_tokens, batch_size=recipe.distill_batch_size)
    if recipe.distilled:  # an earlier run's data: unpacked, summarised, not generated again
        phases.run("unpack_data", lambda: unpack_distilled(Path(recipe.distilled), run.work))
        phases.run("distill_eval", lambda: archived_summary(run.eval_data), needs=("unpack_data",))
        phases.run("distill_train", lambda: archived_summary(run.data), needs=("unpack_data",))
    else:
        phases.run("distill_eval", lambda: distill_blocks(
            backbone, replace(base, split="eval", limit=recipe.eval_limit), run.eval_data, recipe.distill_block,
            recipe.distill_budget_s, say))
        phases.run("distill_train", lambda: distill_blocks(
            backbone, replace(base, split="train", limit=recipe.limit), run.data, recipe.distill_block,
            recipe.distill_budget_s, say))
        if recipe.keep_data:  # what was distilled comes back even when the training split was cut short
            phases.run("bundle_data", lambda: write_tar(run.out / "distill.tar.gz", [
                (folder, f"distill/{folder.name}") for folder in (run.data, run.eval_data) if folder.is_dir()]),
                needs=("distill_eval",), always=True)
    if run.train.loss == "hard":
        return run.data
    teacher_dir = run.work / "teacher"

    def teacher() -> dict[str, Any]:
        by_key = {p.key: p for p in load_jsonl_prompts(run.prompts_file)}
        source = teacher_source(read_samples(run.data), by_key, backbone, run.work / "teacher-conversations.jsonl")
        config = TeacherConfig(backbone=run.model, dtype=run.dtype, source=str(source), split="train")
        return teacher_blocks(backbone, config, teacher_dir, recipe.teacher_block, recipe.teacher_budget_s, say)

    phases.run("teacher", teacher, needs=("distill_train",))
    return teacher_dir


def training_phases(run: Run, phases: Phases, train_data: Path) -> None:
    """stage1, stage2 (when asked for) and bundle_heads; each stage loads its own backbone."""
    stage1_config = replace(run.train, data=str(train_data), eval_data=str(run.eval_data), out=str(run.heads_dir),
                            backbone=run.model, dtype=run.dtype, device=run.device,
                            cache_root=str(run.work / "cache"),
                            save_every=run.train.steps)  # no mid-run checkpoints: the machine does not outlive the call

    def stage1() -> dict[str, Any]:
        left = run.seconds_left()
        config = stage1_config if left is None else replace(stage1_config, max_wall_s=max(left - STAGE1_RESERVE_S, 1.0))
        record = train_stage1(config, progress=False)
        return {**accuracy_by_head(run.heads_dir / "accuracy.csv"), "train_rows": record["train_rows"],
                "epochs": record["epochs"], "final_loss": record["final_loss"], "cache_s": record["cache_s"],
                "train_s": record["train_s_this_run"], "steps_done": record["steps_done"], "record": record}

    phases.run("stage1", stage1, needs=("distill_eval", "distill_train" if train_data == run.data else "teacher"))
    if run.recipe.stage2_steps > 0:
        stage2_config = Stage2Config(
            data=str(run.data), eval_data=str(run.eval_data), out=str(run.stage2_dir), backbone=run.model,
            dtype=run.dtype, device=run.device, init_heads=str(run.heads_dir), num_heads=run.train.num_heads,
            num_layers=run.train.num_layers, steps=run.recipe.stage2_steps, batch_size=run.recipe.stage2_batch_size,
            seed=run.train.seed)

        def stage2() -> dict[str, Any]:
            record = train_stage2(stage2_config, progress=False)
            return {**accuracy_by_head(run.stage2_dir / "accuracy.csv"),
                    "before": accuracy_by_head(run.stage2_dir / "accuracy_before.csv"), "record": record}

        phases.run("stage2", stage2, needs=("stage1",))

    def bundle_heads() -> dict[str, Any]:
        files = write_tar(run.out / "heads.tar.gz", [(run.heads_dir, run.name)])
        if run.stage2_dir.is_dir():  # a separate archive, so each stays small enough to come back
            files.update(write_tar(run.out / "medusa2.tar.gz", [(run.stage2_dir, f"{run.name}-medusa2")],
                                   skip=[f"{run.name}-medusa2/{d}" for d in STAGE2_LEFT_BEHIND]))
        return files

    phases.run("bundle_heads", bundle_heads, needs=("stage1",), always=True)


def run_recipe(args: Any, recipe: RecipeConfig, train: TrainConfig, out: Path, work: Path) -> dict[str, Any]:
    """All phases; returns the report (also in OUT/report.json)."""
    t_start = time.perf_counter()
    dtype = parse_dtype(args.dtype, args.device)
    model = backbone_spec(args.backbone, args.smoke, work)
    if args.smoke and not args.prompts_pack:
        pack = work / "smoke-prompts.jsonl.gz"
        write_pack(word_prompts(recipe.limit or SMOKE["limit"], recipe.eval_limit or SMOKE["eval_limit"],
                                tiny_config().vocab_size), pack,
                   {"source": "smoke", "load_report": {}, "split": SplitConfig().to_dict()})
    else:
        pack = Path(args.prompts_pack or DEFAULT_PACK)
    pack_meta, prompts_file = unpack_prompts(pack, work)  # a bad pack fails before the model loads
    backbone = load_backbone(model, dtype=dtype, device=args.device)
    run = Run(recipe, train, out, work, model, args.device, str(dtype).removeprefix("torch."), prompts_file,
              args.name or f"{backbone.name}-gpu-{train.loss}", t_start)
    report: dict[str, Any] = {
        "what": "bench.gpu_heads: self-distilled prompts -> Medusa heads on one device",
        "provenance": Provenance.collect(args.device, dtype).as_dict(), "smoke": args.smoke, "argv": list(args.argv),
        "backbone": backbone.identity.to_dict(), "heads_name": run.name, "prompt_pack": pack_meta,
        "recipe": asdict(recipe), "train": asdict(train), "phases": {},
    }
    phases = Phases(out, report)
    train_data = data_phases(run, phases, backbone)
    del backbone  # free the device for the training stages, which load their own
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    training_phases(run, phases, train_data)
    # report.json (rewritten below) and the wrapper's log.txt (still being written) are tens of kB
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir())
             if p.is_file() and p.name not in ("report.json", "log.txt")}
    report["outputs"] = {"bytes": sizes, "over_return_limit": [n for n, b in sizes.items() if b > RETURN_FILE_LIMIT],
                         "files_with_report_and_log": len(sizes) + 2}
    report["failed_phases"] = phases.failed()
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    write_json(report, out / "report.json", indent=1)
    return report


def build_parser(smoke: bool) -> Parser:
    d, r = TrainConfig(), RecipeConfig()
    p = Parser(prog="python -m bench.gpu_heads", description=__doc__.split("\n")[0])
    p.add_argument("--pack-prompts", nargs="?", const=str(DEFAULT_PACK), default=None, metavar="FILE",
                   help=f"write the prompt pack and stop (default file {DEFAULT_PACK.relative_to(REPO_ROOT)})")
    p.add_argument("--prompts", default="sharegpt", help="with --pack-prompts: the prompt set to pack (or a .jsonl)")
    p.add_argument("--out", help="output folder (on the device: $OUT)")
    p.add_argument("--prompts-pack", default=None, help=f"the pack to read (default {DEFAULT_PACK.relative_to(REPO_ROOT)})")
    p.add_argument("--backbone", default=None,
                   help=f"short name or transformers folder (default {DEFAULT_BACKBONE}; --smoke: a tiny random model)")
    p.add_argument("--name", default=None, help="heads folder name (default <backbone>-gpu-<loss>)")
    p.add_argument("--work", default=None, help="working folder for data and caches (default: a temporary one, removed)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_dtype(p)
    p.add_argument("--smoke", action="store_true", help="toy sizes, tiny model: every phase on a CPU in seconds")
    g = p.add_argument_group("data")
    g.add_argument("--limit", type=int, default=r.limit, help="training prompts (default: all the split allows)")
    g.add_argument("--eval-limit", type=int, default=r.eval_limit, help="held-out prompts (default: the whole eval split)")
    g.add_argument("--max-new-tokens", type=int, default=r.max_new_tokens)
    g.add_argument("--distill-batch-size", type=int, default=r.distill_batch_size, help="prompts generated together")
    g.add_argument("--distill-block", type=int, default=r.distill_block, help="prompts per resumable block")
    g.add_argument("--distill-budget-s", type=float, default=r.distill_budget_s,
                   help="no distillation block starts that would end later than this")
    g.add_argument("--teacher-block", type=int, default=r.teacher_block)
    g.add_argument("--teacher-budget-s", type=float, default=r.teacher_budget_s, help="the same for --loss soft|mix")
    g.add_argument("--time-limit-s", type=float, default=r.time_limit_s,
                   help=f"the run's seconds: stage 1 stops {STAGE1_RESERVE_S:g} s before, then evaluates and bundles its heads")
    g.add_argument("--distilled", default=r.distilled, metavar="ARCHIVE",
                   help="train on an earlier run's distill.tar.gz (e.g. results/gpu/nvidia-h200/distill_7730.tar.gz) instead of generating")
    g.add_argument("--no-data", dest="keep_data", action="store_false", help="do not bring the distilled data back")
    g = p.add_argument_group("training (medusa.train's flags and defaults)")
    g.add_argument("--loss", default=d.loss, choices=LOSSES)
    g.add_argument("--soft-weight", type=float, default=d.soft_weight)
    g.add_argument("--steps", type=int, default=d.steps)
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="positions per step")
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--num-heads", type=int, default=d.num_heads)
    g.add_argument("--layers", type=int, default=d.num_layers, dest="num_layers", help="residual blocks per head")
    g.add_argument("--proj-dtype", default=d.proj_dtype)
    g.add_argument("--eval-every", type=int, default=d.eval_every)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--stage2-steps", type=int, default=r.stage2_steps, help="Medusa-2 steps after stage 1 (0: none)")
    g.add_argument("--stage2-batch-size", type=int, default=r.stage2_batch_size)
    add_threads(p)
    if smoke:
        p.set_defaults(**SMOKE)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser("--smoke" in argv).parse_args(argv)
    args.argv = argv
    apply_threads(args.threads)
    if args.pack_prompts:
        meta = pack_prompts(args.prompts, args.pack_prompts)
        size = Path(args.pack_prompts).stat().st_size
        print(f"{args.pack_prompts}: {meta['prompts']} prompts {meta['splits']} from {meta['source']}, {size / 1e6:.2f} MB")
        return 0
    if not args.out:
        raise WorkbenchError("--out is required (or --pack-prompts to make the prompt pack)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise WorkbenchError(f"--device {args.device}: CUDA is not available here")
    recipe = RecipeConfig(**{k: getattr(args, k) for k in asdict(RecipeConfig())})
    if recipe.distilled and not Path(recipe.distilled).is_file():
        raise WorkbenchError(f"--distilled {recipe.distilled}: no such archive")
    train = TrainConfig(**{k: getattr(args, k) for k in TRAIN_FIELDS})
    out = ensure_writable(args.out, "the report")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu-heads-"))
    try:
        report = run_recipe(args, recipe, train, out, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out}: {report['outputs']['bytes']}; failed phases: {report['failed_phases'] or 'none'}")
    if report["outputs"]["over_return_limit"]:
        print(f"warning: over the device's 16 MiB per file: {report['outputs']['over_return_limit']}")
    return 1 if report["failed_phases"] else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
