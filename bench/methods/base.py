"""The one Protocol every benchmark method implements, and what the harness hands to a method.

A method turns prompt token ids into new token ids; the harness (`bench.run`) times that call and
nothing else, applies the one token-counting rule (`bench.records.count_new_tokens`) to whatever the
method returns, and records the method's `describe()` as the row's config columns.

    class Method(Protocol):
        name: str          # the --methods name, e.g. "medusa"
        greedy: bool       # True: the output must equal hf-greedy's token for token
        def describe(self) -> dict      # config columns: heads, tree, node_budget, temperature, ...
        def generate(self, prompt_ids, max_new_tokens, seed) -> MethodOutput

Each method lives in its own small file (`hf_greedy.py`, `hf_pld.py`, `hf_sample.py`, `ar.py`,
`medusa.py`, `medusa_typical.py`) with a `build(context) -> Method` function; `bench.methods`
maps names to builders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from medusa.acceptance import AcceptanceConfig
from medusa.backbone import Backbone
from medusa.decode import DecodeConfig, Proposer, StepStats, generate
from medusa.errors import WorkbenchError
from medusa.tree_attention import tree_buffers
from trees.tree import Tree


@dataclass(frozen=True)
class MethodOutput:
    """Raw new token ids (the harness truncates and caps them) and the engine's per-step stats."""

    new_ids: list[int]
    steps: list[StepStats] | None = None
    prefill_s: float = float("nan")


@dataclass(frozen=True)
class MethodSettings:
    """The run settings methods read; each default lives in `bench.run.BenchConfig`."""

    temperature: float
    posterior_threshold: float
    posterior_alpha: float
    pld_tokens: int
    pld_max_ngram: int
    compile: bool = False


@dataclass
class MethodContext:
    """Everything a method may use: the loaded backbone, heads, tree and the run settings."""

    backbone: Backbone
    settings: MethodSettings
    heads: Proposer | None = None
    heads_name: str = ""
    tree: Tree | None = None


class Method(Protocol):
    name: str
    greedy: bool

    def describe(self) -> dict[str, Any]:
        """Config columns of the records this method writes (see `bench.records.Record`)."""
        ...

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, seed: int) -> MethodOutput:
        """New token ids for one prompt; the only call the harness times."""
        ...


# Settings that neutralise anything a model's generation_config might add to the HF baselines.
HF_NEUTRAL = {"num_beams": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}


def hf_generate(backbone: Backbone, prompt_ids: Sequence[int], max_new_tokens: int, **kwargs: Any) -> list[int]:
    """transformers `model.generate` on one prompt, stopping on the backbone's EOS ids; new ids only."""
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=backbone.device)
    eos = list(backbone.eos_token_ids)
    pad = backbone.config.pad_token_id
    with torch.inference_mode():
        out = backbone.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            eos_token_id=eos or None,
            pad_token_id=pad if pad is not None else (eos[0] if eos else 0),
            **HF_NEUTRAL,
            **kwargs,
        )
    return out[0, ids.shape[1]:].tolist()


class EngineMethod:
    """A method run by our engine (`medusa.decode.generate`) with a fixed tree and acceptance rule."""

    def __init__(self, name: str, context: MethodContext, tree: Tree, acceptance: AcceptanceConfig) -> None:
        self.name = name
        self.greedy = acceptance.greedy
        self.backbone = context.backbone
        self.heads = context.heads if tree.depth > 0 else None
        self.heads_name = context.heads_name if tree.depth > 0 else ""
        self.acceptance = acceptance
        self.compile = context.settings.compile
        if tree.depth > 0:
            if self.heads is None:
                raise WorkbenchError(f"method {name} needs Medusa heads but none were loaded")
            tree.check_fits(self.heads.num_heads)
        # Built once here so the timed call does no tree preprocessing.
        self.buffers = tree_buffers(tree, self.backbone.device)

    def describe(self) -> dict[str, Any]:
        tree = self.buffers.tree
        return {
            "heads": self.heads_name,
            "tree": tree.name,
            "node_budget": tree.node_budget,
            "temperature": self.acceptance.temperature,
            "posterior_threshold": float("nan") if self.greedy else self.acceptance.posterior_threshold,
            "posterior_alpha": float("nan") if self.greedy else self.acceptance.posterior_alpha,
        }

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, seed: int) -> MethodOutput:
        config = DecodeConfig(max_new_tokens=max_new_tokens, acceptance=self.acceptance, seed=seed,
                              compile=self.compile)
        result = generate(self.backbone, self.heads, self.buffers, prompt_ids, config)
        return MethodOutput(result.output_ids, result.steps, result.prefill_s)
