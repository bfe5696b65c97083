"""σ distributions, the Karras schedule and the denoising losses."""

import math

import pytest
import torch

from pydiffgen.diffusion.losses import blind_loss, denoising_loss, edm_loss, edm_weight
from pydiffgen.diffusion.noise import karras_sigmas, sigma_edm, sigma_kadkhodaie, sigma_log_uniform
from pydiffgen.errors import InputError


def test_karras_schedule_endpoints_and_monotone():
    t = karras_sigmas(18)
    assert t.shape == (19,) and t.dtype == torch.float64
    assert t[0].item() == 80.0 and t[-2].item() == 0.002 and t[-1].item() == 0.0
    assert bool((t[1:] < t[:-1]).all())
    # Karras et al. 2022, Eq. 5 at an interior point
    i, n, rho = 5, 18, 7.0
    expect = (80 ** (1 / rho) + i / (n - 1) * (0.002 ** (1 / rho) - 80 ** (1 / rho))) ** rho
    assert t[i].item() == pytest.approx(expect, rel=1e-12)
    t = karras_sigmas(4, sigma_min=0.1, sigma_max=10, rho=1.0)  # ρ = 1: linear
    torch.testing.assert_close(t, torch.tensor([10.0, 6.7, 3.4, 0.1, 0.0], dtype=torch.float64))
    assert karras_sigmas(1, sigma_max=3.0).tolist() == [3.0, 0.0]
    with pytest.raises(InputError):
        karras_sigmas(0)
    with pytest.raises(InputError):
        karras_sigmas(5, sigma_min=2.0, sigma_max=1.0)


def test_sigma_kadkhodaie_distribution():
    g = torch.Generator().manual_seed(0)
    s = sigma_kadkhodaie(200_000, sigma_max=2.0, generator=g)
    assert s.shape == (200_000,) and bool((s > 0).all()) and bool((s <= 2.0).all())
    # σ = 2U²: E σ = 2/3, P(σ < 0.5) = P(U < 1/2) = 1/2
    assert s.mean().item() == pytest.approx(2 / 3, abs=0.01)
    assert (s < 0.5).float().mean().item() == pytest.approx(0.5, abs=0.01)
    s2 = sigma_kadkhodaie(5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s2, s[:5])


def test_sigma_edm_lognormal():
    s = sigma_edm(200_000, generator=torch.Generator().manual_seed(1))
    assert s.log().mean().item() == pytest.approx(-1.2, abs=0.02)
    assert s.log().std().item() == pytest.approx(1.2, abs=0.02)


def test_sigma_log_uniform():
    s = sigma_log_uniform(200_000, sigma_min=0.02, sigma_max=2.0,
                          generator=torch.Generator().manual_seed(2))
    assert bool((s >= 0.02).all()) and bool((s <= 2.0).all())
    # ln σ uniform on [ln 0.02, ln 2]: each of the two decades holds half the draws
    assert (s < 0.2).float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert s.log().mean().item() == pytest.approx(math.log(0.2), abs=0.01)
    with pytest.raises(InputError, match="below"):
        sigma_log_uniform(3, sigma_min=1.0, sigma_max=1.0)


def test_edm_weight_formula():
    sigma = torch.tensor([0.1, 0.5, 2.0])
    expect = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
    torch.testing.assert_close(edm_weight(sigma), expect)
    # λ(σ)·c_out(σ)² = 1: the preconditioned network's target has unit weight
    c_out = sigma * 0.5 / (sigma**2 + 0.25).sqrt()
    torch.testing.assert_close(edm_weight(sigma) * c_out**2, torch.ones(3))


def test_blind_loss_equals_noise_prediction_loss():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 4, 4, generator=g)
    noise = torch.randn(8, 1, 4, 4, generator=g)
    sigma = torch.rand(8, generator=g) + 0.1
    w = torch.randn(16, 16, generator=g) * 0.1

    def net(y):  # any noise predictor
        return (y.flatten(1) @ w).reshape(y.shape)

    def f(y, s):  # the denoiser f(y) = y - net(y) (Kadkhodaie et al. 2024)
        return y - net(y)

    y = x + sigma.view(-1, 1, 1, 1) * noise
    noise_loss = (net(y) - sigma.view(-1, 1, 1, 1) * noise).square().mean()
    torch.testing.assert_close(blind_loss(f, x, sigma, noise), noise_loss)


def test_identity_denoiser_losses():
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(6, 10, generator=g), torch.randn(6, 10, generator=g)
    sigma = torch.tensor([0.1, 0.2, 0.5, 1.0, 2.0, 4.0])
    ident = lambda y, s: y
    per = sigma**2 * noise.square().mean(1)
    torch.testing.assert_close(denoising_loss(ident, x, sigma, noise), per.mean())
    torch.testing.assert_close(edm_loss(ident, x, sigma, noise), (edm_weight(sigma) * per).mean())
    assert math.isfinite(edm_loss(ident, x, sigma, noise).item())
