"""Head accuracy calibration: where each head ranks the true future token, on held-out prompts.

For each calibration prompt (the `calibration` split of `medusa.data`, never used to train heads)
the backbone decodes greedily (the engine with the root-only tree, i.e. plain decoding); then ONE
teacher-forced forward over prompt + output gives the last hidden state at every position at once.
At output position t (the token the base model adds there is the step's root), head k (1-based)
proposes the token k places past the root; its rank in that head's top-R list is recorded (0-based,
-1 when absent). Under greedy acceptance this is exactly what decides which tree nodes a step
accepts, so the path statistics below predict the engine's accepted length. Only positions where
every head has a true future token are kept.

This is the measuring side of `trees/` (which never runs a model): it writes the tables the
acceptance models (`trees.acceptance_model`) and the tree search (`trees.search`) read.

Outputs (in ``--out``, default ``results/_scratch/calibration/<heads name>/``, git-ignored, so a
plain run never changes the committed calibration under ``results/calibration/``, which ``make
calibrate`` refreshes; the tree search reads the committed calibration of a heads folder, else this
scratch one; each file written atomically):

- ``ranks.parquet``: tidy ranks table ``prompt, position, head, rank0`` (rewritten after every
  prompt, so an interrupted run keeps its work and a re-run continues it; ``--fresh`` starts over);
- ``accuracy.csv``: ``head, rank0, accuracy, count``, ``a_k(i) = P(rank of head k == i)``, with a
  ``rank0 == -1`` row per head for "not in the top R";
- ``paths.csv``: ``path, depth, count, fraction`` for every observed rank-path prefix ("0-1-0");
  the empty path (depth 0) counts all positions;
- ``holdout.csv``: the acceptance models cross-validated by prompt (`trees.holdout`);
- ``probs.parquet``: the candidates table ``prompt, position, head, rank0, prob, hit``: each
  head's softmax probability of every candidate in its top-R list and whether it was the true
  token (written beside the ranks table, resumed with it; heads that are not an `nn.Module`
  give no probabilities and no table);
- ``confidence.csv``: per head, the isotonic map probability -> P(candidate is the true token)
  fitted on it (`trees.confidence`; what dynamic trees read). Calibrations made before these two
  files existed lack them and load everywhere as before;
- ``calibration.json``: what was run (backbone, heads fingerprint, prompt set and count under
  the keys ``source`` and ``prompts``, settings, timings) and its ``provenance``
  (`common.provenance`).

Usage::

    python -m bench.calibrate                                  # shipped heads, 60 prompts x 128 tokens
    python -m bench.calibrate --limit 80 --max-new-tokens 128 --top-r 10 --threads 1
    python -m bench.calibrate --heads results/_scratch/heads/mine   # -> results/_scratch/calibration/mine
    python -m bench.calibrate --fresh --out results/calibration/smollm2-135m-medusa1   # the committed one
    python -m bench.calibrate --prompts mtbench --limit 20    # another prompt set's calibration split
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.prompts import turn_messages
from common.cli import Parser, add_threads, apply_threads, quiet_libraries, run_cli
from common.errors import MissingResult, WorkbenchError
from common.io import display, read_json, write_csv, write_json, write_parquet
from common.paths import DEFAULT_HEADS_DIR, SCRATCH_CALIBRATION, scratch_calibration_dir
from common.provenance import Provenance
from medusa.backbone import Backbone, load_backbone
from medusa.data import load_split
from medusa.decode import DecodeConfig, generate
from medusa.heads import heads_fingerprint
from medusa.official_layout import is_official_layout
from medusa.resolve import add_model_args, resolve_heads
from medusa.subvocab import SubVocabHeads
from trees.acceptance_model import (
    RANKS_COLUMNS,
    load_ranks,
    marginals_from_ranks,
    path_stats_from_ranks,
)
from trees.confidence import (
    CANDIDATE_TABLE_COLUMNS,
    CONFIDENCE_FILE,
    fit_confidence,
    load_candidates,
)
from trees.holdout import holdout_evaluation, summarize_holdout
from trees.policy_replay import SEQUENCE_COLUMNS, SEQUENCE_STEM, load_sequences
from trees.tree import Tree, preset


@dataclass(frozen=True)
class CalibrationConfig:
    """What a calibration run decodes; each default is defined here only."""

    limit: int = 60  # number of calibration prompts
    max_new_tokens: int = 128
    top_r: int = 10
    prompts: str = "sharegpt"  # prompt set whose calibration split is decoded
    split: str = "calibration"
    # 2: conversations with a second user turn, asked after the model's own first answer (as
    # MT-Bench's second turns, where text repeats far more); each turn is one text, "<id>:t<turn>"
    turns: int = 1

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise WorkbenchError(f"--limit: the number of calibration prompts must be >= 1, got {self.limit}")
        if self.max_new_tokens < 2:
            raise WorkbenchError(f"max_new_tokens must be >= 2, got {self.max_new_tokens}")
        if self.top_r < 1:
            raise WorkbenchError(f"top_r must be >= 1, got {self.top_r}")
        if self.turns not in (1, 2):
            raise WorkbenchError(f"--turns must be 1 or 2, got {self.turns}")

    def as_meta(self) -> dict[str, Any]:
        """The settings under calibration.json's keys (read by `analysis.load` and the resume check):
        ``prompts`` is the number of prompts, ``source`` the prompt set."""
        return {"prompts": self.limit, "max_new_tokens": self.max_new_tokens, "top_r": self.top_r,
                "source": self.prompts, "split": self.split, "turns": self.turns}


# ---- the measurement ----------------------------------------------------------------------------
def greedy_continuation(
    backbone: Backbone, prompt_ids: Sequence[int], max_new_tokens: int, heads: Any = None, tree: Tree | None = None
) -> list[int]:
    """The base model's greedy output (EOS included when hit), decoded by the engine.

    With the root-only tree (default) this is plain greedy decoding; a Medusa tree with `heads`
    gives the same tokens (greedy acceptance is lossless), only faster.
    """
    tree = tree or preset("root")
    result = generate(backbone, heads if tree.depth else None, tree, prompt_ids,
                      DecodeConfig(max_new_tokens=max_new_tokens, time_phases=False))
    return result.output_ids


@torch.inference_mode()
def batched_greedy(backbone: Backbone, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
    """Greedy outputs of several prompts in one left-padded transformers `generate` call.

    Decoding is memory-bound on a CPU, so a batch costs little more than one prompt. Padding can
    flip a near-tie argmax in rare cases; the ranks stay exact for the text that was decoded.
    """
    eos = list(backbone.eos_token_ids)
    ids, mask = backbone.left_pad(prompts)
    width = ids.shape[1]
    out = backbone.model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                  eos_token_id=eos or None, pad_token_id=backbone.pad_id)
    results = []
    for row in out[:, width:].tolist():
        cut = next((i + 1 for i, tok in enumerate(row) if tok in eos), len(row))
        results.append(row[:cut])
    return results


@torch.inference_mode()
def hidden_states(backbone: Backbone, ids: Sequence[int]) -> torch.Tensor:
    """Last (post-norm) hidden state at every position of `ids`: (L, H), one causal forward."""
    x = torch.tensor([list(ids)], device=backbone.device)
    return backbone.model.base_model(input_ids=x).last_hidden_state[0]


@torch.inference_mode()
def head_topk(heads: Any, hidden: torch.Tensor, ids: Sequence[int], first: int, top_r: int) -> torch.Tensor:
    """Top-`top_r` token ids of every head at positions first..L-1 of `hidden`: (K, T, R).

    Batched through the heads' forward when they are an `nn.Module` (MedusaHeads); any other
    proposer (`medusa.decode.Proposer`) is asked position by position, with the token ids it would
    see in the engine (everything up to and including the pending root).
    """
    return head_topk_probs(heads, hidden, ids, first, top_r)[0]


@torch.inference_mode()
def head_topk_probs(
    heads: Any, hidden: torch.Tensor, ids: Sequence[int], first: int, top_r: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`head_topk`'s ids (K, T, R) and the heads' softmax probabilities of them (K, T, R) float32.

    The probabilities are None for a proposer that is not an `nn.Module` (it gives ids only).
    """
    if isinstance(heads, torch.nn.Module):
        logits = heads(hidden[first:]).float()  # (K, T, V), or (K, T, S) over a sub-vocabulary
        top = torch.topk(logits, top_r, dim=-1)
        ids = heads.token_ids[top.indices] if isinstance(heads, SubVocabHeads) else top.indices
        return ids, torch.exp(top.values - torch.logsumexp(logits, dim=-1, keepdim=True))
    rows = [heads.propose(hidden[j], list(ids[: j + 2]), top_r) for j in range(first, hidden.shape[0])]
    return torch.stack(rows, dim=1), None


