"""Lossless tree sampling: the output distribution equals plain sampling's, checked exactly.

A tiny Llama with an 8-token vocabulary makes the exact distribution of the first three generated
tokens enumerable (8^3 outcomes): P(t1, t2, t3) = p(t1 | prompt) p(t2 | .., t1) p(t3 | .., t2) under
the target distribution (temperature, top-k, top-p). We draw 20k triples

- with tree sampling (`medusa.acceptance.accept`, rule "sample") over several trees and proposers,
  through a pure re-enactment of the engine loop over a precomputed table of the model's logits
  (prefix -> logits), so 20k draws take seconds;
- with plain sampling by transformers (`generate(do_sample=True)`, one batch of 20k rows);
- end to end through `medusa.decode.generate` (fewer draws: one engine call each),

and apply a chi-square goodness-of-fit test against the enumeration (cells with expected count < 5
pooled; p-value from the regularised upper incomplete gamma, `torch.special.gammaincc`). Each
passes at p > 0.001, and the same test rejects planted errors: accepting a drafted token with its
unrenormalised probability (skipping the residual renormalisation), or drawing the next token from
the full distribution instead of the residual.

The benchmark side (`medusa-sample`, `medusa-typical`'s root option, `bench.quality`) runs on the
tiny character-level model of `tests/test_bench.py`.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest
import torch

import medusa.acceptance as acc
from bench import records as R
from bench.quality import (
    gap_metric,
    jensen_shannon,
    jsd_metric,
    paired_gap,
    sampling_rows,
    token_jsd,
)
from common.errors import WorkbenchError
from medusa.acceptance import AcceptanceConfig, accept, next_token, target_logits, target_probs
from medusa.decode import DecodeConfig, generate
from medusa.testing import OracleProposer, RandomProposer, greedy_reference, tiny_backbone
from medusa.tree_attention import TreeBuffers, tree_buffers, tree_candidates
from tests import test_bench
from trees.tree import Tree, chain, dense, preset

# The harness tests' fixtures (a tiny character-level model with heads, a prompt file), under new names.
bench_model = test_bench.model
bench_prompts = test_bench.prompts_file
run, assert_same_table = test_bench.run, test_bench.assert_same_table

V = 8
PROMPT = [1, 2, 3, 4]
LENGTH = 3  # generated tokens whose joint distribution is enumerated
DRAWS = 20_000
ALPHA = 1e-3
ENGINE_DRAWS = 1500  # one engine call each (prefill + verify forwards): the slow part

T1 = AcceptanceConfig(temperature=1.0, rule="sample")
T07_TOPS = AcceptanceConfig(temperature=0.7, rule="sample", top_k=5, top_p=0.9)


@pytest.fixture(autouse=True)
def one_thread():
    """Thousands of ops on 8-wide tensors: torch's intra-op pool would cost ~0.2 ms per softmax here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny8():
    # initializer_range 0.2: peaked but not degenerate next-token distributions (max p ~ 0.3-0.6)
    # no EOS: every token is an ordinary token, so transformers never stops or masks one
    return tiny_backbone(0, vocab_size=V, initializer_range=0.2, eos_token_id=None)


@pytest.fixture(scope="module")
def table(tiny8) -> dict[tuple[int, ...], torch.Tensor]:
    return logits_table(tiny8)


def logits_table(model) -> dict[tuple[int, ...], torch.Tensor]:
    """The model's next-token logits after PROMPT + every continuation of 0..LENGTH tokens."""
    out: dict[tuple[int, ...], torch.Tensor] = {}
    with torch.inference_mode():
        for n in range(LENGTH + 1):
            conts = list(itertools.product(range(V), repeat=n))
            ids = torch.tensor([PROMPT + list(c) for c in conts])
            logits = model.model(input_ids=ids).logits[:, -1].float()
            out.update(zip(conts, logits))
    return out


# ---- statistics ----------------------------------------------------------------------------------
def exact_distribution(table: dict, config: AcceptanceConfig) -> dict[tuple[int, ...], float]:
    """P(t1..tLENGTH) under the target distribution, enumerated."""
    probs = {ctx: target_probs(logits, config).double() for ctx, logits in table.items() if len(ctx) < LENGTH}
    return {seq: float(torch.prod(torch.stack([probs[seq[:i]][seq[i]] for i in range(LENGTH)])))
            for seq in itertools.product(range(V), repeat=LENGTH)}


