"""Self-distillation: the backbone answers seed prompts itself, saved as JSONL shards of token ids.

Medusa heads should predict what *this* backbone will say, so their training text is the
backbone's own answers (the paper's self-distillation recipe): greedy by default, or sampled with
``--temperature`` (seeded). Prompts come from `medusa.data` (a named source and split, or a JSONL
file), are tokenised through the chat template, sorted by length and answered in batches with left
padding (`model.generate`). On a GPU (``--device cuda``) raise ``--batch-size`` to hundreds: a
decoding step of a small model there is bound by kernel launches, so a batch of 512 prompts costs
about what one does (`bench/gpu_heads.py` distils the whole ShareGPT training split that way).
Library callers that already hold the model pass it (`distill(..., backbone=bb)`).

Output folder::

    run.json            model identity, prompt source/split/limit, settings, skip counts, times
    shard-00000.jsonl   one line per prompt: key (prompt hash), id, ids (prompt + answer),
                        spans ([[start, end)] of generated tokens in ids), stop ("eos"|"length")

Several processes can answer disjoint blocks of the same split into separate folders
(``--offset 1200 --limit 1200``); `medusa.train --data a,b` reads them together.

Each shard is one batch, written atomically, so an interrupted run loses at most the batch in
flight; running the same command again skips every prompt already answered (by prompt hash) and
goes on. Raising ``--limit`` on a finished run adds more prompts. Settings that change the answers
(model, dtype, max new tokens, temperature, seed) must match the existing run.json.

Usage::

    python -m medusa.distill --out data/distill/smollm2-train --split train --limit 2000
    python -m medusa.distill --out data/distill/smollm2-eval --split eval --limit 200
    python -m medusa.distill --out data/distill/x --prompts prompts.jsonl --temperature 0.7
    python -m medusa.distill --out data/distill/gpu-train --split train --device cuda --dtype bfloat16 --batch-size 512

Flags follow the workbench's one meaning per flag: ``--prompts`` is the prompt set (``sharegpt``,
``mtbench``, ``gsm8k`` or a .jsonl file), ``--limit`` the number of prompts, ``--dtype`` the
backbone's dtype, ``--threads`` torch's CPU threads (set by `main` only).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from common.cli import Parser, add_dtype, add_threads, apply_threads, comma_list, run_cli
from common.errors import WorkbenchError
from common.io import atomic_write, ensure_writable
from common.provenance import Provenance
from medusa.backbone import DEFAULT_BACKBONE, Backbone, load_backbone, parse_dtype
from medusa.data import LoadReport, Prompt, check_split, load_prompts, split_of

RUN_FILE = "run.json"
SHARD_GLOB = "shard-*.jsonl"


@dataclass(frozen=True)
class DistillConfig:
    """What determines the answers (checked on resume) and how prompts are chosen."""

    backbone: str = DEFAULT_BACKBONE
    dtype: str = "float32"
    source: str = "sharegpt"
    split: str = "train"
    limit: int | None = None
    offset: int = 0
    max_prompt_tokens: int = 384
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 32

    # Fields that may differ between a run and its resumption.
    RESUMABLE = ("limit", "offset", "batch_size")

    def answer_settings(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in self.RESUMABLE}


# ---- reading distilled data ------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One distilled sequence: token ids and the [start, end) spans the backbone generated."""

    key: str
    ids: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]
    shard: str = field(default="", compare=False)  # the file it was read from

    @property
    def generated(self) -> int:
        return sum(e - s for s, e in self.spans)


def iter_shards(directory: str | os.PathLike) -> Iterator[Path]:
    return iter(sorted(Path(directory).glob(SHARD_GLOB)))


def data_parts(spec: str | os.PathLike) -> list[str]:
    """The distilled folders (or .jsonl files) named by a `--data` value: several are joined by commas."""
    return comma_list(str(spec), flag="--data")


