"""bench.methods: one thin file per decoding method behind one Protocol (`bench.methods.base.Method`).

`build_method(name, context)` returns a ready method; `METHODS` lists the names in their default
interleaving order. Greedy methods (`GREEDY`) must reproduce `hf-greedy` token for token.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.methods import ar, hf_greedy, hf_pld, hf_sample, medusa, medusa_typical
from bench.methods.base import Method, MethodContext, MethodOutput, MethodSettings
from medusa.errors import WorkbenchError

BUILDERS: dict[str, Callable[[MethodContext], Method]] = {
    "hf-greedy": hf_greedy.build,
    "hf-pld": hf_pld.build,
    "ar": ar.build,
    "medusa": medusa.build,
    "medusa-typical": medusa_typical.build,
    "hf-sample": hf_sample.build,
}
METHODS = tuple(BUILDERS)
GREEDY = ("hf-greedy", "hf-pld", "ar", "medusa")
SAMPLED = ("medusa-typical", "hf-sample")
NEEDS_HEADS = ("medusa", "medusa-typical")


def check_methods(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Validate method names (unknown or repeated names are an error)."""
    if not names:
        raise WorkbenchError(f"no methods given (choose from {', '.join(METHODS)})")
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        raise WorkbenchError(f"unknown method {unknown[0]!r} (choose from {', '.join(METHODS)})")
    if len(set(names)) != len(names):
        raise WorkbenchError(f"method listed twice in {','.join(names)}")
    return tuple(names)


def build_method(name: str, context: MethodContext) -> Method:
    check_methods([name])
    return BUILDERS[name](context)


__all__ = ["METHODS", "GREEDY", "SAMPLED", "NEEDS_HEADS", "Method", "MethodContext", "MethodOutput",
           "MethodSettings", "build_method", "check_methods"]
