"""The benchmark harness end to end on a tiny random Llama with a character tokenizer (seconds).

Checks: one token-counting rule for every method, lossless verdicts that catch a planted
divergence and a planted truncated output, resume without duplicates (also after Ctrl-C and torn
writes), shards that merge to the one-run table, second turns built from the method's own answer,
and bad input reported as one line with exit status 2. No speed is asserted here.
"""

from __future__ import annotations

import csv
import io
import json
import string

import pandas as pd
import pytest
import torch

from bench import records as R
from bench.merge import merge_runs
from bench.methods import METHODS
from bench.prompts import load_bench_prompts, shard
from bench.run import BenchConfig, run_benchmark
from bench.summarize import first_divergence, summarize_run
from common.cli import run_cli
from common.provenance import PROVENANCE_COLUMNS
from medusa.backbone import Backbone
from medusa.heads import HeadsConfig, MedusaHeads
from trees.tree import preset

GREEDY = tuple(name for name, cls in METHODS.items() if cls.greedy)
EOS = 95
QUESTIONS = [
    {"question_id": 1, "category": "writing", "turns": ["Write a poem.", "Make it shorter."]},
    {"question_id": 2, "category": "math", "turns": ["What is 2 plus 2?", "And 3 plus 3?"]},
    {"question_id": 3, "category": "writing", "turns": ["Tell a story.", "Give it a title."]},
    {"question_id": 4, "category": "math", "turns": ["Count to ten.", "Now backwards."]},
    {"question_id": 5, "category": "coding", "turns": ["Sort a list.", "In place?"]},
]


