"""Models run their GroupNorm → FiLM → SiLU and BF-BN → ReLU chains through the fused ops by
default and reach the same training losses as with eager blocks (fused=False)."""

import pytest
import torch

from pydiffgen.models import build
from pydiffgen.ops import blocks as OB
from pydiffgen.ops import dispatch
from pydiffgen.training import TrainConfig, train

TINY = {
    "unet": ({"width": 8, "levels": 2}, "edm"),
    "bf_unet": ({"width": 8, "levels": 1}, "kadkhodaie"),
    "bf_cnn": ({"width": 8, "depth": 4}, "kadkhodaie"),
}


def _data(n=64, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size // 2, size // 2, generator=g)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear").clamp(-1, 1)


@pytest.mark.parametrize("name", sorted(TINY))
def test_fused_and_eager_training_losses_agree(name, one_thread):
    kw, dist = TINY[name]
    data = _data()
    cfg = TrainConfig(steps=25, batch_size=16, sigma_dist=dist, ema=None, seed=3,
                      checkpoint_every=None)
    runs = {}
    for fused in (True, False):
        torch.manual_seed(0)
        model = build(name, **kw, fused=fused)
        runs[fused] = train(model, data, cfg, progress=False).losses
    fused_l, eager_l = torch.tensor(runs[True]), torch.tensor(runs[False])
    assert fused_l.shape == (25,)
    # same seed, same math: the curves differ only by float32 rounding of the fused ops
    torch.testing.assert_close(fused_l, eager_l, rtol=2e-3, atol=1e-5)
    assert fused_l[-5:].mean() < fused_l[:5].mean()  # and they do train


def test_models_call_the_fused_ops(monkeypatch):
    calls = {"gfs": 0, "bn": 0}
    gfs, bn = OB.groupnorm_film_silu, OB.bf_batchnorm_relu

    def count(key, fn):
        """Counts the calls that run a fused backend (not the eager ``reference``)."""
        def wrapped(*a, **k):
            chosen = dispatch.op(fn.__name__).select(a[0].device.type, k.get("backend"))
            calls[key] += chosen.name != "reference"
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(OB, "groupnorm_film_silu", count("gfs", gfs))
    monkeypatch.setattr(OB, "bf_batchnorm_relu", count("bn", bn))
    x = torch.randn(2, 1, 8, 8)
    unet = build("unet", width=8, levels=2)
    unet(x, 0.5)
    n_gfs = calls["gfs"]
    assert n_gfs == 2 * 6 + 1  # two per ResBlock (2 enc + 2 mid + 2 dec) + the output norm
    build("unet", width=8, levels=2, fused=False)(x, 0.5)
    assert calls["gfs"] == n_gfs

    cnn = build("bf_cnn", width=8, depth=5).train()
    cnn(x)
    assert calls["bn"] == 3
    cnn.eval()(x)  # eval mode: a per-channel scale, nothing fused
    assert calls["bn"] == 3
    monkeypatch.setenv("PYDIFFGEN_BACKEND", "reference")
    cnn.train()(x)
    unet(x, 0.5)
    assert calls["bn"] == 3 and calls["gfs"] == n_gfs


def test_hooked_relu_is_not_fused_away(monkeypatch):
    """A ReLU that carries a hook (e.g. recording or freezing activation patterns) runs."""
    seen = []
    cnn = build("bf_cnn", width=8, depth=4).train()
    eager = build("bf_cnn", width=8, depth=4, fused=False).train()
    eager.load_state_dict(cnn.state_dict())
    relus = [m for m in cnn.modules() if type(m) is torch.nn.ReLU]
    relus[1].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(cnn(x), eager(x), atol=1e-5, rtol=1e-5)
    assert len(seen) == 1


def test_fused_flag_is_checked_and_recorded():
    from pydiffgen.errors import InputError

    assert "fused" not in build("unet", width=8, levels=2).config
    assert build("bf_unet", width=8, levels=1, fused=False).config["fused"] is False
    with pytest.raises(InputError, match="fused must be True or False"):
        build("bf_cnn", width=8, depth=3, fused="yes")
    with pytest.raises(InputError, match="fused must be True or False"):
        build("unet", width=8, levels=2, fused=1)
