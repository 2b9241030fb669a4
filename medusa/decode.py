"""The Medusa decoding engine: verify a whole candidate tree in one forward of a stock model.

One request, batch size 1. Phases of every step (gpt-fast style, shapes in comments):

    prefill     prompt (1, P) -> KV cache, hidden (H,) and the base model's first token (the root)
    candidates  heads(hidden) -> top-k per head (K, top_k) -> one token per tree node (N,)
    verify      ONE forward of the N tree tokens, 4D ancestor mask, positions past + depth
    accept      greedy or typical acceptance -> kept path (root .. last), length A
    update      emit the A-1 accepted candidates plus the base model's token after the last kept
                node (the next root); compact the KV cache to past + kept nodes (no recompute);
                hidden <- hidden at the last kept node

Every step therefore adds A >= 1 tokens (plain decoding adds exactly 1): A is the "accepted length"
of the paper, root token included. Greedy acceptance is lossless: the output is token-identical to
`model.generate(do_sample=False)`. The engine works on any decoder-only transformers model that
accepts a 4D float attention mask and `position_ids` with a KV cache (eager and SDPA attention).

The same loop with the root-only tree (`trees.preset("root")`) is plain autoregressive decoding
(`ar`), so Medusa-vs-ar ratios compare one engine with itself.

Usage::

    result = generate(backbone, heads, preset("mc_sim_7b_63"), backbone.chat_ids("Hi"), DecodeConfig())
    result.output_ids, result.mean_accepted_length, result.tokens_per_s
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from medusa.acceptance import AcceptanceConfig, accept
from medusa.backbone import Backbone
from medusa.errors import WorkbenchError
from medusa.kv_cache import KVCache, make_cache
from medusa.tree_attention import (
    TreeBuffers,
    causal_mask,
    tree_buffers,
    tree_candidates,
    verify_attention_mask,
)
from trees.tree import Tree


class Proposer(Protocol):
    """Anything that proposes per-head top-k tokens from the last hidden state (MedusaHeads does)."""

    num_heads: int

    def propose(self, hidden: torch.Tensor, token_ids: Sequence[int], top_k: int) -> torch.Tensor:
        """hidden (H,), all token ids so far (prompt + output) -> token ids (K, top_k)."""
        ...


@dataclass(frozen=True)
class DecodeConfig:
    """One request's decoding settings; each default is defined here and nowhere else."""

    max_new_tokens: int = 256
    acceptance: AcceptanceConfig = field(default_factory=AcceptanceConfig)
    stop_on_eos: bool = True
    # "dynamic": transformers DynamicCache compacted in place; "static": preallocated buffers.
    cache: str = "static"
    # torch.compile the verify forward. Shapes are then fixed per tree: the static cache spans a
    # whole `compile_bucket` multiple and every step attends over it (the mask hides the tail).
    compile: bool = False
    compile_bucket: int = 512
    # Synchronise the device at phase boundaries so heads/verify/bookkeeping times are exact;
    # off, the only sync per step is the acceptance decision.
    time_phases: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise WorkbenchError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.compile and self.cache != "static":
            raise WorkbenchError("compile=True needs the static cache")
        if self.cache not in ("dynamic", "static"):
            raise WorkbenchError(f"cache must be 'dynamic' or 'static', got {self.cache!r}")


@dataclass(frozen=True)
class StepStats:
    """One verification step: tokens it added (>= 1) and where its time went (seconds)."""

    accepted_length: int
    heads_s: float
    verify_s: float
    bookkeeping_s: float


@dataclass
class GenerationResult:
    """Output ids (new tokens only, EOS included when hit) and per-step statistics."""

    prompt_ids: list[int]
    output_ids: list[int]
    steps: list[StepStats]
    prefill_s: float
    wall_s: float
    stop_reason: str  # "eos" or "length"
    tree_name: str = ""
    node_budget: int = 1

    @property
    def new_tokens(self) -> int:
        return len(self.output_ids)

    @property
    def mean_accepted_length(self) -> float:
        """Tokens per verification step, root included (1.0 for plain decoding)."""
        return sum(s.accepted_length for s in self.steps) / len(self.steps) if self.steps else float("nan")

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_s if self.wall_s > 0 else float("nan")


