"""The one schema of benchmark results, the token-counting rule, and the atomic, resumable store.

A run folder (``results/bench/<run>/``) holds

- ``run.json``      the run's identity (the settings that change outputs or speeds, with the tree's
                    paths and each method's resolved options under ``method_options``) and one
                    entry per session that wrote to the folder (`common.provenance.Provenance`
                    fields, the methods, the shard and the `BenchConfig`);
- ``records.csv``   one row per (prompt, turn, method, repeat): the columns of `Record`, below;
- ``tokens.jsonl``  one JSON object per row with the same key and the bulky fields of `Tokens`
                    (prompt and output token ids, answer text, per-step accepted lengths and times);
- ``summary.csv``   written by `bench.summarize` (tidy: method, category, metric, value, lo, hi, n);
- ``mismatches.csv`` written by `bench.summarize`: every greedy record that differs from `hf-greedy`.

The key of a row is (question_id, turn, method, repeat). Rows are kept in the canonical order
(prompt_index, turn, repeat, method), so a resumed run, an uninterrupted run and merged shards
produce the same table.

**Token counting, one rule for every method** (`count_new_tokens`): the new tokens are the ids
after the prompt, truncated at and including the first EOS, capped at `max_new_tokens`. It is
applied to transformers `generate` outputs and to the engine's outputs alike.

**Atomic writes.** `RecordStore.append` first appends the record's tokens line to
``tokens.jsonl`` in one `write` call, then rewrites ``records.csv`` through `common.io.atomic_write`.
A record exists once its CSV row exists; a tokens line without a row (the process was killed
between the two writes) or a torn last line is dropped when the store is opened again. So Ctrl-C or
a kill at any moment leaves valid files, and resuming never duplicates a row. A records.csv cut off
by something else (a copy or a disk that stopped short: its last row lacks its newline) loses that
row only, with one `warning:` line, and resuming measures it again; a records.csv damaged anywhere
else (binary data, a short row) is one `error:` line naming the file and line (`read_records`).

**Schema versions.** v2 (now) records each method's own settings as one JSON column,
``method_options``, and in run.json's identity as ``method_options`` (method -> options). v1 had a
``pld_tokens`` column and ``pld_tokens``/``pld_max_ngram`` identity keys; `read_records_csv` and
`read_run_json`, the only readers, upgrade v1 on read, and `bench.migrate` rewrites v1 folders once.
Measurement columns added to v2 later (`LATER_COLUMNS`: ``load_start``/``load_end``, the 1-minute
load average just before and after each timed call, `bench.run`) may be missing from a file
written before them: they read as NaN (unknown), and a resumed run writes them from then on.

Analysis code reads runs through `load_run` (records as a pandas DataFrame, tokens by key).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from bench.records_v1 import upgrade_run_info, upgrade_v1_row, v1_columns, v1_pld_max_ngram
from common.errors import WorkbenchError
from common.io import atomic_write, display, read_json

SCHEMA_VERSION = 2
RUN_FILE = "run.json"
RECORDS_FILE = "records.csv"
TOKENS_FILE = "tokens.jsonl"
SUMMARY_FILE = "summary.csv"
MISMATCHES_FILE = "mismatches.csv"

KEY_COLUMNS = ("question_id", "turn", "method", "repeat")


def count_new_tokens(new_ids: Sequence[int], eos_token_ids: Iterable[int], max_new_tokens: int) -> list[int]:
    """The one token-counting rule: truncate at and including the first EOS, cap at max_new_tokens."""
    eos = set(eos_token_ids)
    out: list[int] = []
    for tok in list(new_ids)[:max_new_tokens]:
        out.append(int(tok))
        if tok in eos:
            break
    return out


@dataclass(frozen=True)
class Record:
    """One row of records.csv: one answer of one method to one turn of one prompt.

    Config columns that do not apply to a method are empty (NaN when read): `tree` for the HF
    methods, eps and delta outside typical acceptance; `method_options` is the method's own
    resolved options as compact JSON (``{}`` when it has none). Engine-only columns (`steps`,
    `accepted_tokens`, the time split) are empty for the transformers methods.
    """

    # identity
    source: str
    prompt_index: int  # position in the full filtered prompt list (before sharding)
    question_id: str
    category: str
    turn: int  # 1-based
    method: str
    repeat: int  # 0-based
    # config
    greedy: bool  # True: must be token-identical to hf-greedy
    backbone: str
    heads: str  # heads folder@weights fingerprint, "untrained", or "" when the method uses none
    tree: str
    node_budget: float  # tokens verified per step, root included
    temperature: float
    posterior_threshold: float  # eps
    posterior_alpha: float  # delta
    method_options: str  # JSON of the method's resolved options, e.g. {"max_ngram":2,"num_tokens":10}
    max_new_tokens: int
    seed: int
    # measurement
    prompt_tokens: int
    new_tokens: int  # count_new_tokens(output)
    wall_s: float  # generation only
    tokens_per_s: float
    stop_reason: str  # "eos" or "length"
    steps: float  # verification steps (engine methods)
    accepted_tokens: float  # sum of per-step accepted lengths (root token included each step)
    mean_accepted_length: float  # accepted_tokens / steps
    prefill_s: float
    heads_s: float
    verify_s: float
    bookkeeping_s: float
    # quality under the backbone at the run's temperature (computed after the timer stops)
    loglik_per_token: float  # mean log p_T(token | prefix)
    argmax_agreement: float  # share of tokens equal to the backbone's argmax given their prefix
    # the machine: 1-minute load average just before and just after the timed call (`LOAD_COLUMNS`)
    load_start: float
    load_end: float
    # provenance
    commit: str
    date: str
    device_name: str
    torch_version: str
    transformers_version: str
    threads: int
    dtype: str

    @property
    def key(self) -> tuple[str, int, str, int]:
        return (self.question_id, self.turn, self.method, self.repeat)


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Record))
# v2 columns added after the first v2 files were written: a file without them is still v2, and
# they read as NaN (unknown) there. Only measurements may be added this way, never a setting.
LOAD_COLUMNS: tuple[str, ...] = ("load_start", "load_end")
LATER_COLUMNS: frozenset[str] = frozenset(LOAD_COLUMNS)
# Columns that change from one execution to the next even with identical outputs.
MACHINE_COLUMNS: frozenset[str] = frozenset({
    "wall_s", "tokens_per_s", "prefill_s", "heads_s", "verify_s", "bookkeeping_s",
    "commit", "date", "device_name", "torch_version", "transformers_version", "threads", *LOAD_COLUMNS,
})
_INT_COLUMNS = {f.name for f in fields(Record) if f.type in ("int",)}
_BOOL_COLUMNS = {f.name for f in fields(Record) if f.type in ("bool",)}
_FLOAT_COLUMNS = {f.name for f in fields(Record) if f.type in ("float",)}


@dataclass(frozen=True)
class Tokens:
    """One line of tokens.jsonl: the key plus the record's token ids, text and per-step stats."""

    question_id: str
    turn: int
    method: str
    repeat: int
    prompt_ids: list[int]
    output_ids: list[int]  # exactly the counted new tokens
    text: str
    accepted_lengths: list[int] = field(default_factory=list)
    heads_s: list[float] = field(default_factory=list)
    verify_s: list[float] = field(default_factory=list)
    bookkeeping_s: list[float] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, int, str, int]:
        return (self.question_id, self.turn, self.method, self.repeat)


