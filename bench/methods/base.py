"""The base every benchmark method derives from, and what the harness hands to a method.

A method turns prompt token ids into new token ids; the harness (`bench.run`) times that call and
nothing else, applies the one token-counting rule (`bench.records.count_new_tokens`) to whatever the
method returns, and records the method's `describe()` as the row's config columns and its resolved
`options` as the row's `method_options` column.

    class MyMethod(Method):
        name = "my-method"       # the --methods name
        greedy = True            # the output must equal the reference's (hf-greedy) token for token
        needs_heads = False      # the harness loads Medusa heads for it
        needs_tree = False       # the harness resolves a tree (--tree / --preset / --budget) for it
        Options = MyOptions      # frozen dataclass of the method's own settings, each with its default

        def __init__(self, context: MethodContext, options: MyOptions) -> None: ...
        def describe(self) -> dict        # config columns: heads, tree, node_budget, temperature, ...
        def generate(self, prompt_ids, max_new_tokens, seed) -> MethodOutput

A method's own settings (e.g. hf-pld's `num_tokens`) live in its `Options` and are set with
`bench.run --method-option NAME.OPTION=VALUE`; settings several methods share (temperature, eps,
delta, compile) come from the run (`MethodSettings`). Each method lives in its own small file
(`hf_greedy.py`, `hf_pld.py`, `hf_sample.py`, `ar.py`, `medusa.py`, `medusa_typical.py`,
`medusa_sample.py`); `bench.methods` registers the classes by name. The harness hands every method
the record's seed: the engine methods seed their own generator with it (`DecodeConfig.seed`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from common.errors import WorkbenchError
from common.paths import REPO_ROOT
from medusa.acceptance import AcceptanceConfig
from medusa.backbone import Backbone
from medusa.batch import RequestError, generate_batch
from medusa.compiled import CompiledProposer
from medusa.decode import DecodeConfig, Proposer, StepStats, generate
from medusa.policy import StaticPolicy, TreePolicy
from medusa.subvocab import SubVocabHeads, proposal_vocab
from trees.tree import Tree


@dataclass(frozen=True)
class MethodOutput:
    """Raw new token ids (the harness truncates and caps them) and the engine's per-step stats."""

    new_ids: list[int]
    steps: list[StepStats] | None = None
    prefill_s: float = float("nan")
    # batched calls (`Method.generate_batch`): seconds from the call to this request's last token, and
    # from the call to its start (its prefill: time spent waiting for a free row)
    latency_s: float = float("nan")
    queued_s: float = float("nan")


@dataclass(frozen=True)
class MethodSettings:
    """The run settings several methods share; each default lives in `bench.run.BenchConfig`."""

    temperature: float
    posterior_threshold: float
    posterior_alpha: float
    compile: bool = False


@dataclass
class MethodContext:
    """Everything a method may use: the loaded backbone, heads, tree and the run settings."""

    backbone: Backbone
    settings: MethodSettings
    heads: Proposer | None = None
    heads_name: str = ""
    tree: Tree | None = None


@dataclass(frozen=True)
class NoOptions:
    """The options of a method that has none."""


class Method:
    """A decoding method; subclasses set the traits and implement `describe` and `generate`."""

    name: ClassVar[str]
    greedy: ClassVar[bool] = False
    needs_heads: ClassVar[bool] = False
    needs_tree: ClassVar[bool] = False
    Options: ClassVar[type] = NoOptions

    def __init__(self, context: MethodContext, options: Any = None) -> None:
        self.backbone = context.backbone
        self.options = options if options is not None else self.Options()

    def describe(self) -> dict[str, Any]:
        """Config columns of the records this method writes (see `bench.records.Record`); unset ones stay empty."""
        return {}

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, seed: int) -> MethodOutput:
        """New token ids for one prompt; the only call the harness times."""
        raise NotImplementedError

    def compiles(self, context: MethodContext) -> bool:
        """Whether this method runs the compiled engine: a `*-compiled` method, or the run's `--compile`
        (a subclass that shapes its policy for it asks before the engine is set up)."""
        return context.settings.compile or self.compiled

    def warmup_prompts(self, warm_ids: Sequence[int], tokens: int) -> list[list[int]]:
        """Prompts beyond the first the harness warms this method up with (untimed); none by default."""
        del warm_ids, tokens
        return []

    def generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, seeds: Sequence[int],
                       batch_size: int) -> list[MethodOutput | RequestError]:
        """New ids for many prompts decoded `batch_size` at a time (`bench.throughput` times the whole call).

        One result per prompt, in order; a request the method cannot serve comes back as a
        `RequestError` in its place. Methods that do not batch refuse with one line.
        """
        raise WorkbenchError(f"method {self.name} does not batch (batching methods: {', '.join(BATCHING)})")


