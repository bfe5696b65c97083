"""Generalization as dependence between samples and the training set (Yi, Sun & Li 2023,
docs/science.md#information-bound): two measurable proxies.

1. :func:`optimum_copy_fraction`: the share of deterministic samples of the empirical
   optimum D_M that are training images (the paper's claim: essentially all of them).

2. :func:`identification_bound`: a lower bound on the mutual information I(X; S) between
   a generated sample X and the training set S it came from, by *training-set
   identification*. Draw S uniformly from J disjoint training sets S_1 … S_J, train a
   model on S, generate X. For any classifier q(k | x),

       I(X; S) = H(S) − H(S | X) ≥ log J − E[−log q(S | X)]            (nats)

   because H(S) = log J for the uniform choice and the cross-entropy of any q upper-bounds
   the conditional entropy H(S | X) (Gibbs' inequality). The classifier here uses only the
   nearest-neighbour distances d_k(x) = min_{y ∈ S_k} ‖x − y‖:

       q(k | x) = softmax_k(−d_k(x)² / τ)

   with one temperature τ fitted by K-fold cross-validation (a grid from 10⁻⁶ to 10⁶ times
   the median d², plus τ = ∞, the uniform guess, whose cross-entropy is exactly log J),
   and the cross-entropy is the held-out-fold average. A memorizing model (its samples
   are copies of its own training images) gives d_S(x) = 0 < d_k(x) for k ≠ S, so
   q(S | x) → 1 and the bound → log J. Samples that do not depend on S give a bound
   near 0 (cross-validation noise can make it slightly negative; ``bound`` is the raw
   estimate, ``bound_clipped`` = max(0, bound)).

   Assumptions: the J sets are disjoint and equally likely (equal sample counts per set);
   samples are independent given their set; the bound is only as tight as the
   nearest-neighbour classifier (a generalizing model could still depend on S in ways
   nearest-neighbour distances miss, so a bound near 0 is "no dependence detected"); the
   cross-validated cross-entropy is an estimate, with a standard error reported as
   ``stderr`` (of the per-sample held-out losses). The hard nearest-set rule's accuracy
   is reported too (``accuracy``; chance is 1/J).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import check_positive_int, check_tensor
from ..errors import InputError

__all__ = ["IdentificationResult", "identification_bound", "identification_bound_from_denoisers",
           "optimum_copy_fraction"]


@torch.no_grad()
def optimum_copy_fraction(train: torch.Tensor, n_samples: int = 64, *, method: str = "heun",
                          steps: int = 18, seed: int = 0, threshold: float = 1 / 3,
                          denoiser=None, **sampler_kw) -> dict:
    """Share of deterministic samples of the empirical optimum of ``train`` [N, *F] that are
    training images (Yi, Sun & Li 2023): memorized by the distance ratio
    ‖x − NN1‖/‖x − NN2‖ < ``threshold`` (``pydiffgen.metrics.memorization``, N ≥ 2).

    ``denoiser`` replaces D_M (e.g. a blurred optimum or a trained model). Returns
    ``{"fraction", "median_ratio", "median_relative_distance", "n_samples"}`` where the
    relative distance is ‖x − NN1‖/‖NN1‖.
    """
    from ..diffusion.sampling import sample
    from ..metrics import memorization

    check_tensor(train, "train", min_ndim=2)
    if denoiser is None:
        from .empirical import EmpiricalDenoiser

        denoiser = EmpiricalDenoiser(train)
    x = sample(denoiser, check_positive_int(n_samples, "n_samples"), tuple(train.shape[1:]),
               method=method, seed=seed, device=train.device, steps=steps, **sampler_kw)
    rep = memorization(x, train, threshold=threshold)
    nn = train[rep.nn_index].reshape(len(x), -1).double().norm(dim=1).clamp_min(1e-300)
    return {
        "fraction": rep.fraction,
        "median_ratio": float(rep.ratio.double().median()),
        "median_relative_distance": float((rep.d1.double() / nn).median()),
        "n_samples": len(x),
    }


@dataclass
class IdentificationResult:
    """Training-set identification bound I(X; S) ≥ log J − CE (see the module docstring).

    bound: log J − CE in nats (raw estimate); bound_clipped = max(0, bound);
    bound_bits = bound / ln 2; log_j = log J; cross_entropy: cross-validated CE (nats);
    stderr: its standard error; temperature: the fitted τ (inf = uniform guess);
    accuracy: accuracy of the hard nearest-set rule; n_sets J; n_samples in total.
    """

    bound: float
    bound_clipped: float
    bound_bits: float
    log_j: float
    cross_entropy: float
    stderr: float
    temperature: float
    accuracy: float
    n_sets: int
    n_samples: int

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def identification_bound(samples, train_sets, *, folds: int = 5, seed: int = 0,
                         temperature: float | None = None) -> IdentificationResult:
    """Lower bound on I(sample; training set) by identifying each sample's training set.

    samples:    list of J tensors [M_j, *F]: samples of the model trained on set j, with
                equal M_j (the uniform prior over sets).
    train_sets: list of J disjoint training sets [N_j, *F].
    folds:      K of the K-fold cross-validation of τ (samples shuffled with ``seed``).
    temperature: fix τ instead of fitting it (then CE is the plain average; τ = inf:
                uniform guess).
    """
    from ..ops import knn

    if not isinstance(samples, (list, tuple)) or not isinstance(train_sets, (list, tuple)):
        raise InputError("samples and train_sets must be lists of tensors, one per training set")
    J = len(train_sets)
    if J < 2 or len(samples) != J:
        raise InputError(f"need J >= 2 training sets and one sample tensor per set, got "
                         f"{J} sets and {len(samples)} sample tensors")
    shape = None
    for j, (x, s) in enumerate(zip(samples, train_sets)):
        check_tensor(x, f"samples[{j}]", min_ndim=2)
        check_tensor(s, f"train_sets[{j}]", min_ndim=2)
        shape = shape or tuple(s.shape[1:])
        if tuple(x.shape[1:]) != shape or tuple(s.shape[1:]) != shape:
            raise InputError(f"samples[{j}] and train_sets[{j}] must have image shape {shape}, "
                             f"got {tuple(x.shape[1:])} and {tuple(s.shape[1:])}")
    m = len(samples[0])
    if any(len(x) != m for x in samples):
        raise InputError(f"every set needs the same number of samples (uniform prior), got "
                         f"{[len(x) for x in samples]}")
    folds = check_positive_int(folds, "folds", minimum=2)
    # d²_k(x) for every sample and set: [J·M, J]
    xs = torch.cat(list(samples))
    d2 = torch.stack([knn(xs, s, 1, metric="l2")[0][:, 0].double().clamp_min(0)
                      for s in train_sets], dim=1)
    labels = torch.arange(J).repeat_interleave(m)  # [J·M]
    log_j = math.log(J)
    accuracy = float((d2.argmin(1) == labels).double().mean())

    scale = float(d2[d2 > 0].median()) if bool((d2 > 0).any()) else 1.0
    grid = [scale * 10.0 ** (e / 2) for e in range(-12, 13)] + [math.inf]

    def losses(tau, idx):  # per-sample −log q(label | x)
        if math.isinf(tau):
            return torch.full((len(idx),), log_j, dtype=torch.float64)
        logits = -d2[idx] / tau  # [B, J]
        return -(logits.log_softmax(1).gather(1, labels[idx, None])[:, 0])

    n = len(labels)
    if temperature is not None:
        tau = float(temperature)
        if not tau > 0:
            raise InputError(f"temperature must be positive (or inf), got {temperature!r}")
        held = losses(tau, torch.arange(n))
    else:
        if n < folds:
            raise InputError(f"{n} samples cannot be split into folds={folds}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        held = torch.empty(n, dtype=torch.float64)
        taus = []
        for f in range(folds):
            test = perm[f::folds]
            fit = torch.cat([perm[g::folds] for g in range(folds) if g != f])
            best = min(grid, key=lambda t: float(losses(t, fit).mean()))
            taus.append(best)
            held[test] = losses(best, test)
        tau = sorted(taus)[len(taus) // 2]
    ce = float(held.mean())
    stderr = float(held.std() / math.sqrt(n)) if n > 1 else math.nan
    bound = log_j - ce
    return IdentificationResult(bound=bound, bound_clipped=max(0.0, bound),
                                bound_bits=bound / math.log(2), log_j=log_j, cross_entropy=ce,
                                stderr=stderr, temperature=tau, accuracy=accuracy, n_sets=J,
                                n_samples=n)


def identification_bound_from_denoisers(denoisers, train_sets, n_samples: int = 64, *,
                                        method: str = "heun", steps: int = 18, seed: int = 0,
                                        folds: int = 5, **sampler_kw) -> IdentificationResult:
    """Sample ``n_samples`` from each denoiser j (trained on ``train_sets[j]``; seeds
    ``seed + 100003·j``, so the runs are independent) and return
    :func:`identification_bound`. Passing the same denoiser J times measures a model
    that does not depend on the set (bound ≈ 0)."""
    from ..diffusion.sampling import sample

    if len(denoisers) != len(train_sets):
        raise InputError(f"one denoiser per training set: got {len(denoisers)} denoisers and "
                         f"{len(train_sets)} sets")
    shape = tuple(train_sets[0].shape[1:])
    xs = [sample(d, n_samples, shape, method=method, seed=seed + 100003 * j, steps=steps,
                 device=train_sets[j].device, **sampler_kw) for j, d in enumerate(denoisers)]
    return identification_bound(xs, list(train_sets), folds=folds, seed=seed)
