"""Issue 19 (part A): no lost runs, no mixed runs, no silent wrong results.

The kill tests SIGKILL a real training process at the exact moment between the two
writes of a save: the child's ``os.replace`` (test harness only) pauses right after it
has put the named file in place, the test watches that file change on disk and kills.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import pydiffgen
import pydiffgen.checkpoint
from pydiffgen import models
from pydiffgen.errors import CheckpointError, ConfigError, DataError, PydiffgenError
from pydiffgen.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]

# Trains the MLP of _model() on _points() in out_dir; pauses for the kill after the
# nth replacement of the file named `target`.
CHILD = """
import os, sys, time
import torch

out_dir, steps, every, target, nth = sys.argv[1:6]
real_replace, seen = os.replace, []

def replace_then_pause(src, dst):
    real_replace(src, dst)
    if os.path.basename(dst) == target:
        seen.append(dst)
        if len(seen) == int(nth):
            time.sleep(120)  # the test kills this process here

os.replace = replace_then_pause
sys.path.insert(0, {tests!r})
from test_hardening import _model, _points, _config
from pydiffgen.training import train
train(_model(), _points(), _config(int(steps), int(every)), out_dir=out_dir, progress=False)
"""


def _model():
    torch.manual_seed(0)
    return models.build("mlp", dim=2, hidden=8, depth=1)


def _points():
    return torch.randn(64, 2, generator=torch.Generator().manual_seed(0))


def _config(steps, every):
    return TrainConfig(steps=steps, batch_size=8, checkpoint_every=every, ema=0.9)


def _header(path: Path) -> dict:
    """The description embedded in a safetensors header ({} while absent)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("description", "{}"))
    except Exception:  # not there yet
        return {}


def _kill_when(out_dir: Path, target: str, nth: int, steps: int, every: int, ready) -> None:
    """Run the child training into ``out_dir``; SIGKILL it once ``ready()`` holds (the
    child is then paused right after replacing ``target``)."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(tests=str(ROOT / "tests")), str(out_dir),
         str(steps), str(every), target, str(nth)],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ready():
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the child never reached the moment"
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stderr.close()


def _steps(out_dir, cfg, seen=None):
    return train(_model(), _points(), cfg, out_dir=out_dir, progress=False,
                 callback=None if seen is None else lambda s, loss, m: seen.append(s))


# --- item 1: a checkpoint is one atomic unit ------------------------------------------


def test_kill_between_checkpoint_tensors_and_json_loses_nothing(tmp_path):
    out = tmp_path / "run"
    weights, desc = out / "checkpoint.safetensors", out / "checkpoint.json"
    # killed just after step 4's tensors replaced step 2's, before step 4's JSON
    _kill_when(out, "checkpoint.safetensors", 2, steps=6, every=2,
               ready=lambda: _header(weights).get("step") == 4)
    assert json.loads(desc.read_text())["step"] == 2  # the JSON is the older half
    seen = []
    resumed = _steps(out, _config(6, 2), seen)
    assert seen == [5, 6]  # steps 1-4 were kept: nothing lost, nothing redone
    straight = _steps(None, _config(6, 2))
    assert resumed.losses == straight.losses
    for a, b in zip(resumed.ema.parameters(), straight.ema.parameters()):
        assert torch.equal(a, b)
    assert json.loads(desc.read_text())["step"] == 6
    assert not list(out.glob(".*.tmp"))


def test_kill_between_model_tensors_and_json_loads_the_new_model(tmp_path):
    out = tmp_path / "run"
    _steps(out, _config(2, 2))  # a finished 2-step run, then extended to 4 steps
    _kill_when(out, "model.safetensors", 1, steps=4, every=2,
               ready=lambda: _header(out / "model.safetensors").get("meta", {}).get("step") == 4)
    assert json.loads((out / "model.json").read_text())["meta"]["step"] == 2
    model = pydiffgen.load_model(out)  # was: "come from different saves ... delete both"
    straight = _steps(None, _config(4, 2))
    assert model.meta["step"] == 4
    for a, b in zip(model.parameters(), straight.ema.parameters()):
        assert torch.equal(a, b)
    seen = []
    _steps(out, _config(4, 2), seen)
    assert seen == [] and json.loads((out / "model.json").read_text())["meta"]["step"] == 4


# --- item 3: resuming on other data is refused -------------------------------------------


def test_resume_on_other_data_is_refused(tmp_path):
    digits = pydiffgen.data.load("digits", n=64)
    faces = pydiffgen.data.load("faces", size=8)[:64]
    cfg = TrainConfig(steps=2, batch_size=4, checkpoint_every=1)
    build = lambda: models.build("bf_cnn", depth=2, width=4)  # noqa: E731
    train(build(), digits, cfg, out_dir=tmp_path, progress=False,
          dataset={"name": "digits", "options": {"n": 64}})
    longer = TrainConfig(steps=3, batch_size=4, checkpoint_every=1)
    with pytest.raises(CheckpointError, match="other data.*sha256"):
        train(build(), faces, longer, out_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="other data.*name"):
        train(build(), digits, longer, out_dir=tmp_path, progress=False,
              dataset={"name": "digits2", "options": {"n": 64}})
    res = train(build(), digits, longer, out_dir=tmp_path, progress=False,
                dataset={"name": "digits", "options": {"n": 64}})  # the same data
    assert res.steps == 3
    identity = json.loads((tmp_path / "checkpoint.json").read_text())["data"]
    assert identity["name"] == "digits" and identity["shape"] == [64, 1, 8, 8]
    assert pydiffgen.load_model(tmp_path).meta["data"]["sha256"] == identity["sha256"]


# --- item 10: file modes and stale temporaries -------------------------------------------


def test_written_files_get_the_umask_mode(tmp_path):
    from pydiffgen.io import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "metrics.json", {"a": 1})
        pydiffgen.checkpoint.save_model(tmp_path, _model())
    finally:
        os.umask(old)
    for name in ("metrics.json", "model.json", "model.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_stale_temporaries_of_killed_writers_are_swept(tmp_path):
    from pydiffgen.io import write_json

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f".metrics.json.p{dead.pid}.abcd.tmp",
             tmp_path / ".metrics.json.k2j3h4.tmp"]  # older pydiffgen: no pid
    live = tmp_path / f".metrics.json.p{os.getpid()}.beef.tmp"
    for p in (*stale, live):
        p.write_text("partial")
    an_hour_ago = time.time() - 7200
    os.utime(stale[1], (an_hour_ago, an_hour_ago))
    write_json(tmp_path / "metrics.json", {"a": 1})
    assert not any(p.exists() for p in stale) and live.exists()
