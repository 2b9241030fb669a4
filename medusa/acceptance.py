"""Acceptance rules for a verified candidate tree (greedy, typical, sample), as pure functions.

Given the tree's candidate tokens and the base model's logits at every node that has children,
decide which root-to-node path is kept, and (for the random rules) which token follows it:

- greedy: node i is accepted when its token is the argmax of its parent's logits. The kept path
  is exactly what plain greedy decoding would have produced, hence lossless.
- typical (Medusa paper Sec. 2.3.1): node i is accepted when
  ``p_T(x) > min(posterior_threshold, posterior_alpha * exp(-H(p_T)))`` under its parent's
  distribution at temperature T. Among accepted paths the longest wins; ties go to the highest
  summed log-probability. Lossy by design. The token after the kept path (the next root) is the
  argmax by default (`typical_root="argmax"`, the official repo's "fast" mode); "typical" samples
  it from p_T truncated at the same threshold (the official non-fast mode, `get_typical_one_token`)
  and "sample" samples it from p_T.
- sample: lossless speculative sampling over the tree for deterministic top-k drafts (SpecInfer,
  Sequoia, EAGLE's `evaluate_posterior`). At a node with target distribution p (the residual), try
  its children in rank order: accept child x with probability p(x); on rejection set p(x) = 0 and
  renormalise; the first accepted child becomes the node (with its own fresh distribution); if
  every child is rejected, the next token is drawn from the residual. A leaf's next token is drawn
  from its full distribution (by the engine, which alone has the leaf's logits). The output then
  has exactly the distribution of plain sampling (`tests/test_sampling.py` checks it).

The target distribution p is the base model's logits warped exactly as transformers'
``generate(do_sample=True, temperature=T, top_k=k, top_p=p)`` warps them (`target_logits`): divide
by T, keep the top-k, keep the top-p nucleus. Random draws come only from the `torch.Generator`
passed in (the engine owns one per request, seeded from its config), never from global state.

A node is kept only if its whole ancestry is accepted. The root (the token the base model already
chose) is always accepted. The defaults below are the only definition of eps and delta.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.errors import WorkbenchError
from medusa.tree_attention import TreeBuffers

RULES = ("greedy", "typical", "sample")
TYPICAL_ROOTS = ("argmax", "typical", "sample")


@dataclass(frozen=True)
class AcceptanceConfig:
    """The acceptance rule and the target distribution. eps = posterior_threshold, delta = posterior_alpha.

    `rule` None (the default) infers it from the temperature as before rules were explicit:
    0 -> "greedy", > 0 -> "typical"; after construction `rule` always holds one of `RULES`.
    `top_p`/`top_k` (1.0 / 0 = off) shape the target of rule "sample"; `typical_root` picks how
    rule "typical" chooses the token after the kept path (see the module docstring).
    """

    temperature: float = 0.0
    posterior_threshold: float = 0.09
    posterior_alpha: float = 0.3
    rule: str | None = None
    top_p: float = 1.0
    top_k: int = 0
    typical_root: str = "argmax"

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise WorkbenchError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.posterior_threshold <= 1:
            raise WorkbenchError(f"posterior_threshold (eps) must be in (0, 1], got {self.posterior_threshold}")
        if self.posterior_alpha <= 0:
            raise WorkbenchError(f"posterior_alpha (delta) must be > 0, got {self.posterior_alpha}")
        rule = self.rule if self.rule is not None else ("greedy" if self.temperature == 0 else "typical")
        if rule not in RULES:
            raise WorkbenchError(f"acceptance rule must be one of {', '.join(RULES)}, got {rule!r}")
        object.__setattr__(self, "rule", rule)
        if rule == "greedy" and self.temperature != 0:
            raise WorkbenchError(f"rule greedy takes no temperature (got {self.temperature}); use rule sample or typical")
        if rule != "greedy" and self.temperature == 0:
            raise WorkbenchError(f"rule {rule} needs temperature > 0 (temperature 0 is rule greedy)")
        if not 0 < self.top_p <= 1:
            raise WorkbenchError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise WorkbenchError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if rule != "sample" and (self.top_p < 1 or self.top_k > 0):
            raise WorkbenchError(f"top_p/top_k shape rule sample's target; rule {rule} does not use them")
        if self.typical_root not in TYPICAL_ROOTS:
            raise WorkbenchError(f"typical_root must be one of {', '.join(TYPICAL_ROOTS)}, got {self.typical_root!r}")
        if rule != "typical" and self.typical_root != "argmax":
            raise WorkbenchError(f"typical_root applies to rule typical, not {rule}")

    @property
    def greedy(self) -> bool:
        return self.rule == "greedy"

    @property
    def random(self) -> bool:
        """Whether decoding with this config draws random numbers (needs a generator)."""
        return self.rule == "sample" or (self.rule == "typical" and self.typical_root != "argmax")


@dataclass(frozen=True)
class Accepted:
    """The kept path (node indices from the root, always node 0) and, if the rule drew it, the next token.

    `next_token` None: the token after the path comes from the last node's logits (`next_token`).
    """

    nodes: torch.Tensor  # (length,) long, root first
    next_token: int | None = None

    @property
    def length(self) -> int:
        return int(self.nodes.shape[0])

    @property
    def last(self) -> int:
        return int(self.nodes[-1])


# ---- the target distribution ---------------------------------------------------------------------
def target_logits(logits: torch.Tensor, config: AcceptanceConfig) -> torch.Tensor:
    """(..., V) logits warped like transformers' sampling: / T, then top-k, then top-p (-inf = removed).

    Mirrors `TemperatureLogitsWarper`, `TopKLogitsWarper` and `TopPLogitsWarper` (min_tokens_to_keep 1)
    in the order `generate` applies them; `tests/test_sampling.py` compares the two.
    """
    scores = logits.float() / config.temperature
    if config.top_k > 0:
        k = min(config.top_k, scores.shape[-1])
        scores = scores.masked_fill(scores < torch.topk(scores, k)[0][..., -1, None], -float("inf"))
    if config.top_p < 1:
        sorted_scores, order = torch.sort(scores, descending=False)
        remove = sorted_scores.softmax(-1).cumsum(-1) <= (1 - config.top_p)
        remove[..., -1:] = False
        scores = scores.masked_fill(remove.scatter(-1, order, remove), -float("inf"))
    return scores


def target_probs(logits: torch.Tensor, config: AcceptanceConfig) -> torch.Tensor:
    """The target distribution (..., V) of rule sample (and of a sampled typical root)."""
    return torch.softmax(target_logits(logits, config), dim=-1)


def typical_threshold(logits: torch.Tensor, config: AcceptanceConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p_T over the vocabulary, acceptance threshold per row) for logits (..., V)."""
    logp = torch.log_softmax(logits.float() / config.temperature, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    threshold = torch.minimum(
        torch.full_like(entropy, config.posterior_threshold),
        config.posterior_alpha * torch.exp(-entropy),
    )
    return logp, threshold


def draw(probs: torch.Tensor, generator: torch.Generator) -> int:
    """One token from an unnormalised distribution (V,)."""
    return int(torch.multinomial(probs, 1, generator=generator))


def next_token(logits: torch.Tensor, config: AcceptanceConfig, generator: torch.Generator | None = None) -> int:
    """The base model's token after a kept path, from the last kept node's logits (V,).

    greedy and typical with an argmax root: the argmax (no random numbers); sample: a draw from
    the target distribution; typical with a sampled root: a draw from p_T (or from p_T truncated at
    the typical threshold for `typical_root="typical"`).
    """
    if not config.random:
        return int(logits.argmax())
    if generator is None:
        raise ValueError(f"rule {config.rule} draws random tokens: pass a torch.Generator")
    if config.rule == "sample" or config.typical_root == "sample":
        return draw(target_probs(logits, config), generator)
    logp, threshold = typical_threshold(logits, config)
    p = logp.exp()
    p = torch.where(p >= threshold, p, torch.zeros_like(p))
    return draw(p, generator) if float(p.sum()) > 0 else int(logits.argmax())


# ---- greedy and typical --------------------------------------------------------------------------
def node_acceptance(
    candidates: torch.Tensor, internal_logits: torch.Tensor, buffers: TreeBuffers, config: AcceptanceConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per node: (accepted given its parent, log p_T of its token under the parent) -> (N,), (N,).

    Greedy and typical only. `internal_logits` is (M, V) for `buffers.internal` in order. The root
    is accepted, log p 0.
    """
    if config.rule == "sample":
        raise ValueError("rule sample decides node by node with random draws: use accept()")
    n = buffers.num_nodes
    ok = torch.ones(n, dtype=torch.bool, device=candidates.device)
    logp_node = torch.zeros(n, dtype=torch.float32, device=candidates.device)
    if n == 1:
        return ok, logp_node
    parent_row = _parent_rows(buffers)
    child_tokens = candidates[1:]
    if config.greedy:
        pred = internal_logits.argmax(-1)  # (M,)
        ok[1:] = pred[parent_row] == child_tokens
    else:
        logp, threshold = typical_threshold(internal_logits, config)
        lp = logp[parent_row, child_tokens]
        ok[1:] = lp.exp() > threshold[parent_row]
        logp_node[1:] = lp
    return ok, logp_node


def _parent_rows(buffers: TreeBuffers) -> torch.Tensor:
    """(N-1,) row of each non-root node's parent in the internal logits."""
    row_of = torch.full((buffers.num_nodes,), -1, dtype=torch.long, device=buffers.parent.device)
    row_of[buffers.internal] = torch.arange(buffers.internal.shape[0], device=buffers.parent.device)
    return row_of[buffers.parent[1:]]


def _longest_path(candidates: torch.Tensor, internal_logits: torch.Tensor, buffers: TreeBuffers,
                  config: AcceptanceConfig) -> Accepted:
    """The longest accepted root-to-node path (ties: highest summed log p_T, then first leaf)."""
    ok, logp_node = node_acceptance(candidates, internal_logits, buffers, config)
    ri = buffers.retrieve_indices  # (L, D+1)
    valid = ri >= 0
    safe = ri.clamp(min=0)
    alive = torch.cumprod((ok[safe] & valid).long(), dim=1)  # (L, D+1)
    length = alive.sum(1)  # (L,)
    score = (logp_node[safe] * alive).sum(1)
    best_len = length.max()
    # Among the longest, the highest score; argmax returns the first maximum, so ties are stable.
    key = torch.where(length == best_len, score, torch.full_like(score, -float("inf")))
    leaf_row = int(key.argmax())
    return Accepted(nodes=ri[leaf_row, : int(best_len)].clone())


# ---- sample: lossless tree rejection sampling ----------------------------------------------------
def accept_probability(p_x: float, residual_mass: float) -> float:
    """Chance to accept a drafted token x: its probability under the renormalised residual."""
    return p_x / residual_mass


def residual(probs: torch.Tensor, rejected: list[int]) -> torch.Tensor:
    """The target (V,) with the rejected tokens' probability set to 0 (`draw` renormalises)."""
    out = probs.clone()
    out[rejected] = 0.0
    return out


def sample_path(candidates: torch.Tensor, internal_logits: torch.Tensor, buffers: TreeBuffers,
                config: AcceptanceConfig, generator: torch.Generator) -> Accepted:
    """Rule sample: walk the tree from the root, children in rank order, accepting x with p(x)/residual mass.

    Returns the kept path and, when it ends at an internal node, the next token drawn from that
    node's residual; at a leaf `next_token` is None (draw it from the leaf's full distribution).
    """
    probs = target_probs(internal_logits, config)  # (M, V)
    n = buffers.num_nodes
    tokens = candidates.tolist()
    parents = buffers.parent.tolist()
    children: list[list[int]] = [[] for _ in range(n)]
    for child in range(1, n):
        children[parents[child]].append(child)  # node order is rank order among siblings
    row_of = {node: row for row, node in enumerate(buffers.internal.tolist())}
    # Every child's probability under its parent, and one uniform per node, fetched at once.
    rows = torch.tensor([row_of[parents[child]] for child in range(1, n)], dtype=torch.long, device=probs.device)
    p_child = [0.0] + probs[rows, candidates[1:]].tolist()
    uniform = torch.rand(n, generator=generator, device=generator.device).tolist()
    path, node = [0], 0
    while node in row_of:
        mass, rejected = 1.0, []
        for child in children[node]:
            p_x = 0.0 if tokens[child] in rejected else p_child[child]
            if mass > 0 and uniform[child] < accept_probability(p_x, mass):
                path.append(child)
                node = child
                break
            rejected.append(tokens[child])
            mass -= p_x
        else:
            rest = residual(probs[row_of[node]], rejected)
            # Rounding can leave no mass after rejecting a token that held all of it (p ~ 1e-7).
            token = draw(rest, generator) if float(rest.sum()) > 0 else int(probs[row_of[node]].argmax())
            return Accepted(torch.tensor(path, dtype=torch.long, device=candidates.device), token)
    return Accepted(torch.tensor(path, dtype=torch.long, device=candidates.device))


def accept(
    candidates: torch.Tensor, internal_logits: torch.Tensor, buffers: TreeBuffers, config: AcceptanceConfig,
    generator: torch.Generator | None = None,
) -> Accepted:
    """The kept path under `config.rule` (rule sample also draws the next token, and needs `generator`)."""
    if config.rule == "sample":
        if generator is None:
            raise ValueError("rule sample draws random numbers: pass a torch.Generator")
        return sample_path(candidates, internal_logits, buffers, config, generator)
    return _longest_path(candidates, internal_logits, buffers, config)