def char_tokenizer():
    """Character-level fast tokenizer over vocab 96 (id 95 = EOS) with a tiny chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0}
    for c in string.ascii_letters + string.digits + " .,?!<>\n":
        vocab[c] = len(vocab)
    while len(vocab) < EOS:
        vocab[f"<x{len(vocab)}>"] = len(vocab)
    vocab["</s>"] = EOS
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>")
    fast.chat_template = ("{% for m in messages %}<{{ m['role'][0] }}>{{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}<a>{% endif %}")
    return fast


@pytest.fixture(scope="module")
def model():
    from medusa.testing import tiny_backbone

    # The runs below ask for 1 thread; the library checks it but never sets it (only CLIs do).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    bb = tiny_backbone(3)
    bb = Backbone(bb.model, char_tokenizer(), "tiny-chars")
    with torch.no_grad():  # make EOS likely enough that some answers stop early and others do not
        bb.model.get_output_embeddings().weight[EOS] *= 2.0
    torch.manual_seed(1)
    heads = MedusaHeads.for_backbone(bb, HeadsConfig(num_heads=3))
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(0.05 * torch.randn_like(p))
    yield bb, heads
    torch.set_num_threads(threads)


@pytest.fixture()
def prompts_file(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return path


def run(model, prompts_file, out, **kw):
    bb, heads = model
    base = dict(methods=("hf-greedy", "ar", "hf-pld", "medusa"), prompts=str(prompts_file), out=str(out),
                max_new_tokens=24, preset="dense_3x2", warmup_tokens=2, progress=False, threads=1)
    base.update(kw)
    config = BenchConfig(**base)
    return run_benchmark(config, backbone=bb, heads=heads, heads_name="tiny-heads", tree=preset(config.preset))


def assert_same_table(folder_a, folder_b):
    """Same rows in the same order, apart from timings and provenance; same token ids."""
    keep = [c for c in R.COLUMNS if c not in R.MACHINE_COLUMNS]
    (fa, ta, _), (fb, tb, _) = R.load_run(folder_a), R.load_run(folder_b)
    pd.testing.assert_frame_equal(fa[keep], fb[keep])
    assert {k: v["output_ids"] for k, v in ta.items()} == {k: v["output_ids"] for k, v in tb.items()}
    assert (folder_a / R.RECORDS_FILE).read_text().count("\n") == (folder_b / R.RECORDS_FILE).read_text().count("\n")


# ---- the token-counting rule -----------------------------------------------------------------
def test_count_rule_truncates_at_first_eos_and_caps():
    assert R.count_new_tokens([5, 6, EOS, 7, EOS], [EOS], 10) == [5, 6, EOS]
    assert R.count_new_tokens([5, 6, 7, 8], [EOS], 3) == [5, 6, 7]
    assert R.count_new_tokens([5, 6, 7, EOS], [EOS], 3) == [5, 6, 7]
    assert R.count_new_tokens([], [EOS], 3) == []


def test_every_method_counted_by_one_rule_and_greedy_methods_agree(model, prompts_file, tmp_path):
    out = tmp_path / "run"
    done = run(model, prompts_file, out, max_new_tokens=40)
    assert done.written == 5 * 4
    frame, tokens, info = R.load_run(out)
    for r in frame.itertuples():
        ids = tokens[(r.question_id, r.turn, r.method, r.repeat)]["output_ids"]
        assert ids == R.count_new_tokens(ids, [EOS], 40)
        assert r.new_tokens == len(ids)
        assert r.stop_reason == ("eos" if ids[-1] == EOS else "length")
        assert r.tokens_per_s == pytest.approx(r.new_tokens / r.wall_s)
    assert {"eos", "length"} <= set(frame["stop_reason"])
    # Lossless methods on the same prompt give the same ids, hence the same count.
    for qid, group in frame.groupby("question_id"):
        outs = {m: tokens[(qid, 1, m, 0)]["output_ids"] for m in group["method"]}
        assert set(outs) == {m for m in ("hf-greedy", "ar", "hf-pld", "medusa") if METHODS[m].greedy}
        assert all(o == outs["hf-greedy"] for o in outs.values()), qid
    med = frame[frame["method"] == "medusa"]
    assert (med["tree"] == "dense_3x2").all() and (med["node_budget"] == 10).all()
    assert (med["accepted_tokens"] >= med["steps"]).all()
    assert frame[frame["method"] == "hf-greedy"]["steps"].isna().all()
    assert info["identity"]["tree"]["name"] == "dense_3x2"
    for col in ("commit", "date", "device_name", "torch_version", "transformers_version", "dtype"):
        assert frame[col].astype(str).str.len().min() > 0
    assert (frame["threads"] == 1).all()


def test_engine_and_hf_outputs_past_eos_are_cut_the_same_way(model):
    """A raw HF output padded past EOS and the engine's output count identically."""
    from bench.methods import MethodContext, MethodSettings, build_method

    bb, heads = model
    ctx = MethodContext(bb, MethodSettings(0.7, 0.09, 0.3), heads=heads, heads_name="h", tree=preset("chain_2"))
    found = False
    for prompt in ("Hi", "Count", "Sort a list.", "What is it?", "Poem", "Tell me", "x", "yy"):
        ids = bb.chat_ids(prompt)
        hf = build_method("hf-greedy", ctx).generate(ids, 60, 0).new_ids
        eng = build_method("medusa", ctx).generate(ids, 60, 0).new_ids
        assert R.count_new_tokens(hf, [EOS], 60) == R.count_new_tokens(eng, [EOS], 60)
        found |= EOS in hf
    assert found, "no prompt reached EOS; pick prompts that do"


# ---- lossless verdict --------------------------------------------------------------------------
def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 9, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2
    assert first_divergence([], [1]) == 0


