"""Teacher-forced distillation data: one backbone forward over existing conversations, stored per position.

Self-distillation (`medusa.distill`) costs a generation per training position; a teacher-forced
forward over text that already exists (ShareGPT conversations, every turn, through the chat
template) yields a position per token at forward-pass cost, and the backbone's whole next-token
distribution comes with it. For every position t whose hidden state can train a head (the token
t+2 lies in an assistant turn, so head 1 has a target; see `positions_of`), a shard stores:

    hidden.npy      (rows, H) uint16   the last hidden state, bf16 bits (view as torch.bfloat16)
    topk_ids.npy    (rows, k) int32    the backbone's k most likely next tokens at t (k = --top-k)
    topk_logp.npy   (rows, k) float16  their log-probabilities (full-vocabulary log-softmax)
    rest_logp.npy   (rows,)   float32  log of the probability mass outside the top k
    seq.npy, pos.npy (rows,)  int32    the record (index in the shard's `keys`) and position t
    scored.npy      (rows,)   bool     token t+1 is assistant text (this row's distribution is a target)
    next_id.npy     (rows,)   int32    token t+1 of the text (shards written before it existed get it
                                       with `--backfill-next-ids`, tokenization only)
    meta.json                          keys (prompt hashes) of the shard's records, rows, positions

Head k (1-based) on the hidden state at position t is trained against the distribution over
token t+k+1, i.e. the row of position t+k of the same record (`medusa.train.cache.TeacherCache`).

`next_id` against the stored argmax says where the text follows the backbone's own greedy path:
head k at t is "on the path" when tokens t+1..t+k of the text are the backbone's argmax at
t..t+k-1, which is the only case decoding ever asks head k about (`--on-path` in stage 1).

Each shard is a folder written atomically (`common.io.atomic_folder`); a rerun skips every record
already in a shard (by prompt key), so positions are never stored twice, and raising `--limit`
adds records. Settings that change outputs (backbone, dtype, source, split, top-k, max tokens)
must match the folder's run.json. Prompts come from `medusa.data` and the hashed split, so the
calibration and evaluation prompts never train (`--split train`).

Usage::

    python -m medusa.teacher --prompts sharegpt --split train --limit 5000 --out data/teacher/smollm2-train --threads 2
    python -m medusa.train --stage 1 --data data/teacher/smollm2-train --eval-data data/distill/smollm2-eval \\
        --loss soft --out results/_scratch/soft ...
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from common.cli import Parser, add_dtype, add_threads, apply_threads, run_cli
from common.errors import WorkbenchError
from common.io import atomic_folder, atomic_write, ensure_writable, write_npy
from common.provenance import Provenance
from medusa.backbone import DEFAULT_BACKBONE, Backbone, load_backbone
from medusa.data import LoadReport, Prompt, check_split, load_prompts, split_of
from medusa.distill import check_same_settings, read_run

RUN_FILE = "run.json"
SHARD_PREFIX = "shard-"
ARRAYS = ("hidden", "topk_ids", "topk_logp", "rest_logp", "seq", "pos", "scored")
NEXT_ID = "next_id"  # written by every run since it existed; older shards get it by backfill


@dataclass(frozen=True)
class TeacherConfig:
    """What determines the stored values (checked on resume) and how records are chosen."""

    backbone: str = DEFAULT_BACKBONE
    dtype: str = "float32"
    source: str = "sharegpt"
    split: str = "train"
    top_k: int = 32
    max_tokens: int = 2048
    limit: int | None = None
    offset: int = 0
    records_per_shard: int = 64

    # Fields that may differ between a run and its resumption.
    RESUMABLE = ("limit", "offset", "records_per_shard")

    def __post_init__(self) -> None:
        for name in ("top_k", "max_tokens", "records_per_shard"):
            if getattr(self, name) < 1:
                raise WorkbenchError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise WorkbenchError(f"limit must be >= 1, got {self.limit}")
        if self.offset < 0:
            raise WorkbenchError(f"offset must be >= 0, got {self.offset}")
        if self.split != "all":
            check_split(self.split)

    def output_settings(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in self.RESUMABLE}


# ---- token ids and positions ------------------------------------------------------------------
def _template_ids(backbone: Backbone, messages: Sequence[dict[str, str]], generation_prompt: bool) -> list[int]:
    enc = backbone.tokenizer.apply_chat_template(list(messages), add_generation_prompt=generation_prompt, tokenize=True)
    ids = enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc
    return [int(i) for i in ids]


def conversation_ids(backbone: Backbone, messages: Sequence[dict[str, str]],
                     max_tokens: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of a whole conversation and the [start, end) spans of its assistant turns.

    With a chat template, turn i's span is what the template adds after the generation prompt of
    messages[:i]; without one, the turns' token ids are concatenated. Cut at `max_tokens`.
    """
    if backbone.tokenizer is None:
        raise WorkbenchError(f"backbone {backbone.name} has no tokenizer")
    templated = bool(getattr(backbone.tokenizer, "chat_template", None))
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if templated:
            if m["role"] == "assistant":
                prefix = _template_ids(backbone, messages[:i], True)
                full = _template_ids(backbone, messages[: i + 1], False)
                if full[: len(prefix)] != prefix or prefix[: len(ids)] != ids:
                    break  # the template rewrites earlier turns: keep what is consistent
                spans.append((len(prefix), len(full)))
                ids = full
            else:
                ids = _template_ids(backbone, messages[: i + 1], False)
        else:
            turn = [int(t) for t in backbone.tokenizer(m["content"])["input_ids"]]
            if m["role"] == "assistant":
                spans.append((len(ids), len(ids) + len(turn)))
            ids = ids + turn
    ids = ids[:max_tokens]
    spans = [(s, min(e, len(ids))) for s, e in spans if s < len(ids)]
    return ids, [(s, e) for s, e in spans if e > s]


