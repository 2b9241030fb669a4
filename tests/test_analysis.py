"""analysis/: every figure and table from a tiny synthetic results folder; missing inputs; schemas.

The synthetic folder (`tests.synthetic_results`) is written with the writers' own schema code, so
the readers here are checked against what `bench`, `trees` and `medusa.train` really write.
"""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from analysis import fig_bench, figures, load, load_calibration, load_latency, tables
from analysis.fig_throughput import predicted_speedup
from common.cli import run_cli
from common.errors import WorkbenchError
from common.paths import REFERENCE_RUN
from tests import synthetic_results
from trees.tree import Tree

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

    run_dir = tmp_path / REFERENCE_RUN
    shutil.copytree(results / "bench" / REFERENCE_RUN, run_dir)
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
    run = load.load_run(results / "bench" / REFERENCE_RUN)
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


# ---- figures compare like with like and say what they show (issue 12) ----------------------------
def _capture(monkeypatch, module) -> list:
    """Figures handed to `module.save` (the figure functions draw bare Figures, then save them)."""
    figs: list = []
    real = module.save
    monkeypatch.setattr(module, "save", lambda fig, out, stem: figs.append(fig) or real(fig, out, stem))
    return figs


def _texts(fig) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")))


@pytest.fixture(scope="module")
def mixed(results, tmp_path_factory):
    """The synthetic results plus runs measured under other conditions (64 new tokens, two concurrent
    shards) and a lossless sampling method beside the eps sweep."""
    import shutil

    from trees.tree import Tree

    root = tmp_path_factory.mktemp("mixed") / "results"
    shutil.copytree(results, root)
    tree = {b: Tree.load(root / "trees" / f"empirical_{b}.json") for b in (8, 32, 64)}
    synthetic_results.bench_run(root, "budget-64-long", {"medusa": {"tau": 1.9, "speed": 0.5}, "ar": {"speed": 0.8}},
                                tree[64], 0.7, 300, max_new_tokens=64, shards=2)
    synthetic_results.bench_run(root, "budget-8-long", {"medusa": {"tau": 1.5, "speed": 0.9}}, tree[8], 0.7, 301,
                                max_new_tokens=64, shards=2)
    # beside the eps sweep, which decodes with empirical_32
    synthetic_results.bench_run(root, "typical-lossless", {"medusa-sample": {"tau": 1.7, "speed": 1.1, "loglik": -1.7},
                                                           "hf-sample": {"speed": 1.0, "loglik": -1.7}}, tree[32], 0.7, 302)
    return root


def test_budget_points_carry_their_measuring_conditions(mixed):
    pts = fig_bench.budget_points(load.load_runs(mixed, quiet=True), per_condition=True)
    long = pts[pts["run"].isin(["budget-64-long", "budget-8-long"])]
    assert set(long["max_new_tokens"]) == {64} and set(long["processes"]) == {2} and set(long["turns"]) == {"1"}
    assert set(pts.loc[~pts.index.isin(long.index), "processes"]) == {1}
    assert long["condition"].nunique() == 1 and "2 processes at once; 64 new tokens, turn 1" in long["condition"].iloc[0]
    # the same tree under two conditions is two points; one row per tree without per_condition
    assert pts.duplicated(["method", "tree", "node_budget"]).any()
    assert not fig_bench.budget_points(load.load_runs(mixed, quiet=True)).duplicated(["method", "tree", "node_budget"]).any()


def test_budget_figure_draws_one_row_of_panels_per_condition(mixed, tmp_path, monkeypatch):
    panels, left = fig_bench.budget_panels(fig_bench.budget_points(load.load_runs(mixed, quiet=True), per_condition=True))
    assert len(panels) == 2 and left == []
    for condition, pts in panels:
        assert (pts["condition"] == condition).all()
        assert pts[["max_new_tokens", "processes", "turns", "threads", "device_name"]].drop_duplicates().shape[0] == 1
    assert panels[0][1]["max_new_tokens"].iloc[0] == 32  # the condition with most trees first
    figs = _capture(monkeypatch, fig_bench)
    figures.make("budget", mixed, tmp_path)
    (fig,) = figs
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 4
    text = _texts(fig)
    assert "64 new tokens" in text and "32 new tokens" in text and "2 processes at once" in text


def test_budget_star_rings_the_fastest_point_without_hiding_it(results, tmp_path, monkeypatch):
    figs = _capture(monkeypatch, fig_bench)
    figures.make("budget", results, tmp_path)
    from matplotlib.collections import PathCollection

    stars = [c for ax in figs[0].axes for c in ax.collections
             if isinstance(c, PathCollection) and c.get_sizes().size and c.get_sizes()[0] >= 300]
    assert stars and all(len(c.get_facecolors()) == 0 or c.get_facecolors()[0][3] == 0 for c in stars)
    points = [line for ax in figs[0].axes for line in ax.lines if line.get_marker() not in (None, "None", "")]
    assert all(line.get_zorder() > c.get_zorder() for c in stars for line in points)


def test_typical_figure_draws_every_reference_and_no_text_on_the_data(mixed, tmp_path, monkeypatch):
    typ, refs, _ = fig_bench.typical_points(load.load_runs(mixed, quiet=True))
    lossless = refs[refs["method"] == "medusa-sample"]
    assert len(lossless) == 1 and not lossless["plain"].iloc[0] and lossless["mean_accepted_length"].iloc[0] > 1
    assert fig_bench.reference_label(lossless.iloc[0]) == "lossless sampling (medusa-sample)"
    assert {"hf-greedy", "hf-sample", "medusa"} <= set(refs["method"]) and "medusa-typical" not in set(refs["method"])
    figs = _capture(monkeypatch, fig_bench)
    figures.make("typical", mixed, tmp_path)
    (fig,) = figs
    data_axes = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    assert all(not ax.texts for ax in data_axes), "labels drawn on the data"
    legend = _texts(fig)
    assert "lossless sampling (medusa-sample)" in legend and "plain sampling (hf-sample)" in legend
    assert all(f"eps = {e:g}" in legend for e in typ["posterior_threshold"])
    lines = [line for ax in data_axes for line in ax.get_lines() if list(line.get_xdata()) == [0, 1]]  # axhline
    assert any(abs(line.get_ydata()[0] - lossless["mean_accepted_length"].iloc[0]) < 1e-9 for line in lines)


