"""Replay static, dynamic and hybrid (prompt lookup + heads) tree policies on a calibration, search
the hybrid's lookup/heads split on a device profile, and check the prediction against a bench run.

The measuring side of `trees.policy_replay` (which never runs a model): it reads a calibration
made by ``bench.calibrate --fresh`` (ranks, candidates with token ids, the decoded text),
computes the prompt-lookup chain at every position with the engine's proposer
(`medusa.lookup.lookup_chain`), and replays, per node budget:

- ``static``: the heads' static tree (the empirical search on this calibration at that budget;
  ``--tree FILE`` puts a searched tree at its own budget instead);
- ``dynamic``: the per-step tree of that many nodes from the calibrated confidence map;
- ``hybrid``: the chain taking up to L nodes beside the static tree, the rest the heads', padded to
  the budget (the compiled engine's `medusa-lookup` with ``nodes`` = budget), for every L of
  ``--lookup-nodes``;
- ``hybrid-dynamic``: the same with the dynamic tree as the heads' part.

With a latency profile every row predicts tokens/s (accepted length / verify time of `budget`
nodes), and the best split per budget is printed: the hardware-aware choice of budget and split.
With ``--run`` the medusa and medusa-lookup records of a bench run are compared with the replay
of the same policy (tree, nodes, lookup share, n-gram sizes): predicted vs measured accepted length.

    python -m bench.policy_replay                       # shipped heads' calibration, CPU compiled profile
    python -m bench.policy_replay --budgets 4,8,16,64 --lookup-nodes 0,1,2,3,6,10 \\
        --latency results/latency/cpu-amd-epyc-1t-compiled.csv --tree results/trees/optuna_cpu_1t_compiled.json \\
        --run results/bench/mtbench-lookup-compiled-1t --out results/calibration/smollm2-135m-medusa1/policies.csv

Writes ``--out`` (default ``results/_scratch/calibration/<calibration name>/policies.csv``) with
columns POLICY_COLUMNS, and with ``--run`` ``policy_validation.csv`` beside it (VALIDATION_COLUMNS);
both atomically, each row with its settings and provenance.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from bench.calibrate import measure_texts
from bench.methods import resolve_options
from bench.methods.base import heads_folder
from bench.methods.medusa_dynamic import DynamicOptions, confidence_source
from bench.records import load_run, record_key
from bench.summarize import REFERENCE
from common.cli import Parser, add_threads, apply_threads, comma_list, run_cli
from common.errors import WorkbenchError
from common.io import display, one_of, read_json, write_csv
from common.paths import (
    CALIBRATION_ROOT,
    DEFAULT_HEADS_NAME,
    LATENCY_DIR,
    TREES_DIR,
    scratch_calibration_dir,
)
from common.provenance import PROVENANCE_COLUMNS, Provenance
from medusa.backbone import load_backbone
from medusa.lookup import LookupConfig, lookup_chain
from medusa.resolve import resolve_heads
from medusa.subvocab import SubVocabHeads, proposal_vocab
from trees.acceptance_model import load_ranks
from trees.confidence import CANDIDATES_FILES, load_candidates, load_confidence
from trees.cost import load_profile
from trees.dynamic import DynamicConfig
from trees.hybrid import HybridConfig
from trees.inputs import RANKS_FILES
from trees.optuna_search import monotone_verify_times
from trees.policy_replay import (
    SEQUENCE_FILES,
    PromptText,
    best_split,
    chains_for,
    dynamic_nodes,
    load_sequences,
    prompt_texts,
    split_table,
    static_nodes,
    tokens_per_step,
)
from trees.search import search
from trees.tree import Tree

POLICIES = ("static", "dynamic", "hybrid", "hybrid-dynamic")
POLICY_COLUMNS = ["policy", "budget", "lookup_nodes", "heads_tree", "tokens_per_step", "steps", "positions",
                  "lookup_share", "verify_s", "tokens_per_s", "max_ngram", "min_ngram", "calibration",
                  "heads_fingerprint", "latency", *PROVENANCE_COLUMNS]
VALIDATION_COLUMNS = ["method", "turn", "tree", "nodes", "lookup_nodes", "proposal_vocab", "measured", "predicted",
                      "error", "calibration_turn", "measured_steps", "replayed_steps", "on_run_text", "on_run_text_error",
                      "held_out_questions", "held_out_questions_error", "run", "calibration",
                      *PROVENANCE_COLUMNS]
DEFAULT_CALIBRATION = CALIBRATION_ROOT / DEFAULT_HEADS_NAME
DEFAULT_LATENCY = LATENCY_DIR / "cpu-amd-epyc-1t-compiled.csv"


def load_texts(folder: Path) -> list[PromptText]:
    """The calibration's prompts with text and candidate ids (one error line when the tables are missing)."""
    return prompt_texts(load_candidates(one_of(folder, CANDIDATES_FILES)), load_sequences(one_of(folder, SEQUENCE_FILES)))


