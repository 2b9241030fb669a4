"""Medusa-1/2 training on a tiny random Llama: loss pieces, learning a toy language, resume, bad input,
and the upgrade of older training records."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from common.cli import run_cli
from common.provenance import Provenance
from medusa.distill import read_samples
from medusa.heads import MedusaHeads, load_heads
from medusa.testing import tiny_backbone
from medusa.train import cli as C
from medusa.train import losses as L
from medusa.train import record as R
from medusa.train import schedule as S
from medusa.train import stage1 as T
from medusa.train import stage2 as T2
from medusa.train import stage2_model as M2
from medusa.train.config import Stage2Config, TrainConfig

REPO = Path(__file__).resolve().parents[1]


def toy_records(n: int, seed: int, length: int = 40, prompt: int = 4) -> list[str]:
    """A deterministic language: each token is the previous one + 3 (mod 16), offset by 1."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        start = int(rng.integers(0, 16))
        ids = [(start + 3 * j) % 16 + 1 for j in range(length)]
        out.append(json.dumps({"key": f"s{seed}-{i}", "ids": ids, "spans": [[prompt, length]]}))
    return out


@pytest.fixture
def toy(tmp_path: Path) -> dict[str, Path]:
    for name, n, seed in (("train", 64, 0), ("eval", 8, 1)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "shard-00000.jsonl").write_text("\n".join(toy_records(n, seed)) + "\n")
    return {"train": tmp_path / "train", "eval": tmp_path / "eval", "root": tmp_path}


@pytest.fixture
def backbone():
    bb = tiny_backbone()
    with mock.patch.object(T, "load_backbone", lambda *a, **k: bb), \
            mock.patch.object(T2, "load_backbone", lambda *a, **k: tiny_backbone()):
        yield bb


def config(toy: dict[str, Path], out: str = "out", **kw) -> TrainConfig:
    base = dict(data=str(toy["train"]), eval_data=str(toy["eval"]), out=str(toy["root"] / out), steps=300,
                batch_size=64, lr=1e-2, num_layers=2, eval_every=300, save_every=1000,
                cache_root=str(toy["root"] / "cache"))
    base.update(kw)
    return TrainConfig(**base)


def test_head_weights_are_decay_to_the_k():
    assert torch.allclose(L.head_weights(4, 0.8), torch.tensor([0.8, 0.64, 0.512, 0.4096]))


def test_head_targets_score_head_k_at_t_against_token_t_plus_k_plus_1():
    ids = [100, 101, 102, 103, 104, 105, 106, 107]
    pos, tgt = L.head_targets(ids, [(3, 8)], num_heads=3)
    # rows: t whose t+k+1 lands in the generated span [3, 8) for some k in 1..3
    assert pos.tolist() == [0, 1, 2, 3, 4, 5]
    ign = L.IGNORE
    assert tgt.tolist() == [
        [ign, 103, 104],  # t=0: head1 -> t+2=2 (prompt, ignored), head2 -> 3, head3 -> 4
        [103, 104, 105],
        [104, 105, 106],
        [105, 106, 107],
        [106, 107, ign],
        [107, ign, ign],
    ]


def test_medusa_loss_is_weighted_sum_of_per_head_cross_entropy():
    torch.manual_seed(0)
    feats = torch.randn(3, 5, 8)
    proj = torch.nn.Linear(8, 11, bias=False)
    targets = torch.randint(0, 11, (5, 3))
    targets[0, 2] = L.IGNORE
    weights = L.head_weights(3)
    total, per = L.medusa_loss(feats, targets, lambda k, x: proj(x), weights)
    expected = []
    for k in range(3):
        keep = targets[:, k] != L.IGNORE
        expected.append(torch.nn.functional.cross_entropy(proj(feats[k][keep]), targets[keep, k]))
    expected = torch.stack(expected)
    assert torch.allclose(per, expected)
    assert torch.allclose(total, (expected * weights).sum())