def chi_square(samples: Sequence[tuple[int, ...]], expected: dict[tuple[int, ...], float],
               min_expected: float = 5.0) -> tuple[float, int, float]:
    """(statistic, degrees of freedom, p-value) of the samples against the exact distribution.

    Cells expected to hold fewer than `min_expected` samples are pooled into one cell.
    """
    n = len(samples)
    counts = Counter(samples)
    assert set(counts) <= set(expected), "a sample outside the enumerated support"
    observed, wanted, pooled_o, pooled_e = [], [], 0.0, 0.0
    for cell, p in expected.items():
        if p * n >= min_expected:
            observed.append(counts.get(cell, 0))
            wanted.append(p * n)
        else:
            pooled_o += counts.get(cell, 0)
            pooled_e += p * n
    if pooled_e > 0:
        observed.append(pooled_o)
        wanted.append(pooled_e)
    o, e = torch.tensor(observed, dtype=torch.float64), torch.tensor(wanted, dtype=torch.float64)
    stat = float(((o - e) ** 2 / e).sum())
    dof = len(observed) - 1
    p_value = float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                            torch.tensor(stat / 2, dtype=torch.float64)))
    return stat, dof, p_value


def test_chi_square_p_value_matches_known_quantiles():
    # chi2 with 10 dof: P(X > 18.307) = 0.05; with 1 dof: P(X > 3.841) = 0.05
    for dof, q in ((10, 18.307), (1, 3.841)):
        p = torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(q / 2, dtype=torch.float64))
        assert float(p) == pytest.approx(0.05, abs=2e-4)


# ---- samplers ------------------------------------------------------------------------------------
def tree_sample(table: dict, buffers: TreeBuffers, proposer, config: AcceptanceConfig, gen: torch.Generator) -> tuple[int, ...]:
    """The first LENGTH tokens of one generation, re-enacting the engine's loop over the logits table.

    Prefill: the first token (the root) is `next_token` of the prompt's logits. Each step: the
    proposer's top-k fill the tree (`tree_candidates`), the internal nodes get the table's logits for
    their prefix, `accept` keeps a path (and draws the next token, or the leaf's distribution does).
    Prefixes longer than LENGTH only decide later tokens, so they get uniform logits.
    """
    uniform = torch.zeros(V)

    def logits(prefix: list[int]) -> torch.Tensor:
        return table.get(tuple(prefix), uniform)

    out = [next_token(logits([]), config, gen)]
    while len(out) < LENGTH:
        head_topk = proposer.propose(uniform, PROMPT + out, max(buffers.tree.top_k, 1))
        cand = tree_candidates(buffers, out[-1], head_topk)
        tokens, parents = cand.tolist(), buffers.parent.tolist()
        internal = torch.stack([logits(out + _path_tokens(tokens, parents, n)) for n in buffers.internal.tolist()])
        kept = accept(cand, internal, buffers, config, gen)
        new = [tokens[n] for n in kept.nodes.tolist()[1:]]
        nxt = kept.next_token if kept.next_token is not None else next_token(logits(out + new), config, gen)
        out += new + [nxt]
    return tuple(out[:LENGTH])


def _path_tokens(tokens: list[int], parents: list[int], node: int) -> list[int]:
    """The candidate tokens from below the root down to `node`."""
    toks = []
    while node > 0:
        toks.append(tokens[node])
        node = parents[node]
    return toks[::-1]


def greedy_continuation(model) -> list[int]:
    return PROMPT + greedy_reference(model, PROMPT, 8)


class TableTopK:
    """Head k proposes the model's own top-k tokens k positions ahead along the greedy path.

    The strongest proposer there is (read from the logits table): rank 0 is the argmax, so the
    siblings behind it carry real probability and a wrong residual shows.
    """

    def __init__(self, table: dict, num_heads: int) -> None:
        self.table, self.num_heads = table, num_heads

    def propose(self, hidden: torch.Tensor, token_ids: Sequence[int], top_k: int) -> torch.Tensor:
        prefix, rows = list(token_ids[len(PROMPT):]), []  # ends with the pending root
        for _ in range(self.num_heads):
            top = torch.topk(self.table.get(tuple(prefix), torch.zeros(V)), top_k).indices
            rows.append(top)
            prefix.append(int(top[0]))
        return torch.stack(rows)


def proposer_for(model, table, kind: str, tree: Tree):
    """One head per tree level (the oracle's heads x top-k random fill must fit the 8 tokens)."""
    if kind == "oracle":  # medusa.testing: the fixed greedy continuation at rank 0, random ranks behind
        return OracleProposer(greedy_continuation(model), tree.depth, V, seed=1)
    if kind == "top-k":
        return TableTopK(table, tree.depth)
    return RandomProposer(tree.depth, V, seed=1)


