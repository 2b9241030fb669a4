"""`python -m medusa.generate`: bad input gives one line and exit status 2; a real run prints stats."""

import json
import subprocess
import sys

import pytest

from medusa.heads import HeadsConfig, MedusaHeads
from medusa.testing import tiny_backbone


def run(*args):
    return subprocess.run([sys.executable, "-m", "medusa.generate", *args], capture_output=True, text=True)


def one_error_line(proc):
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_empty_prompt():
    assert "empty" in one_error_line(run("--prompt", "  "))


def test_zero_new_tokens():
    assert "max_new_tokens" in one_error_line(run("--prompt", "hi", "--max-new-tokens", "0"))


def test_invalid_tree_file(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text("[[0], [2, 1]]")
    assert "prefix-closed" in one_error_line(run("--prompt", "hi", "--tree", str(bad)))
    assert "not found" in one_error_line(run("--prompt", "hi", "--tree", str(tmp_path / "none.json")))


def test_unknown_preset_and_missing_heads(tmp_path):
    assert "unknown tree preset" in one_error_line(run("--prompt", "hi", "--preset", "bogus"))


@pytest.mark.slow
def test_mismatched_heads_and_long_prompt(tmp_path, smollm2):
    MedusaHeads.for_backbone(tiny_backbone(0), HeadsConfig()).save(tmp_path / "tinyheads")
    line = one_error_line(run("--prompt", "hi", "--heads", str(tmp_path / "tinyheads"), "--preset", "chain_2"))
    assert "tiny-llama-0" in line and "smollm2-135m" in line
    long_prompt = "word " * 9000
    assert "context" in one_error_line(run("--prompt", long_prompt, "--preset", "root"))
    assert "not found" in one_error_line(run("--prompt", "hi", "--heads", str(tmp_path / "nope")))


@pytest.mark.slow
def test_real_run_json(smollm2):
    proc = run("--prompt", "Write a haiku about the sea", "--preset", "mc_sim_7b_63", "--max-new-tokens", "24", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["new_tokens"] == len(out["output_ids"]) and 1 <= out["new_tokens"] <= 24
    assert out["node_budget"] == 64 and out["mean_accepted_length"] >= 1.0
