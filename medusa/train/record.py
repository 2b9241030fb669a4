"""The training record (`<out>/training_record.json`) and the upgrade of older records.

A record holds the run's config, data summaries, accuracies, timings and, under `"provenance"`,
where it ran (`common.provenance.Provenance`: commit, date, device name, torch/transformers
versions, threads, dtype), the schema every result file of the workbench uses.

Records written before that schema kept `git_commit`, `device` (the torch device string) and
`torch_threads` at the top level, and their config named the backbone dtype `backbone_dtype` and
held `threads`. `upgrade_training_record` maps such a record to the current schema (pure and
idempotent); `upgrade_training_record_file` rewrites a file in place (the one-time migration of
committed results, also run by `python -m bench.migrate`). Readers (`analysis.load`) call
`upgrade_training_record` on what they load, so both schemas stay readable.

Only the standard library and `common` are imported here, so readers can use this module without
loading torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from common.io import atomic_write, read_json
from common.provenance import Provenance

RECORD_FILE = "training_record.json"
# Top-level keys of older records, now inside the "provenance" block.
OLD_PROVENANCE_KEYS = ("git_commit", "device", "torch_threads")
# Config fields renamed with their flags (--backbone-dtype -> --dtype).
RENAMED_CONFIG_FIELDS = {"backbone_dtype": "dtype"}
# Config fields that were process settings, now recorded in "provenance".
PROCESS_CONFIG_FIELDS = ("threads",)


def record_json(record: dict[str, Any]) -> str:
    """The record as the file holds it (one-space indent, trailing newline)."""
    return json.dumps(record, indent=1, default=str) + "\n"


def write_training_record(out: str | os.PathLike, record: dict[str, Any], device: str, dtype: Any) -> dict[str, Any]:
    """Add the provenance block to `record` and write it to `<out>/training_record.json` atomically."""
    record = {**record, "provenance": Provenance.collect(str(device), dtype).as_dict()}
    atomic_write(Path(out) / RECORD_FILE, record_json(record))
    return record


def _upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key in PROCESS_CONFIG_FIELDS:
            continue
        new = RENAMED_CONFIG_FIELDS.get(key, key)
        out[new if new not in config else key] = value
    return out


def _old_provenance(record: dict[str, Any]) -> dict[str, Any]:
    """The provenance block an older record implies (what it did not record is left empty)."""
    config = record.get("config") or {}
    cache = record.get("cache") or {}
    threads = record.get("torch_threads", config.get("threads"))
    return Provenance(
        commit=str(record.get("git_commit") or ""),
        date=str(record.get("finished_at") or ""),
        device_name=str(record.get("device") or config.get("device") or ""),
        torch_version="",
        transformers_version="",
        threads=int(threads) if threads is not None else None,  # type: ignore[arg-type]
        dtype=str(cache.get("backbone_dtype") or config.get("backbone_dtype") or config.get("dtype") or ""),
    ).as_dict()


def upgrade_training_record(record: dict[str, Any]) -> dict[str, Any]:
    """`record` in the current schema (a new dict; a current record comes back equal).

    Old top-level `git_commit`/`device`/`torch_threads` become the `"provenance"` block (placed
    where they were), config `backbone_dtype` becomes `dtype` and config `threads` moves into the
    provenance; every other key is kept as it was.
    """
    provenance = record.get("provenance") or _old_provenance(record)
    out: dict[str, Any] = {}
    for key, value in record.items():
        if key in OLD_PROVENANCE_KEYS or key == "provenance":
            out.setdefault("provenance", provenance)
        elif key == "config" and isinstance(value, dict):
            out[key] = _upgrade_config(value)
        else:
            out[key] = value
    out.setdefault("provenance", provenance)
    return out


def upgrade_training_record_file(path: str | os.PathLike) -> bool:
    """Rewrite a training record file in the current schema; True when it changed."""
    record = read_json(path, "training record")
    upgraded = upgrade_training_record(record)
    if upgraded == record:
        return False
    atomic_write(path, record_json(upgraded))
    return True
