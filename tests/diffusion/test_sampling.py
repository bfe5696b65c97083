"""Samplers: exact behaviour on a Gaussian, reproducibility contract, argument checks."""

import math

import pytest
import torch

import pydiffgen
from pydiffgen.diffusion.noise import karras_sigmas
from pydiffgen.diffusion.sampling import (
    ddpm_ancestral,
    edm_euler,
    edm_heun,
    kadkhodaie_ascent,
    sample,
)
from pydiffgen.errors import InputError

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


class Gaussian:
    """Data N(μ, Σ) with Σ = Q diag(λ) Qᵀ and its exact optimal denoiser (Wiener filter)."""

    def __init__(self, lam, seed=0):
        g = torch.Generator().manual_seed(seed)
        d = lam.numel()
        self.lam = lam.to(F64)
        self.Q, _ = torch.linalg.qr(torch.randn(d, d, dtype=F64, generator=g))
        self.mu = 0.5 * torch.sin(torch.arange(d, dtype=F64) + 1.0)
        self.Sigma = self.Q @ torch.diag(self.lam) @ self.Q.T
        self.W = self.Q @ torch.diag(self.lam**-0.5) @ self.Q.T  # Σ^{-1/2}

    def __call__(self, y, sigma):
        # D(y; σ) = μ + Σ (Σ + σ² I)^{-1} (y − μ)
        c = (y.to(F64) - self.mu) @ self.Q  # [B, d]
        c = c * self.lam / (self.lam + sigma.to(F64)[:, None] ** 2)
        return (self.mu + c @ self.Q.T).to(y.dtype)

    def flow(self, x_T, sigma_T, sigma):
        """Closed-form PF-ODE solution from σ_T to σ (Li et al. 2024, §2)."""
        c = (x_T - self.mu) @ self.Q
        c = c * ((sigma**2 + self.lam) / (sigma_T**2 + self.lam)).sqrt()
        return self.mu + c @ self.Q.T

    def whitened_errors(self, x):
        """max |Σ^{-1/2}(mean − μ)| and max |Σ^{-1/2} C Σ^{-1/2} − I| of samples x [n, d]."""
        x = x.to(F64)
        m = (x.mean(0) - self.mu) @ self.W
        C = self.W @ torch.cov(x.T) @ self.W
        return m.abs().max().item(), (C - torch.eye(len(self.mu), dtype=F64)).abs().max().item()


@pytest.fixture(scope="module")
def gauss6():
    # d = 6, eigenvalues 0.03 … 1 in a random basis: a non-trivial covariance
    return Gaussian(torch.logspace(math.log10(0.03), 0, 6), seed=3)


# With n = 4000 the whitened mean has std 1/√n ≈ 0.016 per coordinate and the whitened
# covariance entries ≈ 0.016-0.022: 0.07 / 0.11 are > 4 standard errors, while the
# integrators' own bias at these step counts is ≈ 0.02-0.04 (and 0.15 for Heun at 18 steps).
@pytest.mark.parametrize(
    "method,kw",
    [("heun", {"steps": 50}), ("euler", {"steps": 200}), ("ddpm", {"steps": 512})],
)
def test_gaussian_samples_match_mean_and_covariance(gauss6, method, kw):
    x = sample(gauss6, 4000, (6,), method, seed=0, batch_size=4000, dtype=F64, **kw)
    assert x.shape == (4000, 6) and x.dtype == F64
    mean_err, cov_err = gauss6.whitened_errors(x)
    assert mean_err < 0.07, (method, mean_err)
    assert cov_err < 0.11, (method, cov_err)


def test_heun_default_steps_are_close_on_the_gaussian(gauss6):
    x = sample(gauss6, 2000, (6,), "heun", seed=1, batch_size=2000, dtype=F64)
    mean_err, cov_err = gauss6.whitened_errors(x)
    assert mean_err < 0.1 and cov_err < 0.3


def test_heun_converges_to_the_closed_form_flow_at_second_order(gauss6):
    g = torch.Generator().manual_seed(5)
    x_T = 80.0 * torch.randn(64, 6, dtype=F64, generator=g)
    errs = []
    for steps in (16, 32, 64):
        x = edm_heun(gauss6, 64, (6,), steps=steps, x_init=x_T, dtype=F64)
        # exact flow to σ_min, then the final (Euler) step to σ = 0 is D(·; σ_min)
        x_min = gauss6.flow(x_T, 80.0, 0.002)
        exact = gauss6(x_min, torch.full((64,), 0.002, dtype=F64))
        errs.append((x - exact).norm(dim=1).max().item())
    assert errs[2] < errs[1] < errs[0]
    assert errs[0] / errs[1] > 3 and errs[1] / errs[2] > 3  # ≈ 4 for a 2nd-order method
    # Euler is first order: halving the step roughly halves the error
    e1 = [
        (edm_euler(gauss6, 64, (6,), steps=s, x_init=x_T, dtype=F64)
         - gauss6(gauss6.flow(x_T, 80.0, 0.002), torch.full((64,), 0.002, dtype=F64)))
        .norm(dim=1).max().item()
        for s in (32, 64)
    ]
    assert 1.5 < e1[0] / e1[1] < 3