def test_planted_divergence_and_truncation_are_mismatches(model, prompts_file, tmp_path):
    out = tmp_path / "run"
    run(model, prompts_file, out, methods=("hf-greedy", "medusa"), max_new_tokens=16)
    summary, mismatches, _ = summarize_run(out, resamples=50)
    share = summary.query("method == 'medusa' and category == 'all' and metric == 'identical_to_hf_greedy'")
    assert share["value"].item() == 1.0 and len(mismatches) == 0

    store = R.RecordStore(out)
    diverged, truncated = ("1", 1, "medusa", 0), ("2", 1, "medusa", 0)
    ids = store.tokens[diverged]["output_ids"]
    store.tokens[diverged]["output_ids"] = ids[:3] + [(ids[3] + 1) % EOS] + ids[4:]
    full = store.tokens[truncated]["output_ids"]
    assert len(full) > 2
    store.tokens[truncated]["output_ids"] = full[:-2]
    store.replace_all(store.ordered_rows(), store.tokens)

    summary, mismatches, text = summarize_run(out, resamples=50)
    got = {(r.question_id, r.first_divergence) for r in mismatches.itertuples()}
    assert got == {("1", 3), ("2", len(full) - 2)}
    share = summary.query("method == 'medusa' and category == 'all' and metric == 'identical_to_hf_greedy'")
    assert share["value"].item() == pytest.approx(3 / 5)
    assert "Mismatches against hf-greedy: 2" in text
    assert (out / R.MISMATCHES_FILE).read_text().count("\n") == 3


# ---- resume, interruption, shards --------------------------------------------------------------
def test_resume_skips_finished_records_and_never_duplicates(model, prompts_file, tmp_path):
    out = tmp_path / "run"
    first = run(model, prompts_file, out, limit=1)
    assert first.written == 3 * 4  # one prompt per category
    second = run(model, prompts_file, out)
    assert second.skipped == 12 and second.written == 8
    again = run(model, prompts_file, out)
    assert again.written == 0 and again.skipped == 20
    frame, tokens, info = R.load_run(out)
    assert len(frame) == 20 and not frame.duplicated(list(R.KEY_COLUMNS)).any()
    assert len((out / R.TOKENS_FILE).read_text().splitlines()) == 20
    assert len(info["sessions"]) == 3


