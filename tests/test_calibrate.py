"""Calibration: ranks are aligned with what the engine accepts, tables derive correctly, files persist."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest
import torch

from bench.calibrate import (
    Measured,
    collect_ranks,
    collect_tables,
    greedy_continuation,
    hidden_states,
    main,
    ranks_of,
    resumable,
    write_measured,
    write_ranks,
    write_tables,
)
from common.cli import run_cli
from common.errors import MissingResult, WorkbenchError
from medusa.decode import DecodeConfig, generate
from medusa.heads import HeadsConfig, MedusaHeads
from medusa.testing import OracleProposer, greedy_reference
from trees.acceptance_model import (
    RANKS_COLUMNS,
    load_marginals,
    load_path_stats,
    rank_matrix,
    simulate_steps,
)
from trees.confidence import CANDIDATE_TABLE_COLUMNS, load_confidence
from trees.policy_replay import SEQUENCE_COLUMNS, load_sequences
from trees.tree import Tree, chain

PROMPTS = [("a", [1, 5, 9, 12, 7]), ("b", [3, 4, 8]), ("c", [11, 2, 2, 6, 30, 31])]


class PatternProposer:
    """Deterministic proposer knowing the greedy future: puts the true token of head k at rank
    ``(n + k) % 4`` (absent when that is 3), random distinct tokens elsewhere."""

    def __init__(self, reference: dict[int, list[int]], num_heads: int, vocab_size: int) -> None:
        self.reference = reference  # prompt length -> prompt + greedy continuation
        self.num_heads = num_heads
        self.vocab_size = vocab_size

    def propose(self, hidden: torch.Tensor, token_ids: Sequence[int], top_k: int) -> torch.Tensor:
        n = len(token_ids)
        ref = next(r for r in self.reference.values() if r[: n] == list(token_ids))
        gen = torch.Generator().manual_seed(n)
        out = torch.randperm(self.vocab_size, generator=gen)[: self.num_heads * top_k].view(self.num_heads, top_k).clone()
        for k in range(self.num_heads):
            pos = n + k
            if pos >= len(ref):
                continue
            true = ref[pos]
            row = out[k]
            row[row == true] = -1
            slot = (n + k) % 4
            if slot < 3 and slot < top_k:
                row[slot] = true
            out[k][out[k] == -1] = self.vocab_size - 2 if true != self.vocab_size - 2 else self.vocab_size - 3
        return out


def test_ranks_of():
    topk = torch.tensor([[[5, 6, 7], [1, 2, 3]]])
    assert ranks_of(topk, torch.tensor([[7, 9]])).tolist() == [[2, -1]]


def test_oracle_heads_rank_everything_first(tiny):
    refs = {name: list(ids) + greedy_reference(tiny, ids, 20) for name, ids in PROMPTS}
    for name, ids in PROMPTS:
        oracle = OracleProposer(refs[name], num_heads=3, vocab_size=tiny.vocab_size)
        ranks = collect_ranks(tiny, oracle, [(name, ids)], max_new_tokens=20, top_r=5)
        assert (ranks["rank0"] == 0).all()
        n_out = len(refs[name]) - len(ids)
        assert ranks["position"].max() == n_out - 1 - 3 and len(ranks) == 3 * (n_out - 3)
    assert greedy_continuation(tiny, PROMPTS[0][1], 20) == refs["a"][len(PROMPTS[0][1]):]
    oracle = OracleProposer(refs["a"], num_heads=3, vocab_size=tiny.vocab_size)
    assert greedy_continuation(tiny, PROMPTS[0][1], 20, oracle, chain(3)) == refs["a"][len(PROMPTS[0][1]):]


def test_batched_heads_equal_per_position_proposals(tiny):
    torch.manual_seed(0)
    heads = MedusaHeads.for_backbone(tiny, HeadsConfig(num_heads=3))
    for block in heads.blocks:  # trained-looking heads: non-zero residual blocks
        for p in block.parameters():
            torch.nn.init.normal_(p, std=0.5)

    class AsProposer:
        num_heads = 3

        def propose(self, hidden, token_ids, top_k):
            return heads.propose(hidden, token_ids, top_k)

    a = collect_ranks(tiny, heads, PROMPTS, max_new_tokens=16, top_r=8)
    b = collect_ranks(tiny, AsProposer(), PROMPTS, max_new_tokens=16, top_r=8)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == RANKS_COLUMNS and (a["rank0"] >= -1).all() and (a["rank0"] < 8).all()
    assert set(a["head"]) == {1, 2, 3}


@pytest.mark.parametrize("tree", [chain(3), Tree.from_paths([(0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (2,)])])
def test_ranks_replay_the_engine_step_by_step(tiny, tree):
    """Replaying the calibration ranks gives the engine's accepted length at every step."""
    max_new = 24
    refs = {len(ids): list(ids) + greedy_reference(tiny, ids, max_new) for _, ids in PROMPTS}
    proposer = PatternProposer(refs, num_heads=3, vocab_size=tiny.vocab_size)
    ranks = collect_ranks(tiny, proposer, PROMPTS, max_new_tokens=max_new, top_r=4)
    assert (ranks["rank0"] == 1).any() and (ranks["rank0"] == -1).any()
    compared = 0
    for name, ids in PROMPTS:
        mat = rank_matrix(ranks[ranks["prompt"] == name])
        replay = simulate_steps(mat, tree)
        engine = generate(tiny, proposer, tree, ids, DecodeConfig(max_new_tokens=max_new, stop_on_eos=False))
        steps = [s.accepted_length for s in engine.steps]
        # steps that start inside the ranked positions must agree exactly
        assert steps[: len(replay) - 1] == replay[:-1]
        compared += len(replay) - 1
    assert compared > 10


