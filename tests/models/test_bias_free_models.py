"""Bias-free blind denoisers: shapes, no additive constants, homogeneity, f(y) = J(y) y."""

import pytest
import torch

from pydiffgen.errors import InputError
from pydiffgen.models import BFCNN, BFBatchNorm2d, BiasFreeUNet


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def calibrated(model, channels, size, dtype=torch.float64):
    """A model in eval mode whose BF-BN layers hold non-trivial running stds and gains."""
    model = model.to(dtype)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BFBatchNorm2d):
                m.gain.uniform_(0.5, 2.0)
        model.train()
        for _ in range(3):
            model(3.0 * torch.rand(4, channels, size, size, dtype=dtype))
    return model.eval()


SMALL = [
    pytest.param(lambda c: BiasFreeUNet(channels=c, levels=2, width=8), id="bf_unet"),
    pytest.param(lambda c: BFCNN(channels=c, depth=5, width=8), id="bf_cnn"),
]


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("levels,expected", [(1, 0.37e6), (2, 1.8e6), (3, 7.66e6), (4, 31e6)])
def test_bf_unet_parameter_counts_match_paper(levels, expected):
    # Kadkhodaie et al. 2024: 0.37 / 1.8 / 7.7 (7.66) / 31 M parameters at width 64
    model = BiasFreeUNet(levels=levels, width=64)
    assert n_params(model) == pytest.approx(expected, rel=0.10)


def test_bf_unet_three_levels_structure():
    model = BiasFreeUNet()
    assert n_params(model) == pytest.approx(7.66e6, rel=0.01)
    widths = [block[0].out_channels for block in model.encoder]
    assert widths == [64, 128, 256]
    assert model.mid[0].out_channels == 512
    assert isinstance(model.pool, torch.nn.AvgPool2d)
    assert all(isinstance(up, torch.nn.ConvTranspose2d) for up in model.upsample)


def test_bf_cnn_parameter_count():
    model = BFCNN()
    assert n_params(model) == pytest.approx(0.7e6, rel=0.05)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 21


@pytest.mark.parametrize("channels", [1, 3, 5])
@pytest.mark.parametrize("hw", [(8, 8), (16, 24), (32, 8)])
def test_bf_unet_output_shapes(channels, hw):
    model = BiasFreeUNet(channels=channels, levels=3, width=4)
    y = torch.randn(2, channels, *hw)
    assert model(y).shape == y.shape
    assert model(y, 0.5).shape == y.shape


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("hw", [(7, 7), (9, 13)])
def test_bf_cnn_output_shapes_any_size(channels, hw):
    model = BFCNN(channels=channels, depth=4, width=6)
    y = torch.randn(3, channels, *hw)
    assert model(y).shape == y.shape


def test_bf_unet_rejects_bad_inputs():
    model = BiasFreeUNet(channels=1, levels=3, width=4)
    with pytest.raises(InputError, match="multiples of 8"):
        model(torch.randn(1, 1, 12, 16))
    with pytest.raises(InputError, match="channels"):
        model(torch.randn(1, 3, 16, 16))
    with pytest.raises(InputError, match="4 dimensions"):
        model(torch.randn(16, 16))
    with pytest.raises(InputError):
        model(torch.randn(1, 1, 16, 16), float("nan"))  # σ is ignored but must be sane
    with pytest.raises(InputError):
        model(torch.randn(1, 1, 16, 16), -1.0)


@pytest.mark.parametrize("make", SMALL)
def test_blind_models_ignore_sigma(make):
    model = calibrated(make(1), 1, 8)
    y = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    out = model(y)
    torch.testing.assert_close(model(y, 0.1), out, rtol=0, atol=0)
    torch.testing.assert_close(model(y, torch.tensor([3.0, 0.2])), out, rtol=0, atol=0)
    assert type(model).blind


# --------------------------------------------------------------------------- bias-free


@pytest.mark.parametrize("make", SMALL)
def test_no_bias_parameters(make):
    model = make(3)
    for name, _ in model.named_parameters():
        assert "bias" not in name, name
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            assert m.bias is None
        assert not isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm, torch.nn.Linear))


