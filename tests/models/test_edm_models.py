"""σ-conditioned models (UNet, MLP): EDM preconditioning, σ handling, shapes, training."""

import math

import pytest
import torch
from torch import nn

from pydiffgen.errors import InputError
from pydiffgen.models import MLP, EDMPrecond, UNet

SIGMA_DATA = 0.5


def small_unet(channels=1, **kw):
    kw = {"width": 8, "levels": 2, **kw}
    return UNet(channels=channels, **kw)


def randomize(model):
    """Give every parameter a non-zero value (zero-initialised output layers included)."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


class ConstantF(nn.Module):
    """Stand-in for F that records its inputs and returns a constant (or its input)."""

    def __init__(self, value=None):
        super().__init__()
        self.value = value
        self.calls = []

    def forward(self, x, c_noise):
        self.calls.append((x.clone(), c_noise.clone()))
        return x.clone() if self.value is None else torch.full_like(x, self.value)


MODELS = [
    pytest.param(lambda: small_unet(channels=3), (3, 3, 8, 8), id="unet"),
    pytest.param(lambda: MLP(dim=3, hidden=16, depth=2), (5, 3), id="mlp"),
]


# --------------------------------------------------------------------------- EDM formulas


def test_edm_coefficients_hand_computed():
    sigma = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = EDMPrecond.coefficients(sigma, 0.5)
    # σ = 1: c_skip = .25/1.25, c_out = .5/√1.25, c_in = 1/√1.25, c_noise = 0
    # σ = .5: c_skip = 1/2, c_out = .25/√.5, c_in = 1/√.5, c_noise = ln(.5)/4
    # σ = 2: c_skip = .25/4.25, c_out = 1/√4.25, c_in = 1/√4.25, c_noise = ln(2)/4
    torch.testing.assert_close(c_skip, torch.tensor([0.2, 0.5, 0.25 / 4.25], dtype=torch.float64))
    torch.testing.assert_close(
        c_out, torch.tensor([0.4472135955, 0.3535533906, 0.4850712501], dtype=torch.float64)
    )
    torch.testing.assert_close(
        c_in, torch.tensor([0.8944271910, 1.4142135624, 0.4850712501], dtype=torch.float64)
    )
    torch.testing.assert_close(
        c_noise, torch.tensor([0.0, -0.1732867951, 0.1732867951], dtype=torch.float64)
    )
    # EDM §B.6: unit-variance network input; c_out²/σ_d² = σ²/(σ²+σ_d²) = 1 − c_skip
    torch.testing.assert_close(c_in**2 * (sigma**2 + 0.25), torch.ones_like(sigma))
    torch.testing.assert_close(c_skip + c_out**2 / 0.25, torch.ones_like(sigma))


@pytest.mark.parametrize("make,shape", MODELS)
def test_preconditioning_with_F_zero_one_identity(make, shape):
    model = make().double()
    y = torch.randn(*shape, dtype=torch.float64)
    B = shape[0]
    sigma = torch.linspace(0.3, 3.0, B, dtype=torch.float64)
    bshape = (B,) + (1,) * (len(shape) - 1)
    sd2 = SIGMA_DATA**2
    c_skip = (sd2 / (sigma**2 + sd2)).view(bshape)
    c_out = (sigma * SIGMA_DATA / (sigma**2 + sd2).sqrt()).view(bshape)
    c_in = (1 / (sigma**2 + sd2).sqrt()).view(bshape)

    model.F = ConstantF(0.0)  # D = c_skip y
    torch.testing.assert_close(model(y, sigma), c_skip * y)
    x_in, c_noise = model.F.calls[0]
    torch.testing.assert_close(x_in, c_in * y)  # F sees c_in y
    torch.testing.assert_close(c_noise, sigma.log() / 4)  # and c_noise = ln σ / 4

    model.F = ConstantF(1.0)  # D = c_skip y + c_out
    torch.testing.assert_close(model(y, sigma), c_skip * y + c_out)

    model.F = ConstantF(None)  # F = identity: D = (c_skip + c_out c_in) y
    torch.testing.assert_close(model(y, sigma), (c_skip + c_out * c_in) * y)


@pytest.mark.parametrize("make,shape", MODELS)
def test_small_sigma_returns_input(make, shape):
    model = randomize(make()).double()
    y = torch.randn(*shape, dtype=torch.float64)
    # σ → 0: c_skip → 1, c_out ≈ σ → 0, so D(y; σ) → y
    for sigma, tol in [(1e-3, 1e-2), (1e-6, 1e-5)]:
        D_y = model(y, sigma)
        assert (D_y - y).abs().max() < tol
    # ... while at σ = 1 the network does contribute
    assert (model(y, 1.0) - y).abs().max() > 1e-2


def test_unet_initial_output_is_c_skip_y():
    model = small_unet()  # zero-initialised output conv: F ≡ 0 at initialisation
    y = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(model(y, 1.0), 0.2 * y)


# --------------------------------------------------------------------------- σ handling


@pytest.mark.parametrize("make,shape", MODELS)
def test_sigma_float_0d_and_batch_tensor_agree(make, shape):
    model = randomize(make()).eval()
    y = torch.randn(*shape)
    B = shape[0]
    out = model(y, 0.7)
    torch.testing.assert_close(model(y, torch.tensor(0.7)), out, rtol=0, atol=0)
    torch.testing.assert_close(model(y, torch.full((B,), 0.7)), out, rtol=0, atol=0)
    torch.testing.assert_close(model(y, torch.tensor(0.7, dtype=torch.float64)), out)


@pytest.mark.parametrize("make,shape", MODELS)
def test_sigma_is_per_sample(make, shape):
    model = randomize(make()).eval()
    y = torch.randn(*shape)
    sigma = torch.linspace(0.1, 5.0, shape[0])
    out = model(y, sigma)
    for i in (0, shape[0] - 1):
        torch.testing.assert_close(out[i : i + 1], model(y[i : i + 1], sigma[i].item()))


@pytest.mark.parametrize("make,shape", MODELS)
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_sigma_raises(make, shape, bad):
    model = make()
    y = torch.randn(*shape)
    with pytest.raises(InputError, match="sigma"):
        model(y, bad)
    sigma = torch.ones(shape[0])
    sigma[-1] = bad
    with pytest.raises(InputError, match="sigma"):
        model(y, sigma)


@pytest.mark.parametrize("make,shape", MODELS)
def test_sigma_of_wrong_length_raises(make, shape):
    with pytest.raises(InputError, match="sigma"):
        make()(torch.randn(*shape), torch.ones(shape[0] + 1))


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("channels", [1, 3, 5])
@pytest.mark.parametrize("hw", [(8, 8), (16, 12), (4, 20)])
def test_unet_output_shapes(channels, hw):
    model = randomize(UNet(channels=channels, width=6, levels=3))  # 6: odd group count
    y = torch.randn(2, channels, *hw)
    assert model(y, 1.0).shape == y.shape


@pytest.mark.parametrize("kw", [{"blocks_per_level": 2}, {"levels": 1}, {"emb_dim": 12}])
def test_unet_variants(kw):
    model = small_unet(**kw)
    y = torch.randn(2, 1, 8, 8)
    assert model(y, 1.0).shape == y.shape


def test_unet_group_norms_use_valid_group_counts():
    model = UNet(width=12, levels=3)  # 12, 24, 48 channels; 96, 72, 36 after concatenation
    expected = {12: 12, 24: 24, 48: 24, 96: 32, 72: 24, 36: 18}  # min(32, C) lowered to divide C
    seen = set()
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            assert m.num_groups == expected[m.num_channels]
            seen.add(m.num_channels)
    assert seen == set(expected)


def test_unet_rejects_bad_images():
    model = small_unet(levels=3)
    with pytest.raises(InputError, match="multiples of 4"):
        model(torch.randn(1, 1, 6, 8), 1.0)
    with pytest.raises(InputError, match="channels"):
        model(torch.randn(1, 2, 8, 8), 1.0)
    with pytest.raises(InputError, match="4 dimensions"):
        model(torch.randn(8, 8), 1.0)


@pytest.mark.parametrize("dim", [1, 2, 7])
def test_mlp_output_shapes(dim):
    model = MLP(dim=dim, hidden=16, depth=3)
    assert model(torch.randn(9, dim), 0.5).shape == (9, dim)


def test_mlp_rejects_bad_points():
    model = MLP(dim=2)
    with pytest.raises(InputError, match="dim=2"):
        model(torch.randn(4, 3), 1.0)
    with pytest.raises(InputError, match="2 dimensions"):
        model(torch.randn(4, 2, 1), 1.0)


@pytest.mark.parametrize(
    "kw", [{"width": 0}, {"levels": 0}, {"dropout": 1.5}, {"sigma_data": -1.0}]
)
def test_unet_rejects_bad_config(kw):
    with pytest.raises(InputError):
        UNet(**kw)


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("make,shape", MODELS)
def test_backward_pass(make, shape):
    model = make().train()
    x = torch.randn(*shape)
    sigma = torch.rand(shape[0]) + 0.1
    y = x + sigma.view((-1,) + (1,) * (len(shape) - 1)) * torch.randn_like(x)
    loss = ((model(y, sigma) - x) ** 2).mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert sum(g.abs().sum() for g in grads.values()) > 0


def test_mlp_learns_a_point():
    # all data at one point x0: the optimal denoiser at small σ is ≈ x0
    model = MLP(dim=2, hidden=32, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x0 = torch.tensor([[0.6, -0.3]])
    for _ in range(150):
        sigma = torch.exp(torch.randn(64) * 1.2 - 1.2)  # EDM log-normal σ
        y = x0 + sigma[:, None] * torch.randn(64, 2)
        weight = 1 / EDMPrecond.coefficients(sigma, SIGMA_DATA)[1] ** 2  # λ(σ) = 1/c_out²
        loss = (weight[:, None] * (model(y, sigma) - x0) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    y = x0 + 0.3 * torch.randn(256, 2)
    err = (model(y, 0.3) - x0).norm(dim=1).mean()
    assert err < 0.5 * (y - x0).norm(dim=1).mean()


def test_dropout_active_only_in_training():
    model = randomize(small_unet(dropout=0.5))
    y = torch.randn(2, 1, 8, 8)
    model.eval()
    torch.testing.assert_close(model(y, 1.0), model(y, 1.0), rtol=0, atol=0)
    model.train()
    assert not torch.equal(model(y, 1.0), model(y, 1.0))


def test_default_unet_size():
    n = sum(p.numel() for p in UNet().parameters())
    assert 1.5e6 < n < 2.5e6
    assert math.isclose(UNet().sigma_data, 0.5)