def record_key(d: dict[str, Any]) -> tuple[str, int, str, int]:
    return (str(d["question_id"]), int(d["turn"]), str(d["method"]), int(d["repeat"]))


def _order(row: dict[str, Any]) -> tuple[int, int, int, str]:
    return (int(row["prompt_index"]), int(row["turn"]), int(row["repeat"]), str(row["method"]))


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _parse(name: str, text: str) -> Any:
    if name in _INT_COLUMNS:
        return int(text)
    if name in _BOOL_COLUMNS:
        return text == "True"
    if name in _FLOAT_COLUMNS:
        return float(text) if text != "" else float("nan")
    return text


def records_csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        # A row made before a later column existed (`LATER_COLUMNS`) leaves it empty, as the reader does.
        writer.writerow({c: _cell(row.get(c) if c in LATER_COLUMNS else row[c]) for c in COLUMNS})
    return buf.getvalue()


_FIRST_V2_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if c not in LATER_COLUMNS)
V1_COLUMNS: tuple[str, ...] = v1_columns(_FIRST_V2_COLUMNS)


def records_schema(columns: Sequence[str]) -> str | None:
    """`"v2"` or `"v1"` for a records.csv header (`LATER_COLUMNS` present or not), else None.

    The one test of a header's schema (readers here, `bench.migrate`): v1 files never had the
    later columns, but a v1 header with them is read as v1 all the same.
    """
    core = tuple(c for c in columns if c not in LATER_COLUMNS)
    if len(set(columns)) != len(columns):
        return None
    if core == _FIRST_V2_COLUMNS:
        return "v2"
    if core == V1_COLUMNS:
        return "v1"
    return None


