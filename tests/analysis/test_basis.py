"""pydiffgen.analysis.basis: known answers for the C^alpha slope fit, principal angles, disk
tangent spaces (exact tangent projection), the exact optimum of a ray and the Gaussian
optimum."""

import math

import pytest
import torch

from pydiffgen import data
from pydiffgen.analysis import GaussianDenoiser, basis
from pydiffgen.errors import InputError
from pydiffgen.models.base import Denoiser


def test_psnr_slope_recovers_a_planted_slope():
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(0, 30, 13)
    y = 0.62 * x + 4.0 + 0.05 * torch.randn(13, generator=g)
    fit = basis.psnr_slope(x, y)
    assert fit["points"] == 13 and abs(fit["slope"] - 0.62) < 0.01
    assert abs(fit["intercept"] - 4.0) < 0.2
    # a kinked curve: only the points inside fit_range decide the slope
    kinked = torch.where(x < 10, x, 10 + 0.25 * (x - 10))
    fit = basis.psnr_slope(x, kinked, fit_range=(10, 30))
    assert abs(fit["slope"] - 0.25) < 1e-9 and fit["points"] == 9
    with pytest.raises(InputError, match="at least 2"):
        basis.psnr_slope(x, y, fit_range=(31, 40))
    with pytest.raises(InputError, match="same length"):
        basis.psnr_slope(x, y[:3])
    assert basis.optimal_slope(3.0) == 0.75


def test_principal_angles_known_answers():
    e = torch.eye(6, dtype=torch.float64)
    mix = torch.tensor([[2.0, 1.0], [0.0, 3.0]], dtype=torch.float64)  # same span
    assert basis.principal_angles(e[:, :2], e[:, :2] @ mix).abs().max() < 1e-7
    assert torch.allclose(basis.principal_angles(e[:, :2], e[:, 2:4]),
                          torch.full((2,), math.pi / 2, dtype=torch.float64))
    theta = 0.3
    v = (math.cos(theta) * e[:, 0] + math.sin(theta) * e[:, 3])[:, None]
    ang = basis.principal_angles(torch.stack([e[:, :2], e[:, :2]]), torch.stack([v, v]))
    assert ang.shape == (2, 1) and torch.allclose(ang, torch.full((2, 1), theta,
                                                                  dtype=torch.float64))
    with pytest.raises(InputError, match="leading shape"):
        basis.principal_angles(e[:5, :2], e[:, :2])


def test_disk_tangent_space_matches_autograd():
    _, info = data.load("disks", n=3, size=16, seed=2, return_info=True)
    p = info["params"].double()
    T = basis.disk_tangent_space(p, 16)
    assert T.shape == (3, 256, 5)
    for i in range(3):
        J = torch.autograd.functional.jacobian(lambda q: data.render_disks(q[None], 16)
                                               .reshape(-1), p[i])
        assert (J - T[i]).abs().max() < 1e-6
        assert basis.principal_angles(J, T[i]).max() < 1e-5


def test_tangent_projection_has_zero_angles_and_random_subspaces_large():
    _, info = data.load("disks", n=3, size=16, seed=5, return_info=True)
    p = info["params"].double()
    x0 = data.render_disks(p, 16).float()
    T = basis.disk_tangent_space(p, 16)
    for i in range(3):
        exact = basis.TangentProjection(x0[i], T[i])
        a = basis.manifold_alignment(exact, x0[i : i + 1], T[i : i + 1], sigma=0.1, seed=3 + i)
        angles = torch.tensor(a["angles_deg"])
        assert angles.shape == (1, 5) and angles.max() < 0.1
        assert torch.allclose(torch.tensor(a["eigenvalues"]), torch.ones(1, 5), atol=1e-3)
        # 5-dimensional random subspaces of R^256 are nearly orthogonal to the tangent space
        assert torch.tensor(a["random_angles_deg"]).min() > 45
        # the projection keeps 5 of 256 noise dimensions: ‖P z‖² ~ χ²₅
        assert 0.05 < a["mse_over_sigma2"][0] < 25
        # a projection on another disk's tangent space is far from this one
        wrong = basis.TangentProjection(x0[i], T[(i + 1) % 3])
        b = basis.manifold_alignment(wrong, x0[i : i + 1], T[i : i + 1], sigma=0.1, seed=3)
        assert torch.tensor(b["angles_deg"]).max() > 30


