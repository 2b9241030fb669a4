"""common/: the one atomic write, checked readers, the CLI helpers, provenance."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pandas as pd
import pytest

from common.cli import Parser, comma_list, run_cli
from common.errors import MissingResult, WorkbenchError
from common.io import atomic_folder, atomic_write, read_csv, read_json, write_csv
from common.provenance import PROVENANCE_COLUMNS, Provenance, upgrade_columns


# ---- atomic write ---------------------------------------------------------------------------------
def test_atomic_write_text_bytes_and_callable(tmp_path):
    assert atomic_write(tmp_path / "a.txt", "héllo\n").read_text(encoding="utf-8") == "héllo\n"
    assert atomic_write(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    atomic_write(tmp_path / "sub" / "c.csv", lambda p: pd.DataFrame({"x": [1]}).to_csv(p, index=False))
    assert (tmp_path / "sub" / "c.csv").read_text() == "x\n1\n"


def test_killed_writer_leaves_the_old_file_and_no_temporaries(tmp_path):
    target = tmp_path / "result.csv"
    target.write_text("old\n")

    def dies_half_way(tmp):
        tmp.write_text("half a fi")
        raise KeyboardInterrupt  # a Ctrl-C mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, dies_half_way)
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.csv"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_gives_the_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "f.txt", "x")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what an ordinary open() gives under this umask
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "f.txt").stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE(plain.stat().st_mode)


def test_two_writers_use_distinct_temporary_names(tmp_path):
    seen = []
    atomic_write(tmp_path / "f", lambda p: (seen.append(p.name), atomic_write(tmp_path / "f", lambda q: seen.append(q.name))))
    assert len(set(seen)) == 2 and all(n.startswith(".f.") for n in seen)


def test_atomic_folder_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_folder(target) as tmp:
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("crash")
    assert (target / "a").read_text() == "1"
    with atomic_folder(target) as tmp:
        (tmp / "b").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


# ---- checked readers ------------------------------------------------------------------------------
def test_read_csv_turns_bad_files_into_one_line(tmp_path):
    with pytest.raises(MissingResult, match=r"no ranks at .*none.csv \(run `make it` first\)"):
        read_csv(tmp_path / "none.csv", "ranks", command="make it")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00garbage\x81")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "cols.csv").write_text("a,b\n1,2\n")
    (tmp_path / "rows.csv").write_text("x,y\n")
    (tmp_path / "torn.csv").write_text('x,y\n1,2\n3,"4\n')
    for name, pattern in [("bin.csv", "not readable"), ("empty.csv", "is empty"),
                          ("cols.csv", r"lacks columns \['x'\]"), ("rows.csv", "has no rows"),
                          ("torn.csv", "not readable")]:
        with pytest.raises(WorkbenchError, match=pattern) as e:
            read_csv(tmp_path / name, "table", required=["x"])
        assert "\n" not in str(e.value)
    assert read_csv(tmp_path / "rows.csv", "table", ["x"], allow_empty=True).empty
    write_csv(pd.DataFrame({"x": [1, 2]}), tmp_path / "ok.csv")
    assert read_csv(tmp_path / "ok.csv", "table", ["x"])["x"].tolist() == [1, 2]


def test_read_json_checks(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(WorkbenchError, match="not valid JSON"):
        read_json(tmp_path / "bad.json", "tree")
    with pytest.raises(MissingResult, match="no tree at"):
        read_json(tmp_path / "none.json", "tree")
    (tmp_path / "ok.json").write_text('{"a": 1}')
    assert read_json(tmp_path / "ok.json") == {"a": 1}


# ---- CLI helpers ----------------------------------------------------------------------------------
def test_comma_list():
    assert comma_list("a, b,,c") == ["a", "b", "c"]
    assert comma_list(["1,2", "3"], int) == [1, 2, 3]
    assert comma_list(None) == []
    with pytest.raises(WorkbenchError, match=r"--budgets: cannot read 'x'"):
        comma_list("1,x", int, "--budgets")


def test_parser_errors_and_run_cli(capsys):
    def main(argv):
        p = Parser(prog="python -m demo")
        p.add_argument("--n", type=int, required=True)
        args = p.parse_args(argv)
        if args.n < 0:
            raise WorkbenchError("--n must be >= 0")
        print(args.n)
        return 0

    assert run_cli(main, ["--n", "3"]) == 0
    assert run_cli(main, ["--n", "x"]) == 2
    assert run_cli(main, ["--n", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: python -m demo: argument --n: invalid int value: 'x'", "error: --n must be >= 0"]


def test_closed_pipe_is_a_quiet_exit():
    code = ("import sys; from common.cli import run_cli\n"
            "def main(argv):\n    [print('line', i, flush=True) for i in range(100000)]\n"
            "sys.exit(run_cli(main))\n")
    proc = subprocess.run(f"{sys.executable} -c \"{code}\" | head -1", shell=True, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.stdout == "line 0\n"
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


# ---- provenance ---------------------------------------------------------------------------------
def test_provenance_schema_and_old_columns():
    p = Provenance.collect("cpu", "torch.float32", threads=1).as_dict()
    assert tuple(p) == PROVENANCE_COLUMNS
    assert p["dtype"] == "float32" and p["threads"] == 1 and p["commit"]
    old = pd.DataFrame({"device": ["cpu x"], "torch": ["2"], "transformers": ["5"], "median_s": [0.1]})
    assert list(upgrade_columns(old).columns) == ["device_name", "torch_version", "transformers_version", "median_s"]


def test_one_of_takes_the_first_format_present_else_names_the_first(tmp_path):
    from common.io import one_of

    assert one_of(tmp_path, ("t.parquet", "t.csv")) == tmp_path / "t.parquet"  # none: the reader reports it
    (tmp_path / "t.csv").write_text("a\n1\n")
    assert one_of(tmp_path, ("t.parquet", "t.csv")) == tmp_path / "t.csv"
    (tmp_path / "t.parquet").write_bytes(b"")
    assert one_of(tmp_path, ("t.parquet", "t.csv")) == tmp_path / "t.parquet"
