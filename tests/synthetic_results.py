"""A tiny synthetic results/ folder in the real schemas, for the analysis and notebook tests.

Files are written through the writers' own schema code wherever it exists (`bench.records`,
`bench.summarize`, `trees.acceptance_model`, `trees.search`, `bench.latency.COLUMNS`,
`bench.validate.VALIDATION_COLUMNS`), so a schema change there shows up here. The numbers are
made up but shaped like real ones (accepted length grows with the tree, typical acceptance trades
quality for length as eps falls).

    python -m tests.synthetic_results /tmp/results      # build one by hand
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bench import records as R
from bench.summarize import summarize_run
from bench.validate import VALIDATION_COLUMNS
from common.paths import REFERENCE_RUN
from trees.acceptance_model import expected_tokens, marginals_from_ranks, path_stats_from_ranks
from trees.confidence import fit_confidence
from trees.optuna_search import PARETO_COLUMNS
from trees.search import search_tree
from trees.tree import Tree, preset

DEVICE = "Synthetic CPU"
BACKBONE = "smollm2-135m"
HEADS = "results/heads/smollm2-135m-medusa1"
CATEGORIES = ("writing", "math", "coding")
PER_CATEGORY = 3
K, TOP_R = 4, 6


def rank_table(rng: np.random.Generator, prompts: int = 6, positions: int = 40) -> pd.DataFrame:
    """Ranks table (prompt, position, head, rank0) with accuracy falling by head and correlated errors."""
    rows = []
    for p in range(prompts):
        for t in range(positions):
            hard = rng.random() < 0.3
            for k in range(1, K + 1):
                p_top = max(0.05, 0.75 - 0.15 * k - (0.3 if hard else 0.0))
                r = 0 if rng.random() < p_top else int(rng.integers(1, TOP_R + 3))
                rows.append((f"p{p}", t, k, r if r < TOP_R else -1))
    return pd.DataFrame(rows, columns=["prompt", "position", "head", "rank0"])


def _record(run_tree: Tree | None, method: str, qid: str, category: str, index: int, *, tau: float, speed: float,
            temperature: float, eps: float, loglik: float, rng: np.random.Generator, max_new_tokens: int = 32) -> dict:
    engine = method in ("medusa", "medusa-typical", "medusa-sample", "ar")
    tree = None if method.startswith("hf-") else ("root" if method == "ar" else run_tree.name)
    budget = None if tree is None else (1.0 if method == "ar" else float(run_tree.node_budget))
    new = 32
    wall = new / (10.0 * speed * float(rng.uniform(0.9, 1.1)))
    steps = math.ceil(new / tau) if engine else None
    return {
        "source": "mtbench", "prompt_index": index, "question_id": qid, "category": category, "turn": 1,
        "method": method, "repeat": 0, "greedy": method in ("medusa", "ar", "hf-greedy", "hf-pld"),
        "backbone": BACKBONE, "heads": HEADS if method.startswith("medusa") else "", "tree": tree or "",
        # as in bench.run: greedy methods' records carry temperature 0 (quality is still scored at T)
        "node_budget": budget, "temperature": 0.0 if method in ("medusa", "ar", "hf-greedy", "hf-pld") else temperature,
        "posterior_threshold": eps if method == "medusa-typical" else None,
        "posterior_alpha": 0.3 if method == "medusa-typical" else None,
        "method_options": '{"max_ngram":2,"num_tokens":10}' if method == "hf-pld" else "{}",
        "max_new_tokens": max_new_tokens, "seed": 0,
        "prompt_tokens": 40, "new_tokens": new, "wall_s": wall, "tokens_per_s": new / wall, "stop_reason": "length",
        "steps": steps, "accepted_tokens": float(new) if engine else None,
        "mean_accepted_length": new / steps if engine else None,
        "prefill_s": 0.01 if engine else None, "heads_s": 0.001 if engine else None,
        "verify_s": 0.8 * wall if engine else None, "bookkeeping_s": 0.01 if engine else None,
        "loglik_per_token": loglik + float(rng.normal(0, 0.05)), "argmax_agreement": min(1.0, 1.0 + loglik / 3),
        "commit": "abc123", "date": "2026-01-01T00:00:00+00:00", "device_name": DEVICE, "torch_version": "2.13.0",
        "transformers_version": "5.24.0", "threads": 2, "dtype": "float32",
    }


def bench_run(root: Path, name: str, methods: dict[str, dict], tree: Tree | None, temperature: float, seed: int,
              summarize: bool = True, max_new_tokens: int = 32, shards: int = 0) -> Path:
    """One run folder; `methods` maps method -> dict(tau, speed, eps, loglik). With `shards`, run.json
    records that many sessions (``--shard i/n``), as a run split into concurrent processes does."""
    rng = np.random.default_rng(seed)
    out = root / "bench" / name
    rows, tokens = [], {}
    index = 0
    for category in CATEGORIES:
        for _ in range(PER_CATEGORY):
            qid = str(100 + index)
            greedy_ids = rng.integers(0, 1000, 32).tolist()
            for method, m in methods.items():
                row = _record(tree, method, qid, category, index, tau=m.get("tau", 1.0), speed=m["speed"],
                              temperature=temperature, eps=m.get("eps", 0.0), loglik=m.get("loglik", -1.0), rng=rng,
                              max_new_tokens=max_new_tokens)
                sampled = method in ("medusa-typical", "medusa-sample", "hf-sample")
                ids = rng.integers(0, 1000, 32).tolist() if sampled else greedy_ids
                rows.append(row)
                tokens[R.record_key(row)] = {"question_id": qid, "turn": 1, "method": method, "repeat": 0,
                                             "prompt_ids": list(range(40)), "output_ids": ids, "text": "x",
                                             "accepted_lengths": [], "heads_s": [], "verify_s": [], "bookkeeping_s": []}
            index += 1
    store = R.RecordStore(out)
    store.replace_all(rows, tokens)
    R.write_run_json(out, {"identity": {"prompts": "mtbench", "backbone": BACKBONE, "heads": HEADS,
                                        "tree": tree.to_dict() if tree is not None else None,
                                        "temperature": temperature, "device": "cpu", "dtype": "float32", "threads": 2},
                           "sessions": [{"methods": list(methods), "shard": f"{i}/{shards}"} for i in range(shards)]})
    if summarize:
        summarize_run(out, resamples=50)
    return out


def build(root: str | Path, seed: int = 0) -> Path:
    """Write the whole synthetic results folder under `root`; returns it."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    # calibration, trees, validation
    ranks = rank_table(rng)
    marg = marginals_from_ranks(ranks, TOP_R)
    stats = path_stats_from_ranks(ranks, TOP_R)
    cal = root / "calibration" / "smollm2-135m-medusa1"
    cal.mkdir(parents=True, exist_ok=True)
    marg.to_frame().to_csv(cal / "accuracy.csv", index=False)
    stats.to_frame().to_csv(cal / "paths.csv", index=False)
    ranks.to_csv(cal / "ranks.csv", index=False)
    (cal / "calibration.json").write_text(json.dumps({
        "backbone": BACKBONE, "heads": HEADS, "device": "cpu", "dtype": "float32", "prompts": 6,
        "prompts_done": 6, "positions": 240, "top_r": TOP_R, "complete": True}, indent=1))
    # confidence map from planted candidates: a candidate of probability p is the true token with chance p**0.8
    cand = pd.DataFrame({"head": np.repeat(np.arange(1, K + 1), 400), "prob": rng.uniform(0, 1, 400 * K)})
    cand["hit"] = rng.uniform(0, 1, len(cand)) < cand["prob"] ** 0.8
    fit_confidence(cand).save(cal / "confidence.csv")
    # the candidates table behind it (bench.calibrate --fresh): 3 prompts x 20 positions, probabilities by rank
    rows = []
    for prompt in ("p0", "p1", "p2"):
        for position in range(20):
            for head in range(1, K + 1):
                p = np.sort(rng.dirichlet(np.ones(TOP_R + 2) / head))[::-1][:TOP_R]
                hit = int(rng.integers(-1, TOP_R))
                rows += [{"prompt": prompt, "position": position, "head": head, "rank0": r, "prob": p[r],
                          "hit": r == hit, "token": 100 * head + r} for r in range(TOP_R)]
    pd.DataFrame(rows).to_csv(cal / "probs.csv", index=False)
    # per-step policies against budget (bench.policy_replay) and one run's measured points
    pd.DataFrame([{"policy": pol, "budget": b, "lookup_nodes": lk, "tokens_per_step": 1.3 + 0.1 * i + 0.05 * lk + 0.1 * (b > 4),
                   "tokens_per_s": (1.3 + 0.1 * i + 0.05 * lk) / (0.02 + 0.001 * b), "latency": "latency/cpu.csv"}
                  for i, pol in enumerate(("static", "dynamic", "hybrid")) for b in (4, 8, 16)
                  for lk in ((0,) if pol != "hybrid" else (0, 1, 3))]).to_csv(cal / "policies.csv", index=False)
    pd.DataFrame([{"method": m, "turn": t, "nodes": 4, "measured": 1.4 + 0.3 * (m != "medusa") + 0.1 * (t == "2")}
                  for m in ("medusa", "medusa-lookup") for t in ("all", "1", "2")]
                 ).to_csv(cal / "policy_validation.csv", index=False)
    # the heads recipe study (bench.heads_study): two runs
    pd.DataFrame([{"run": run, "data": data, "loss": "hard", "on_path": on, "train_rows": 1000 * (i + 1),
                   "steps": 300, "eval_data": "data/distill/eval",
                   **{f"top1_h{k}": (0.3 + 0.1 * i) / k for k in range(1, K + 1)},
                   **{f"tau_{b}": 1.2 + 0.1 * i + 0.05 * j for j, b in enumerate((5, 16, 64))}}
                  for i, (run, data, on) in enumerate((("a", "teacher", False), ("b", "teacher", True)))]
                 ).to_csv(root / "heads_study.csv", index=False)
    # a throughput run (bench.throughput): three methods at batch sizes 1, 2, 4, two prompts
    rows = []
    for method, tau, speed in (("hf-greedy", float("nan"), 1.0), ("ar", 1.0, 0.9), ("medusa", 1.5, 1.2)):
        for b in (1, 2, 4):
            for q in ("q0", "q1"):
                rows.append({"method": method, "batch_size": b, "question_id": q, "category": "writing",
                             "prompt_tokens": 20, "new_tokens": 32, "latency_s": 2.0 / b, "queued_s": 0.0,
                             "steps": 32 / tau if tau == tau else float("nan"),
                             "accepted_tokens": 32 if tau == tau else float("nan"), "output_sha": f"sha-{q}",
                             "call_wall_s": 64 / (10 * speed * b ** (0.7 if method == "medusa" else 0.9)),
                             "load_start": 0.5, "load_end": 0.6, "backbone": BACKBONE,
                             "heads": HEADS if method == "medusa" else "", "tree": "mc_sim_7b_63" if method == "medusa" else "",
                             "node_budget": 64 if method == "medusa" else float("nan"), "max_new_tokens": 32,
                             "commit": "abc123", "date": "2026-11-28", "device_name": DEVICE, "torch_version": "2",
                             "transformers_version": "5", "threads": 2, "dtype": "float32"})
    (root / "throughput" / "cpu-synthetic").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "throughput" / "cpu-synthetic" / "requests.csv", index=False)
    trees = {b: search_tree("empirical", b, marg, stats).tree for b in (8, 16, 32, 64)}
    optuna = Tree.from_paths(trees[16].paths, name="optuna_64", meta={"method": "optuna", "predicted_tokens_per_s": 30.0})
    for t in trees.values():
        t.save(root / "trees" / f"{t.name}.json")
    Tree.from_paths(trees[32].paths, name="default", meta=dict(trees[32].meta)).save(root / "trees" / "default.json")
    front = [{"trial": b, "node_budget": b, "depth": t.depth, "tokens_per_step": t.meta["predicted_empirical"],
              "verify_s": 0.03 + 0.0004 * b, "medusa_choices": json.dumps(t.medusa_choices())} for b, t in trees.items()]
    for row in front:
        row["tokens_per_s"] = row["tokens_per_step"] / row["verify_s"]
        row["chosen"] = row["tokens_per_s"] == max(r["tokens_per_step"] / r["verify_s"] for r in front)
    pd.DataFrame(front, columns=PARETO_COLUMNS).assign(latency="cpu-synthetic-2t", commit="abc123").to_csv(
        root / "trees" / "optuna_64_pareto.csv", index=False)

    val = []
    for kind, t in (("empirical", trees[64]), ("preset", preset("mc_sim_7b_63")), ("dense", Tree.from_paths(
            [(a,) for a in range(3)] + [(a, b) for a in range(3) for b in range(2)], name="dense_3x2")),
                    ("chain", Tree.from_paths([(0,) * d for d in range(1, K + 1)], name="chain_4"))):
        pi, pe = expected_tokens(t, marg), expected_tokens(t, stats)
        meas = pe * float(rng.uniform(0.93, 1.02))
        val.append({"tree": t.name, "kind": kind, "node_budget": t.node_budget, "depth": t.depth,
                    "nodes_per_depth": "-".join(map(str, t.nodes_per_depth())), "predicted_independence": pi,
                    "predicted_empirical": pe, "measured_accepted_length": meas, "error_independence": (pi - meas) / meas,
                    "error_empirical": (pe - meas) / meas, "steps": 300, "new_tokens": 600, "prompts": 10,
                    "max_new_tokens": 96, "tokens_per_s": 12.0 * meas, "verify_ms_per_step": 80.0})
    pd.DataFrame(val, columns=VALIDATION_COLUMNS).to_csv(cal / "validation.csv", index=False)

    # latency profile
    from bench.latency import COLUMNS as LAT

    lat = []
    for ctx in (128, 512):
        for n in (1, 2, 4, 8, 16, 32, 64):
            med = 0.03 + 0.0004 * n * (1 + ctx / 1024)
            lat.append({"device_slug": "cpu-synthetic-2t", "device": DEVICE, "backbone": BACKBONE, "dtype": "float32",
                        "threads": 2, "context": ctx, "n_query": n, "median_s": med, "p10_s": 0.95 * med, "p90_s": 1.1 * med,
                        "decoder_s": 0.9 * med, "lm_head_s": 0.1 * med, "repeats": 5, "weight_bytes": 538_000_000,
                        "mem_bandwidth_gbs": 20.0, "matmul_gflops": 200.0, "floor_s": 538_000_000 / 20e9,
                        "commit": "abc123", "date": "2026-01-01", "torch": "2.13.0", "transformers": "5.24.0"})
    (root / "latency").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(lat, columns=LAT).to_csv(root / "latency" / "cpu-synthetic-2t.csv", index=False)

    # head training (medusa.train: loss.csv, accuracy_history.csv, accuracy.csv, records)
    heads = root / "heads" / "smollm2-135m-medusa1"
    heads.mkdir(parents=True, exist_ok=True)
    steps = np.arange(1, 201)
    log = {"step": steps, "loss": 0.0, "lr": 1e-3 * np.minimum(1, steps / 20)}
    for k in range(1, K + 1):
        log[f"loss_head{k}"] = 3 + k * 0.4 + 4 * np.exp(-steps / 60) + rng.normal(0, 0.1, len(steps))
    log["loss"] = sum(0.8**k * log[f"loss_head{k}"] for k in range(1, K + 1))
    pd.DataFrame(log).to_csv(heads / "loss.csv", index=False)
    hist = [(st, k, i + 1, min(1.0, (0.6 - 0.1 * k + 0.05 * i) * (1 - np.exp(-st / 50))), 500)
            for st in (50, 100, 150, 200) for k in range(1, K + 1) for i in range(TOP_R)]
    hist = pd.DataFrame(hist, columns=["step", "head", "topk", "accuracy", "count"])
    hist.to_csv(heads / "accuracy_history.csv", index=False)
    hist[hist["step"] == 200].drop(columns="step").to_csv(heads / "accuracy.csv", index=False)
    (heads / "config.json").write_text(json.dumps({"num_heads": K, "backbone": {"name": BACKBONE}}))
    (heads / "training_record.json").write_text(json.dumps({
        "stage": 1, "config": {"backbone": BACKBONE, "device": "cpu", "proj_dtype": "bfloat16", "steps": 200},
        "device": "cpu", "torch_threads": 2, "git_commit": "abc123"}))

    # benchmark runs: the main comparison, a budget sweep, an eps sweep
    tau = {b: expected_tokens(t, stats) for b, t in trees.items()}
    bench_run(root, REFERENCE_RUN, {"hf-greedy": {"speed": 1.0}, "ar": {"speed": 0.95}, "hf-pld": {"speed": 1.3},
                                "medusa": {"tau": tau[32], "speed": 1.6}}, trees[32], 0.7, seed + 1)
    for b, t in trees.items():
        bench_run(root, f"budget-{b}", {"medusa": {"tau": tau[b], "speed": 1.0 + 0.02 * b - 0.0003 * b * b}}, t, 0.7, seed + b,
                  summarize=b != 8)
    bench_run(root, "budget-optuna", {"medusa": {"tau": tau[16], "speed": 1.4}}, optuna, 0.7, seed + 7)
    for name, t, speed in (("chain-4", Tree.from_paths([(0,) * d for d in range(1, K + 1)], name="chain_4"), 1.2),
                           ("dense-3x2", Tree.from_paths([(a,) for a in range(3)] + [(a, b) for a in range(3) for b in range(2)],
                                                         name="dense_3x2"), 1.1)):
        bench_run(root, name, {"medusa": {"tau": expected_tokens(t, stats), "speed": speed}, "ar": {"speed": 0.95}}, t, 0.7, seed + 50)
    for i, eps in enumerate((0.03, 0.09, 0.2, 0.3)):
        bench_run(root, f"typical-{eps}", {"medusa-typical": {"tau": 3.2 - 4 * eps, "speed": 2.0 - 2 * eps, "eps": eps,
                                                              "loglik": -1.6 + 1.5 * eps}}, trees[32], 0.7, seed + 100 + i)
    bench_run(root, "typical-refs", {"medusa": {"tau": tau[32], "speed": 1.6, "loglik": -0.9},
                                     "hf-greedy": {"speed": 1.0, "loglik": -0.9},
                                     "hf-sample": {"speed": 1.0, "loglik": -1.7}}, trees[32], 0.7, seed + 200)
    return root


if __name__ == "__main__":
    print(build(sys.argv[1] if len(sys.argv) > 1 else "synthetic-results"))