# The methods whose `generate_batch` works (`bench.throughput --methods`).
BATCHING = ("hf-greedy", "ar", "medusa", "medusa-typical", "medusa-sample", "ar-compiled", "medusa-compiled")

# Settings that neutralise anything a model's generation_config might add to the HF baselines.
HF_NEUTRAL = {"num_beams": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0}


def hf_generate_batch(backbone: Backbone, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                      batch_size: int, **kwargs: Any) -> list[MethodOutput | RequestError]:
    """transformers `model.generate` on `batch_size` prompts at a time, left-padded (its own batching).

    Static batches: a batch runs until its longest answer ends, and the next starts after it, so
    every request of a batch has the batch's end as its latency. A prompt too long for the context
    comes back as a `RequestError` in its place.
    """
    if batch_size < 1:
        raise WorkbenchError(f"batch size must be >= 1, got {batch_size}")
    out: list[MethodOutput | RequestError] = [
        RequestError(i, f"request {i}: prompt ({len(p)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                        f"model's context of {backbone.max_positions} positions")
        for i, p in enumerate(prompts) if len(p) + max_new_tokens > backbone.max_positions or not p]
    served = [i for i in range(len(prompts)) if i not in {e.index for e in out}]
    t_call = time.perf_counter()
    for first in range(0, len(served), batch_size):
        index = served[first: first + batch_size]
        chunk = [prompts[i] for i in index]
        started = time.perf_counter() - t_call
        ids, mask = backbone.left_pad(chunk)
        gen = _hf_call(backbone, ids, mask, max_new_tokens, **kwargs)
        if backbone.device.type == "cuda":
            torch.cuda.synchronize(backbone.device)
        done = time.perf_counter() - t_call
        out.extend(MethodOutput(row[ids.shape[1]:].tolist(), latency_s=done, queued_s=started) for row in gen)
    order = [e.index for e in out if isinstance(e, RequestError)] + served
    return [r for _, r in sorted(zip(order, out), key=lambda x: x[0])]


def _hf_call(backbone: Backbone, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, **kwargs: Any) -> torch.Tensor:
    """transformers `model.generate` on ids (B, P) and their attention mask, stopping on the
    backbone's EOS ids, with `HF_NEUTRAL` settings -> prompt + new ids (B, P + new)."""
    eos = list(backbone.eos_token_ids)
    with torch.inference_mode():
        return backbone.model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, eos_token_id=eos or None,
                                       pad_token_id=backbone.pad_id, **HF_NEUTRAL, **kwargs)


def hf_generate(backbone: Backbone, prompt_ids: Sequence[int], max_new_tokens: int, **kwargs: Any) -> list[int]:
    """transformers `model.generate` on one prompt, stopping on the backbone's EOS ids; new ids only."""
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=backbone.device)
    return _hf_call(backbone, ids, torch.ones_like(ids), max_new_tokens, **kwargs)[0, ids.shape[1]:].tolist()


# The longest context (prompt + answer + tree) a compiled engine method is warmed up for:
# MT-Bench's second turns with a 128-token answer stay under it.
WARM_CONTEXT = 1024


