"""A run folder's identity: the settings that change outputs or speeds, which all its records share.

`bench.run` writes the identity into run.json (`bench.records.write_run_json`) and refuses to
resume a folder written with another one; `bench.merge` refuses to join folders of different
identities. Keys: prompts, backbone, heads (folder@weights fingerprint), tree (`Tree.to_dict()`),
max_new_tokens, seed, temperature, posterior_threshold, posterior_alpha, method_options
(method -> its resolved options), device, dtype, threads, compile.

Merging rules: `heads` and `tree` may be blank in a run without Medusa methods and are filled in
when such methods join; `method_options` is a union by method (a method present on both sides
must have the same options); every other key must be equal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import records as R
from common.errors import WorkbenchError

OPTIONAL = ("heads", "tree")  # empty in runs without medusa methods; filled in when they join
PER_METHOD = "method_options"


def _refuse(where: str, key: str, was: Any, now: Any) -> WorkbenchError:
    return WorkbenchError(f"{where} holds records made with {key}={was}, not {now}; use another --out")


def _merge_method_options(was: dict[str, Any], now: dict[str, Any], where: str) -> dict[str, Any]:
    merged = dict(was or {})
    for method, options in (now or {}).items():
        if method in merged and merged[method] != options:
            raise _refuse(where, f"{PER_METHOD}[{method}]", merged[method], options)
        merged[method] = options
    return merged


def merge_identity(before: dict[str, Any], identity: dict[str, Any], where: str) -> dict[str, Any]:
    """`before` with `identity`'s optional blanks and new methods' options filled; refuses any other difference."""
    merged = dict(before)
    for k, v in identity.items():
        was = before.get(k)
        if k == PER_METHOD:
            merged[k] = _merge_method_options(was, v, where)
        elif k in OPTIONAL and (not was or not v):
            merged[k] = was or v
        elif k == "tree":
            if was.get("paths") != v.get("paths"):
                raise _refuse(where, k, was.get("name"), v.get("name"))
        elif was != v:
            raise _refuse(where, k, repr(was), repr(v))
    return merged


def check_identity(out_dir: Path, identity: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the folder's run.json, the merged identity); refuse a folder written with another identity."""
    old = R.read_run_json(out_dir)
    if old is None:
        return None, identity
    return old, merge_identity(old.get("identity", {}), identity, str(out_dir))
