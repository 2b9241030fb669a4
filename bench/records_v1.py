"""Benchmark records of schema v1, read as v2: `pld_tokens` -> each method's `method_options`.

v1 runs (before the harness kept a method's settings with the method) carried hf-pld's settings as
a `pld_tokens` records column and `pld_tokens`/`pld_max_ngram` identity keys. `bench.records`
upgrades such files on read through these functions; `python -m bench.migrate` rewrites them once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

_V1_PLD_METHOD = "hf-pld"
_V1_PLD_MAX_NGRAM = 2  # the only value v1 runs used when run.json does not say


def _v1_pld_options(num_tokens: Any, max_ngram: Any) -> dict[str, int]:
    """hf-pld's options in v2 form (the field names of `bench.methods.hf_pld.PLDOptions`)."""
    return {"num_tokens": int(num_tokens), "max_ngram": int(max_ngram)}


def upgrade_v1_row(raw: dict[str, str], pld_max_ngram: int = _V1_PLD_MAX_NGRAM) -> dict[str, str]:
    """A v1 records.csv row (strings) in v2 form: `pld_tokens` -> `method_options` JSON.

    v1 rows did not carry hf-pld's `max_ngram`: it comes from the run's identity.
    """
    row = {c: v for c, v in raw.items() if c != "pld_tokens"}
    options: dict[str, Any] = {}
    if raw.get("pld_tokens", "") != "":
        options = _v1_pld_options(float(raw["pld_tokens"]), pld_max_ngram)
    row["method_options"] = json.dumps(options, sort_keys=True, separators=(",", ":"))
    return row


def v1_columns(columns: Sequence[str]) -> tuple[str, ...]:
    """The v1 header of a records.csv whose v2 columns are `columns`."""
    return tuple("pld_tokens" if c == "method_options" else c for c in columns)


def v1_pld_max_ngram(identity: dict[str, Any]) -> int:
    """hf-pld's max_ngram of a v1 run (from its upgraded identity, else the only value v1 used)."""
    pld = (identity.get("method_options") or {}).get(_V1_PLD_METHOD) or {}
    return int(pld.get("max_ngram", _V1_PLD_MAX_NGRAM))


def upgrade_run_info(info: dict[str, Any], schema_version: int) -> dict[str, Any]:
    """A v1 run.json in v2 form: the pld identity and session-config keys -> `method_options`."""
    if int(info.get("schema_version", 1)) >= 2:
        return info
    sessions = info.get("sessions", [])
    ran_pld = any(_V1_PLD_METHOD in s.get("methods", ()) for s in sessions)

    def pld_options(d: dict[str, Any]) -> dict[str, Any]:
        return {_V1_PLD_METHOD: _v1_pld_options(d.get("pld_tokens", 10), d.get("pld_max_ngram", _V1_PLD_MAX_NGRAM))}

    def upgrade(d: dict[str, Any], has_pld: bool) -> dict[str, Any]:
        """`d` with `method_options` in place of the pld keys (key order otherwise kept)."""
        out: dict[str, Any] = {}
        for k, v in d.items():
            if k in ("pld_tokens", "pld_max_ngram"):
                out.setdefault("method_options", pld_options(d) if has_pld else {})
            else:
                out[k] = v
        return out

    upgraded = dict(info, schema_version=schema_version)
    if isinstance(info.get("identity"), dict):
        upgraded["identity"] = upgrade(info["identity"], ran_pld)
    upgraded["sessions"] = [dict(s, config=upgrade(s["config"], _V1_PLD_METHOD in s.get("methods", ())))
                            if isinstance(s.get("config"), dict) else s for s in sessions]
    return upgraded
