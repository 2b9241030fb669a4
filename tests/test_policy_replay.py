"""The policy replay (`trees.policy_replay`) walks what the engine verifies: static trees as the rank
replay does, hybrid trees (lookup chain + heads) step for step as the engine on a tiny model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from bench.calibrate import collect_tables
from common.errors import WorkbenchError
from medusa.decode import DecodeConfig, generate
from medusa.heads import HeadsConfig, MedusaHeads
from medusa.lookup import LookupConfig, lookup_chain
from medusa.policy import LookupPolicy, StaticPolicy
from medusa.testing import tiny_backbone
from trees.acceptance_model import replay_walk
from trees.confidence import fit_confidence
from trees.hybrid import HybridConfig, accepted_length, hybrid_nodes
from trees.policy_replay import (
    PromptText,
    best_split,
    chains_for,
    prompt_texts,
    split_table,
    static_nodes,
    tokens_per_step,
    walk,
)
from trees.tree import Tree, chain, dense


def synthetic_prompt(rng: np.random.Generator, positions: int = 60, heads: int = 3, width: int = 4) -> tuple[PromptText, np.ndarray]:
    """A random text whose heads' top-`width` lists hold the true token at a random rank (or not at all)."""
    vocab = 50
    prompt_len = 7
    text = rng.integers(0, vocab, prompt_len + positions + heads + 1)
    topk = np.zeros((positions, heads, width), dtype=np.int64)
    ranks = np.full((positions, heads), -1)
    for s in range(positions):
        for h in range(heads):
            truth = text[prompt_len + s + h + 1]
            row = [t for t in rng.permutation(vocab)[: width + 1] if t != truth][:width]
            r = int(rng.integers(-1, width))
            if r >= 0:
                row[r] = truth
                ranks[s, h] = r
            topk[s, h] = row
    return PromptText("p", text, prompt_len, topk, np.zeros(topk.shape)), ranks


@pytest.mark.parametrize("tree", [chain(3), dense([2, 2]), Tree.from_paths([[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0]])])
def test_static_walk_on_tokens_equals_the_rank_replay(tree):
    rng = np.random.default_rng(1)
    paths = set(tree.paths)
    for _ in range(5):
        prompt, ranks = synthetic_prompt(rng)
        got = walk(prompt, static_nodes(tree)).lengths
        assert list(got) == replay_walk(ranks, lambda s: paths)


def test_accepted_length_follows_the_deepest_matching_path():
    nodes = hybrid_nodes(7, [(0,), (1,), (0, 0)], [[1, 2], [3, 4]], [2, 9, 9], HybridConfig(budget=8, lookup_nodes=3))
    # the chain's first token equals head 1's rank 1: one node; (0, 0) hangs under head 1's rank 0
    assert accepted_length(nodes, [2, 9, 9, 5]) == 4  # the chain, all three
    assert accepted_length(nodes, [1, 3, 0]) == 3  # the heads' path 0-0
    assert accepted_length(nodes, [5]) == 1
    assert accepted_length(nodes, []) == 1


def random_heads(bb) -> MedusaHeads:
    """Three Medusa heads with large random weights (confident, varied proposals), seeded."""
    torch.manual_seed(0)
    heads = MedusaHeads.for_backbone(bb, HeadsConfig(num_heads=3))
    for block in heads.blocks:
        for p in block.parameters():
            torch.nn.init.normal_(p, std=0.5)
    return heads


def test_hybrid_replay_equals_the_engine_step_for_step():
    bb = tiny_backbone(2)
    heads = random_heads(bb)
    prompts = [("loop", [62, 2, 80, 12, 92, 8]), ("other", [5, 17, 3, 42, 8, 11])]
    measured = collect_tables(bb, heads, prompts, max_new_tokens=40, top_r=4)
    texts = prompt_texts(measured.probs, measured.tokens)
    tree = dense([2, 2])
    lookup = LookupConfig(max_chain=5)
    for hybrid in (HybridConfig(budget=10, lookup_nodes=5), HybridConfig(budget=7, lookup_nodes=3, pad=True)):
        policy = LookupPolicy(StaticPolicy(tree), hybrid, lookup)
        for text, (name, ids) in zip(texts, sorted(prompts)):
            assert text.name == name
            chains = chains_for(text, lambda prefix: lookup_chain(prefix, lookup))
            replayed = walk(text, static_nodes(tree, hybrid), chains)
            engine = generate(bb, heads, policy, ids, DecodeConfig(max_new_tokens=40))
            engine_lengths = [s.accepted_length for s in engine.steps]
            # the replay stops where heads run out of scored positions; every earlier step is the engine's
            assert len(replayed.lengths) >= 5
            assert list(replayed.lengths[:-1]) == engine_lengths[: len(replayed.lengths) - 1]
            if name == "loop":
                assert replayed.chain_steps > 0 and max(replayed.lengths) > 2


