"""The heads recipe study table: a row per trained heads folder, replayed tau per budget, resumable."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from bench import heads_study as H
from common.cli import run_cli
from medusa.train import stage1 as T
from tests.test_train import backbone, config, toy  # noqa: F401  (fixtures)


def test_a_row_per_run_with_replayed_tau_and_rows_replaced_on_rerun(toy, backbone, tmp_path):  # noqa: F811
    T.train_stage1(config(toy, "a", steps=120, eval_every=120), progress=False)
    T.train_stage1(config(toy, "b", steps=2, eval_every=2), progress=False)
    a, b = toy["root"] / "a", toy["root"] / "b"
    row = H.study_row(a, (1, 5, 16))
    assert row["tau_1"] == 1.0  # the root alone: one token per step
    assert 1.0 < row["tau_5"] <= row["tau_16"] <= 5.0
    assert row["top1_h1"] > 0.9 and row["data"] == "self-distilled" and row["steps"] == 120
    out = tmp_path / "study.csv"
    assert run_cli(H.main, [str(a), str(b), "--out", str(out), "--budgets", "5,16"]) == 0
    first = pd.read_csv(out)
    assert list(first["run"]) == ["a", "b"] and first.set_index("run").loc["a", "tau_16"] > first.set_index("run").loc["b", "tau_16"]
    assert run_cli(H.main, [str(b), "--out", str(out), "--budgets", "5,16"]) == 0
    again = pd.read_csv(out)
    assert sorted(again["run"]) == ["a", "b"] and len(again) == 2


def test_a_folder_without_a_held_out_evaluation_is_one_line(toy, backbone, tmp_path, capsys):  # noqa: F811
    T.train_stage1(config(toy, "a", steps=2, eval_every=2), progress=False)
    (toy["root"] / "a" / T.EVAL_RANKS).unlink()
    out = tmp_path / "study.csv"
    assert run_cli(H.main, [str(toy["root"] / "a"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "eval_ranks" in err and "\n" not in err and not out.exists()
    shutil.rmtree(toy["root"] / "a")
    assert run_cli(H.main, [str(toy["root"] / "a"), "--out", str(out)]) == 2
    assert "training record" in capsys.readouterr().err


@pytest.mark.parametrize("budgets", ["x", "5,,y"])
def test_bad_budgets_are_one_line(tmp_path, capsys, budgets):
    assert run_cli(H.main, [str(tmp_path), "--budgets", budgets]) == 2
    assert "--budgets" in capsys.readouterr().err


def test_an_evaluation_only_run_carries_the_recipe_of_the_heads_it_evaluated(toy, backbone):  # noqa: F811
    T.train_stage1(config(toy, "a", steps=60, eval_every=60), progress=False)
    T.train_stage1(config(toy, "b", steps=0, init_heads=str(toy["root"] / "a")), progress=False)
    a, b = H.study_row(toy["root"] / "a", (5,)), H.study_row(toy["root"] / "b", (5,))
    assert b["run"] == "b" and b["steps"] == 60 and b["data"] == a["data"] and b["tau_5"] == a["tau_5"]
