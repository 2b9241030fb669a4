"""Teacher-forced distillation data (medusa.teacher) and the soft loss, on a tiny random Llama."""

from __future__ import annotations

import json
import math
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import medusa.teacher as M
from common.cli import run_cli
from medusa.data import split_of
from medusa.testing import tiny_backbone, tiny_tokenizer
from medusa.train import losses as L
from medusa.train import stage1 as T
from medusa.train.cache import open_teacher_cache, teacher_target_rows
from medusa.train.config import TrainConfig


def word_backbone():
    bb = tiny_backbone()
    bb.tokenizer = tiny_tokenizer(bb.vocab_size)
    return bb


def words(rng: np.random.Generator, n: int) -> str:
    return " ".join(f"w{int(i)}" for i in rng.integers(1, 90, size=n))


@pytest.fixture
def conversations(tmp_path: Path) -> Path:
    """20 two-turn conversations (user, assistant, user, assistant) as a .jsonl of messages."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(20):
        msgs = [{"role": "user", "content": f"w{i + 1} " + words(rng, 3)},
                {"role": "assistant", "content": words(rng, 8 + i % 5)},
                {"role": "user", "content": words(rng, 2)},
                {"role": "assistant", "content": words(rng, 6)}]
        lines.append(json.dumps({"messages": msgs}))
    path = tmp_path / "conv.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(autouse=True)
def tiny():
    bb = word_backbone()
    with mock.patch.object(M, "load_backbone", lambda *a, **k: bb), mock.patch.object(T, "load_backbone", lambda *a, **k: bb):
        yield bb


def cfg(path: Path, **kw) -> M.TeacherConfig:
    base = dict(source=str(path), split="all", top_k=8, records_per_shard=6)
    base.update(kw)
    return M.TeacherConfig(**base)


def rows_of(out: Path) -> list[tuple[str, int]]:
    """(record key, position) of every stored row, over all shards."""
    rows = []
    for shard in M.iter_shards(out):
        arrays, meta = M.read_shard(shard)
        rows += [(meta["keys"][s], int(p)) for s, p in zip(arrays["seq"], arrays["pos"])]
    return rows


# ---- the soft loss ------------------------------------------------------------------------------
def test_soft_cross_entropy_matches_a_hand_computed_value():
    logits = torch.tensor([[0.0, math.log(2.0), math.log(3.0), math.log(4.0)]])  # p = .1 .2 .3 .4
    ids = torch.tensor([[3, 1]])
    logp = torch.log(torch.tensor([[0.5, 0.3]]))  # teacher: token 3 .5, token 1 .3, rest .2
    rest = torch.log(torch.tensor([0.2]))
    expected = -(0.5 * math.log(0.4) + 0.3 * math.log(0.2) + 0.2 * math.log(0.1 + 0.3))
    assert L.soft_cross_entropy(logits, ids, logp, rest).item() == pytest.approx(expected, rel=1e-6)


def test_soft_cross_entropy_is_hard_cross_entropy_for_one_hot_targets():
    torch.manual_seed(0)
    logits = torch.randn(5, 11)
    target = torch.tensor([3, 0, 10, 7, 7])
    ids = torch.stack([target, (target + 1) % 11, (target + 2) % 11], dim=1)
    logp = torch.tensor([0.0, float("-inf"), float("-inf")]).expand(5, 3)
    rest = torch.full((5,), -1e4)
    assert torch.allclose(L.soft_cross_entropy(logits, ids, logp, rest), F.cross_entropy(logits, target))


def test_a_top_k_mass_rounded_to_one_gives_no_nan():
    # a peaked distribution: the top-k log-probabilities sum to 1 (or past it) in float arithmetic
    # data written before `medusa.teacher.rest_log_mass` holds NaN there: the loss reads it as "no mass left"
    ids, logp, student = torch.tensor([[0, 1]]), torch.tensor([[0.0, -60.0]]), torch.randn(1, 4)
    out = L.soft_cross_entropy(student, ids, logp, torch.tensor([float("nan")]))
    assert torch.isfinite(out)
    assert out.item() == pytest.approx(L.soft_cross_entropy(student, ids, logp, torch.tensor([-1e4])).item())


def test_rest_mass_is_finite_when_rounding_puts_the_top_k_at_or_past_one():
    inside = torch.tensor([1e-12, 0.0, -0.5], dtype=torch.float64)  # log p_top: just past 1, exactly 1, 0.61
    rest = M.rest_log_mass(inside)
    assert torch.isfinite(rest).all()
    assert rest[:2].tolist() == [-1e4, -1e4] and rest[2].item() == pytest.approx(math.log(1 - math.exp(-0.5)))


def test_medusa_loss_mix_is_the_weighted_sum():
    torch.manual_seed(1)
    feats = torch.randn(2, 4, 6)
    proj = torch.randn(11, 6)
    targets = torch.tensor([[1, 2], [3, L.IGNORE], [4, 5], [6, 7]])
    soft = L.SoftTargets(torch.randint(0, 11, (4, 2, 3)), torch.log_softmax(torch.randn(4, 2, 3), -1) - 1.0,
                         torch.full((4, 2), math.log(1 - math.exp(-1.0))))
    w = torch.ones(2)
    project = lambda k, x: x @ proj.T  # noqa: E731
    _, hard = L.medusa_loss(feats, targets, project, w)
    _, pure = L.medusa_loss(feats, targets, project, w, soft=soft, soft_weight=1.0)
    _, mix = L.medusa_loss(feats, targets, project, w, soft=soft, soft_weight=0.25)
    assert torch.allclose(mix, 0.75 * hard + 0.25 * pure)


# ---- the data -----------------------------------------------------------------------------------
def test_conversation_ids_mark_every_assistant_turn(tiny):
    msgs = ({"role": "user", "content": "w1 w2"}, {"role": "assistant", "content": "w3 w4 w5"},
            {"role": "user", "content": "w6"}, {"role": "assistant", "content": "w7 w8"})
    ids, spans = M.conversation_ids(tiny, msgs, 100)
    assert ids == [1, 2, 3, 4, 5, 6, 7, 8] and spans == [(2, 5), (6, 8)]
    assert M.conversation_ids(tiny, msgs, 7) == ([1, 2, 3, 4, 5, 6, 7], [(2, 5), (6, 7)])
    pos, scored = M.positions_of(spans, len(ids))
    assert pos.tolist() == [0, 1, 2, 3, 4, 5, 6] and scored.tolist() == [False, True, True, True, False, True, True]


def test_stored_values_are_the_backbones_distribution(conversations, tmp_path, tiny):
    M.build_teacher_data(cfg(conversations, limit=2), tmp_path / "out", progress=False)
    arrays, meta = M.read_shard(next(M.iter_shards(tmp_path / "out")))
    first = [m for m in json.loads(conversations.read_text().splitlines()[0])["messages"]]
    ids, spans = M.conversation_ids(tiny, first, 2048)
    with torch.no_grad():
        out = tiny.model(torch.tensor([ids]), output_hidden_states=True)
    logp = torch.log_softmax(out.logits[0].float(), -1)
    rows = np.flatnonzero(np.asarray(arrays["seq"]) == 0)
    pos = np.asarray(arrays["pos"])[rows]
    top = logp[pos].topk(8, -1)
    assert np.array_equal(np.asarray(arrays["topk_ids"])[rows], top.indices.numpy())
    assert np.allclose(np.asarray(arrays["topk_logp"])[rows], top.values.numpy(), atol=2e-3)
    rest = np.exp(np.asarray(arrays["rest_logp"])[rows]) + np.exp(top.values.numpy()).sum(-1)
    assert np.allclose(rest, 1.0, atol=1e-4)
    hidden = torch.from_numpy(np.asarray(arrays["hidden"])[rows].view(np.int16)).view(torch.bfloat16).float()
    assert torch.allclose(hidden, out.hidden_states[-1][0, pos], atol=0.05, rtol=0.02)


def test_teacher_forced_targets_line_up_with_a_planted_sequence():
    """Head k on position t is scored against the distribution at t+k (the backbone's logits there
    predict token t+k+1), only within one record and only where that distribution is scored."""
    # record 0 stores positions 3..9 (scored from 4), record 1 positions 0..3 (all scored)
    seq = np.array([0] * 7 + [1] * 4)
    pos = np.array([3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3])
    scored = np.array([False] + [True] * 6 + [True] * 4)
    rows = teacher_target_rows(seq, pos, scored, 3)
    assert rows[0].tolist() == [1, 2, 3]      # t=3: heads 1..3 at t=4,5,6
    assert rows[5].tolist() == [6, -1, -1]    # t=8: t=9 is the record's last row
    assert rows[6].tolist() == [-1, -1, -1]
    assert rows[7].tolist() == [8, 9, 10]     # never across records

    planted = {"hidden": np.zeros((11, 4), dtype=np.uint16), "seq": seq, "pos": pos, "scored": scored,
               "topk_ids": (100 + np.arange(11))[:, None].repeat(2, 1).astype(np.int32),
               "topk_logp": np.zeros((11, 2), np.float16), "rest_logp": np.zeros(11, np.float32)}
    from medusa.train.cache import TeacherCache  # a planted shard, no folder needed
    cache = TeacherCache([(planted, np.flatnonzero((rows >= 0).any(1)), rows)], {})
    _, tgt = cache.batch(np.arange(cache.rows))
    assert tgt[0].tolist() == [101, 102, 103] and tgt[5].tolist() == [106, L.IGNORE, L.IGNORE]
    assert cache.soft_batch(np.arange(cache.rows)).ids[0, 2].tolist() == [103, 103]


def test_shards_resume_without_duplicating_positions(conversations, tmp_path):
    straight = tmp_path / "straight"
    M.build_teacher_data(cfg(conversations), straight, progress=False)
    out = tmp_path / "out"
    real = M.write_shard
    calls = {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    with mock.patch.object(M, "write_shard", failing), pytest.raises(KeyboardInterrupt):
        M.build_teacher_data(cfg(conversations, limit=15), out, progress=False)
    assert len(list(M.iter_shards(out))) == 1 and not list(out.glob(".shard-*"))
    M.build_teacher_data(cfg(conversations, limit=15), out, progress=False)
    run = M.build_teacher_data(cfg(conversations), out, progress=False)  # raising the limit adds records
    got, want = rows_of(out), rows_of(straight)
    assert len(got) == len(set(got)) and sorted(got) == sorted(want) and run["positions"] == len(want)
    assert run["records"] == 20


def test_other_settings_on_resume_are_one_line(conversations, tmp_path, capsys):
    M.build_teacher_data(cfg(conversations, limit=2), tmp_path / "out", progress=False)
    rc = run_cli(M.main, ["--prompts", str(conversations), "--split", "all", "--out", str(tmp_path / "out"),
                          "--top-k", "4", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "top_k: 8 -> 4" in err and "\n" not in err


def test_the_split_keeps_evaluation_prompts_out_of_training(tmp_path):
    texts = [f"w{i} w{j}" for i in range(1, 40) for j in range(1, 6)]
    held_out = [t for t in texts if split_of(t) != "train"]
    assert held_out  # the hash puts some of them in calibration/eval
    path = tmp_path / "conv.jsonl"
    path.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": t},
                                                       {"role": "assistant", "content": "w7 w8 w9"}]})
                              for t in texts) + "\n")
    run = M.build_teacher_data(cfg(path, split="train"), tmp_path / "out", progress=False)
    keys = {k for k, _ in rows_of(tmp_path / "out")}
    from medusa.data import prompt_hash
    assert keys == {prompt_hash(t) for t in texts if split_of(t) == "train"}
    assert run["records"] == len(texts) - len(held_out)


@pytest.mark.parametrize("argv,needle", [(["--top-k", "0"], "top-k"), (["--split", "test"], "split"),
                                         (["--limit", "0"], "limit"), (["--prompts", "nope"], "nope")])
def test_bad_input_is_one_line(conversations, tmp_path, capsys, argv, needle):
    rc = run_cli(M.main, ["--prompts", str(conversations), "--split", "all", "--out", str(tmp_path / "o"), "--quiet", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and needle in err and "\n" not in err


# ---- stage 1 on teacher-forced shards -----------------------------------------------------------
@pytest.mark.parametrize("loss", ["hard", "soft", "mix"])
def test_stage1_trains_from_teacher_shards(conversations, tmp_path, loss):
    M.build_teacher_data(cfg(conversations), tmp_path / "teacher", progress=False)
    cache = open_teacher_cache(str(tmp_path / "teacher"), 3, 32)
    assert cache.rows > 100
    config = TrainConfig(data=str(tmp_path / "teacher"), eval_data=str(tmp_path / "teacher"), out=str(tmp_path / "out"),
                         steps=20, batch_size=32, lr=1e-2, num_heads=3, eval_every=20, save_every=1000,
                         cache_root=str(tmp_path / "cache"), loss=loss)
    rec = T.train_stage1(config, progress=False)
    assert rec["train_data"]["kind"] == "teacher" and rec["train_rows"] == cache.rows
    assert rec["config"]["loss"] == loss
    loss_rows = (tmp_path / "out" / "loss.csv").read_text().splitlines()[1:]
    values = [float(r.split(",")[1]) for r in loss_rows]
    assert len(values) == 20 and all(math.isfinite(v) for v in values)
    if loss == "hard":  # a random tiny teacher is near uniform: the soft CE sits near its entropy
        assert values[-1] < values[0]
    assert set(rec["top1_accuracy_by_head"]) == {1, 2, 3} and (tmp_path / "out" / "heads.safetensors").is_file()
    keys = (tmp_path / "out" / "prompts.txt").read_text().splitlines()[1:]
    assert len(keys) == 20


def test_soft_loss_on_self_distilled_data_is_one_line(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "shard-00000.jsonl").write_text(json.dumps({"key": "a", "ids": [1, 2, 3, 4], "spans": [[1, 4]]}) + "\n")
    from medusa.train import cli as C
    rc = run_cli(C.main, ["--stage", "1", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--loss", "soft"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "teacher-forced" in err and "\n" not in err


# ---- the greedy path: next_id and --on-path -----------------------------------------------------
def test_on_path_keeps_head_k_only_where_the_text_followed_the_argmax_for_k_tokens():
    """Rows 0..5 are positions 0..5 of one record; the text agrees with the argmax at rows 0, 1, 3, 4."""
    seq, pos, scored = np.zeros(6, int), np.arange(6), np.ones(6, bool)
    rows = teacher_target_rows(seq, pos, scored, 3)
    argmax = np.array([7, 8, 9, 10, 11, 12])
    next_id = np.array([7, 8, 0, 10, 11, 0])          # rows 2 and 5 left the greedy path
    from medusa.train.cache import on_path_rows
    got = on_path_rows(rows, argmax[:, None], next_id)
    assert got[0].tolist() == [1, 2, -1]    # tokens 1, 2 greedy; token 3 not
    assert got[1].tolist() == [2, -1, -1]
    assert got[2].tolist() == [-1, -1, -1]  # its own next token is off the path: no head has a target
    assert got[3].tolist() == [4, 5, -1]    # head 3 would need row 6: there is none
    assert got[4].tolist() == [5, -1, -1]


def test_next_ids_are_the_texts_next_tokens_and_backfill_rebuilds_them(conversations, tmp_path, tiny):
    out = tmp_path / "out"
    M.build_teacher_data(cfg(conversations, limit=8), out, progress=False)
    first = json.loads(conversations.read_text().splitlines()[0])["messages"]
    ids, _ = M.conversation_ids(tiny, first, 2048)
    shard = next(M.iter_shards(out))
    arrays, _ = M.read_shard(shard)
    rows = np.flatnonzero(np.asarray(arrays["seq"]) == 0)
    assert np.asarray(arrays["next_id"])[rows].tolist() == [ids[p + 1] for p in np.asarray(arrays["pos"])[rows]]
    written = {s.name: np.load(s / "next_id.npy") for s in M.iter_shards(out)}
    for s in M.iter_shards(out):
        (s / "next_id.npy").unlink()
    with pytest.raises(Exception, match="backfill-next-ids"):
        open_teacher_cache(str(out), 3, 32, on_path=True)
    assert M.backfill_next_ids(out) == len(written)
    assert all(np.array_equal(np.load(s / "next_id.npy"), written[s.name]) for s in M.iter_shards(out))
    assert M.backfill_next_ids(out) == 0


def test_stage1_on_path_trains_on_fewer_deeper_targets(conversations, tmp_path):
    M.build_teacher_data(cfg(conversations), tmp_path / "teacher", progress=False)
    every = open_teacher_cache(str(tmp_path / "teacher"), 3, 32)
    on = open_teacher_cache(str(tmp_path / "teacher"), 3, 32, on_path=True)
    assert 0 < on.meta["targets_by_head"][0] <= every.meta["targets_by_head"][0]
    assert on.meta["targets_by_head"] == sorted(on.meta["targets_by_head"], reverse=True)
    config = TrainConfig(data=str(tmp_path / "teacher"), eval_data=str(tmp_path / "teacher"), out=str(tmp_path / "out"),
                         steps=4, batch_size=16, num_heads=3, eval_every=4, save_every=1000, on_path=True,
                         cache_root=str(tmp_path / "cache"))
    rec = T.train_stage1(config, progress=False)
    assert rec["train_rows"] == on.rows and rec["cache"]["on_path"] is True


def test_on_path_with_self_distilled_data_is_one_line(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "shard-00000.jsonl").write_text(json.dumps({"key": "a", "ids": [1, 2, 3, 4], "spans": [[1, 4]]}) + "\n")
    from medusa.train import cli as C
    rc = run_cli(C.main, ["--stage", "1", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--on-path"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "--on-path" in err and "\n" not in err


def test_max_samples_keeps_whole_teacher_shards_in_order(conversations, tmp_path):
    M.build_teacher_data(cfg(conversations), tmp_path / "teacher", progress=False)  # 6 records per shard
    every = open_teacher_cache(str(tmp_path / "teacher"), 3, 32)
    assert every.meta["records"] == 20
    some = open_teacher_cache(str(tmp_path / "teacher"), 3, 32, max_records=7)
    assert some.meta["records"] == 12 and some.meta["shards"] == 2 and some.rows < every.rows
    assert open_teacher_cache(str(tmp_path / "teacher"), 3, 32, max_records=6).meta["records"] == 6