def _damaged(path: Path, where: str) -> WorkbenchError:
    """The one error line for a records.csv that cannot be read, with what to do about it."""
    return WorkbenchError(
        f"{display(path)} is damaged ({where}); restore it from a copy, or delete the damaged lines and resume "
        f"with `python -m bench.run ... --out {display(path.parent)}` to measure those records again "
        f"({TOKENS_FILE} keeps their outputs but not their timings)"
    )


def _torn_row(tail: bytes, columns: Sequence[str]) -> str:
    """`question 81, turn 1, medusa, repeat 0`: the key of a cut-off row, as far as it got."""
    cells = next(csv.reader([tail.decode("utf-8", "replace")]), [])
    named = dict(zip(columns, cells))
    shown = [f"question {named['question_id']}" if "question_id" in named else "",
             f"turn {named['turn']}" if "turn" in named else "", named.get("method", ""),
             f"repeat {named['repeat']}" if "repeat" in named else ""]
    return ", ".join(x for x in shown if x) or "its key was cut off too"


def read_records(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """(rows of a records.csv as typed dicts, the key of a cut-off last row that was dropped, or None).

    Every row the writer writes ends with a newline, so text after the last newline is a row cut
    off mid-write (a copy or disk that stopped short): it is dropped, the rows before it are kept,
    and its record, still missing, is measured again when the run resumes. Anything else that
    cannot be read (binary data, a short row in the middle, an unparsable value) is one
    `WorkbenchError` line naming the file and line. v1 files are upgraded, other schemas refused.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise WorkbenchError(f"cannot read {display(path)}: {e.strerror}") from None
    cut = data.rfind(b"\n") + 1
    complete, tail = data[:cut], data[cut:]
    try:
        text = complete.decode("utf-8")
    except UnicodeDecodeError as e:
        line = complete.count(b"\n", 0, e.start) + 1
        raise _damaged(path, f"binary data on line {line}") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = tuple(reader.fieldnames or ())
    schema = records_schema(columns)
    v1_max_ngram = None  # set for a v1 file: its rows are upgraded with the run's hf-pld max_ngram
    absent = {c: "" for c in LATER_COLUMNS if c not in columns}  # columns older files lack: NaN
    if schema == "v1":
        identity = (read_run_json(path.parent) or {}).get("identity") or {}
        v1_max_ngram = v1_pld_max_ngram(identity)
    elif schema == "v2":
        pass
    elif not columns and tail.strip():
        raise _damaged(path, "its header line is cut off or unreadable")
    else:
        raise WorkbenchError(f"{path} does not have the schema v{SCHEMA_VERSION} columns; use a new --out")
    rows = []
    for raw in reader:
        try:
            if None in raw or None in raw.values():
                cells = sum(v is not None for k, v in raw.items() if k is not None) + len(raw.get(None) or ())
                raise ValueError(f"{cells} cells, the header has {len(columns)}")
            row = raw if v1_max_ngram is None else upgrade_v1_row(raw, v1_max_ngram)
            row = {**absent, **row}
            rows.append({c: _parse(c, row[c]) for c in COLUMNS})
        except (KeyError, TypeError, ValueError) as e:
            raise _damaged(path, f"line {reader.line_num} cannot be read: {e}") from None
    torn = _torn_row(tail, columns) if tail.strip() else None
    return rows, torn


# Cut-off rows already reported in this process (one warning per file state, not per reader).
_REPORTED: set[tuple[str, int, int]] = set()


def _report_torn(path: Path, torn: str, then: str) -> None:
    stat = path.stat()
    state = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if state not in _REPORTED:
        _REPORTED.add(state)
        print(f"warning: {display(path)}: its last row ({torn}) was cut off; dropped it, {then}", file=sys.stderr)


def read_records_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a records.csv as typed dicts (`read_records`), warning once about a cut-off last row."""
    rows, torn = read_records(path)
    if torn:
        _report_torn(path, torn, f"every other row is read (resume with --out {display(path.parent)} to measure it again)")
    return rows


def read_tokens_jsonl(path: Path) -> dict[tuple[str, int, str, int], dict[str, Any]]:
    """Tokens lines by key; a torn or unreadable line (killed mid-write) is skipped, the last copy of a key wins."""
    out: dict[tuple[str, int, str, int], dict[str, Any]] = {}
    if not path.is_file():
        return out
    for line in path.read_bytes().splitlines():
        try:
            d = json.loads(line.decode("utf-8"))
            out[record_key(d)] = d
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return out


class RecordStore:
    """The records and tokens of one run folder, kept consistent on disk after every append."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WorkbenchError(f"cannot create run folder {self.dir}: {e.strerror}") from None
        self.records_path = self.dir / RECORDS_FILE
        self.tokens_path = self.dir / TOKENS_FILE
        self.rows: dict[tuple[str, int, str, int], dict[str, Any]] = {}
        torn = None
        if self.records_path.is_file():
            rows, torn = read_records(self.records_path)
            self.rows = {record_key(row): row for row in rows}
        tokens = read_tokens_jsonl(self.tokens_path)
        self.tokens = {k: v for k, v in tokens.items() if k in self.rows}
        missing = [k for k in self.rows if k not in self.tokens]
        if missing:
            raise WorkbenchError(f"{self.tokens_path} lacks the token ids of {len(missing)} records (first: {missing[0]})")
        # Drop orphan and torn lines so the file holds exactly one line per record.
        self._write_tokens()
        if torn:
            _report_torn(self.records_path, torn, "it is measured again when this run resumes")
            self._write_records()

    def __contains__(self, key: tuple[str, int, str, int]) -> bool:
        return key in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def ordered_rows(self) -> list[dict[str, Any]]:
        return sorted(self.rows.values(), key=_order)

    def _write_tokens(self) -> None:
        order = [record_key(r) for r in self.ordered_rows()]
        atomic_write(self.tokens_path, "".join(json.dumps(self.tokens[k]) + "\n" for k in order))

    def _write_records(self) -> None:
        atomic_write(self.records_path, records_csv_text(self.ordered_rows()))

    def append(self, record: Record, tokens: Tokens) -> None:
        if record.key != tokens.key:
            raise ValueError(f"record key {record.key} != tokens key {tokens.key}")
        if record.key in self.rows:
            raise ValueError(f"record {record.key} is already stored")
        line = (json.dumps(asdict(tokens)) + "\n").encode("utf-8")
        fd = os.open(self.tokens_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        row = asdict(record)
        self.rows[record.key] = row
        self.tokens[record.key] = asdict(tokens)
        self._write_records()

    def replace_all(self, rows: Iterable[dict[str, Any]], tokens: dict[tuple[str, int, str, int], dict[str, Any]]) -> None:
        """Write a whole table at once (used by bench.merge)."""
        self.rows = {record_key(r): r for r in rows}
        self.tokens = {k: tokens[k] for k in self.rows}
        self._write_tokens()
        self._write_records()


def read_run_json(directory: str | os.PathLike) -> dict[str, Any] | None:
    """A run folder's run.json in the current schema (v1 upgraded), or None when there is none."""
    path = Path(directory) / RUN_FILE
    if not path.is_file():
        return None
    info = read_json(path, "run settings")
    if not isinstance(info, dict):
        raise WorkbenchError(f"{display(path)} is not a JSON object")
    return upgrade_run_info(info, SCHEMA_VERSION)


def write_run_json(directory: str | os.PathLike, data: dict[str, Any]) -> None:
    data = {k: v for k, v in data.items() if k != "schema_version"}
    atomic_write(Path(directory) / RUN_FILE, json.dumps({"schema_version": SCHEMA_VERSION, **data}, indent=1) + "\n")


def load_run(directory: str | os.PathLike) -> tuple[pd.DataFrame, dict[tuple[str, int, str, int], dict[str, Any]], dict[str, Any]]:
    """(records DataFrame in canonical order, tokens by key, run.json dict) of a run folder."""
    directory = Path(directory)
    if not (directory / RECORDS_FILE).is_file():
        raise WorkbenchError(f"no {RECORDS_FILE} in {directory} (is it a bench run folder?)")
    rows = sorted(read_records_csv(directory / RECORDS_FILE), key=_order)
    tokens = read_tokens_jsonl(directory / TOKENS_FILE)
    missing = [record_key(r) for r in rows if record_key(r) not in tokens]
    if missing:
        raise WorkbenchError(f"{directory / TOKENS_FILE} lacks the token ids of {len(missing)} records")
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return frame, tokens, read_run_json(directory) or {}