def test_kadkhodaie_concentrates_on_the_gaussian():
    # Algorithm 1 estimates the noise level from ‖f(y) − y‖, which assumes (as for images)
    # that most directions are noise-dominated: test it on a 64-d Gaussian with a
    # power-law spectrum λ_k = 0.5/k, the sampler's intended regime.
    d = 64
    gauss = Gaussian(0.5 / torch.arange(1, d + 1, dtype=F64), seed=1)
    x, traj = sample(gauss, 1000, (d,), "kadkhodaie", seed=0, batch_size=1000, dtype=F64,
                     sigma_inf=0.03, return_trajectory=True)
    assert x.shape == (1000, d)
    assert 40 < traj.n_steps.float().mean().item() < 150  # "≈ 100 iterations"
    mean_err = ((x.mean(0) - gauss.mu).norm() / math.sqrt(d)).item()
    assert mean_err < 0.02
    C = torch.cov(x.T)
    rel = ((C - gauss.Sigma).norm() / gauss.Sigma.norm()).item()
    assert rel < 0.25, rel
    ratio = torch.diag(gauss.Q.T @ C @ gauss.Q) / gauss.lam  # per-eigendirection variance
    assert 0.7 < ratio[:8].min().item() and ratio[:8].max().item() < 1.3
    # far from its starting noise N(0, σ0² = 4): the variance shrank by orders of magnitude
    assert x.var(0).mean().item() < 0.05 * 4


@pytest.mark.parametrize("method", ["kadkhodaie", "euler", "heun", "ddpm"])
def test_single_point_data_gives_that_point(method):
    mu = torch.tensor([0.3, -0.2, 0.7])
    x = sample(lambda y, s: mu.expand_as(y), 5, (3,), method, steps=8) if method != "kadkhodaie" \
        else sample(lambda y, s: mu.expand_as(y), 5, (3,), method)
    torch.testing.assert_close(x, mu.expand(5, 3))


class Spy:
    """A linear denoiser y ↦ a·y that records every call."""

    def __init__(self, a):
        self.a, self.inputs = a, []

    def __call__(self, y, sigma):
        assert not torch.is_grad_enabled()
        self.inputs.append(y.clone())
        return self.a * y


def _kadkhodaie_noise(traj, h0=0.01, beta=0.1):
    """z_t recovered from a trajectory: z_t = (x_t − x_{t−1} − h_t d_t)/γ_t, where running."""
    zs = []
    dim = traj.x[0, 0].numel()
    for t in range(traj.denoised.shape[0]):
        h = h0 * (t + 1) / (1 + h0 * t)
        d = traj.denoised[t] - traj.x[t]
        sigma_t = d.flatten(1).norm(dim=1) / math.sqrt(dim)
        gamma = math.sqrt((1 - beta * h) ** 2 - (1 - h) ** 2) * sigma_t
        zs.append((traj.x[t + 1] - traj.x[t] - h * d) / gamma[:, None])
    return torch.stack(zs)


def test_same_seed_same_x0_and_same_noise_across_denoisers():
    a, b = Spy(0.9), Spy(0.5)
    xa, ta = sample(a, 8, (16,), "kadkhodaie", seed=7, dtype=F64, return_trajectory=True)
    xb, tb = sample(b, 8, (16,), "kadkhodaie", seed=7, dtype=F64, return_trajectory=True)
    assert torch.equal(a.inputs[0], b.inputs[0])  # the same x0
    assert not torch.allclose(xa, xb)
    k = int(min(ta.n_steps.min(), tb.n_steps.min())) - 1  # steps where all are running
    assert k >= 5
    za, zb = _kadkhodaie_noise(ta)[:k], _kadkhodaie_noise(tb)[:k]
    torch.testing.assert_close(za, zb, rtol=1e-6, atol=1e-8)  # the same z_t
    assert abs(za.std().item() - 1) < 0.1  # and it is standard normal noise
    # x0 is N(m = 0, σ0² = 4)
    assert abs(a.inputs[0].std().item() - 2.0) < 0.3

    # different seed: different x0
    c = Spy(0.9)
    sample(c, 8, (16,), "kadkhodaie", seed=8, dtype=F64)
    assert not torch.allclose(c.inputs[0], a.inputs[0])


@pytest.mark.parametrize("method", ["euler", "heun", "ddpm"])
def test_same_seed_same_initial_noise_edm(method):
    a, b = Spy(0.9), Spy(0.5)
    xa = sample(a, 4, (1, 3, 3), method, seed=3, steps=6)
    xb = sample(b, 4, (1, 3, 3), method, seed=3, steps=6)
    assert torch.equal(a.inputs[0], b.inputs[0])
    assert a.inputs[0].std().item() > 20  # x_0 = σ_max·z, σ_max = 80
    assert not torch.allclose(xa, xb)
    assert torch.equal(xa, sample(Spy(0.9), 4, (1, 3, 3), method, seed=3, steps=6))
    assert not torch.equal(xa, sample(Spy(0.9), 4, (1, 3, 3), method, seed=4, steps=6))


