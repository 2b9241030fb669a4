"""One-shot accelerator check: correctness first, then latency profiles, then ar vs medusa speed.

Written for a lent H100/H200 with no network that sees only the working tree (<= 64 MiB) and an
optional model folder; finishes within ~8 minutes and writes everything under `--out`:

1. correctness  (tiny random Llama on the device, fp32): tree-verify logits equal sequential
   forwards of each node's path; Medusa greedy output equals `generate(do_sample=False)`.
2. latency      bf16 verify-forward profiles (bench.latency) for the SmolLM2 shape (real weights
   when a model folder or GGUF is present, otherwise random weights, and it says so) and for a
   7B-shaped Llama with random weights -> out/latency/<device>.csv (+ a copy per shape); then the
   SmolLM2 shape compiled as the engine compiles it (CUDA graphs) at a few sizes ->
   out/latency/<device>-compiled.csv.
3. speed        hf-greedy vs ar vs medusa, eager and compiled (`ar-compiled`, `medusa-compiled`:
   verify and heads under CUDA graphs), on a few MT-Bench prompts with the shipped heads and the
   default tree (real SmolLM2 only; random weights accept nothing worth timing).

    python -m bench.gpu_check --out /tmp/gpu [--model-dir DIR] [--smoke]

`--smoke` runs every phase at toy sizes on whatever device is present (the CPU test uses it).
`bench/gpu_check.sh` wraps this with the GGUF re-assembly described in its header.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.latency import LatencyConfig, profile_backbone, write_profile
from bench.methods.base import hf_generate
from bench.prompts import load_bench_prompts
from bench.records import count_new_tokens
from common.cli import Parser, add_threads, apply_threads, comma_list, run_cli
from common.errors import WorkbenchError
from common.io import write_json
from common.provenance import Provenance, device_slug
from medusa.backbone import Backbone, load_backbone
from medusa.compiled import CompiledProposer
from medusa.decode import DecodeConfig, cache_kwarg, generate
from medusa.kv_cache import StaticKV
from medusa.resolve import resolve_heads
from medusa.testing import OracleProposer, RandomProposer, greedy_reference, tiny_backbone
from medusa.tree_attention import causal_mask, tree_buffers, tree_candidates, verify_attention_mask
from trees.cost import profile_name
from trees.tree import Tree, chain, default_tree, preset

PHASES = ("correctness", "latency", "speed")
SMOLLM2_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                     tie_word_embeddings=True, rope_theta=100000.0)
LLAMA7B_SHAPE = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                     tie_word_embeddings=False)


def random_backbone(name: str, shape: dict, device: str, dtype: torch.dtype) -> Backbone:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape)
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    model.requires_grad_(False)
    return Backbone(model=model, tokenizer=None, name=name)


def correctness(device: str) -> dict:
    bb = tiny_backbone(0)
    bb.model.to(device)
    prompt = [1, 5, 7, 9, 11, 3, 17, 2]
    ref = greedy_reference(bb, prompt, 48)
    results = {}
    for tree in (chain(4), preset("mc_sim_7b_63")):
        for name, prop in (("oracle", OracleProposer(prompt + ref, 4, 96)), ("random", RandomProposer(4, 96))):
            out = generate(bb, prop, tree, prompt, DecodeConfig(max_new_tokens=48, stop_on_eos=False))
            results[f"lossless_{tree.name}_{name}"] = out.output_ids == ref
    results["tree_logits_max_abs_err"] = tree_logits_error(bb)
    results["ok"] = all(v for k, v in results.items() if k.startswith("lossless")) and results["tree_logits_max_abs_err"] < 1e-4
    return results


@torch.inference_mode()
def tree_logits_error(bb: Backbone) -> float:
    device, model = bb.device, bb.model
    decoder, arg = model.base_model, cache_kwarg(model.base_model)
    prompt = [1, 5, 7, 9, 11, 3]
    buf = tree_buffers(preset("mc_sim_7b_63"), device)
    head_topk = torch.randint(0, 96, (4, 10), generator=torch.Generator().manual_seed(0)).to(device)
    cand = tree_candidates(buf, 42, head_topk)
    cache = StaticKV(model.config.num_hidden_layers, len(prompt) + buf.num_nodes)
    decoder(input_ids=torch.tensor([prompt], device=device), position_ids=torch.arange(len(prompt), device=device)[None],
            attention_mask=causal_mask(len(prompt), len(prompt), torch.float32, device), **{arg: cache.hf_cache})
    cache.advance(len(prompt))
    h = decoder(input_ids=cand[None], position_ids=(len(prompt) + buf.depth)[None],
                attention_mask=verify_attention_mask(buf, len(prompt), torch.float32), **{arg: cache.hf_cache})
    logits = model.get_output_embeddings()(h.last_hidden_state[0])
    worst = 0.0
    for node in range(buf.num_nodes):
        path, j = [], node
        while j >= 0:
            path.append(int(cand[j]))
            j = int(buf.parent[j])
        ref = model(torch.tensor([prompt + path[::-1]], device=device)).logits[0, -1]
        worst = max(worst, float((logits[node] - ref).abs().max()))
    return worst


# Used when the MT-Bench package is not installed (a lent GPU machine has no network to fetch it).
FALLBACK_PROMPTS = (
    "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences.",
    "Explain the difference between a process and a thread to a new programmer.",
    "Write a short story about a robot who learns to paint, in under 200 words.",
    "What are the main causes of inflation, and how do central banks respond to it?",
    "Give step-by-step instructions for making a cup of pour-over coffee.",
    "Summarize the plot of Romeo and Juliet in five sentences.",
    "Write a Python function that checks whether a string is a palindrome, and explain it.",
    "Describe three ways to reduce the energy use of a home.",
)


def speed_prompts(n_prompts: int) -> tuple[str, list[str]]:
    """(source, first turns): MT-Bench when its package is installed, else the fallback prompts."""
    try:
        return "mtbench", [p.turns[0] for p in load_bench_prompts("mtbench", limit=1)[:n_prompts]]
    except WorkbenchError:
        return "fallback", list(FALLBACK_PROMPTS[:n_prompts])


def speed(bb: Backbone, tree: Tree, n_prompts: int, max_new_tokens: int, compiled: bool = True) -> dict:
    """hf-greedy vs ar vs medusa (shipped heads, `tree`), eager and compiled, tokens/s on a few first turns."""
    heads = resolve_heads(None, bb).heads
    source, prompts = speed_prompts(n_prompts)
    rows = []
    # One untimed full-length decode per method first: on a GPU the first long decode pays for
    # kernel selection at every new length (2-3x slower in the first H200 runs; LOG.md).
    warm = bb.chat_ids(prompts[0])
    hf_generate(bb, warm, max_new_tokens, do_sample=False)
    for i, text in enumerate(prompts):
        ids = bb.chat_ids(text)
        _sync_device(bb)
        t0 = time.perf_counter()
        new = count_new_tokens(hf_generate(bb, ids, max_new_tokens, do_sample=False), bb.eos_token_ids, max_new_tokens)
        _sync_device(bb)
        rows.append({"method": "hf-greedy", "tree": "", "prompt": i, "new_tokens": len(new),
                     "wall_s": time.perf_counter() - t0, "mean_accepted_length": 1.0})
    # compiled: one cache bucket for every prompt (1024 slots), so no timed prompt compiles
    engine = [("ar", preset("root"), False), ("medusa", tree, False)]
    if compiled:
        engine += [("ar-compiled", preset("root"), True), ("medusa-compiled", tree, True)]
    for method, t, compile_ in engine:
        cfg = DecodeConfig(max_new_tokens=max_new_tokens, compile=compile_, compile_bucket=1024)
        proposer = CompiledProposer(heads, bb.device) if compile_ else heads
        generate(bb, proposer, t, warm, cfg)
        for i, text in enumerate(prompts):
            out = generate(bb, proposer, t, bb.chat_ids(text), cfg)
            rows.append({"method": method, "tree": t.name, "node_budget": t.node_budget,
                         "prompt": i, "new_tokens": out.new_tokens, "wall_s": out.wall_s,
                         "mean_accepted_length": out.mean_accepted_length, "output_ids": out.output_ids})
    reference = {r["prompt"]: r["output_ids"] for r in rows if r["method"] == "ar"}
    for r in rows:  # lossless check: every engine method's output equals plain decoding's
        if "output_ids" in r:
            r["identical_to_ar"] = r.pop("output_ids") == reference[r["prompt"]]
    per_method = {}
    for m in sorted({r["method"] for r in rows}, key=[r["method"] for r in rows].index):
        sel = [r for r in rows if r["method"] == m]
        per_method[m] = {"tokens_per_s": sum(r["new_tokens"] for r in sel) / sum(r["wall_s"] for r in sel),
                         "mean_accepted_length": sum(r["mean_accepted_length"] for r in sel) / len(sel),
                         "identical_to_ar": all(r.get("identical_to_ar", True) for r in sel)}
    return {"prompts": source, "max_new_tokens": max_new_tokens, "summary": per_method, "rows": rows}


def _sync_device(bb: Backbone) -> None:
    if bb.device.type == "cuda":
        torch.cuda.synchronize(bb.device)


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m bench.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--model-dir", default=None, help="folder holding SmolLM2 as a HF folder (config.json)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--smoke", action="store_true", help="toy sizes (CPU test of the script itself)")
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma list of {', '.join(PHASES)} (default all)")
    p.add_argument("--tree", default=None, help="tree JSON for the speed phase (default: the shipped default tree)")
    p.add_argument("--speed-prompts", type=int, default=8, help="prompts in the speed phase (default 8)")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled profile and the compiled methods")
    add_threads(p)
    args = p.parse_args(argv)
    apply_threads(args.threads)
    phases = comma_list(args.phases, flag="--phases")
    if unknown := sorted(set(phases) - set(PHASES)):
        raise WorkbenchError(f"--phases: unknown {unknown} (choose from {', '.join(PHASES)})")
    tree = Tree.load(args.tree) if args.tree else default_tree()
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkbenchError(f"cannot create output folder {out}: {e.strerror}") from None
    report: dict = {"provenance": Provenance.collect(args.device).as_dict(), "smoke": args.smoke, "phases": {}}

    def phase(name, fn):
        t = time.perf_counter()
        try:
            report["phases"][name] = {"result": fn(), "seconds": round(time.perf_counter() - t, 2)}
        except Exception as e:  # a failing phase is recorded; later phases still run
            report["phases"][name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=3)}
        write_json(report, out / "report.json", indent=1)
        print(f"[{name}] {json.dumps(report['phases'][name], default=str)[:400]}", flush=True)

    if "correctness" in phases:
        phase("correctness", lambda: correctness(args.device))

    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    lat = LatencyConfig(contexts=(32,), n_queries=(1, 4), repeats=2, warmup=1) if args.smoke else LatencyConfig(repeats=5)
    real = None
    if args.model_dir and (Path(args.model_dir) / "config.json").is_file():
        real = load_backbone(args.model_dir, dtype=dtype, device=args.device)
        real.name = "smollm2-135m"
    report["smollm2_weights"] = "real" if real is not None else "random (no model folder given or found)"
    print(f"SmolLM2 weights: {report['smollm2_weights']}", flush=True)
    small_shape = dict(SMOLLM2_SHAPE, num_hidden_layers=2) if args.smoke else SMOLLM2_SHAPE
    big_shape = dict(LLAMA7B_SHAPE, num_hidden_layers=2, hidden_size=256, intermediate_size=512,
                     num_attention_heads=4, num_key_value_heads=4) if args.smoke else LLAMA7B_SHAPE
    lat_path = out / "latency" / f"{device_slug(args.device)}.csv"

    def profile(bb: Backbone) -> dict:
        df = profile_backbone(bb, lat, progress=False)
        write_profile(df, lat_path)
        return {"rows": len(df), "median_ms_by_n_at_ctx": {
            int(r.n_query): round(r.median_s * 1e3, 3) for r in df[df.context == df.context.max()].itertuples()}}

    def profile_compiled(bb: Backbone) -> dict:
        cfg = (LatencyConfig(contexts=(32,), n_queries=(1, 4), repeats=2, warmup=1, mode="compiled", bucket=64)
               if args.smoke else LatencyConfig(contexts=(384,), n_queries=(1, 4, 16, 64), repeats=5, mode="compiled"))
        df = profile_backbone(bb, cfg, progress=False)
        write_profile(df, out / "latency" / profile_name(args.device, "compiled"))
        return {"rows": len(df), "median_ms_by_n": {int(r.n_query): round(r.median_s * 1e3, 3) for r in df.itertuples()},
                "compile_s_by_n": {int(r.n_query): round(r.compile_s, 1) for r in df.itertuples()}}

    if "latency" in phases:
        small = real or random_backbone("smollm2-135m-random", small_shape, args.device, dtype)
        phase("latency_smollm2", lambda: profile(small))
        phase("latency_llama7b", lambda: profile(random_backbone("llama-7b-shape-random", big_shape, args.device, dtype)))
        if not args.no_compile:
            phase("latency_smollm2_compiled", lambda: profile_compiled(small))
    if "speed" not in phases:
        pass
    elif real is not None:
        phase("speed_ar_vs_medusa", lambda: speed(real, tree, 2 if args.smoke else args.speed_prompts,
                                                  32 if args.smoke else 256, compiled=not args.no_compile))
    else:
        report["phases"]["speed_ar_vs_medusa"] = {"skipped": "needs the real SmolLM2 weights"}
    write_json(report, out / "report.json", indent=1)
    failed = [k for k, v in report["phases"].items() if "error" in v]
    print(f"wrote {out}/report.json; failed phases: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
