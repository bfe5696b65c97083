"""Jacobians, spectra, effective dimension and SURE against closed forms and each other."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from pydiffgen import models
from pydiffgen.analysis import (
    EmpiricalDenoiser,
    effective_dimension,
    jacobian,
    jacobian_spectrum,
    sure_mse,
)
from pydiffgen.errors import InputError

# many small ops: one thread is fastest for them and immune to OpenMP spin-waits on a busy
# 2-core machine (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_thread")


def _randomize_bn(model):
    """Non-trivial eval-mode BF-BN (running std and gain away from 1)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, models.BFBatchNorm2d):
                mod.running_std.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
                mod.gain.copy_(torch.rand(mod.num_features, generator=gen) + 0.5)
    return model


class LinearMap(nn.Module):
    """D(y) = A y (flattened), a denoiser with a known constant Jacobian."""

    def __init__(self, A, shape):
        super().__init__()
        self.A, self.shape = A, shape

    def forward(self, y, sigma):
        return (y.reshape(len(y), -1) @ self.A.T).reshape(y.shape)


def small_unet():
    return _randomize_bn(models.build("bf_unet", levels=2, width=6)).double()


def small_cnn():
    return _randomize_bn(models.build("bf_cnn", channels=2, depth=5, width=7)).double()


def test_jacobian_of_linear_map_is_the_map():
    A = torch.randn(15, 15, dtype=torch.float64)
    y = torch.randn(3, 1, 3, 5, dtype=torch.float64)
    J = jacobian(LinearMap(A, (1, 3, 5)), y, 0.3, chunk=4)
    assert J.shape == (3, 15, 15)
    torch.testing.assert_close(J, A.expand(3, 15, 15), rtol=0, atol=1e-14)