def positions_of(spans: Sequence[tuple[int, int]], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions to store (sorted) and whether each is scored (its next token is assistant text).

    Position t trains head k against token t+k+1, so t is stored when t+2 is assistant text
    (t in [s-2, e-2]); its own distribution is a target when t+1 is (t in [s-1, e-2]).
    """
    stored = np.zeros(length, dtype=bool)
    scored = np.zeros(length, dtype=bool)
    for s, e in spans:
        stored[max(s - 2, 0): e - 1] = True
        scored[max(s - 1, 0): e - 1] = True
    pos = np.flatnonzero(stored)
    return pos, scored[pos]


# ---- the forward ------------------------------------------------------------------------------
def rest_log_mass(inside: torch.Tensor) -> torch.Tensor:
    """log(1 - p_top) from log p_top, -1e4 when nothing is left (rounding can put p_top at or past 1:
    that gives -1e4, never NaN)."""
    return torch.log((-torch.expm1(inside)).clamp(min=0.0)).clamp(min=-1e4)


@torch.inference_mode()
def teacher_forward(backbone: Backbone, ids: Sequence[int], pos: np.ndarray, top_k: int) -> dict[str, np.ndarray]:
    """Hidden states (bf16 bits), top-k ids / log-probs and the rest's log-mass at positions `pos`."""
    decoder = backbone.model.base_model
    x = torch.tensor([list(ids)], dtype=torch.long, device=backbone.device)
    hidden = decoder(input_ids=x).last_hidden_state[0, torch.from_numpy(pos).to(backbone.device)]
    logits = backbone.model.get_output_embeddings()(hidden).float()
    logp = torch.log_softmax(logits, dim=-1)
    top = logp.topk(min(top_k, logp.shape[-1]), dim=-1)
    rest = rest_log_mass(torch.logsumexp(top.values.double(), dim=-1)).float()
    return {
        "hidden": hidden.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16),
        "topk_ids": top.indices.to(torch.int32).cpu().numpy(),
        "topk_logp": top.values.clamp(min=-6e4).to(torch.float16).cpu().numpy(),
        "rest_logp": rest.cpu().numpy(),
    }


# ---- shards -----------------------------------------------------------------------------------
def iter_shards(directory: str | os.PathLike) -> Iterator[Path]:
    """Finished shard folders (those with meta.json), in order."""
    return iter(sorted(p for p in Path(directory).glob(f"{SHARD_PREFIX}*") if (p / "meta.json").is_file()))


