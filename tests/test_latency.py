"""Latency profiler: a well-formed table, batch sizes, interpolation, bad files; the GPU check script's smoke mode."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from bench.latency import COLUMNS, LatencyConfig, profile_backbone, write_profile
from bench.latency import main as latency_main
from bench.migrate import migrate
from common.cli import run_cli
from common.errors import WorkbenchError
from trees.cost import LatencyProfile, batch_tokens_per_s, load_profile, load_table, profile_name


def test_profile_tiny_model_is_well_formed(tmp_path, tiny):
    cfg = LatencyConfig(contexts=(16, 32), n_queries=(1, 4, 8), repeats=2, warmup=1)
    df = profile_backbone(tiny, cfg, progress=False)
    assert list(df.columns) == COLUMNS
    assert len(df) == 6
    assert (df["median_s"] > 0).all() and (df["p10_s"] <= df["p90_s"]).all()
    assert (df["mem_bandwidth_gbs"] > 0).all() and (df["matmul_gflops"] > 0).all()
    path = write_profile(df, tmp_path / "lat.csv")
    # rewriting the same backbone/dtype replaces its rows instead of duplicating them
    write_profile(df, path)
    assert len(pd.read_csv(path)) == 6
    prof = load_profile(path)
    assert prof.verify_time(4, context=16) == pytest.approx(df.query("context == 16 and n_query == 4")["median_s"].item())


def test_compiled_profile_is_well_formed(tmp_path, tiny):
    cfg = LatencyConfig(contexts=(16,), n_queries=(1, 3), repeats=2, warmup=1, mode="compiled", bucket=32)
    df = profile_backbone(tiny, cfg, progress=False)
    assert list(df.columns) == COLUMNS
    assert (df["mode"] == "compiled").all() and list(df["lm_rows"]) == [1, 3]
    assert (df["median_s"] > 0).all() and (df["compile_s"] >= 0).all()
    assert df["lm_head_s"].isna().all()  # one graph: no separate LM-head time
    assert (df["roofline_s"] >= df["floor_s"]).all() and (df["roofline_s"] >= df["compute_floor_s"]).all()
    eager = profile_backbone(tiny, LatencyConfig(contexts=(16,), n_queries=(1, 3), repeats=2, warmup=1), progress=False)
    assert (eager["mode"] == "eager").all() and eager["compile_s"].isna().all() and (eager["lm_head_s"] > 0).all()
    path = write_profile(df, tmp_path / profile_name("cpu", "compiled"))
    assert path.name.endswith("-compiled.csv") and load_profile(path).verify_time(2, context=16) > 0
    with pytest.raises(WorkbenchError, match="bucket"):
        LatencyConfig(contexts=(16,), n_queries=(32,), mode="compiled", bucket=32)
    with pytest.raises(WorkbenchError, match="mode"):
        LatencyConfig(mode="fast")


def test_batch_profile_times_batched_forwards(tmp_path, tiny):
    """Batch 2 rows come from forwards of 2 rows (ids (2, n), mask (2, 1, n, ctx + n), the LM head on
    2 x n rows); each batch size reads back on its own, and rewriting batch 1 keeps batch 2."""
    shapes = []
    decoder, lm_head = tiny.model.base_model, tiny.model.get_output_embeddings()
    hooks = [decoder.register_forward_pre_hook(
                 lambda _m, _a, kw: shapes.append(("decoder", tuple(kw["input_ids"].shape),
                                                   tuple(kw["attention_mask"].shape))), with_kwargs=True),
             lm_head.register_forward_pre_hook(lambda _m, a: shapes.append(("lm_head", tuple(a[0].shape))))]
    try:
        cfg = LatencyConfig(contexts=(16,), n_queries=(1, 4), repeats=2, warmup=1, batch_sizes=(1, 2))
        df = profile_backbone(tiny, cfg, progress=False)
    finally:
        for h in hooks:
            h.remove()
    assert list(df.columns) == COLUMNS and len(df) == 4
    assert sorted(df["batch"]) == [1, 1, 2, 2] and (df["median_s"] > 0).all() and (df["lm_head_s"] > 0).all()
    assert ("decoder", (2, 4), (2, 1, 4, 20)) in shapes and ("lm_head", (2, 4, tiny.model.config.hidden_size)) in shapes
    assert ("decoder", (1, 4), (1, 1, 4, 20)) in shapes  # batch 1 still one row over a one-request cache
    assert not any(s[0] == "decoder" and s[1][0] not in (1, 2) for s in shapes)
    one, two = (df[df["batch"] == b].set_index("n_query") for b in (1, 2))
    assert two["compute_floor_s"].to_numpy() == pytest.approx(2 * one["compute_floor_s"].to_numpy())
    path = write_profile(df, tmp_path / "lat.csv")
    prof = load_profile(path)
    assert prof.batch_sizes == (1, 2)
    assert prof.verify_time(4, context=16, batch=2) == pytest.approx(two.loc[4, "median_s"])
    assert prof.verify_time(4, context=16) == pytest.approx(one.loc[4, "median_s"])
    # a batch-1 rerun replaces the batch-1 rows only: the batch-2 rows stay
    write_profile(df[df["batch"] == 1], path)
    again = pd.read_csv(path)
    assert len(again) == 4 and sorted(again["batch"]) == [1, 1, 2, 2]


def test_batch_sizes_bad_input_one_line_exit_2(capsys):
    with pytest.raises(WorkbenchError, match="batch 1 only"):
        LatencyConfig(contexts=(16,), n_queries=(1,), mode="compiled", bucket=32, batch_sizes=(1, 2))
    with pytest.raises(WorkbenchError, match="distinct positive"):
        LatencyConfig(batch_sizes=(1, 1))
    for args, match in ((["--mode", "compiled", "--contexts", "16", "--n-queries", "1", "--bucket", "32",
                          "--batch-sizes", "1,4"], "batch 1 only"),
                        (["--batch-sizes", "0"], "--batch-sizes"), (["--batch-sizes", "2,x"], "--batch-sizes")):
        assert run_cli(latency_main, args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and match in err, err


def synthetic(times_by_ctx, batch=None):
    rows = []
    for ctx, times in times_by_ctx.items():
        for n, t in times.items():
            rows.append({"context": ctx, "n_query": n, "median_s": t, "backbone": "b", "dtype": "float32",
                         "device": "d", "floor_s": 0.01, **({} if batch is None else {"batch": batch})})
    return LatencyProfile(pd.DataFrame(rows), "d", "b")


def test_verify_time_reads_the_rows_of_its_batch_size():
    one = synthetic({100: {1: 0.1, 8: 0.2}}, batch=1).table
    four = synthetic({100: {1: 0.3, 8: 0.9}}, batch=4).table
    prof = LatencyProfile(pd.concat([four, one], ignore_index=True), "d", "b")
    assert prof.batch_sizes == (1, 4)
    assert prof.verify_time(8, context=100) == pytest.approx(0.2)
    assert prof.verify_time(8, context=100, batch=4) == pytest.approx(0.9)
    assert prof.verify_time(4, context=100, batch=4) == pytest.approx(0.3 + 0.6 * 3 / 7)
    with pytest.raises(WorkbenchError) as e:
        prof.verify_time(8, context=100, batch=2)
    assert "\n" not in str(e.value) and "batch 2" in str(e.value) and "1, 4" in str(e.value)
    # throughput at batch B: B x tokens per step over T(B, N)
    assert batch_tokens_per_s(2.0, 0.9, 4) == pytest.approx(4 * 2.0 / 0.9)
    assert batch_tokens_per_s(2.0, 0.2) == pytest.approx(2.0 / 0.2)


def test_interpolation_and_extrapolation():
    prof = synthetic({100: {1: 0.1, 4: 0.2, 8: 0.4}, 300: {1: 0.3, 4: 0.4, 8: 0.6}})
    assert prof.verify_time(2, context=100) == pytest.approx(0.1 + 0.1 / 3)
    assert prof.verify_time(4, context=200) == pytest.approx(0.3)
    assert prof.verify_time(12, context=100) == pytest.approx(0.6)  # slope of the last segment
    assert prof.verify_time(1, context=50) == pytest.approx(0.1)  # clamped below the first context
    with pytest.raises(WorkbenchError):
        prof.verify_time(0)


def test_profiles_without_batch_column_read_as_batch_1(tmp_path):
    """A CSV written before batched decoding (no batch column) is batch 1; a batch run written onto it
    keeps its rows; a blank batch cell is batch 1 and text in it is one error line."""
    old = pd.DataFrame({"device_slug": ["cpu-x"] * 2, "backbone": ["b"] * 2, "dtype": ["float32"] * 2,
                        "context": [128, 128], "n_query": [1, 2], "median_s": [0.1, 0.2], "floor_s": [0.01, 0.01]})
    path = tmp_path / "cpu-x.csv"
    old.to_csv(path, index=False)
    assert load_table(path)["batch"].tolist() == [1, 1]
    prof = load_profile(path)
    assert prof.batch_sizes == (1,) and prof.verify_time(2, 128, batch=1) == pytest.approx(0.2)
    with pytest.raises(WorkbenchError, match="no rows for batch 8"):
        prof.verify_time(2, 128, batch=8)
    write_profile(old.assign(batch=8, median_s=[0.5, 0.9]), path)
    prof = load_profile(path)
    assert prof.batch_sizes == (1, 8) and len(prof.table) == 4
    assert prof.verify_time(2, 128) == pytest.approx(0.2) and prof.verify_time(2, 128, batch=8) == pytest.approx(0.9)
    pd.concat([old, old.assign(batch=["", "4"], n_query=[3, 4])]).to_csv(path, index=False)
    assert load_table(path)["batch"].tolist() == [1, 1, 1, 4]
    old.assign(batch=["x", "2"]).to_csv(path, index=False)
    with pytest.raises(WorkbenchError, match="positive integers"):
        load_profile(path)


def test_bad_profile_files(tmp_path):
    with pytest.raises(WorkbenchError, match="bench.latency"):
        load_profile(tmp_path / "none.csv")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(WorkbenchError, match="lacks columns"):
        load_profile(tmp_path / "bad.csv")


def test_gpu_check_smoke_runs_on_cpu(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--out", str(tmp_path / "o"), "--smoke",
                           "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["phases"]["correctness"]["result"]["ok"] is True
    assert "random" in report["smollm2_weights"]
    assert "skipped" in report["phases"]["speed_ar_vs_medusa"]
    eager = [p for p in (tmp_path / "o" / "latency").glob("*.csv") if not p.stem.endswith("-compiled")]
    assert len(eager) == 1 and set(pd.read_csv(eager[0])["backbone"]) == {"smollm2-135m-random", "llama-7b-shape-random"}
    compiled = pd.read_csv(eager[0].with_name(eager[0].stem + "-compiled.csv"))
    assert set(compiled["mode"]) == {"compiled"} and set(compiled["backbone"]) == {"smollm2-135m-random"}
    assert report["phases"]["latency_smollm2_compiled"]["result"]["rows"] == len(compiled)


def test_profiles_of_the_first_schema_read_and_migrate_once(tmp_path):
    """Old provenance columns (device, torch, transformers) read as the current schema; the
    migration rewrites the file once and a second run changes nothing."""
    old = pd.DataFrame({
        "device_slug": ["cpu-x-1t"] * 2, "device": ["X CPU (1 threads)"] * 2, "backbone": ["b"] * 2,
        "dtype": ["float32"] * 2, "threads": [1, 1], "context": [128, 128], "n_query": [1, 2],
        "median_s": [0.1, 0.2], "floor_s": [0.01, 0.01], "commit": ["abc"] * 2, "date": ["2026"] * 2,
        "torch": ["2.13.0"] * 2, "transformers": ["5.24.0"] * 2,
    })
    (tmp_path / "latency").mkdir()
    path = tmp_path / "latency" / "cpu-x-1t.csv"
    old.to_csv(path, index=False)
    prof = load_profile(path)
    assert prof.device == "X CPU" and prof.verify_time(2, 128) == pytest.approx(0.2)
    assert migrate(tmp_path) == [f"latency profile {path}: provenance columns renamed"]
    new = pd.read_csv(path)
    assert {"device_name", "torch_version", "transformers_version"} <= set(new.columns)
    assert not {"device", "torch", "transformers"} & set(new.columns)
    assert new["device_name"].tolist() == ["X CPU", "X CPU"] and new["median_s"].tolist() == [0.1, 0.2]
    assert migrate(tmp_path) == []
    assert load_profile(path).verify_time(2, 128) == pytest.approx(0.2)
