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


def _metadata(path: Path) -> dict:
    """The header metadata of a safetensors file ({} while absent)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception:  # not there yet
        return {}


def _torn(weights: Path, desc: Path, older_step) -> bool:
    """True once ``weights`` holds a newer save than ``desc``, whose step (or the meta's
    step of a model) is ``older_step``: the moment between the two writes of a save."""
    try:
        info = json.loads(desc.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    step = info.get("step", (info.get("meta") or {}).get("step"))
    token = _metadata(weights).get("token")
    return step == older_step and token is not None and token != info.get("token")


def _kill_when(out_dir: Path, target: str, nth: int, steps: int, every: int, ready) -> None:
    """Run the child training into ``out_dir``; SIGKILL it once ``ready()`` holds (the
    child is then paused right after replacing ``target``)."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(tests=str(ROOT / "tests")), str(out_dir),
         str(steps), str(every), target, str(nth)],
        env={**os.environ, "PYTHONPATH": str(Path(pydiffgen.__file__).parents[1])},
        stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
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
               ready=lambda: _torn(weights, desc, 2))
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
               ready=lambda: _torn(out / "model.safetensors", out / "model.json", 2))
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


# --- item 6: model configs beyond stated limits are refused before allocating ------------


@pytest.mark.parametrize("name,kwargs", [
    ("unet", dict(levels=20)), ("bf_unet", dict(levels=20)), ("unet", dict(width=4096)),
    ("bf_unet", dict(width=10**5)), ("bf_cnn", dict(depth=10**6)), ("mlp", dict(hidden=10**6)),
    ("unet", dict(blocks_per_level=10**5)),
])
def test_oversized_model_configs_are_refused(name, kwargs):
    with pytest.raises(ConfigError, match="limit"):
        models.build(name, **kwargs)


def test_tampered_model_json_is_refused_naming_the_file(tmp_path):
    model = train(models.build("unet", width=4, levels=2), torch.zeros(4, 1, 8, 8),
                  TrainConfig(steps=1, batch_size=2), out_dir=tmp_path, progress=False).ema
    info = json.loads((tmp_path / "model.json").read_text())
    for config, match in [({"levels": 20}, "levels=20 is above the limit"),
                          ({"width": 10**5}, "parameters, above the limit"),
                          ({"levels": 5}, r"down-samples by 16.*\[1, 8, 8\]")]:
        tampered = {**info, "config": {**info["config"], **config}}
        (tmp_path / "model.json").write_text(json.dumps(tampered))
        with pytest.raises(CheckpointError, match=f"model.json.*{match}"):
            pydiffgen.load_model(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps(info))
    assert pydiffgen.load_model(tmp_path).config == model.config


# --- item 7: float and 32-bit TIFFs -------------------------------------------------------


def test_float_tiffs_keep_their_precision_and_int32_tiffs_are_refused(tmp_path):
    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    (tmp_path / "f").mkdir()
    Image.fromarray(ramp, mode="F").save(tmp_path / "f" / "a.tif")
    x = pydiffgen.data.load("folder", path=tmp_path / "f", grayscale=True)
    assert torch.allclose(x[0, 0], torch.from_numpy(ramp) * 2 - 1, atol=1e-6)  # was 8 bits
    Image.fromarray(ramp * 1000, mode="F").save(tmp_path / "f" / "a.tif")
    with pytest.raises(DataError, match=r"a\.tif: a float image must hold .*\[0, 1\]"):
        pydiffgen.data.load("folder", path=tmp_path / "f")
    (tmp_path / "i").mkdir()
    Image.fromarray((ramp * 1e6).astype(np.int32), mode="I").save(tmp_path / "i" / "b.tif")
    with pytest.raises(DataError, match=r"b\.tif: 32-bit integer images"):
        pydiffgen.data.load("folder", path=tmp_path / "i")


# --- item 9: silent or late handling ------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_safetensors_loader_refuses_nan_and_inf_like_npy(tmp_path, bad):
    import numpy as np
    from safetensors.torch import save_file

    x = torch.zeros(2, 1, 4, 4)
    x[1, 0, 2, 2] = bad
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    np.save(tmp_path / "x.npy", x.numpy())
    for name in ("safetensors", "npy"):
        with pytest.raises(DataError, match="contains NaN or Inf values"):
            pydiffgen.data.load(name, path=tmp_path / f"x.{name}")


@pytest.mark.parametrize("name,options,match", [
    ("patches", dict(size=10000), "no 10000×10000 patch fits"),
    ("npy", dict(path=None), "path must be a file or folder path, got None"),
    ("gaussian", dict(n=10**12), "above the limit"),
    ("disks", dict(n=10**9), "above the limit"),
    ("digits", dict(size=10**6), "above the limit"),
])
def test_bad_data_options_are_one_line_errors(name, options, match):
    with pytest.raises(PydiffgenError, match=match) as err:
        pydiffgen.data.load(name, **options)
    assert "\n" not in str(err.value)


def test_generalization_score_refuses_an_all_zero_sample():
    from pydiffgen.errors import InputError
    from pydiffgen.metrics.memorization import generalization_score

    train_set = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    samples = torch.cat([train_set[:2] + 0.1, torch.zeros(1, 1, 4, 4)])
    with pytest.raises(InputError, match="1 sample.*all zeros"):  # was 3.6e300
        generalization_score(samples, train_set)
    assert 0 < generalization_score(samples[:2], train_set) < 1


# --- the diffusers adapter reads only schedulers it can map exactly ------------------------


@pytest.mark.parametrize("scheduler", ["LCMScheduler", "FlowMatchEulerDiscreteScheduler"])
def test_diffusers_adapter_refuses_non_ddpm_schedulers(tmp_path, scheduler):
    diffusers = pytest.importorskip("diffusers")
    from pydiffgen.models.adapters import load_diffusers

    diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    ).save_pretrained(tmp_path / "unet", safe_serialization=True)
    getattr(diffusers, scheduler)().save_pretrained(tmp_path / "scheduler")
    with pytest.raises(CheckpointError, match=f"scheduler {scheduler} cannot be mapped"):
        load_diffusers(tmp_path)
