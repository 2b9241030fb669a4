"""Safe defaults: plain commands write to results/_scratch/, never over committed results.

- the busy-machine warning (`common.cli.busy_message`), tested without the real load average;
- the scratch locations and the committed-else-scratch rule for default inputs;
- the analysis picks its reference run by name (`common.paths.REFERENCE_RUN`), never the biggest
  run or whatever sits in results/bench/mtbench;
- resuming an Optuna study says so;
- every README "Everyday use" command, run with tiny limits in a fresh copy of the repository,
  leaves `git status --porcelain` clean (slow: the real model).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import common.paths as paths
from common.cli import busy_message, run_cli, warn_if_busy
from common.errors import MissingResult

REPO = paths.REPO_ROOT


# ---- the busy-machine warning -------------------------------------------------------------------
@pytest.mark.parametrize("load, cpus, threads, busy", [
    (0.2, 2, 2, False),   # idle machine, all cores
    (0.6, 2, 1, False),   # a little background, one thread of two
    (0.9, 2, 2, True),    # a neighbour takes most of a core we want
    (1.3, 2, 1, False),   # one neighbour, one free core for our one thread
    (1.8, 2, 1, True),    # two neighbours
    (3.0, 4, 1, False),
    (0.0, 2, 8, False),   # more threads than cores is our own oversubscription, not neighbours
    (5.0, None, 1, False),  # unknown core count: say nothing
])
def test_busy_message_compares_load_with_free_cores(load, cpus, threads, busy):
    message = busy_message(load, cpus, threads)
    assert (message is not None) == busy
    if message:
        assert message.startswith("warning: ") and "\n" not in message
        assert f"{load:.2f}" in message and f"{cpus} cores" in message


def test_busy_message_suggests_one_thread_only_when_using_more():
    assert "--threads 1" in busy_message(2.0, 2, 2)
    assert "--threads 1" not in busy_message(2.0, 2, 1)


def test_warn_if_busy_prints_one_line(capsys):
    assert warn_if_busy(loadavg=9.0, threads=1) is not None
    assert warn_if_busy(loadavg=0.0, threads=1) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: load average 9.00")


# ---- where plain commands write -----------------------------------------------------------------
def test_scratch_defaults_live_under_the_ignored_scratch_folder():
    for p in (paths.SCRATCH_TREES, paths.SCRATCH_LATENCY, paths.SCRATCH_BENCH, paths.SCRATCH_CALIBRATION,
              paths.SCRATCH_FIGURES, paths.OPTUNA_DB, paths.scratch_calibration_dir("x")):
        assert p.is_relative_to(paths.SCRATCH)
    assert paths.SCRATCH.relative_to(REPO).as_posix() + "/" in (REPO / ".gitignore").read_text().splitlines()


def test_command_defaults_point_into_scratch():
    from bench.config import BenchConfig

    assert BenchConfig(prompts="mtbench").out_dir == paths.SCRATCH_BENCH / "mtbench"
    assert BenchConfig(prompts="mtbench", out="elsewhere").out_dir == Path("elsewhere")
    help_text = {
        "trees.search": "results/_scratch/trees", "bench.latency": "results/_scratch/latency",
        "bench.calibrate": "results/_scratch/calibration", "bench.validate": "results/_scratch/calibration",
        "analysis.figures": "results/_scratch/figures",
    }
    for module, where in help_text.items():
        out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=REPO)
        assert out.returncode == 0 and where in " ".join(out.stdout.split()), (module, out.stdout)


def test_committed_input_wins_over_scratch(tmp_path):
    committed, scratch = tmp_path / "results" / "x.csv", tmp_path / "results" / "_scratch" / "x.csv"
    assert paths.committed_or_scratch(committed, scratch) == committed  # neither: the reader reports it
    scratch.parent.mkdir(parents=True)
    scratch.write_text("s")
    assert paths.committed_or_scratch(committed, scratch) == scratch
    committed.write_text("c")
    assert paths.committed_or_scratch(committed, scratch) == committed


def test_generate_names_the_tree_it_decodes_with(tmp_path):
    from medusa.generate import tree_source

    assert tree_source(str(tmp_path / "t.json"), None).endswith("t.json")
    assert tree_source(None, "chain_2") == "preset chain_2"
    assert "default" in tree_source(None, None)


# ---- the reference run is picked by name --------------------------------------------------------
@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from tests import synthetic_results

    return synthetic_results.build(tmp_path_factory.mktemp("results"))


def test_a_trial_in_results_bench_mtbench_does_not_replace_the_reference(results, tmp_path):
    from analysis import load, tables

    root = tmp_path / "results"
    shutil.copytree(results, root)
    # A bigger trial run named like the old default folder.
    shutil.copytree(root / "bench" / paths.REFERENCE_RUN, root / "bench" / "mtbench")
    assert load.pick_run(load.load_runs(root, quiet=True)).name == paths.REFERENCE_RUN
    assert f"run {paths.REFERENCE_RUN}" in tables.make("speed", root)
    assert "run mtbench" in tables.make("speed", root, run="mtbench")
    shutil.rmtree(root / "bench" / paths.REFERENCE_RUN)
    with pytest.raises(MissingResult, match=f"{paths.REFERENCE_RUN}.*mtbench"):
        load.pick_run(load.load_runs(root, quiet=True))


def test_a_run_without_the_baseline_is_refused_by_name(results, capsys):
    from analysis import tables

    assert run_cli(tables.main, ["speed", "--results", str(results), "--run", "budget-8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "budget-8" in err[0] and "--run" in err[0]


# ---- an Optuna study says when it continues -----------------------------------------------------
class FlatProfile:
    device = "synthetic"

    def verify_time(self, n_query: int, context: int = 512) -> float:
        return 0.01 + 0.001 * n_query


def test_resuming_a_study_says_so(tmp_path):
    import numpy as np

    from trees.acceptance_model import Marginals
    from trees.search import search

    acc = np.array([[0.6, 0.2], [0.3, 0.2]])
    table = Marginals(accuracy=acc, count=np.rint(acc * 1000).astype(np.int64), positions=np.full(2, 1000)).to_frame()
    heard: list[str] = []
    kw = dict(profile=FlatProfile(), storage=str(tmp_path / "s.db"), min_budget=2, n_trials=3, notify=heard.append)
    first = search("optuna", 6, table, **kw)
    assert heard == []
    search("optuna", 6, table, **kw)
    assert len(heard) == 1 and first.study_name in heard[0] and "3 trials so far" in heard[0]


# ---- every README "Everyday use" command leaves git status clean --------------------------------
# Extra flags appended to each README command (argparse keeps the last value of a repeated flag),
# so that the commands run in seconds; one thread each, so a busy test machine slows them less.
# (bench.latency keeps torch's thread count: it is part of the profile's device name, which the
# Optuna search after it looks up with torch's thread count.)
ONE = ["--threads", "1"]
TINY = {
    "medusa.generate": ["--max-new-tokens", "4", *ONE],
    "trees.search": [],
    "bench.latency": ["--contexts", "16", "--n-queries", "1,2", "--repeats", "1", "--warmup", "0"],
    "bench.run": ["--limit", "1", "--categories", "writing", "--max-new-tokens", "4", "--warmup-tokens", "0",
                  "--no-quality", "--no-progress", *ONE],
    "bench.summarize": ["--bootstrap", "20"],
    "analysis.figures": [],
    "analysis.tables": [],
    "medusa.distill": ["--limit", "1", "--max-new-tokens", "8", "--quiet", *ONE],
    "medusa.train": ["--steps", "2", "--batch-size", "16", "--eval-every", "1", "--save-every", "1", "--quiet", *ONE],
    "bench.calibrate": ["--limit", "1", "--max-new-tokens", "8", *ONE],
}
OPTUNA_TINY = ["--trials", "3", "--budget", "2"]  # the tiny latency profile measures 1-2 query tokens


def readme_commands(readme: Path) -> list[list[str]]:
    """The `python -m ...` commands of the README's "Everyday use" code block, comments dropped."""
    text = readme.read_text(encoding="utf-8")
    section = re.search(r"^## Everyday use\n(.*?)^## ", text, flags=re.S | re.M)
    assert section, "README has no '## Everyday use' section"
    block = re.search(r"```bash\n(.*?)```", section.group(1), flags=re.S)
    assert block, "README 'Everyday use' has no bash block"
    commands = []
    for line in block.group(1).splitlines():
        for part in line.split("&&"):
            argv = shlex.split(part, comments=True)
            if argv[:2] == ["python", "-m"]:
                commands.append(argv[2:])
    return commands


