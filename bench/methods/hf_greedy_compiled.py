"""`hf-greedy-compiled`: transformers greedy decoding on its static KV cache under torch.compile.

The compiled baseline a user gets from the library alone: ``model.generate(do_sample=False,
cache_implementation="static", compile_config=CompileConfig(...))``. transformers compiles the
one-token decode forward (``model.get_compiled_call``); the prefill stays eager. Its output must
equal `hf-greedy`'s token for token (the `greedy` trait; `bench.summarize` checks every record).

Options (``bench.run --method-option hf-greedy-compiled.mode=engine``):

- ``mode``: the `torch.compile` mode of transformers' `CompileConfig` (its default
  ``reduce-overhead``: CUDA graphs on a GPU, plain inductor on a CPU), or ``engine``: the inductor
  options the Medusa engine compiles with (`medusa.compiled.inductor_options`: frozen weights and
  the C++ GEMM template on a CPU), so that a speedup over this baseline is not a compiler setting.
- ``dynamic``: compile one shape-generic graph (``CompileConfig(dynamic=True)``), so no timed
  record pays a recompile. False keeps transformers' default (``dynamic=None``): a static graph
  first, then a second compile at the first call with another cache length (prompt plus
  max_new_tokens), which in a benchmark lands inside a timed record.

How compiling on a CPU is switched on: `generate` compiles only on CUDA/XPU/... devices unless the
`CompileConfig` carries transformers' `_compile_all_devices` flag (`_valid_auto_compile_criteria`);
this method sets it. The first call compiles (the 2-layer tiny test model on one CPU thread:
4-6 s with inductor's on-disk cache warm, 15-30 s cold; longer for a real model), inside the
harness's untimed warm-up call.

No state is left on the shared model: `generate` keeps its compiled forward and the static
cache's high-water length as attributes of the model (`_compiled_call`, `_last_compile_config`,
`_previous_max_cache_length`); this method lends its own copies to the model for the length of
one call and puts back whatever was there before, so other methods see the model as it was.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch._inductor.config as inductor_config
from torch._dynamo.exc import BackendCompilerFailed
from transformers import CompileConfig

from bench.methods.base import Method, MethodContext, MethodOutput, hf_generate
from common.errors import WorkbenchError
from medusa.compiled import inductor_options

# torch.compile's modes, and ours: the engine's inductor options instead of a mode.
TORCH_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
ENGINE_MODE = "engine"
# What transformers' generate stores on the model once it compiles (read in generation/utils.py
# `_prepare_static_cache` and modeling_utils.py `get_compiled_call`, transformers 5.x).
MODEL_STATE = ("_compiled_call", "_last_compile_config", "_previous_max_cache_length")


@dataclass(frozen=True)
class CompiledOptions:
    """How transformers compiles the decode forward (see the module docstring)."""

    mode: str = "reduce-overhead"  # transformers' CompileConfig default
    dynamic: bool = True

    def __post_init__(self) -> None:
        if self.mode not in (*TORCH_MODES, ENGINE_MODE):
            raise WorkbenchError(f"hf-greedy-compiled option mode={self.mode!r} is not one of "
                                 f"{', '.join((*TORCH_MODES, ENGINE_MODE))}")


def compile_config(options: CompiledOptions, device: torch.device) -> CompileConfig:
    """The `CompileConfig` of `options` on `device`, flagged to compile on a CPU too."""
    dynamic = True if options.dynamic else None
    if options.mode == ENGINE_MODE:
        # the engine's inductor options are applied around each call (`HFGreedyCompiled.generate`):
        # passed as torch.compile options, inductor drops freezing and the C++ GEMM (medusa.compiled)
        config = CompileConfig(dynamic=dynamic, mode=None)
    else:
        config = CompileConfig(dynamic=dynamic, mode=options.mode)
    # transformers' own switch for compiling on devices it does not compile on by default (CPU).
    config._compile_all_devices = True
    return config


class HFGreedyCompiled(Method):
    name = "hf-greedy-compiled"
    greedy = True
    Options = CompiledOptions

    def __init__(self, context: MethodContext, options: CompiledOptions | None = None) -> None:
        super().__init__(context, options)
        self.compile_config = compile_config(self.options, self.backbone.device)
        self.inductor_patch = inductor_options(self.backbone.device) if self.options.mode == ENGINE_MODE else {}
        self.model_state: dict[str, Any] = {}  # this method's share of MODEL_STATE, between calls

    def describe(self) -> dict[str, Any]:
        return {"temperature": 0.0}

    @contextmanager
    def _lent_state(self) -> Iterator[None]:
        """The model carries this method's compile state during one call and its own state after it."""
        model = self.backbone.model
        theirs = {k: vars(model)[k] for k in MODEL_STATE if k in vars(model)}
        for k in theirs:
            delattr(model, k)
        for k, v in self.model_state.items():
            setattr(model, k, v)
        try:
            yield
        finally:
            self.model_state = {k: vars(model)[k] for k in MODEL_STATE if k in vars(model)}
            for k in self.model_state:
                delattr(model, k)
            for k, v in theirs.items():
                setattr(model, k, v)

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, seed: int) -> MethodOutput:
        try:
            with self._lent_state(), inductor_config.patch(self.inductor_patch):
                ids = hf_generate(self.backbone, prompt_ids, max_new_tokens, do_sample=False,
                                  cache_implementation="static", compile_config=self.compile_config)
        except BackendCompilerFailed as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise WorkbenchError(f"{self.name}: torch.compile failed ({type(e).__name__}: {first[:200]}); "
                                 "on a CPU inductor needs a C++ compiler") from e
        return MethodOutput(ids)
