"""Samplers: Kadkhodaie et al.'s stochastic ascent, EDM Euler/Heun, DDPM ancestral.

Every sampler takes any callable ``denoiser(y [B, *shape], sigma [B]) -> [B, *shape]``
(a trained model, or an analytic denoiser such as the Gaussian or empirical optimum),
runs under ``torch.no_grad()`` and puts an ``nn.Module`` in eval mode while it runs
(restoring its mode afterwards).

Every sampler also takes ``cond=`` (the condition of a conditional denoiser, batch 1 or
n; the denoiser is then called ``denoiser(y, sigma, cond)``), ``guidance=w``
(classifier-free guidance against ``denoiser.null_cond``, see ``diffusion.guidance``),
``x_init=`` (the first state [n, *shape], already scaled by the first σ, used as given)
and ``sigmas=`` (a decreasing σ schedule used as given instead of the sampler's own;
the EDM and DDPM samplers). With ``cond=None`` the denoiser is called ``denoiser(y,
sigma)`` exactly as before.

``sample(denoiser, n, shape, method)`` splits the n samples into batches and seeds batch
b's generator with ``seed + b``; within a batch all randomness (initial noise, then
per-step noise for the *whole* batch) comes from that generator in a fixed order. Hence
**two different denoisers sampled with the same seed start from the same x0 and see the
same noise z_t at every step** (the protocol of Kadkhodaie et al. 2024, §2), and a
batch's samples do not depend on the other batches.

Each method is also a public single-batch function taking ``generator=``:
``kadkhodaie_ascent``, ``edm_euler``, ``edm_heun``, ``ddpm_ancestral``.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from dataclasses import dataclass

import torch

from .._checks import check_positive_float, check_positive_int
from ..errors import InputError
from .guidance import check_guidance, expand_cond, guided, slice_cond, take_cond
from .noise import karras_sigmas

__all__ = [
    "Trajectory",
    "sample",
    "kadkhodaie_ascent",
    "edm_euler",
    "edm_heun",
    "ddpm_ancestral",
    "METHODS",
    "check_method",
]


@dataclass
class Trajectory:
    """The path a sampler took, T transitions for n samples.

    x:        [T + 1, n, *shape] states; x[0] the initial noise, x[T] the returned samples.
    denoised: [T, n, *shape] the denoiser output D(x[i], sigma[i]) at each step.
    sigma:    [T + 1, n] the noise level handed to the denoiser at x[i] (0 at the end).
    n_steps:  [n] number of transitions each sample actually took (Kadkhodaie stops per
              sample; later entries of a stopped sample repeat its final state, σ = 0).
    """

    x: torch.Tensor
    denoised: torch.Tensor
    sigma: torch.Tensor
    n_steps: torch.Tensor


class _Recorder:
    """Collects per-step states; a no-op unless a trajectory was asked for."""

    def __init__(self, enabled: bool, x0: torch.Tensor, sigma0: torch.Tensor):
        self.enabled = enabled
        if enabled:
            self.x, self.denoised, self.sigma = [x0.clone()], [], [sigma0.clone()]

    def step(self, denoised, x_next, sigma_next):
        if self.enabled:
            self.denoised.append(denoised.clone())
            self.x.append(x_next.clone())
            self.sigma.append(sigma_next.clone())

    def result(self, dtype, n_steps) -> Trajectory:
        return Trajectory(
            x=torch.stack(self.x).to(dtype),
            denoised=torch.stack(self.denoised).to(dtype),
            sigma=torch.stack(self.sigma).to(dtype),
            n_steps=n_steps,
        )


# ----------------------------------------------------------------------------------------
# Kadkhodaie et al. 2024 (arXiv 2310.02557), Algorithm 1: stochastic coarse-to-fine ascent
# ----------------------------------------------------------------------------------------


@torch.no_grad()
def kadkhodaie_ascent(
    denoiser,
    n: int,
    shape,
    *,
    h0: float = 0.01,
    beta: float = 0.1,
    sigma0: float = 2.0,
    sigma_inf: float = 0.1,
    m: float = 0.0,
    max_steps: int = 1000,
    generator: torch.Generator | None = None,
    device="cpu",
    dtype: torch.dtype = torch.float32,
    x_init: torch.Tensor | None = None,
    return_trajectory: bool = False,
    cond=None,
    guidance: float | None = None,
    sigmas=None,
):
    """Algorithm 1 of Kadkhodaie, Guth, Simoncelli & Mallat (ICLR 2024); ``[n, *shape]``.

    x0 ~ N(m, σ0² I); for t = 1, 2, ...:
        h_t  = h0·t / (1 + h0·(t − 1))              (growing step, the authors' code)
        d_t  = f(x_{t−1}) − x_{t−1}                  (f = denoiser)
        σ_t² = ‖d_t‖² / d                            (effective noise level, per sample)
        γ_t² = ((1 − β h_t)² − (1 − h_t)²) σ_t²
        x_t  = x_{t−1} + h_t d_t + γ_t z_t,  z_t ~ N(0, I)
    A sample stops at the first t with σ_t < σ_∞, and its last step is one full denoising
    step x = f(x_{t−1}) (= x_{t−1} + d_t) instead of the partial one. Samples still running
    after ``max_steps`` get that final step too, with a warning.

    Defaults: the paper's h0 = 0.01, β = 0.1 (β = 1 is deterministic ascent). The paper's
    [0, 1] images use m = 0.5, σ0 = 1, σ_∞ = 0.05; our images are in [-1, 1] (twice the
    range, centred on 0), hence m = 0, σ0 = 2, σ_∞ = 0.1.

    σ handed to the denoiser: blind denoisers ignore it, σ-conditioned ones need the
    current noise level, which Algorithm 1 only measures after the call. We pass σ0 at
    t = 1 and afterwards the level the algorithm predicts for x_t, (1 − β h_t)·σ_t
    (by construction the step shrinks the noise std from σ_t to (1 − β h_t)·σ_t). Feeding
    the measured σ_t keeps a σ-conditioned denoiser consistent with the algorithm's own
    noise estimate; a fixed schedule σ0·Π(1 − β h_s) lags behind the actual noise and
    collapses the samples onto the mean.

    Regime: σ_t = ‖d_t‖/√d measures the noise only when most directions are
    noise-dominated, as for images. On low-dimensional data whose variances are all
    comparable to σ_∞² it underestimates the noise, the run stops early and the samples
    keep extra variance (tests use a 64-d Gaussian with a power-law spectrum).

    Randomness: x0 first, then z_t for the whole batch at every step (also for samples
    that already stopped), all from ``generator``; so with equal seeds two denoisers get
    the same x0 and the same z_t sequence. The denoiser is called on running samples only.
    ``x_init`` [n, *shape] replaces x0 (the generator still draws it, so z_t is unchanged).
    ``cond`` (batch 1 or n) and ``guidance`` go with each sample to the denoiser. The
    ascent measures its own noise levels, so it takes no ``sigmas`` (InputError).
    """
    n, shape = _check_n_shape(n, shape)
    h0, beta, sigma0, sigma_inf, max_steps = _check_ascent(h0, beta, sigma0, sigma_inf, max_steps)
    if sigmas is not None:
        raise InputError("kadkhodaie ascent measures its own noise levels and takes no sigmas=; "
                         "use method 'euler', 'heun' or 'ddpm' for a given schedule")
    check_guidance(denoiser, cond, guidance)
    cond = expand_cond(cond, n)
    gen = _generator(generator, device)
    with _eval_mode(denoiser):
        x = _initial(x_init, n, shape, gen, device, dtype, sigma0, float(m))  # x0 ~ N(m, σ0² I)
        walk = _Ascent(x, torch.full((n,), sigma0, device=device, dtype=dtype), return_trajectory)
        t = 0
        while t < max_steps and walk.running():
            t += 1
            h = h0 * t / (1 + h0 * (t - 1))  # h_t, the growing step
            z = _randn(gen, n, shape, device, dtype)  # z_t for the whole batch
            _ascent_step(denoiser, walk, h, z, beta, sigma_inf, dtype, cond, guidance)
        if walk.running():
            _denoise_the_rest(denoiser, walk, sigma_inf, max_steps, dtype, cond, guidance)
    if return_trajectory:
        return walk.x, walk.rec.result(dtype, walk.n_steps)
    return walk.x


def _check_ascent(h0, beta, sigma0, sigma_inf, max_steps):
    """Algorithm 1's parameters, checked: h0 and β in (0, 1], σ0, σ_∞ > 0, max_steps ≥ 1."""
    h0 = check_positive_float(h0, "h0")
    beta = check_positive_float(beta, "beta")
    sigma0 = check_positive_float(sigma0, "sigma0")
    sigma_inf = check_positive_float(sigma_inf, "sigma_inf")
    max_steps = check_positive_int(max_steps, "max_steps")
    if h0 > 1 or beta > 1:
        raise InputError(f"h0 and beta must lie in (0, 1], got h0={h0}, beta={beta}")
    return h0, beta, sigma0, sigma_inf, max_steps


class _Ascent:
    """The per-sample state of the ascent: x [n, *shape], the σ handed to the denoiser
    [n], which samples still run [n], the transitions each took [n], and the recorder."""

    def __init__(self, x: torch.Tensor, sigma_in: torch.Tensor, record: bool):
        self.x, self.sigma_in = x, sigma_in
        self.active = torch.ones(len(x), dtype=torch.bool, device=x.device)
        self.n_steps = torch.zeros(len(x), dtype=torch.long, device=x.device)
        self.rec = _Recorder(record, x, sigma_in)

    def running(self) -> bool:
        return bool(self.active.any())

    def advance(self, idx, D_x, x_new, sigma_next) -> None:
        """Samples ``idx`` [A] move to ``x_new`` [A, *shape], where the denoiser will see
        ``sigma_next``; ``D_x`` [A, *shape] is what the denoiser returned for them."""
        denoised = self.x.clone() if self.rec.enabled else None
        self.x[idx] = x_new
        self.sigma_in[idx] = sigma_next
        self.n_steps[idx] += 1
        if self.rec.enabled:
            denoised[idx] = D_x
            self.rec.step(denoised, self.x, self.sigma_in)


def _ascent_step(denoiser, walk: _Ascent, h: float, z: torch.Tensor, beta: float,
                 sigma_inf: float, dtype, cond, guidance) -> None:
    """Step t of Algorithm 1 for the running samples, with h = h_t and z = z_t [n, *shape];
    a sample whose σ_t falls below σ_∞ takes the full denoising step x = f(x) and stops.
    ``cond`` [n, ...] (or None) is the condition of every sample."""
    idx = walk.active.nonzero().squeeze(1)  # [A]
    x_a = walk.x[idx]
    f = guided(denoiser, take_cond(cond, idx), guidance)
    D_x = _call(f, x_a, walk.sigma_in[idx], dtype)
    d = D_x - x_a  # d_t = f(x_{t-1}) - x_{t-1}
    sigma_t = d.flatten(1).norm(dim=1) / math.sqrt(math.prod(x_a.shape[1:]))  # ‖d_t‖/√d, [A]
    # γ_t² = ((1 − βh)² − (1 − h)²) σ_t²
    gamma = math.sqrt((1 - beta * h) ** 2 - (1 - h) ** 2) * sigma_t
    x_new = x_a + h * d + _bcast(gamma, x_a) * z[idx]  # x_t = x_{t-1} + h d_t + γ_t z_t
    stop = sigma_t < sigma_inf  # [A]
    x_new = torch.where(_bcast(stop, x_a), D_x, x_new)  # final full denoising step
    # the noise level the step leaves, (1 − βh)·σ_t, is what the denoiser sees next
    walk.advance(idx, D_x, x_new, torch.where(stop, 0.0, (1 - beta * h) * sigma_t))
    walk.active[idx[stop]] = False


def _denoise_the_rest(denoiser, walk: _Ascent, sigma_inf: float, max_steps: int,
                      dtype, cond, guidance) -> None:
    """The samples still running after ``max_steps`` take the final step x = f(x), with a
    warning."""
    idx = walk.active.nonzero().squeeze(1)
    warnings.warn(
        f"kadkhodaie_ascent: {idx.numel()} of {len(walk.x)} samples still had σ_t ≥ σ_∞ = "
        f"{sigma_inf} after max_steps = {max_steps}; they were denoised in one step. "
        "Raise max_steps or sigma_inf.",
        RuntimeWarning,
        stacklevel=3,  # past this helper and kadkhodaie_ascent
    )
    f = guided(denoiser, take_cond(cond, idx), guidance)
    D_x = _call(f, walk.x[idx], walk.sigma_in[idx], dtype)
    walk.advance(idx, D_x, D_x, 0.0)


# ----------------------------------------------------------------------------------------
# EDM deterministic samplers (Karras et al., NeurIPS 2022, Algorithms 1 and 2, S_churn = 0)
# ----------------------------------------------------------------------------------------


@torch.no_grad()
def edm_heun(
    denoiser,
    n: int,
    shape,
    *,
    steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    generator: torch.Generator | None = None,
    device="cpu",
    dtype: torch.dtype = torch.float32,
    x_init: torch.Tensor | None = None,
    return_trajectory: bool = False,
    second_order: bool = True,
    cuda_graph: bool = False,
    cond=None,
    guidance: float | None = None,
    sigmas=None,
):
    """EDM's deterministic probability-flow ODE sampler (Karras et al. 2022); ``[n, *shape]``.

    σ schedule: ``karras_sigmas(steps, sigma_min, sigma_max, rho)`` with σ_N = 0 (Eq. 5);
    x_0 = σ_0·z. dx/dσ = (x − D(x; σ))/σ (Eq. 3 with σ(t) = t); Euler steps with Heun's
    2nd-order correction except on the last step to σ = 0, where x_N = D(x_{N−1}; σ_{N−1}).
    ``2·steps − 1`` denoiser calls. Like NVlabs/edm, the ODE state is kept in float64;
    the denoiser sees ``dtype``. ``x_init`` [n, *shape] replaces x_0 = σ_0·z; ``sigmas``
    [N + 1] (decreasing, the last may be 0) replaces the Karras schedule (and steps,
    sigma_min, sigma_max, rho); ``cond`` / ``guidance`` go to the denoiser (module docs).
    ``cuda_graph=True`` (CUDA only) captures the denoiser call once as a CUDA graph and
    replays it every step (static shapes; removes the per-kernel launch cost that
    dominates small batches); a denoiser that cannot be captured runs eagerly, with a
    warning.
    """
    n, shape = _check_n_shape(n, shape)
    call = _maybe_graphed(guided(denoiser, expand_cond(cond, n), guidance), cuda_graph, device)
    gen = _generator(generator, device)
    t_steps = _schedule(sigmas, steps, sigma_min, sigma_max, rho, device)
    with _eval_mode(denoiser):
        x_next = _initial(x_init, n, shape, gen, device, torch.float64, t_steps[0])
        rec = _Recorder(return_trajectory, x_next, t_steps[0].expand(n))
        for t_cur, t_next in zip(t_steps[:-1], t_steps[1:], strict=True):
            x_cur = x_next
            # Euler step (Alg. 2, lines 7-8): d_i = (x_i − D(x_i; t_i)) / t_i
            denoised = _call(call, x_cur, t_cur.expand(n), dtype, out=torch.float64)
            d_cur = (x_cur - denoised) / t_cur
            x_next = x_cur + (t_next - t_cur) * d_cur
            # 2nd-order correction (Alg. 2, lines 9-11), skipped on the step to σ = 0
            if second_order and t_next > 0:
                denoised_next = _call(call, x_next, t_next.expand(n), dtype, out=torch.float64)
                d_prime = (x_next - denoised_next) / t_next
                x_next = x_cur + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
            rec.step(denoised, x_next, t_next.expand(n))
    x = x_next.to(dtype)
    if return_trajectory:
        n_steps = torch.full((n,), len(t_steps) - 1, dtype=torch.long, device=device)
        return x, rec.result(dtype, n_steps)
    return x


def edm_euler(denoiser, n: int, shape, **kw):
    """EDM's deterministic sampler without the Heun correction (``steps`` denoiser calls).

    Same arguments and schedule as ``edm_heun`` (Karras et al. 2022, Alg. 1 with a
    first-order step). First order: prefer more steps than Heun for the same accuracy.
    """
    if "second_order" in kw:
        raise InputError("edm_euler is first order by definition; use edm_heun for second_order")
    return edm_heun(denoiser, n, shape, second_order=False, **kw)


# Keep the documented signature visible to help() and to sample()'s keyword check.
edm_euler.__signature__ = inspect.Signature(
    [p for name, p in inspect.signature(edm_heun).parameters.items() if name != "second_order"]
)


# ----------------------------------------------------------------------------------------
# DDPM ancestral sampling, variance-exploding form
# ----------------------------------------------------------------------------------------


@torch.no_grad()
def ddpm_ancestral(
    denoiser,
    n: int,
    shape,
    *,
    steps: int = 256,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    generator: torch.Generator | None = None,
    device="cpu",
    dtype: torch.dtype = torch.float32,
    x_init: torch.Tensor | None = None,
    return_trajectory: bool = False,
    cuda_graph: bool = False,
    cond=None,
    guidance: float | None = None,
    sigmas=None,
):
    """Ancestral (stochastic) sampling with the DDPM posterior in VE form; ``[n, *shape]``.

    Same Karras σ schedule as ``edm_heun`` (σ_N = 0), x_0 = σ_0·z. From σ_i to σ_{i+1}
    the sample is drawn from the DDPM posterior q(x_{i+1} | x_i, x̂) (Ho et al. 2020,
    Eqs. 6-7, rewritten for y = x + σn) with x̂ = D(x_i; σ_i):

        x_{i+1} = x̂ + (σ_{i+1}²/σ_i²)(x_i − x̂) + σ_up z,  σ_up = σ_{i+1} √(1 − σ_{i+1}²/σ_i²).

    This is identical to the "ancestral Euler" split (k-diffusion, η = 1):
    σ_down = √(σ_{i+1}² − σ_up²) = σ_{i+1}²/σ_i and x_{i+1} = x_i + (σ_down − σ_i)(x_i − x̂)/σ_i
    + σ_up z. The last step (σ_N = 0) returns x̂. ``steps`` denoiser calls; stochastic
    samplers need more steps than Heun (default 256). ``cuda_graph``, ``x_init``,
    ``sigmas``, ``cond`` and ``guidance``: as in ``edm_heun``.
    """
    n, shape = _check_n_shape(n, shape)
    call = _maybe_graphed(guided(denoiser, expand_cond(cond, n), guidance), cuda_graph, device)
    gen = _generator(generator, device)
    t_steps = _schedule(sigmas, steps, sigma_min, sigma_max, rho, device)
    with _eval_mode(denoiser):
        x = _initial(x_init, n, shape, gen, device, torch.float64, t_steps[0])
        rec = _Recorder(return_trajectory, x, t_steps[0].expand(n))
        for t_cur, t_next in zip(t_steps[:-1], t_steps[1:], strict=True):
            denoised = _call(call, x, t_cur.expand(n), dtype, out=torch.float64)
            if t_next > 0:
                z = _randn(gen, n, shape, device, torch.float64)
                ratio = (t_next / t_cur) ** 2
                sigma_up = t_next * torch.sqrt(1 - ratio)
                # DDPM posterior mean and std in VE form (Ho et al. 2020, Eq. 7)
                x = denoised + ratio * (x - denoised) + sigma_up * z
            else:
                x = denoised
            rec.step(denoised, x, t_next.expand(n))
    out = x.to(dtype)
    if return_trajectory:
        n_steps = torch.full((n,), len(t_steps) - 1, dtype=torch.long, device=device)
        return out, rec.result(dtype, n_steps)
    return out


# ----------------------------------------------------------------------------------------
# Front door
# ----------------------------------------------------------------------------------------

METHODS = {
    "kadkhodaie": kadkhodaie_ascent,
    "euler": edm_euler,
    "heun": edm_heun,
    "ddpm": ddpm_ancestral,
}


def sample(
    denoiser,
    n: int,
    shape,
    method: str = "kadkhodaie",
    *,
    seed: int = 0,
    device="cpu",
    batch_size: int = 256,
    progress: bool = False,
    return_trajectory: bool = False,
    cond=None,
    x_init: torch.Tensor | None = None,
    **kw,
):
    """Draw n samples of ``shape`` (e.g. ``(1, 32, 32)``) from ``denoiser``; ``[n, *shape]``.

    method: "kadkhodaie" (``kadkhodaie_ascent``), "euler" / "heun" (``edm_euler`` /
    ``edm_heun``) or "ddpm" (``ddpm_ancestral``); ``**kw`` go to that function (h0, beta,
    sigma0, sigma_inf, m, max_steps / steps, sigma_min, sigma_max, rho / dtype, and
    ``guidance``, ``sigmas``). ``cond`` (batch 1 or n) and ``x_init`` [n, *shape] are cut
    into the batches with the samples. Batch b (of ``batch_size`` samples) uses a
    generator seeded with ``seed + b``, so the same seed gives two denoisers the same
    initial noise and step noise, and samples do not depend on the other batches. With
    ``return_trajectory=True`` returns ``(samples, Trajectory)``, trajectories padded in
    time with each sample's final state.
    """
    check_method(method, kw)
    if not callable(denoiser):
        raise InputError(
            f"denoiser must be callable as denoiser(y, sigma), got {type(denoiser).__name__}"
        )
    n, shape = _check_n_shape(n, shape)
    batch_size = check_positive_int(batch_size, "batch_size")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    fn = METHODS[method]
    device = torch.device(device)
    cond = expand_cond(cond, n)
    if x_init is not None:
        _check_x_init(x_init, n, shape)
    outs, trajs = [], []
    from tqdm.auto import tqdm

    with tqdm(total=n, disable=not progress, desc=f"sample ({method})", unit="img") as bar:
        for b, start in enumerate(range(0, n, batch_size)):
            nb = min(batch_size, n - start)
            gen = torch.Generator(device=device).manual_seed(seed + b)
            res = fn(denoiser, nb, shape, generator=gen, device=device,
                     return_trajectory=return_trajectory,
                     cond=slice_cond(cond, start, start + nb),
                     x_init=None if x_init is None else x_init[start:start + nb], **kw)
            if return_trajectory:
                outs.append(res[0])
                trajs.append(res[1])
            else:
                outs.append(res)
            bar.update(nb)
    x = torch.cat(outs)
    if not torch.isfinite(x).all():  # NaN weights or a diverging sampler: never a result
        bad = int((~torch.isfinite(x.reshape(n, -1))).any(1).sum())
        raise InputError(f"{bad} of {n} samples hold NaN or Inf: the denoiser's output is not "
                         "finite (check its weights) or the sampler diverged")
    if return_trajectory:
        return x, _cat_trajectories(trajs)
    return x


def check_method(method: str, options: dict) -> None:
    """Refuse an unknown sampling ``method`` or an ``options`` key its function does not
    take (what :func:`sample` would refuse, for a plan checked before any work)."""
    if method not in METHODS:
        raise InputError(f"unknown sampling method {method!r}; choose one of {', '.join(METHODS)}")
    allowed = set(inspect.signature(METHODS[method]).parameters) - {
        "denoiser", "n", "shape", "generator", "device", "x_init", "return_trajectory", "cond"
    }
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise InputError(
            f"unknown option(s) {unknown} for method {method!r}; accepted: {sorted(allowed)}"
        )


def _cat_trajectories(trajs: list[Trajectory]) -> Trajectory:
    T = max(tr.denoised.shape[0] for tr in trajs)

    def pad(t: torch.Tensor, length: int, fill=None):
        if t.shape[0] == length:
            return t
        last = t[-1:] if fill is None else torch.full_like(t[-1:], fill)
        return torch.cat([t, last.expand(length - t.shape[0], *t.shape[1:])])

    return Trajectory(
        x=torch.cat([pad(tr.x, T + 1) for tr in trajs], dim=1),
        denoised=torch.cat([pad(tr.denoised, T) for tr in trajs], dim=1),
        sigma=torch.cat([pad(tr.sigma, T + 1, 0.0) for tr in trajs], dim=1),
        n_steps=torch.cat([tr.n_steps for tr in trajs]),
    )


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------


def _check_n_shape(n, shape):
    n = check_positive_int(n, "n")
    if isinstance(shape, int):
        shape = (shape,)
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise InputError(f"shape must be a tuple of positive ints, got {shape!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise InputError(f"shape must be a non-empty tuple of positive ints, got {shape!r}")
    return n, shape


def _schedule(sigmas, steps, sigma_min, sigma_max, rho, device) -> torch.Tensor:
    """The σ's a sampler visits, float64 [N + 1]: ``sigmas`` as given (checked: 1-d, at
    least two, finite, strictly decreasing, positive but for a last 0), else Karras's."""
    if sigmas is None:
        return karras_sigmas(steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho,
                             device=device)
    try:
        t = torch.as_tensor(sigmas, dtype=torch.float64, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"sigmas must be a 1-d tensor of noise levels, got "
                         f"{type(sigmas).__name__}") from None
    if (t.ndim != 1 or len(t) < 2 or not torch.isfinite(t).all() or not (t[:-1] > 0).all()
            or t[-1] < 0 or not (t[1:] < t[:-1]).all()):
        raise InputError(f"sigmas must be a 1-d strictly decreasing schedule of at least two "
                         f"finite noise levels, positive but for a last 0; got "
                         f"{t.tolist() if t.numel() <= 8 else tuple(t.shape)}")
    return t


def _generator(generator, device):
    if generator is None:
        return torch.Generator(device=device).manual_seed(0)
    if torch.device(generator.device).type != torch.device(device).type:
        raise InputError(f"generator is on {generator.device} but device is {device}")
    return generator


def _initial(x_init, n, shape, gen, device, dtype, scale, shift=0.0):
    """x0 = shift + scale·z, z ~ N(0, I) [n, *shape] from ``gen``, or a copy of ``x_init``.

    z is drawn in float32 (whatever ``dtype``) and even when x_init is given, so the
    generator's later draws, and x0 itself, do not depend on those choices.
    """
    z = torch.randn((n, *shape), generator=gen, device=device, dtype=torch.float32)
    if x_init is None:
        return z.to(dtype) * scale + shift
    _check_x_init(x_init, n, shape)
    return x_init.to(device=device, dtype=dtype).clone()


def _check_x_init(x_init, n, shape) -> None:
    if not isinstance(x_init, torch.Tensor) or tuple(x_init.shape) != (n, *shape):
        got = tuple(x_init.shape) if isinstance(x_init, torch.Tensor) else type(x_init).__name__
        raise InputError(f"x_init must be a tensor of shape {(n, *shape)}, got {got}")


def _randn(gen, n, shape, device, dtype):
    # Always drawn in float32, so the noise does not depend on the working dtype.
    return torch.randn((n, *shape), generator=gen, device=device, dtype=torch.float32).to(dtype)


def _call(denoiser, x, sigma, dtype, out=None):
    D = denoiser(x.to(dtype), sigma.to(dtype))
    if not isinstance(D, torch.Tensor) or D.shape != x.shape:
        got = tuple(D.shape) if isinstance(D, torch.Tensor) else type(D).__name__
        raise InputError(f"denoiser returned {got} for an input of shape {tuple(x.shape)}")
    return D.to(out or x.dtype)


class _CudaGraphDenoiser:
    """``denoiser(x, σ)`` replayed from a captured CUDA graph, one capture per input
    (shape, dtype): static input buffers are filled, the graph replays, the output is
    copied out (the next replay overwrites it)."""

    def __init__(self, denoiser):
        self.denoiser = denoiser
        self.graphs: dict = {}
        self.failed = False

    def __call__(self, x, sigma):
        if self.failed:
            return self.denoiser(x, sigma)
        key = (tuple(x.shape), x.dtype, tuple(sigma.shape), sigma.dtype)
        if key not in self.graphs:
            try:
                self.graphs[key] = self._capture(x, sigma)
            except RuntimeError as err:
                self.failed = True
                torch.cuda.synchronize()
                warnings.warn(f"cuda_graph: the denoiser could not be captured as a CUDA graph "
                              f"({str(err).splitlines()[0]}); sampling runs eagerly",
                              stacklevel=3)
                return self.denoiser(x, sigma)
        graph, x_s, s_s, out = self.graphs[key]
        x_s.copy_(x)
        s_s.copy_(sigma)
        graph.replay()
        return out.clone()

    def _capture(self, x, sigma):
        x_s, s_s = x.clone(), sigma.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: lazy init, Triton compilation, autotuning
            for _ in range(2):
                self.denoiser(x_s, s_s)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.denoiser(x_s, s_s)
        return graph, x_s, s_s, out


def _maybe_graphed(denoiser, cuda_graph, device):
    if not isinstance(cuda_graph, bool):
        raise InputError(f"cuda_graph must be True or False, got {cuda_graph!r}")
    if not cuda_graph:
        return denoiser
    if torch.device(device).type != "cuda":
        raise InputError(f"cuda_graph=True needs a CUDA device, got device={device!r}")
    return _CudaGraphDenoiser(denoiser)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


@contextlib.contextmanager
def _eval_mode(denoiser):
    module = denoiser if isinstance(denoiser, torch.nn.Module) else None
    was_training = module is not None and module.training
    if was_training:
        module.eval()
    try:
        yield
    finally:
        if was_training:
            module.train()