def heads_trees(folder: Path, budgets: Sequence[int], given: Sequence[Tree]) -> dict[int, Tree]:
    """The heads' static tree per budget: a given tree at its own budget, else the empirical search's."""
    own = {t.node_budget: t for t in given}
    ranks = None
    out = {}
    for b in budgets:
        if b in own:
            out[b] = own[b]
            continue
        if ranks is None:
            ranks = load_ranks(one_of(folder, RANKS_FILES))
        out[b] = search("empirical", b, ranks=ranks).tree
    return out


def policy_rows(texts: Sequence[PromptText], chains: Sequence[Sequence[Sequence[int]]], trees: dict[int, Tree],
                lookup_nodes: Sequence[int], policies: Sequence[str], cmap: Any, verify: Any) -> pd.DataFrame:
    """Every policy at every budget (hybrids at every lookup share) as `trees.policy_replay.SPLIT_COLUMNS` rows."""
    parts = []
    positions = sum(p.positions for p in texts)

    def dynamic_heads(_tree: Tree, hybrid: HybridConfig) -> Any:
        return dynamic_nodes(cmap, DynamicConfig(budget=hybrid.budget), hybrid)

    for budget, tree in sorted(trees.items()):
        t = float(verify(budget)) if verify is not None else float("nan")
        for policy in policies:
            if policy == "hybrid":
                parts.append(split_table(texts, chains, {budget: tree}, lookup_nodes, verify).assign(policy=policy))
            elif policy == "hybrid-dynamic":
                parts.append(split_table(texts, chains, {budget: tree}, lookup_nodes, verify, heads=dynamic_heads)
                             .assign(policy=policy, heads_tree=f"dynamic_{budget}"))
            else:
                nodes = static_nodes(tree) if policy == "static" else dynamic_nodes(cmap, DynamicConfig(budget=budget))
                tau, steps, _ = tokens_per_step(texts, nodes)
                parts.append(pd.DataFrame([{
                    "policy": policy, "budget": budget, "lookup_nodes": 0,
                    "heads_tree": tree.name if policy == "static" else f"dynamic_{budget}",
                    "tokens_per_step": tau, "steps": steps, "positions": positions,
                    "lookup_share": 0.0, "verify_s": t, "tokens_per_s": tau / t}]))
    return pd.concat(parts, ignore_index=True)


# ---- predicted vs measured on a bench run --------------------------------------------------------
REPLAYED_METHODS = ("medusa", "medusa-dynamic", "medusa-lookup")


def run_policies(run: Path, records: pd.DataFrame, info: dict[str, Any]) -> list[dict[str, Any]]:
    """The engine policies of a run's `REPLAYED_METHODS` records (`load_run`'s records and run.json):
    method, tree, options and records."""
    identity = info.get("identity") or {}
    found = []
    for (method, tree, options), g in records[records["method"].isin(REPLAYED_METHODS)].groupby(
            ["method", "tree", "method_options"], sort=True):
        opts = json.loads(options) if isinstance(options, str) and options else {}
        found.append({"method": method, "tree": tree, "options": opts, "records": g, "heads": g["heads"].iloc[0],
                      "backbone": g["backbone"].iloc[0], "compile": bool(identity.get("compile", False)),
                      "run_tree": identity.get("tree")})
    if not found:
        raise WorkbenchError(f"run {display(run)} has no records of {', '.join(REPLAYED_METHODS)}")
    return found