def test_tables_and_atomic_files(tiny, tmp_path):
    heads = MedusaHeads.for_backbone(tiny, HeadsConfig(num_heads=2))
    ranks = collect_ranks(tiny, heads, PROMPTS, max_new_tokens=12, top_r=4)
    write_ranks(ranks, tmp_path / "ranks.parquet")
    files = write_tables(ranks, tmp_path, top_r=4)
    assert set(files) == {"accuracy", "paths", "holdout"} or set(files) == {"accuracy", "paths"}
    acc = pd.read_csv(files["accuracy"])
    assert list(acc.columns) == ["head", "rank0", "accuracy", "count"]
    per_head = acc.groupby("head")["accuracy"].sum()
    np.testing.assert_allclose(per_head.to_numpy(), 1.0)
    # recount by hand
    for (h, r), n in ranks.groupby(["head", "rank0"]).size().items():
        assert acc[(acc["head"] == h) & (acc["rank0"] == r)]["count"].item() == n
    paths = pd.read_csv(files["paths"], dtype={"path": str}, keep_default_na=False)
    assert list(paths.columns) == ["path", "depth", "count", "fraction"]
    assert paths.iloc[0]["path"] == "" and paths.iloc[0]["count"] == len(ranks) // 2
    assert load_path_stats(files["paths"]).positions == len(ranks) // 2
    assert load_marginals(files["accuracy"]).num_heads == 2
    assert not list(tmp_path.glob("*.tmp"))
    assert pd.read_parquet(tmp_path / "ranks.parquet").equals(ranks)


def test_resume_skips_done_prompts_and_checkpoints(tiny):
    heads = MedusaHeads.for_backbone(tiny, HeadsConfig(num_heads=2))
    first = collect_ranks(tiny, heads, PROMPTS[:1], max_new_tokens=12, top_r=4)
    seen = []
    full = collect_ranks(tiny, heads, PROMPTS, max_new_tokens=12, top_r=4, done=first,
                         on_prompt=lambda t: seen.append(t["prompt"].nunique()))
    assert seen == [2, 3]
    batched = collect_ranks(tiny, heads, PROMPTS, max_new_tokens=12, top_r=4, batch_size=2)
    pd.testing.assert_frame_equal(full, batched)
    again = collect_ranks(tiny, heads, PROMPTS, max_new_tokens=12, top_r=4)
    pd.testing.assert_frame_equal(full, again)