def test_cosine_schedule_warms_up_then_decays_to_zero():
    lrs = [S.cosine_lr(s, 100, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert S.cosine_lr(100, 100, 10) == pytest.approx(0.0)


@pytest.mark.parametrize("projection,layers", [("shared", 2), ("own", 1)])
def test_tiny_heads_learn_a_deterministic_toy_language(toy, backbone, projection, layers):
    rec = T.train_stage1(config(toy, lm_projection=projection, num_layers=layers), progress=False)
    assert min(rec["top1_accuracy_by_head"].values()) >= 0.95
    acc = (toy["root"] / "out" / "accuracy.csv").read_text().splitlines()
    assert acc[0] == "head,topk,accuracy,count" and len(acc) == 1 + 4 * 10


def test_final_evaluation_writes_the_held_out_ranks_for_the_replay_model(toy, backbone):
    import pandas as pd

    from trees.acceptance_model import replay_model_from_ranks
    T.train_stage1(config(toy, steps=120, eval_every=120), progress=False)
    out = toy["root"] / "out"
    ranks = pd.read_parquet(out / T.EVAL_RANKS)
    acc = pd.read_csv(out / "accuracy.csv")
    samples = read_samples(str(toy["eval"]))
    assert ranks.prompt.nunique() == len(samples) == 8
    targets = np.concatenate([L.head_targets(s.ids, s.spans, 4)[1] for s in samples])  # cache row order
    assert len(ranks) == targets.size
    for k in range(1, 5):
        got = ranks[ranks["head"] == k].rank0.to_numpy()
        want = acc[(acc["head"] == k) & (acc["topk"] == 1)].accuracy.item()
        assert (got[targets[:, k - 1] != L.IGNORE] == 0).mean() == pytest.approx(want, abs=1e-6)  # accuracy.csv keeps 6 digits
        assert (got[targets[:, k - 1] == L.IGNORE] == -1).all()
    replay = replay_model_from_ranks(ranks)
    assert replay.positions == len(ranks) // 4


def test_head_ranks_are_the_targets_place_in_each_heads_top_list():
    heads = MedusaHeads.for_backbone(tiny_backbone())
    h = torch.randn(5, heads.config.hidden_size)
    with torch.no_grad():
        order = heads(h).argsort(dim=-1, descending=True)  # (K, 5, V)
    tgt = torch.stack([order[k, :, k] for k in range(heads.num_heads)], dim=1)  # head k's target at rank k-1
    tgt[2, 1] = L.IGNORE
    tgt[3, 0] = order[0, 3, 50]
    ranks = L.head_ranks(heads, h, tgt, chunk=2)
    want = np.tile(np.arange(heads.num_heads), (5, 1))
    want[2, 1] = -1
    want[3, 0] = -1  # rank 50 is outside the top 10
    assert ranks.tolist() == want.tolist()
    acc = L.accuracy_from_ranks(ranks, tgt)
    assert acc[(acc["head"] == 2)].set_index("topk").loc[[1, 2], "accuracy"].tolist() == [0.0, 1.0]
    assert acc[(acc["head"] == 2)]["count"].iloc[0] == 4 and acc[(acc["head"] == 3)]["count"].iloc[0] == 5


def test_sampled_vocab_training_still_learns(toy, backbone):
    rec = T.train_stage1(config(toy, train_vocab="seen", negatives=32), progress=False)
    assert rec["train_vocab_size"] == 16
    assert min(rec["top1_accuracy_by_head"].values()) >= 0.95


def test_save_load_round_trip_keeps_weights_and_record(toy, backbone):
    T.train_stage1(config(toy, steps=30), progress=False)
    out = toy["root"] / "out"
    heads = load_heads(out, backbone)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["training"]["stage"] == 1 and cfg["num_layers"] == 2
    record = json.loads((out / "training_record.json").read_text())
    assert record["train_data"]["samples"] == 64
    h = torch.randn(3, backbone.hidden_size)
    again = load_heads(out, backbone)
    assert torch.equal(heads(h), again(h))
    assert not (out / "checkpoint").exists()


def test_resume_after_interruption_matches_an_uninterrupted_run(toy, backbone):
    kw = dict(steps=40, save_every=20, eval_every=40)
    T.train_stage1(config(toy, "straight", **kw), progress=False)
    real = T.batch_indices

    def interrupt(rows, batch_size, step, seed):
        if step == 30:
            raise KeyboardInterrupt
        return real(rows, batch_size, step, seed)

    with mock.patch.object(T, "batch_indices", interrupt), pytest.raises(KeyboardInterrupt):
        T.train_stage1(config(toy, "resumed", **kw), progress=False)
    assert (toy["root"] / "resumed" / "checkpoint" / "progress.json").is_file()
    assert not (toy["root"] / "resumed" / "heads.safetensors").exists()
    rec = T.train_stage1(config(toy, "resumed", **kw), progress=False)
    assert rec["resumed_from_step"] == 20
    a = load_heads(toy["root"] / "straight", backbone).state_dict()
    b = load_heads(toy["root"] / "resumed", backbone).state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    losses = (toy["root"] / "resumed" / "loss.csv").read_text().splitlines()
    assert len(losses) == 1 + 40


def test_max_wall_s_stops_early_then_evaluates_and_saves_as_at_the_end(toy, backbone):
    clock = iter(range(0, 10_000, 10))  # every perf_counter() call is 10 s later than the last
    with mock.patch.object(T.time, "perf_counter", lambda: float(next(clock))):
        rec = T.train_stage1(config(toy, "budget", steps=40, eval_every=100, max_wall_s=65.0), progress=False)
    assert 1 <= rec["steps_done"] < 40 and rec["token_samples_seen"] == rec["steps_done"] * 64
    out = toy["root"] / "budget"
    assert (out / "heads.safetensors").is_file() and not (out / "checkpoint").exists()
    assert len((out / "loss.csv").read_text().splitlines()) == 1 + rec["steps_done"]
    history = (out / "accuracy_history.csv").read_text().splitlines()
    assert history[1].split(",")[0] == str(rec["steps_done"])  # the early stop's step was evaluated as the final one
    assert rec["top1_accuracy_by_head"]
    full = T.train_stage1(config(toy, "full", steps=6, eval_every=100), progress=False)
    assert full["steps_done"] == 6 and full["token_samples_seen"] == 6 * 64


def test_max_wall_s_must_be_positive(toy):
    with pytest.raises(Exception, match="max_wall_s"):
        config(toy, max_wall_s=0.0)


# ---- Medusa-2 ---------------------------------------------------------------------------------
def stage2_config(toy: dict[str, Path], **kw) -> Stage2Config:
    base = dict(data=str(toy["train"]), eval_data=str(toy["eval"]), out=str(toy["root"] / "m2"), steps=6,
                batch_size=2, heads_warmup=2, lambda_ramp=2, eval_samples=4, drift_prompts=2, drift_tokens=8)
    base.update(kw)
    return Stage2Config(**base)


def test_stage2_param_groups_and_frozen_parts(toy):
    cfg = stage2_config(toy, lr=1e-4, heads_lr_mult=4.0)
    model = M2.build(cfg, tiny_backbone())
    groups = M2.param_groups(model, cfg.lr, cfg.heads_lr_mult, 0.0)
    assert [g["name"] for g in groups] == ["backbone", "heads"]
    assert groups[0]["lr"] == pytest.approx(1e-4) and groups[1]["lr"] == pytest.approx(4e-4)
    lora = {id(p) for n, p in model.model.named_parameters() if "lora_" in n}
    assert {id(p) for p in groups[0]["params"]} == lora
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.heads.parameters()}
    frozen = {n: p.detach().clone() for n, p in model.model.named_parameters() if "lora_" not in n}
    lora_before = {n: p.detach().clone() for n, p in model.model.named_parameters() if "lora_" in n}
    opt = torch.optim.AdamW(groups)
    batch = M2.make_batch(read_samples(toy["train"], limit=2), 4, 64, torch.device("cpu"))
    args = (batch["ids"], batch["mask"], batch["next_rows"], batch["head_rows"], batch["head_tgt"])
    # heads-only warm-up: no backbone parameter moves
    bb, med, _ = model(*args, heads_only=True)
    med.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    assert all(torch.equal(p, lora_before[n]) for n, p in model.model.named_parameters() if "lora_" in n)
    # joint step: LoRA moves (B starts at zero, so A's first step is zero: check B), base weights stay
    bb, med, _ = model(*args, heads_only=False)
    (bb + 0.2 * med).backward()
    opt.step()
    assert any(not torch.equal(p, lora_before[n]) for n, p in model.model.named_parameters() if "lora_B" in n)
    assert all(torch.equal(p, frozen[n]) for n, p in model.model.named_parameters() if "lora_" not in n)


def test_lambda_schedule_warmup_then_ramp(toy):
    cfg = stage2_config(toy, heads_warmup=3, lambda_ramp=4, lambda0=0.2)
    assert [M2.lambda_at(s, cfg) for s in range(3)] == [0.0, 0.0, 0.0]
    assert M2.lambda_at(3, cfg) == pytest.approx(0.05) and M2.lambda_at(6, cfg) == pytest.approx(0.2)
    assert M2.lambda_at(50, cfg) == pytest.approx(0.2)


@pytest.mark.parametrize("full", [False, True])
def test_stage2_runs_and_records_drift(toy, backbone, full):
    rec = T2.train_stage2(stage2_config(toy, lora=not full), progress=False)
    out = toy["root"] / "m2"
    assert (out / "heads" / "heads.safetensors").is_file()
    assert (out / ("backbone" if full else "merged") / "config.json").is_file()
    if not full:
        assert (out / "adapter" / "adapter_model.safetensors").stat().st_size > 10_000
    drift = json.loads((out / "drift.json").read_text())
    assert 0.0 <= drift["teacher_forced_top1_agreement"] <= 1.0
    assert set(rec["top1_accuracy_by_head"]) == {1, 2, 3, 4}


# ---- bad input --------------------------------------------------------------------------------
def cli(toy, *extra: str) -> list[str]:
    return ["--stage", "1", "--data", str(toy["train"]), "--out", str(toy["root"] / "cli"), "--steps", "5",
            "--cache-root", str(toy["root"] / "cache"), "--quiet", *extra]


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    rc = run_cli(C.main, argv)
    return rc, capsys.readouterr().err.strip()


def test_cli_trains(toy, backbone, capsys):
    rc, err = run_main(cli(toy, "--eval-data", str(toy["eval"])), capsys)
    assert rc == 0, err
    assert (toy["root"] / "cli" / "heads.safetensors").is_file()


@pytest.mark.parametrize("content,needle", [("", "no distilled records"), ("{not json\n", "not a distilled record"),
                                            ('{"ids": [1, 2], "spans": [[1, 9]]}\n', "spans outside")])
def test_bad_data_file_is_one_line_and_writes_nothing(toy, backbone, capsys, content, needle):
    (toy["train"] / "shard-00000.jsonl").write_text(content)
    rc, err = run_main(cli(toy), capsys)
    assert rc == 2 and err.startswith("error: ") and needle in err and "\n" not in err
    assert not (toy["root"] / "cli" / "heads.safetensors").exists()


def test_missing_data_folder(toy, backbone, capsys):
    rc, err = run_main(["--stage", "1", "--data", str(toy["root"] / "nope"), "--out", str(toy["root"] / "cli")], capsys)
    assert rc == 2 and "not found" in err


def test_heads_for_another_backbone_are_refused(toy, backbone, capsys):
    other = tiny_backbone(hidden_size=48)
    MedusaHeads.for_backbone(other).save(toy["root"] / "other-heads")
    rc, err = run_main(cli(toy, "--init-heads", str(toy["root"] / "other-heads")), capsys)
    assert rc == 2 and "were trained for" in err
    assert not (toy["root"] / "cli" / "heads.safetensors").exists()


def test_data_distilled_by_another_backbone_is_refused(toy, backbone, capsys):
    other = tiny_backbone(hidden_size=48)
    (toy["train"] / "run.json").write_text(json.dumps({"backbone": other.identity.to_dict()}))
    rc, err = run_main(cli(toy), capsys)
    assert rc == 2 and "was distilled with" in err


def test_unwritable_output_folder(toy, backbone, capsys):
    blocker = toy["root"] / "a-file"
    blocker.write_text("x")
    argv = cli(toy)
    argv[argv.index("--out") + 1] = str(blocker / "sub")
    rc, err = run_main(argv, capsys)
    assert rc == 2 and "cannot write" in err


def test_cli_stage2(toy, backbone, capsys):
    argv = ["--stage", "2", "--data", str(toy["train"]), "--eval-data", str(toy["eval"]), "--out", str(toy["root"] / "m2cli"),
            "--steps", "3", "--batch-size", "2", "--heads-warmup", "1", "--lambda-ramp", "1", "--eval-samples", "2", "--quiet"]
    rc, err = run_main(argv, capsys)
    assert rc == 0, err
    record = json.loads((toy["root"] / "m2cli" / "training_record.json").read_text())
    assert record["stage"] == 2 and record["config"]["steps"] == 3 and record["config"]["lora"] is True


def test_cli_flags_map_onto_the_config_fields():
    args = C.build_parser().parse_args(["--stage", "1", "--data", "d", "--out", "o", "--num-heads", "3",
                                        "--dtype", "bfloat16", "--layers", "2"])
    cfg = C.config_from_args(args)
    assert isinstance(cfg, TrainConfig) and (cfg.num_heads, cfg.dtype, cfg.num_layers) == (3, "bfloat16", 2)
    args = C.build_parser().parse_args(["--stage", "2", "--data", "d", "--out", "o", "--full", "--steps", "7"])
    cfg = C.config_from_args(args)
    assert isinstance(cfg, Stage2Config) and cfg.lora is False and cfg.steps == 7 and cfg.batch_size == Stage2Config.batch_size


@pytest.mark.parametrize("old_flag", [["--backbone-dtype", "float32"], ["--heads", "4"], ["--num-heads", "x"]])
def test_old_and_bad_flags_are_one_line(toy, capsys, old_flag):
    rc, err = run_main(cli(toy, *old_flag), capsys)
    assert rc == 2 and err.startswith("error: ") and "\n" not in err


# ---- training records -------------------------------------------------------------------------
OLD_RECORD = {
    "stage": 1,
    "config": {"data": "data/distill/smollm2-train", "backbone": "smollm2-135m", "backbone_dtype": "auto",
               "device": "cpu", "num_heads": 4, "proj_dtype": "bfloat16", "steps": 3000, "threads": 1},
    "train_rows": 422916,
    "top1_accuracy_by_head": {"1": 0.3358, "2": 0.1825},
    "cache": {"chunks": 44, "backbone_dtype": "float32"},
    "processes": 1,
    "device": "cpu",
    "torch_threads": 1,
    "git_commit": "e2b4494",
    "finished_at": "2026-11-28T00:04:46+00:00",
}


def test_upgrade_training_record_maps_old_keys_and_is_idempotent():
    new = R.upgrade_training_record(OLD_RECORD)
    assert not {"git_commit", "device", "torch_threads"} & set(new)
    prov = new["provenance"]
    assert set(prov) == set(Provenance.__dataclass_fields__)
    assert (prov["commit"], prov["device_name"], prov["threads"], prov["dtype"], prov["date"]) == (
        "e2b4494", "cpu", 1, "float32", "2026-11-28T00:04:46+00:00")
    assert new["config"]["dtype"] == "auto" and "backbone_dtype" not in new["config"] and "threads" not in new["config"]
    kept = {k: v for k, v in OLD_RECORD.items() if k not in ("config", "device", "torch_threads", "git_commit")}
    assert all(new[k] == v for k, v in kept.items())
    assert R.upgrade_training_record(new) == new
    assert list(R.upgrade_training_record(new)) == list(new)
    assert "git_commit" in OLD_RECORD  # pure: the input is left as it was


def test_committed_training_record_is_in_the_current_schema(tmp_path):
    path = REPO / "results" / "heads" / "smollm2-135m-medusa1" / "training_record.json"
    record = json.loads(path.read_text())
    assert R.upgrade_training_record(record) == record and record["provenance"]["commit"]
    old = tmp_path / "training_record.json"
    old.write_text(json.dumps(OLD_RECORD))
    assert R.upgrade_training_record_file(old) is True
    assert R.upgrade_training_record_file(old) is False
    assert json.loads(old.read_text()) == R.upgrade_training_record(OLD_RECORD)


def test_new_records_carry_provenance(toy, backbone):
    rec = T.train_stage1(config(toy, steps=5), progress=False)
    written = json.loads((toy["root"] / "out" / "training_record.json").read_text())
    assert written == json.loads(json.dumps(rec))
    assert set(written["provenance"]) == set(Provenance.__dataclass_fields__)
    assert written["provenance"]["dtype"] == "float32"
    assert not {"git_commit", "device", "torch_threads"} & set(written)
    assert R.upgrade_training_record(written) == written


def test_zero_steps_evaluates_the_init_heads_only(toy, backbone, capsys):
    T.train_stage1(config(toy, "a", steps=60, eval_every=60), progress=False)
    a = toy["root"] / "a"
    rec = T.train_stage1(config(toy, "b", steps=0, init_heads=str(a)), progress=False)
    b = toy["root"] / "b"
    assert (b / "accuracy.csv").read_text() == (a / "accuracy.csv").read_text()
    assert (b / T.EVAL_RANKS).is_file() and rec["token_samples_seen"] == 0
    assert torch.equal(load_heads(a, backbone)(torch.ones(1, backbone.hidden_size)),
                       load_heads(b, backbone)(torch.ones(1, backbone.hidden_size)))
    rc = run_cli(C.main, ["--stage", "1", "--data", str(toy["train"]), "--out", str(toy["root"] / "c"), "--steps", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--init-heads" in err and "\n" not in err