def replayed_policy(item: dict[str, Any], cmap: Any = None) -> tuple[str, int, int, Any, LookupConfig | None]:
    """(heads' tree name, nodes per step, lookup share, step nodes, lookup config) of a run's method,
    from its recorded options read as the method reads them; dynamic heads (medusa-dynamic,
    medusa-lookup with dynamic=true) need the confidence map `cmap`."""
    method = item["method"]
    o = resolve_options(method, item["options"])
    dyn = o if isinstance(o, DynamicOptions) else o.dynamic_options() if getattr(o, "dynamic", False) else None
    if dyn is not None and cmap is None:
        raise WorkbenchError(f"{method} with a dynamic tree needs the calibration's confidence.csv")
    tree = None if dyn is not None else run_tree(item)
    name = tree.name if tree is not None else f"dynamic_{dyn.budget}"
    heads_nodes = tree.node_budget if tree is not None else dyn.budget

    def nodes_with(hybrid: HybridConfig | None) -> Any:
        if tree is not None:
            return static_nodes(tree, hybrid)
        return dynamic_nodes(cmap, DynamicConfig(dyn.budget, top_k=dyn.top_k), hybrid)

    if method != "medusa-lookup":
        return name, heads_nodes, 0, nodes_with(None), None
    nodes_n = o.nodes_per_step(heads_nodes)
    # a compiled run pads every step to `nodes` (one shape); an eager one verifies what the chain and paths give
    hybrid = HybridConfig(budget=nodes_n, lookup_nodes=o.lookup_nodes, pad=bool(item.get("compile", False)))
    return name, nodes_n, o.lookup_nodes, nodes_with(hybrid), o.lookup_config()


def run_tree(item: dict[str, Any]) -> Tree:
    """The static tree a run's method used: the run's own copy, else the tree file of that name."""
    name = str(item["tree"])
    if item["method"] == "medusa-lookup":
        name = name.split("+", 1)[-1]  # the policy's name is lookup<L>+<tree>
    own = item.get("run_tree")
    if isinstance(own, dict) and own.get("name") == name:
        return Tree.from_dict(own)
    tree_file = TREES_DIR / f"{name}.json"
    if not tree_file.is_file():
        raise WorkbenchError(f"the run used tree {name!r}, not found at {display(tree_file)}")
    return Tree.load(tree_file)


def replay(texts: Sequence[PromptText], nodes: Any, lookup: LookupConfig | None) -> tuple[float, int]:
    chains = None if lookup is None else [chains_for(p, partial(lookup_chain, config=lookup)) for p in texts]
    tau, steps, _ = tokens_per_step(texts, nodes, chains)
    return tau, steps


def run_texts(run: Path, records: pd.DataFrame, tokens: dict[Any, dict[str, Any]], item: dict[str, Any], top_r: int,
              cache: dict[Any, list[PromptText]]) -> list[PromptText]:
    """The run's reference texts (hf-greedy, repeat 0) measured with the method's heads (one forward each)."""
    vocab = int(item["options"].get("proposal_vocab", 0))
    key = (item["heads"], vocab)
    if key not in cache:
        ref = records[(records["method"] == REFERENCE) & (records["repeat"].astype(int) == 0)]
        if ref.empty:
            raise WorkbenchError(f"run {display(run)} has no {REFERENCE} records to take the text from")
        backbone = load_backbone(str(item["backbone"]))
        folder = heads_folder(str(item["heads"]))
        heads = resolve_heads(str(folder), backbone).heads
        if vocab:
            heads = SubVocabHeads(heads, proposal_vocab(folder, vocab))
        texts = []
        for row in ref.to_dict("records"):
            t = tokens[record_key(row)]
            texts.append((f"{row['question_id']}:t{row['turn']}", t["prompt_ids"], t["output_ids"]))
        m = measure_texts(backbone, heads, texts, top_r)
        cache[key] = prompt_texts(m.probs, m.tokens)
    return cache[key]


def of_turn(texts: Sequence[PromptText], turn: str) -> tuple[str, list[PromptText]]:
    """The texts of one turn ("<id>:t<turn>", `bench.calibrate --turns 2` and run texts) with the turn
    they are; "all", or a calibration without turns, gives every text."""
    mine = [p for p in texts if p.name.endswith(f":t{turn}")] if turn != "all" else []
    return (turn, mine) if mine else ("all", list(texts))