class RayPosteriorMean(Denoiser):
    """The exact optimal denoiser of the ray {a·x₀ : a ~ U(lo, hi)}: D(y) = E[s | t]·u with
    u = x₀/‖x₀‖, t = ⟨y, u⟩ and s = a‖x₀‖ uniform on [lo‖x₀‖, hi‖x₀‖] (the noise
    orthogonal to u carries no information), E[s | t] the mean of N(t, σ²) truncated to
    that interval. Its MSE is E Var[s | t] ≤ σ²."""

    blind = True

    def __init__(self, x0, lo=0.1, hi=1.0):
        super().__init__()
        norm = float(x0.double().norm())
        self.u = (x0.double() / norm).reshape(-1)  # [d]
        self.lo, self.hi = lo * norm, hi * norm

    def forward(self, y, sigma):
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        t = y.double().reshape(len(y), -1) @ self.u  # [B]
        normal = torch.distributions.Normal(0.0, 1.0)
        a, b = (self.lo - t) / s, (self.hi - t) / s
        mass = (normal.cdf(b) - normal.cdf(a)).clamp_min(1e-300)
        mean = t + s * (normal.log_prob(a).exp() - normal.log_prob(b).exp()) / mass
        return (mean[:, None] * self.u).reshape(y.shape).to(y.dtype)


def test_ray_optimum_measures_one_direction_and_mse_sigma2():
    """The manifold analysis on the exact optimum of the ray data: top eigenvector the ray,
    MSE/σ² ≈ 1 (χ²₁ per image; a little below 1 where the scale's bounds inform it)."""
    x, info = data.load("ray", n=256, size=16, seed=0, return_info=True)
    D = RayPosteriorMean(info["direction"])
    tangent = info["direction"].reshape(1, -1, 1).double().expand(4, -1, -1)
    for i, sigma in enumerate((0.05, 0.4)):
        a = basis.manifold_alignment(D, x[:4], tangent, sigma, seed=i)
        assert max(max(v) for v in a["angles_deg"]) < 1
        y = basis.add_noise(x, sigma, 10 + i)
        err = ((D(y, sigma).double() - x.double()) ** 2).reshape(256, -1).sum(1) / sigma**2
        assert 0.75 < float(err.mean()) < 1.15


def test_gaussian_optimum_recovers_the_covariance_eigenvectors():
    size = 6
    mean, cov = data.gaussian_params(size, exponent=2.0)
    G = GaussianDenoiser.from_moments(mean, cov, shape=(1, size, size))
    x = data.load("gaussian", n=3, size=size, seed=1).double()
    sigma = 0.15
    y = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(0),
                                dtype=torch.float64)
    r = basis.gaussian_alignment(G, G, y, sigma, k_max=12)
    assert max(r["rel_error"]) < 1e-8
    assert r["angles_deg"], "the spectrum of a stationary Gaussian has gaps"
    for k, angles in r["angles_deg"].items():
        assert max(angles) < 1e-3, k
    assert torch.allclose(torch.tensor(r["eigenvalues"]),
                          torch.tensor(r["optimal_eigenvalues"]).expand(3, -1), atol=1e-9)
    assert abs(r["trace"][0] - r["optimal_trace"]) < 1e-8
    assert min(r["diagonality"]) > 1 - 1e-10
    assert torch.allclose(torch.tensor(r["shrinkage"]),
                          torch.tensor(r["optimal_shrinkage"]).expand(3, -1), atol=1e-9)
    assert all(min(v) > 1 - 1e-9 for v in r["overlap"].values())
    # the optimum of a different covariance (white: eigenvectors unrelated) is detected
    white = GaussianDenoiser.from_moments(mean, 0.04 * torch.eye(size * size, dtype=torch.float64),
                                          shape=(1, size, size))
    r = basis.gaussian_alignment(white, G, y, sigma, k_max=12)
    assert min(r["rel_error"]) > 0.1
    # ... while a linear map with another basis mixes the covariance eigenvectors
    Q = torch.linalg.qr(torch.randn(36, 36, generator=torch.Generator().manual_seed(1),
                                    dtype=torch.float64)).Q
    rotated = GaussianDenoiser.from_moments(mean, Q @ cov @ Q.T, shape=(1, size, size))
    r = basis.gaussian_alignment(rotated, G, y, sigma, k_max=12)
    assert max(r["diagonality"]) < 0.5
    assert max(max(v) for v in r["overlap"].values()) < 0.9


def test_spectral_gaps():
    assert basis.spectral_gaps([5.0, 5.0, 3.0, 2.0, 2.0, 1.0], k_max=10) == [2, 3, 5]
    assert basis.spectral_gaps([5.0, 5.0, 3.0, 2.0, 2.0, 1.0], k_max=2) == [2]
