"""`bench.throughput`: timed batched calls per method and batch size, resumable, with a summary."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bench.config import BenchConfig
from bench.throughput import ThroughputConfig, main, read_requests, run_throughput, summarize
from common.cli import run_cli
from common.errors import WorkbenchError
from medusa.backbone import load_backbone
from medusa.heads import HeadsConfig, MedusaHeads
from medusa.testing import save_tiny_model
from trees.tree import preset


@pytest.fixture(scope="module")
def folder_backbone(tmp_path_factory):
    folder = save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    return folder, load_backbone(str(folder))


def write_prompts(path, lengths):
    rows = [{"id": f"q{i}", "category": "c" if i % 2 else "d", "turns": [" ".join(f"w{j + 1}" for j in range(n))]}
            for i, n in enumerate(lengths)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def config(tmp_path, prompts, sizes=(1, 2, 4), **kw):
    run = BenchConfig(methods=("hf-greedy", "ar", "medusa"), prompts=str(prompts), max_new_tokens=12,
                      out=str(tmp_path / "out"), preset="mc_sim_7b_63", progress=False, **kw)
    return ThroughputConfig(run, sizes)


def test_every_call_is_recorded_and_rows_equal_batch1(tmp_path, folder_backbone):
    _, bb = folder_backbone
    prompts = write_prompts(tmp_path / "p.jsonl", (3, 9, 5, 14, 7))
    heads = MedusaHeads.for_backbone(bb, HeadsConfig(num_heads=4))
    summary = run_throughput(config(tmp_path, prompts), backbone=bb, heads=heads)
    assert summary.calls == 9 and not summary.errors
    df = read_requests(tmp_path / "out")
    assert len(df) == 45 and set(df["batch_size"]) == {1, 2, 4}
    table = summarize(df)
    assert table["identical_b1"].all() and table["identical_ref"].all()
    medusa = table[table["method"] == "medusa"]
    assert (medusa["node_budget"] == 64).all() and (medusa["mean_accepted_length"] >= 1).all()
    assert (table["tokens_per_s"] > 0).all()
    assert (medusa["verify_ms"] > 0).all() and (medusa["heads_ms"] > 0).all()
    assert table[table["method"] == "hf-greedy"]["verify_ms"].isna().all()  # no engine steps to time
    ar = table[table["method"] == "ar"].set_index("batch_size")
    assert ar["speedup_vs_ar"].eq(1.0).all()
    # one count rule: every method's rows hold the same new tokens per request at B=1
    b1 = df[df["batch_size"] == 1].pivot(index="question_id", columns="method", values="new_tokens")
    assert (b1.nunique(axis=1) == 1).all()
    # resumed: nothing is timed twice; a new batch size adds only its own calls
    again = run_throughput(config(tmp_path, prompts, sizes=(1, 2, 4, 3)), backbone=bb, heads=heads)
    assert again.skipped == 9 and again.calls == 3
    assert len(read_requests(tmp_path / "out")) == 12 * 5


def test_summary_flags_an_output_that_differs_from_batch1():
    rows = [dict(method=m, batch_size=b, question_id="q0", new_tokens=4, latency_s=1.0, queued_s=0.0, steps=4,
                 accepted_tokens=4, output_sha=sha, call_wall_s=1.0, load_start=0.1, node_budget=1, tree="root")
            for m, b, sha in (("ar", 1, "a"), ("ar", 2, "b"), ("hf-greedy", 1, "a"))]
    table = summarize(pd.DataFrame(rows)).set_index(["method", "batch_size"])
    assert table.loc[("ar", 1), "identical_b1"] and not table.loc[("ar", 2), "identical_b1"]
    assert not table.loc[("ar", 2), "identical_ref"]


def test_a_request_too_long_is_reported_and_the_rest_written(tmp_path, folder_backbone, capsys):
    folder, bb = folder_backbone
    prompts = write_prompts(tmp_path / "p.jsonl", (3, 600, 5))  # 600 words > the tiny model's 512 positions
    out = tmp_path / "out"
    code = main(["--backbone", str(folder), "--prompts", str(prompts), "--methods", "ar,hf-greedy",
                 "--batch-size", "1,2", "--max-new-tokens", "8", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("error:") == 4 and "q1" in err and "context" in err
    df = read_requests(out)
    assert set(df["question_id"]) == {"q0", "q2"} and len(df) == 8


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--methods", "hf-pld"], "does not batch"),
    (["--turns", "2"], "first turns once"),
])
def test_bad_input_is_one_line(tmp_path, folder_backbone, capsys, argv, message):
    folder, _ = folder_backbone
    prompts = write_prompts(tmp_path / "p.jsonl", (3, 4))
    code = run_cli(main, ["--backbone", str(folder), "--prompts", str(prompts), "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "o" / "requests.csv").exists()


def test_methods_that_do_not_batch_are_refused_before_anything_runs(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", (3, 4))
    for method in ("hf-greedy-compiled", "medusa-dynamic", "hf-pld"):
        with pytest.raises(WorkbenchError, match="does not batch"):
            ThroughputConfig(BenchConfig(methods=(method,), prompts=str(prompts)), (1,))


def test_batch_trees_give_each_batch_size_its_own_tree(tmp_path, folder_backbone):
    _, bb = folder_backbone
    prompts = write_prompts(tmp_path / "p.jsonl", (3, 9, 5))
    preset("mc_sim_7b_63").save(tmp_path / "tree.json")  # batch 1: the search's plain name
    preset("chain_3").save(tmp_path / "tree_b2.json")
    heads = MedusaHeads.for_backbone(bb, HeadsConfig(num_heads=4))
    run = BenchConfig(methods=("ar", "medusa"), prompts=str(prompts), max_new_tokens=8, out=str(tmp_path / "out"),
                      progress=False)
    run_throughput(ThroughputConfig(run, (1, 2), str(tmp_path / "tree_b{batch}.json")), backbone=bb, heads=heads)
    table = summarize(read_requests(tmp_path / "out")).set_index(["method", "batch_size"])
    assert table.loc[("medusa", 1), "tree"] == "mc_sim_7b_63" and table.loc[("medusa", 2), "tree"] == "chain_3"
    assert table.loc[("medusa", 2), "node_budget"] == 4 and table["identical_b1"].all()
    with pytest.raises(WorkbenchError, match="must contain"):
        ThroughputConfig(run, (1,), str(tmp_path / "tree.json"))
