"""GaussianDenoiser: Bayes optimality on Gaussian data, rank deficiency, closed-form ODE."""

import math

import pytest
import torch

from pydiffgen.analysis import GaussianDenoiser, gaussian_moments
from pydiffgen.data import gaussian_params, load
from pydiffgen.diffusion.sampling import sample
from pydiffgen.errors import InputError


def bayes_optimal(y, mu, cov, sigma):
    """μ + Σ(Σ + σ²I)⁻¹(y − μ) by a linear solve (no eigendecomposition), float64."""
    d = mu.shape[0]
    flat = y.reshape(len(y), -1).double() - mu
    A = cov + sigma**2 * torch.eye(d, dtype=torch.float64)
    return (mu + (cov @ torch.linalg.solve(A, flat.T)).T).reshape(y.shape)


@pytest.mark.parametrize("sigma", [0.01, 0.2, 1.0, 30.0])
def test_true_params_give_the_bayes_optimal_denoiser(sigma):
    mu, cov = gaussian_params(6, channels=2, channel_corr=0.3)
    G = GaussianDenoiser.from_moments(mu, cov, shape=(2, 6, 6))
    x = load("gaussian", n=32, size=6, channels=2, channel_corr=0.3, seed=1)
    y = (x.double() + sigma * torch.randn(x.shape, dtype=torch.float64))
    ref = bayes_optimal(y, mu, cov, sigma)
    out = G(y, sigma)
    assert out.dtype == torch.float64 and out.shape == y.shape
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9 * max(1.0, sigma))
    W, b = G.weight(sigma)
    torch.testing.assert_close((y.reshape(32, -1) @ W.T + b).reshape(y.shape), ref,
                               rtol=1e-9, atol=1e-9 * max(1.0, sigma))