def cross_fit(own: Sequence[PromptText], records: pd.DataFrame, nodes: Any,
              lookup: LookupConfig | None) -> tuple[float, float]:
    """(predicted, error) of the worse of two folds by question: the questions alternate between two
    folds (sorted order), and each fold's measured accepted length is predicted by the replay on the
    other fold's texts (a calibration on held-out questions of the same benchmark)."""
    questions = sorted({p.name.split(":t")[0] for p in own})
    fold_of = {q: i % 2 for i, q in enumerate(questions)}
    fold = records["question_id"].astype(str).map(fold_of)
    worst = (float("nan"), 0.0)
    for f in (0, 1):
        other = [p for p in own if fold_of[p.name.split(":t")[0]] != f]
        mine = records[fold == f]
        if not other or mine.empty:
            continue
        measured = pd.to_numeric(mine["accepted_tokens"]).sum() / pd.to_numeric(mine["steps"]).sum()
        predicted = replay(other, nodes, lookup)[0]
        if abs(predicted / measured - 1) >= abs(worst[1]):
            worst = (predicted, predicted / measured - 1)
    return worst


def validate_run(run: Path, texts: Sequence[PromptText], calibration: Path, provenance: Provenance,
                 on_run_text: bool = False, top_r: int = 10, cmap: Any = None) -> pd.DataFrame:
    """Measured accepted length per method and turn of `run` beside the replay of the same policy on the
    calibration (predicted) and, with `on_run_text`, on the run's own text (exact up to float noise).
    Dynamic heads use `cmap`, default the confidence map the run's engine read."""
    rows = []
    cache: dict[Any, list[PromptText]] = {}
    records, tokens, info = load_run(run)
    for item in run_policies(run, records, info):
        o = item["options"]
        if cmap is None and (item["method"] == "medusa-dynamic" or o.get("dynamic")):
            # the map the run's engine read: its option, else its heads' calibration
            item_map = load_confidence(confidence_source(str(item["heads"]), str(o.get("confidence", "") or "")))
        else:
            item_map = cmap
        tree, nodes_n, lk, nodes, lookup = replayed_policy(item, item_map)
        own = run_texts(run, records, tokens, item, top_r, cache) if on_run_text else []
        g = item["records"]
        for turn, part in [("all", g), *((str(t), p) for t, p in g.groupby("turn"))]:
            steps = pd.to_numeric(part["steps"]).sum()
            measured = pd.to_numeric(part["accepted_tokens"]).sum() / steps
            cal_turn, cal_texts = of_turn(texts, turn)
            predicted, replayed_steps = replay(cal_texts, nodes, lookup)
            exact = replay(of_turn(own, turn)[1], nodes, lookup)[0] if own else float("nan")
            held_out, held_out_error = cross_fit(of_turn(own, turn)[1], part, nodes, lookup) if own else (float("nan"),) * 2
            rows.append({"method": item["method"], "turn": turn, "tree": tree, "nodes": nodes_n, "lookup_nodes": lk,
                         "proposal_vocab": int(item["options"].get("proposal_vocab", 0)),
                         "measured": measured, "predicted": predicted, "error": predicted / measured - 1,
                         "calibration_turn": cal_turn,
                         "measured_steps": int(steps), "replayed_steps": replayed_steps, "on_run_text": exact,
                         "on_run_text_error": exact / measured - 1, "held_out_questions": held_out,
                         "held_out_questions_error": held_out_error, "run": display(run),
                         "calibration": display(calibration), **provenance.as_dict()})
    return pd.DataFrame(rows, columns=VALIDATION_COLUMNS)


