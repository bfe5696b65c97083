"""Every subcommand with bad arguments: a non-zero exit, one line on stderr (no traceback),
and the --out folder (and everything else in the working folder) untouched.

In-process through ``pydiffgen.cli.main(argv)``; a few through ``python -m pydiffgen``
to see the real stderr and exit status. The whole table takes well under a minute."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import pydiffgen
from pydiffgen.cli import main

# {m} a model, {nan} one with NaN weights, {x} images .npy, {f} a plain file, {out} an
# output folder holding one file, {missing} a path that does not exist
CASES = {
    "demo": [["demo", "--out", "{f}"], ["demo", "--bogus"]],
    "report": [["report", "{f}"], ["report", "{missing}"], ["report", "{out}"], ["report"]],
    "train": [
        ["train", "--data", "nope", "--out", "{out}"],
        ["train", "--data", "digits", "--model", "nope", "--out", "{out}"],
        ["train", "--data", "digits", "--steps", "0", "--out", "{out}"],
        ["train", "--data", "digits", "--steps", "x", "--out", "{out}"],
        ["train", "--data", "digits", "--device", "nope", "--out", "{out}"],
        ["train", "--data", "digits", "--out", "{f}"],
        ["train", "--data", "digits", "--out", "{f}/under"],
        ["train", "--data", "digits"],
    ],
    "sample": [
        ["sample", "--model", "{m}", "--shape", "a,b,c", "--out", "{out}/s.npy"],
        ["sample", "--model", "{m}", "--shape", "1,-8,8", "--out", "{out}/s.npy"],
        ["sample", "--model", "{m}", "--out", "{out}/s.txt"],
        ["sample", "--model", "{m}", "--n", "0", "--out", "{out}/s.npy"],
        ["sample", "--model", "{m}", "--n", "-1", "--out", "{out}/s.npy"],
        ["sample", "--model", "{m}", "--method", "nope", "--out", "{out}/s.npy"],
        ["sample", "--model", "{m}", "--sampler-option", "bogus=1", "--out", "{out}/s.npy"],
        ["sample", "--model", "{m}", "--device", "nope", "--out", "{out}/s.npy"],
        ["sample", "--model", "{m}", "--out", "{f}/s.npy"],
        ["sample", "--model", "{missing}", "--out", "{out}/s.npy"],
        ["sample", "--model", "{f}", "--out", "{out}/s.npy"],
        ["sample", "--model", "{nan}", "--n", "2", "--method", "heun", "--sampler-option",
         "steps=2", "--out", "{out}/s.npy"],
    ],
    "memorization gap": [
        ["memorization", "gap", "--model", "{m}", "--data", "digits", "--n-train", "-5",
         "--out", "{out}"],
        ["memorization", "gap", "--model", "{m}", "--data", "digits", "--n-train", "0",
         "--out", "{out}"],
        ["memorization", "gap", "--model", "{m}", "--data", "digits", "--n-train", "100000",
         "--out", "{out}"],
        ["memorization", "gap", "--model", "{m}", "--data", "nope", "--n-train", "4",
         "--out", "{out}"],
        ["memorization", "gap", "--model", "{missing}", "--data", "digits", "--n-train", "4",
         "--out", "{out}"],
        ["memorization", "gap", "--model", "{m}", "--data", "digits", "--n-train", "4",
         "--out", "{f}"],
    ],
    "memorization toy2d": [
        ["memorization", "toy2d", "--steps", "0", "--out", "{out}"],
        ["memorization", "toy2d", "--n-points", "3", "--out", "{out}"],
        ["memorization", "toy2d", "--delta", "-1", "--out", "{out}"],
        ["memorization", "toy2d", "--out", "{f}"],
    ],
    "memorization report": [["memorization", "report", "{f}"],
                            ["memorization", "report", "{missing}"]],
    "memorization factors": [
        ["memorization", "factors", "--out", "{f}"],
        ["memorization", "factors", "--preset", "nope", "--out", "{out}"],
        ["memorization", "factors", "--report-only", "{f}"],
    ],
    "sweep": [
        ["sweep", "--n-samples", "2", "--dry-run"],
        ["sweep", "--sampler", "nope", "--dry-run"],
        ["sweep", "--n-samples", "2", "--out", "{out}"],
        ["sweep", "--sampler", "nope", "--out", "{out}"],
        ["sweep", "--sizes", "0", "--out", "{out}"],
        ["sweep", "--dataset", "nope", "--out", "{out}"],
        ["sweep", "--preset", "nope", "--out", "{out}"],
        ["sweep", "--device", "nope", "--out", "{out}"],
        ["sweep", "--out", "{f}"],
        ["sweep", "--out", "{f}/under"],
        ["sweep", "--report-only", "{f}"],
        ["sweep", "--report-only", "{out}"],
    ],
    "gaussian": [["gaussian", "--out", "{f}"], ["gaussian", "--preset", "nope"],
                 ["gaussian", "--report-only", "{missing}"]],
    "optimal-basis": [["optimal-basis", "--out", "{f}"], ["optimal-basis", "--preset", "nope"]],
    "jacobian": [
        ["jacobian", "--model", "{m}", "--data", "digits", "--sigmas", "a", "--out", "{out}"],
        ["jacobian", "--model", "{m}", "--data", "digits", "--n", "0", "--out", "{out}"],
        ["jacobian", "--model", "{missing}", "--data", "digits", "--out", "{out}"],
        ["jacobian", "--model", "{m}", "--data", "nope", "--out", "{out}"],
        ["jacobian", "--model", "{m}", "--data", "digits", "--device", "nope", "--out", "{out}"],
        ["jacobian", "--model", "{m}", "--data", "digits", "--n", "1", "--out", "{f}"],
    ],
    "audit": [
        ["audit", "--samples", "", "--train", "{x}", "--out", "{out}"],
        ["audit", "--train", "{x}", "--out", "{out}"],
        ["audit", "--samples", "{x}", "--model", "{m}", "--train", "{x}", "--out", "{out}"],
        ["audit", "--samples", "{x}", "--train", "{missing}", "--out", "{out}"],
        ["audit", "--samples", "{x}", "--train", "", "--out", "{out}"],
        ["audit", "--samples", "{x}", "--train", "{x}", "--features", "{f}", "--out", "{out}"],
        ["audit", "--samples", "{x}", "--train", "{x}", "--out", "{f}"],
        ["audit", "--samples", "{x}", "--train", "{x}", "--out", "{f}/under"],
        ["audit", "--samples", "{x}", "--train", "{x}", "--encoder", "nope", "--out", "{out}"],
        ["audit", "--model", "{nan}", "--n", "2", "--method", "heun", "--sampler-option",
         "steps=2", "--train", "{x}", "--out", "{out}"],
    ],
    "metrics": [
        ["metrics", "--real", "{x}", "--fake", "{missing}", "--out", "{out}"],
        ["metrics", "--real", "{x}", "--fake", "{x}", "--metrics", "prdc,nope", "--out", "{out}"],
        ["metrics", "--real", "{x}", "--fake", "{x}", "--encoder", "nope", "--out", "{out}"],
        ["metrics", "--real", "{x}", "--fake", "{x}", "--n-boot", "1", "--out", "{out}"],
        ["metrics", "--real", "{x}", "--fake", "{x}", "--k", "0", "--out", "{out}"],
        ["metrics", "--real", "{x}", "--fake", "{x}", "--out", "{f}"],
        ["metrics", "--real", "{x}", "--out", "{out}"],
    ],
    "backends": [["backends", "--bogus"]],
    "datasets": [["datasets", "extra"]],
    "(none)": [[], ["nope"], ["--quiet"]],
}
TABLE = [(name, argv) for name, cases in CASES.items() for argv in cases]
# run as `python -m pydiffgen`: the real stderr and exit status
SUBPROCESS = [["sample", "--model", "{m}", "--shape", "a,b,c", "--out", "{out}/s.npy"],
              ["audit", "--samples", "{x}", "--train", "{x}", "--out", "{f}"],
              ["memorization", "nope"]]


@pytest.fixture(scope="module")
def inputs(cli_files):
    return cli_files


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A working folder (default outputs such as runs/ would land here) with --out
    holding one file, and a plain file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("keep")
    (tmp_path / "afile").write_text("x")
    return tmp_path


def _fill(argv, inputs: Path, work: Path) -> list[str]:
    paths = {"m": inputs / "m", "nan": inputs / "nan", "x": inputs / "x.npy",
             "f": work / "afile", "out": work / "out", "missing": work / "missing"}
    return [a.format(**{k: str(v) for k, v in paths.items()}) for a in argv]


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def _check(rc: int, err: str, before: dict, work: Path) -> None:
    assert rc not in (0, None), err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and lines[0].startswith("pydiffgen"), err
    assert _snapshot(work) == before  # --out (and the rest of the folder) untouched


@pytest.mark.parametrize("name, argv", TABLE, ids=[f"{n}:{' '.join(a)}" for n, a in TABLE])
def test_bad_arguments_fail_in_one_line_and_touch_nothing(name, argv, inputs, work, capsys):
    before = _snapshot(work)
    rc = main(["--quiet", *_fill(argv, inputs, work)] if argv != ["--quiet"] else argv)
    _check(rc, capsys.readouterr().err, before, work)


@pytest.mark.parametrize("argv", SUBPROCESS, ids=[" ".join(a) for a in SUBPROCESS])
def test_bad_arguments_from_a_shell(argv, inputs, work):
    root = Path(pydiffgen.__file__).resolve().parents[1]
    before = _snapshot(work)
    res = subprocess.run([sys.executable, "-m", "pydiffgen", "--quiet",
                          *_fill(argv, inputs, work)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(root)}, timeout=120)
    _check(res.returncode, res.stderr, before, work)