TREES = {
    "chain_3/oracle": (chain(3), "oracle", T1),
    "wide/random": (Tree.from_paths([[0], [1], [2], [3], [0, 0], [0, 1], [1, 0], [0, 0, 0]]), "random", T1),
    "dense_3x2/top-k": (dense([3, 2]), "top-k", T1),
    "dense_4x2/top-k/T0.7,top-k 5,top-p 0.9": (dense([4, 2]), "top-k", T07_TOPS),
}
BUG_DRAWS = 3000  # the planted errors shift whole cells by several percent: p ~ 1e-50 at 3000 draws


def draw_triples(model, table, name: str, draws: int) -> tuple[list[tuple[int, ...]], AcceptanceConfig]:
    tree, kind, config = TREES[name]
    buffers, proposer, gen = tree_buffers(tree), proposer_for(model, table, kind, tree), torch.Generator().manual_seed(7)
    return [tree_sample(table, buffers, proposer, config, gen) for _ in range(draws)], config


# ---- the distributional tests --------------------------------------------------------------------
@pytest.mark.parametrize("name", list(TREES))
def test_tree_sampling_has_the_exact_distribution(tiny8, table, name):
    samples, config = draw_triples(tiny8, table, name, DRAWS)
    stat, dof, p = chi_square(samples, exact_distribution(table, config))
    assert p > ALPHA, f"{name}: chi2 {stat:.1f} on {dof} dof, p = {p:.2e}"


@pytest.mark.parametrize("config", [T1, T07_TOPS], ids=["T1", "T0.7-top-k5-top-p0.9"])
def test_plain_transformers_sampling_has_the_exact_distribution(tiny8, table, config):
    ids = torch.tensor([PROMPT] * DRAWS)
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(11)
        out = tiny8.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, max_new_tokens=LENGTH,
                                   temperature=config.temperature, top_k=config.top_k,
                                   top_p=config.top_p, pad_token_id=0)
    samples = [tuple(row) for row in out[:, len(PROMPT):].tolist()]
    stat, dof, p = chi_square(samples, exact_distribution(table, config))
    assert p > ALPHA, f"chi2 {stat:.1f} on {dof} dof, p = {p:.2e}"


def _skip_renormalisation(p_x: float, residual_mass: float) -> float:
    return p_x


def _keep_rejected(probs: torch.Tensor, rejected: list[int]) -> torch.Tensor:
    return probs.clone()


@pytest.mark.parametrize("bug", ["accept_probability", "residual"])
def test_the_same_test_catches_a_planted_error(tiny8, table, monkeypatch, bug):
    monkeypatch.setattr(acc, bug, _skip_renormalisation if bug == "accept_probability" else _keep_rejected)
    samples, config = draw_triples(tiny8, table, "dense_3x2/top-k", BUG_DRAWS)
    stat, dof, p = chi_square(samples, exact_distribution(table, config))
    assert p < ALPHA, f"planted {bug} error not caught: chi2 {stat:.1f} on {dof} dof, p = {p:.2e}"


def test_engine_sampling_end_to_end_has_the_exact_distribution(tiny8, table):
    """`medusa.decode.generate` itself (prefill, verify, accept, KV compaction), one seed per draw."""
    proposer = OracleProposer(greedy_continuation(tiny8), 2, V, seed=3)
    buffers = tree_buffers(dense([3, 2]))
    samples = []
    for seed in range(ENGINE_DRAWS):
        cfg = DecodeConfig(max_new_tokens=LENGTH, stop_on_eos=False, acceptance=T1, seed=seed, time_phases=False)
        samples.append(tuple(generate(tiny8, proposer, buffers, PROMPT, cfg).output_ids))
    stat, dof, p = chi_square(samples, exact_distribution(table, T1))
    assert p > ALPHA, f"chi2 {stat:.1f} on {dof} dof, p = {p:.2e}"


# ---- the target distribution and the engine's generator ------------------------------------------
@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (0.5, 3, 0.6),
                                                     (0.9, 60, 0.95)])
def test_target_logits_equal_transformers_warpers(temperature, top_k, top_p):
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0)) * 3
    scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    cfg = AcceptanceConfig(temperature=temperature, rule="sample", top_k=top_k, top_p=top_p)
    torch.testing.assert_close(target_logits(logits, cfg), scores)


