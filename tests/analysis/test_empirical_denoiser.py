"""EmpiricalDenoiser and its variants: samples are training images, the closed-form
Jacobian equals autograd, the δ-blur is the posterior mean of the blurred training set,
the smoothed estimator is what its docstring says."""

import math

import pytest
import torch

from pydiffgen.analysis import (
    BlurredEmpiricalDenoiser,
    EmpiricalDenoiser,
    SmoothedEmpiricalDenoiser,
)
from pydiffgen.data import toy2d
from pydiffgen.diffusion.sampling import sample
from pydiffgen.errors import InputError
from pydiffgen.metrics import memorization
from pydiffgen.ops import empirical_denoiser


def test_heun_samples_are_training_images():
    g = torch.Generator().manual_seed(0)
    train = torch.rand(32, 1, 8, 8, generator=g) * 2 - 1
    x = sample(EmpiricalDenoiser(train), 64, (1, 8, 8), method="heun", seed=0, steps=18)
    rep = memorization(x, train)
    assert rep.fraction >= 0.99
    assert rep.d1.max() < 1e-3


def test_forward_matches_op_and_moves_with_dtype():
    train = torch.rand(20, 1, 3, 3) * 2 - 1
    y = torch.randn(5, 1, 3, 3)
    den = EmpiricalDenoiser(train)
    torch.testing.assert_close(den(y, 0.5), empirical_denoiser(y, train, 0.5))
    den = den.to(torch.float64)
    assert den.train_set.dtype == torch.float64
    assert den(y.double(), torch.full((5,), 0.5)).dtype == torch.float64
    assert "train_set" not in den.state_dict()


@pytest.mark.parametrize("sigma", [0.2, 1.0])
def test_jacobian_matches_jacrev(sigma):
    g = torch.Generator().manual_seed(1)
    train = (torch.rand(40, 2, 3, generator=g) * 2 - 1).double()
    y = train[:3] + 0.3 * torch.randn(3, 2, 3, generator=g, dtype=torch.float64)
    den = EmpiricalDenoiser(train)
    J = den.jacobian(y, sigma)
    assert J.shape == (3, 6, 6)
    for b in range(3):
        Ja = torch.func.jacrev(lambda t: den(t[None], sigma)[0])(y[b]).reshape(6, 6)
        torch.testing.assert_close(J[b], Ja, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(J, J.transpose(1, 2))  # Cov_w / σ² is symmetric
    assert torch.linalg.eigvalsh(J).min() > -1e-12  # and PSD
    # D(y) = J·y is not true for D_M, but the optimal MSE identity tr J = tr Cov/σ² is
    w = den.weights(y, sigma)
    x = train.reshape(40, -1)
    cov_tr = (w * (x[None] - (w @ x)[:, None]).square().sum(-1)).sum(1)
    torch.testing.assert_close(J.diagonal(dim1=1, dim2=2).sum(1), cov_tr / sigma**2)


def test_blurred_is_posterior_mean_of_blurred_circle():
    train = toy2d("circle", n=16).double()  # [16, 2]
    delta, sigma = 0.15, 0.3
    g = torch.Generator().manual_seed(3)
    y = torch.randn(50, 2, generator=g, dtype=torch.float64)
    got = BlurredEmpiricalDenoiser(train, delta)(y, sigma)
    # x ~ (1/N) Σ N(y_i, δ²I), y = x + σn: component posterior ∝ N(y; y_i, (σ²+δ²)I),
    # E[x | y, i] = y_i + δ²/(σ²+δ²)·(y − y_i)
    var = sigma**2 + delta**2
    logp = -((y[:, None] - train[None]) ** 2).sum(-1) / (2 * var)
    w = torch.softmax(logp, dim=1)  # [50, 16]
    cond = train[None] + delta**2 / var * (y[:, None] - train[None])  # [50, 16, 2]
    want = (w[:, :, None] * cond).sum(1)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    # not simply D_M: the blur changes the answer
    assert (got - EmpiricalDenoiser(train)(y, sigma)).abs().max() > 1e-2


def test_blurred_jacobian_matches_jacrev():
    train = toy2d("circle", n=12).double()
    den = BlurredEmpiricalDenoiser(train, 0.2)
    y = torch.tensor([[0.3, -0.9], [1.2, 0.1]], dtype=torch.float64)
    J = den.jacobian(y, 0.25)
    for b in range(2):
        Ja = torch.func.jacrev(lambda t: den(t[None], 0.25)[0])(y[b])
        torch.testing.assert_close(J[b], Ja, atol=1e-10, rtol=1e-8)


def test_smoothed_estimator_and_determinism():
    g = torch.Generator().manual_seed(4)
    train = (torch.rand(30, 4, generator=g) * 2 - 1).double()
    y = torch.randn(6, 4, generator=g, dtype=torch.float64)
    den = SmoothedEmpiricalDenoiser(train, s=0.2, n_perturb=8, seed=7)
    eps = torch.randn((8, 4), generator=torch.Generator().manual_seed(7))
    want = torch.stack([empirical_denoiser(y + 0.2 * e.double(), train, 0.1) for e in eps]).mean(0)
    got = den(y, 0.1)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(den(y, 0.1), got, atol=0, rtol=0)  # fixed perturbations
    other = SmoothedEmpiricalDenoiser(train, s=0.2, n_perturb=8, seed=8)(y, 0.1)
    assert (other - got).abs().max() > 1e-4
    # averaged weights: the output is a convex combination of training points, off the set
    assert math.isfinite(float(got.sum()))


def test_bad_inputs():
    train = torch.rand(5, 3)
    with pytest.raises(InputError, match="delta"):
        BlurredEmpiricalDenoiser(train, 0.0)
    with pytest.raises(InputError, match="y must have shape"):
        BlurredEmpiricalDenoiser(train, 0.1)(torch.rand(2, 4), 1.0)
    with pytest.raises(InputError, match="s must be"):
        SmoothedEmpiricalDenoiser(train, -1.0)
    with pytest.raises(InputError, match="train is empty"):
        EmpiricalDenoiser(torch.empty(0, 3))
    with pytest.raises(InputError, match="sigma"):
        EmpiricalDenoiser(train).jacobian(torch.rand(2, 3), 0.0)


def test_variants_run_in_samplers():
    train = toy2d("circle", n=16)
    for den in (BlurredEmpiricalDenoiser(train, 0.1), SmoothedEmpiricalDenoiser(train, 0.05)):
        x = sample(den, 8, (2,), method="heun", seed=0, steps=8)
        assert x.shape == (8, 2) and torch.isfinite(x).all()
        assert den.training  # the sampler restored the module's mode
