"""Heads that propose from a sub-vocabulary: the same proposals restricted to it, lossless decoding,
the counts stage 1 writes, and the method option."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import WorkbenchError
from medusa.decode import DecodeConfig, generate
from medusa.heads import HeadsConfig, MedusaHeads
from medusa.subvocab import TARGET_COUNTS, SubVocabHeads, coverage, proposal_vocab
from medusa.testing import greedy_reference, tiny_backbone
from trees.tree import preset

PROMPT = [5, 17, 33, 2, 60, 61, 7]


@pytest.fixture(scope="module")
def bb():
    return tiny_backbone()


def trained_like(bb, projection: str) -> MedusaHeads:
    heads = MedusaHeads.for_backbone(bb, HeadsConfig(num_heads=4, lm_projection=projection))
    with torch.no_grad():  # non-zero blocks so that heads differ from the base LM head and from each other
        for p in heads.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return heads


@pytest.mark.parametrize("projection", ["shared", "own"])
def test_proposals_are_the_full_heads_ranked_within_the_sub_vocabulary(bb, projection):
    heads = trained_like(bb, projection)
    h = torch.randn(bb.hidden_size)
    every = SubVocabHeads(heads, torch.arange(bb.vocab_size))
    assert torch.equal(every.propose(h, [], 5), heads.propose(h, [], 5))
    ids = torch.arange(0, bb.vocab_size, 3)
    sub = SubVocabHeads(heads, ids)
    full = heads(h)  # (K, V)
    want = ids[full[:, ids].topk(4, dim=-1).indices]
    assert torch.equal(sub.propose(h, [], 4), want)
    tokens, probs = sub.propose_scored(h, [], 4)
    assert torch.equal(tokens, want) and torch.allclose(probs, torch.softmax(full[:, ids], -1).topk(4, -1).values)


def test_decoding_with_sub_vocabulary_heads_is_lossless(bb):
    heads = SubVocabHeads(trained_like(bb, "shared"), torch.arange(0, bb.vocab_size, 2))
    ref = greedy_reference(bb, PROMPT, 24)
    out = generate(bb, heads, preset("mc_sim_7b_63"), PROMPT, DecodeConfig(max_new_tokens=24))
    assert out.output_ids == ref


def test_proposal_vocab_takes_the_most_frequent_targets(tmp_path):
    counts = np.array([0, 5, 9, 5, 1, 0, 7])
    np.save(tmp_path / TARGET_COUNTS, counts)
    assert proposal_vocab(tmp_path, 3).tolist() == [1, 2, 6]  # 9, 7, then 5 at the lower id
    assert proposal_vocab(tmp_path, 7).tolist() == list(range(7))
    assert coverage(counts, 2) == pytest.approx(16 / 27)
    with pytest.raises(WorkbenchError, match="proposal vocabulary size"):
        proposal_vocab(tmp_path, 0)
    with pytest.raises(WorkbenchError, match="target_counts.npy"):
        proposal_vocab(tmp_path / "nowhere", 3)


def test_stage1_writes_the_training_targets_counts(tmp_path):
    from unittest import mock

    from medusa.distill import read_samples
    from medusa.train import losses as L
    from medusa.train import stage1 as T
    from tests.test_train import config, toy_records

    for name, n, seed in (("train", 16, 0), ("eval", 4, 1)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "shard-00000.jsonl").write_text("\n".join(toy_records(n, seed)) + "\n")
    toy = {"train": tmp_path / "train", "eval": tmp_path / "eval", "root": tmp_path}
    bb = tiny_backbone()
    with mock.patch.object(T, "load_backbone", lambda *a, **k: bb):
        T.train_stage1(config(toy, steps=2, eval_every=2), progress=False)
    counts = np.load(tmp_path / "out" / TARGET_COUNTS)
    targets = np.concatenate([L.head_targets(s.ids, s.spans, 4)[1] for s in read_samples(str(toy["train"]))])
    want = np.bincount(targets[targets != L.IGNORE], minlength=bb.vocab_size)
    assert counts.shape == (bb.vocab_size,) and np.array_equal(counts, want)


def test_the_method_option_restricts_the_heads_and_stays_lossless(bb, tmp_path):
    from bench.methods import MethodContext, MethodSettings, build_method, resolve_options

    heads = trained_like(bb, "shared")
    folder = tmp_path / "heads"
    folder.mkdir()
    np.save(folder / TARGET_COUNTS, np.arange(bb.vocab_size))  # the highest ids are the most frequent
    context = MethodContext(backbone=bb, settings=MethodSettings(0.0, 0.09, 0.3), heads=heads,
                            heads_name=f"{folder}@abc", tree=preset("mc_sim_7b_63"))
    method = build_method("medusa", context, resolve_options("medusa", {"proposal_vocab": "10"}))
    assert method.heads.token_ids.tolist() == list(range(bb.vocab_size - 10, bb.vocab_size))
    assert method.generate(PROMPT, 16, 0).new_ids == greedy_reference(bb, PROMPT, 16)
    with pytest.raises(WorkbenchError, match="proposal_vocab"):
        resolve_options("medusa", {"proposal_vocab": "-1"})


def test_compiled_proposals_of_sub_vocabulary_heads_are_token_ids(bb):
    from medusa.compiled import CompiledProposer

    sub = SubVocabHeads(trained_like(bb, "shared"), torch.arange(1, bb.vocab_size, 4))
    proposer = CompiledProposer(sub, bb.device)
    for _ in range(2):
        hidden = torch.randn(bb.hidden_size)
        assert torch.equal(proposer.propose(hidden, [], 3), sub.propose(hidden, [], 3))
        ids, probs = proposer.propose_scored(hidden, [], 3)
        want_ids, want_probs = sub.propose_scored(hidden, [], 3)
        assert torch.equal(ids, want_ids) and torch.allclose(probs, want_probs, atol=1e-6)


def test_heads_speed_microbenchmark_runs_on_a_tiny_model(bb, tmp_path, capsys):
    from unittest import mock

    import pandas as pd

    from bench import heads_speed as S
    from common.cli import run_cli

    folder = trained_like(bb, "shared").save(tmp_path / "heads")
    np.save(folder / TARGET_COUNTS, np.arange(bb.vocab_size))
    with mock.patch.object(S, "load_backbone", lambda *a, **k: bb):
        rc = run_cli(S.main, ["--heads", str(folder), "--sizes", "0,32", "--modes", "eager", "--calls", "2",
                              "--out", str(tmp_path / "t.csv")])
        assert rc == 0
        table = pd.read_csv(tmp_path / "t.csv")
        assert table["vocab"].tolist() == [bb.vocab_size, 32] and (table["ms_per_call"] > 0).all()
        assert table["coverage"].iloc[0] == 1.0 and 0 < table["coverage"].iloc[1] < 1
        assert run_cli(S.main, ["--heads", str(folder), "--modes", "fast"]) == 2
    assert "--modes" in capsys.readouterr().err