# ---- CLI -----------------------------------------------------------------------------------------
def parser() -> Parser:
    d = LookupConfig()
    p = Parser(prog="python -m bench.policy_replay", description=__doc__.split("\n")[0])
    p.add_argument("--calibration", default=str(DEFAULT_CALIBRATION),
                   help=f"calibration folder made by bench.calibrate --fresh (default {display(DEFAULT_CALIBRATION)})")
    p.add_argument("--budgets", default="4,8,16,32,64", help="node budgets (root included), comma-separated")
    p.add_argument("--lookup-nodes", default="0,1,2,3,4,6,10", help="lookup shares to try, comma-separated")
    p.add_argument("--policies", default=",".join(POLICIES), help=f"policies to replay, of {', '.join(POLICIES)}")
    p.add_argument("--max-ngram", type=int, default=d.max_ngram)
    p.add_argument("--min-ngram", type=int, default=d.min_ngram)
    p.add_argument("--tree", action="append", default=[], help="a tree file used at its own budget (repeatable)")
    p.add_argument("--latency", default=str(DEFAULT_LATENCY),
                   help=f"latency profile for predicted tokens/s (default {display(DEFAULT_LATENCY)}; 'none': accepted length only)")
    p.add_argument("--run", action="append", default=[],
                   help="bench run folder whose medusa / medusa-dynamic / medusa-lookup records to validate against (repeatable)")
    p.add_argument("--on-run-text", action="store_true",
                   help="with --run: also replay on the run's own text (loads the backbone and heads; one forward per text)")
    add_threads(p)
    p.add_argument("--out", default=None, help="policies CSV (default results/_scratch/calibration/<name>/policies.csv)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    budgets = comma_list(args.budgets, int, "--budgets")
    shares = comma_list(args.lookup_nodes, int, "--lookup-nodes")
    policies = comma_list(args.policies, str, "--policies")
    bad = [p for p in policies if p not in POLICIES]
    if bad or not policies:
        raise WorkbenchError(f"--policies takes {', '.join(POLICIES)}, got {args.policies!r}")
    if not budgets or min(budgets) < 1 or not shares or min(shares) < 0:
        raise WorkbenchError(f"--budgets must be >= 1 and --lookup-nodes >= 0, got {args.budgets!r} and {args.lookup_nodes!r}")
    lookup = LookupConfig(max_ngram=args.max_ngram, min_ngram=args.min_ngram, max_chain=max(max(shares), 1))
    folder = Path(args.calibration)
    if not folder.is_dir():
        raise WorkbenchError(f"--calibration {args.calibration!r} is not a folder (bench.calibrate --fresh writes one)")
    given = [Tree.load(t) for t in args.tree]
    out = Path(args.out) if args.out else scratch_calibration_dir(folder.name) / "policies.csv"
    verify = None
    if args.latency != "none":
        times = monotone_verify_times(load_profile(args.latency, mode="compiled" if "compiled" in args.latency else "eager"),
                                      max(budgets))
        verify = lambda n: times[n - 1]  # noqa: E731
    texts = load_texts(folder)
    cmap = load_confidence(folder) if any(p.endswith("dynamic") for p in policies) else None
    meta = read_json(folder / "calibration.json", "calibration record") if (folder / "calibration.json").is_file() else {}
    provenance = Provenance.collect("cpu")
    chains = [chains_for(p, partial(lookup_chain, config=lookup)) for p in texts]
    table = policy_rows(texts, chains, heads_trees(folder, budgets, given), shares, policies, cmap, verify)
    table = table.assign(max_ngram=lookup.max_ngram, min_ngram=lookup.min_ngram, calibration=display(folder),
                         heads_fingerprint=meta.get("heads_fingerprint", ""),
                         latency=display(Path(args.latency)) if verify is not None else "", **provenance.as_dict())
    write_csv(table[POLICY_COLUMNS], out)
    show = table[["policy", "budget", "lookup_nodes", "tokens_per_step", "lookup_share", "tokens_per_s"]]
    print(show.round(4).to_string(index=False))
    hybrid = table[table["policy"] == "hybrid"]
    if not hybrid.empty:
        best = best_split(hybrid[[c for c in hybrid.columns if c != "policy"]])
        print("\nbest lookup share per budget (hybrid, static heads):")
        print(best[["budget", "lookup_nodes", "tokens_per_step", "tokens_per_s"]].round(4).to_string(index=False))
    print(f"wrote {display(out)}")
    if args.run:
        apply_threads(args.threads)
        val = pd.concat([validate_run(Path(run), texts, folder, provenance, args.on_run_text, int(meta.get("top_r", 10)))
                         for run in args.run], ignore_index=True)
        path = write_csv(val, out.parent / "policy_validation.csv")
        print("\npredicted (replayed on the calibration) vs measured (the run's records):")
        cols = ["method", "turn", "tree", "nodes", "lookup_nodes", "measured", "predicted", "error", "calibration_turn"]
        extra = ["on_run_text", "on_run_text_error", "held_out_questions", "held_out_questions_error"] if args.on_run_text else []
        print(val[cols + extra].round(4).to_string(index=False))
        print(f"wrote {display(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
