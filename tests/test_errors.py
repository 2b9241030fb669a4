"""Bad input a newcomer meets gives one `error:` line and exit status 2, never a traceback (issue 12).

One test per case: a truncated heads.safetensors, a model folder without a tokenizer, a heads
config with the wrong head count, a records.csv whose last row was cut off (dropped with a
warning, resume re-measures it, nothing else lost), a records.csv with binary data, `--format json`
piped into `head`, an empty tree file. Also "your own model": `--heads untrained` on any backbone,
and the one `warning:` line when a tree was searched for other heads, backbone or device.
Everything runs on tiny random models (seconds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import records as R
from bench import summarize
from bench.run import BenchConfig, run_benchmark
from common.cli import run_cli
from common.errors import WorkbenchError
from common.paths import REPO_ROOT
from medusa import generate
from medusa.backbone import Backbone, load_backbone
from medusa.heads import HeadsConfig, MedusaHeads, load_heads
from medusa.resolve import (
    UNTRAINED,
    TreeTarget,
    resolve_heads,
    tree_mismatch,
    tree_target,
    warn_foreign_tree,
)
from medusa.testing import tiny_backbone
from tests.test_bench import QUESTIONS, char_tokenizer
from trees.tree import Tree, TreeError, preset


def one_error_line(rc: int, err: str) -> str:
    """The single `error:` line of a failed command (exit status 2, no traceback)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(autouse=True)
def keep_threads():
    """CLIs run in-process here may set torch's threads: put them back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny Llama folder with a character tokenizer, as `--backbone FOLDER` takes it."""
    folder = tmp_path_factory.mktemp("models") / "tiny-chars"
    tiny_backbone(3).model.save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def backbone(model_dir) -> Backbone:
    return load_backbone(str(model_dir))


