"""Load averages on benchmark records: captured around each timed call, read as NaN from older
files (the committed runs included, never rewritten), and flagged by `bench.summarize` when they
top the run's thread count.

Fabricated run folders (no model) for the flag; a tiny random Llama for the capture (seconds).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import records as R
from bench.summarize import (
    LOAD_MARGIN,
    MAX_LOAD,
    OVERLOADED,
    main,
    overload_warning,
    summarize_frame,
    summarize_run,
)
from common.paths import RESULTS
from medusa.backbone import Backbone

COMMITTED = sorted(p.parent for p in (RESULTS / "bench").glob(f"*/{R.RECORDS_FILE}"))


def _record(question: int, method: str, load_start: float, load_end: float, threads: int = 2) -> R.Record:
    """A plausible record of a finished timed call; only its key, loads and threads matter here."""
    values = {f.name: {"int": 0, "float": math.nan, "bool": True, "str": ""}[f.type] for f in fields(R.Record)}
    values.update(source="test", prompt_index=question, question_id=str(question), category="writing", turn=1,
                  method=method, repeat=0, backbone="tiny", method_options="{}", max_new_tokens=8, new_tokens=8,
                  wall_s=0.5, tokens_per_s=16.0, stop_reason="length", temperature=0.0, threads=threads,
                  load_start=load_start, load_end=load_end)
    return R.Record(**values)


def _fabricated_run(folder: Path, loads: dict[tuple[int, str], tuple[float, float]], threads: int = 2) -> Path:
    """A run folder whose records carry `loads` ((question, method) -> (start, end)); same outputs everywhere."""
    store = R.RecordStore(folder)
    for (q, method), (start, end) in loads.items():
        record = _record(q, method, start, end, threads)
        store.append(record, R.Tokens(str(q), 1, method, 0, [1, 2, 3], list(range(10, 18)), "text"))
    return folder


def _metric(summary, method: str, metric: str, category: str = "all"):
    rows = summary[(summary["method"] == method) & (summary["category"] == category) & (summary["metric"] == metric)]
    return rows.iloc[0] if len(rows) else None


NORMAL = {(q, m): (1.9, 2.3) for q in (1, 2, 3) for m in ("hf-greedy", "medusa")}  # 2 threads, at most +0.3


def test_a_normal_run_is_not_flagged(tmp_path):
    summary, _, text = summarize_run(_fabricated_run(tmp_path / "run", NORMAL), resamples=0)
    for method in ("hf-greedy", "medusa"):
        assert _metric(summary, method, OVERLOADED)["value"] == 0
        assert _metric(summary, method, MAX_LOAD)["value"] == pytest.approx(2.3)
        assert _metric(summary, method, MAX_LOAD)["n"] == 3
    assert overload_warning(summary) is None and "warning" not in text


def test_a_planted_overloaded_record_fires_the_flag(tmp_path, capsys):
    loads = {**NORMAL, (2, "medusa"): (2.2, 3.4)}
    run = _fabricated_run(tmp_path / "run", loads)
    summary, _, text = summarize_run(run, resamples=0)
    assert _metric(summary, "medusa", OVERLOADED)["value"] == 1
    assert _metric(summary, "medusa", OVERLOADED)["n"] == 3
    assert _metric(summary, "medusa", MAX_LOAD)["value"] == pytest.approx(3.4)
    assert _metric(summary, "hf-greedy", OVERLOADED)["value"] == 0
    assert _metric(summary, "medusa", OVERLOADED, "writing")["value"] == 1
    warning = overload_warning(summary)
    assert warning.startswith("warning: 1 record ran") and "medusa 1 of 3 (load up to 3.40)" in warning
    assert "hf-greedy" not in warning and f"**{warning}**" in text
    assert main([str(run), "--bootstrap", "0"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("warning:")] == [warning]


def test_the_threshold_is_each_records_thread_count_plus_the_margin(tmp_path):
    loads = {(1, "a"): (0.2, 1.0 + LOAD_MARGIN), (2, "a"): (0.2, 1.0 + LOAD_MARGIN + 0.01), (3, "a"): (math.nan, math.nan)}
    summary, _, _ = summarize_run(_fabricated_run(tmp_path / "one", loads, threads=1), resamples=0)
    assert _metric(summary, "a", OVERLOADED)["value"] == 1 and _metric(summary, "a", OVERLOADED)["n"] == 2
    # The same loads on 4 threads are what the run itself puts on the cores.
    summary, _, _ = summarize_run(_fabricated_run(tmp_path / "four", loads, threads=4), resamples=0)
    assert _metric(summary, "a", OVERLOADED)["value"] == 0


@pytest.mark.parametrize("run", [p for p in COMMITTED if p.name in ("mtbench-ref", "sampling-T0.7")], ids=lambda p: p.name)
def test_committed_runs_read_with_unknown_loads_and_are_not_rewritten(run):
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir() if p.is_file()}
    frame, tokens, _ = R.load_run(run)
    assert list(frame.columns) == list(R.COLUMNS) and len(frame)
    assert frame[list(R.LOAD_COLUMNS)].isna().all().all()
    summary, _ = summarize_frame(frame, tokens, resamples=0)
    assert not summary["metric"].isin([MAX_LOAD, OVERLOADED]).any() and overload_warning(summary) is None
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir() if p.is_file()} == before


def test_every_committed_run_still_reads():
    assert COMMITTED, "no committed runs under results/bench"
    for run in COMMITTED:
        rows = R.read_records_csv(run / R.RECORDS_FILE)
        loads = [r[c] for r in rows for c in R.LOAD_COLUMNS]
        # runs written before the load was kept read as NaN; later ones carry a load on every record
        assert rows and (all(math.isnan(x) for x in loads) or all(x >= 0 for x in loads)), run


def _drop_columns(path: Path, drop: tuple[str, ...]) -> None:
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f))
    keep = [i for i, c in enumerate(header) if c not in drop]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([[r[i] for i in keep] for r in [header, *rows]])
    path.write_text(buf.getvalue())


def test_schema_of_headers_with_and_without_the_later_columns():
    first_v2 = [c for c in R.COLUMNS if c not in R.LOAD_COLUMNS]
    assert R.records_schema(R.COLUMNS) == "v2" and R.records_schema(first_v2) == "v2"
    assert R.records_schema(R.V1_COLUMNS) == "v1" and "load_start" not in R.V1_COLUMNS
    assert R.records_schema([*R.V1_COLUMNS, *R.LOAD_COLUMNS]) == "v1"
    assert R.records_schema([*first_v2, "load_start", "load_start"]) is None
    assert R.records_schema(first_v2[:-1]) is None


# ---- capture in bench.run ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chars_model():
    from medusa.testing import tiny_backbone
    from tests.test_bench import char_tokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Backbone(tiny_backbone(3).model, char_tokenizer(), "tiny-chars")
    torch.set_num_threads(threads)


def _run(backbone, tmp_path, out, methods=("hf-greedy",)):
    from bench.run import BenchConfig, run_benchmark
    from tests.test_bench import QUESTIONS

    prompts = tmp_path / "questions.jsonl"
    prompts.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS[:2]))
    config = BenchConfig(methods=methods, prompts=str(prompts), out=str(out), max_new_tokens=6, warmup_tokens=0,
                         turns=2, progress=False, threads=1, score_quality=False)
    return run_benchmark(config, backbone=backbone)


def test_each_record_carries_the_load_just_before_and_after_its_timed_call(chars_model, tmp_path, monkeypatch):
    import bench.run
    from bench.methods.hf_greedy import HFGreedy

    ticks = iter(np.arange(0.5, 50, 0.5))
    calls: list[str] = []
    original = HFGreedy.generate

    def load() -> float:
        calls.append("load")
        return float(next(ticks))

    def generate(self, *args, **kwargs):
        calls.append("generate")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(bench.run, "load_average", load)
    monkeypatch.setattr(HFGreedy, "generate", generate)
    out = tmp_path / "run"
    _run(chars_model, tmp_path, out)
    assert calls == ["load", "generate", "load"] * 4  # 2 prompts x 2 turns, one read each side
    frame, _, _ = R.load_run(out)
    assert list(frame["load_start"]) == [0.5, 1.5, 2.5, 3.5] and list(frame["load_end"]) == [1.0, 2.0, 3.0, 4.0]
    summary, _, _ = summarize_run(out, resamples=0)
    # 1 thread: loads 2.0 and above (> 1.5) are flagged, 1.0 and 1.5 are not.
    assert _metric(summary, "hf-greedy", OVERLOADED)["value"] == 3
    assert _metric(summary, "hf-greedy", MAX_LOAD)["value"] == 4.0


def test_a_real_run_records_real_loads_and_resumes_an_older_folder(chars_model, tmp_path):
    out = tmp_path / "run"
    _run(chars_model, tmp_path, out)
    frame, _, _ = R.load_run(out)
    loads = frame[list(R.LOAD_COLUMNS)].to_numpy(float)
    assert np.isfinite(loads).all() and (loads >= 0).all()  # Linux has a load average
    # The same folder as written before the loads were kept: read as NaN, resumed with them.
    _drop_columns(out / R.RECORDS_FILE, R.LOAD_COLUMNS)
    frame, _, _ = R.load_run(out)
    assert frame[list(R.LOAD_COLUMNS)].isna().all().all()
    assert _run(chars_model, tmp_path, out, methods=("hf-greedy", "ar")).written == 4
    header = (out / R.RECORDS_FILE).read_text().splitlines()[0].split(",")
    assert tuple(header) == R.COLUMNS
    frame, _, _ = R.load_run(out)
    assert frame[frame["method"] == "hf-greedy"]["load_start"].isna().all()
    assert np.isfinite(frame[frame["method"] == "ar"]["load_start"].to_numpy(float)).all()


def test_concurrent_shards_raise_the_threshold(tmp_path):
    from bench.summarize import run_concurrency, summarize_frame

    assert run_concurrency({"sessions": [{"shard": "0/2"}, {"shard": "1/2"}]}) == 2
    assert run_concurrency({}) == 1 and run_concurrency({"sessions": [{"shard": ""}, "odd"]}) == 1
    frame, tokens, _ = R.load_run(_fabricated_run(tmp_path / "two", {(1, "a"): (2.1, 2.2)}, threads=1))
    # two 1-thread shards side by side put a load of ~2 on the cores themselves
    assert _metric(summarize_frame(frame, tokens, 0, concurrency=1)[0], "a", OVERLOADED)["value"] == 1
    assert _metric(summarize_frame(frame, tokens, 0, concurrency=2)[0], "a", OVERLOADED)["value"] == 0
