"""Training speed options (TrainConfig.channels_last / autocast_cpu / compile): same losses
as the default loop within rounding (channels-last, compile) or bf16 noise (autocast)."""

import pytest
import torch

from pydiffgen.errors import ConfigError
from pydiffgen.models import build
from pydiffgen.training import TrainConfig, train


def _data(n=64, size=8):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, size // 2, size // 2, generator=g)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear").clamp(-1, 1)


def _losses(steps=20, **options):
    torch.manual_seed(0)
    model = build("unet", width=8, levels=2)
    cfg = TrainConfig(steps=steps, batch_size=16, sigma_dist="edm", ema=None, seed=1,
                      checkpoint_every=None, **options)
    return torch.tensor(train(model, _data(), cfg, progress=False).losses), model


def test_channels_last_matches_default(one_thread):
    base, _ = _losses()
    cl, model = _losses(channels_last=True)
    assert model.F.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl, base, rtol=2e-3, atol=1e-5)


def test_autocast_cpu_trains_within_bf16_noise(one_thread):
    base, _ = _losses(steps=30)
    bf16, _ = _losses(steps=30, autocast_cpu=True)
    assert torch.isfinite(bf16).all()
    # bf16 forward: per-step losses within a few percent, the same downward trend
    assert float(((bf16 - base).abs() / base).median()) < 0.05
    assert bf16[-5:].mean() < bf16[:5].mean()


def test_speed_options_are_validated_and_omitted_from_checkpoints_when_off():
    with pytest.raises(ConfigError, match="TrainConfig.compile must be True or False"):
        TrainConfig(steps=1, batch_size=1, compile=1)
    with pytest.raises(ConfigError, match="TrainConfig.channels_last must be True or False"):
        TrainConfig(steps=1, batch_size=1, channels_last="yes")
    d = TrainConfig(steps=1, batch_size=1).to_dict()
    assert not {"compile", "channels_last", "autocast_cpu"} & set(d)
    assert TrainConfig(steps=1, batch_size=1, autocast_cpu=True).to_dict()["autocast_cpu"]


def test_resume_may_switch_channels_last(tmp_path, one_thread):
    torch.manual_seed(0)
    model = build("unet", width=8, levels=2)
    cfg = dict(batch_size=8, sigma_dist="edm", ema=None, seed=2, checkpoint_every=5)
    train(model, _data(), TrainConfig(steps=5, **cfg), out_dir=tmp_path, progress=False)
    res = train(model, _data(), TrainConfig(steps=8, channels_last=True, **cfg),
                out_dir=tmp_path, progress=False)
    assert res.steps == 8 and len(res.losses) == 8


@pytest.mark.slow
def test_compile_matches_default():
    base, _ = _losses(steps=6)
    compiled, _ = _losses(steps=6, compile=True)
    torch.testing.assert_close(compiled, base, rtol=2e-3, atol=1e-5)