def test_engine_sampling_is_seeded_and_leaves_global_rng_alone():
    bb = tiny_backbone(0)
    ref = greedy_reference(bb, PROMPT, 16)
    proposer = lambda: OracleProposer(PROMPT + ref, 4, 96)  # noqa: E731
    tree = preset("mc_sim_7b_63")

    def run(seed: int, acceptance: AcceptanceConfig) -> list[int]:
        cfg = DecodeConfig(max_new_tokens=16, stop_on_eos=False, acceptance=acceptance, seed=seed)
        return generate(bb, proposer(), tree, PROMPT, cfg).output_ids

    state = torch.random.get_rng_state()
    a, b, c = run(0, T1), run(0, T1), run(1, T1)
    assert torch.equal(state, torch.random.get_rng_state())
    assert a == b and a != c
    assert run(0, AcceptanceConfig()) == run(5, AcceptanceConfig()) == ref  # greedy ignores the seed
    fast = AcceptanceConfig(temperature=1.0)  # typical, argmax root: no random numbers at all
    assert run(0, fast) == run(1, fast)
    paper = AcceptanceConfig(temperature=1.0, typical_root="sample")
    assert len({tuple(run(s, paper)) for s in range(4)}) > 1


def test_sample_rule_needs_a_generator_and_a_temperature():
    buffers = tree_buffers(chain(1))
    with pytest.raises(ValueError, match="Generator"):
        accept(torch.tensor([0, 1]), torch.zeros(1, V), buffers, T1)
    with pytest.raises(WorkbenchError, match="temperature > 0"):
        AcceptanceConfig(rule="sample")


# ---- the benchmark method and the quality comparison ---------------------------------------------
def test_medusa_sample_in_the_harness_is_seeded_and_compared_with_plain_sampling(bench_model, bench_prompts, tmp_path):
    methods = ("hf-greedy", "medusa-sample", "hf-sample", "medusa-typical")
    options = {"medusa-typical": {"root": "sample"}}
    run(bench_model, bench_prompts, tmp_path / "a", methods=methods, method_options=options, temperature=0.8, repeats=2,
        max_new_tokens=12, limit=1)
    run(bench_model, bench_prompts, tmp_path / "b", methods=methods, method_options=options, temperature=0.8, repeats=2,
        max_new_tokens=12, limit=1)
    assert_same_table(tmp_path / "a", tmp_path / "b")  # seeded per record: reruns give the same tokens
    frame, tokens, info = R.load_run(tmp_path / "a")
    ms = frame[frame["method"] == "medusa-sample"]
    assert (ms["temperature"] == 0.8).all() and ms["posterior_threshold"].isna().all() and not ms["greedy"].any()
    assert (ms["mean_accepted_length"] >= 1).all() and ms["loglik_per_token"].notna().all()
    assert json.loads(ms["method_options"].iloc[0]) == {"top_k": 0, "top_p": 1.0}
    assert info["identity"]["method_options"]["medusa-typical"] == {"root": "sample"}
    # repeats of a prompt draw different samples (the record seed differs)
    outs = {r.repeat: tokens[(r.question_id, r.turn, r.method, r.repeat)]["output_ids"] for r in ms.itertuples()
            if r.question_id == ms["question_id"].iloc[0] and r.turn == 1}
    assert outs[0] != outs[1]
    rows = sampling_rows(frame, tokens, resamples=100)
    assert set(rows["method"]) == {"medusa-sample", "medusa-typical"}  # greedy methods are not compared
    jsd = rows[rows["metric"] == jsd_metric()]
    assert ((jsd["value"] >= 0) & (jsd["value"] <= 1)).all()
    gap = rows[rows["metric"] == gap_metric("loglik_per_token")]
    assert len(gap) == 2 and gap["n"].min() > 0


def test_sampling_methods_refuse_bad_settings(bench_model, bench_prompts, tmp_path):
    with pytest.raises(WorkbenchError, match="temperature > 0"):
        run(bench_model, bench_prompts, tmp_path / "t0", methods=("medusa-sample",), temperature=0.0, limit=1)
    with pytest.raises(WorkbenchError, match="root must be one of"):
        run(bench_model, bench_prompts, tmp_path / "root", methods=("medusa-typical",),
            method_options={"medusa-typical": {"root": "median"}}, limit=1)
    with pytest.raises(WorkbenchError, match="top_p"):
        run(bench_model, bench_prompts, tmp_path / "p", methods=("medusa-sample",),
            method_options={"medusa-sample": {"top_p": "1.5"}}, limit=1)


def test_quality_statistics_on_known_inputs():
    assert jensen_shannon(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    assert jensen_shannon(np.array([3.0, 1.0]), np.array([6.0, 2.0])) == pytest.approx(0.0)
    value, lo, hi = token_jsd([[1, 2], [3, 3]], [[1, 2], [3, 3]], resamples=50)
    assert value == pytest.approx(0.0) and lo == pytest.approx(0.0) and hi == pytest.approx(0.0)
    value, lo, hi = paired_gap(np.array([1.0, 2.0, 3.0, np.nan]), np.array([0.0, 1.0, 2.0, 5.0]), resamples=50)
    assert value == pytest.approx(1.0) and lo == pytest.approx(1.0) and hi == pytest.approx(1.0)
