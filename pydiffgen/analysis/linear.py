"""Linear distillation of a denoiser at one noise level (Li, Dai & Qu, NeurIPS 2024, §3.1).

For a fixed σ, the best affine approximation D_L(y) = W y + b of any denoiser D is fit to
D's outputs on noisy held-out images y = x + σ n:

    min_{W, b}  Σ_j ‖W y_j + b − D(y_j; σ)‖²                                  (Li et al. Eq. 6)

``method="lstsq"`` solves it exactly: the normal equations are streamed in float64 over
batches, A = Σ_j [y_j; 1][y_j; 1]ᵀ  ([d+1, d+1]) and C = Σ_j [y_j; 1] D(y_j)ᵀ ([d+1, d]),
then A Θ = C by Cholesky with Θ = [Wᵀ; bᵀ]. A is singular when fewer than d + 1 noisy
images span the input space; then (and only then) a ridge ε·tr(A)/(d+1)·I with
ε = 1e-10, 1e-8, … is added until the Cholesky succeeds (the minimum-norm-like solution).

``method="adam"`` is the paper's procedure: W = 0, b = 0, Adam on the mean squared error
over ``epochs`` passes of the same noisy images (targets computed once). Inputs are fed
as c_in·y with c_in = 1/sqrt(σ² + σ_data²) (EDM's input scaling) and targets divided by
their RMS c_out (the optimum is the same affine map; the optimiser sees O(1) inputs,
outputs and parameters at every σ) and the step size decays by a
cosine schedule so the iterates settle on the least-squares answer instead of hovering.
"""

from __future__ import annotations

import math

import torch

from .._checks import as_sigma, check_positive_float, check_positive_int, check_tensor
from ..errors import InputError
from ..models.base import Denoiser

__all__ = ["LinearDenoiser", "compare_weights", "linear_distill", "subspace_cosines"]


