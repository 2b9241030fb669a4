"""`hf-greedy-compiled` on a tiny random Llama: token-identical to `hf-greedy`, really compiled, no state left.

COMPILES: the module's first call runs torch.compile on the CPU (4-6 s with inductor's on-disk
cache warm, 15-30 s cold, on 1 thread); the later calls reuse that graph. Run alone with
``.venv/bin/python -m pytest tests/test_hf_greedy_compiled.py -q``.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import CompileConfig

from bench import records as R
from bench.methods import MethodContext, MethodSettings, build_method, resolve_options
from bench.methods.hf_greedy_compiled import MODEL_STATE, CompiledOptions, compile_config
from bench.run import BenchConfig, run_benchmark
from common.errors import WorkbenchError
from medusa.backbone import Backbone

EOS = 95
MAX_NEW = 24
# Prompt lengths whose greedy answers (on the model below) stop at EOS (4, 13) and run to the cap
# (8, 17): four cache lengths, so a shape-specialised graph would recompile.
LENGTHS = (4, 8, 13, 17)


def _prompt(n: int) -> list[int]:
    return [(7 * i + n) % 90 + 1 for i in range(n)]


def _graphs() -> int:
    """Graphs dynamo has compiled in this process so far."""
    return int(counters["stats"]["unique_graphs"])


@pytest.fixture(scope="module")
def backbone():
    from medusa.testing import tiny_backbone

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    bb = tiny_backbone(3)
    with torch.no_grad():  # make EOS likely enough that some answers stop early
        bb.model.get_output_embeddings().weight[EOS] *= 2.0
    yield bb
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def methods(backbone):
    ctx = MethodContext(backbone, MethodSettings(0.0, float("nan"), float("nan")))
    return build_method("hf-greedy", ctx), build_method("hf-greedy-compiled", ctx)


def test_compiled_greedy_is_token_identical_and_compiles_once(backbone, methods):
    ref, compiled = methods
    before = _graphs()
    t0 = time.perf_counter()
    first = compiled.generate(_prompt(LENGTHS[0]), MAX_NEW, 0).new_ids
    print(f"\nhf-greedy-compiled first call (compile): {time.perf_counter() - t0:.1f} s")
    after_first = _graphs()
    assert after_first > before, "the first call compiled nothing: generate ran eagerly"
    assert "_compiled_call" in compiled.model_state
    outs = {LENGTHS[0]: first}
    for n in LENGTHS[1:]:
        outs[n] = compiled.generate(_prompt(n), MAX_NEW, 0).new_ids
    assert _graphs() == after_first, "a later prompt length recompiled (the graph is not shape-generic)"
    for n, out in outs.items():
        assert out == ref.generate(_prompt(n), MAX_NEW, 0).new_ids, n
    assert any(EOS in o for o in outs.values()) and any(EOS not in o for o in outs.values())


def test_model_carries_no_state_of_the_method_between_calls(backbone, methods):
    _, compiled = methods
    model = backbone.model
    assert not set(MODEL_STATE) & set(vars(model))
    # Another user of the same model has its own static-cache length on it: it is put back.
    model._previous_max_cache_length = 3
    try:
        keys = set(vars(model))
        config = model.generation_config.to_dict()
        compiled.generate(_prompt(5), 8, 0)
        assert set(vars(model)) == keys and model._previous_max_cache_length == 3
        assert model.generation_config.to_dict() == config
        assert compiled.model_state["_previous_max_cache_length"] >= 5 + 8
    finally:
        del model._previous_max_cache_length


def test_options_follow_transformers_defaults_and_refuse_unknown_modes():
    assert CompiledOptions().mode == CompileConfig().mode
    default = compile_config(CompiledOptions(), torch.device("cpu"))
    assert default.dynamic is True and default._compile_all_devices
    assert compile_config(CompiledOptions(dynamic=False), torch.device("cpu")).dynamic is None
    engine = compile_config(resolve_options("hf-greedy-compiled", {"mode": "engine"}), torch.device("cpu"))
    assert engine.mode is None and not engine.options  # the engine's options go in as a scoped config patch
    with pytest.raises(WorkbenchError, match="mode='fast' is not one of"):
        resolve_options("hf-greedy-compiled", {"mode": "fast"})
    with pytest.raises(WorkbenchError, match="is not a bool"):
        resolve_options("hf-greedy-compiled", {"dynamic": "maybe"})


def test_harness_records_it_as_a_lossless_method(backbone, tmp_path):
    from bench.summarize import IDENTICAL, summarize_run
    from tests.test_bench import QUESTIONS, char_tokenizer

    prompts = tmp_path / "questions.jsonl"
    prompts.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS[:2]))
    bb = Backbone(backbone.model, char_tokenizer(), "tiny-chars")
    out = tmp_path / "run"
    config = BenchConfig(methods=("hf-greedy", "hf-greedy-compiled"), prompts=str(prompts), out=str(out),
                         max_new_tokens=16, warmup_tokens=2, progress=False, threads=1)
    assert run_benchmark(config, backbone=bb).written == 2 * 2
    summary, mismatches, _ = summarize_run(out, resamples=0)
    share = summary.query(f"method == 'hf-greedy-compiled' and category == 'all' and metric == '{IDENTICAL}'")
    assert share["value"].item() == 1.0 and len(mismatches) == 0
    frame, _, info = R.load_run(out)
    rows = frame[frame["method"] == "hf-greedy-compiled"]
    assert rows["greedy"].all() and (rows["temperature"] == 0.0).all()
    assert set(rows["method_options"]) == {'{"dynamic":true,"mode":"reduce-overhead"}'}
    assert info["identity"]["method_options"]["hf-greedy-compiled"] == {"mode": "reduce-overhead", "dynamic": True}
