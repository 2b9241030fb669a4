"""Prompt loaders and the hash split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import WorkbenchError
from medusa import data as D


def sharegpt_file(tmp_path: Path, records: list, truncate: bool = False) -> Path:
    text = json.dumps(records, indent=1)
    if truncate:
        text = text[: len(text) - 40]  # cut inside the last record
    path = tmp_path / "sharegpt.json"
    path.write_text(text)
    return path


def conv(*turns: tuple[str, object], rid: str = "x") -> dict:
    return {"id": rid, "conversations": [{"from": f, "value": v} for f, v in turns]}


def test_sharegpt_skips_and_counts_bad_records_and_reads_a_truncated_file(tmp_path):
    records = [
        conv(("human", "Hello there"), ("gpt", "Hi!"), ("human", "More?"), ("gpt", "Sure."), rid="a"),
        conv(("gpt", "starts with the model"), rid="b"),
        conv(("human", {"image": 1}), rid="c"),
        conv(("human", "x" * 50), rid="d"),
        conv(("human", "Hello   there"), rid="e"),  # same text after whitespace normalisation
        conv(("human", "   "), rid="f"),
        conv(("human", "Last one"), ("gpt", "this record gets cut off somewhere in its middle"), rid="g"),
    ]
    report = D.LoadReport()
    prompts = D.load_sharegpt(sharegpt_file(tmp_path, records, truncate=True), max_chars=40, report=report)
    assert [p.id for p in prompts] == ["a"]
    assert prompts[0].messages == ({"role": "user", "content": "Hello there"},)
    assert report.truncated and report.read == 6 and report.kept == 1
    assert dict(report.skipped) == {"not starting with a human turn": 1, "non-text": 1, "over-long": 1,
                                    "duplicate": 1, "empty first turn": 1}
    multi = D.load_sharegpt(sharegpt_file(tmp_path, records[:1]), multi_turn=True)
    assert multi[0].user_turns == ["Hello there", "More?"] and len(multi[0].messages) == 4


def test_split_is_a_pure_function_of_the_text_and_never_overlaps():
    texts = [f"prompt number {i}" for i in range(3000)]
    prompts = [D.Prompt(str(i), ({"role": "user", "content": t},), "t") for i, t in enumerate(texts)]
    parts = D.split_prompts(prompts)
    keys = {name: {p.key for p in items} for name, items in parts.items()}
    assert not keys["train"] & keys["eval"] and not keys["train"] & keys["calibration"]
    assert not keys["eval"] & keys["calibration"]
    assert sum(map(len, parts.values())) == 3000
    assert 90 <= len(parts["eval"]) <= 210 and 90 <= len(parts["calibration"]) <= 210
    assert all(D.split_of(p.text) == name for name, items in parts.items() for p in items)
    assert D.split_of("a  b\nc") == D.split_of("a b c")


def test_load_split_on_the_shipped_sharegpt_is_deterministic_and_disjoint():
    evals = D.load_split("eval", limit=50)
    calib = D.load_split("calibration", limit=50)
    train = D.load_split("train", limit=200)
    assert len(evals) == 50 and len(calib) == 50
    assert [p.id for p in evals] == [p.id for p in D.load_split("eval", limit=50)]
    sets = [{p.key for p in x} for x in (evals, calib, train)]
    assert not sets[0] & sets[1] and not sets[0] & sets[2] and not sets[1] & sets[2]


def test_mtbench_and_gsm8k():
    mt = D.load_mtbench()
    assert len(mt) == 80 and len(mt[0].user_turns) == 2 and mt[0].category
    gsm = D.load_gsm8k()
    assert len(gsm) == 1319 and gsm[0].text.startswith("Janet")


def test_jsonl_prompts_accept_common_fields(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join([
        json.dumps("plain string"),
        json.dumps({"prompt": "a prompt", "id": "p1"}),
        json.dumps({"question": "a question"}),
        json.dumps({"turns": ["t1", "t2"]}),
        json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "m"}]}),
    ]) + "\n")
    prompts = D.load_jsonl_prompts(path)
    assert [p.text for p in prompts] == ["plain string", "a prompt", "a question", "t1", "m"]
    assert prompts[1].id == "p1" and prompts[3].user_turns == ["t1", "t2"]


@pytest.mark.parametrize("content,needle", [("", "holds no prompts"), ("{bad\n", "not valid JSON"),
                                            ('{"other": 1}\n', "none of the prompt fields")])
def test_bad_jsonl_is_one_line(tmp_path, content, needle):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(WorkbenchError, match=needle) as e:
        D.load_jsonl_prompts(path)
    assert "\n" not in str(e.value)


def test_missing_file_and_unknown_split(tmp_path):
    with pytest.raises(WorkbenchError, match="not found"):
        D.load_jsonl_prompts(tmp_path / "nope.jsonl")
    with pytest.raises(WorkbenchError, match="unknown split"):
        D.load_split("test")
    with pytest.raises(WorkbenchError, match="not a JSON array"):
        D.load_sharegpt(sharegpt_file(tmp_path, {"a": 1}))
