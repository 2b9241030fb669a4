"""Benchmark prompt sets: MT-Bench, held-out ShareGPT, GSM8K, or any MT-Bench-format JSONL file.

Loading is delegated to `medusa.data` (the one place that reads the data packages); this module
turns its `Prompt`s into `BenchPrompt`s (id, category, user turns) and applies the run's filters:

- ``mtbench``   the 80 MT-Bench questions (8 categories, two user turns each);
- ``sharegpt``  ShareGPT first turns from the held-out ``eval`` split (never used for training or
                calibration: the split is a hash of the prompt text, see `medusa.data`);
- ``gsm8k``     the 1319 GSM8K test questions (category ``math``);
- a path        any JSONL with `question_id`, `category`, `turns` (MT-Bench's format); other
                prompt fields `medusa.data.load_jsonl_prompts` accepts work too.

Filters, in this order: categories (unknown names are an error), at most `limit` prompts per
category (file order kept), then `turns` (1: first turns only; 2: first and second turns). The
second turn is asked after each method's own first answer, so it is built at run time
(`bench.run`). `prompt_index` is the prompt's position in its source, whatever the filters, so
records of runs with different filters or shards sort and merge consistently. Sharding splits
the filtered list round-robin.

Usage::

    from bench.prompts import load_bench_prompts
    prompts = load_bench_prompts("mtbench", categories=["math", "coding"], limit=3, turns=2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.errors import WorkbenchError
from medusa import data

PROMPT_SETS = ("mtbench", "sharegpt", "gsm8k")


@dataclass(frozen=True)
class BenchPrompt:
    """One benchmark question: its user turns (the second asked after the method's first answer)."""

    prompt_index: int
    id: str
    category: str
    turns: tuple[str, ...]


def _load_source(source: str) -> list[data.Prompt]:
    if source == "mtbench":
        return data.load_mtbench()
    if source == "sharegpt":
        return data.load_split("eval", source="sharegpt")
    if source == "gsm8k":
        return data.load_gsm8k()
    path = Path(source)
    if not path.is_file():
        raise WorkbenchError(
            f"prompts {source!r} are neither a known set ({', '.join(PROMPT_SETS)}) nor a readable file"
        )
    return data.load_jsonl_prompts(path)


def source_name(source: str) -> str:
    """A short name for records and default folders: the set name, or the file's stem."""
    return source if source in PROMPT_SETS else Path(source).stem


def load_bench_prompts(
    source: str,
    categories: Sequence[str] | None = None,
    limit: int | None = None,
    turns: int = 1,
) -> list[BenchPrompt]:
    """The filtered prompts of `source` (see the module docstring); never empty."""
    if turns not in (1, 2):
        raise WorkbenchError(f"turns must be 1 or 2, got {turns}")
    if limit is not None and limit < 1:
        raise WorkbenchError(f"limit must be >= 1, got {limit}")
    name = source_name(source)
    prompts = []
    seen: set[str] = set()
    for i, p in enumerate(_load_source(source)):
        if p.id in seen:
            raise WorkbenchError(f"prompts {source}: question id {p.id!r} appears twice")
        seen.add(p.id)
        prompts.append(BenchPrompt(i, p.id, p.category or name, tuple(p.user_turns)[:turns]))
    known = list(dict.fromkeys(p.category for p in prompts))
    if categories:
        unknown = [c for c in categories if c not in known]
        if unknown:
            raise WorkbenchError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)} "
                                 f"for prompts {name} (known: {', '.join(known)})")
        prompts = [p for p in prompts if p.category in set(categories)]
    if limit is not None:
        taken: dict[str, int] = {}
        kept = []
        for p in prompts:
            if taken.get(p.category, 0) < limit:
                taken[p.category] = taken.get(p.category, 0) + 1
                kept.append(p)
        prompts = kept
    if not prompts:
        raise WorkbenchError(f"no prompts left in {name} after filtering")
    return prompts


def shard(prompts: Sequence[BenchPrompt], index: int, count: int) -> list[BenchPrompt]:
    """Shard `index` of `count` (0-based): every count-th prompt of the filtered list from `index`."""
    if count < 1 or not 0 <= index < count:
        raise WorkbenchError(f"shard must be i/n with 0 <= i < n, got {index}/{count}")
    out = list(prompts)[index::count]
    if not out:
        raise WorkbenchError(f"shard {index}/{count} holds no prompts ({len(prompts)} prompts in all)")
    return out


def turn_messages(turns: Sequence[str], turn: int, previous_answer: str | None = None) -> list[dict[str, str]]:
    """Chat messages of user turn `turn` (1 or 2): the second is asked after the model's own first
    answer (`previous_answer`), as MT-Bench does (`bench.run`, `bench.calibrate --turns 2`)."""
    if turn == 1:
        return [{"role": "user", "content": turns[0]}]
    return [{"role": "user", "content": turns[0]},
            {"role": "assistant", "content": previous_answer or ""},
            {"role": "user", "content": turns[1]}]
