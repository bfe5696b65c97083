"""Issue 19 part B: no mixed runs (one run per --out folder), an unusable --out found before
any work, one-line errors, and no silent wrong results from the command line."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import pydiffgen
from pydiffgen.cli import main

ROOT = Path(pydiffgen.__file__).resolve().parents[1]  # the tree under test, for subprocesses


@pytest.fixture(scope="module")
def files(cli_files):
    return cli_files


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT)}


# ------------------------------------------------------------------ 2: one run per folder


def test_a_second_run_into_a_held_folder_is_refused_at_once_and_a_killed_one_leaves_no_lock(
        tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "pydiffgen", "--quiet", "memorization", "toy2d",
         "--steps", "1000000", "--out", str(out)], env=_env(), stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (out / ".lock").exists():  # the first run holds the folder
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        t0 = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "pydiffgen", "--quiet", "memorization", "toy2d",
             "--steps", "5", "--out", str(out)], env=_env(), capture_output=True, text=True,
            timeout=120)
        assert second.returncode == 1
        err = second.stderr.strip()
        assert len(err.splitlines()) == 1 and f"pid {first.pid}" in err and "in use" in err
        assert time.monotonic() - t0 < 60  # refused, not run
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the kernel dropped the dead run's lock: the next run gets the folder
    took = subprocess.run(
        [sys.executable, "-c", "import sys; from pydiffgen.experiments import hold_folder\n"
         "with hold_folder(sys.argv[1]): print('held')", str(out)],
        env=_env(), capture_output=True, text=True, timeout=120)
    assert took.returncode == 0 and took.stdout.strip() == "held", took.stderr
    assert not (out / ".lock").exists()  # released on exit


def test_a_sweep_into_a_folder_another_run_holds_is_refused(tmp_path):
    from pydiffgen.experiments import SweepConfig, generalization_sweep

    out = tmp_path / "sweep"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pydiffgen.experiments import "
         "hold_folder\nwith hold_folder(sys.argv[1]):\n print('held', flush=True)\n "
         "time.sleep(600)", str(out)], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match="in use by another sweep"):
            generalization_sweep(SweepConfig(sizes=(2,), steps=1), out, progress=False)
        assert not (out / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------ 4: unusable --out, no work


@pytest.mark.parametrize("where", ["afile", "afile/under"])
def test_train_refuses_an_unusable_out_before_training(files, where, monkeypatch, capsys):
    from pydiffgen import training

    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("trained"))
    assert main(["--quiet", "train", "--data", "digits", "--model", "bf_cnn", "--steps", "2",
                 "--out", str(files / where)]) == 1
    assert "afile" in _one_line_error(capsys)


def test_sweep_refuses_an_unusable_out_before_loading_data(files, monkeypatch, capsys):
    from pydiffgen.experiments import generalization

    monkeypatch.setattr(generalization, "_data", lambda *a: pytest.fail("worked"))
    assert main(["--quiet", "sweep", "--sizes", "2", "--steps", "1",
                 "--out", str(files / "afile" / "run")]) == 1
    assert "afile" in _one_line_error(capsys)


def test_jacobian_and_audit_refuse_an_unusable_out_before_work(files, monkeypatch, capsys):
    from pydiffgen.experiments import audit, jacobian_spectra

    monkeypatch.setattr(jacobian_spectra, "jacobian_spectra", lambda *a, **k: pytest.fail("j"))
    monkeypatch.setattr(audit, "audit", lambda *a, **k: pytest.fail("audited"))
    assert main(["--quiet", "jacobian", "--model", str(files / "m"), "--data", "digits",
                 "--n", "1", "--out", str(files / "afile")]) == 1
    _one_line_error(capsys)
    assert main(["--quiet", "audit", "--samples", str(files / "x.npy"), "--train",
                 str(files / "x.npy"), "--out", str(files / "afile")]) == 1
    _one_line_error(capsys)


# -------------------------------------------------------------------- 8: one-line errors


def test_report_on_a_file_or_a_tampered_run_is_one_line(files, tmp_path, capsys):
    from pydiffgen import config as cfgmod
    from pydiffgen.experiments import SweepConfig

    assert main(["report", str(files / "afile")]) == 1
    assert "is a file" in _one_line_error(capsys)
    run = tmp_path / "run"
    (run / "n2").mkdir(parents=True)
    config = cfgmod.to_dict(SweepConfig(sizes=(2,), jacobian_images=0))
    (run / "config.json").write_text(json.dumps(config))
    (run / "dataset.json").write_text(json.dumps({"name": "digits", "raw": 10,
                                                  "deduplicated": 10, "shape": [1, 8, 8]}))
    for tampered in ({"paired": "x"}, [1, 2]):  # a per-N metrics.json edited by hand
        (run / "n2" / "metrics.json").write_text(json.dumps(tampered))
        assert main(["report", str(run)]) == 1
        assert "result file" in _one_line_error(capsys)
    for field, value in (("sizes", "ab"), ("steps", "x")):  # config.json edited by hand
        (run / "config.json").write_text(json.dumps({**config, field: value}))
        assert main(["report", str(run)]) == 1
        _one_line_error(capsys)


@pytest.mark.parametrize("argv, message", [
    (["--shape", "a,b,c"], "--shape"),
    (["--shape", "1,0,8"], "--shape"),
    (["--device", "cuda:99" if torch.cuda.is_available() else "cuda"], "cuda"),
    (["--device", "nope"], "not a device"),
])
def test_sample_bad_arguments_are_one_line(files, tmp_path, capsys, argv, message):
    out = tmp_path / "s.npy"
    assert main(["--quiet", "sample", "--model", str(files / "m"), "--n", "2", *argv,
                 "--out", str(out)]) == 1
    assert message in _one_line_error(capsys)
    assert not out.exists()


def test_a_decompression_bomb_is_one_line(files, tmp_path, capsys):
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    (tmp_path / "imgs").mkdir()  # a PNG header claiming 14000 × 14000 pixels
    (tmp_path / "imgs" / "big.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 14000, 14000, 8, 0, 0,
                                                          0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 14001)) + chunk(b"IEND", b""))
    assert main(["--quiet", "audit", "--samples", str(tmp_path / "imgs"), "--train",
                 str(files / "x.npy"), "--out", str(tmp_path / "o")]) == 1
    message = _one_line_error(capsys)
    assert "big.png" in message and "exceeds limit" in message  # names the file and why
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------- 9: no silent or late handling


def test_sampling_a_model_with_nan_weights_is_refused(files, tmp_path, capsys):
    out = tmp_path / "s.npy"
    assert main(["--quiet", "sample", "--model", str(files / "nan"), "--n", "2", "--method",
                 "heun", "--sampler-option", "steps=2", "--out", str(out)]) == 1
    assert "NaN" in _one_line_error(capsys)
    assert not out.exists()


def test_sample_out_suffix_is_honoured_or_refused(files, tmp_path, capsys):
    from safetensors.torch import load_file

    assert main(["--quiet", "sample", "--model", str(files / "m"), "--n", "2",
                 "--out", str(tmp_path / "s.txt")]) == 1
    assert ".npy" in _one_line_error(capsys)
    assert not (tmp_path / "s.txt").exists()
    run = lambda name: main(["--quiet", "sample", "--model", str(files / "m"), "--n", "2",
                             "--method", "heun", "--sampler-option", "steps=2",
                             "--out", str(tmp_path / name)])
    assert run("s.npy") == 0 and run("s.npz") == 0 and run("s.safetensors") == 0
    assert run("s.png") == 0
    x = np.load(tmp_path / "s.npy")
    assert x.shape == (2, 1, 8, 8)
    np.testing.assert_array_equal(np.load(tmp_path / "s.npz")["samples"], x)
    np.testing.assert_array_equal(load_file(str(tmp_path / "s.safetensors"))["samples"].numpy(),
                                  x)
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*"))  # no lock or temporary file left behind


def test_audit_empty_samples_path_is_refused(files, tmp_path, capsys, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # an image here must not be read as the samples
    Image = pytest.importorskip("PIL.Image")
    Image.new("L", (8, 8)).save(tmp_path / "cwd" / "img.png")
    assert main(["--quiet", "audit", "--samples", "", "--train", str(files / "x.npy"),
                 "--out", str(tmp_path / "o")]) == 1
    assert "empty path" in _one_line_error(capsys)


def test_memorization_gap_refuses_negative_counts(files, tmp_path, capsys, monkeypatch):
    from pydiffgen import analysis

    monkeypatch.setattr(analysis, "noise_level_gap", lambda *a, **k: pytest.fail("ran"))
    for flag in ("--n-train", "--n-heldout", "--n-samples"):
        argv = {"--n-train": "4", "--n-heldout": "4", "--n-samples": "4", flag: "-5"}
        assert main(["--quiet", "memorization", "gap", "--model", str(files / "m"), "--data",
                     "digits", *[a for kv in argv.items() for a in kv],
                     "--out", str(tmp_path / "g")]) == 1
        assert flag[2:].replace("-", "_") in _one_line_error(capsys)
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("argv, message", [
    (["--n-samples", "2"], "n_samples"),
    (["--sampler", "nope"], "nope"),
    (["--sampler-option", "bogus=1"], "bogus"),
    (["--dataset", "nope"], "unknown dataset"),
    (["--model", "nope"], "unknown model"),
])
def test_sweep_dry_run_refuses_what_the_run_would(argv, message, capsys):
    assert main(["sweep", "--dry-run", *argv]) == 1
    assert message in _one_line_error(capsys)