def test_cli_refuses_missing_heads(tmp_path, capsys):
    rc = run_cli(main, ["--heads", str(tmp_path / "none"), "--limit", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
    rc = run_cli(main, ["--limit", "0"])
    assert rc == 2 and "prompts must be >= 1" in capsys.readouterr().err
    # --prompts names a prompt set now; a count there points to --limit
    rc = run_cli(main, ["--prompts", "20"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--limit" in err


# ---- the candidates table and the confidence map -------------------------------------------------
def trained_looking_heads(tiny, num_heads: int = 2) -> MedusaHeads:
    torch.manual_seed(0)
    heads = MedusaHeads.for_backbone(tiny, HeadsConfig(num_heads=num_heads))
    for block in heads.blocks:
        for p in block.parameters():
            torch.nn.init.normal_(p, std=0.5)
    return heads


def test_candidates_table_agrees_with_ranks_and_softmax(tiny, tmp_path):
    heads = trained_looking_heads(tiny)
    measured = collect_tables(tiny, heads, PROMPTS, max_new_tokens=12, top_r=4)
    pd.testing.assert_frame_equal(measured.ranks, collect_ranks(tiny, heads, PROMPTS, max_new_tokens=12, top_r=4))
    probs = measured.probs
    assert list(probs.columns) == CANDIDATE_TABLE_COLUMNS and len(probs) == 4 * len(measured.ranks)
    # the sequence table is prompt + greedy output, positions from the first output token
    seq = measured.tokens
    assert list(seq.columns) == SEQUENCE_COLUMNS
    for name, ids in PROMPTS:
        text = seq[seq["prompt"] == name].sort_values("position")
        assert text["token"].tolist() == list(ids) + greedy_continuation(tiny, ids, 12)
        assert text["position"].tolist() == list(range(-len(ids), 12))
    # a hit candidate's token is the text's token `head` places past the root (output position)
    hits = probs[probs["hit"]].merge(seq.rename(columns={"position": "at", "token": "truth"}), on="prompt")
    hits = hits[hits["at"] == hits["position"] + hits["head"]]
    assert len(hits) == int(probs["hit"].sum()) > 0 and (hits["token"] == hits["truth"]).all()
    # a candidate is a hit exactly when its rank is the true token's rank
    merged = probs.merge(measured.ranks, on=["prompt", "position", "head"], suffixes=("", "_true"))
    assert len(merged) == len(probs)
    assert (merged["hit"] == (merged["rank0"] == merged["rank0_true"])).all()
    assert merged["hit"].sum() == (measured.ranks["rank0"] >= 0).sum() > 0
    # the heads' own softmax, recomputed at one position
    name, ids = PROMPTS[2]
    out = greedy_continuation(tiny, ids, 12)
    position = 3
    hidden = hidden_states(tiny, list(ids) + out)[len(ids) - 1 + position]
    with torch.inference_mode():
        want = torch.softmax(heads(hidden).float(), -1).topk(4).values  # (K, 4)
    got = probs[(probs["prompt"] == name) & (probs["position"] == position)].sort_values(["head", "rank0"])
    np.testing.assert_allclose(got["prob"].to_numpy().reshape(2, 4), want.numpy(), rtol=1e-5)
    # written beside accuracy.csv; counts and hits add up per head
    files = write_tables(measured.ranks, tmp_path, top_r=4, probs=probs)
    cmap = load_confidence(files["confidence"])
    per_head = cmap.table.groupby("head")[["count", "hits"]].sum()
    assert per_head["count"].tolist() == [len(probs) // 2] * 2
    assert per_head["hits"].tolist() == [int(probs[probs["head"] == h]["hit"].sum()) for h in (1, 2)]
    # a proposer without probabilities measures ranks only
    refs = {len(i): list(i) + greedy_reference(tiny, i, 12) for _, i in PROMPTS}
    assert collect_tables(tiny, PatternProposer(refs, 2, tiny.vocab_size), PROMPTS, 12, 4).probs is None


def test_resume_keeps_probabilities_only_when_they_cover_the_done_prompts(tiny, tmp_path, capsys):
    heads = trained_looking_heads(tiny)
    full = collect_tables(tiny, heads, PROMPTS, max_new_tokens=12, top_r=4)
    first = collect_tables(tiny, heads, PROMPTS[:1], max_new_tokens=12, top_r=4)
    resumed = collect_tables(tiny, heads, PROMPTS, max_new_tokens=12, top_r=4, done=first)
    pd.testing.assert_frame_equal(resumed.probs, full.probs)
    pd.testing.assert_frame_equal(resumed.tokens, full.tokens)
    old = collect_tables(tiny, heads, PROMPTS, max_new_tokens=12, top_r=4, done=Measured(first.ranks, None))
    assert old.probs is None and old.tokens is None  # an older calibration's ranks: no partial tables
    # on disk: a run cut off after writing probabilities but before ranks has one prompt too many there
    meta = {"heads_fingerprint": "x", "top_r": 4, "max_new_tokens": 12, "source": "sharegpt"}
    (tmp_path / "calibration.json").write_text(json.dumps(meta))
    write_measured(first, tmp_path / "ranks.parquet", tmp_path / "probs.parquet")
    write_ranks(full.probs, tmp_path / "probs.parquet")
    names = {n for n, _ in PROMPTS}
    back = resumable(tmp_path / "ranks.parquet", tmp_path / "calibration.json", meta, names, tmp_path / "probs.parquet")
    pd.testing.assert_frame_equal(back.probs, first.probs)
    pd.testing.assert_frame_equal(back.tokens, first.tokens)
    pd.testing.assert_frame_equal(load_sequences(tmp_path / "tokens.parquet"), first.tokens)
    (tmp_path / "probs.parquet").unlink()
    back = resumable(tmp_path / "ranks.parquet", tmp_path / "calibration.json", meta, names, tmp_path / "probs.parquet")
    assert back.probs is None and "confidence.csv will not be written" in capsys.readouterr().err
    (tmp_path / "tokens.parquet").unlink()
    back = resumable(tmp_path / "ranks.parquet", tmp_path / "calibration.json", meta, names, tmp_path / "probs.parquet")
    assert back.tokens is None and "lookup chains cannot be replayed" in capsys.readouterr().err


def test_derive_only_on_an_old_calibration_says_the_table_is_missing(tiny, tmp_path, capsys):
    heads = trained_looking_heads(tiny)
    heads.save(tmp_path / "heads")
    measured = collect_tables(tiny, heads, PROMPTS, max_new_tokens=12, top_r=4)
    cal = tmp_path / "cal"
    write_ranks(measured.ranks, cal / "ranks.parquet")  # what an older calibration holds
    argv = ["--derive-only", "--heads", str(tmp_path / "heads"), "--out", str(cal), "--top-r", "4"]
    assert run_cli(main, argv) == 0
    err = capsys.readouterr().err
    assert "note:" in err and "confidence.csv is not written" in err and not (cal / "confidence.csv").exists()
    assert load_marginals(cal / "accuracy.csv").num_heads == 2  # the old files still load
    with pytest.raises(MissingResult, match="lack it"):
        load_confidence(cal)
    write_ranks(measured.probs, cal / "probs.parquet")
    assert run_cli(main, argv) == 0
    assert load_confidence(cal).num_heads == 2


def test_second_turns_follow_the_models_own_first_answer():
    from types import SimpleNamespace

    from bench.calibrate import second_turns

    class Chat:
        """A stand-in backbone: decode joins ids, chat_ids records the messages it was given."""

        def __init__(self):
            self.seen = []

        def decode(self, ids):
            return " ".join(map(str, ids))

        def chat_ids(self, messages):
            self.seen.append(messages)
            return [len(self.seen)]

    talks = [SimpleNamespace(id="a", user_turns=["hi", "again"]), SimpleNamespace(id="b", user_turns=["x", "y"])]
    tokens = pd.DataFrame({"prompt": ["a:t1"] * 4, "position": [-2, -1, 0, 1], "token": [9, 9, 5, 6]})
    chat = Chat()
    out = second_turns(chat, talks, Measured(pd.DataFrame(columns=["prompt"]), None, tokens))
    assert out == [("a:t2", [1])]  # "b" had no first turn measured: skipped
    assert chat.seen[0] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "5 6"},
                            {"role": "user", "content": "again"}]
    with pytest.raises(WorkbenchError, match="second turns"):
        second_turns(chat, talks, Measured(pd.DataFrame(), None, None))


def test_turns_other_than_one_or_two_are_one_line(capsys):
    assert run_cli(main, ["--turns", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--turns must be 1 or 2" in err[0]


def test_measure_texts_gives_the_tables_of_decoded_texts_without_decoding(tiny):
    from bench.calibrate import measure_texts

    heads = trained_looking_heads(tiny)
    full = collect_tables(tiny, heads, PROMPTS, max_new_tokens=12, top_r=4)
    texts = [(name, ids, greedy_continuation(tiny, ids, 12)) for name, ids in PROMPTS]
    again = measure_texts(tiny, heads, texts, 4)
    pd.testing.assert_frame_equal(again.ranks, full.ranks)
    pd.testing.assert_frame_equal(again.probs, full.probs)
    pd.testing.assert_frame_equal(again.tokens, full.tokens)
    with pytest.raises(WorkbenchError, match="no texts"):
        measure_texts(tiny, heads, [], 4)
