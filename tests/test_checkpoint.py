"""save_model / load_model: round trips, path forms, corrupt and torn files, atomicity."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import pydiffgen
import pydiffgen.checkpoint as ckpt
from pydiffgen.checkpoint import load_model, model_paths, save_model
from pydiffgen.errors import CheckpointError, InputError
from pydiffgen.models.base import Denoiser


class TinyCkptNet(Denoiser):
    name = "_test_tiny_ckpt_net"

    def __init__(self, channels: int = 1, width: int = 4, scales=(1, 2)):
        super().__init__(channels=channels, width=width, scales=scales)
        self.conv = nn.Conv2d(channels, width, 3, padding=1)
        self.out = nn.Conv2d(width, channels, 1)
        self.norm = nn.BatchNorm2d(width)  # has buffers

    def forward(self, y, sigma):
        return y - self.out(torch.relu(self.norm(self.conv(y))))


def _net(**kw):
    torch.manual_seed(0)
    m = TinyCkptNet(**kw)
    with torch.no_grad():
        m.norm.running_mean.uniform_(-0.1, 0.1)  # non-default buffers must survive
        m.norm.running_var.uniform_(0.5, 1.5)
    return m.eval()


def _same_outputs(a, b):
    y = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a(y, 0.5), b(y, 0.5))


@pytest.mark.parametrize("form", ["dir", "prefix", "safetensors", "json"])
def test_round_trip_gives_equal_outputs(tmp_path, form):
    m = _net()
    if form == "dir":
        target = tmp_path
    elif form == "prefix":
        target = tmp_path / "sub" / "net"
    else:
        target = tmp_path / f"net.{form}"
    weights = save_model(target, m, meta={"note": "hello", "step": 3})
    loaded = load_model(target)
    assert type(loaded) is TinyCkptNet and not loaded.training
    assert loaded.config == {"name": TinyCkptNet.name, "channels": 1, "width": 4,
                             "scales": [1, 2]}  # tuples come back as lists
    assert _same_outputs(m, loaded)
    for k, v in m.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    info = json.loads(weights.with_suffix(".json").read_text())
    assert info["meta"] == {"note": "hello", "step": 3} and info["n_params"] > 0
    assert pydiffgen.load_model is load_model


def test_model_paths_rules(tmp_path):
    assert model_paths(tmp_path) == (tmp_path / "model.safetensors", tmp_path / "model.json")
    assert model_paths(tmp_path / "a.json") == (tmp_path / "a.safetensors", tmp_path / "a.json")
    assert model_paths(tmp_path / "a") == (tmp_path / "a.safetensors", tmp_path / "a.json")
    assert model_paths(str(tmp_path / "new") + "/")[1] == tmp_path / "new" / "model.json"


def test_real_models_round_trip(tmp_path):
    from pydiffgen.models.base import build

    torch.manual_seed(0)
    for name, kw, shape in [("bf_unet", dict(width=8, levels=1), (2, 1, 8, 8)),
                            ("unet", dict(width=8, levels=2), (2, 1, 8, 8)),
                            ("mlp", dict(hidden=16, depth=2), (2, 2))]:
        m = build(name, **kw).eval()
        save_model(tmp_path / name, m)
        loaded = load_model(tmp_path / name)
        y, s = torch.randn(shape), torch.tensor([0.2, 1.5])
        with torch.no_grad():
            assert torch.equal(m(y, s), loaded(y, s)), name


def test_missing_files_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="model.json"):
        load_model(tmp_path)
    save_model(tmp_path, _net())
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(tmp_path)


def test_corrupt_safetensors(tmp_path):
    save_model(tmp_path, _net())
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(tmp_path)
    path.write_bytes(b"\x00" * 64)  # garbage
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(tmp_path)


def test_corrupt_or_wrong_json(tmp_path):
    save_model(tmp_path, _net())
    desc = tmp_path / "model.json"
    good = json.loads(desc.read_text())
    desc.write_text('{"format": "pydiffgen.model", ')
    with pytest.raises(CheckpointError, match="model.json"):
        load_model(tmp_path)
    desc.write_text(json.dumps({**good, "format": "other"}))
    with pytest.raises(CheckpointError, match="not a pydiffgen model"):
        load_model(tmp_path)
    desc.write_text(json.dumps({**good, "config": {"name": "no_such_model"}}))
    with pytest.raises(CheckpointError, match="no_such_model"):
        load_model(tmp_path)
    desc.write_text(json.dumps({**good, "config": {**good["config"], "width": 5}}))
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_model(tmp_path)


def test_torn_pair_loads_the_newer_complete_save(tmp_path):
    # issue 19 item 1: killed between the weights and the JSON, the weights (written
    # whole, first) carry their own description, so the newer save loads
    save_model(tmp_path, _net(), meta={"save": 1})
    old_json = (tmp_path / "model.json").read_text()
    save_model(tmp_path, _net(width=4), meta={"save": 2})  # same architecture, new token
    (tmp_path / "model.json").write_text(old_json)
    assert load_model(tmp_path).meta == {"save": 2}
    (tmp_path / "model.json").unlink()  # killed inside the very first save
    assert load_model(tmp_path).meta == {"save": 2}


def test_torn_pair_of_the_old_layout_is_detected(tmp_path):
    from safetensors.torch import save_file

    save_model(tmp_path, _net())
    old_json = (tmp_path / "model.json").read_text()
    save_model(tmp_path, _net(width=4))  # same architecture, new token
    (tmp_path / "model.json").write_text(old_json)
    # weights as written before descriptions were embedded: token only
    tensors, meta = ckpt.read_tensors(tmp_path / "model.safetensors")
    save_file(tensors, str(tmp_path / "model.safetensors"),
              metadata={"format": "pydiffgen", "token": meta["token"]})
    with pytest.raises(CheckpointError, match="different saves"):
        load_model(tmp_path)
    # an old-layout pair from one save still loads
    info = json.loads(old_json)
    save_file(tensors, str(tmp_path / "model.safetensors"),
              metadata={"format": "pydiffgen", "token": info["token"]})
    assert _same_outputs(_net(), load_model(tmp_path))


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    m = _net()
    save_model(tmp_path, m)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    import safetensors.torch

    def broken_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")  # half-written, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_model(tmp_path, _net(width=6))
    with pytest.raises(OSError, match="disk full"):
        save_model(tmp_path / "fresh", _net())
    monkeypatch.undo()
    # the previous files are untouched, no temporary or partial file is left anywhere
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert not list(tmp_path.rglob("*.tmp"))
    assert not (tmp_path / "fresh.safetensors").exists()
    assert _same_outputs(m, load_model(tmp_path))


def _adam_state(m, seed=0):
    """Adam over ``m`` after one step on a fixed input, and a generator that drew once."""
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    m(torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(seed)), 0.5).square() \
        .mean().backward()
    opt.step()
    gen = torch.Generator().manual_seed(seed)
    torch.rand(3, generator=gen)
    return opt, gen


def test_train_checkpoint_round_trip_and_config_check(tmp_path):
    m, ema = _net().train(), _net(width=4)
    opt, gen = _adam_state(m)
    config = {"steps": 4, "lr": 1e-3, "betas": (0.9, 0.999)}
    ckpt.save_train_checkpoint(tmp_path, step=2, losses=[0.5, 0.25], model=m, ema=ema,
                               optimizer=opt, generator=gen, train_config=config)
    assert ckpt.train_checkpoint_paths(tmp_path) == (tmp_path / "checkpoint.safetensors",
                                                     tmp_path / "checkpoint.json")
    with pytest.raises(CheckpointError, match="training checkpoint"):
        load_model(tmp_path / "checkpoint.json")

    m2, ema2 = _net(width=4), _net(width=4)
    opt2, gen2 = _adam_state(m2, seed=1)
    step, losses = ckpt.load_train_checkpoint(
        tmp_path, model=m2, ema=ema2, optimizer=opt2, generator=gen2,
        train_config={**config, "steps": 8}, resumable={"steps"})
    assert step == 2 and losses == [0.5, 0.25]
    for a, b in ((m, m2), (ema, ema2)):
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k])
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(torch.as_tensor(v), torch.as_tensor(opt2.state_dict()["state"][0][k]))
    assert torch.equal(gen.get_state(), gen2.get_state())

    with pytest.raises(CheckpointError, match="different training config .*steps"):
        ckpt.load_train_checkpoint(tmp_path, model=m2, ema=ema2, optimizer=opt2, generator=gen2,
                                   train_config={**config, "steps": 8})
    with pytest.raises(CheckpointError, match="different model"):
        ckpt.load_train_checkpoint(tmp_path, model=_net(width=6), ema=None, optimizer=opt2,
                                   generator=gen2, train_config=config)


def test_save_model_needs_a_registered_denoiser(tmp_path):
    with pytest.raises(InputError, match="Denoiser"):
        save_model(tmp_path, nn.Linear(2, 2))


def test_no_pickle_anywhere():
    import inspect

    import pydiffgen.training as training

    for module in (ckpt, training):
        src = inspect.getsource(module)
        assert "torch.load(" not in src and "import pickle" not in src
