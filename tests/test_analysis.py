"""analysis/: every figure and table from a tiny synthetic results folder; missing inputs; schemas.

The synthetic folder (`tests.synthetic_results`) is written with the writers' own schema code, so
the readers here are checked against what `bench`, `trees` and `medusa.train` really write.
"""

from __future__ import annotations

import pandas as pd
import pytest

from analysis import fig_bench, figures, load, load_calibration, load_latency, tables
from common.cli import run_cli
from common.errors import WorkbenchError
from tests import synthetic_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return synthetic_results.build(tmp_path_factory.mktemp("results"))


@pytest.fixture()
def empty(tmp_path):
    (tmp_path / "results").mkdir()
    return tmp_path / "results"


@pytest.mark.parametrize("name", list(figures.FIGURES))
def test_each_figure_writes_a_non_empty_png_and_pdf(results, tmp_path, name):
    paths = figures.make(name, results, tmp_path)
    assert {p.suffix for p in paths} == {".png", ".pdf"}
    for p in paths:
        assert p.is_file() and p.stat().st_size > 2000
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == PNG_MAGIC
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


@pytest.mark.parametrize("name", list(figures.FIGURES))
def test_each_figure_names_what_to_run_when_its_input_is_missing(empty, tmp_path, name):
    with pytest.raises(load.MissingResult) as e:
        figures.make(name, empty, tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "(run `python -m " in msg


def test_cli_all_makes_every_figure(results, tmp_path, capsys):
    assert run_cli(figures.main, ["--results", str(results), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == [f"made {n}" for n in figures.FIGURES]


def test_cli_all_on_empty_results_skips_each_in_one_line_and_exits_0(empty, tmp_path, capsys):
    out_dir = tmp_path / "figures"
    assert run_cli(figures.main, ["--results", str(empty), "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(figures.FIGURES)
    assert all(line.startswith("skipped ") and "run `" in line for line in out)
    assert not out_dir.exists() or not list(out_dir.iterdir())


def test_cli_named_figure_that_cannot_be_made_exits_2_with_one_line(empty, tmp_path, capsys):
    assert run_cli(figures.main, ["latency", "--results", str(empty), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "python -m bench.latency" in err[0]


def test_cli_unknown_figure_and_missing_folder(tmp_path, capsys):
    assert run_cli(figures.main, ["nope", "--results", str(tmp_path)]) == 2
    assert run_cli(figures.main, ["--results", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "unknown figure 'nope'" in err[0] and "not found" in err[1]


def test_partial_results_make_what_they_can(results, tmp_path, capsys):
    part = tmp_path / "results"
    (part / "latency").mkdir(parents=True)
    for f in (results / "latency").iterdir():
        (part / "latency" / f.name).write_bytes(f.read_bytes())
    done = figures.make_all(part, tmp_path / "figs")
    assert isinstance(done["latency"], list)
    assert all(isinstance(v, str) for k, v in done.items() if k != "latency")


def test_unsummarised_run_is_summarised_in_memory(results):
    assert not (results / "bench" / "budget-8" / "summary.csv").exists()
    run = load.load_run(results / "bench" / "budget-8")
    tps = run.summary[(run.summary["metric"] == "tokens_per_s") & (run.summary["category"] == "all")]
    assert len(tps) == 1 and tps["value"].iloc[0] > 0


def test_a_summary_counting_the_same_records_is_current_whatever_its_time_stamp(results, tmp_path):
    import os
    import shutil

    run_dir = tmp_path / "mtbench"
    shutil.copytree(results / "bench" / "mtbench", run_dir)
    later = (run_dir / "summary.csv").stat().st_mtime + 10
    os.utime(run_dir / "records.csv", (later, later))  # as a git checkout may leave it
    committed = pd.read_csv(run_dir / "summary.csv")
    pd.testing.assert_frame_equal(load.load_run(run_dir).summary, committed)


def test_budget_points_families_and_one_row_per_tree(results):
    pts = fig_bench.budget_points(load.load_runs(results, quiet=True))
    assert set(pts["family"]) == {"sparse", "chain", "dense", "plain", "optuna"}
    assert not pts.duplicated(["method", "tree", "node_budget"]).any()
    assert (pts.loc[pts["family"] == "plain", "node_budget"] == 1).all()


def test_typical_points_sweep_eps_at_one_temperature(results):
    typ, refs, temp = fig_bench.typical_points(load.load_runs(results, quiet=True))
    assert temp == pytest.approx(0.7)
    assert list(typ["posterior_threshold"]) == sorted(typ["posterior_threshold"]) and len(typ) == 4
    assert set(refs["method"]) == {"medusa", "hf-greedy", "hf-sample"} and len(refs) == 3
    assert (refs.loc[refs["method"] != "medusa", "mean_accepted_length"] == 1.0).all()
    with pytest.raises(load.MissingResult):
        fig_bench.typical_points(load.load_runs(results, quiet=True), temperature=1.3)


def test_caption_names_device_and_model(results):
    run = load.load_run(results / "bench" / "mtbench")
    cap = load.caption_from_records(run.records, "x")
    assert synthetic_results.DEVICE in cap and synthetic_results.BACKBONE in cap and "2 threads" in cap


def test_head_accuracy_is_cumulative_with_intervals(results):
    acc = load_calibration.head_accuracy(results)
    t = acc.table
    assert acc.num_heads == synthetic_results.K
    for _, g in t.groupby("head"):
        assert g["accuracy"].is_monotonic_increasing
        assert ((g["lo"] <= g["accuracy"]) & (g["accuracy"] <= g["hi"])).all()


def test_head_accuracy_falls_back_to_the_training_report(results, tmp_path):
    part = tmp_path / "results" / "heads" / "smollm2-135m-medusa1"
    part.mkdir(parents=True)
    src = results / "heads" / "smollm2-135m-medusa1" / "accuracy.csv"
    (part / "accuracy.csv").write_bytes(src.read_bytes())
    acc = load_calibration.head_accuracy(tmp_path / "results")
    assert acc.source.name == "accuracy.csv" and acc.num_heads == synthetic_results.K


def test_wrong_columns_are_one_line_errors(results, tmp_path):
    bad = tmp_path / "results" / "latency"
    bad.mkdir(parents=True)
    pd.DataFrame({"n_query": [1], "median_s": [0.1]}).to_csv(bad / "cpu.csv", index=False)
    with pytest.raises(WorkbenchError, match="lacks columns") as e:
        figures.make("latency", tmp_path / "results", tmp_path / "out")
    assert not isinstance(e.value, load.MissingResult)


def test_reader_columns_match_the_writers_schemas():
    from bench import records, summarize
    from bench.latency import COLUMNS as LATENCY
    from bench.validate import VALIDATION_COLUMNS

    assert set(load_latency.LATENCY_REQUIRED) <= set(LATENCY)
    assert set(load_calibration.VALIDATION_REQUIRED) <= set(VALIDATION_COLUMNS)
    assert set(load.SUMMARY_REQUIRED) <= set(summarize.SUMMARY_COLUMNS)
    assert set(load.CONFIG_COLUMNS) <= set(records.COLUMNS)
    assert set(fig_bench.QUALITY_LABELS) <= set(summarize.QUALITY)
    assert load_calibration.DEFAULT_HEADS_NAME == __import__("trees.inputs", fromlist=["x"]).heads_name()


@pytest.mark.parametrize("name", list(tables.TABLES))
def test_each_table_is_markdown(results, name):
    text = tables.make(name, results)
    assert text.startswith("### ") and "\n|---|" in text and "device: " in text


def test_tables_cli(results, empty, capsys):
    assert run_cli(tables.main, ["--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert out.count("### ") >= len(tables.TABLES)
    assert run_cli(tables.main, ["--results", str(empty)]) == 0
    cap = capsys.readouterr()
    assert cap.out == "" and len(cap.err.strip().splitlines()) == len(tables.TABLES)
    assert run_cli(tables.main, ["heads", "--results", str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "python -m bench.calibrate" in err[0]
