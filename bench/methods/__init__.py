"""bench.methods: one small file per decoding method, each a `bench.methods.base.Method` subclass.

`METHODS` maps each `--methods` name to its class, in the default interleaving order. A method's
traits are its class attributes (`greedy`: must reproduce hf-greedy token for token; `needs_heads`,
`needs_tree`: what the harness loads for it) and its own settings are its `Options` dataclass.
A new method is one new file plus one line in `_CLASSES` below.

    build_method("hf-pld", context, resolve_options("hf-pld", {"num_tokens": "8"}))
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

from bench.methods.ar import AR, ARCompiled
from bench.methods.base import Method, MethodContext, MethodOutput, MethodSettings, NoOptions
from bench.methods.hf_greedy import HFGreedy
from bench.methods.hf_greedy_compiled import HFGreedyCompiled
from bench.methods.hf_pld import HFPromptLookup
from bench.methods.hf_sample import HFSample
from bench.methods.medusa import Medusa, MedusaCompiled
from bench.methods.medusa_dynamic import MedusaDynamic
from bench.methods.medusa_lookup import MedusaLookup
from bench.methods.medusa_sample import MedusaSample
from bench.methods.medusa_typical import MedusaTypical
from common.errors import WorkbenchError

_CLASSES: tuple[type[Method], ...] = (HFGreedy, HFPromptLookup, AR, Medusa, MedusaTypical, HFSample, MedusaSample,
                                      HFGreedyCompiled, ARCompiled, MedusaCompiled, MedusaDynamic, MedusaLookup)
METHODS: dict[str, type[Method]] = {cls.name: cls for cls in _CLASSES}


def check_methods(names: Iterable[str]) -> tuple[str, ...]:
    """Validate method names (unknown or repeated names are an error)."""
    names = tuple(names)
    if not names:
        raise WorkbenchError(f"no methods given (choose from {', '.join(METHODS)})")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise WorkbenchError(f"unknown method {unknown[0]!r} (choose from {', '.join(METHODS)})")
    if len(set(names)) != len(names):
        raise WorkbenchError(f"method listed twice in {','.join(names)}")
    return names


def _convert(method: str, key: str, value: Any, default: Any) -> Any:
    """`value` (a string from the command line, or already typed) as the type of `default`."""
    if not isinstance(value, str) or isinstance(default, str):
        return value
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        return type(default)(value)
    except ValueError:
        raise WorkbenchError(f"{method} option {key}={value!r} is not a {type(default).__name__}") from None


def resolve_options(method: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """The method's `Options` with its defaults replaced by `overrides` (unknown keys are an error)."""
    check_methods([method])
    cls = METHODS[method].Options
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        known = ", ".join(defaults) or "none"
        raise WorkbenchError(f"method {method} has no option {unknown[0]!r} (its options: {known})")
    return cls(**{k: _convert(method, k, v, defaults[k]) for k, v in overrides.items()})


def options_dict(options: Any) -> dict[str, Any]:
    """A method's resolved options as a plain dict (what run.json records)."""
    return dataclasses.asdict(options)


def options_json(options: Any) -> str:
    """A method's resolved options as compact JSON (the records' `method_options` column)."""
    return json.dumps(options_dict(options), sort_keys=True, separators=(",", ":"))


def build_method(name: str, context: MethodContext, options: Any = None) -> Method:
    """A ready method (`options`: its resolved `Options`; None = the defaults)."""
    check_methods([name])
    return METHODS[name](context, options if options is not None else resolve_options(name))


__all__ = ["METHODS", "Method", "MethodContext", "MethodOutput", "MethodSettings", "NoOptions", "build_method",
           "check_methods", "options_dict", "options_json", "resolve_options"]