def test_fit_from_many_samples_approaches_the_true_optimum():
    mu, cov = gaussian_params(4)
    y = load("gaussian", n=64, size=4, seed=7) + 0.3 * torch.randn(64, 1, 4, 4)
    ref = bayes_optimal(y, mu, cov, 0.3).float()
    errors = []
    for n in (100, 1000, 20000):
        G = GaussianDenoiser.fit(load("gaussian", n=n, size=4, seed=0), chunk_size=333)
        errors.append(float((G(y, 0.3) - ref).pow(2).mean().sqrt()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.1 * errors[0] and errors[2] < 3e-3


def test_moments_are_chunk_invariant_and_match_torch_cov():
    x = torch.randn(257, 3, 2, 2) * 3 + 5
    m1, c1 = gaussian_moments(x, chunk_size=1, block=5)  # d = 12: ragged last block
    m2, c2 = gaussian_moments(x, chunk_size=1000, block=1)
    m3, c3 = gaussian_moments(x, chunk_size=100, block=100)
    ref = torch.cov(x.reshape(257, -1).double().T, correction=0)
    torch.testing.assert_close(c1, ref)
    torch.testing.assert_close(c2, ref)
    torch.testing.assert_close(c3, ref)
    torch.testing.assert_close(c1, c1.T, rtol=0, atol=1e-14)
    torch.testing.assert_close(m1, x.reshape(257, -1).double().mean(0))
    torch.testing.assert_close(m1, m2)


def test_per_sample_sigma_in_one_batch():
    G = GaussianDenoiser.fit(load("gaussian", n=500, size=4))
    y = torch.randn(5, 1, 4, 4)
    sig = torch.tensor([0.01, 0.1, 1.0, 10.0, 80.0])
    batched = G(y, sig)
    for i in range(5):
        torch.testing.assert_close(batched[i : i + 1], G(y[i : i + 1], float(sig[i])))
    # high noise: D_G -> μ; the shrinkage is monotone in σ
    assert float((batched[4].flatten().double() - G.mean).abs().max()) < 1e-3


def test_rank_deficient_covariance_projects_on_the_span():
    # N = 5 < d = 16: Σ has rank N − 1 = 4
    train = torch.randn(5, 1, 4, 4)
    G = GaussianDenoiser.fit(train)
    assert G.rank == 4
    assert int((G.eigenvalues == 0).sum()) == 12  # round-off eigenvalues set exactly to 0
    # training images are fixed points as σ → 0 ...
    torch.testing.assert_close(G(train, 1e-6), train, atol=1e-5, rtol=0)
    # ... but D_G is not the identity: it projects on μ + span(y_i − μ)
    y = torch.randn(3, 1, 4, 4)
    out = G(y, 1e-6).reshape(3, -1).double()
    Xc = train.reshape(5, -1).double() - G.mean
    Q = torch.linalg.svd(Xc, full_matrices=False).Vh[:4].T  # [16, 4] basis of the span
    proj = G.mean + ((y.reshape(3, -1).double() - G.mean) @ Q) @ Q.T
    torch.testing.assert_close(out, proj.float().double(), atol=1e-5, rtol=0)
    assert float((out - y.reshape(3, -1).double()).norm()) > 1.0  # far from identity
    # residual orthogonal to the span is removed at every σ
    W, _ = G.weight(0.5)
    null = torch.linalg.svd(Xc, full_matrices=True).Vh[4:]  # [12, 16] null-space rows
    assert float((W @ null.T).abs().max()) < 1e-10


def test_single_image_and_rank_truncation():
    one = torch.randn(1, 1, 3, 3)
    G = GaussianDenoiser.fit(one)
    assert G.rank == 0
    torch.testing.assert_close(G(torch.randn(4, 1, 3, 3), 0.1), one.expand(4, 1, 3, 3))
    x = load("gaussian", n=2000, size=4)
    full, top = GaussianDenoiser.fit(x), GaussianDenoiser.fit(x, rank=3)
    assert top.eigenvectors.shape == (16, 3)
    torch.testing.assert_close(top.eigenvalues, full.eigenvalues[:3])
    assert bool((full.eigenvalues[:-1] >= full.eigenvalues[1:]).all())  # descending


def test_closed_form_ode_matches_a_numerical_solver():
    G = GaussianDenoiser.fit(load("gaussian", n=300, size=4) * 2 + 0.1)
    heun = sample(G, 6, (1, 4, 4), method="heun", seed=3, steps=256, dtype=torch.float64)
    closed = G.sample(6, seed=3, dtype=torch.float64)
    # Heun stops at σ_min = 0.002 and jumps to σ = 0: a ~σ_min²/λ_min relative error
    assert float((heun - closed).abs().max()) < 1e-3
    # intermediate time: the ODE solution at σ_t, and composition of two flows
    xT = 80 * torch.randn(4, 1, 4, 4, dtype=torch.float64)
    mid = G.ode(xT, 80.0, 1.5)
    torch.testing.assert_close(G.ode(mid, 1.5, 0), G.ode(xT, 80.0, 0))
    torch.testing.assert_close(G.ode(xT, 80.0, 80.0), xT)


def test_ode_with_truncated_rank_shrinks_the_rest_by_sigma_ratio():
    G = GaussianDenoiser.fit(torch.randn(50, 8), rank=2)
    xT = torch.randn(3, 8, dtype=torch.float64) * 10
    x1 = G.ode(xT, 10.0, 1.0)
    U = G.eigenvectors
    rest = lambda v: (v - G.mean) - ((v - G.mean) @ U) @ U.T
    torch.testing.assert_close(rest(x1), rest(xT) * 0.1)


def test_errors_name_the_argument():
    G = GaussianDenoiser.fit(torch.randn(10, 4))
    with pytest.raises(InputError, match="y must hold d=4"):
        G(torch.randn(2, 5), 1.0)
    with pytest.raises(InputError, match="sigma must be positive"):
        G(torch.randn(2, 4), torch.tensor([1.0, -1.0]))
    with pytest.raises(InputError, match="rank must be <= d=4"):
        GaussianDenoiser.fit(torch.randn(10, 4), rank=5)
    with pytest.raises(InputError, match="cov must have shape"):
        GaussianDenoiser.from_moments(torch.zeros(3), torch.eye(4))
    with pytest.raises(InputError, match="train"):
        GaussianDenoiser.fit([[1.0]])
    bad = torch.randn(10, 4)
    bad[3, 2] = float("inf")
    with pytest.raises(InputError, match="train contains NaN or Inf"):
        GaussianDenoiser.fit(bad)
    bad[3, 2] = float("nan")
    with pytest.raises(InputError, match="train contains NaN or Inf"):
        GaussianDenoiser.fit(bad, chunk_size=3)
    assert math.isclose(float(G(torch.zeros(1, 4), 1e9).sub(G.mean.float()).abs().max()), 0,
                        abs_tol=1e-6)


@pytest.fixture
def one_thread():
    # tiny convolutions: one thread avoids OpenMP contention on a shared 2-core machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_trained_network_approaches_the_gaussian_denoiser(one_thread):
    from pydiffgen import models, training
    from pydiffgen.analysis import denoiser_distance

    mu, cov = gaussian_params(8)
    G = GaussianDenoiser.from_moments(mu, cov, shape=(1, 8, 8))
    net = models.build("unet", width=16, levels=2)
    held = load("gaussian", n=128, size=8, seed=1)
    sigmas = [0.2, 1.0]
    before = denoiser_distance(G, net, held, sigmas)["rmse"]
    config = training.TrainConfig(steps=200, batch_size=64, lr=2e-3, sigma_dist="edm",
                                  ema=None, checkpoint_every=None)
    training.train(net, load("gaussian", n=2000, size=8), config, progress=False)
    after = denoiser_distance(G, net, held, sigmas)["rmse"]
    for b, a in zip(before, after):
        assert a < 0.4 * b
        assert a < 0.06  # pixels have std 0.2: the net is within a few % of D_G
