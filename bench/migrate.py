"""One-time migration of result files written by older schemas to the current one.

Readers already accept the older layouts (they upgrade on read); this rewrites the files on disk
so that committed results match the schema the code documents. Idempotent: a second run changes
nothing. Each step names what it changed.

    python -m bench.migrate                 # everything under results/
    python -m bench.migrate --results path  # another results folder

Steps:
- latency profiles (`results/latency/*.csv`): provenance columns `device`/`torch`/`transformers`
  -> `device_name`/`torch_version`/`transformers_version` (`common.provenance`), columns in the
  order `bench.latency.COLUMNS`.
- benchmark runs (`results/bench/*/`, `migrate_records`): records schema v1 -> v2
  (`bench.records`): the `pld_tokens` column becomes `method_options` (each method's own options as
  JSON, e.g. `{"max_ngram":2,"num_tokens":10}` for hf-pld, `{}` for the others); run.json's
  identity and session configs trade `pld_tokens`/`pld_max_ngram` for `method_options`
  (`{"hf-pld": {...}}` where hf-pld ran). Measurements are untouched, so summaries stay valid
  (`analysis.load` still takes a summary that counts the same records as current).
- training records (`results/heads/*/training_record.json`,
  `medusa.train.record.upgrade_training_record`): top-level `git_commit`/`device`/`torch_threads`
  -> one `"provenance"` block; config `backbone_dtype` -> `dtype`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bench import records as R
from bench.latency import COLUMNS as LATENCY_COLUMNS
from common.cli import Parser, run_cli
from common.io import atomic_write, display, read_json, write_csv
from common.paths import RESULTS
from medusa.train.record import upgrade_training_record_file
from trees.cost import load_table


def migrate_latency(path: Path) -> bool:
    """Rewrite one latency profile in the current schema; True if the file changed."""
    before = pd.read_csv(path)
    table = load_table(path)
    table = table[[c for c in LATENCY_COLUMNS if c in table.columns]
                  + [c for c in table.columns if c not in LATENCY_COLUMNS]]
    if list(before.columns) == list(table.columns) and before.astype(str).equals(table.astype(str)):
        return False
    write_csv(table, path)
    return True


def migrate_records(run_dir: Path) -> bool:
    """Rewrite one benchmark run folder in records schema v2; True if a file changed."""
    records, run_json = run_dir / R.RECORDS_FILE, run_dir / R.RUN_FILE
    with open(records, encoding="utf-8", newline="") as f:
        header = tuple(f.readline().strip().split(","))
    old_records = R.records_schema(header) == "v1"
    raw_info = read_json(run_json, "run settings") if run_json.is_file() else {}
    old_info = isinstance(raw_info, dict) and int(raw_info.get("schema_version", 1)) < R.SCHEMA_VERSION
    if not (old_records or old_info):
        return False
    if old_records:
        rows = R.read_records_csv(records)  # upgraded on read, with run.json's v1 identity
        atomic_write(records, R.records_csv_text(rows))
    if old_info:
        R.write_run_json(run_dir, R.read_run_json(run_dir) or {})
    return True


def migrate(results: Path) -> list[str]:
    """Every migration step over `results`; returns one line per file changed."""
    changed = []
    for path in sorted((results / "latency").glob("*.csv")):
        if migrate_latency(path):
            changed.append(f"latency profile {display(path)}: provenance columns renamed")
    for run_dir in sorted(p.parent for p in (results / "bench").glob(f"*/{R.RECORDS_FILE}")):
        if migrate_records(run_dir):
            changed.append(f"benchmark run {display(run_dir)}: pld_tokens -> method_options (records schema v2)")
    for path in sorted((results / "heads").glob("*/training_record.json")):
        if upgrade_training_record_file(path):
            changed.append(f"training record {display(path)}: provenance block")
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m bench.migrate", description=__doc__.split("\n")[0])
    p.add_argument("--results", default=str(RESULTS), help="results folder (default results/)")
    args = p.parse_args(argv)
    changed = migrate(Path(args.results))
    print("\n".join(changed) if changed else "nothing to migrate")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