def test_split_search_replays_every_share_and_picks_the_fastest():
    rng = np.random.default_rng(3)
    prompt, _ = synthetic_prompt(rng, positions=80)
    text = prompt.text
    # a chain that is right for its first 2 tokens every step
    chains = [[[int(t) for t in text[prompt.first + s + 1: prompt.first + s + 3]] for s in range(prompt.positions)]]
    trees = {4: Tree.from_paths([[0], [1], [2]], name="w3"), 6: dense([2, 2])}
    table = split_table([prompt], chains, trees, lookup_nodes=[0, 1, 2, 9], verify_s=lambda n: 0.01 * n)
    assert sorted(table.groupby("budget")["lookup_nodes"].apply(list).to_dict().items()) == [(4, [0, 1, 2, 3]), (6, [0, 1, 2, 5])]
    for _, row in table.iterrows():
        assert row["tokens_per_s"] == pytest.approx(row["tokens_per_step"] / (0.01 * row["budget"]))
    # a 2-token chain that always matches gives >= 3 tokens per step once it has 2 nodes
    assert (table[table["lookup_nodes"] >= 2]["tokens_per_step"] >= 3).all()
    assert table[table["lookup_nodes"] == 0]["tokens_per_step"].max() < 3
    best = best_split(table)
    assert best.iloc[0]["budget"] == 4 and best.iloc[0]["lookup_nodes"] >= 2
    assert best.iloc[0]["tokens_per_s"] == table["tokens_per_s"].max()
    tau, steps, share = tokens_per_step([prompt], static_nodes(trees[4], HybridConfig(budget=4, lookup_nodes=2)), chains)
    assert share == 1.0 and steps * tau >= prompt.positions


def test_prompt_texts_say_what_is_missing():
    cand = pd.DataFrame({"prompt": ["a"], "position": [0], "head": [1], "rank0": [0], "prob": [0.5], "hit": [True]})
    seq = pd.DataFrame({"prompt": ["a", "a"], "position": [-1, 0], "token": [3, 4]})
    with pytest.raises(WorkbenchError, match="no token column.*--fresh"):
        prompt_texts(cand, seq)
    with pytest.raises(WorkbenchError, match="lacks 1 prompt"):
        prompt_texts(cand.assign(token=4), seq.assign(prompt="b"))
    (p,) = prompt_texts(cand.assign(token=5), seq)
    assert p.first == 1 and p.prefix(0).tolist() == [3, 4] and p.topk.shape == (1, 1, 1)


def tiny_calibration(folder):
    """A calibration folder as `bench.calibrate --fresh` writes it, from a tiny model and random heads."""
    from bench.calibrate import write_measured, write_tables

    bb = tiny_backbone(2)
    heads = random_heads(bb)
    prompts = [("loop", [62, 2, 80, 12, 92, 8]), ("other", [5, 17, 3, 42, 8, 11]), ("third", [9, 9, 4, 1])]
    measured = collect_tables(bb, heads, prompts, max_new_tokens=40, top_r=4)
    folder.mkdir(parents=True)
    write_measured(measured, folder / "ranks.parquet", folder / "probs.parquet")
    write_tables(measured.ranks, folder, 4, holdout=False, probs=measured.probs)
    return folder


def test_cli_replays_every_policy_and_split_and_refuses_bad_input(tmp_path, capsys):
    from bench.policy_replay import POLICY_COLUMNS, main
    from common.cli import run_cli

    cal = tiny_calibration(tmp_path / "cal")
    out = tmp_path / "policies.csv"
    argv = ["--calibration", str(cal), "--budgets", "3,6", "--lookup-nodes", "0,2,5", "--latency", "none", "--out", str(out)]
    assert run_cli(main, argv) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == POLICY_COLUMNS
    counts = table.groupby(["policy", "budget"]).size().to_dict()
    assert counts[("static", 3)] == 1 and counts[("dynamic", 6)] == 1
    assert counts[("hybrid", 3)] == 2 and counts[("hybrid", 6)] == 3  # shares 0, 2, min(5, budget - 1), deduplicated
    assert counts[("hybrid-dynamic", 6)] == 3
    assert (table["tokens_per_step"] >= 1).all() and table["tokens_per_s"].isna().all()
    assert "best lookup share per budget" in capsys.readouterr().out
    for bad, message in ((["--policies", "static,bogus"], "--policies"), (["--budgets", "0"], "--budgets"),
                         (["--calibration", str(tmp_path / "none")], "not a folder")):
        assert run_cli(main, [*argv, *bad]) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
    (cal / "tokens.parquet").unlink()  # a calibration made before the sequence table
    assert run_cli(main, argv) != 0
    assert "--fresh" in capsys.readouterr().err


