"""Trajectory probe: what the denoiser outputs along the sampler's own path
(Kaiser & Kollmann 2026, docs/science.md#trajectory-probe).

Run a deterministic sampler (EDM Heun or Euler) with ``return_trajectory=True``; at each
step i the denoiser output D(x_i; σ_i) is the sample we would get by stopping early and
jumping to σ = 0. Compare it with the training set and with a held-out set of the same
size by nearest-neighbour cosine similarity (``pydiffgen.metrics.nearest_cosine``), and
do the same for reconstructions D(x + σ_i n; σ_i) of noisy training and held-out images
at the same σ_i. A memorizing denoiser's outputs are nearer to training than to held-out
images along the whole path; the question of the paper is whether the σ where noisy
training data are overfitted is also where the sampler's own states sit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_positive_int, check_same_image_shape, check_tensor
from ..errors import InputError
from .distances import _apply

__all__ = ["TrajectoryProbe", "trajectory_probe"]


@dataclass
class TrajectoryProbe:
    """Nearest-cosine similarities along a sampling run, per step i (T steps).

    sigma:                 [T] σ_i handed to the denoiser at step i.
    path_train:            [T, M] nearest cosine of D(x_i; σ_i) to the training set.
    path_heldout:          [T, M] ... to the held-out set.
    recon_train_train:     [T, K] reconstructions of noisy training images at σ_i vs train.
    recon_train_heldout:   [T, K] ... vs held-out.
    recon_heldout_train:   [T, K] reconstructions of noisy held-out images vs train.
    recon_heldout_heldout: [T, K] ... vs held-out.
    samples:               [M, *F] the final samples.
    """

    sigma: list[float]
    path_train: torch.Tensor
    path_heldout: torch.Tensor
    recon_train_train: torch.Tensor
    recon_train_heldout: torch.Tensor
    recon_heldout_train: torch.Tensor
    recon_heldout_heldout: torch.Tensor
    samples: torch.Tensor

    def path_train_fraction(self) -> list[float]:
        """Per step, the share of trajectory outputs nearer (in cosine) to train than held-out."""
        return (self.path_train > self.path_heldout).double().mean(1).tolist()

    def summary(self) -> dict:
        """Per-step medians and the train-preference fractions (JSON-ready)."""
        def med(t):
            return t.double().median(dim=1).values.tolist()

        return {
            "sigma": self.sigma,
            "path_train": med(self.path_train),
            "path_heldout": med(self.path_heldout),
            "path_train_fraction": self.path_train_fraction(),
            "recon_train_train": med(self.recon_train_train),
            "recon_train_heldout": med(self.recon_train_heldout),
            "recon_heldout_train": med(self.recon_heldout_train),
            "recon_heldout_heldout": med(self.recon_heldout_heldout),
            "recon_heldout_train_fraction":
                (self.recon_heldout_train > self.recon_heldout_heldout).double().mean(1).tolist(),
        }


@torch.no_grad()
def trajectory_probe(
    denoiser,
    train: torch.Tensor,
    heldout: torch.Tensor,
    *,
    n_samples: int = 64,
    method: str = "heun",
    steps: int = 18,
    seed: int = 0,
    n_recon: int | None = None,
    center: bool = False,
    batch_size: int = 256,
    **sampler_kw,
) -> TrajectoryProbe:
    """Probe ``denoiser`` along a deterministic sampling run (Kaiser & Kollmann 2026).

    train / heldout: [N, *F] and [N', *F]; the references are the first
    n = min(N, N') images of each, so neither side has more chances to be nearest.
    method:  "heun" or "euler" (deterministic EDM samplers); ``steps`` and ``sampler_kw``
             (sigma_min, sigma_max, rho) go to :func:`pydiffgen.diffusion.sample`.
    n_recon: noisy training / held-out images reconstructed at each σ_i (default n),
             with one fixed noise draw per image (``seed``).
    center:  remove each image's mean before the cosines.
    """
    from ..diffusion.sampling import sample
    from ..metrics import nearest_cosine

    if method not in ("heun", "euler"):
        raise InputError(f"method must be 'heun' or 'euler' (deterministic), got {method!r}")
    check_tensor(train, "train", min_ndim=2)
    check_tensor(heldout, "heldout", min_ndim=2)
    check_same_image_shape(train, heldout, "train", "heldout")
    n = min(len(train), len(heldout))
    ref_tr, ref_va = train[:n], heldout[:n]
    k = n if n_recon is None else check_positive_int(n_recon, "n_recon")
    if k > n:
        raise InputError(f"n_recon={k} exceeds the {n} images available per split")
    shape = tuple(train.shape[1:])
    samples, traj = sample(denoiser, check_positive_int(n_samples, "n_samples"), shape,
                           method=method, seed=seed, device=train.device, steps=steps,
                           batch_size=batch_size, return_trajectory=True, **sampler_kw)
    T = traj.denoised.shape[0]
    sigmas = [float(traj.sigma[i, 0]) for i in range(T)]
    gen = torch.Generator().manual_seed(seed)
    z_tr = torch.randn(ref_tr[:k].shape, generator=gen).to(train.device, train.dtype)
    z_va = torch.randn(ref_va[:k].shape, generator=gen).to(train.device, train.dtype)

    def near(x):
        return (nearest_cosine(x, ref_tr, center=center).double(),
                nearest_cosine(x, ref_va, center=center).double())

    cols = {name: [] for name in ("pt", "pv", "rtt", "rtv", "rvt", "rvv")}
    for i, s in enumerate(sigmas):
        a, b = near(traj.denoised[i])  # D(x_i; σ_i), [M]
        cols["pt"].append(a)
        cols["pv"].append(b)
        a, b = near(_apply(denoiser, ref_tr[:k] + s * z_tr, s, batch_size))
        cols["rtt"].append(a)
        cols["rtv"].append(b)
        a, b = near(_apply(denoiser, ref_va[:k] + s * z_va, s, batch_size))
        cols["rvt"].append(a)
        cols["rvv"].append(b)
    st = {name: torch.stack(v) for name, v in cols.items()}
    return TrajectoryProbe(sigma=sigmas, path_train=st["pt"], path_heldout=st["pv"],
                           recon_train_train=st["rtt"], recon_train_heldout=st["rtv"],
                           recon_heldout_train=st["rvt"], recon_heldout_heldout=st["rvv"],
                           samples=samples)
