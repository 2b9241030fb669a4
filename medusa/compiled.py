"""Compiled forwards for the engine: inductor settings per device, and an eager fallback.

Why: on a CPU the eager matrix kernels make a 5-token verify cost ~2x a 1-token step (MKL packs
the weights again on every call once there are 2+ rows). Inductor with `freezing` (weights become
constants, pre-packed once) and its C++ GEMM template (`max_autotune`, backends `CPP,ATEN`) brings
small-row linears near the weight-read floor. On a GPU the cost of a small step is kernel
launches, which CUDA graphs remove.

What is compiled (shapes fixed per tree, so each tree compiles once per context bucket):

    verify   ids (1, N), positions (1, N), mask (1, 1, N, C), full-width static cache, internal (M,)
             -> node hidden states (N, H), logits of the internal nodes (M, V)
    heads    hidden (H,) -> top-k token ids (K, top_k)        (`CompiledProposer`)

`Compiled` wraps a function: the first call compiles; if compiling fails, one `warning:` line
goes to stderr and that wrapper runs the eager function from then on (same answers, eager speed).
Inductor's on-disk caches (FX graph, autotuning) are left at torch's defaults (on), so a second
process with the same shapes starts faster than the first; `bench.latency --mode compiled`
reports the compile time of each shape.

The options are applied as a scoped `torch._inductor.config.patch` around each call of a compiled
function (where compiling happens), so nothing process-wide is left changed. (Passing them as
`torch.compile(options=...)` instead silently loses `freezing` and the C++ GEMM template on
torch 2.13: measured on SmolLM2, 2 tokens, 1 thread, 90.5 ms that way vs 24.0 ms patched; LOG.md.)
Freezing bypasses inductor's FX graph cache, so every process compiles its shapes again.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch._dynamo.config as dynamo_config
import torch._inductor.config as inductor_config

# CPU: pre-packed frozen weights and inductor's C++ GEMM template (with ATen as its fallback).
CPU_OPTIONS: dict[str, Any] = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}
# GPU: CUDA graphs (what mode="reduce-overhead" turns on). No freezing there: it would fold the KV
# cache buffers, which CUDA graphs need marked as static addresses, into the graph as constants.
CUDA_OPTIONS: dict[str, Any] = {"triton.cudagraphs": True}
# One graph per tree size and cache bucket: dynamo's default of 8 graphs per function would make
# the 9th shape (a latency profile measures 13) run eagerly without a word.
MAX_GRAPHS = 64


def inductor_options(device: torch.device | str) -> dict[str, Any]:
    """The inductor options this project compiles with on `device`."""
    return dict(CUDA_OPTIONS if torch.device(device).type == "cuda" else CPU_OPTIONS)


class Compiled:
    """`fn` under `torch.compile` (static shapes), falling back to `fn` itself if compiling fails.

    `compile_s` sums the wall time of calls that compiled a new shape (first call per shape), so
    callers can report cold and warm start-up times.
    """

    def __init__(self, fn: Callable[..., Any], name: str, device: torch.device | str) -> None:
        self.eager = fn
        self.name = name
        self.options = inductor_options(device)
        self.compiled = torch.compile(fn, dynamic=False)
        self.failed: str | None = None
        self.compile_s = 0.0
        self._seen: set[tuple[Any, ...]] = set()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed is not None:
            return self.eager(*args, **kwargs)
        key = _shape_key(args, kwargs)
        first = key not in self._seen
        t0 = time.perf_counter()
        try:
            with inductor_config.patch(self.options), dynamo_config.patch(recompile_limit=MAX_GRAPHS):
                out = self.compiled(*args, **kwargs)
        except Exception as error:  # any compiler failure: answer eagerly, say so once
            self.failed = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            print(f"warning: compiling {self.name} failed ({self.failed[:200]}); running it eagerly", file=sys.stderr)
            return self.eager(*args, **kwargs)
        if first:
            self._seen.add(key)
            self.compile_s += time.perf_counter() - t0
        return out


def _shape_key(args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Shapes of the tensor arguments (and of tensors in dict arguments): one compiled graph each."""
    key: list[Any] = []
    for value in [*args, *kwargs.values()]:
        if isinstance(value, torch.Tensor):
            key.append(tuple(value.shape))
        elif isinstance(value, dict):
            key.extend(tuple(v.shape) for v in value.values() if isinstance(v, torch.Tensor))
    return tuple(key)


class CompiledProposer:
    """A proposer whose heads forward + top-k runs compiled: one batched projection for all K heads.

    Wraps any module-backed proposer with `forward(hidden) -> (K, V)` logits (e.g. `MedusaHeads`);
    proposals are exactly the eager ones up to floating-point rounding of near-ties, and only change
    which candidates are tried, never what is accepted.
    """

    def __init__(self, heads: Any, device: torch.device | str) -> None:
        self.heads = heads
        self.num_heads = heads.num_heads
        self._fns: dict[tuple[int, bool], Compiled] = {}
        self.device = device

    def _fn(self, top_k: int, scored: bool) -> Compiled:
        key = (top_k, scored)
        if key not in self._fns:
            heads = self.heads
            # Heads over a sub-vocabulary (`medusa.subvocab`) rank their own columns: map back to token ids.
            ids = getattr(heads, "token_ids", None)

            def as_tokens(index: torch.Tensor) -> torch.Tensor:
                return ids[index] if ids is not None else index

            def propose(hidden: torch.Tensor) -> torch.Tensor:
                return as_tokens(torch.topk(heads(hidden), top_k, dim=-1).indices)

            def propose_scored(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                top = torch.topk(torch.softmax(heads(hidden).float(), dim=-1), top_k, dim=-1)
                return as_tokens(top.indices), top.values

            fn = propose_scored if scored else propose
            self._fns[key] = Compiled(fn, f"heads top-{top_k}{' scored' if scored else ''}", self.device)
        return self._fns[key]

    @property
    def compile_s(self) -> float:
        return sum(f.compile_s for f in self._fns.values())

    def propose(self, hidden: torch.Tensor, token_ids: Sequence[int], top_k: int) -> torch.Tensor:
        """hidden (H,) -> token ids (K, top_k)."""
        del token_ids
        with torch.no_grad():
            return self._fn(top_k, False)(hidden)

    def propose_scored(self, hidden: torch.Tensor, token_ids: Sequence[int], top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden (H,) -> token ids (K, top_k) and their softmax probabilities (K, top_k)."""
        del token_ids
        with torch.no_grad():
            return self._fn(top_k, True)(hidden)

    def propose_batch(self, hidden: torch.Tensor, top_k: int) -> torch.Tensor:
        """hidden (A, H) -> token ids (A, K, top_k) (one compiled graph per batch size)."""
        with torch.no_grad():
            return self._fn(top_k, False)(hidden).transpose(0, 1)
