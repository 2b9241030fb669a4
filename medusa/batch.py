"""Batched Medusa decoding: many requests per verify step, each row's output as if decoded alone.

Continuous batching over a queue of requests, at most `batch_size` rows at a time. Phases of every
step (A = active rows, N = tree nodes, shapes in comments):

    admit       while a row is free and a request has arrived: prefill it alone (the one-request
                engine's `prefill`, its own cache), then append its KV entries as a new row (`BatchKV.join`)
    candidates  heads(hidden (A, H)) -> top-k (A, K, top_k) -> tokens per node (A, N), one tree shape
    verify      ONE forward of (A, N) tokens; row b's nodes at positions lengths[b] + depth, a per-row
                4D mask (A, 1, N, W) over the longest row's W slots (`tree_attention.batch_verify_mask`)
    accept      the acceptance rule per row (its own generator) -> kept path per row
    update      per row: emit tokens + next root, compact its cache entries (one gather/scatter for all
                rows); rows that hit EOS or their length leave the batch (`BatchKV.leave`)

Rows have different lengths; no row is shifted or left-padded: slot j of a row holds its position j,
and the mask hides the slots past a row's own length. So a row sees exactly what it would see alone,
and greedy outputs equal batch-1 outputs token for token (up to floating-point rounding in batched
kernels, which only matters at exact near-ties). The root-only tree is batched plain decoding (`ar`).

Static trees only: per-step policies (dynamic, lookup) build a different tree per row and step.
The verify forward is the one-request engine's (`medusa.decode.verify_function`, which takes B
rows). With `DecodeConfig.compile` it runs compiled (`medusa.compiled`) on fixed shapes: the
cache keeps `batch_size` rows of whole `compile_bucket`s (`BatchKV(slots=...)`), a finished row is
freed rather than dropped and the next request joins into it, and free rows ride along (token 0,
nothing read), so one graph serves the whole call.

    results = generate_batch(backbone, heads, preset("mc_sim_7b_63"), [ids_a, ids_b, ids_c],
                             DecodeConfig(max_new_tokens=64), batch_size=2)
    results[2].output_ids, results[2].queued_s  # request c joined when a or b finished

A request the engine cannot serve (e.g. a prompt too long for the context) comes back as a
`RequestError` in its place; the other requests are decoded as usual.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from common.errors import WorkbenchError
from medusa.acceptance import accept, next_token
from medusa.backbone import Backbone
from medusa.decode import (
    ALL_ROWS_MAX_NODES,
    DecodeConfig,
    GenerationResult,
    Proposer,
    StepStats,
    check_request,
    engine_parts,
    finish_output,
    logit_rows,
    prefill,
    sync_device,
)
from medusa.kv_cache import BatchKV, make_cache
from medusa.policy import StaticPolicy, TreePolicy, as_policy
from medusa.tree_attention import TreeBuffers, batch_verify_mask, tree_candidates
from trees.tree import Tree


@dataclass(frozen=True)
class RequestError:
    """A request the engine refused (one line), in the place its result would have had."""

    index: int
    message: str


@dataclass
class _Row:
    """One active request's own state (the batch engine keeps it; nothing is stored on modules)."""

    index: int
    tokens: list[int]  # prompt + output so far, ending with the pending root
    output: list[int]
    root: int
    generator: torch.Generator
    steps: list[StepStats]
    prefill_s: float
    queued_s: float
    started: float


def propose_rows(heads: Proposer, hidden: torch.Tensor, tokens: Sequence[Sequence[int]], top_k: int) -> torch.Tensor:
    """Each row's top-k per head: hidden (A, H) -> token ids (A, K, top_k).

    One batched call for proposers that look at the hidden state only (`propose_batch`: Medusa heads,
    sub-vocabulary and compiled heads); otherwise one `propose` per row (oracles in tests, lookup).
    """
    if hasattr(heads, "propose_batch"):
        return heads.propose_batch(hidden, top_k)
    return torch.stack([heads.propose(h, t, top_k) for h, t in zip(hidden, tokens)])


def _check(backbone: Backbone, heads: Proposer | None, policy: TreePolicy, prompts: Sequence[Sequence[int]],
           config: DecodeConfig, batch_size: int) -> list[RequestError | None]:
    if batch_size < 1:
        raise WorkbenchError(f"batch size must be >= 1, got {batch_size}")
    if not isinstance(policy, StaticPolicy):
        raise WorkbenchError(f"batched decoding takes a static tree; {policy.name} changes per step")
    errors: list[RequestError | None] = []
    for i, prompt in enumerate(prompts):
        try:
            check_request(backbone, heads, policy, prompt, config)
            errors.append(None)
        except WorkbenchError as e:
            errors.append(RequestError(i, f"request {i}: {e}"))
    return errors


