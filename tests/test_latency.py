"""Latency profiler: a well-formed table, interpolation, bad files; the GPU check script's smoke mode."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from bench.latency import (
    COLUMNS,
    LatencyConfig,
    LatencyProfile,
    load_profile,
    profile_backbone,
    write_profile,
)
from medusa.errors import WorkbenchError


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


def synthetic(times_by_ctx):
    rows = []
    for ctx, times in times_by_ctx.items():
        for n, t in times.items():
            rows.append({"context": ctx, "n_query": n, "median_s": t, "backbone": "b", "dtype": "float32",
                         "device": "d", "floor_s": 0.01})
    return LatencyProfile(pd.DataFrame(rows), "d", "b")


def test_interpolation_and_extrapolation():
    prof = synthetic({100: {1: 0.1, 4: 0.2, 8: 0.4}, 300: {1: 0.3, 4: 0.4, 8: 0.6}})
    assert prof.verify_time(2, context=100) == pytest.approx(0.1 + 0.1 / 3)
    assert prof.verify_time(4, context=200) == pytest.approx(0.3)
    assert prof.verify_time(12, context=100) == pytest.approx(0.6)  # slope of the last segment
    assert prof.verify_time(1, context=50) == pytest.approx(0.1)  # clamped below the first context
    with pytest.raises(WorkbenchError):
        prof.verify_time(0)


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
    lat = list((tmp_path / "o" / "latency").glob("*.csv"))
    assert len(lat) == 1 and set(pd.read_csv(lat[0])["backbone"]) == {"smollm2-135m-random", "llama-7b-shape-random"}
