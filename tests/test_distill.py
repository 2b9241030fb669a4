"""Self-distillation with a tiny random Llama (chat template replaced by byte ids)."""

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
import torch

import medusa.distill as M
from common.cli import run_cli
from common.errors import WorkbenchError
from medusa.testing import greedy_reference, tiny_backbone


def byte_backbone():
    bb = tiny_backbone()
    bb.chat_ids = lambda prompt: [1 + b % 90 for b in prompt.encode()][:24]
    return bb


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    texts = [f"prompt {i} " + "x" * (i % 7) for i in range(10)]
    path.write_text("\n".join(json.dumps({"prompt": t}) for t in texts) + "\n")
    return path


@pytest.fixture(autouse=True)
def tiny():
    with mock.patch.object(M, "load_backbone", lambda *a, **k: byte_backbone()):
        yield


def cfg(prompts: Path, **kw) -> M.DistillConfig:
    base = dict(source=str(prompts), split="all", max_new_tokens=6, batch_size=4)
    base.update(kw)
    return M.DistillConfig(**base)


def test_batched_greedy_answers_equal_one_by_one_greedy(prompts, tmp_path):
    rec = M.distill(cfg(prompts), tmp_path / "out", progress=False)
    assert rec["samples"] == 10 and len(list(M.iter_shards(tmp_path / "out"))) == 3
    bb = byte_backbone()
    for s in M.read_samples(tmp_path / "out"):
        (start, end), = s.spans
        assert end == len(s.ids)
        assert list(s.ids[start:]) == greedy_reference(bb, s.ids[:start], 6)[: end - start]
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["settings"]["temperature"] == 0.0 and run["new_tokens"] == rec["new_tokens"] and "finished_at" in run


def test_interrupted_run_resumes_without_duplicates(prompts, tmp_path):
    M.distill(cfg(prompts), tmp_path / "straight", progress=False)
    real = M.answer_batch
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    with mock.patch.object(M, "answer_batch", flaky), pytest.raises(KeyboardInterrupt):
        M.distill(cfg(prompts), tmp_path / "resumed", progress=False)
    assert len(M.read_samples(tmp_path / "resumed")) == 4
    rec = M.distill(cfg(prompts), tmp_path / "resumed", progress=False)
    assert rec["samples"] == 10
    a = {s.key: s for s in M.read_samples(tmp_path / "straight")}
    b = {s.key: s for s in M.read_samples(tmp_path / "resumed")}
    assert a == b


def test_raising_the_limit_adds_prompts_and_other_settings_are_refused(prompts, tmp_path):
    M.distill(cfg(prompts, limit=3), tmp_path / "out", progress=False)
    rec = M.distill(cfg(prompts, limit=7), tmp_path / "out", progress=False)
    assert rec["samples"] == 7 and len(M.read_samples(tmp_path / "out")) == 7
    with pytest.raises(WorkbenchError, match="max_new_tokens"):
        M.distill(cfg(prompts, max_new_tokens=9), tmp_path / "out", progress=False)


def test_sampling_is_seeded(prompts, tmp_path):
    for name in ("a", "b"):
        M.distill(cfg(prompts, temperature=0.8, seed=3), tmp_path / name, progress=False)
    assert M.read_samples(tmp_path / "a") == M.read_samples(tmp_path / "b")


def test_seeded_block_is_reproducible_and_leaves_the_global_generator_alone():
    state = torch.random.get_rng_state()
    with M.seeded(3):
        a = torch.rand(4)
    assert torch.equal(torch.random.get_rng_state(), state)
    with M.seeded(3):
        b = torch.rand(4)
    assert torch.equal(a, b)


def test_sampling_does_not_reseed_the_process(prompts, tmp_path):
    bb = byte_backbone()  # built first: tiny_backbone seeds torch itself
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    with mock.patch.object(M, "load_backbone", lambda *a, **k: bb):
        M.distill(cfg(prompts, temperature=0.8, seed=3), tmp_path / "out", progress=False)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("argv,needle", [(["--source", "x.jsonl"], "unrecognized"), (["--dtype", "int8"], "--dtype"),
                                         (["--threads", "0"], "--threads")])
def test_bad_flags_are_one_line(prompts, tmp_path, capsys, argv, needle):
    rc = run_cli(M.main, ["--prompts", str(prompts), "--split", "all", "--out", str(tmp_path / "o"), "--quiet", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and needle in err and "\n" not in err


def test_over_long_prompts_are_skipped_and_counted(prompts, tmp_path):
    rec = M.distill(cfg(prompts, max_prompt_tokens=12), tmp_path / "out", progress=False)
    assert rec["load_report"]["skipped"]["prompt over max_prompt_tokens"] > 0
    assert rec["samples"] + rec["load_report"]["skipped"]["prompt over max_prompt_tokens"] == 10


@pytest.mark.parametrize("content", ["", "{broken\n"])
def test_bad_prompt_file_is_one_line_and_writes_nothing(tmp_path, capsys, content):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    rc = run_cli(M.main, ["--prompts", str(bad), "--split", "all", "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err
    assert not list((tmp_path / "out").glob("shard-*"))


def test_unwritable_output(prompts, tmp_path, capsys):
    (tmp_path / "f").write_text("")
    rc = run_cli(M.main, ["--prompts", str(prompts), "--split", "all", "--out", str(tmp_path / "f" / "o"), "--quiet"])
    assert rc == 2 and "cannot write" in capsys.readouterr().err


def test_blocks_in_separate_folders_read_together_without_duplicates(prompts, tmp_path):
    M.distill(cfg(prompts, limit=6), tmp_path / "a", progress=False)
    M.distill(cfg(prompts, offset=4, limit=6), tmp_path / "b", progress=False)
    joined = M.read_samples(f"{tmp_path / 'a'},{tmp_path / 'b'}")
    assert len(joined) == 10 and len({s.key for s in joined}) == 10