def test_ctrl_c_leaves_valid_files_and_resume_completes(model, prompts_file, tmp_path, monkeypatch):
    from bench.methods import base

    out = tmp_path / "run"
    real = base.EngineMethod.generate
    calls = {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # warm-ups (2) + a few records
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(base.EngineMethod, "generate", flaky)
    with pytest.raises(KeyboardInterrupt):
        run(model, prompts_file, out)
    frame, _, _ = R.load_run(out)
    partial = len(frame)
    assert 0 < partial < 20
    monkeypatch.setattr(base.EngineMethod, "generate", real)
    # A torn tokens line and an orphan line (killed between the two writes) are dropped on reopen.
    with open(out / R.TOKENS_FILE, "a") as f:
        f.write(json.dumps({"question_id": "9", "turn": 1, "method": "ar", "repeat": 0, "output_ids": [1]}) + "\n")
        f.write('{"question_id": "5", "tu')
    done = run(model, prompts_file, out)
    assert done.skipped == partial and done.written == 20 - partial
    frame, tokens, _ = R.load_run(out)
    assert len(frame) == 20 and not frame.duplicated(list(R.KEY_COLUMNS)).any()
    assert len((out / R.TOKENS_FILE).read_text().splitlines()) == 20


def test_shards_merge_to_the_one_run_table(model, prompts_file, tmp_path):
    run(model, prompts_file, tmp_path / "one", turns=2, max_new_tokens=12)
    run(model, prompts_file, tmp_path / "s0", turns=2, max_new_tokens=12, shard=(0, 2))
    run(model, prompts_file, tmp_path / "s1", turns=2, max_new_tokens=12, shard=(1, 2))
    n = merge_runs(tmp_path / "merged", [tmp_path / "s1", tmp_path / "s0"])
    assert n == 5 * 2 * 4
    assert_same_table(tmp_path / "merged", tmp_path / "one")
    s0, _, _ = R.load_run(tmp_path / "s0")
    assert 0 < len(s0) < n


def test_merge_refuses_runs_of_different_settings(model, prompts_file, tmp_path):
    run(model, prompts_file, tmp_path / "a", methods=("ar",), max_new_tokens=8)
    run(model, prompts_file, tmp_path / "b", methods=("ar",), max_new_tokens=9)
    assert run_cli(__import__("bench.merge", fromlist=["main"]).main,
                   ["--out", str(tmp_path / "m"), str(tmp_path / "a"), str(tmp_path / "b")]) == 2


def test_resume_refuses_changed_settings(model, prompts_file, tmp_path):
    from common.errors import WorkbenchError

    run(model, prompts_file, tmp_path / "a", methods=("ar",), max_new_tokens=8)
    with pytest.raises(WorkbenchError, match="max_new_tokens"):
        run(model, prompts_file, tmp_path / "a", methods=("ar",), max_new_tokens=9)


# ---- turns, sampling, summary -------------------------------------------------------------------
def test_second_turn_follows_the_methods_own_first_answer(model, prompts_file, tmp_path):
    bb, _ = model
    out = tmp_path / "run"
    run(model, prompts_file, out, methods=("hf-greedy", "hf-sample"), turns=2, limit=1, max_new_tokens=10)
    _, tokens, _ = R.load_run(out)
    for method in ("hf-greedy", "hf-sample"):
        first = tokens[("1", 1, method, 0)]
        second = tokens[("1", 2, method, 0)]
        expect = bb.chat_ids([{"role": "user", "content": QUESTIONS[0]["turns"][0]},
                              {"role": "assistant", "content": first["text"]},
                              {"role": "user", "content": QUESTIONS[0]["turns"][1]}])
        assert second["prompt_ids"] == expect


def test_sampled_methods_get_quality_scores_and_summary_intervals(model, prompts_file, tmp_path):
    out = tmp_path / "run"
    run(model, prompts_file, out, methods=("hf-greedy", "ar", "medusa", "medusa-typical", "hf-sample"),
        temperature=0.8, repeats=2, max_new_tokens=16)
    frame, _, _ = R.load_run(out)
    typ = frame[frame["method"] == "medusa-typical"]
    assert typ["loglik_per_token"].notna().all() and (typ["loglik_per_token"] <= 0).all()
    assert typ["argmax_agreement"].between(0, 1).all()
    assert (typ["temperature"] == 0.8).all() and (typ["posterior_threshold"] == 0.09).all()
    samples = frame[frame["method"] == "hf-sample"].set_index(["question_id", "repeat"])["seed"]
    assert samples.loc[("1", 0)] != samples.loc[("1", 1)]
    summary, _, text = summarize_run(out, resamples=200)
    assert list(summary.columns) == ["method", "category", "metric", "value", "lo", "hi", "n"]
    for metric in ("speedup_vs_hf-greedy_mean", "speedup_vs_hf-greedy_total", "speedup_vs_ar_mean", "tokens_per_s"):
        row = summary.query(f"method == 'medusa' and category == 'all' and metric == '{metric}'")
        assert len(row) == 1 and row["lo"].item() <= row["value"].item() <= row["hi"].item()
    tau = summary.query("method == 'ar' and category == 'all' and metric == 'mean_accepted_length'")
    assert tau["value"].item() == 1.0
    for metric in ("loglik_per_token", "distinct_2", "repetition_rate", "greedy_prefix", "answer_tokens"):
        assert len(summary.query(f"method == 'hf-sample' and category == 'all' and metric == '{metric}'")) == 1
    assert set(summary["category"]) == {"writing", "math", "coding", "all"}
    assert "| medusa-typical |" in text and (out / "summary.csv").is_file()


# ---- prompts and bad input ----------------------------------------------------------------------
def test_mtbench_prompts_from_the_package():
    prompts = load_bench_prompts("mtbench", turns=2)
    assert len(prompts) == 80 and all(len(p.turns) == 2 for p in prompts)
    assert len({p.category for p in prompts}) == 8
    two = load_bench_prompts("mtbench", limit=2)
    assert len(two) == 16 and all(len(p.turns) == 1 for p in two)
    math = load_bench_prompts("mtbench", categories=["math"], limit=3)
    assert [p.category for p in math] == ["math"] * 3
    halves = shard(two, 0, 2) + shard(two, 1, 2)
    assert sorted(p.prompt_index for p in halves) == sorted(p.prompt_index for p in two)


@pytest.mark.parametrize("args, message", [
    (["--methods", "hf-greedy,nope"], "unknown method"),
    (["--categories", "poetry"], "unknown category"),
    (["--prompts", "/nonexistent/q.jsonl"], "neither a known set"),
    (["--prompts", "EMPTY"], "holds no prompts"),
    (["--prompts", "BROKEN"], "is not valid JSON"),
    (["--prompts", "FILE", "--shard", "5/6"], "holds no prompts"),
    (["--prompts", "FILE", "--turns", "1", "--tree", "a.json", "--budget", "4"], "at most one of"),
    (["--shard", "1of2"], "i/n"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, prompts_file, tmp_path, capsys):
    from bench.run import main

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question_id": 1, "turns": ["a"]\n')
    files = {"EMPTY": str(empty), "BROKEN": str(broken), "FILE": str(prompts_file)}
    args = [files.get(a, a) for a in args]
    code = run_cli(main, args + ["--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "out" / R.RECORDS_FILE).exists()


def test_heads_name_carries_the_weights_fingerprint(model, tmp_path):
    """Retrained heads in the same folder get a new identity, so a run folder refuses to mix them."""
    from bench.identity import check_identity
    from common.errors import WorkbenchError
    from medusa.heads import heads_fingerprint
    from medusa.resolve import resolve_heads

    bb, heads = model
    folder = tmp_path / "heads"
    heads.save(folder)
    before = resolve_heads(str(folder), bb).name
    assert before == f"{folder}@{heads_fingerprint(folder)}" and len(heads_fingerprint(folder)) == 16
    retrained = MedusaHeads.for_backbone(bb, HeadsConfig(num_heads=3))
    retrained.save(folder)
    after = resolve_heads(str(folder), bb).name
    assert after.startswith(f"{folder}@") and after != before
    (tmp_path / "run").mkdir()
    R.write_run_json(tmp_path / "run", {"identity": {"heads": before}, "sessions": []})
    with pytest.raises(WorkbenchError):
        check_identity(tmp_path / "run", {"heads": after})


# ---- method options, schema v1 -> v2 ------------------------------------------------------------
def test_method_options_go_to_the_identity_and_one_column(model, prompts_file, tmp_path):
    from common.errors import WorkbenchError

    out = tmp_path / "run"
    run(model, prompts_file, out, methods=("hf-greedy", "hf-pld"), limit=1, max_new_tokens=8,
        method_options={"hf-pld": {"num_tokens": "4"}})
    frame, _, info = R.load_run(out)
    pld = frame[frame["method"] == "hf-pld"]["method_options"].map(json.loads)
    assert (pld == {"max_ngram": 2, "num_tokens": 4}).all()
    assert (frame[frame["method"] == "hf-greedy"]["method_options"] == "{}").all()
    assert info["identity"]["method_options"] == {"hf-pld": {"max_ngram": 2, "num_tokens": 4}}
    assert "pld_tokens" not in R.COLUMNS and "pld_tokens" not in info["identity"]
    with pytest.raises(WorkbenchError, match="method_options"):
        run(model, prompts_file, out, methods=("hf-greedy", "hf-pld"), limit=1, max_new_tokens=8)
    # Another method joining the folder later adds its options without touching hf-pld's.
    run(model, prompts_file, out, methods=("hf-pld", "ar"), limit=1, max_new_tokens=8,
        method_options={"hf-pld": {"num_tokens": 4}})


@pytest.mark.parametrize("args, message", [
    (["--method-option", "hf-pld.nope=3"], "has no option 'nope'"),
    (["--method-option", "hf-pld.num_tokens=x"], "is not a int"),
    (["--method-option", "hf-pld.num_tokens=0"], "must be >= 1"),
    (["--method-option", "num_tokens=3"], "METHOD.OPTION=VALUE"),
    (["--methods", "ar", "--method-option", "hf-pld.num_tokens=3"], "not among --methods"),
])
def test_bad_method_options_are_one_line(args, message, prompts_file, tmp_path, capsys):
    from bench.run import main

    code = run_cli(main, args + ["--prompts", str(prompts_file), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_library_refuses_a_thread_count_it_would_have_to_set(model, prompts_file, tmp_path):
    from common.errors import WorkbenchError

    with pytest.raises(WorkbenchError, match="torch threads"):
        run(model, prompts_file, tmp_path / "run", threads=torch.get_num_threads() + 1)
    assert torch.get_num_threads() == 1


def _as_v1(folder):
    """Rewrite a v2 run folder as schema v1 wrote it (pld_tokens column and identity keys)."""
    with open(folder / R.RECORDS_FILE, newline="") as f:
        header, *rows = list(csv.reader(f))
    col = header.index("method_options")
    header[col] = "pld_tokens"
    for r in rows:
        r[col] = str(float(json.loads(r[col])["num_tokens"])) if r[col] != "{}" else ""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    (folder / R.RECORDS_FILE).write_text(buf.getvalue())
    info = json.loads((folder / R.RUN_FILE).read_text())
    options = info["identity"].pop("method_options")
    pld = options.get("hf-pld", {"num_tokens": 10, "max_ngram": 2})
    info["identity"].update(pld_tokens=pld["num_tokens"], pld_max_ngram=pld["max_ngram"])
    for s in info["sessions"]:
        s["config"].pop("method_options")
        s["config"].update(pld_tokens=pld["num_tokens"], pld_max_ngram=pld["max_ngram"])
    info["schema_version"] = 1
    (folder / R.RUN_FILE).write_text(json.dumps(info, indent=1) + "\n")


def test_v1_runs_are_read_upgraded_and_migrated_once(model, prompts_file, tmp_path):
    from bench.migrate import migrate

    root = tmp_path / "results"
    out = root / "bench" / "run"
    run(model, prompts_file, out, methods=("hf-pld", "ar"), limit=1, max_new_tokens=8,
        method_options={"hf-pld": {"max_ngram": 3}})
    v2_frame, _, v2_info = R.load_run(out)
    _as_v1(out)
    assert "pld_tokens" in (out / R.RECORDS_FILE).read_text().splitlines()[0]
    v1_frame, _, v1_info = R.load_run(out)  # upgraded on read
    pd.testing.assert_frame_equal(v1_frame, v2_frame)
    assert v1_info["identity"] == v2_info["identity"]
    assert [s["config"]["method_options"] for s in v1_info["sessions"]] == [{"hf-pld": {"max_ngram": 3, "num_tokens": 10}}]
    summarize_run(out, resamples=20)  # a v1 folder whose summary is up to date, as committed runs are
    summary_before = (out / R.SUMMARY_FILE).read_text()
    assert migrate(root) == [f"benchmark run {out}: pld_tokens -> method_options (records schema v2)"]
    assert "method_options" in (out / R.RECORDS_FILE).read_text().splitlines()[0]
    assert json.loads((out / R.RUN_FILE).read_text())["schema_version"] == R.SCHEMA_VERSION
    frame, _, info = R.load_run(out)
    pd.testing.assert_frame_equal(frame, v2_frame)
    assert info["identity"] == v2_info["identity"]
    assert (out / R.SUMMARY_FILE).read_text() == summary_before
    assert migrate(root) == []  # idempotent
    # Resuming into the migrated folder with the same options adds nothing and is accepted.
    again = run(model, prompts_file, out, methods=("hf-pld", "ar"), limit=1, max_new_tokens=8,
                method_options={"hf-pld": {"max_ngram": 3}})
    assert again.written == 0


def test_records_carry_the_one_provenance_schema():
    assert R.COLUMNS[-len(PROVENANCE_COLUMNS):] == PROVENANCE_COLUMNS


def test_record_provenance_columns_are_the_one_schema():
    """A record row repeats `common.provenance.Provenance`, field for field and in order."""
    assert R.COLUMNS[-len(PROVENANCE_COLUMNS):] == PROVENANCE_COLUMNS