def test_a_runs_lookup_policy_is_replayed_with_its_tree_and_options():
    from bench.policy_replay import replayed_policy

    item = {"method": "medusa-lookup", "tree": "lookup3+optuna_cpu_1t_compiled",
            "options": {"lookup_nodes": 3, "nodes": 4, "max_ngram": 3, "min_ngram": 1, "proposal_vocab": 16384},
            "compile": True}
    tree, nodes, lk, _, lookup = replayed_policy(item)
    assert tree == "optuna_cpu_1t_compiled" and (nodes, lk) == (4, 3) and lookup.max_chain == 3
    tree, nodes, lk, _, lookup = replayed_policy({**item, "method": "medusa", "tree": "optuna_cpu_1t_compiled",
                                                     "options": {"proposal_vocab": 16384}})
    assert (nodes, lk, lookup) == (4, 0, None)
    with pytest.raises(WorkbenchError, match="not found"):
        replayed_policy({**item, "tree": "lookup3+no_such_tree"})
    own = {"name": "mine", "paths": [[0], [0, 0]]}  # a run's own copy of its tree wins over the file
    assert replayed_policy({**item, "tree": "lookup3+mine", "run_tree": own}, None)[:3] == ("mine", 4, 3)
    dyn = {"method": "medusa-dynamic", "tree": "dynamic_16", "options": {"budget": 16, "top_k": 10}}
    with pytest.raises(WorkbenchError, match="confidence"):
        replayed_policy(dyn)
    cmap = fit_confidence(pd.DataFrame({"head": [1, 1, 2, 2], "prob": [0.1, 0.9, 0.2, 0.8], "hit": [0, 1, 0, 1]}))
    assert replayed_policy(dyn, cmap)[:3] == ("dynamic_16", 16, 0)
    lk_dyn = {**item, "options": {**item["options"], "dynamic": True, "budget": 8, "nodes": 0}}
    assert replayed_policy(lk_dyn, cmap)[:3] == ("dynamic_8", 11, 3)


def test_turn_texts_predict_their_own_turn():
    from bench.policy_replay import of_turn

    texts = [PromptText(n, np.zeros(3, np.int64), 1, np.zeros((1, 1, 1), np.int64), np.zeros((1, 1, 1)))
             for n in ("a:t1", "a:t2", "b:t1")]
    assert [p.name for p in of_turn(texts, "1")[1]] == ["a:t1", "b:t1"] and of_turn(texts, "2")[0] == "2"
    assert of_turn(texts, "all") == ("all", texts)
    single = [dataclasses.replace(texts[0], name="a")]
    assert of_turn(single, "2")[0] == "all"  # a one-turn calibration predicts every turn


def test_cross_fit_predicts_each_questions_fold_from_the_other():
    from bench.policy_replay import cross_fit

    rng = np.random.default_rng(5)
    a, _ = synthetic_prompt(rng)
    b, _ = synthetic_prompt(rng)
    a, b = dataclasses.replace(a, name="1:t1"), dataclasses.replace(b, name="2:t1")
    nodes = static_nodes(dense([3, 2]))
    tau_a, tau_b = tokens_per_step([a], nodes)[0], tokens_per_step([b], nodes)[0]
    assert tau_a != tau_b
    # measured exactly what each text replays: question 1 is predicted by question 2's text and vice versa
    records = pd.DataFrame({"question_id": [1, 2], "accepted_tokens": [100 * tau_a, 100 * tau_b], "steps": [100, 100]})
    predicted, error = cross_fit([a, b], records, nodes, None)
    assert error == pytest.approx(max(tau_b / tau_a - 1, tau_a / tau_b - 1, key=abs))
    assert predicted in (pytest.approx(tau_a), pytest.approx(tau_b))