@torch.inference_mode()
def generate_batch(
    backbone: Backbone,
    heads: Proposer | None,
    tree: Tree | TreeBuffers | TreePolicy,
    prompts: Sequence[Sequence[int]],
    config: DecodeConfig | None = None,
    batch_size: int = 8,
    arrivals: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
) -> list[GenerationResult | RequestError]:
    """Decode `prompts` at most `batch_size` at a time; one result per prompt, in order.

    `arrivals[i]` (default 0) is the engine step before which request i may not join (a request
    joining mid-run); requests join in order when a row is free. `seeds[i]` seeds request i's own
    generator (default `config.seed` for all), so a sampled row draws what it would draw alone.
    Each result's `queued_s` is the time from the call to its prefill, `wall_s` from its prefill to
    its last token; its `steps` carry the whole batch step's times.
    """
    config = config or DecodeConfig()
    policy = as_policy(tree, backbone.device)
    errors = _check(backbone, heads, policy, prompts, config, batch_size)
    arrivals = list(arrivals) if arrivals is not None else [0] * len(prompts)
    seeds = list(seeds) if seeds is not None else [config.seed] * len(prompts)
    if len(arrivals) != len(prompts) or len(seeds) != len(prompts):
        raise WorkbenchError(f"{len(prompts)} prompts but {len(arrivals)} arrivals and {len(seeds)} seeds")
    assert isinstance(policy, StaticPolicy)
    buffers = policy.buffers
    p = engine_parts(backbone, policy, config)
    n_nodes, depth = buffers.num_nodes, buffers.tree.depth
    # compiled: every row of trees up to ALL_ROWS_MAX_NODES (one graph, no leaf LM-head call), as alone
    rows_info = logit_rows(buffers, all_rows=config.compile and n_nodes <= ALL_ROWS_MAX_NODES)
    eos = set(backbone.eos_token_ids) if config.stop_on_eos else set()
    served = [i for i, e in enumerate(errors) if e is None]
    capacity = max((len(prompts[i]) for i in served), default=0) + config.max_new_tokens + n_nodes
    if config.compile:  # fixed shapes: `batch_size` rows of whole buckets
        capacity = -(-capacity // config.compile_bucket) * config.compile_bucket
    cache = BatchKV(config.cache, int(backbone.config.num_hidden_layers), capacity, backbone.device,
                    slots=batch_size if config.compile else None)
    sync = sync_device if config.time_phases else (lambda _: None)

    results: list[GenerationResult | RequestError | None] = list(errors)
    queue = sorted(served, key=lambda i: (arrivals[i], i))
    # The cache's rows, in order: requests (eager: only active ones, compacted as they leave;
    # compiled: `batch_size` fixed rows, None where free).
    table: list[_Row | None] = [None] * batch_size if config.compile else []
    hidden = torch.zeros(len(table), backbone.hidden_size, dtype=backbone.dtype, device=backbone.device)  # (R, H)
    t_call = time.perf_counter()
    step_index = 0
    while queue or any(table):
        # ---- admit: prefill arrived requests alone, put them in free rows ------------------------
        if not any(table) and queue and arrivals[queue[0]] > step_index:
            step_index = arrivals[queue[0]]  # nothing to decode until the next arrival
        while queue and sum(r is not None for r in table) < batch_size and arrivals[queue[0]] <= step_index:
            i = queue.pop(0)
            t0 = time.perf_counter()
            one = make_cache(config.cache, backbone.model, len(prompts[i]))
            gen = torch.Generator(device=backbone.device).manual_seed(seeds[i])
            h, root = prefill(p, one, prompts[i], gen)
            row = _Row(i, list(prompts[i]) + [root], [root], root, gen, [], 0.0, t0 - t_call, t0)
            if config.compile:
                b = table.index(None)
                cache.join(one, row=b)
                table[b] = row
                hidden[b] = h
            else:
                cache.join(one)
                table.append(row)
                hidden = torch.cat([hidden, h[None]])
            sync_device(p.device)
            row.prefill_s = time.perf_counter() - t0
        table, hidden = _retire(table, hidden, cache, results, config.max_new_tokens, eos)
        if not any(table):
            continue
        live = [b for b, r in enumerate(table) if r is not None]

        # ---- candidates: (R, N) tokens from the heads' top-k (free rows: token 0, never read) -----
        t0 = time.perf_counter()
        roots = torch.tensor([r.root if r else 0 for r in table], dtype=torch.long, device=p.device)  # (R,)
        if depth == 0:
            candidates = roots[:, None]  # (R, 1)
        else:
            head_topk = propose_rows(heads, hidden, [r.tokens if r else [] for r in table], max(buffers.tree.top_k, 1))
            candidates = tree_candidates(buffers, roots, head_topk.to(p.device))  # (R, N)
        sync(p.device)
        t1 = time.perf_counter()

        # ---- verify: one forward of (R, N) -------------------------------------------------------
        past = list(cache.lengths)
        lengths, start = cache.lengths_tensor(), cache.tree_start()
        mask = batch_verify_mask(buffers, lengths, start, p.dtype, cache.mask_width(n_nodes), p.layout)
        positions = lengths[:, None] + buffers.depth[None, :]  # (R, N)
        node_hidden, row_logits = p.verify_fn(candidates, positions, mask, cache.hf_cache, rows_info.rows)  # (R, N, H), (R, M, V)
        sync(p.device)
        t2 = time.perf_counter()

        # ---- accept and update, per live row -----------------------------------------------------
        internal_logits = row_logits if rows_info.internal_only else row_logits[:, rows_info.row_of[buffers.internal]]
        kept = {b: accept(candidates[b], internal_logits[b], buffers, config.acceptance, table[b].generator)
                for b in live}
        lasts = {b: k.last for b, k in kept.items()}
        leaf_rows = [b for b, k in kept.items() if k.next_token is None and int(rows_info.row_of[lasts[b]]) < 0]
        leaf_logits = {}
        if leaf_rows:  # kept paths ending at a leaf: one LM-head call for their last hidden states
            leaf = p.lm_head(torch.stack([node_hidden[b, lasts[b]] for b in leaf_rows]))
            leaf_logits = dict(zip(leaf_rows, leaf))
        for b, k in kept.items():
            row = table[b]
            root = k.next_token
            if root is None:
                logits = leaf_logits[b] if b in leaf_logits else row_logits[b, int(rows_info.row_of[lasts[b]])]
                root = next_token(logits, config.acceptance, row.generator)
            new = candidates[b, k.nodes[1:]].tolist() + [root]
            row.output.extend(new)
            row.tokens.extend(new)
            row.root = root
        root_only = torch.zeros(1, dtype=torch.long, device=p.device)
        cache.keep(past, start, [kept[b].nodes if b in kept else root_only for b in range(len(table))])
        for b in range(len(table)):
            if b not in kept and config.compile:
                cache.free(b)  # a free row keeps nothing of the step it was carried through
        last_nodes = torch.tensor([lasts.get(b, 0) for b in range(len(table))], device=p.device)
        hidden = node_hidden[torch.arange(len(table), device=p.device), last_nodes]  # (R, H)
        t3 = time.perf_counter()
        for b, k in kept.items():
            table[b].steps.append(StepStats(k.length, t1 - t0, t2 - t1, t3 - t2, n_nodes))
        step_index += 1
        table, hidden = _retire(table, hidden, cache, results, config.max_new_tokens, eos)

    sync_device(backbone.device)
    for r in results:
        if isinstance(r, GenerationResult):
            r.tree_name, r.node_budget = policy.name, n_nodes
    return [r for r in results if r is not None]  # every request ends with a result or an error


def _done(row: _Row, max_new_tokens: int, eos: set[int]) -> bool:
    return len(row.output) >= max_new_tokens or any(t in eos for t in row.output)


def _retire(table: list[_Row | None], hidden: torch.Tensor, cache: BatchKV, results: list, max_new_tokens: int,
            eos: set[int]) -> tuple[list[_Row | None], torch.Tensor]:
    """Rows that hit EOS or their length leave: their result is written and their cache row freed
    (fixed rows) or dropped with the rest compacted in order (eager)."""
    done = [b for b, r in enumerate(table) if r is not None and _done(r, max_new_tokens, eos)]
    if not done:
        return table, hidden
    now = time.perf_counter()
    for b in done:
        row = table[b]
        output, reason = finish_output(row.output, max_new_tokens, eos)
        results[row.index] = GenerationResult(
            prompt_ids=row.tokens[: len(row.tokens) - len(row.output)], output_ids=output, steps=row.steps,
            prefill_s=row.prefill_s, wall_s=now - row.started, stop_reason=reason, queued_s=row.queued_s)
    if cache.full_width:
        for b in done:
            cache.free(b)
            table[b] = None
        return table, hidden
    keep = [b for b in range(len(table)) if b not in done]
    cache.leave(keep)
    index = torch.tensor(keep, dtype=torch.long, device=hidden.device)
    return [table[b] for b in keep], hidden.index_select(0, index)