class EngineMethod(Method):
    """A method run by our engine (`medusa.decode.generate`) with a fixed tree and acceptance rule.

    Subclasses choose the tree and the acceptance rule in `__init__` (`ar`, `medusa`, `medusa-typical`,
    `medusa-sample`). A subclass with `compiled = True` (`ar-compiled`, `medusa-compiled`) runs the
    same code with the verify forward and the heads compiled (`medusa.compiled`); the run-wide
    `--compile` does that for every engine method.
    """

    compiled: ClassVar[bool] = False

    def __init__(self, context: MethodContext, options: Any, tree: Tree | TreePolicy,
                 acceptance: AcceptanceConfig) -> None:
        super().__init__(context, options)
        # Built once here so the timed call does no tree preprocessing (a static tree's buffers).
        self.policy = tree if not isinstance(tree, Tree) else StaticPolicy(tree, self.backbone.device)
        depth = self.policy.depth
        self.heads = context.heads if depth > 0 else None
        self.heads_name = context.heads_name if depth > 0 else ""
        self.acceptance = acceptance
        self.compile = self.compiles(context)
        if depth > 0:
            if self.heads is None:
                raise WorkbenchError(f"method {self.name} needs Medusa heads but none were loaded")
            if isinstance(self.policy, StaticPolicy):
                self.policy.buffers.tree.check_fits(self.heads.num_heads)
            elif depth > self.heads.num_heads:
                raise WorkbenchError(f"method {self.name}: tree {self.policy.name} has depth {depth} "
                                     f"but the heads have only {self.heads.num_heads}")
            vocab = getattr(self.options, "proposal_vocab", 0)
            if vocab and isinstance(self.heads, torch.nn.Module):
                self.heads = SubVocabHeads(self.heads, proposal_vocab(heads_folder(self.heads_name), vocab))
            if self.compile and isinstance(self.heads, torch.nn.Module):
                # one compiled proposer per method; the heads module itself is shared and unchanged
                self.heads = CompiledProposer(self.heads, self.backbone.device)

    def warmup_prompts(self, warm_ids: Sequence[int], tokens: int) -> list[list[int]]:
        """Compiled: one prompt per cache bucket up to `WARM_CONTEXT` slots, so that no timed record
        compiles (a compiled verify compiles once per tree and bucket, ~1 min for SmolLM2)."""
        if not self.compile:
            return []
        bucket, n = DecodeConfig().compile_bucket, self.policy.node_budget
        out = []
        for capacity in range(2 * bucket, min(WARM_CONTEXT, self.backbone.max_positions) + 1, bucket):
            length = capacity - tokens - n  # prompt + tokens + nodes fill the bucket exactly
            if length > len(warm_ids):
                out.append((list(warm_ids) * (length // max(len(warm_ids), 1) + 1))[:length])
        return out

    def describe(self) -> dict[str, Any]:
        typical = self.acceptance.rule == "typical"  # eps and delta mean nothing to the other rules
        return {
            "heads": self.heads_name,
            "tree": self.policy.name,
            "node_budget": self.policy.node_budget,
            "temperature": self.acceptance.temperature,
            "posterior_threshold": self.acceptance.posterior_threshold if typical else float("nan"),
            "posterior_alpha": self.acceptance.posterior_alpha if typical else float("nan"),
        }

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, seed: int) -> MethodOutput:
        # The record's seed seeds the engine's own generator (greedy and argmax-root typical draw nothing).
        config = DecodeConfig(max_new_tokens=max_new_tokens, acceptance=self.acceptance, compile=self.compile,
                              seed=seed)
        result = generate(self.backbone, self.heads, self.policy, prompt_ids, config)
        return MethodOutput(result.output_ids, result.steps, result.prefill_s)

    def generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, seeds: Sequence[int],
                       batch_size: int) -> list[MethodOutput | RequestError]:
        """Continuous batching in our engine (`medusa.batch`): each row as it would decode alone."""
        config = DecodeConfig(max_new_tokens=max_new_tokens, acceptance=self.acceptance, compile=self.compile)
        results = generate_batch(self.backbone, self.heads, self.policy, prompts, config, batch_size, seeds=seeds)
        return [r if isinstance(r, RequestError) else
                MethodOutput(r.output_ids, r.steps, r.prefill_s, latency_s=r.queued_s + r.wall_s, queued_s=r.queued_s)
                for r in results]


def heads_folder(heads_name: str) -> Path:
    """The folder of a run's heads name (``<folder>@<fingerprint>``; the shipped folder is relative to the repository)."""
    folder = Path(heads_name.split("@")[0])
    return folder if folder.is_absolute() or folder.exists() else REPO_ROOT / folder


def tree_of(context: MethodContext, method: str) -> Tree:
    """The run's tree, which a tree method cannot do without."""
    if context.tree is None:
        raise WorkbenchError(f"method {method} needs a tree")
    return context.tree