@pytest.mark.parametrize("make", SMALL)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_zero_maps_to_zero(make, mode):
    model = calibrated(make(2), 2, 8)
    model.train(mode == "train")
    out = model(torch.zeros(3, 2, 8, 8, dtype=torch.float64))
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("make", SMALL)
@pytest.mark.parametrize("alpha", [0.5, 3.0])
def test_positive_homogeneity_in_eval(make, alpha):
    model = calibrated(make(2), 2, 8)
    y = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    f_y = model(y)
    assert f_y.abs().max() > 0.1  # not a trivial map
    torch.testing.assert_close(model(alpha * y), alpha * f_y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: BiasFreeUNet(channels=1, levels=3, width=4), id="bf_unet"),
        pytest.param(lambda: BFCNN(channels=1, depth=5, width=6), id="bf_cnn"),
    ],
)
def test_jacobian_identity_f_equals_J_y(make):
    # Kadkhodaie et al. 2024: a bias-free ReLU network satisfies f(y) = ∇f(y) y exactly
    model = calibrated(make(), 1, 16)
    y = torch.randn(1, 16, 16, dtype=torch.float64)  # one image [C, H, W]

    def f(v):  # [d] -> [d]
        return model(v.view(1, 1, 16, 16)).reshape(-1)

    v = y.reshape(-1)
    J = torch.func.jacrev(f)(v)  # [d, d]
    assert J.shape == (256, 256)
    torch.testing.assert_close(J @ v, f(v), rtol=1e-10, atol=1e-10)
    # ...and the Jacobian is not the identity (the net is doing something)
    assert (J - torch.eye(256, dtype=J.dtype)).abs().max() > 1e-3


# --------------------------------------------------------------------------- BF batch norm


def test_bf_batchnorm_keeps_the_mean_and_divides_by_batch_std():
    bn = BFBatchNorm2d(2).double()
    with torch.no_grad():
        bn.gain.copy_(torch.tensor([1.0, 3.0]))
    x = 5.0 + 0.1 * torch.randn(8, 2, 4, 4, dtype=torch.float64)
    out = bn.train()(x)
    std = torch.sqrt(x.var(dim=(0, 2, 3), unbiased=False) + bn.eps)  # [C]
    expected = x / std.view(1, -1, 1, 1) * bn.gain.view(1, -1, 1, 1)
    torch.testing.assert_close(out, expected)
    assert out.mean() > 10  # no mean subtraction: 5 / 0.1 ≫ 0
    assert not any("bias" in name for name, _ in bn.named_parameters())
    # running estimate moves towards the batch std
    torch.testing.assert_close(bn.running_std, 0.9 + 0.1 * std.detach())


def test_bf_batchnorm_uses_running_std_in_eval():
    bn = BFBatchNorm2d(3)
    with torch.no_grad():
        bn.running_std.copy_(torch.tensor([2.0, 4.0, 0.5]))
        bn.gain.copy_(torch.tensor([1.0, 2.0, 3.0]))
    bn.eval()
    x = torch.randn(2, 3, 5, 5) + 1.0
    out = bn(x)
    torch.testing.assert_close(out, x * torch.tensor([0.5, 0.5, 6.0]).view(1, 3, 1, 1))
    before = bn.running_std.clone()
    bn(100 * x)
    assert torch.equal(bn.running_std, before)  # eval does not update the estimate
    assert "running_std" in bn.state_dict()


def test_bf_batchnorm_train_mode_is_scale_invariant_up_to_eps():
    bn = BFBatchNorm2d(4).double().train()
    x = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    # dividing by the batch std: bn(7 x) = bn(x) up to the ε = 1e-5 inside the sqrt
    torch.testing.assert_close(bn(7.0 * x), bn(x), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("make", SMALL)
def test_backward_pass(make):
    model = make(3).train()
    y = torch.randn(4, 3, 8, 8)
    noise = torch.randn_like(y)
    loss = ((model(y + 0.3 * noise) - y) ** 2).sum()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_bf_unet_step_reduces_denoising_loss():
    model = BiasFreeUNet(channels=1, levels=2, width=8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(16, 1, 8, 8)
    noise = torch.randn_like(x)

    def loss():
        return ((model(x + 0.5 * noise) - x) ** 2).mean()

    first = loss().item()
    for _ in range(20):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    assert loss().item() < first