def test_reference_label_falls_back_to_traits():
    row = pd.Series({"method": "new-sampler", "greedy": False, "plain": False})
    assert fig_bench.reference_label(row) == "sampling with a tree (new-sampler)"
    assert fig_bench.reference_label(row.replace({False: True})) == "greedy decoding (new-sampler)"


def test_validation_error_is_labelled_signed(results, tmp_path, monkeypatch):
    from analysis import fig_trees

    figs = _capture(monkeypatch, fig_trees)
    figures.make("validation", results, tmp_path)
    assert "(predicted - measured) / measured" in figs[0].axes[1].get_xlabel()
    assert "over-predicts" in figs[0].axes[1].get_title()


def test_speedup_ticks_name_the_baseline_tokens_per_s_and_n(results, tmp_path, monkeypatch):
    figs = _capture(monkeypatch, fig_bench)
    figures.make("speedup", results, tmp_path)
    ticks = [t.get_text() for t in figs[0].axes[0].get_xticklabels()]
    run = load.pick_run(load.load_runs(results, quiet=True))
    ref = run.summary[(run.summary["method"] == "hf-greedy") & (run.summary["metric"] == "tokens_per_s")]
    for tick, (cat, value, n) in zip(ticks, ref[["category", "value", "n"]].itertuples(index=False)):
        assert tick.split("\n")[:3] == [str(cat), f"{value:.1f} tok/s", f"n={int(n)}"]
    assert ticks[-1].startswith("all\n")


def test_uncrowded_labels_keep_a_gap():
    from analysis.style import uncrowded

    show = uncrowded([0, 0.01, 0.5, 0.51, 1.0], [0, 0, 0.5, 0.5, 1.0], min_gap=0.05, keep=[1])
    assert show == [False, True, True, False, True]


# ---- summaries state each method's decoding and warn on tiny n (bench.summarize, issue 12) ---------
def test_summary_states_the_decoding_of_each_method(results, tmp_path):
    import shutil

    from bench import records, summarize

    frame, _, _ = records.load_run(results / "bench" / "typical-refs")
    assert summarize.decoding(frame) == {"medusa": "greedy", "hf-greedy": "greedy", "hf-sample": "T=0.7"}
    frame, _, _ = records.load_run(results / "bench" / "typical-0.09")
    assert summarize.decoding(frame) == {"medusa-typical": "T=0.7, eps=0.09, delta=0.3"}
    run = tmp_path / "greedy-only"
    shutil.copytree(results / "bench" / REFERENCE_RUN, run)
    _, _, text = summarize.summarize_run(run, resamples=20)
    head, _, quality = text.partition("Quality")
    (line,) = [x for x in head.splitlines() if x.startswith("Decoding: ")]
    assert sorted(line.removeprefix("Decoding: ").rstrip(".").split("; ")) == \
        ["ar greedy", "hf-greedy greedy", "hf-pld greedy", "medusa greedy"]
    assert "T=" not in head, "an all-greedy run must not read as sampled"
    assert "log-likelihood scored at T=0.7" in quality.splitlines()[0]


def test_summary_warns_once_when_an_interval_rests_on_tiny_n(results, tmp_path, capsys):
    import shutil

    from bench import summarize

    run = tmp_path / "tiny"
    shutil.copytree(results / "bench" / "typical-refs", run)
    assert run_cli(summarize.main, [str(run), "--bootstrap", "20"]) == 0
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and f"fewer than {summarize.MIN_BOOTSTRAP_N} prompt turns" in err[0]
    assert "smallest n = 3" in err[0]  # 3 prompts per category in the synthetic runs
    assert sum(f"**{err[0]}**" == line for line in cap.out.splitlines()) == 1
    summary = pd.read_csv(run / "summary.csv")
    assert summarize.tiny_n_warning(summary[summary["category"] == "all"]) is None  # n = 9 there
    assert summarize.tiny_n_warning(summary.assign(lo=float("nan"))) is None  # no interval, nothing to warn about


def test_predicted_speedup_reads_the_tree_and_the_profile_it_was_searched_on(results, tmp_path):
    root = tmp_path / "r"
    shutil.copytree(results, root)
    meta = {"tokens_per_step": 1.5, "verify_s": 0.05, "context": 128, "batch": 1,
            "command": "python -m trees.search --latency results/latency/cpu-synthetic-2t.csv --name t"}
    Tree.from_paths([(0,), (1,)], name="t", meta=meta).save(root / "trees" / "t.json")
    t1 = 0.03 + 0.0004 * 1 * (1 + 128 / 1024)  # the synthetic profile's T(1, 1) at context 128
    assert abs(predicted_speedup(root, "t", 1) - 1.5 * t1 / 0.05) < 1e-9
    assert predicted_speedup(root, "t", 2) != predicted_speedup(root, "t", 2)  # searched for batch 1 only: NaN
    assert predicted_speedup(root, "missing", 1) != predicted_speedup(root, "missing", 1)
    assert predicted_speedup(root, "t", 1, threads=2) == predicted_speedup(root, "t", 1)  # the profile's 2 threads
    assert predicted_speedup(root, "t", 1, threads=1) != predicted_speedup(root, "t", 1, threads=1)