class LinearDenoiser(Denoiser):
    """D_L(y) = W y + b on flattened images: ``.weight`` [d, d], ``.bias`` [d].

    Fit at one noise level ``sigma`` (stored for reference); ``forward(y, sigma)``
    accepts and ignores σ, like every affine approximation taken at a single σ.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, shape=None,
                 sigma: float | None = None):
        super().__init__()
        weight = check_tensor(weight, "weight", ndim=2)
        bias = check_tensor(bias, "bias", ndim=1)
        d = bias.shape[0]
        if tuple(weight.shape) != (d, d):
            raise InputError(f"weight must have shape [{d}, {d}] to match bias, got "
                             f"{tuple(weight.shape)}")
        shape = (d,) if shape is None else tuple(int(s) for s in shape)
        if math.prod(shape) != d:
            raise InputError(f"shape {shape} does not hold d={d} values")
        self.shape = shape
        self.sigma = sigma
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", bias.detach().clone())

    def forward(self, y: torch.Tensor, sigma=None) -> torch.Tensor:
        y = check_tensor(y, "y", min_ndim=1, finite=False)
        flat = y.reshape(y.shape[0], -1)
        if flat.shape[1] != self.bias.shape[0]:
            raise InputError(f"y must hold d={self.bias.shape[0]} values per image, got shape "
                             f"{tuple(y.shape)}")
        out = torch.addmm(self.bias.to(flat.dtype), flat, self.weight.to(flat.dtype).T)
        return out.reshape(y.shape)

    def extra_repr(self) -> str:
        return f"d={self.bias.shape[0]}, sigma={self.sigma}"


def _noisy_pairs(denoiser, data, sigma, n_noise, seed, batch_size):
    """Yield (y [b, d] float32, D(y) [b, d] float32) batches with fixed, seeded noise."""
    gen = torch.Generator(device=data.device).manual_seed(seed)
    for _ in range(n_noise):
        for s in range(0, len(data), batch_size):
            x = data[s : s + batch_size]
            y = x + sigma * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            with torch.no_grad():
                D = denoiser(y, torch.full((len(y),), sigma, dtype=y.dtype, device=y.device))
            if not isinstance(D, torch.Tensor) or D.shape != y.shape:
                got = tuple(D.shape) if isinstance(D, torch.Tensor) else type(D).__name__
                raise InputError(f"denoiser returned {got} for an input of shape {tuple(y.shape)}")
            yield y.reshape(len(y), -1), D.reshape(len(y), -1)


def linear_distill(denoiser, data, sigma: float, method: str = "lstsq", *, n_noise: int = 1,
                   seed: int = 0, batch_size: int = 256, epochs: int = 100,
                   lr: float = 1e-2, adam_batch_size: int = 32,
                   sigma_data: float = 0.5) -> LinearDenoiser:
    """Best affine approximation ``W y + b`` of ``denoiser`` at noise level ``sigma``.

    denoiser: any callable ``denoiser(y [B, *F], sigma [B]) -> [B, *F]`` (network,
              Gaussian, empirical, ...); run under ``torch.no_grad`` in eval mode.
    data:     held-out clean images ``[M, *F]``; each is noised ``n_noise`` times with
              fixed noise from ``seed`` (M·n_noise ≥ d + 1 makes the problem well posed).
    method:   "lstsq" (exact, streamed float64 normal equations) or "adam" (the paper's
              zero-init Adam over ``epochs`` epochs, mini-batches of ``adam_batch_size``,
              peak step ``lr``).
    Returns a :class:`LinearDenoiser` with ``.weight`` [d, d] and ``.bias`` [d] (float32).
    """
    data = check_tensor(data, "data", min_ndim=2)
    sigma = as_sigma(sigma, 1, dtype=torch.float64)[0].item()
    if not callable(denoiser):
        raise InputError(f"denoiser must be callable as denoiser(y, sigma), got "
                         f"{type(denoiser).__name__}")
    if method not in ("lstsq", "adam"):
        raise InputError(f"method must be 'lstsq' or 'adam', got {method!r}")
    n_noise = check_positive_int(n_noise, "n_noise")
    batch_size = check_positive_int(batch_size, "batch_size")
    shape = tuple(data.shape[1:])
    module = denoiser if isinstance(denoiser, torch.nn.Module) else None
    was_training = module is not None and module.training
    if was_training:
        module.eval()
    try:
        pairs = _noisy_pairs(denoiser, data, sigma, n_noise, seed, batch_size)
        if method == "lstsq":
            W, b = _lstsq(pairs)
        else:
            epochs = check_positive_int(epochs, "epochs")
            adam_batch_size = check_positive_int(adam_batch_size, "adam_batch_size")
            lr = check_positive_float(lr, "lr")
            c_in = 1.0 / math.sqrt(sigma**2 + check_positive_float(sigma_data, "sigma_data") ** 2)
            W, b = _adam(pairs, epochs, lr, adam_batch_size, c_in, seed)
    finally:
        if was_training:
            module.train()
    return LinearDenoiser(W.to(torch.float32), b.to(torch.float32), shape=shape, sigma=sigma)


def _lstsq(pairs):
    A = C = None
    count = 0
    for y, D in pairs:
        # Li et al. Eq. 6 in closed form: accumulate [y;1][y;1]ᵀ and [y;1] D(y)ᵀ
        y1 = torch.cat([y.to(torch.float64), torch.ones(len(y), 1, dtype=torch.float64,
                                                        device=y.device)], dim=1)  # [b, d+1]
        if A is None:
            A = torch.zeros(y1.shape[1], y1.shape[1], dtype=torch.float64, device=y.device)
            C = torch.zeros(y1.shape[1], D.shape[1], dtype=torch.float64, device=y.device)
        A.addmm_(y1.T, y1)
        C.addmm_(y1.T, D.to(torch.float64))
        count += len(y)
    theta = _solve_spd(A, C)  # [d+1, d] = [Wᵀ; bᵀ]
    return theta[:-1].T.contiguous(), theta[-1].contiguous()


def _solve_spd(A: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Solve A X = C for symmetric positive (semi)definite A; ridge only if singular."""
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        X = torch.cholesky_solve(C, L)
        # a numerically singular A can pass Cholesky with a huge, wrong solution: check it
        if bool(torch.isfinite(X).all()):
            return X
    scale = float(A.diagonal().mean())
    eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    for eps in (1e-10, 1e-8, 1e-6, 1e-4):
        L, info = torch.linalg.cholesky_ex(A + eps * scale * eye)
        if int(info) == 0:
            return torch.cholesky_solve(C, L)
    raise InputError("the noisy inputs are degenerate (the normal equations stay singular "
                     "with a ridge); pass more or more varied data")


