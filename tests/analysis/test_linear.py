"""linear_distill, compare_weights, linearity_score and denoiser_distance."""

import math

import pytest
import torch

from pydiffgen.analysis import (
    EmpiricalDenoiser,
    GaussianDenoiser,
    LinearDenoiser,
    compare_weights,
    denoiser_distance,
    linear_distill,
    linearity_score,
    subspace_cosines,
)
from pydiffgen.data import load
from pydiffgen.errors import InputError


def random_linear(d=16, seed=0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(d, d, generator=gen) / math.sqrt(d)
    b = torch.randn(d, generator=gen) * 0.3 if bias else torch.zeros(d)
    side = math.isqrt(d)
    return LinearDenoiser(W, b, shape=(1, side, side))


@pytest.mark.parametrize("sigma", [0.01, 1.0, 40.0])
def test_lstsq_recovers_a_linear_denoiser_exactly(sigma):
    L = random_linear()
    x = torch.randn(100, 1, 4, 4) * 0.5
    D = linear_distill(L, x, sigma)
    assert D.weight.shape == (16, 16) and D.bias.shape == (16,)
    torch.testing.assert_close(D.weight, L.weight, atol=1e-5, rtol=0)
    torch.testing.assert_close(D.bias, L.bias, atol=1e-5 * max(1, sigma), rtol=0)


@pytest.mark.parametrize("sigma", [0.05, 2.0])
def test_adam_converges_to_the_least_squares_answer(sigma):
    # a non-linear target: Adam must reach the same best affine fit as lstsq
    G = GaussianDenoiser.fit(load("gaussian", n=400, size=4))
    target = lambda y, s: torch.tanh(2 * G(y, s))
    x = load("gaussian", n=300, size=4, seed=5)
    exact = linear_distill(target, x, sigma, method="lstsq")
    adam = linear_distill(target, x, sigma, method="adam", epochs=150)
    assert compare_weights(adam.weight, exact.weight)["rel_error"] < 0.03
    assert float((adam.bias - exact.bias).abs().max()) < 0.02
    y = x + sigma * torch.randn(x.shape)
    assert float((adam(y) - exact(y)).norm() / exact(y).norm()) < 0.02
    # and with a linear target both recover it
    L = random_linear(seed=1)
    rec = linear_distill(L, x, sigma, method="adam", epochs=100)
    assert compare_weights(rec.weight, L.weight)["rel_error"] < 0.02


def test_distilling_the_gaussian_denoiser_gives_its_weights():
    x = load("gaussian", n=3000, size=4)
    G = GaussianDenoiser.fit(x[:2000])
    W_G, b_G = G.weight(0.5)
    D = linear_distill(G, x[2000:], 0.5, n_noise=2)
    cmp = compare_weights(D.weight, W_G, k=4)
    assert cmp["rel_error"] < 1e-4 and cmp["mean_cosine"] > 0.9999
    torch.testing.assert_close(D.bias.double(), b_G, atol=1e-4, rtol=0)


def test_underdetermined_lstsq_uses_a_ridge_and_stays_finite():
    L = random_linear()
    x = torch.randn(5, 1, 4, 4)  # 5 noisy images < d + 1 = 17 unknowns per output
    D = linear_distill(L, x, 0.1)
    assert bool(torch.isfinite(D.weight).all())
    y = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(D(y, 0.1), L(y, 0.1), atol=1e-3, rtol=0)  # interpolates


def test_subspace_cosines_and_compare_weights():
    Q = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64)).Q
    A = Q @ torch.diag(torch.arange(10, 0, -1).double()) @ Q.T
    B = Q[:, [1, 0, 2, 9]] @ Q[:, [1, 0, 2, 9]].T * 5  # shares 3 of A's top-4 directions
    cos = subspace_cosines(A, B, 4)
    torch.testing.assert_close(cos[:3], torch.ones(3, dtype=torch.float64))
    assert float(cos[3]) < 1e-6
    assert compare_weights(A, A)["rel_error"] == 0
    with pytest.raises(InputError, match="same shape"):
        compare_weights(A, A[:3])


def test_linearity_score_of_linear_and_nonlinear_maps():
    x = load("digits")[:200]
    L = random_linear(d=64, bias=False)
    assert linearity_score(L, x, 1.0) == pytest.approx(1.0, abs=1e-6)
    assert linearity_score(L, x, 1.0, form="nmse") < 1e-5
    assert linearity_score(L, x, 0.3, alpha=0.3) == pytest.approx(1.0, abs=1e-6)
    # the empirical optimum at intermediate σ snaps to training images: far from linear,
    # while at high σ it returns ≈ the mean (cosine ≈ 1 by scale invariance)
    D_M = EmpiricalDenoiser(x[:100])
    held = x[100:]
    score = linearity_score(D_M, held, 0.3)
    assert score < 0.93
    assert linearity_score(D_M, held, 0.3, form="nmse") > 0.3
    assert linearity_score(D_M, held, 20.0) > 0.99
    assert linearity_score(D_M, held, 0.3) == score  # fixed pairs and noise


def test_denoiser_distance_definitions():
    x = torch.randn(20, 1, 4, 4)
    ident = lambda y, s: y
    half = lambda y, s: 0.5 * y
    out = denoiser_distance(ident, half, x, [0.1, 1.0, 10.0], seed=3)
    assert out["sigma"] == [0.1, 1.0, 10.0]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    for i, s in enumerate(out["sigma"]):
        y = (x + s * noise).reshape(20, -1).double()
        rmse = (0.5 * y).norm(dim=1).div(4).mean()
        assert out["rmse"][i] == pytest.approx(float(rmse), rel=1e-5)
        assert out["nmse"][i] == pytest.approx(0.5, rel=1e-6)
    same = denoiser_distance(ident, ident, x, 1.0)
    assert same["rmse"] == [0.0] and same["nmse"] == [0.0]


def test_argument_errors():
    x = torch.randn(6, 4)
    with pytest.raises(InputError, match="method must be"):
        linear_distill(lambda y, s: y, x, 1.0, method="sgd")
    with pytest.raises(InputError, match="alpha must be"):
        linearity_score(lambda y, s: y, x, 1.0, alpha=1.5)
    with pytest.raises(InputError, match="form must be"):
        linearity_score(lambda y, s: y, x, 1.0, form="l1")
    with pytest.raises(InputError, match="n_pairs must be <= 3"):
        linearity_score(lambda y, s: y, x, 1.0, n_pairs=4)
    with pytest.raises(InputError, match="sigmas must be positive"):
        denoiser_distance(lambda y, s: y, lambda y, s: y, x, [1.0, -2.0])
    with pytest.raises(InputError, match="denoiser returned"):
        linear_distill(lambda y, s: y[:, :2], x, 1.0)
    with pytest.raises(InputError, match="D2 must be callable"):
        denoiser_distance(lambda y, s: y, 3, x, [1.0])
