"""Join the run folders of `bench.run --shard i/n` (or any runs of the same settings) into one.

    python -m bench.merge --out results/bench/mtbench results/bench/mtbench-0of2 results/bench/mtbench-1of2

The shards must share their run identity (`bench.identity`: backbone, heads, tree, max new tokens,
temperature, eps, delta, method options, seed, device, dtype, threads). Rows are unioned by key
(question_id, turn, method, repeat) and written in the canonical order, so the merged table equals
the table of one unsharded run apart from timings and provenance. A key present in two inputs must
have identical output ids, else the merge is refused. The output folder must be new (not one of
the inputs); its run.json lists every input session.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import records as R
from bench.identity import merge_identity
from common.cli import Parser, run_cli
from common.errors import WorkbenchError

Key = tuple[str, int, str, int]


def _check_paths(out: Path, inputs: Sequence[str | Path]) -> None:
    if not inputs:
        raise WorkbenchError("give at least one run folder to merge")
    if any(Path(i).resolve() == out.resolve() for i in inputs):
        raise WorkbenchError(f"output folder {out} is also an input; merge into a new folder")
    if (out / R.RECORDS_FILE).exists():
        raise WorkbenchError(f"{out} already holds records; merge into a new folder")


def _add_rows(folder: Path, rows: dict[Key, dict[str, Any]], tokens: dict[Key, dict[str, Any]]) -> None:
    """Add one folder's rows and tokens; a key already there must have the same output ids."""
    their_tokens = R.read_tokens_jsonl(folder / R.TOKENS_FILE)
    for row in R.read_records_csv(folder / R.RECORDS_FILE):
        key = R.record_key(row)
        if key not in their_tokens:
            raise WorkbenchError(f"{folder / R.TOKENS_FILE} lacks the token ids of record {key}")
        if key in rows and tokens[key]["output_ids"] != their_tokens[key]["output_ids"]:
            raise WorkbenchError(f"record {key} differs between inputs; refusing to merge")
        rows.setdefault(key, row)
        tokens.setdefault(key, their_tokens[key])


def merge_runs(out: str | Path, inputs: Sequence[str | Path]) -> int:
    """Merge run folders into `out`; returns the number of rows written."""
    out = Path(out)
    _check_paths(out, inputs)
    identity = None
    sessions: list[dict[str, Any]] = []
    rows: dict[Key, dict[str, Any]] = {}
    tokens: dict[Key, dict[str, Any]] = {}
    for folder in map(Path, inputs):
        info = R.read_run_json(folder)
        if info is None or not (folder / R.RECORDS_FILE).is_file():
            raise WorkbenchError(f"{folder} is not a bench run folder (no {R.RUN_FILE} or {R.RECORDS_FILE})")
        identity = info["identity"] if identity is None else merge_identity(identity, info["identity"], str(folder))
        _add_rows(folder, rows, tokens)
        sessions.extend(info.get("sessions", []))
    merged = R.RecordStore(out)
    merged.replace_all(rows.values(), tokens)
    R.write_run_json(out, {"identity": identity, "sessions": sessions, "merged_from": [str(i) for i in inputs]})
    return len(rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m bench.merge", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="new run folder for the merged table")
    p.add_argument("inputs", nargs="+", help="run folders (shards) to join")
    a = p.parse_args(argv)
    n = merge_runs(a.out, a.inputs)
    print(f"{n} records -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