def gen(capsys, *argv: str) -> tuple[int, str, str]:
    """`python -m medusa.generate` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()  # what the test printed before (progress bars of its own saves)
    rc = run_cli(generate.main, ["--prompt", "Write a poem.", "--max-new-tokens", "4", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ---- model and heads files ----------------------------------------------------------------------
def test_model_folder_without_tokenizer(tmp_path, capsys):
    folder = tmp_path / "no-tokenizer"
    tiny_backbone(0).model.save_pretrained(folder)
    line = one_error_line(*gen(capsys, "--backbone", str(folder), "--preset", "root")[::2])
    assert "no tokenizer" in line and str(folder) in line


def test_model_folder_with_truncated_weights(tmp_path, model_dir, capsys):
    folder = tmp_path / "truncated"
    folder.mkdir()
    for f in model_dir.iterdir():
        data = f.read_bytes()
        (folder / f.name).write_bytes(data[: len(data) // 2] if f.name == "model.safetensors" else data)
    line = one_error_line(*gen(capsys, "--backbone", str(folder), "--preset", "root")[::2])
    assert "cannot load the model" in line


def test_truncated_heads_weights(tmp_path, model_dir, backbone, capsys):
    heads = tmp_path / "heads"
    MedusaHeads.for_backbone(backbone, HeadsConfig(num_heads=2)).save(heads)
    weights = heads / "heads.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(WorkbenchError, match="unreadable .*truncated"):
        load_heads(heads, backbone)
    line = one_error_line(*gen(capsys, "--backbone", str(model_dir), "--heads", str(heads), "--preset", "chain_1")[::2])
    assert "heads.safetensors" in line and "truncated" in line


def test_heads_config_with_wrong_head_count_says_why(tmp_path, model_dir, backbone, capsys):
    heads = tmp_path / "heads"
    MedusaHeads.for_backbone(backbone, HeadsConfig(num_heads=2)).save(heads)
    config = json.loads((heads / "config.json").read_text())
    (heads / "config.json").write_text(json.dumps({**config, "num_heads": 3}))
    line = one_error_line(*gen(capsys, "--backbone", str(model_dir), "--heads", str(heads), "--preset", "chain_1")[::2])
    # the message is not cut off before its details: what the config says, what the weights hold
    assert "says 3 heads" in line and "hold 2 heads" in line and "missing blocks.2" in line


# ---- records.csv --------------------------------------------------------------------------------
def bench(backbone: Backbone, prompts: Path, out: Path):
    config = BenchConfig(methods=("hf-greedy", "ar"), prompts=str(prompts), out=str(out), limit=1,
                         max_new_tokens=6, warmup_tokens=0, progress=False, score_quality=False)
    return run_benchmark(config, backbone=backbone, heads_name="")


@pytest.fixture()
def finished_run(tmp_path, backbone) -> Path:
    prompts = tmp_path / "questions.jsonl"
    prompts.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    out = tmp_path / "run"
    assert bench(backbone, prompts, out).written == 6  # 3 categories x 2 methods
    return out


def test_cut_off_last_row_is_dropped_and_resume_measures_it_again(finished_run, backbone, capsys):
    out = finished_run
    before, tokens_before, _ = R.load_run(out)
    records = out / R.RECORDS_FILE
    data = records.read_bytes()
    records.write_bytes(data[:-25])  # the last row loses its provenance cells and its newline
    capsys.readouterr()

    # readers: every complete row, one warning naming the file and the dropped record
    frame, tokens, _ = R.load_run(out)
    assert len(frame) == len(before) - 1
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "records.csv" in err and "cut off" in err
    last = before.iloc[-1]
    assert f"question {last.question_id}" in err and last.method in err
    assert run_cli(summarize.main, [str(out), "--bootstrap", "0"]) == 0
    assert "Traceback" not in capsys.readouterr().err

    # resume: the dropped record is measured again; the rows written before are kept as they were
    again = bench(backbone, out.parent / "questions.jsonl", out)
    assert again.written == 1 and again.skipped == len(before) - 1
    after, tokens_after, _ = R.load_run(out)
    assert len(after) == len(before) and not after.duplicated(list(R.KEY_COLUMNS)).any()
    assert after.iloc[:-1].equals(before.iloc[:-1])
    dropped = R.record_key(last.to_dict())
    assert {k: v for k, v in tokens_after.items() if k != dropped} == {k: v for k, v in tokens_before.items() if k != dropped}
    assert tokens_after[dropped]["output_ids"] == tokens_before[dropped]["output_ids"]  # greedy: the same ids again
    assert records.read_bytes().endswith(b"\n")
    assert len((out / R.TOKENS_FILE).read_text().splitlines()) == len(before)


def test_cut_off_row_is_repaired_when_the_store_reopens(finished_run, capsys):
    out = finished_run
    records = out / R.RECORDS_FILE
    rows = records.read_text().splitlines()
    records.write_text("\n".join(rows) + "\n" + rows[-1][:40])  # a duplicate row torn at 40 characters
    store = R.RecordStore(out)
    assert len(store) == len(rows) - 1
    assert records.read_text() == "\n".join(rows) + "\n"  # rewritten without the torn row
    assert "cut off" in capsys.readouterr().err


def test_records_with_binary_data_are_one_line(finished_run, backbone, capsys):
    out = finished_run
    records = out / R.RECORDS_FILE
    lines = records.read_bytes().split(b"\n")
    lines[2] = b"\xff\xfe\x00garbage\x80" + lines[2][10:]
    records.write_bytes(b"\n".join(lines))
    line = one_error_line(run_cli(summarize.main, [str(out)]), capsys.readouterr().err)
    assert "records.csv is damaged" in line and "line 3" in line and "bench.run" in line
    with pytest.raises(WorkbenchError, match="damaged"):
        R.RecordStore(out)
    records.write_bytes(os.urandom(300).replace(b"\n", b"") + b"\n" + os.urandom(300))
    one_error_line(run_cli(summarize.main, [str(out)]), capsys.readouterr().err)


def test_records_with_a_short_row_in_the_middle_are_one_line(finished_run, capsys):
    out = finished_run
    records = out / R.RECORDS_FILE
    lines = records.read_text().splitlines()
    lines[1] = lines[1][:50]
    records.write_text("\n".join(lines) + "\n")
    line = one_error_line(run_cli(summarize.main, [str(out)]), capsys.readouterr().err)
    assert "line 2" in line and "cells" in line


def test_tokens_with_binary_data_are_one_line(finished_run, capsys):
    out = finished_run
    tokens = out / R.TOKENS_FILE
    tokens.write_bytes(b"\xff\xfe" + tokens.read_bytes()[2:])
    line = one_error_line(run_cli(summarize.main, [str(out)]), capsys.readouterr().err)
    assert "lacks the token ids" in line


# ---- closed pipe, tree files --------------------------------------------------------------------
@pytest.mark.parametrize("reader", ["head -1", "true"])
def test_format_json_into_a_closed_pipe_is_quiet(tmp_path, reader):
    # Python buffers stdout into a pipe unless PYTHONUNBUFFERED is set, as it is for some test runners.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    command = (f"set -o pipefail; {sys.executable} -m trees.search --budget 512 --format json "
               f"--out {tmp_path / 't.json'} | {reader}")
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=REPO_ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout == ("{\n" if reader == "head -1" else "")


def test_tree_file_without_paths_is_refused(tmp_path, capsys):
    empty = tmp_path / "empty.json"
    for text in ("[]", json.dumps({"name": "x", "paths": []})):
        empty.write_text(text)
        with pytest.raises(TreeError, match="lists no paths.*--preset root"):
            Tree.load(empty)
    line = one_error_line(run_cli(generate.main, ["--prompt", "hi", "--tree", str(empty)]), capsys.readouterr().err)
    assert "no paths" in line
    # a searched root-only tree says so (node_budget 1) and still loads; so does the preset
    preset("root").save(tmp_path / "root.json")
    assert Tree.load(tmp_path / "root.json").node_budget == 1


# ---- your own model -----------------------------------------------------------------------------
def searched_tree(tmp_path: Path, heads: str, backbone: str, device: str | None = "nvidia-h200") -> Tree:
    """A tree as `trees.search` writes it: meta names the calibration it read (and the latency device)."""
    calibration = tmp_path / "calibration" / heads
    calibration.mkdir(parents=True, exist_ok=True)
    (calibration / "calibration.json").write_text(json.dumps({"backbone": backbone, "heads": f"results/heads/{heads}"}))
    meta = {"method": "optuna", "accuracy": str(calibration / "accuracy.csv")}
    if device:
        meta["device"] = device
    return Tree.from_paths([[0], [1], [0, 0]], name="searched", meta=meta)


def test_tree_target_from_meta(tmp_path):
    tree = searched_tree(tmp_path, "mine", "smollm2-135m", "cpu-amd-epyc-1t")
    assert tree_target(tree) == TreeTarget("mine", "smollm2-135m", "cpu-amd-epyc-1t")
    assert tree_target(preset("mc_sim_7b_63")) is None and tree_target(preset("root")) is None
    # the calibration folder's name gives the heads even where the file is not on this machine
    elsewhere = Tree.from_paths([[0]], meta={"accuracy": "results/calibration/theirs/accuracy.csv"})
    assert tree_target(elsewhere).heads == "theirs"


def test_tree_mismatch_names_what_differs(tmp_path):
    tree = searched_tree(tmp_path, "mine", "smollm2-135m", "cpu-amd-epyc-1t")
    # same heads, backbone and hardware (another thread count): no warning
    assert tree_mismatch(tree, TreeTarget("mine", "smollm2-135m", "cpu-amd-epyc-2t")) is None
    compiled = searched_tree(tmp_path / "c", "mine", "smollm2-135m", "cpu-amd-epyc-1t-compiled")  # a compiled-mode profile
    assert tree_mismatch(compiled, TreeTarget("mine", "smollm2-135m", "cpu-amd-epyc-1t")) is None
    assert tree_mismatch(preset("mc_sim_7b_63"), TreeTarget(UNTRAINED, "other", "nvidia-h100")) is None
    line = tree_mismatch(tree, TreeTarget(UNTRAINED, "my-model", "nvidia-h100-80gb-hbm3"))
    assert "heads mine, not untrained" in line and "backbone smollm2-135m, not my-model" in line
    assert "device cpu-amd-epyc-1t, not nvidia-h100-80gb-hbm3" in line and "trees.search" in line
    assert "\n" not in line


def test_untrained_heads_on_any_backbone(backbone, capsys):
    resolved = resolve_heads(UNTRAINED, backbone)
    assert resolved.name == UNTRAINED and resolved.folder is None and resolved.heads.num_heads == 4
    hidden = torch.randn(backbone.hidden_size)
    base = backbone.model.get_output_embeddings()(hidden).argmax()
    assert (resolved.heads.propose(hidden, [], 1)[:, 0] == base).all()  # untrained heads = the base LM head
    assert "warning" not in capsys.readouterr().err  # asked for: no "no trained heads found" warning


def test_generate_with_untrained_heads_warns_about_a_foreign_tree(tmp_path, model_dir, backbone, capsys):
    tree = searched_tree(tmp_path, "smollm2-135m-medusa1", "smollm2-135m")
    tree_file = tree.save(tmp_path / "tree.json")
    rc, out, err = gen(capsys, "--backbone", str(model_dir), "--heads", UNTRAINED, "--tree", str(tree_file))
    assert rc == 0, err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning: tree")]
    assert len(warnings) == 1 and "Traceback" not in err
    assert "not untrained" in warnings[0] and f"not {model_dir.name}" in warnings[0] and "nvidia-h200" in warnings[0]
    assert "tree searched" in out  # the stats line names the tree decoded with
    # a tree searched for these very heads and this backbone, with no device: no warning
    warn_foreign_tree(searched_tree(tmp_path, UNTRAINED, model_dir.name, None), UNTRAINED, backbone)
    assert capsys.readouterr().err == ""