def _adam(pairs, epochs, lr, batch_size, c_in, seed):
    ys, Ds = zip(*pairs)
    Y = torch.cat(ys).to(torch.float32) * c_in  # [M, d] scaled inputs (EDM c_in)
    T = torch.cat(Ds).to(torch.float32)  # [M, d] targets D(y)
    c_out = float(T.pow(2).mean().sqrt().clamp_min(1e-12))  # target RMS
    T = T / c_out
    M, d = Y.shape
    # D_L(y) = c_out (W' (c_in y) + b'): the same affine family, O(1) parameters at every σ
    W = torch.zeros(d, d, requires_grad=True)
    b = torch.zeros(d, requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=lr)
    steps_per_epoch = math.ceil(M / batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total)))
    gen = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    if d <= 256:  # tiny GEMMs: one thread avoids OpenMP hand-off costs on a busy machine
        torch.set_num_threads(1)
    try:
        _adam_loop(opt, sched, W, b, Y, T, epochs, batch_size, gen)
    finally:
        torch.set_num_threads(threads)
    return (W.detach() * (c_in * c_out)).double(), (b.detach() * c_out).double()


def _adam_loop(opt, sched, W, b, Y, T, epochs, batch_size, gen):
    M = Y.shape[0]
    with torch.enable_grad():
        for _ in range(epochs):
            perm = torch.randperm(M, generator=gen)
            for s in range(0, M, batch_size):
                idx = perm[s : s + batch_size]
                pred = torch.addmm(b, Y[idx], W.T)
                loss = (pred - T[idx]).pow(2).sum(1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()


def subspace_cosines(A: torch.Tensor, B: torch.Tensor, k: int) -> torch.Tensor:
    """Cosines of the principal angles between the top-``k`` left singular subspaces of
    ``A`` and ``B`` ([k], descending; all 1 when the subspaces coincide)."""
    A = check_tensor(A, "A", ndim=2)
    B = check_tensor(B, "B", ndim=2)
    k = check_positive_int(k, "k")
    if k > min(*A.shape, *B.shape):
        raise InputError(f"k must be <= {min(*A.shape, *B.shape)}, got {k}")
    Ua = torch.linalg.svd(A.to(torch.float64), full_matrices=False)[0][:, :k]
    Ub = torch.linalg.svd(B.to(torch.float64), full_matrices=False)[0][:, :k]
    return torch.linalg.svdvals(Ua.T @ Ub).clamp(0, 1)


def compare_weights(W: torch.Tensor, W_ref: torch.Tensor, k: int | None = None) -> dict:
    """Compare a distilled weight with a reference (e.g. the Gaussian W_G).

    Returns ``{"rel_error": ‖W − W_ref‖_F / ‖W_ref‖_F, "subspace_cosines": [k] cosines of
    the principal angles between the top-k singular subspaces, "mean_cosine": their mean,
    "k": k}``. Default k = min(16, d).
    """
    W = check_tensor(W, "W", ndim=2)
    W_ref = check_tensor(W_ref, "W_ref", ndim=2)
    if W.shape != W_ref.shape:
        raise InputError(f"W and W_ref must have the same shape, got {tuple(W.shape)} and "
                         f"{tuple(W_ref.shape)}")
    k = min(16, W.shape[0]) if k is None else k
    Wd, Rd = W.to(torch.float64), W_ref.to(torch.float64)
    cos = subspace_cosines(Wd, Rd, k)
    return {
        "rel_error": float(torch.linalg.norm(Wd - Rd) / torch.linalg.norm(Rd).clamp_min(1e-300)),
        "subspace_cosines": cos.tolist(),
        "mean_cosine": float(cos.mean()),
        "k": k,
    }
