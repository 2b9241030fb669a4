"""bench.gpu_heads, the GPU recipe for heads from scratch, exercised on the CPU: the prompt pack,
the budgeted distillation blocks, every phase of a --smoke run (tiny random model), what comes back
from the device (archives, report, training record), bad input, and the shell wrappers."""

from __future__ import annotations

import gzip
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

import bench.gpu_heads as G
import bench.gpu_parts as P
import medusa.distill as D
from common.cli import run_cli
from common.errors import WorkbenchError
from common.provenance import PROVENANCE_COLUMNS
from medusa.backbone import load_backbone
from medusa.data import load_split, split_of
from medusa.heads import load_heads
from medusa.testing import save_tiny_model
from medusa.train.losses import IGNORE, head_targets

REPO = Path(__file__).resolve().parents[1]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


# ---- the prompt pack ----------------------------------------------------------------------------
@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A JSONL prompt set with prompts in every split, one of them holding U+2028 (a line break
    for str.splitlines, which medusa.data reads JSONL with) in the train split."""
    texts = [f"question {i}: how do {i} things work?" for i in range(300)]
    texts.append(next(t for t in (f"line\u2028break {i}" for i in range(100)) if split_of(t) == "train"))
    path = tmp_path / "source.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": t}) + "\n" for i, t in enumerate(texts)))
    return path


def test_pack_keeps_train_and_eval_prompts_in_order_so_the_splits_select_the_same(source, tmp_path):
    meta = G.pack_prompts(str(source), tmp_path / "pack.jsonl.gz")
    _, unpacked = G.unpack_prompts(tmp_path / "pack.jsonl.gz", tmp_path / "work")
    assert unpacked.name == "source.jsonl"  # records keep the packed source's name
    for split in ("train", "eval"):
        a = [(p.key, p.id, p.text) for p in load_split(split, source=str(source))]
        assert a == [(p.key, p.id, p.text) for p in load_split(split, source=str(unpacked))]
        assert meta["splits"][split] == len(a)
    assert "calibration" not in meta["splits"] and meta["prompts"] == meta["splits"]["train"] + meta["splits"]["eval"]
    assert any("\u2028" in p.text for p in load_split("train", source=str(unpacked)))
    # the same prompts give the same bytes (a pack is an input worth diffing)
    G.pack_prompts(str(source), tmp_path / "again.jsonl.gz")
    assert (tmp_path / "pack.jsonl.gz").read_bytes() == (tmp_path / "again.jsonl.gz").read_bytes()


def altered(pack: Path) -> bytes:
    head, _, body = gzip.decompress(pack.read_bytes()).decode().partition("\n")
    return gzip.compress((head + "\n" + body.replace("question 1:", "question one:", 1)).encode())


def resplit(pack: Path) -> bytes:
    head, _, body = gzip.decompress(pack.read_bytes()).decode().partition("\n")
    meta = json.loads(head)
    meta["pack"]["split"]["eval_permille"] = 100
    return gzip.compress((json.dumps(meta) + "\n" + body).encode())


@pytest.mark.parametrize("damage,needle", [
    (None, "not found"), (lambda p: b"plain text", "not a prompt pack"), (altered, "does not match its own hash"),
    (lambda p: gzip.compress(b'{"pack": {"format": 99}}\n'), "format 99"), (resplit, "another split")])
def test_a_missing_or_damaged_pack_is_one_line_before_any_model_loads(source, tmp_path, capsys, damage, needle):
    pack = tmp_path / "pack.jsonl.gz"
    G.pack_prompts(str(source), pack)
    if damage is None:
        pack = tmp_path / "none.jsonl.gz"
    else:
        pack.write_bytes(damage(pack))
    rc = run_cli(G.main, ["--out", str(tmp_path / "o"), "--prompts-pack", str(pack), "--backbone", str(tmp_path / "no-model")])
    assert rc == 2 and needle in one_line_error(capsys)


# ---- budgeted distillation ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny-llama")


@pytest.fixture
def word_source(tmp_path: Path) -> Path:
    prompts = G.word_prompts(7, 2, 96)
    path = tmp_path / "words.jsonl"
    path.write_text("".join(json.dumps({"id": p.id, "prompt": p.text}) + "\n" for p in prompts))
    return path


def distill_config(folder: Path, source: Path, **kw) -> D.DistillConfig:
    return D.DistillConfig(**{**dict(backbone=str(folder), dtype="float32", source=str(source), split="train",
                                     max_new_tokens=3, batch_size=2), **kw})


@pytest.mark.parametrize("limit,budget,samples,complete,blocks", [
    (None, 1e9, 7, True, 3),   # all the split allows (7 prompts), in blocks of 3
    (5, 1e9, 5, True, 2),      # --limit: the last block is cut to it
    (None, 1e-9, 3, False, 1),  # out of budget after the first block: stops there and says so
])
def test_distill_blocks_cover_the_split_until_the_budget(tiny_folder, word_source, tmp_path, limit, budget, samples,
                                                         complete, blocks):
    bb = load_backbone(str(tiny_folder))
    lines: list[str] = []
    res = G.distill_blocks(bb, distill_config(tiny_folder, word_source, limit=limit), tmp_path / "d", 3, budget,
                           lines.append)
    keys = [s.key for s in D.read_samples(tmp_path / "d")]
    assert (res["samples"], res["complete"], len(keys), len(set(keys)), len(lines)) == (
        samples, complete, samples, samples, blocks)
    train = [p.key for p in load_split("train", source=str(word_source))]
    assert set(keys) == set(train[:samples])  # blocks follow file order


def test_distill_takes_a_loaded_backbone_of_its_recorded_dtype(tiny_folder, word_source, tmp_path):
    bb = load_backbone(str(tiny_folder))
    with pytest.raises(WorkbenchError, match="bfloat16"):
        D.distill(distill_config(tiny_folder, word_source, dtype="bfloat16"), tmp_path / "x", progress=False, backbone=bb)
    rec = D.distill(distill_config(tiny_folder, word_source), tmp_path / "y", progress=False, backbone=bb)
    assert rec["samples"] == 7 and rec["provenance"]["dtype"] == "float32"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_distill_device_flag_refuses_cuda_without_it(word_source, tmp_path, capsys):
    rc = run_cli(D.main, ["--prompts", str(word_source), "--split", "all", "--out", str(tmp_path / "o"), "--quiet",
                          "--device", "cuda"])
    assert rc == 2 and "CUDA" in one_line_error(capsys)


# ---- the whole recipe at toy sizes --------------------------------------------------------------
def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def extract(archive: Path, dest: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def eval_positions(samples: list[D.Sample], head: int) -> int:
    return sum(int((head_targets(s.ids, s.spans, 4)[1][:, head - 1] != IGNORE).sum()) for s in samples)


@pytest.mark.parametrize("loss,stage2", [("hard", 0), ("mix", 2)])
def test_smoke_runs_every_phase_and_brings_back_heads_data_and_report(tmp_path, capsys, loss, stage2):
    out = tmp_path / "out"
    rc = G.main(["--smoke", "--device", "cpu", "--out", str(out), "--loss", loss, "--stage2-steps", str(stage2)])
    assert rc == 0, capsys.readouterr().out[-3000:]
    report = json.loads((out / "report.json").read_text())
    expected = ["distill_eval", "distill_train", "bundle_data"] + ["teacher"] * (loss != "hard") + ["stage1"] \
        + ["stage2"] * (stage2 > 0) + ["bundle_heads"]
    assert list(report["phases"]) == expected and report["failed_phases"] == []
    assert all("result" in v and v["seconds"] >= 0 for v in report["phases"].values())
    assert set(report["provenance"]) == set(PROVENANCE_COLUMNS) and report["smoke"] is True
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["report.json", "distill.tar.gz", "heads.tar.gz"] + ["medusa2.tar.gz"] * (stage2 > 0))
    assert not report["outputs"]["over_return_limit"] and report["outputs"]["files_with_report_and_log"] <= 8

    # the distilled data: every train and eval prompt of the smoke pack, in medusa.distill's format
    data = extract(out / "distill.tar.gz", tmp_path / "data")
    train, held_out = D.read_samples(data / "distill" / "train"), D.read_samples(data / "distill" / "eval")
    prompts = G.word_prompts(G.SMOKE["limit"], G.SMOKE["eval_limit"], 96)
    assert {s.key for s in train} == {p.key for p in prompts if p.split == "train"}
    assert {s.key for s in held_out} == {p.key for p in prompts if p.split == "eval"}
    assert all(s.generated > 0 for s in train + held_out)

    # the heads folder as the trainer writes it, loadable for the backbone it was trained on
    heads_root = extract(out / "heads.tar.gz", tmp_path / "heads")
    name = report["heads_name"]
    assert name == f"tiny-llama-gpu-{loss}" and [p.name for p in heads_root.iterdir()] == [name]
    folder = heads_root / name
    assert {"heads.safetensors", "config.json", "training_record.json", "accuracy.csv", "loss.csv",
            "prompts.txt"} <= {p.name for p in folder.iterdir()}
    backbone = load_backbone(str(save_tiny_model(tmp_path / "same-tiny" / "tiny-llama")))
    assert load_heads(folder, backbone).num_heads == 4
    record = json.loads((folder / "training_record.json").read_text())
    assert set(record["provenance"]) == set(PROVENANCE_COLUMNS)
    assert record["config"]["loss"] == loss and record["config"]["steps"] == G.SMOKE["steps"]
    assert record["train_data"].get("kind") == ("teacher" if loss != "hard" else None)

    # evaluation: the trainer's, on every held-out position, reported as top-1 / top-5 per head
    stage1 = report["phases"]["stage1"]["result"]
    acc = (folder / "accuracy.csv").read_text().splitlines()[1:]
    table = {(int(h), int(k)): (float(a), int(n)) for h, k, a, n in (line.split(",") for line in acc)}
    for head in range(1, 5):
        assert stage1["top1_by_head"][str(head)] == pytest.approx(table[head, 1][0], abs=1e-4)
        assert stage1["top5_by_head"][str(head)] == pytest.approx(table[head, 5][0], abs=1e-4)
        assert stage1["positions_by_head"][str(head)] == table[head, 1][1] == eval_positions(held_out, head)
    if stage2:
        m2 = members(out / "medusa2.tar.gz")
        assert f"{name}-medusa2/heads/heads.safetensors" in m2 and f"{name}-medusa2/drift.json" in m2
        assert not [m for m in m2 if m.split("/")[1] in G.STAGE2_LEFT_BEHIND]
        assert report["phases"]["stage2"]["result"]["record"]["config"]["steps"] == stage2
    if loss != "hard":
        assert report["phases"]["teacher"]["result"]["records"] == len(train)


def test_distilled_archive_is_trained_on_without_generating(tmp_path, monkeypatch, capsys):
    assert G.main(["--smoke", "--device", "cpu", "--out", str(tmp_path / "first")]) == 0
    archive = tmp_path / "first" / "distill.tar.gz"
    first = json.loads((tmp_path / "first" / "report.json").read_text())

    def no_generation(*a, **k):
        raise AssertionError("--distilled must not generate")

    monkeypatch.setattr(G, "distill_blocks", no_generation)
    assert G.main(["--smoke", "--device", "cpu", "--out", str(tmp_path / "again"), "--distilled", str(archive)]) == 0
    report = json.loads((tmp_path / "again" / "report.json").read_text())
    assert list(report["phases"]) == ["unpack_data", "distill_eval", "distill_train", "stage1", "bundle_heads"]
    for split in ("eval", "train"):
        got, made = report["phases"][f"distill_{split}"]["result"], first["phases"][f"distill_{split}"]["result"]
        assert got["from_archive"] and (got["samples"], got["new_tokens"]) == (made["samples"], made["new_tokens"])
    assert report["phases"]["stage1"]["result"]["train_rows"] == first["phases"]["stage1"]["result"]["train_rows"]
    assert not (tmp_path / "again" / "distill.tar.gz").exists()  # nothing new to bring back
    capsys.readouterr()
    assert run_cli(G.main, ["--smoke", "--out", str(tmp_path / "o3"), "--distilled", str(tmp_path / "none.tar.gz")]) == 2
    assert "no such archive" in one_line_error(capsys)
    with tarfile.open(tmp_path / "empty.tar.gz", "w:gz"):
        pass
    assert G.main(["--smoke", "--device", "cpu", "--out", str(tmp_path / "o4"), "--distilled", str(tmp_path / "empty.tar.gz")]) == 1
    bad = json.loads((tmp_path / "o4" / "report.json").read_text())
    assert "holds no distill/train" in bad["phases"]["unpack_data"]["error"] and "skipped" in bad["phases"]["stage1"]


def test_interrupted_phase_is_reported_and_what_finished_is_still_bundled(tmp_path, monkeypatch):
    def killed(*a, **k):
        raise KeyboardInterrupt  # what the wrapper's `timeout -s INT` does mid-training

    monkeypatch.setattr(G, "train_stage1", killed)
    rc = G.main(["--smoke", "--device", "cpu", "--out", str(tmp_path / "o")])
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rc == 1 and report["failed_phases"] == ["stage1"]
    assert report["phases"]["stage1"]["error"].startswith("interrupted")
    assert "skipped" in report["phases"]["bundle_heads"]
    assert (tmp_path / "o" / "distill.tar.gz").is_file() and not (tmp_path / "o" / "heads.tar.gz").exists()


@pytest.mark.parametrize("limit", [None, 900.0])
def test_time_limit_gives_stage1_what_is_left_less_the_bundling_reserve(tmp_path, monkeypatch, limit):
    seen = []
    real = G.train_stage1

    def spy(config, progress=True):
        seen.append(config.max_wall_s)
        return real(config, progress=progress)

    monkeypatch.setattr(G, "train_stage1", spy)
    argv = ["--smoke", "--device", "cpu", "--out", str(tmp_path / "o")] + (["--time-limit-s", str(limit)] if limit else [])
    assert G.main(argv) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    if limit is None:
        assert seen == [None]
    else:  # what the earlier phases left of the limit, less the reserve for evaluating and bundling
        spent = sum(v["seconds"] for k, v in report["phases"].items() if k != "stage1")
        assert limit - G.STAGE1_RESERVE_S - spent - 30 < seen[0] < limit - G.STAGE1_RESERVE_S
    assert report["phases"]["stage1"]["result"]["steps_done"] == G.SMOKE["steps"]


# ---- what comes back ------------------------------------------------------------------------------
def test_archives_over_the_return_limit_are_split_into_parts_that_join_back(tmp_path):
    big = tmp_path / "x.tar.gz"
    big.write_bytes(bytes(range(10)))
    parts = G.split_for_return(big, limit=4)
    assert [p.name for p in parts] == ["x.tar.gz.part0", "x.tar.gz.part1", "x.tar.gz.part2"] and not big.exists()
    assert b"".join(p.read_bytes() for p in parts) == bytes(range(10))
    small = tmp_path / "y"
    small.write_bytes(b"1234")
    assert G.split_for_return(small, limit=4) == [small]


def test_write_tar_leaves_out_the_named_folders_and_temporary_files(tmp_path):
    src = tmp_path / "run"
    (src / "merged").mkdir(parents=True)
    (src / "merged" / "model.safetensors").write_bytes(b"x" * 10)
    (src / "heads").mkdir()
    (src / "heads" / "heads.safetensors").write_bytes(b"h")
    (src / ".loss.csv.abc.tmp").write_text("half")
    (src / "loss.csv").write_text("step\n")
    files = G.write_tar(tmp_path / "a.tar.gz", [(src, "m2")], skip=["m2/merged"])
    assert list(files) == ["a.tar.gz"]
    assert sorted(members(tmp_path / "a.tar.gz")) == ["m2/heads/heads.safetensors", "m2/loss.csv"]


# ---- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,needle", [
    ([], "--out is required"), (["--out", "o", "--steps", "0"], "steps"),
    (["--out", "o", "--distill-batch-size", "0"], "--distill-batch-size"), (["--out", "o", "--loss", "kl"], "--loss"),
    (["--out", "o", "--stage2-steps", "-1"], "--stage2-steps"), (["--out", "o", "--distill-budget-s", "0"], "budget"),
    (["--out", "o", "--time-limit-s", "-5"], "--time-limit-s")])
def test_bad_flags_are_one_line(tmp_path, monkeypatch, capsys, argv, needle):
    monkeypatch.chdir(tmp_path)
    assert run_cli(G.main, argv) == 2 and needle in one_line_error(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path, capsys):
    assert run_cli(G.main, ["--out", str(tmp_path / "o"), "--device", "cuda"]) == 2
    assert "CUDA" in one_line_error(capsys)


# ---- the shell wrappers ---------------------------------------------------------------------------
def test_shell_wrappers_parse_and_fail_fast_without_the_model_halves(tmp_path):
    for script in ("gpu_heads.sh", "gpu_model.sh", "gpu_check.sh"):
        assert subprocess.run(["bash", "-n", str(REPO / "bench" / script)]).returncode == 0
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "SmolLM2-135M-Instruct.Q4_1.gguf.part1").write_bytes(b"half")
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_model.sh"), str(tmp_path / "m")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and "part0 is missing" in proc.stderr and proc.stderr.count("\n") == 1
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_heads.sh"), str(tmp_path / "out"), str(tmp_path / "m")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and "part0 is missing" in (tmp_path / "out" / "log.txt").read_text()


GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gpu_model(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "bench" / "gpu_model.sh"), str(folder)], capture_output=True, text=True,
                          timeout=120)


def test_split_file_cuts_near_equal_parts_and_writes_the_manifest(tmp_path):
    src = tmp_path / GGUF
    src.write_bytes(bytes(range(100)) * 3)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / f"{GGUF}.part5").write_bytes(b"stale part of an older cut")
    parts = P.split_file(src, tmp_path / "m", 3)
    assert [p.name for p in parts] == [f"{GGUF}.part{i}" for i in range(3)]
    assert sorted(p.name for p in (tmp_path / "m").glob(f"{GGUF}.part[0-9]*")) == [p.name for p in parts]
    assert [p.stat().st_size for p in parts] == [100, 100, 100]
    assert b"".join(p.read_bytes() for p in parts) == src.read_bytes()
    n, digest = (tmp_path / "m" / f"{GGUF}.parts").read_text().split()
    assert n == "3" and len(digest) == 64
    with pytest.raises(WorkbenchError, match="--parts"):
        P.split_file(src, tmp_path / "m", 0)


def test_call_sizes_say_whether_a_part_fits_beside_the_tracked_tree():
    assert P.call_sizes(33 * 2**20, 26 * 2**20).endswith("fits")
    assert "OVER" in P.call_sizes(49 * 2**20, 26 * 2**20)
    assert "not in a git checkout" in P.call_sizes(10, None)
    assert P.fits(33 * 2**20, 26 * 2**20) and not P.fits(49 * 2**20, 26 * 2**20) and P.fits(10, None)
    assert P.tracked_bytes(REPO) > 0 and P.tracked_bytes(Path("/")) is None


def test_gpu_model_joins_the_parts_and_refuses_a_missing_or_stale_one(tmp_path):
    src = tmp_path / GGUF
    src.write_bytes(b"not really a gguf file" * 50)
    folder = tmp_path / "m"
    P.split_file(src, folder, 3)
    part2 = (folder / f"{GGUF}.part2").read_bytes()
    (folder / f"{GGUF}.part2").unlink()  # the machine went cold before the third call
    proc = gpu_model(folder)
    assert proc.returncode == 1 and proc.stdout == "" and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: ") and "part2 is missing" in proc.stderr
    (folder / f"{GGUF}.part2").write_bytes(part2[::-1])  # a part from another cut
    proc = gpu_model(folder)
    assert proc.returncode == 1 and "do not match the manifest" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (folder / GGUF).exists() and not (folder / f"{GGUF}.tmp").exists()
    (folder / f"{GGUF}.part2").write_bytes(part2)
    proc = gpu_model(folder)  # joined and checked; dequantising the fake file then fails
    assert (folder / GGUF).read_bytes() == src.read_bytes()
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("error: ")


def test_word_prompts_fill_each_split_as_asked():
    prompts = G.word_prompts(5, 3, 96, seed=1)
    assert [p.split for p in prompts].count("train") == 5 and [p.split for p in prompts].count("eval") == 3
    assert all(w.startswith("w") and 1 <= int(w[1:]) < 95 for p in prompts for w in p.text.split())