def read_samples(directory: str | os.PathLike, limit: int | None = None) -> list[Sample]:
    """All samples of a distilled folder (or a .jsonl file; several joined by commas), in shard order."""
    parts = data_parts(directory)
    if not parts:
        raise WorkbenchError("no distilled data given (--data names one or more folders, comma-separated)")
    if len(parts) > 1:
        joined: list[Sample] = []
        seen: set[str] = set()
        for part in parts:
            for s in read_samples(part):  # a prompt answered in two folders counts once
                if s.key not in seen:
                    seen.add(s.key)
                    joined.append(s)
        return joined[:limit] if limit is not None else joined
    path = Path(parts[0])
    if not path.exists():
        raise WorkbenchError(f"distilled data not found: {path}")
    files = [path] if path.is_file() else list(iter_shards(path))
    if not files:
        raise WorkbenchError(f"{path} holds no distilled shards ({SHARD_GLOB}); run `python -m medusa.distill` first")
    out: list[Sample] = []
    for f in files:
        for lineno, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                ids = tuple(int(i) for i in rec["ids"])
                spans = tuple((int(s), int(e)) for s, e in rec["spans"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise WorkbenchError(f"{f}:{lineno} is not a distilled record (needs ids and spans)") from None
            if any(not 0 <= s <= e <= len(ids) for s, e in spans):
                raise WorkbenchError(f"{f}:{lineno} has spans outside its {len(ids)} ids")
            out.append(Sample(str(rec.get("key", f"{f.name}:{lineno}")), ids, spans, str(f)))
            if limit is not None and len(out) >= limit:
                return out
    if not out:
        raise WorkbenchError(f"{path} holds no distilled records")
    return out


def read_run(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / RUN_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise WorkbenchError(f"{path} is malformed; delete the folder to start over") from None


# ---- generation ------------------------------------------------------------------------------
@contextlib.contextmanager
def seeded(seed: int, device: str | torch.device = "cpu") -> Iterator[None]:
    """Run the block with torch's random generator (CPU, and `device` if CUDA) seeded to `seed`,
    then restore the state it had before.

    For library calls that draw from torch's global generator and take no `torch.Generator` of
    their own (transformers' `generate` when sampling, peft's LoRA initialisation): the block is
    reproducible and the caller's random stream is left as it was, so no process-wide state changes.
    """
    device = torch.device(device)
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for d in cuda:
            with torch.cuda.device(d):
                torch.cuda.manual_seed(seed)
        yield


@torch.inference_mode()
def answer_batch(
    backbone: Backbone, prompts: Sequence[Sequence[int]], config: DistillConfig, generator_seed: int
) -> list[tuple[list[int], str]]:
    """Answers (new token ids, EOS included when hit) and stop reasons for a batch of prompts."""
    eos = set(backbone.eos_token_ids)
    pad = backbone.pad_id
    ids, mask = backbone.left_pad(prompts)
    kwargs: dict[str, Any] = {"do_sample": False}
    randomness = contextlib.nullcontext()
    if config.temperature > 0:
        # generate() samples from torch's global generator (it takes no Generator): seed it for
        # this batch only, so a resumed run answers each shard as the first run would have.
        randomness = seeded(generator_seed, backbone.device)
        kwargs = {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p, "top_k": 0}
    with randomness:
        out = backbone.model.generate(
            ids, attention_mask=mask, max_new_tokens=config.max_new_tokens, pad_token_id=pad,
            eos_token_id=sorted(eos) or None, **kwargs,
        )
    answers = []
    for row in out[:, ids.shape[1]:].tolist():
        stop = "length"
        for i, tok in enumerate(row):
            if tok in eos:
                row, stop = row[: i + 1], "eos"
                break
        answers.append((row, stop))
    return answers


def select_prompts(
    backbone: Backbone, config: DistillConfig, report: LoadReport
) -> list[tuple[Prompt, list[int]]]:
    """The run's prompts with their chat token ids (over-long ones skipped and counted)."""
    if config.split != "all":
        check_split(config.split)
    chosen: list[tuple[Prompt, list[int]]] = []
    skipped = 0
    for p in load_prompts(config.source, report=report):
        if config.split != "all" and split_of(p.text) != config.split:
            continue
        ids = backbone.chat_ids(p.text)
        if len(ids) > config.max_prompt_tokens:
            report.skipped["prompt over max_prompt_tokens"] += 1
            continue
        if skipped < config.offset:
            skipped += 1
            continue
        chosen.append((p, ids))
        if config.limit is not None and len(chosen) >= config.limit:
            break
    if not chosen:
        raise WorkbenchError(f"no prompts selected from {config.source} (split {config.split}): {report.summary()}")
    return chosen


@torch.no_grad()
def check_same_settings(out: Path, previous: dict[str, Any], settings: dict[str, Any], kind: str = "run") -> None:
    """A resumed output folder must have been written with the same output-changing `settings`."""
    if previous and previous.get("settings") != settings:
        theirs = previous.get("settings", {})
        diff = ", ".join(f"{k}: {theirs.get(k)!r} -> {settings[k]!r}" for k in settings if theirs.get(k) != settings[k])
        raise WorkbenchError(f"{out} holds a {kind} with other settings ({diff}); use another --out")


def distill(config: DistillConfig, out_dir: str | os.PathLike, progress: bool = True, device: str = "cpu",
            backbone: Backbone | None = None) -> dict[str, Any]:
    """Answer the selected prompts into `out_dir`, resuming a previous run; returns the run record.

    The backbone named by `config` is loaded on `device`, unless the caller passes it loaded
    (`backbone`, e.g. one model answering several splits); its dtype must be `config.dtype`, which
    the run records.
    """
    out = Path(out_dir)
    ensure_writable(out)
    previous = read_run(out)
    check_same_settings(out, previous, config.answer_settings())
    if backbone is None:
        backbone = load_backbone(config.backbone, dtype=config.dtype, device=device)
    elif backbone.dtype != parse_dtype(config.dtype, str(backbone.device)):
        raise WorkbenchError(f"backbone {backbone.name} is {backbone.dtype}, but the distillation settings say {config.dtype}")
    report = LoadReport()
    selected = select_prompts(backbone, config, report)
    done = {s.key for s in read_samples(out)} if any(iter_shards(out)) else set()
    todo = sorted((pi for pi in selected if pi[0].key not in done), key=lambda pi: (len(pi[1]), pi[0].key))
    next_shard = 1 + max((int(p.stem.split("-")[1]) for p in iter_shards(out)), default=-1)

    started = previous.get("started_at") or datetime.now(timezone.utc).isoformat(timespec="seconds")
    record: dict[str, Any] = {
        "backbone": backbone.identity.to_dict(),
        "settings": config.answer_settings(),
        "limit": config.limit,
        "offset": config.offset,
        "prompts_selected": len(selected),
        "load_report": report.to_dict(),
        "started_at": started,
        "wall_s": float(previous.get("wall_s", 0.0)),
        "provenance": Provenance.collect(str(backbone.device), backbone.dtype).as_dict(),
    }
    atomic_write(out / RUN_FILE, json.dumps({**previous, **record}, indent=1) + "\n")

    stops: Counter = Counter(previous.get("stops", {}))
    new_tokens = int(previous.get("new_tokens", 0))
    bar = tqdm(total=len(todo), desc="distill", unit="prompt", disable=not progress)
    for b in range(0, len(todo), config.batch_size):
        t0 = time.perf_counter()
        batch = todo[b : b + config.batch_size]
        answers = answer_batch(backbone, [ids for _, ids in batch], config, config.seed + next_shard)
        lines = []
        for (prompt, ids), (answer, stop) in zip(batch, answers):
            lines.append(json.dumps({
                "key": prompt.key, "id": prompt.id, "source": prompt.source,
                "ids": ids + answer, "spans": [[len(ids), len(ids) + len(answer)]], "stop": stop,
            }))
            stops[stop] += 1
            new_tokens += len(answer)
        atomic_write(out / f"shard-{next_shard:05d}.jsonl", "\n".join(lines) + "\n")
        next_shard += 1
        record["wall_s"] += time.perf_counter() - t0
        record.update(stops=dict(stops), new_tokens=new_tokens,
                      samples=len(done) + b + len(batch),
                      updated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        atomic_write(out / RUN_FILE, json.dumps({**previous, **record}, indent=1) + "\n")
        bar.update(len(batch))
        bar.set_postfix(tok=new_tokens)
    bar.close()
    record.update(samples=len(done) + len(todo), stops=dict(stops), new_tokens=new_tokens,
                  finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    atomic_write(out / RUN_FILE, json.dumps({**previous, **record}, indent=1) + "\n")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    d = DistillConfig()
    p = Parser(prog="python -m medusa.distill", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder (resumed if it exists)")
    p.add_argument("--backbone", default=d.backbone)
    add_dtype(p, d.dtype)
    p.add_argument("--prompts", default=d.source, dest="source", metavar="NAME",
                   help="prompt set: sharegpt, mtbench, gsm8k or a .jsonl of prompts")
    p.add_argument("--split", default=d.split, help="train, calibration, eval or all")
    p.add_argument("--limit", type=int, default=d.limit, help="number of prompts (default: all in the split)")
    p.add_argument("--offset", type=int, default=d.offset,
                   help="skip the first N selected prompts (e.g. a second process on the next block)")
    p.add_argument("--max-prompt-tokens", type=int, default=d.max_prompt_tokens)
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=d.top_p)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="prompts answered together (on a GPU: hundreds)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    add_threads(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.max_new_tokens < 1 or args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise WorkbenchError("--max-new-tokens, --batch-size and --limit must be >= 1")
    if args.temperature < 0:
        raise WorkbenchError("--temperature must be >= 0")
    apply_threads(args.threads)
    config = DistillConfig(
        backbone=args.backbone, dtype=args.dtype, source=args.source, split=args.split, limit=args.limit, offset=args.offset,
        max_prompt_tokens=args.max_prompt_tokens, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_p=args.top_p, seed=args.seed, batch_size=args.batch_size,
    )
    rec = distill(config, args.out, progress=not args.quiet, device=args.device)
    print(f"{args.out}: {rec['samples']} samples, {rec['new_tokens']} generated tokens, "
          f"stops {rec['stops']}, {rec['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