def is_teacher_folder(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and read_run(path).get("kind") == "teacher"


def read_shard(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A shard's arrays (memory-mapped) and its meta.json."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
        if (folder / f"{NEXT_ID}.npy").is_file():
            arrays[NEXT_ID] = np.load(folder / f"{NEXT_ID}.npy", mmap_mode="r")
    except (OSError, ValueError) as e:
        raise WorkbenchError(f"teacher shard {folder} is unreadable ({e}); delete it to rebuild") from None
    return arrays, meta


def write_shard(folder: Path, records: Sequence[tuple[str, dict[str, np.ndarray]]]) -> int:
    """Write one shard of (key, arrays incl. pos/scored) records atomically; returns its rows."""
    cols: dict[str, list[np.ndarray]] = {name: [] for name in (*ARRAYS, NEXT_ID)}
    for i, (_, arr) in enumerate(records):
        for name in cols:
            cols[name].append(np.full(len(arr["pos"]), i, dtype=np.int32) if name == "seq" else arr[name])
    with atomic_folder(folder) as tmp:
        for name, parts in cols.items():
            np.save(tmp / f"{name}.npy", np.concatenate(parts))
        rows = int(sum(len(a["pos"]) for _, a in records))
        (tmp / "meta.json").write_text(json.dumps({"keys": [k for k, _ in records], "rows": rows,
                                                   "scored": int(sum(a["scored"].sum() for _, a in records))}) + "\n")
    return rows


def done_keys(out: Path) -> set[str]:
    keys: set[str] = set()
    for shard in iter_shards(out):
        keys.update(read_shard(shard)[1]["keys"])
    return keys


def select_records(config: TeacherConfig, report: LoadReport) -> list[Prompt]:
    """The run's conversations: of the source, in file order, those the split allows."""
    chosen = [p for p in load_prompts(config.source, multi_turn=True, report=report)
              if config.split == "all" or split_of(p.text) == config.split]
    chosen = [p for p in chosen if any(m["role"] == "assistant" for m in p.messages)]
    chosen = chosen[config.offset:]
    chosen = chosen[: config.limit] if config.limit is not None else chosen
    if not chosen:
        raise WorkbenchError(f"no conversations with assistant turns in {config.source} (split {config.split}): {report.summary()}")
    return chosen


def build_teacher_data(config: TeacherConfig, out_dir: str | os.PathLike, progress: bool = True,
                       backbone: Backbone | None = None) -> dict[str, Any]:
    """Store teacher-forced positions of the selected records in `out_dir`, resuming; returns run.json."""
    out = Path(out_dir)
    ensure_writable(out)
    previous = read_run(out)
    if previous and previous.get("kind") != "teacher":
        raise WorkbenchError(f"{out} holds another kind of data (not medusa.teacher); use another --out")
    check_same_settings(out, previous, config.output_settings(), "teacher run")
    backbone = backbone or load_backbone(config.backbone, dtype=config.dtype)
    report = LoadReport()
    records = select_records(config, report)
    done = done_keys(out)
    todo = [p for p in records if p.key not in done]
    next_shard = 1 + max((int(p.name[len(SHARD_PREFIX):]) for p in iter_shards(out)), default=-1)
    run: dict[str, Any] = {
        **previous, "kind": "teacher", "backbone": backbone.identity.to_dict(), "settings": config.output_settings(),
        "limit": config.limit, "offset": config.offset, "records_selected": len(records),
        "load_report": report.to_dict(),
        "started_at": previous.get("started_at") or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "provenance": Provenance.collect(str(backbone.device), backbone.dtype, torch.get_num_threads()).as_dict(),
    }
    totals = {k: float(previous.get(k, 0)) for k in ("records", "positions", "tokens", "cpu_s", "wall_s")}
    atomic_write(out / RUN_FILE, json.dumps(run, indent=1) + "\n")
    bar = tqdm(total=len(todo), desc="teacher", unit="record", disable=not progress)
    for b in range(0, len(todo), config.records_per_shard):
        t0, c0 = time.perf_counter(), time.process_time()
        shard: list[tuple[str, dict[str, np.ndarray]]] = []
        tokens = 0
        for p in todo[b: b + config.records_per_shard]:
            ids, spans = conversation_ids(backbone, p.messages, config.max_tokens)
            pos, scored = positions_of(spans, len(ids))
            if len(pos) == 0:
                continue
            shard.append((p.key, {**teacher_forward(backbone, ids, pos, config.top_k),
                                  "pos": pos.astype(np.int32), "scored": scored,
                                  NEXT_ID: np.asarray(ids, dtype=np.int32)[pos + 1]}))
            tokens += len(ids)
            bar.update(1)
        if shard:
            totals["positions"] += write_shard(out / f"{SHARD_PREFIX}{next_shard:05d}", shard)
            next_shard += 1
        totals["records"] += len(shard)
        totals["tokens"] += tokens
        totals["cpu_s"] += time.process_time() - c0
        totals["wall_s"] += time.perf_counter() - t0
        run.update({k: (round(v, 2) if k.endswith("_s") else int(v)) for k, v in totals.items()},
                   updated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        atomic_write(out / RUN_FILE, json.dumps(run, indent=1) + "\n")
    bar.close()
    run["positions_per_cpu_s"] = round(totals["positions"] / totals["cpu_s"], 1) if totals["cpu_s"] else None
    run["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write(out / RUN_FILE, json.dumps(run, indent=1) + "\n")
    return run


def backfill_next_ids(out_dir: str | os.PathLike, backbone: Backbone | None = None) -> int:
    """Add next_id.npy to the shards of `out_dir` that lack it (tokenization only); returns shards filled.

    The records are found by key among the folder's source conversations and tokenized exactly as
    the run did (`conversation_ids` with its max_tokens); a record whose tokens no longer give the
    stored positions is an error, never a silent misalignment.
    """
    out = Path(out_dir)
    run = read_run(out)
    if run.get("kind") != "teacher":
        raise WorkbenchError(f"{out} is not a medusa.teacher folder")
    todo = [s for s in iter_shards(out) if not (s / f"{NEXT_ID}.npy").is_file()]
    if not todo:
        return 0
    settings = run["settings"]
    backbone = backbone or load_backbone(settings["backbone"], dtype=settings["dtype"])
    by_key = {p.key: p for p in load_prompts(settings["source"], multi_turn=True, report=LoadReport())}
    for shard in todo:
        arrays, meta = read_shard(shard)
        seq, pos = np.asarray(arrays["seq"]), np.asarray(arrays["pos"])
        next_id = np.empty(len(pos), dtype=np.int32)
        for i, key in enumerate(meta["keys"]):
            if key not in by_key:
                raise WorkbenchError(f"{shard}: record {key[:12]} is no longer in {settings['source']}; cannot backfill")
            ids, spans = conversation_ids(backbone, by_key[key].messages, settings["max_tokens"])
            rows = np.flatnonzero(seq == i)
            want, _ = positions_of(spans, len(ids))
            if not np.array_equal(want, pos[rows]):
                raise WorkbenchError(f"{shard}: record {key[:12]} tokenizes differently now; cannot backfill")
            next_id[rows] = np.asarray(ids, dtype=np.int32)[pos[rows] + 1]
        write_npy(next_id, shard / f"{NEXT_ID}.npy")
    return len(todo)


def main(argv: Sequence[str] | None = None) -> int:
    d = TeacherConfig()
    p = Parser(prog="python -m medusa.teacher", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder (resumed if it exists)")
    p.add_argument("--backbone", default=d.backbone)
    add_dtype(p, d.dtype)
    p.add_argument("--prompts", default=d.source, dest="source", metavar="NAME",
                   help="prompt set: sharegpt, mtbench, gsm8k or a .jsonl of conversations")
    p.add_argument("--split", default=d.split, help="train, calibration, eval or all")
    p.add_argument("--limit", type=int, default=d.limit, help="number of records (default: all in the split)")
    p.add_argument("--offset", type=int, default=d.offset, help="skip the first N selected records")
    p.add_argument("--top-k", type=int, default=d.top_k, help="log-probabilities stored per position")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens, help="conversations are cut at this many tokens")
    p.add_argument("--records-per-shard", type=int, default=d.records_per_shard)
    add_threads(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--backfill-next-ids", action="store_true",
                   help="only add next_id.npy to shards written before it existed, then stop")
    args = p.parse_args(argv)
    if args.backfill_next_ids:
        apply_threads(args.threads)
        print(f"{args.out}: next_id added to {backfill_next_ids(args.out)} shards")
        return 0
    config = TeacherConfig(backbone=args.backbone, dtype=args.dtype, source=args.source, split=args.split,
                           top_k=args.top_k, max_tokens=args.max_tokens, limit=args.limit, offset=args.offset,
                           records_per_shard=args.records_per_shard)
    apply_threads(args.threads)
    run = build_teacher_data(config, args.out, progress=not args.quiet)
    print(f"{args.out}: {run.get('records', 0)} records, {run.get('positions', 0)} positions, "
          f"{run.get('positions_per_cpu_s')} positions per CPU-second")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