def test_jacobian_of_empirical_denoiser_is_its_closed_form():
    train = torch.randn(20, 1, 3, 4, dtype=torch.float64)
    y = train[:3] + 0.8 * torch.randn(3, 1, 3, 4, dtype=torch.float64)
    sigma = torch.tensor([0.5, 0.8, 1.3], dtype=torch.float64)
    D = EmpiricalDenoiser(train)
    torch.testing.assert_close(jacobian(D, y, sigma, chunk=5), D.jacobian(y, sigma),
                               rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("make, shape", [(small_unet, (3, 1, 12, 8)), (small_cnn, (2, 2, 7, 5))],
                         ids=["bf_unet", "bf_cnn"])
def test_frozen_and_func_agree_and_f_is_J_y(make, shape):
    model = make()
    model.train()  # jacobian evaluates in eval mode and restores the flag
    y = torch.randn(shape, dtype=torch.float64)
    J_frozen = jacobian(model, y, 0.4, method="frozen", chunk=37)
    J_func = jacobian(model, y, 0.4, method="func", chunk=29)
    assert model.training
    torch.testing.assert_close(J_frozen, J_func, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(jacobian(model, y, 0.4, chunk=37), J_frozen, rtol=0, atol=0)
    # Kadkhodaie et al. 2024: a bias-free ReLU network is homogeneous, f(y) = J(y) y
    with torch.no_grad():
        f_y = model.eval()(y, None).reshape(len(y), -1)
    torch.testing.assert_close(torch.einsum("bij,bj->bi", J_frozen, y.reshape(len(y), -1)),
                               f_y, rtol=1e-10, atol=1e-12)


def test_frozen_float32_matches_float64():
    model = small_unet()
    y = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    J64 = jacobian(model, y, 1.0)
    J32 = jacobian(model.float(), y.float(), 1.0)
    assert J32.dtype == torch.float32
    assert (J32.double() - J64).abs().max() < 1e-5 * J64.abs().max()


class BiasedCNN(models.BFCNN):
    """Declares piecewise_linear but has a bias: the frozen replay must notice."""

    name = ""

    def __init__(self):
        super().__init__(depth=3, width=4)
        self.net[0] = nn.Conv2d(1, 4, 3, padding=1, bias=True)
        nn.init.constant_(self.net[0].bias, 0.3)


class FunctionalReLU(nn.Module):
    piecewise_linear = True

    def forward(self, y, sigma):
        return torch.relu(y) * 2  # not an nn.ReLU module: invisible to the frozen path


def test_frozen_refuses_models_that_break_the_promise():
    y = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    with pytest.raises(InputError, match="piecewise_linear"):
        jacobian(BiasedCNN().double(), y, 1.0)
    with pytest.raises(InputError, match="piecewise_linear"):
        jacobian(FunctionalReLU(), y, 1.0)
    torch.testing.assert_close(  # func still right
        jacobian(FunctionalReLU(), y, 1.0, method="func"),
        torch.diag_embed(2.0 * (y.reshape(2, -1) > 0).double()))
    with pytest.raises(InputError, match="method='frozen'"):
        jacobian(LinearMap(torch.eye(36), None), y, 1.0, method="frozen")


def test_bad_inputs():
    model = small_cnn()
    y = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    with pytest.raises(InputError, match="sigma"):
        jacobian(model, y, 0.0)
    with pytest.raises(InputError, match="y"):
        jacobian(model, torch.full_like(y, math.nan), 1.0)
    with pytest.raises(InputError, match="method"):
        jacobian(model, y, 1.0, method="jacfwd")
    with pytest.raises(InputError, match="chunk"):
        jacobian(model, y, 1.0, chunk=0)
    with pytest.raises(InputError, match="callable"):
        jacobian("model", y, 1.0)
    with pytest.raises(InputError, match="k must be at most"):
        jacobian_spectrum(model, y, 1.0, k=51)
    with pytest.raises(InputError, match="probes"):
        effective_dimension(model, y, 1.0, probes=0)


def test_dense_spectrum_is_the_symmetric_part():
    model = small_unet()
    y = torch.randn(2, 1, 8, 4, dtype=torch.float64)
    spec = jacobian_spectrum(model, y, 0.5)
    J = jacobian(model, y, 0.5)
    S = (J + J.transpose(1, 2)) / 2
    V, w = spec.eigenvectors, spec.eigenvalues
    assert w.shape == (2, 32) and V.shape == (2, 32, 32)
    assert bool((w[:, :-1] >= w[:, 1:]).all())  # descending
    torch.testing.assert_close(V @ torch.diag_embed(w) @ V.transpose(1, 2), S)
    torch.testing.assert_close(spec.trace, J.diagonal(dim1=1, dim2=2).sum(-1))
    asym = (J - J.transpose(1, 2)).norm(dim=(1, 2)) / J.norm(dim=(1, 2))
    torch.testing.assert_close(spec.asymmetry, asym)
    assert spec.exact and spec.residuals is None
    with pytest.raises(InputError, match="symmetrize=False"):
        jacobian_spectrum(model, y, 0.5, symmetrize=False)


def test_empirical_denoiser_spectrum_unsymmetrized():
    train = torch.randn(12, 1, 4, 4, dtype=torch.float64)
    y = train[:2] + torch.randn(2, 1, 4, 4, dtype=torch.float64)
    D = EmpiricalDenoiser(train)
    spec = jacobian_spectrum(D, y, 2.0, symmetrize=False)
    w_ref = torch.linalg.eigvalsh(D.jacobian(y, 2.0)).flip(-1)
    torch.testing.assert_close(spec.eigenvalues, w_ref, rtol=1e-8, atol=1e-10)
    # Cov_w of 12 points has rank ≤ 11: the rest of the spectrum is zero
    assert spec.eigenvalues[:, 11:].abs().max() < 1e-10


@pytest.mark.parametrize("method, H", [("frozen", 12), ("func", 4)])
def test_matrix_free_topk_matches_dense(method, H):
    model = small_unet()
    with torch.no_grad():  # a larger residual spreads the spectrum (random init: J ≈ I)
        model.decoder[-1][-1].weight.mul_(30)
    y = torch.randn(2, 1, H, 8, dtype=torch.float64)
    dense = jacobian_spectrum(model, y, 0.5)
    top = jacobian_spectrum(model, y, 0.5, k=5, method=method, tol=1e-8, probes=64, seed=3)
    assert top.eigenvalues.shape == (2, 5) and top.eigenvectors.shape == (2, H * 8, 5)
    torch.testing.assert_close(top.eigenvalues, dense.eigenvalues[:, :5], rtol=1e-9, atol=0)
    # eigenvectors agree up to sign where the eigenvalues are separated
    cos = (top.eigenvectors * dense.eigenvectors[:, :, :5]).sum(1).abs()  # [B, 5]
    gaps = (dense.eigenvalues[:, :5] - dense.eigenvalues[:, 1:6]).abs()
    assert bool((cos[gaps > 1e-4] > 1 - 1e-6).all())
    assert not top.exact and bool((top.residuals < 1e-7).all())
    # trace and asymmetry estimated from 64 probes: within ten / thirty per cent
    torch.testing.assert_close(top.trace, dense.trace, rtol=0.1, atol=0)
    torch.testing.assert_close(top.asymmetry, dense.asymmetry, rtol=0.3, atol=0)


def test_matrix_free_without_probes_reports_nan_trace():
    A = torch.randn(40, 40, dtype=torch.float64)
    A = A @ A.T / 40
    lin = LinearMap(A, None)
    y = torch.randn(1, 1, 5, 8, dtype=torch.float64)
    spec = jacobian_spectrum(lin, y, 1.0, k=3, probes=0, tol=1e-10)
    torch.testing.assert_close(spec.eigenvalues[0], torch.linalg.eigvalsh(A).flip(0)[:3])
    assert bool(spec.trace.isnan().all() and spec.asymmetry.isnan().all())


def test_hutchinson_within_error_bars():
    A = torch.randn(50, 50, dtype=torch.float64) + 3 * torch.eye(50, dtype=torch.float64)
    y = torch.randn(4, 1, 5, 10, dtype=torch.float64)
    est, err = effective_dimension(LinearMap(A, None), y, 1.0, probes=64, seed=7)
    assert est.shape == err.shape == (4,) and bool((err > 0).all())
    assert bool(((est - A.trace()).abs() < 4 * err).all())
    # per-sample probes differ, and a fixed seed reproduces them
    assert len(set(est.tolist())) == 4
    torch.testing.assert_close(effective_dimension(LinearMap(A, None), y, 1.0, 64, seed=7)[0], est)


def test_hutchinson_on_network_matches_exact_trace():
    model = small_cnn()
    y = torch.randn(3, 2, 6, 5, dtype=torch.float64)
    exact = jacobian(model, y, 1.0).diagonal(dim1=1, dim2=2).sum(-1)
    est, err = effective_dimension(model, y, 1.0, probes=128)
    assert bool(((est - exact).abs() < 4 * err).all())


def test_sure_is_unbiased_for_a_linear_denoiser():
    # x ~ N(0, C) and the Wiener filter D = C (C + σ²I)⁻¹: the mean of SURE over many
    # noisy images matches the mean true per-pixel MSE (Stein 1981)
    gen = torch.Generator().manual_seed(0)
    d, n, sigma = 16, 4000, 0.7
    L = torch.randn(d, d, generator=gen, dtype=torch.float64) / 4
    C = L @ L.T
    W = C @ torch.linalg.inv(C + sigma**2 * torch.eye(d, dtype=torch.float64))
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) @ L.T
    y = (x + sigma * torch.randn(n, d, generator=gen, dtype=torch.float64)).reshape(n, 1, 4, 4)
    D = LinearMap(W, None)
    sure, err = sure_mse(D, y, sigma, probes=8)
    true = ((D(y, sigma).reshape(n, d) - x) ** 2).mean(1)
    diff = sure - true
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(n)
    # and on average equal to the exact risk σ² tr(W)/d + ‖(W − I) x‖²/d
    assert abs(float(sure.mean() - true.mean())) < 0.02 * float(true.mean())


def test_matrix_free_warns_when_not_converged():
    A = torch.diag(torch.linspace(1, 0, 60, dtype=torch.float64))
    y = torch.randn(1, 1, 6, 10, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        spec = jacobian_spectrum(LinearMap(A, None), y, 1.0, k=4, block=4, max_dim=8,
                                 max_iters=2, tol=1e-12, probes=0)
    assert spec.residuals.shape == (1, 4)


@pytest.mark.parametrize("bad", [lambda y, s: [1.0], lambda y, s: None,
                                 lambda y, s: np.zeros(tuple(y.shape)),
                                 lambda y, s: y[..., :2], lambda y, s: y.reshape(len(y), -1)])
def test_a_denoiser_that_does_not_return_a_tensor_of_y_shape_is_refused(bad):
    with pytest.raises(InputError, match="must return a tensor of y's shape"):
        jacobian(bad, torch.randn(2, 1, 4, 4), 0.5)