def cache_kwarg(decoder: torch.nn.Module) -> str:
    """Name of the KV-cache argument: `cache` in newer transformers, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_request(
    backbone: Backbone, heads: Proposer | None, tree: Tree, prompt_ids: Sequence[int], config: DecodeConfig
) -> None:
    """Raise `WorkbenchError` (one line) for requests the engine cannot serve."""
    if len(prompt_ids) == 0:
        raise WorkbenchError("prompt is empty (0 tokens)")
    if tree.depth > 0:
        if heads is None:
            raise WorkbenchError(f"tree {tree.name} has depth {tree.depth} but no heads were given")
        if tree.depth > heads.num_heads:
            raise WorkbenchError(f"tree {tree.name} has depth {tree.depth} but the heads have only {heads.num_heads}")
        if tree.top_k > backbone.vocab_size:
            raise WorkbenchError(f"tree {tree.name} needs top-{tree.top_k} but the vocabulary has {backbone.vocab_size}")
    need = len(prompt_ids) + config.max_new_tokens + tree.depth + 1
    if need > backbone.max_positions:
        raise WorkbenchError(
            f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({config.max_new_tokens}) + tree depth "
            f"exceeds the model's context of {backbone.max_positions} positions"
        )


@torch.inference_mode()
def generate(
    backbone: Backbone,
    heads: Proposer | None,
    tree: Tree | TreeBuffers,
    prompt_ids: Sequence[int],
    config: DecodeConfig | None = None,
    on_step: Callable[[KVCache, list[int]], None] | None = None,
) -> GenerationResult:
    """Decode one prompt with Medusa tree verification (or plain decoding for the root-only tree).

    `on_step(cache, committed_ids)` (optional, for tests and tracing) is called after each step
    with the KV cache and the token ids it holds (prompt + output, without the pending root).
    """
    config = config or DecodeConfig()
    device = backbone.device
    buffers = tree if isinstance(tree, TreeBuffers) else tree_buffers(tree, device)
    if buffers.depth.device != device:
        buffers = buffers.to(device)
    tree = buffers.tree
    check_request(backbone, heads, tree, prompt_ids, config)
    if config.seed is not None:
        torch.manual_seed(config.seed)

    decoder = backbone.model.base_model  # transformer body -> last (post-norm) hidden states
    lm_head = backbone.model.get_output_embeddings()
    cache_arg = cache_kwarg(decoder)
    eos = set(backbone.eos_token_ids) if config.stop_on_eos else set()
    dtype = backbone.dtype
    n_nodes, top_k = buffers.num_nodes, max(tree.top_k, 1)
    capacity = len(prompt_ids) + config.max_new_tokens + n_nodes
    verify_fn = decoder
    if config.compile:
        capacity = -(-capacity // config.compile_bucket) * config.compile_bucket
        verify_fn = backbone.compiled_decoder()
    cache: KVCache = make_cache(config.cache, backbone.model, capacity, full_width=config.compile)

    t_start = time.perf_counter()
    # ---- prefill: (1, P) -> cache, hidden (H,), root token ------------------------------
    prompt = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
    out = decoder(
        input_ids=prompt,
        position_ids=torch.arange(prompt.shape[1], device=device)[None],
        attention_mask=causal_mask(prompt.shape[1], cache.mask_width(prompt.shape[1]), dtype, device),
        use_cache=True,
        **{cache_arg: cache.hf_cache},
    )
    cache.advance(prompt.shape[1])
    hidden = out.last_hidden_state[0, -1]  # (H,)
    root = int(lm_head(hidden).argmax())
    tokens_so_far = list(prompt_ids) + [root]
    output = [root]
    _sync(device)
    prefill_s = time.perf_counter() - t_start
    steps: list[StepStats] = []

    while len(output) < config.max_new_tokens and not (eos and output[-1] in eos):
        t0 = time.perf_counter()
        # ---- candidates: heads (K, top_k) -> node tokens (N,) ---------------------------
        if tree.depth > 0:
            head_topk = heads.propose(hidden, tokens_so_far, top_k)  # (K, top_k)
            candidates = tree_candidates(buffers, root, head_topk)  # (N,)
        else:
            candidates = torch.tensor([root], dtype=torch.long, device=device)
        if config.time_phases:
            _sync(device)
        t1 = time.perf_counter()
        # ---- verify: ONE forward of all N nodes with the ancestor mask ------------------
        past = cache.length
        out = verify_fn(
            input_ids=candidates[None],
            position_ids=(past + buffers.depth)[None],
            attention_mask=verify_attention_mask(buffers, past, dtype, cache.mask_width(n_nodes)),
            use_cache=True,
            **{cache_arg: cache.hf_cache},
        )
        cache.advance(n_nodes)
        node_hidden = out.last_hidden_state[0]  # (N, H)
        internal_logits = lm_head(node_hidden[buffers.internal])  # (M, V), only nodes with children
        if config.time_phases:
            _sync(device)
        t2 = time.perf_counter()
        # ---- accept: kept path root..last (A nodes) -------------------------------------
        kept = accept(candidates, internal_logits, buffers, config.acceptance)
        last = kept.last
        # ---- update: emit, next root, compact cache, next hidden ------------------------
        row = (buffers.internal == last).nonzero()
        last_logits = internal_logits[int(row[0, 0])] if row.numel() else lm_head(node_hidden[last])
        root = int(last_logits.argmax())  # the base model's own token after the kept path
        new = candidates[kept.nodes[1:]].tolist() + [root]
        output.extend(new)
        tokens_so_far.extend(new)
        cache.keep(past, kept.nodes)
        hidden = node_hidden[last]
        t3 = time.perf_counter()
        steps.append(StepStats(len(new), t1 - t0, t2 - t1, t3 - t2))
        if on_step is not None:
            on_step(cache, tokens_so_far[:-1])

    output = output[: config.max_new_tokens]
    stop_reason = "length"
    for i, tok in enumerate(output):
        if tok in eos:
            output = output[: i + 1]
            stop_reason = "eos"
            break
    _sync(device)
    wall_s = time.perf_counter() - t_start
    return GenerationResult(
        prompt_ids=list(prompt_ids),
        output_ids=output,
        steps=steps,
        prefill_s=prefill_s,
        wall_s=wall_s,
        stop_reason=stop_reason,
        tree_name=tree.name,
        node_budget=tree.node_budget,
    )
