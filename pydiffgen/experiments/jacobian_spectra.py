"""Jacobian spectra of a trained denoiser at a few images and noise levels
(``pydiffgen jacobian``; Kadkhodaie et al. ICLR 2024, §3).

At y = x + σz for clean images x, the eigendecomposition of J(y) gives the shrinkage
factors (eigenvalues), the adaptive basis (eigenvectors) and the effective dimension
(tr J). Results go to ``results.json`` (written atomically) and ``report.html``.
"""

from __future__ import annotations

import time

import torch

from .._checks import check_positive_float, check_positive_int, check_tensor
from ..errors import InputError
from ..io import write_json
from ._runs import hold_folder

__all__ = ["heldout_images", "jacobian_spectra", "run_jacobian", "sweep_jacobian"]


def _spectra(denoiser, images: torch.Tensor, sigmas, k, seed):
    """[(σ, JacobianSpectrum)] at images + σz, one noise draw z (``seed``) for every σ."""
    from ..analysis import jacobian_spectrum

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(images.shape, generator=g).to(images.device, images.dtype)
    return [(s, jacobian_spectrum(denoiser, images + s * z, s, k=k)) for s in sigmas]


def jacobian_spectra(denoiser, images: torch.Tensor, sigmas, *, k: int | None = None,
                     show: int = 8, seed: int = 0) -> dict:
    """Spectra of ``denoiser``'s Jacobian at ``images`` [n, *F] plus noise at each σ.

    The noise z (one draw from ``seed``) is shared across σ, so spectra at different σ
    differ only by the noise level. k: eigenpairs per Jacobian (None: all d).
    Returns {"sigmas", "d", "per_sigma": [{"sigma", "eigenvalues" [n][k], "trace" [n],
    "asymmetry" [n], "eigenvectors" [n][show][*F]}]}.
    """
    images = check_tensor(images, "images", min_ndim=2)
    if images.shape[0] < 1:
        raise InputError("images must hold at least one image")
    sigmas = [check_positive_float(s, "sigmas") for s in sigmas]
    if not sigmas:
        raise InputError("sigmas must hold at least one noise level")
    d = images[0].numel()
    if k is not None:
        k = check_positive_int(k, "k")
        if k > d:
            raise InputError(f"k must be <= d = {d} (pixels per image), got {k}")
    show = min(check_positive_int(show, "show"), k or d)
    per_sigma = []
    for s, spec in _spectra(denoiser, images, sigmas, k, seed):
        vecs = spec.eigenvectors[:, :, :show].transpose(1, 2).reshape(
            len(images), show, *images.shape[1:])
        per_sigma.append({
            "sigma": s,
            "eigenvalues": spec.eigenvalues.to(torch.float64).cpu().tolist(),
            "trace": spec.trace.to(torch.float64).cpu().tolist(),
            "asymmetry": spec.asymmetry.to(torch.float64).cpu().tolist(),
            "eigenvectors": vecs.to(torch.float32).cpu().tolist(),
        })
    return {"sigmas": sigmas, "d": d, "per_sigma": per_sigma}


def run_jacobian(model_path, data: str, *, data_options: dict | None = None, n: int = 4,
                 sigmas=(0.05, 0.2, 0.8), k: int | None = None, show: int = 8,
                 seed: int = 0, out_dir="runs/jacobian", device: str = "cpu") -> dict:
    """Load a checkpoint, take ``n`` images of ``data`` (seeded choice), compute spectra,
    write ``results.json`` and ``report.html`` into ``out_dir``; returns the results."""
    from .. import data as datamod
    from ..checkpoint import load_model
    from ..report.jacobian import spectra_report

    n = check_positive_int(n, "n")
    model = load_model(model_path, device=device).eval()
    x = datamod.load(data, **(data_options or {}))
    expected = tuple(getattr(model, "meta", {}).get("data_shape") or ())
    if expected and tuple(x.shape[1:]) != expected:
        raise InputError(f"--data {data} gives images of shape {tuple(x.shape[1:])} but the "
                         f"model was trained on {expected}; pass matching --data-option")
    if n > len(x):
        raise InputError(f"n must be <= {len(x)} (images in {data}), got {n}")
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    images = x[idx].to(device)
    with hold_folder(out_dir, "jacobian run") as out:
        t0 = time.perf_counter()
        results = jacobian_spectra(model, images, sigmas, k=k, show=show, seed=seed)
        results.update({
            "model": str(model_path), "data": data, "data_options": data_options or {},
            "indices": idx.tolist(), "n_images": n, "shape": list(x.shape[1:]), "k": k,
            "seed": seed, "images": images.cpu().tolist(),
            "seconds": time.perf_counter() - t0,
        })
        write_json(out / "results.json", results)
        spectra_report(results, out)
    return results


def heldout_images(x: torch.Tensor, idx1: torch.Tensor, idx2: torch.Tensor, n: int,
                   seed: int = 0) -> torch.Tensor | None:
    """``n`` images of ``x`` in neither training set (seeded choice), or None if none is left.

    The sweep's splits are nested across N, so images outside the largest N's S1 ∪ S2 are
    held out from every model of the sweep.
    """
    used = torch.zeros(len(x), dtype=torch.bool)
    used[idx1] = True
    used[idx2] = True
    free = torch.nonzero(~used).flatten()
    if len(free) == 0:
        return None
    pick = torch.randperm(len(free), generator=torch.Generator().manual_seed(seed))[:n]
    return x[free[pick.sort().values]]


def sweep_jacobian(model_a, model_b, images: torch.Tensor, sigmas, *, show: int = 6,
                   agree_k: int = 8, max_full: int = 256, seed: int = 0) -> dict:
    """The sweep's Jacobian step for one N: both models' spectra at held-out ``images``.

    Per model and σ: the mean eigenvalue spectrum (all d eigenvalues when d ≤ ``max_full``,
    else the top 32), the mean effective dimension tr J and the top ``show`` eigenvectors
    at the first image. ``agreement``: the mean over images of the mean squared cosine of
    the principal angles between the two models' top-``agree_k`` eigenspaces (1: the
    same adaptive basis; ≈ agree_k/d for unrelated subspaces).
    """
    from ..analysis import principal_angles

    images = check_tensor(images, "images", min_ndim=2)
    d = images[0].numel()
    k = None if d <= max_full else 32
    agree_k = min(agree_k, k or d)
    show = min(show, k or d)
    keys = [f"{float(s):g}" for s in sigmas]
    res = {"sigmas": [float(s) for s in sigmas], "d": d, "n_images": len(images),
           "image": images[0].cpu().tolist(), "agreement": {}}
    tops = {}
    for name, model in (("A", model_a), ("B", model_b)):
        spectra = _spectra(model, images, res["sigmas"], k, seed)
        res[name] = {
            "eigenvalues": {key: sp.eigenvalues.to(torch.float64).mean(0).cpu().tolist()
                            for key, (_, sp) in zip(keys, spectra)},
            "trace": {key: float(sp.trace.to(torch.float64).mean())
                      for key, (_, sp) in zip(keys, spectra)},
            "eigenvectors": {key: sp.eigenvectors[0, :, :show].T.reshape(show, *images.shape[1:])
                             .to(torch.float32).cpu().tolist()
                             for key, (_, sp) in zip(keys, spectra)},
        }
        tops[name] = [sp.eigenvectors[..., :agree_k].cpu() for _, sp in spectra]
    for i, key in enumerate(keys):
        ang = principal_angles(tops["A"][i], tops["B"][i])  # [n, agree_k]
        res["agreement"][key] = float((ang.cos() ** 2).mean())
    return res
