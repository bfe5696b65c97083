"""Synthetic data with known structure: the ground truth that analysis code is checked on.

- ``gaussian``: a stationary Gaussian with power spectrum ∝ 1/|ω|^exponent; its exact
  mean and covariance come from :func:`gaussian_params`, so the optimal denoiser D_G is
  known (docs/science.md#gaussian-class).
- ``disks``: a 5-parameter manifold (docs/science.md#disks): optimum MSE ≈ 5σ²;
  :func:`render_disks` draws them from explicit parameters (tangent spaces).
- ``ray``: one image under positive rescalings, a 1-dimensional cone: optimum MSE ≈ σ².
- ``calpha``: two C^β backgrounds separated by a C^α contour (docs/science.md#calpha), optimal
  PSNR slope α/(α+1).
- :func:`toy2d`: 2-D point sets (the circle of Kaiser & Kollmann, docs/science.md#circle-toy).

All draws use a private ``torch.Generator`` seeded by ``seed``: the global RNG is untouched.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._checks import check_positive_float, check_positive_int
from ..errors import InputError
from .transforms import check_budget, from_unit

SPECTRA = ("powerlaw", "white")


def _generator(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an integer, got {seed!r}")
    return torch.Generator().manual_seed(seed)


def _spatial_spectrum(size: int, spectrum: str, exponent: float, std: float) -> torch.Tensor:
    """Power spectrum P [size, size] (FFT order, float64) with pixel variance std².

    powerlaw: P(ω) ∝ 1/|ω|^exponent over integer frequencies; the DC term, infinite in
    the formula, takes the value at |ω| = 1 so the mean brightness varies like the
    coarsest oscillation instead of dominating every image.
    """
    if spectrum not in SPECTRA:
        raise InputError(f"spectrum must be one of {', '.join(SPECTRA)}, got {spectrum!r}")
    if spectrum == "white":
        P = torch.ones(size, size, dtype=torch.float64)
    else:
        exponent = float(exponent)
        if not math.isfinite(exponent) or exponent < 0:
            raise InputError(f"exponent must be a finite number >= 0, got {exponent!r}")
        k = torch.fft.fftfreq(size, d=1.0 / size, dtype=torch.float64)  # integer frequencies
        omega = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
        omega[0, 0] = 1.0
        P = omega ** (-exponent)
    # the covariance kernel is ifft2(P), whose value at lag 0 is mean(P)
    return P * (std**2 / P.mean())


def _channel_cov(channels: int, channel_corr: float) -> torch.Tensor:
    """Equicorrelated channel covariance R [C, C] = (1 − ρ) I + ρ 11ᵀ."""
    rho = float(channel_corr)
    lo = -1.0 / (channels - 1) if channels > 1 else -1.0
    if not lo < rho < 1.0:
        raise InputError(
            f"channel_corr must lie in ({lo:g}, 1) for {channels} channels (positive "
            f"definite), got {channel_corr!r}"
        )
    R = torch.full((channels, channels), rho, dtype=torch.float64)
    R.fill_diagonal_(1.0)
    return R


def gaussian_params(size: int, channels: int = 1, exponent: float = 2.0, *,
                    spectrum: str = "powerlaw", std: float = 0.2, channel_corr: float = 0.0):
    """Exact mean [d] and covariance [d, d] (float64, d = C·size²) of ``load("gaussian")``.

    The spatial covariance is circulant (periodic boundary): Cov[p, q] = c(p − q mod size)
    with c = ifft2(P); channels are coupled by R (see ``channel_corr``), so
    cov = R ⊗ C_spatial in the ``[C, H, W]`` flattening order. Memory is d² doubles.
    """
    check_positive_int(size, "size")
    check_positive_int(channels, "channels")
    std = check_positive_float(std, "std")
    P = _spatial_spectrum(size, spectrum, exponent, std)
    c = torch.fft.ifft2(P).real  # [size, size] covariance at each lag
    rows = torch.arange(size).repeat_interleave(size)  # pixel row of each flat index
    cols = torch.arange(size).repeat(size)
    C_spatial = c[(rows[:, None] - rows[None, :]) % size, (cols[:, None] - cols[None, :]) % size]
    cov = torch.kron(_channel_cov(channels, channel_corr), C_spatial)
    return torch.zeros(channels * size * size, dtype=torch.float64), cov


def gaussian(*, n: int = 1000, size: int = 16, channels: int = 1, spectrum: str = "powerlaw",
             exponent: float = 2.0, std: float = 0.2, channel_corr: float = 0.0, seed: int = 0):
    """Samples ``[n, channels, size, size]`` of the stationary Gaussian of :func:`gaussian_params`.

    Values are not clipped: clipping would change the covariance that makes this data
    set useful. With the default ``std`` = 0.2 a pixel leaves [-1, 1] with probability
    ≈ 6e-7.
    """
    check_positive_int(n, "n")
    check_positive_int(size, "size")
    check_positive_int(channels, "channels")
    check_budget(n, channels * size * size, "gaussian")
    std = check_positive_float(std, "std")
    gen = _generator(seed)
    P = _spatial_spectrum(size, spectrum, exponent, std)
    R = _channel_cov(channels, channel_corr)
    z = torch.randn(n, channels, size, size, generator=gen, dtype=torch.float64)
    # filtering white noise by sqrt(P) gives covariance kernel ifft2(P) exactly
    x = torch.fft.ifft2(torch.fft.fft2(z) * P.sqrt()).real
    x = torch.einsum("ck,nkhw->nchw", torch.linalg.cholesky(R), x)  # channel covariance R
    return x.to(torch.float32).contiguous(), {"groups": None}


DISK_PARAMETERS = ("cx", "cy", "radius", "foreground", "background")


def _disk_unit(params: torch.Tensor, size: int) -> torch.Tensor:
    """Disk images [n, size, size] in [0, 1] from params [n, 5] (see :func:`disks`)."""
    cx, cy, r, fg, bg = params.unbind(1)
    grid = torch.arange(size, dtype=params.dtype, device=params.device)
    dist = torch.sqrt((grid[None, None, :] - cx[:, None, None]) ** 2
                      + (grid[None, :, None] - cy[:, None, None]) ** 2)  # [n, H, W]
    cover = (r[:, None, None] - dist + 0.5).clamp(0, 1)
    return bg[:, None, None] + (fg - bg)[:, None, None] * cover


def render_disks(params, size: int) -> torch.Tensor:
    """Disk images ``[n, 1, size, size]`` in [-1, 1] from explicit parameters.

    ``params`` [n, 5]: (cx, cy, radius, foreground, background) in pixel units and [0, 1]
    intensities, as in ``disks(...)[1]["params"]``. Computed in ``params``' dtype without
    clamping the result, so finite differences (or autograd) in float64 give the disk
    manifold's tangent vectors; ``disks`` returns the same images rounded to float32.
    """
    params = torch.as_tensor(params)
    if params.ndim != 2 or params.shape[1] != 5:
        raise InputError(f"params must have shape [n, 5] ({', '.join(DISK_PARAMETERS)}), "
                         f"got {tuple(params.shape)}")
    check_positive_int(size, "size", minimum=4)
    if not params.is_floating_point():
        params = params.to(torch.float64)
    return (_disk_unit(params, size) * 2 - 1)[:, None]


def disks(*, n: int = 1000, size: int = 32, seed: int = 0):
    """Antialiased disks ``[n, 1, size, size]``: a 5-dimensional image manifold.

    Parameters per image (``info["params"]`` float32 [n, 5], pixel units, intensities in
    [0, 1]): centre column cx, centre row cy, radius r ∈ [size/8, size/4] (the disk stays
    inside the image), foreground and background intensity ∈ [0, 1]. A pixel's value
    blends the two intensities by its coverage clamp(r − dist + ½, 0, 1): a one-pixel
    linear edge, so the image is a continuous, almost-everywhere differentiable function
    of the parameters (needed for the tangent-space analysis; :func:`render_disks`).
    """
    check_positive_int(n, "n")
    check_positive_int(size, "size", minimum=4)
    check_budget(n, size * size, "disks")
    gen = _generator(seed)
    u = torch.rand(n, 5, generator=gen, dtype=torch.float64)
    r = size / 8 + u[:, 2] * (size / 8)
    cx = r + u[:, 0] * (size - 1 - 2 * r)
    cy = r + u[:, 1] * (size - 1 - 2 * r)
    params = torch.stack([cx, cy, r, u[:, 3], u[:, 4]], dim=1)  # [n, 5] float64
    img = _disk_unit(params, size)
    info = {"groups": None, "params": params.to(torch.float32),
            "param_names": list(DISK_PARAMETERS)}
    return from_unit(img[:, None]), info


def ray(*, n: int = 1000, size: int = 32, min_scale: float = 0.1, seed: int = 0):
    """One image under positive rescalings ``[n, 1, size, size]``: a ray (docs/science.md#ray).

    The image x₀ is a disk (:func:`disks` with ``seed``), mean removed and scaled to max
    |x₀| = 1; image i is a_i·x₀ with a_i ~ U(min_scale, 1). The ray passes through the
    origin, so a homogeneous (bias-free) denoiser can represent its optimum, the
    projection on the line through x₀, whose MSE is σ² (one noise dimension out of d).
    ``info["scales"]`` float32 [n] holds a_i and ``info["direction"]`` x₀ [1, size, size].
    """
    check_positive_int(n, "n")
    check_positive_int(size, "size", minimum=4)
    check_budget(n, size * size, "ray")
    min_scale = check_positive_float(min_scale, "min_scale")
    if min_scale > 1:
        raise InputError(f"min_scale must be in (0, 1], got {min_scale!r}")
    x0 = disks(n=1, size=size, seed=seed)[0][0].to(torch.float64)  # [1, H, W]
    x0 = x0 - x0.mean()
    x0 = x0 / x0.abs().max().clamp_min(1e-12)
    a = min_scale + (1 - min_scale) * torch.rand(n, generator=_generator(seed + 1),
                                                 dtype=torch.float64)
    x = (a[:, None, None, None] * x0).to(torch.float32).contiguous()
    return x, {"groups": None, "scales": a.to(torch.float32), "direction": x0.to(torch.float32)}


def _inverse_frequency(shape: tuple[int, ...]) -> torch.Tensor:
    """1/(|f|·N) over FFT frequencies f (cycles/sample), DC set to its neighbour's value 1.

    Raised to the power α it is the |ω|^−α filter of Kadkhodaie et al.'s C^α generator.
    """
    size = shape[-1]
    f = torch.fft.fftfreq(size, dtype=torch.float64).abs()
    if len(shape) == 2:
        f = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    f.view(-1)[0] = 1.0 / size
    return 1.0 / (f * size)


def _rescale(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Per-image affine map of x [n, H, W] onto [lo, hi] ([n] each)."""
    mn = x.amin(dim=(1, 2), keepdim=True)
    mx = x.amax(dim=(1, 2), keepdim=True)
    unit = (x - mn) / (mx - mn).clamp_min(1e-12)
    return lo[:, None, None] + (hi - lo)[:, None, None] * unit


def calpha(*, n: int = 1000, size: int = 32, alpha: float = 2.0, beta: float | None = None,
           seed: int = 0):
    """C^α contour images ``[n, 1, size, size]`` (Kadkhodaie et al. 2024, docs/science.md#calpha).

    A horizontal-ish contour (row per column: uniform noise filtered by |ω|^−α) splits two
    backgrounds (uniform noise filtered by |ω|^−β, β = α unless given); one background is
    rescaled to [u, 1], the other to [0, u'] (u, u' ~ U(0, 1), which one is bright is a
    coin flip); the mask is blurred with a 2×2 box. ``info["contours"]`` int64 [n, size]
    gives the first row of the lower region in each column.
    """
    check_positive_int(n, "n")
    check_positive_int(size, "size", minimum=4)
    check_budget(n, size * size, "calpha")
    alpha = check_positive_float(alpha, "alpha")
    beta = alpha if beta is None else check_positive_float(beta, "beta")
    gen = _generator(seed)

    noise_1d = torch.rand(n, size, generator=gen, dtype=torch.float64) * 2 - 1
    contour = torch.fft.ifft(torch.fft.fft(noise_1d) * _inverse_frequency((size,)) ** alpha).real
    rows = (torch.round(contour * size) + size // 2).clamp(0, size).to(torch.int64)  # [n, W]

    filt = _inverse_frequency((size, size)) ** beta
    backgrounds = []
    for _ in range(2):
        noise = torch.rand(n, size, size, generator=gen, dtype=torch.float64) * 2 - 1
        backgrounds.append(torch.fft.ifft2(torch.fft.fft2(noise) * filt).real)
    u, u_prime, coin = torch.rand(3, n, generator=gen, dtype=torch.float64)
    first_bright = coin < 0.5
    one, zero = torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    b1 = _rescale(backgrounds[0], torch.where(first_bright, u, zero),
                  torch.where(first_bright, one, u_prime))
    b2 = _rescale(backgrounds[1], torch.where(first_bright, zero, u),
                  torch.where(first_bright, u_prime, one))

    row_index = torch.arange(size)[None, :, None]  # [1, H, 1]
    mask = (row_index >= rows[:, None, :]).to(torch.float64)[:, None]  # [n, 1, H, W]
    # 2×2 box blur with reflect padding on the top/left keeps the size×size grid
    mask = F.avg_pool2d(F.pad(mask, (1, 0, 1, 0), mode="reflect"), 2, stride=1)
    img = b1[:, None] * mask + b2[:, None] * (1 - mask)
    return from_unit(img), {"groups": None, "contours": rows}


TOY2D_OPTIONS = {
    "circle": {"jitter": 0.0},
    "mog": {"k": 8, "radius": 1.0, "std": 0.05, "centers": None, "weights": None},
}


def toy2d(kind: str = "circle", n: int = 64, seed: int = 0, **options) -> torch.Tensor:
    """2-D point sets ``[n, 2]`` float32.

    circle: n points evenly spaced on the unit circle (angles 2πi/n); ``jitter`` adds
    N(0, jitter²) radians to each angle, so points stay on the circle.
    mog: a mixture of Gaussians with isotropic ``std``; components at ``centers`` [k, 2]
    (default: ``k`` points evenly on a circle of ``radius``), drawn with probabilities
    ``weights`` [k] (default uniform).
    """
    if kind not in TOY2D_OPTIONS:
        raise InputError(f"kind must be one of {', '.join(TOY2D_OPTIONS)}, got {kind!r}")
    unknown = sorted(set(options) - set(TOY2D_OPTIONS[kind]))
    if unknown:
        raise InputError(
            f"toy2d(kind={kind!r}) has no option {', '.join(unknown)}; valid options: "
            f"{', '.join(TOY2D_OPTIONS[kind])}"
        )
    opts = {**TOY2D_OPTIONS[kind], **options}
    check_positive_int(n, "n")
    gen = _generator(seed)
    if kind == "circle":
        theta = 2 * math.pi * torch.arange(n, dtype=torch.float64) / n
        if opts["jitter"]:
            theta = theta + float(opts["jitter"]) * torch.randn(n, generator=gen,
                                                                dtype=torch.float64)
        return torch.stack([theta.cos(), theta.sin()], dim=1).to(torch.float32)

    if opts["centers"] is None:
        k = check_positive_int(opts["k"], "k")
        phi = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
        centers = float(opts["radius"]) * torch.stack([phi.cos(), phi.sin()], dim=1)
    else:
        centers = torch.as_tensor(opts["centers"], dtype=torch.float64)
        if centers.ndim != 2 or centers.shape[1] != 2 or len(centers) == 0:
            raise InputError(f"centers must have shape [k, 2], got {tuple(centers.shape)}")
    weights = (torch.ones(len(centers), dtype=torch.float64) if opts["weights"] is None
               else torch.as_tensor(opts["weights"], dtype=torch.float64))
    if weights.shape != (len(centers),) or bool((weights < 0).any()) or weights.sum() <= 0:
        raise InputError(
            f"weights must be {len(centers)} non-negative numbers with a positive sum, "
            f"got {weights.tolist()}"
        )
    std = check_positive_float(opts["std"], "std")
    component = torch.multinomial(weights, n, replacement=True, generator=gen)
    points = centers[component] + std * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    return points.to(torch.float32)
