"""The Medusa decoding engine: verify a whole candidate tree in one forward of a stock model.

One request, batch size 1. Phases of every step (gpt-fast style, shapes in comments):

    prefill     prompt (1, P) -> KV cache, hidden (H,) and the base model's first token (the root)
    candidates  the tree policy: heads(hidden) -> top-k per head (K, top_k) -> one token per tree node (N,);
                a static tree, or one built this step (medusa.policy: dynamic, prompt-lookup hybrid)
    verify      ONE forward of the N tree tokens, 4D ancestor mask, positions past + depth
    accept      the acceptance rule (greedy, typical or sample) -> kept path (root .. last), length A
    update      emit the A-1 accepted candidates plus the base model's token after the last kept
                node (the next root); compact the KV cache to past + kept nodes (no recompute);
                hidden <- hidden at the last kept node

Every step therefore adds A >= 1 tokens (plain decoding adds exactly 1): A is the "accepted length"
of the paper, root token included. Greedy acceptance is lossless: the output is token-identical to
`model.generate(do_sample=False)`. Rule sample is lossless in distribution: the output is
distributed exactly as `model.generate(do_sample=True)` at the same temperature/top-k/top-p (the
first token and every next root are drawn from the target distribution, or from a residual).
Random draws come from one `torch.Generator` per request, seeded with `DecodeConfig.seed`, so a
run is reproducible and nothing global is reseeded. The engine works on any decoder-only
transformers model that accepts a 4D float attention mask and `position_ids` with a KV cache
(eager and SDPA attention).

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
from typing import Any, Protocol

import torch

from common.errors import WorkbenchError
from medusa.acceptance import AcceptanceConfig, accept, next_token
from medusa.backbone import Backbone
from medusa.compiled import Compiled
from medusa.kv_cache import KVCache, make_cache
from medusa.policy import StaticPolicy, StepTree, TreePolicy, as_policy
from medusa.tree_attention import (
    MaskLayout,
    TreeBuffers,
    causal_mask,
    mask_layout,
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
    # Compile the verify forward (medusa.compiled: inductor freezing + C++ GEMM on CPU, CUDA graphs
    # on GPU). Shapes are then fixed per tree: the static cache spans a whole `compile_bucket`
    # multiple and every step attends over all of it (the mask hides the tail), so a tree compiles
    # once per bucket its requests need.
    compile: bool = False
    compile_bucket: int = 512
    # Synchronise the device at phase boundaries so heads/verify/bookkeeping times are exact;
    # off, the only sync per step is the acceptance decision.
    time_phases: bool = True
    # Seeds the request's own torch.Generator (rule sample, sampled typical roots); greedy ignores it.
    seed: int = 0

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
    nodes: int = 0  # tokens verified this step (the node budget for static trees)


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
    queued_s: float = 0.0  # batched decoding (`medusa.batch`): time from the call to this request's prefill

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


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_request(
    backbone: Backbone, heads: Proposer | None, tree: Tree | TreePolicy, prompt_ids: Sequence[int], config: DecodeConfig
) -> None:
    """Raise `WorkbenchError` (one line) for requests the engine cannot serve."""
    if len(prompt_ids) == 0:
        raise WorkbenchError("prompt is empty (0 tokens)")
    if isinstance(tree, StaticPolicy):
        tree = tree.buffers.tree
    top_k = tree.top_k if isinstance(tree, Tree) else getattr(tree, "top_k", 0)
    if tree.depth > 0:
        if heads is None:
            raise WorkbenchError(f"tree {tree.name} has depth {tree.depth} but no heads were given")
        if tree.depth > heads.num_heads:
            raise WorkbenchError(f"tree {tree.name} has depth {tree.depth} but the heads have only {heads.num_heads}")
        if top_k > backbone.vocab_size:
            raise WorkbenchError(f"tree {tree.name} needs top-{top_k} but the vocabulary has {backbone.vocab_size}")
    need = len(prompt_ids) + config.max_new_tokens + tree.depth + 1
    if need > backbone.max_positions:
        raise WorkbenchError(
            f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({config.max_new_tokens}) + tree depth "
            f"exceeds the model's context of {backbone.max_positions} positions"
        )


# A compiled verify computes logits for every node of trees up to this size: a few more rows of the
# LM head cost almost nothing next to reading its weights, and a kept leaf then needs no extra LM-head
# call. Larger trees (and the eager path, whose kernels pay per row) compute internal nodes only,
# except per-step trees when compiled, which take every row so that one graph fits every step.
ALL_ROWS_MAX_NODES = 16


def verify_function(backbone: Backbone) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The verify forward as one function (compiled or not, the same code), for B rows of N nodes
    (B = 1 here, B requests in batched decoding, `medusa.batch`).

    (ids (B, N), positions (B, N), mask (B, 1, N, W) or {layer type: mask}, HF cache, rows (R,))
    -> node hidden states (B, N, H), LM-head logits of the nodes in `rows` (B, R, V)
    """
    decoder, lm_head = backbone.model.base_model, backbone.model.get_output_embeddings()
    arg = cache_kwarg(decoder)

    def verify(ids: torch.Tensor, positions: torch.Tensor, mask: Any, hf_cache: Any,
               rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = decoder(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True, **{arg: hf_cache})
        hidden = out.last_hidden_state  # (B, N, H)
        return hidden, lm_head(hidden[:, rows])  # (B, R, V)

    return verify


@dataclass(frozen=True)
class EngineParts:
    """What every phase of one request uses: model parts, tree buffers, settings (no state)."""

    decoder: torch.nn.Module  # transformer body -> last (post-norm) hidden states (prefill)
    verify_fn: Callable[..., tuple[torch.Tensor, torch.Tensor]]  # `verify_function`, maybe compiled
    lm_head: torch.nn.Module  # the prefill's one row
    row_logits: Callable[[torch.Tensor], torch.Tensor]  # LM head for a kept node outside `rows`, maybe compiled
    policy: TreePolicy
    static_rows: LogitRows | None  # a static tree's rows, computed once
    layout: MaskLayout  # which layers slide, so the masks carry the window (tree_attention.mask_layout)
    cache_arg: str
    dtype: torch.dtype
    device: torch.device
    config: DecodeConfig


@dataclass(frozen=True)
class LogitRows:
    """Which nodes' logits the verify computes: `rows` (R,) and node -> row (N,), -1 where not computed."""

    rows: torch.Tensor
    row_of: torch.Tensor
    internal_only: bool


def logit_rows(buffers: TreeBuffers, all_rows: bool) -> LogitRows:
    n, device = buffers.num_nodes, buffers.depth.device
    rows = torch.arange(n, device=device) if all_rows else buffers.internal
    row_of = torch.full((n,), -1, dtype=torch.long, device=device)
    row_of[rows] = torch.arange(rows.shape[0], device=device)
    return LogitRows(rows, row_of, not all_rows)


def _rows_for(p: EngineParts, buffers: TreeBuffers) -> LogitRows:
    if p.static_rows is not None:
        return p.static_rows
    return logit_rows(buffers, p.config.compile)  # per-step trees: every row when compiled (one shape)


def prefill(p: EngineParts, cache: KVCache, prompt_ids: Sequence[int], gen: torch.Generator) -> tuple[torch.Tensor, int]:
    """Prompt (1, P) -> cache filled, last hidden state (H,), root token (the model's next token)."""
    prompt = torch.tensor([list(prompt_ids)], dtype=torch.long, device=p.device)
    n = prompt.shape[1]
    out = p.decoder(input_ids=prompt, position_ids=torch.arange(n, device=p.device)[None],
                    attention_mask=causal_mask(n, cache.mask_width(n), p.dtype, p.device, p.layout), use_cache=True,
                    **{p.cache_arg: cache.hf_cache})
    cache.advance(n)
    hidden = out.last_hidden_state[0, -1]  # (H,)
    return hidden, next_token(p.lm_head(hidden), p.config.acceptance, gen)


def _verify(p: EngineParts, cache: KVCache, step: StepTree, rows: LogitRows) -> tuple[torch.Tensor, torch.Tensor, int]:
    """ONE forward of all N nodes with the ancestor mask -> node hidden (N, H), logits of `rows` (R, V), past."""
    buffers = step.buffers
    past, n_nodes = cache.length, buffers.num_nodes
    mask = verify_attention_mask(buffers, past, p.dtype, cache.mask_width(n_nodes), p.layout)
    node_hidden, row_logits = p.verify_fn(step.candidates[None], (past + buffers.depth)[None], mask, cache.hf_cache,
                                          rows.rows)
    cache.advance(n_nodes)
    return node_hidden[0], row_logits[0], past


def _update(p: EngineParts, cache: KVCache, step: StepTree, rows: LogitRows, node_hidden: torch.Tensor,
            row_logits: torch.Tensor, past: int, gen: torch.Generator) -> tuple[list[int], torch.Tensor, int]:
    """Accept a path under the rule, then emit its tokens + the model's next root, compact the cache.

    Returns (new tokens, hidden state of the last kept node (H,), next root).
    """
    candidates, buffers = step.candidates, step.buffers
    internal_logits = row_logits if rows.internal_only else row_logits[rows.row_of[buffers.internal]]
    kept = accept(candidates, internal_logits, buffers, p.config.acceptance, gen)
    last = kept.last
    # A copy: on a GPU the compiled verify's outputs live in CUDA-graph memory that the next graph
    # replay (the LM head below, the heads next step) overwrites.
    last_hidden = node_hidden[last].clone()  # (H,)
    root = kept.next_token  # rule sample drew it from the last node's residual
    if root is None:  # the base model's own token after the kept path
        row = int(rows.row_of[last])
        last_logits = row_logits[row] if row >= 0 else p.row_logits(last_hidden[None])[0]
        root = next_token(last_logits, p.config.acceptance, gen)
    cache.keep(past, kept.nodes)
    return candidates[kept.nodes[1:]].tolist() + [root], last_hidden, root


def finish_output(output: list[int], max_new_tokens: int, eos: set[int]) -> tuple[list[int], str]:
    """Cut the output at max_new_tokens and after the first EOS; the stop reason."""
    output = output[:max_new_tokens]
    for i, tok in enumerate(output):
        if tok in eos:
            return output[: i + 1], "eos"
    return output, "length"


def engine_parts(backbone: Backbone, policy: TreePolicy, config: DecodeConfig) -> EngineParts:
    decoder = backbone.model.base_model
    lm_head = backbone.model.get_output_embeddings()
    static_rows = None
    if isinstance(policy, StaticPolicy):
        static_rows = logit_rows(policy.buffers, config.compile and policy.node_budget <= ALL_ROWS_MAX_NODES)
    if config.compile:
        verify_fn = backbone.compiled("verify", lambda: Compiled(verify_function(backbone), "verify", backbone.device))
        row_fn = backbone.compiled("lm_head", lambda: Compiled(lm_head, "LM head", backbone.device))
    else:
        verify_fn, row_fn = verify_function(backbone), lm_head
    return EngineParts(decoder=decoder, verify_fn=verify_fn, lm_head=lm_head, row_logits=row_fn, policy=policy,
                  static_rows=static_rows, layout=mask_layout(backbone.config), cache_arg=cache_kwarg(decoder),
                  dtype=backbone.dtype, device=backbone.device, config=config)


@torch.inference_mode()
def generate(
    backbone: Backbone,
    heads: Proposer | None,
    tree: Tree | TreeBuffers | TreePolicy,
    prompt_ids: Sequence[int],
    config: DecodeConfig | None = None,
    on_step: Callable[[KVCache, list[int]], None] | None = None,
) -> GenerationResult:
    """Decode one prompt with Medusa tree verification (or plain decoding for the root-only tree).

    `tree` is a static tree (or its buffers) or a per-step tree policy (`medusa.policy`).

    Each step runs four phases: candidates (heads -> tree tokens), verify (one forward), accept
    (the kept path under `config.acceptance.rule`) and update (emit, compact the KV cache). `on_step(cache,
    committed_ids)` (optional, for tests and tracing) is called after each step with the KV cache
    and the token ids it holds (prompt + output, without the pending root).
    """
    config = config or DecodeConfig()
    policy = as_policy(tree, backbone.device)
    check_request(backbone, heads, policy, prompt_ids, config)
    p = engine_parts(backbone, policy, config)
    eos = set(backbone.eos_token_ids) if config.stop_on_eos else set()
    capacity = len(prompt_ids) + config.max_new_tokens + policy.node_budget
    if config.compile:  # fixed shapes: the cache spans whole buckets
        capacity = -(-capacity // config.compile_bucket) * config.compile_bucket
    cache: KVCache = make_cache(config.cache, backbone.model, capacity, full_width=config.compile)
    sync = sync_device if config.time_phases else (lambda _: None)
    gen = torch.Generator(device=backbone.device).manual_seed(config.seed)

    t_start = time.perf_counter()
    hidden, root = prefill(p, cache, prompt_ids, gen)
    tokens_so_far, output = list(prompt_ids) + [root], [root]
    sync_device(p.device)
    prefill_s = time.perf_counter() - t_start
    steps: list[StepStats] = []
    while len(output) < config.max_new_tokens and not (eos and output[-1] in eos):
        t0 = time.perf_counter()
        step = policy.step(heads, hidden, tokens_so_far, root)
        rows = _rows_for(p, step.buffers)
        sync(p.device)
        t1 = time.perf_counter()
        node_hidden, row_logits, past = _verify(p, cache, step, rows)
        sync(p.device)
        t2 = time.perf_counter()
        new, hidden, root = _update(p, cache, step, rows, node_hidden, row_logits, past, gen)
        output.extend(new)
        tokens_so_far.extend(new)
        steps.append(StepStats(len(new), t1 - t0, t2 - t1, time.perf_counter() - t2, step.buffers.num_nodes))
        if on_step is not None:
            on_step(cache, tokens_so_far[:-1])

    output, stop_reason = finish_output(output, config.max_new_tokens, eos)
    sync_device(p.device)
    return GenerationResult(prompt_ids=list(prompt_ids), output_ids=output, steps=steps, prefill_s=prefill_s,
                            wall_s=time.perf_counter() - t_start, stop_reason=stop_reason, tree_name=policy.name,
                            node_budget=policy.node_budget)