def test_ddpm_same_seed_same_step_noise():
    a, b = Spy(0.9), Spy(0.5)
    _, ta = sample(a, 4, (5,), "ddpm", seed=2, steps=6, dtype=F64, return_trajectory=True)
    _, tb = sample(b, 4, (5,), "ddpm", seed=2, steps=6, dtype=F64, return_trajectory=True)
    t = karras_sigmas(6)

    def z(tr):
        out = []
        for i in range(5):  # the last step (to σ = 0) draws no noise
            r = (t[i + 1] / t[i]) ** 2
            x_hat = tr.denoised[i]
            out.append((tr.x[i + 1] - x_hat - r * (tr.x[i] - x_hat)) / (t[i + 1] * (1 - r).sqrt()))
        return torch.stack(out)

    torch.testing.assert_close(z(ta), z(tb))


def test_batches_are_independent():
    den = lambda y, s: 0.5 * y
    full = sample(den, 6, (4,), "kadkhodaie", seed=10, batch_size=4)
    second = sample(den, 2, (4,), "kadkhodaie", seed=11, batch_size=4)
    torch.testing.assert_close(full[4:], second, rtol=0, atol=0)
    assert torch.equal(full, sample(den, 6, (4,), "kadkhodaie", seed=10, batch_size=4))


def test_trajectory_shapes_and_public_functions():
    den = lambda y, s: 0.8 * y
    x, tr = sample(den, 5, (2, 4, 4), "heun", steps=7, return_trajectory=True, batch_size=3)
    assert tr.x.shape == (8, 5, 2, 4, 4) and tr.denoised.shape == (7, 5, 2, 4, 4)
    assert tr.sigma.shape == (8, 5) and tr.sigma[-1].abs().max() == 0
    assert torch.equal(tr.x[-1], x) and tr.n_steps.tolist() == [7] * 5
    x, tr = sample(den, 5, (3,), "kadkhodaie", return_trajectory=True, batch_size=2)
    T = tr.denoised.shape[0]
    assert tr.x.shape == (T + 1, 5, 3) and torch.equal(tr.x[-1], x)
    assert int(tr.n_steps.max()) == T
    g = torch.Generator().manual_seed(0)
    for fn in (kadkhodaie_ascent, edm_euler, edm_heun, ddpm_ancestral):
        assert fn(den, 2, (3,), generator=g).shape == (2, 3)
    # pydiffgen.sample is this function
    assert torch.equal(pydiffgen.sample(den, 2, 3, "euler"), sample(den, 2, (3,), "euler"))


def test_module_denoiser_runs_in_eval_mode_and_mode_is_restored():
    class M(torch.nn.Module):
        def forward(self, y, s):
            assert not self.training and not torch.is_grad_enabled()
            return 0.5 * y

    m = M().train()
    sample(m, 2, (3,), "heun", steps=3)
    sample(m, 2, (3,), "kadkhodaie")
    assert m.training


def test_max_steps_guard_warns_and_denoises():
    den = lambda y, s: 0.9 * y  # σ_t ≈ 0.1·‖x‖/√d stays above σ_∞ = 0.1 for long
    with pytest.warns(RuntimeWarning, match="max_steps"):
        x, tr = sample(den, 3, (8,), "kadkhodaie", max_steps=5, return_trajectory=True)
    assert tr.n_steps.tolist() == [6, 6, 6]  # 5 steps + the final denoising step
    torch.testing.assert_close(x, 0.9 * tr.x[-2])


def test_argument_errors():
    den = lambda y, s: y
    with pytest.raises(InputError, match="unknown sampling method"):
        sample(den, 2, (3,), "ode")
    with pytest.raises(InputError, match="unknown option"):
        sample(den, 2, (3,), "heun", h0=0.1)
    with pytest.raises(InputError, match="shape"):
        sample(den, 2, (3, 0), "heun")
    with pytest.raises(InputError):
        sample(den, 0, (3,), "heun")
    with pytest.raises(InputError, match="seed"):
        sample(den, 2, (3,), "heun", seed=-1)
    with pytest.raises(InputError, match="denoiser returned"):
        sample(lambda y, s: y[:, :2], 2, (3,), "euler")
    with pytest.raises(InputError, match="x_init"):
        edm_heun(den, 2, (3,), x_init=torch.zeros(3, 3))
    with pytest.raises(InputError, match="callable"):
        sample("nope", 2, (3,))


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["kadkhodaie", "heun", "ddpm"])
def test_cuda_sampling_is_reproducible(method):
    den = lambda y, s: 0.8 * y
    a = sample(den, 6, (1, 4, 4), method, device="cuda", seed=1, batch_size=4)
    b = sample(den, 6, (1, 4, 4), method, device="cuda", seed=1, batch_size=4)
    assert a.device.type == "cuda" and torch.equal(a, b)