def ranks_of(topk: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rank (0-based) of each target in its top-R row, -1 when absent: (K, T, R), (K, T) -> (K, T)."""
    hit = topk == targets[..., None]
    return torch.where(hit.any(-1), hit.int().argmax(-1), torch.full_like(targets, -1))


@dataclass(frozen=True)
class Measured:
    """What calibration measures: the ranks table and, when the heads give probabilities, the candidates table."""

    ranks: pd.DataFrame  # RANKS_COLUMNS
    probs: pd.DataFrame | None  # CANDIDATES_COLUMNS + token (trees.confidence); None: not measured
    # SEQUENCE_COLUMNS (trees.policy_replay): the decoded text, which lookup chains are replayed from;
    # None: not measured (a calibration made before the table existed)
    tokens: pd.DataFrame | None = None


@torch.inference_mode()
def prompt_ranks(
    backbone: Backbone, heads: Any, prompt_ids: Sequence[int], output_ids: Sequence[int], top_r: int
) -> pd.DataFrame:
    """Ranks table of one decoded prompt (prompt column left empty for the caller to fill)."""
    return prompt_tables(backbone, heads, prompt_ids, output_ids, top_r).ranks


@torch.inference_mode()
def prompt_tables(
    backbone: Backbone, heads: Any, prompt_ids: Sequence[int], output_ids: Sequence[int], top_r: int
) -> Measured:
    """Ranks and candidates tables of one decoded prompt (prompt columns left empty for the caller)."""
    k = int(heads.num_heads)
    ids = list(prompt_ids) + list(output_ids)
    p, n = len(prompt_ids), len(ids)
    # Hidden at j predicts the root ids[j+1]; head h targets ids[j+1+h]. Keep j with j+1+K <= n-1.
    first, last = p - 1, n - 2 - k
    probs_empty = pd.DataFrame(columns=CANDIDATE_TABLE_COLUMNS) if isinstance(heads, torch.nn.Module) else None
    # The whole text, positions counted from the first output token (the prompt's are negative).
    sequence = pd.DataFrame({"prompt": "", "position": np.arange(n) - p, "token": np.asarray(ids, dtype=np.int64)})
    if last < first:
        return Measured(pd.DataFrame(columns=RANKS_COLUMNS), probs_empty, sequence)
    hidden = hidden_states(backbone, ids[: last + 1])  # positions past `last` are never needed
    topk, probs = head_topk_probs(heads, hidden, ids, first, top_r)  # (K, T, R) each
    t = last - first + 1
    ids_t = torch.tensor(ids, device=topk.device)
    js = torch.arange(first, last + 1, device=topk.device)
    targets = torch.stack([ids_t[js + 1 + h] for h in range(1, k + 1)])  # (K, T)
    r = ranks_of(topk[:, :t], targets).cpu()
    ranks = pd.DataFrame({
        "prompt": "",
        "position": torch.arange(t).repeat(k).numpy(),
        "head": torch.arange(1, k + 1).repeat_interleave(t).numpy(),
        "rank0": r.reshape(-1).numpy(),
    })
    if probs is None:
        return Measured(ranks, None, sequence)
    width = probs.shape[-1]
    hit = (topk[:, :t] == targets[..., None]).cpu()  # (K, T, R)
    table = pd.DataFrame({
        "prompt": "",
        "position": torch.arange(t).repeat_interleave(width).repeat(k).numpy(),
        "head": torch.arange(1, k + 1).repeat_interleave(t * width).numpy(),
        "rank0": torch.arange(width).repeat(k * t).numpy(),
        "prob": probs[:, :t].reshape(-1).cpu().numpy(),
        "hit": hit.reshape(-1).numpy(),
        "token": topk[:, :t].reshape(-1).cpu().numpy(),
    })
    return Measured(ranks, table, sequence)


def named_tables(backbone: Backbone, heads: Any, name: str, prompt_ids: Sequence[int], output_ids: Sequence[int],
                 top_r: int) -> Measured:
    """`prompt_tables` with every table's prompt column set to `name`."""
    part = prompt_tables(backbone, heads, prompt_ids, output_ids, top_r)
    for table in (part.ranks, part.probs, part.tokens):
        if table is not None:
            table["prompt"] = str(name)
    return part


def collect_ranks(
    backbone: Backbone,
    heads: Any,
    prompts: Sequence[tuple[str, Sequence[int]]],
    max_new_tokens: int,
    top_r: int,
    done: pd.DataFrame | None = None,
    on_prompt: Callable[[pd.DataFrame], None] | None = None,
    progress: bool = False,
    decode_tree: Tree | None = None,
    batch_size: int = 1,
) -> pd.DataFrame:
    """Ranks table over (prompt name, prompt ids) pairs; `done` rows are kept and their prompts skipped.

    Greedy text comes from the engine one prompt at a time (`batch_size` 1; `decode_tree` only
    speeds it up, see `greedy_continuation`) or from batched `generate` (`batch_size` > 1).
    `on_prompt(table so far)` runs after every prompt (the CLI uses it to checkpoint the table).
    The ranks part of `collect_tables`.
    """
    measured = collect_tables(
        backbone, heads, prompts, max_new_tokens, top_r, None if done is None else Measured(done, None),
        None if on_prompt is None else (lambda m: on_prompt(m.ranks)), progress, decode_tree, batch_size,
        probabilities=False)
    return measured.ranks


def collect_tables(
    backbone: Backbone,
    heads: Any,
    prompts: Sequence[tuple[str, Sequence[int]]],
    max_new_tokens: int,
    top_r: int,
    done: Measured | None = None,
    on_prompt: Callable[[Measured], None] | None = None,
    progress: bool = False,
    decode_tree: Tree | None = None,
    batch_size: int = 1,
    probabilities: bool = True,
) -> Measured:
    """`collect_ranks` with the candidates and sequence tables beside the ranks (see `Measured`).

    The candidates table is measured when asked (`probabilities`), the heads give probabilities
    and `done` (if any) has one for its prompts; otherwise `probs` is None (a table covering only
    some prompts would mislead the confidence fit). The sequence table likewise: None when `done`
    has ranks without one.
    """
    if top_r > backbone.vocab_size:
        raise WorkbenchError(f"top_r {top_r} exceeds the vocabulary ({backbone.vocab_size})")
    if batch_size < 1:
        raise WorkbenchError(f"batch size must be >= 1, got {batch_size}")
    has_done = done is not None and not done.ranks.empty
    with_probs = probabilities and isinstance(heads, torch.nn.Module) and (not has_done or done.probs is not None)
    parts = [done.ranks] if has_done else []
    prob_parts = [done.probs] if has_done and with_probs else []
    with_tokens = not has_done or done.tokens is not None
    token_parts = [done.tokens] if has_done and with_tokens else []
    seen = set(done.ranks["prompt"].astype(str)) if has_done else set()
    todo = [(str(name), ids) for name, ids in prompts if str(name) not in seen]
    t0 = time.perf_counter()
    for start in range(0, len(todo), batch_size):
        chunk = todo[start: start + batch_size]
        if batch_size == 1:
            outs = [greedy_continuation(backbone, chunk[0][1], max_new_tokens, heads, decode_tree)]
        else:
            outs = batched_greedy(backbone, [ids for _, ids in chunk], max_new_tokens)
        for j, ((name, ids), out) in enumerate(zip(chunk, outs, strict=True)):
            part = named_tables(backbone, heads, name, ids, out, top_r)
            parts.append(part.ranks)
            if with_probs and part.probs is not None:
                prob_parts.append(part.probs)
            if with_tokens and part.tokens is not None:
                token_parts.append(part.tokens)
            if progress:
                print(f"  prompt {start + j + 1}/{len(todo)}: {len(out)} tokens, "
                      f"{len(part.ranks) // max(heads.num_heads, 1)} positions ({time.perf_counter() - t0:.0f} s)",
                      file=sys.stderr)
        if on_prompt is not None:
            on_prompt(_measured(parts, prob_parts if with_probs else None, token_parts if with_tokens else None))
    if not parts:
        raise WorkbenchError("calibration produced no positions (prompts too short to score every head)")
    return _measured(parts, prob_parts if with_probs else None, token_parts if with_tokens else None)


def measure_texts(backbone: Backbone, heads: Any, texts: Sequence[tuple[str, Sequence[int], Sequence[int]]],
                  top_r: int) -> Measured:
    """The tables of texts already decoded, (name, prompt ids, output ids) each: no decoding, one
    teacher-forced forward per text (a bench run's outputs, `bench.policy_replay --on-run-text`)."""
    measured = [named_tables(backbone, heads, name, prompt_ids, output_ids, top_r) for name, prompt_ids, output_ids in texts]
    parts = [m.ranks for m in measured]
    prob_parts = [m.probs for m in measured if m.probs is not None]
    token_parts = [m.tokens for m in measured if m.tokens is not None]
    if not parts:
        raise WorkbenchError("no texts to measure")
    return _measured(parts, prob_parts if isinstance(heads, torch.nn.Module) else None, token_parts)


def _measured(parts: list[pd.DataFrame], prob_parts: list[pd.DataFrame] | None,
              token_parts: list[pd.DataFrame] | None = None) -> Measured:
    """The tables so far, with their declared columns and dtypes."""
    ranks = pd.concat(parts, ignore_index=True)[RANKS_COLUMNS]
    ranks = ranks.astype({"prompt": str, "position": "int64", "head": "int64", "rank0": "int64"})
    tokens = None
    if token_parts is not None:
        tokens = pd.concat(token_parts or [pd.DataFrame(columns=SEQUENCE_COLUMNS)], ignore_index=True)[SEQUENCE_COLUMNS]
        tokens = tokens.astype({"prompt": str, "position": "int64", "token": "int64"})
    if prob_parts is None:
        return Measured(ranks, None, tokens)
    columns = [c for c in CANDIDATE_TABLE_COLUMNS if all(c in p.columns for p in prob_parts)]
    probs = pd.concat([p for p in prob_parts if not p.empty] or [pd.DataFrame(columns=columns)],
                      ignore_index=True)[columns]
    probs = probs.astype({"prompt": str, "position": "int64", "head": "int64", "rank0": "int64",
                          "prob": "float32", "hit": bool, **({"token": "int64"} if "token" in columns else {})})
    return Measured(ranks, probs, tokens)


# ---- writing ------------------------------------------------------------------------------------
def write_ranks(ranks: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        return write_parquet(ranks, path)
    return write_csv(ranks, path)


def write_measured(measured: Measured, ranks_path: Path, probs_path: Path) -> None:
    """Checkpoint the tables: sequences and probabilities first, so a run cut off between the writes
    leaves extra prompts only in those (which `resumable` trims). When this run measures no
    probabilities (no sequences), an earlier run's candidates and confidence tables (its sequence
    table) are removed (stale)."""
    tokens_path = probs_path.parent / f"{SEQUENCE_STEM}{probs_path.suffix}"
    if measured.tokens is not None:
        write_ranks(measured.tokens, tokens_path)
    else:
        tokens_path.unlink(missing_ok=True)
    if measured.probs is not None:
        write_ranks(measured.probs, probs_path)
    else:
        probs_path.unlink(missing_ok=True)
        (probs_path.parent / CONFIDENCE_FILE).unlink(missing_ok=True)
    write_ranks(measured.ranks, ranks_path)


def write_tables(ranks: pd.DataFrame, out_dir: Path, top_r: int, holdout: bool = True,
                 probs: pd.DataFrame | None = None) -> dict[str, Path]:
    """Derive and write accuracy.csv, paths.csv (and holdout.csv; confidence.csv from a candidates table)."""
    acc = marginals_from_ranks(ranks, top_r)
    stats = path_stats_from_ranks(ranks, top_r)
    files = {
        "accuracy": write_csv(acc.to_frame(), out_dir / "accuracy.csv"),
        "paths": write_csv(stats.to_frame(), out_dir / "paths.csv"),
    }
    if probs is not None and not probs.empty:
        files["confidence"] = fit_confidence(probs).save(out_dir / CONFIDENCE_FILE)
    if holdout and ranks["prompt"].nunique() >= 2:
        try:
            table = holdout_evaluation(ranks, top_r=top_r)
        except WorkbenchError:
            table = None
        if table is not None:
            files["holdout"] = write_csv(table, out_dir / "holdout.csv")
    return files


# ---- CLI ----------------------------------------------------------------------------------------
def parser() -> Parser:
    d = CalibrationConfig()
    p = Parser(prog="python -m bench.calibrate", description=__doc__.split("\n")[0])
    add_model_args(p)
    add_threads(p)
    p.add_argument("--prompts", default=d.prompts,
                   help=f"prompt set whose calibration split is decoded (default {d.prompts}; mtbench, gsm8k or a .jsonl)")
    p.add_argument("--limit", type=int, default=d.limit, help=f"number of calibration prompts (default {d.limit})")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--turns", type=int, default=d.turns,
                   help="2: conversations with a second user turn, asked after the model's own first answer "
                        "(--limit counts conversations; each turn is one text)")
    p.add_argument("--top-r", type=int, default=d.top_r, help="length of each head's ranked list")
    p.add_argument("--out", default=None,
                   help=f"output folder (default {display(SCRATCH_CALIBRATION)}/<heads name>; results/calibration/... "
                        "refreshes a committed calibration)")
    p.add_argument("--ranks-format", default="parquet", help="parquet or csv")
    p.add_argument("--fresh", action="store_true", help="ignore an existing ranks table instead of resuming it")
    p.add_argument("--decode-preset", default="root",
                   help="tree that decodes the greedy text (root = plain decoding; a Medusa tree is lossless, faster)")
    p.add_argument("--derive-only", action="store_true",
                   help="recompute accuracy/paths/holdout tables from the existing ranks table, decode nothing")
    p.add_argument("--batch-size", type=int, default=1,
                   help="decode this many prompts at once with transformers generate (faster on CPU)")
    return p


def check_args(args: Any) -> tuple[CalibrationConfig, Path, Path]:
    """(config, heads folder, output folder) from the flags; every check that loads nothing."""
    if str(args.prompts).isdigit():
        raise WorkbenchError(f"--prompts is a prompt set (sharegpt, mtbench, gsm8k or a .jsonl file), "
                             f"got {args.prompts!r}; the number of prompts is --limit N")
    config = CalibrationConfig(args.limit, args.max_new_tokens, args.top_r, args.prompts, turns=args.turns)
    if args.ranks_format not in ("parquet", "csv"):
        raise WorkbenchError(f"--ranks-format must be parquet or csv, got {args.ranks_format!r}")
    heads_dir = Path(args.heads) if args.heads else DEFAULT_HEADS_DIR
    if not ((heads_dir / "heads.safetensors").is_file() or is_official_layout(heads_dir)):
        raise MissingResult(f"no trained heads at {display(heads_dir)} (train them with `python -m medusa.train`)")
    out_dir = Path(args.out) if args.out else scratch_calibration_dir(heads_dir.name)
    return config, heads_dir, out_dir


def covering(table: pd.DataFrame, prompts: set[str]) -> pd.DataFrame | None:
    """`table`'s rows of `prompts` when it has every one of them, else None. The checkpoint writes the
    candidates and sequence tables before the ranks, so a cut-off run leaves extra prompts there only."""
    table = table[table["prompt"].isin(prompts)]
    return table.reset_index(drop=True) if set(table["prompt"]) == prompts else None


def resumable(ranks_path: Path, meta_path: Path, meta: dict[str, Any], names: set[str],
              probs_path: Path | None = None) -> Measured | None:
    """The tables already measured with the same heads and settings (restricted to `names`), if any.

    The candidates table comes along when `probs_path` holds one covering every resumed prompt;
    otherwise `probs` is None and a note says confidence.csv needs `--fresh`.
    """
    if not (ranks_path.is_file() and meta_path.is_file()):
        return None
    old = read_json(meta_path, "calibration record")
    if any(old.get(k) != meta[k] for k in ("heads_fingerprint", "top_r", "max_new_tokens", "source")):
        return None
    if old.get("turns", 1) != meta.get("turns", 1):
        return None
    done = load_ranks(ranks_path)
    done = done[done["prompt"].astype(str).isin(names)]
    print(f"resuming: {done['prompt'].nunique()} prompts already in {display(ranks_path)}", file=sys.stderr)
    prompts = set(done["prompt"].astype(str))
    probs = covering(load_candidates(probs_path), prompts) if probs_path is not None and probs_path.is_file() else None
    if probs is None and not done.empty:
        print(f"note: the resumed ranks have no probabilities in {display(probs_path or ranks_path.parent)}, so "
              f"{CONFIDENCE_FILE} will not be written (--fresh measures both)", file=sys.stderr)
    tokens_path = ranks_path.parent / f"{SEQUENCE_STEM}{ranks_path.suffix}"
    tokens = covering(load_sequences(tokens_path), prompts) if tokens_path.is_file() else None
    if tokens is None and not done.empty:
        print(f"note: the resumed ranks have no sequence table {display(tokens_path)}, so lookup chains cannot be "
              f"replayed from this calibration (--fresh measures it)", file=sys.stderr)
    return Measured(done.reset_index(drop=True), probs, tokens)


def second_turns(backbone: Backbone, conversations: Sequence[Any], first: Measured) -> list[tuple[str, list[int]]]:
    """Each conversation's second user turn asked after the model's own first answer (from the
    first turns' sequence table), named "<id>:t2"."""
    if first.tokens is None:
        raise WorkbenchError("second turns need the first turns' text (the sequence table); run with --fresh")
    texts = {name: g.sort_values("position") for name, g in first.tokens.groupby("prompt")}
    out = []
    for pr in conversations:
        text = texts.get(f"{pr.id}:t1")
        if text is None:
            continue
        answer = backbone.decode(text[text["position"] >= 0]["token"].tolist())
        out.append((f"{pr.id}:t2", backbone.chat_ids(turn_messages(pr.user_turns, 2, answer))))
    return out


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    config, heads_dir, out_dir = check_args(args)
    decode_tree = preset(args.decode_preset)
    ranks_path = out_dir / f"ranks.{args.ranks_format}"
    probs_path = out_dir / f"probs.{args.ranks_format}"
    if args.derive_only:
        probs = load_candidates(probs_path) if probs_path.is_file() else None
        if probs is None:
            print(f"note: no candidates table {display(probs_path)} (calibrations made before it existed lack it), "
                  f"so {CONFIDENCE_FILE} is not written; `--fresh` measures it", file=sys.stderr)
        report(write_tables(load_ranks(ranks_path), out_dir, config.top_r, probs=probs))
        return 0
    apply_threads(args.threads)
    quiet_libraries()

    backbone = load_backbone(args.backbone, dtype=args.dtype, device=args.device)
    heads = resolve_heads(str(heads_dir), backbone).heads
    if config.turns == 1:
        prompts = load_split(config.split, source=config.prompts, limit=config.limit)
        named = [(pr.id, backbone.chat_ids(pr.text)) for pr in prompts]
    else:
        talks = [pr for pr in load_split(config.split, source=config.prompts, multi_turn=True) if len(pr.user_turns) >= 2]
        if not talks:
            raise WorkbenchError(f"prompt set {config.prompts} has no conversations with a second user turn")
        prompts = talks[: config.limit]
        named = [(f"{pr.id}:t1", backbone.chat_ids(turn_messages(pr.user_turns, 1))) for pr in prompts]
    meta_path = out_dir / "calibration.json"
    meta: dict[str, Any] = {
        **config.as_meta(),
        "backbone": backbone.name,
        "heads": display(heads_dir),
        "heads_fingerprint": heads_fingerprint(heads_dir),
        "num_heads": heads.num_heads,
        "decode_tree": decode_tree.name,
        "batch_size": args.batch_size,
        "device": str(backbone.device),
        "dtype": str(backbone.dtype).removeprefix("torch."),
        "started": now(),
        "complete": False,
        "provenance": Provenance.collect(str(backbone.device), backbone.dtype, args.threads).as_dict(),
    }
    names = {str(n) for n, _ in named} | ({f"{pr.id}:t2" for pr in prompts} if config.turns == 2 else set())
    done = None if args.fresh else resumable(ranks_path, meta_path, meta, names, probs_path)
    write_json(meta, meta_path, indent=1)

    t0 = time.perf_counter()

    def collect(todo: list[tuple[str, list[int]]], done: Measured | None) -> Measured:
        return collect_tables(backbone, heads, todo, config.max_new_tokens, config.top_r, done,
                              on_prompt=lambda m: write_measured(m, ranks_path, probs_path), progress=True,
                              decode_tree=decode_tree, batch_size=args.batch_size)

    measured = collect(named, done)
    if config.turns == 2:
        measured = collect(second_turns(backbone, prompts, measured), measured)
    write_measured(measured, ranks_path, probs_path)
    ranks = measured.ranks
    files = write_tables(ranks, out_dir, config.top_r, probs=measured.probs)
    positions = len(ranks) // heads.num_heads
    meta.update({"prompts_done": int(ranks["prompt"].nunique()), "positions": positions,
                 "decode_s": time.perf_counter() - t0, "finished": now(), "complete": True})
    write_json(meta, meta_path, indent=1)
    print(f"calibrated {heads_dir.name}: {meta['prompts_done']} prompts, {positions} positions")
    report(files)
    return 0


def report(files: dict[str, Path]) -> None:
    """Print top-1 accuracy per head, the held-out summary and the files written."""
    acc = pd.read_csv(files["accuracy"])
    top1 = acc[acc["rank0"] == 0].set_index("head")["accuracy"]
    print("  top-1 accuracy: " + ", ".join(f"head {h} {a:.3f}" for h, a in top1.items()))
    if "holdout" in files:
        summary = summarize_holdout(pd.read_csv(files["holdout"]))
        print("  held-out (cross-validated by prompt) tokens per engine step, pooled prediction error:")
        for _, r in summary.iterrows():
            print(f"    {r['tree']:14s} actual {r['actual']:.3f}  independence {100 * r['pooled_error_independence']:+.1f}%"
                  f"  empirical {100 * r['pooled_error_empirical']:+.1f}%  replay {100 * r['pooled_error_replay']:+.1f}%")
    for name, path in files.items():
        print(f"  wrote {name}: {display(path)}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
