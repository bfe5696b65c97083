"""Training loop: loss falls, determinism, bitwise resume, config checks, real models."""

import json

import pytest
import torch
from torch import nn

import pydiffgen
from pydiffgen.errors import CheckpointError, ConfigError, InputError
from pydiffgen.models.base import Denoiser
from pydiffgen.training import TrainConfig, TrainResult, train


class TinyTrainNet(Denoiser):
    """A two-layer residual conv denoiser f(y) = y − net(y) (blind)."""

    name = "_test_tiny_train_net"
    blind = True

    def __init__(self, channels: int = 1, width: int = 8):
        super().__init__(channels=channels, width=width)
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, channels, 3, padding=1),
        )

    def forward(self, y, sigma=None):
        return y - self.net(y)


class TinySigmaNet(Denoiser):
    """σ-conditioned tiny denoiser with a dropout layer (global-RNG use during training)."""

    name = "_test_tiny_sigma_net"

    def __init__(self, width: int = 8):
        super().__init__(width=width)
        self.conv1 = nn.Conv2d(2, width, 3, padding=1)
        self.drop = nn.Dropout(0.1)
        self.conv2 = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, y, sigma):
        s = torch.as_tensor(sigma, dtype=y.dtype).reshape(-1, 1, 1, 1).expand_as(y)
        h = torch.relu(self.conv1(torch.cat([y, s.log()], 1)))
        return y - self.conv2(self.drop(h))


pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n=32, size=8, seed=0):
    """Simple images: random horizontal/vertical ramps and constant patches in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(-1, 1, size)
    a = torch.rand(n, 1, 1, 1, generator=g) * 2 - 1
    horizontal = (torch.rand(n, generator=g) < 0.5).view(n, 1, 1, 1)
    img = torch.where(horizontal, ramp.view(1, 1, 1, size), ramp.view(1, 1, size, 1))
    return (a * img).expand(n, 1, size, size).contiguous()


def _model(cls=TinyTrainNet, seed=0, **kw):
    torch.manual_seed(seed)
    return cls(**kw)


def _eval_loss(model, data):
    g = torch.Generator().manual_seed(123)
    sigma = torch.tensor([0.1, 0.3, 0.6, 1.0]).repeat_interleave(8)
    x = data[torch.arange(32) % data.shape[0]]
    noise = torch.randn(x.shape, generator=g)
    with torch.no_grad():
        y = x + sigma.view(-1, 1, 1, 1) * noise
        return (model(y, sigma) - x).square().mean().item()


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _equal_states(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_loss_falls_on_simple_data():
    data = _data()
    model = _model()
    before = _eval_loss(model, data)
    cfg = TrainConfig(steps=150, batch_size=16, lr=3e-3, ema=None, log_every=25)
    res = train(model, data, cfg, progress=False)
    assert isinstance(res, TrainResult) and res.steps == 150 and len(res.losses) == 150
    assert res.ema is None and res.model is model and not model.training
    after = _eval_loss(model, data)
    assert after < 0.5 * before, (before, after)
    first, last = sum(res.losses[:30]) / 30, sum(res.losses[-30:]) / 30
    assert last < 0.7 * first
    assert res.images_per_s > 0


def test_log_uniform_loss_is_the_error_relative_to_the_noise():
    """The first step's loss is mean ‖D(y) − x‖²/(d σ²) with σ log-uniform, drawn after the
    batch indices and before the noise from the one seeded generator."""
    from pydiffgen.diffusion.noise import sigma_log_uniform

    data, model = _data(), _model()
    cfg = TrainConfig(steps=1, batch_size=8, sigma_dist="log-uniform", sigma_min=0.05,
                      sigma_max=0.5, seed=3, ema=None)
    g = torch.Generator().manual_seed(3)
    x = data[torch.randint(data.shape[0], (8,), generator=g)]
    sigma = sigma_log_uniform(8, sigma_min=0.05, sigma_max=0.5, generator=g)
    y = x + sigma.view(-1, 1, 1, 1) * torch.randn(x.shape, generator=g)
    with torch.no_grad():
        expect = ((model(y) - x).square().flatten(1).mean(1) / sigma**2).mean().item()
    res = train(model, data, cfg, progress=False)
    assert res.losses[0] == pytest.approx(expect, rel=1e-5)


def test_edm_training_of_the_real_mlp_approaches_the_optimum():
    # 2-D toy data on the unit circle with the registered σ-conditioned MLP; the exact
    # optimum is the empirical denoiser (softmax-weighted mean of the training points)
    theta = torch.linspace(0, 2 * torch.pi, 65)[:-1]
    data = torch.stack([theta.cos(), theta.sin()], 1)  # [64, 2]
    g = torch.Generator().manual_seed(1)
    sigma = torch.tensor([0.1, 0.3, 0.5, 1.0]).repeat_interleave(64)
    x = data.repeat(4, 1)
    y = x + sigma[:, None] * torch.randn(x.shape, generator=g)

    def mse(D):
        with torch.no_grad():
            return (D(y, sigma) - x).square().mean().item()

    def optimum(y, s):
        logits = -((y[:, None] - data[None]) ** 2).sum(-1) / (2 * s[:, None] ** 2)
        return logits.softmax(1) @ data

    torch.manual_seed(0)
    model = pydiffgen.models.base.build("mlp", hidden=32, depth=2)
    excess_before = mse(model) - mse(optimum)
    res = train(model, data, TrainConfig(steps=200, batch_size=64, lr=3e-3, sigma_dist="edm"),
                progress=False)
    excess_after = mse(res.ema) - mse(optimum)
    assert 0 < excess_after < 0.5 * excess_before, (excess_before, excess_after)


def test_same_seed_same_weights_different_seed_differs():
    data = _data()
    cfg = TrainConfig(steps=15, batch_size=8, ema=0.9, lr_halve_every=5)
    r1 = train(_model(), data, cfg, progress=False)
    r2 = train(_model(), data, cfg, progress=False)
    assert _equal_states(_state(r1.model), _state(r2.model))
    assert _equal_states(_state(r1.ema), _state(r2.ema))
    assert r1.losses == r2.losses
    r3 = train(_model(), data, TrainConfig(steps=15, batch_size=8, ema=0.9, lr_halve_every=5,
                                           seed=1), progress=False)
    assert not _equal_states(_state(r1.model), _state(r3.model))
    assert r1.losses != r3.losses
    # EMA differs from the live weights but has moved away from the initial ones
    init = _state(_model())
    assert not _equal_states(_state(r1.ema), _state(r1.model))
    assert not _equal_states(_state(r1.ema), init)


def test_global_rng_is_left_alone():
    model, data = _model(TinySigmaNet), _data()
    torch.manual_seed(42)
    expect = torch.rand(3)
    torch.manual_seed(42)
    train(model, data, TrainConfig(steps=3, batch_size=4), progress=False)
    assert torch.equal(torch.rand(3), expect)


class _Kill(Exception):
    pass


@pytest.mark.parametrize(
    "cls,sigma_dist", [(TinyTrainNet, "kadkhodaie"), (TinySigmaNet, "edm"),
                       (TinyTrainNet, "log-uniform")]
)
def test_resume_after_kill_is_bitwise_identical(tmp_path, cls, sigma_dist):
    data = _data()
    k = 6
    cfg = TrainConfig(steps=2 * k, batch_size=8, checkpoint_every=k, lr_halve_every=4,
                      sigma_dist=sigma_dist, ema=0.9, grad_clip=0.5)
    straight = train(_model(cls), data, cfg, out_dir=tmp_path / "a", progress=False)

    def kill(step, loss, model):
        if step == k + 3:  # after the checkpoint at step k: steps k+1 … k+3 are lost
            raise _Kill

    with pytest.raises(_Kill):
        train(_model(cls), data, cfg, out_dir=tmp_path / "b", progress=False, callback=kill)
    assert json.loads((tmp_path / "b" / "checkpoint.json").read_text())["step"] == k
    assert not (tmp_path / "b" / "model.json").exists()

    seen = []
    resumed = train(_model(cls, seed=99), data, cfg, out_dir=tmp_path / "b", progress=False,
                    callback=lambda step, loss, m: seen.append(step))
    assert seen == list(range(k + 1, 2 * k + 1))  # only the missing steps were run
    assert resumed.losses == straight.losses
    assert _equal_states(_state(resumed.model), _state(straight.model))
    assert _equal_states(_state(resumed.ema), _state(straight.ema))
    # the final saved models agree too
    a = pydiffgen.load_model(tmp_path / "a")
    b = pydiffgen.load_model(tmp_path / "b")
    assert _equal_states(_state(a), _state(b))
    assert _equal_states(_state(a), _state(straight.ema))


def test_extending_steps_continues_the_same_run(tmp_path):
    data = _data()
    cfg = dict(batch_size=8, checkpoint_every=5, ema=None, lr_halve_every=3)
    straight = train(_model(), data, TrainConfig(steps=10, **cfg), progress=False)
    train(_model(), data, TrainConfig(steps=5, **cfg), out_dir=tmp_path, progress=False)
    longer = train(_model(), data, TrainConfig(steps=10, **cfg), out_dir=tmp_path,
                   progress=False)
    assert longer.losses == straight.losses
    assert _equal_states(_state(longer.model), _state(straight.model))
    # asking again for the same number of steps does nothing and returns the same result
    again = train(_model(seed=5), data, TrainConfig(steps=10, **cfg), out_dir=tmp_path,
                  progress=False)
    assert again.losses == straight.losses and again.images_per_s == 0.0
    assert _equal_states(_state(again.model), _state(straight.model))
    with pytest.raises(CheckpointError, match="beyond the requested"):
        train(_model(), data, TrainConfig(steps=4, **cfg), out_dir=tmp_path, progress=False)


def test_mismatched_config_refuses_to_resume(tmp_path):
    data = _data()
    cfg = TrainConfig(steps=4, batch_size=8)
    train(_model(), data, cfg, out_dir=tmp_path, progress=False)
    other = TrainConfig(steps=8, batch_size=8, lr=2e-3)
    with pytest.raises(CheckpointError, match=r"lr.*fresh out_dir.*resume=False"):
        train(_model(), data, other, out_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="different model"):
        train(_model(width=4), data, TrainConfig(steps=8, batch_size=8), out_dir=tmp_path,
              progress=False)
    # resume=False starts over and overwrites the checkpoint
    res = train(_model(), data, other, out_dir=tmp_path, progress=False, resume=False)
    assert res.steps == 8
    saved = json.loads((tmp_path / "checkpoint.json").read_text())
    assert saved["train_config"]["lr"] == 2e-3 and saved["step"] == 8


def test_checkpoint_files_and_torn_checkpoint(tmp_path, monkeypatch):
    data = _data()
    cfg = TrainConfig(steps=6, batch_size=4, checkpoint_every=3)
    train(_model(), data, cfg, out_dir=tmp_path, progress=False)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint.json", "checkpoint.safetensors", "model.json",
                     "model.safetensors"]  # nothing partial or temporary left behind
    info = json.loads((tmp_path / "checkpoint.json").read_text())
    assert info["step"] == 6 and len(info["losses"]) == 6
    assert all(isinstance(v, int) and 0 <= v < 256 for v in info["generator_state"])
    assert info["optimizer"]["param_groups"][0]["lr"] == 1e-3
    assert info["model_config"] == {"name": TinyTrainNet.name, "channels": 1, "width": 8}
    meta = json.loads((tmp_path / "model.json").read_text())["meta"]
    assert meta["weights"] == "ema" and meta["step"] == 6

    # a crash between writing the tensors and the JSON of a checkpoint loses nothing: the
    # rerun resumes from the newer, complete tensors file (issue 19 item 1)
    import pydiffgen.checkpoint as checkpoint

    def crash(*a, **k):
        raise _Kill

    monkeypatch.setattr(checkpoint, "write_json", crash)
    with pytest.raises(_Kill):
        train(_model(), data, TrainConfig(steps=9, batch_size=4, checkpoint_every=3),
              out_dir=tmp_path, progress=False)
    monkeypatch.undo()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert json.loads((tmp_path / "checkpoint.json").read_text())["step"] == 6
    seen = []
    train(_model(), data, TrainConfig(steps=9, batch_size=4, checkpoint_every=3),
          out_dir=tmp_path, progress=False, callback=lambda step, loss, m: seen.append(step))
    assert seen == []  # step 9's checkpoint was complete: nothing to redo
    assert json.loads((tmp_path / "checkpoint.json").read_text())["step"] == 9

    (tmp_path / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="checkpoint.json"):
        train(_model(), data, cfg, out_dir=tmp_path, progress=False)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(steps=0), "steps"),
        (dict(steps=1.5), "steps"),
        (dict(batch_size=0), "batch_size"),
        (dict(lr=0.0), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(lr_halve_every=0), "lr_halve_every"),
        (dict(sigma_dist="vp"), "sigma_dist"),
        (dict(sigma_max=-1.0), "sigma_max"),
        (dict(sigma_min=0.0), "sigma_min"),
        (dict(sigma_dist="log-uniform", sigma_min=2.0, sigma_max=1.0), "sigma_min"),
        (dict(P_std=0), "P_std"),
        (dict(sigma_data=0), "sigma_data"),
        (dict(ema=1.0), "ema"),
        (dict(ema=-0.1), "ema"),
        (dict(grad_clip=0), "grad_clip"),
        (dict(seed=-1), "seed"),
        (dict(seed=True), "seed"),
        (dict(checkpoint_every=0), "checkpoint_every"),
        (dict(device="gpu0"), "device"),
        (dict(autocast="yes"), "autocast"),
        (dict(log_every=0), "log_every"),
    ],
)
def test_config_validation(kwargs, match):
    base = dict(steps=10, batch_size=4)
    base.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**base)


def test_config_is_frozen_and_bad_arguments():
    cfg = TrainConfig(steps=2, batch_size=2, ema=None, grad_clip=None)
    with pytest.raises(AttributeError):
        cfg.steps = 3
    with pytest.raises(ConfigError, match="TrainConfig"):
        train(_model(), _data(), {"steps": 2}, progress=False)
    with pytest.raises(InputError, match="data"):
        train(_model(), [[1.0]], cfg, progress=False)
    with pytest.raises(InputError, match="NaN"):
        train(_model(), torch.full((4, 1, 8, 8), float("nan")), cfg, progress=False)
    assert pydiffgen.train is train


def test_train_the_real_default_unet(tmp_path):
    from pydiffgen.models.base import build

    torch.manual_seed(0)
    model = build("unet")  # the default σ-conditioned UNet with EDM preconditioning
    data = _data(n=8, size=8)
    init = _state(model)
    res = train(model, data, TrainConfig(steps=3, batch_size=4, sigma_dist="edm"),
                out_dir=tmp_path, progress=False)
    assert len(res.losses) == 3 and all(v == v and v < 100 for v in res.losses)
    assert not _equal_states(init, _state(model))
    loaded = pydiffgen.load_model(tmp_path)
    y, s = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 2.0])
    with torch.no_grad():
        torch.testing.assert_close(loaded(y, s), res.ema(y, s), rtol=0, atol=0)


@pytest.mark.gpu
def test_cuda_training_with_bf16_autocast_and_resume(tmp_path):
    data = _data()
    cfg = TrainConfig(steps=6, batch_size=8, device="cuda", checkpoint_every=3)
    res = train(_model(), data, cfg, out_dir=tmp_path, progress=False)
    assert len(res.losses) == 6 and all(v == v for v in res.losses)
    assert next(res.model.parameters()).device.type == "cuda"
    assert next(res.model.parameters()).dtype == torch.float32  # autocast leaves weights fp32
    loaded = pydiffgen.load_model(tmp_path, device="cuda")
    assert next(loaded.parameters()).device.type == "cuda"
    again = train(_model(), data, cfg, out_dir=tmp_path, progress=False)  # already complete
    assert again.losses == res.losses