def tiny(argv: list[str]) -> list[str]:
    """A README command with the small limits of its module appended."""
    module = argv[0]
    assert module in TINY, f"no small limits for {module}: add it to TINY"
    extra = OPTUNA_TINY if module == "trees.search" and "optuna" in argv else TINY[module]
    return [sys.executable, "-m", *argv, *extra]


def fresh_copy(dest: Path) -> Path:
    """The working tree as a fresh clone would see it once committed: tracked and new files, no ignored
    ones (results/_scratch, data/, caches), committed in a new repository at `dest`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "fresh copy"]):
        subprocess.run([*git, *args], cwd=dest, check=True, capture_output=True)
    return dest


def git_status(repo: Path) -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout


@pytest.mark.slow
def test_readme_commands_leave_git_status_clean(tmp_path):
    repo = fresh_copy(tmp_path / "repo")
    assert git_status(repo) == ""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    where = subprocess.run([sys.executable, "-c", "import common.paths as p; print(p.REPO_ROOT)"], cwd=repo, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where) == repo  # the copy's code runs, so its defaults point into the copy
    commands = readme_commands(repo / "README.md")
    assert {c[0] for c in commands} >= {"medusa.generate", "trees.search", "bench.run", "analysis.figures"}
    for argv in commands:
        t0 = time.perf_counter()
        proc = subprocess.run(tiny(argv), cwd=repo, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"{shlex.join(argv)} failed:\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr
        print(f"{time.perf_counter() - t0:5.1f} s  {shlex.join(argv)}")
        assert git_status(repo) == "", f"`{shlex.join(argv)}` changed the repository:\n{git_status(repo)}"
    assert any((repo / "results" / "_scratch").iterdir())
