"""Memorization audit: are a model's samples copies of its training images?

Given generated samples X = {x_j} (or a model to draw them from) and the training set
Y = {y_i}, the audit measures, per sample:

- the relative distance r = ‖x − NN1‖ / ‖x − NN2‖ to the two nearest training images
  (pixel L2; Yoon et al. 2023, Gu et al. 2023; the Carlini et al. 2023 extraction test in
  ratio form): x is *memorized* when r < 1/3 (:func:`pydiffgen.metrics.memorization_from_knn`);
- the nearest cosine similarity to the training set (Somepalli et al. 2023), against the
  background of each training image's nearest *other* training image (pixel space:
  cosines of mean-removed images, as the sweep reports; feature space: raw cosines);
- the near-duplicates inside the training set (:func:`pydiffgen.data.deduplicate`): a
  sample copying an image that is duplicated in Y has d1 ≈ d2, so the ratio test misses it.

With precomputed embeddings (``features``) the ratio and cosine tests are repeated in
feature space. Every nearest-neighbour search goes through :func:`search` (exact top-k,
queries chunked, never an M×N matrix), where a sharded search can be plugged in.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import config as cfgmod
from .._checks import check_positive_float, check_positive_int, check_same_image_shape, check_tensor
from ..errors import DataError, InputError
from ..metrics.memorization import MemorizationReport, memorization_from_knn
from ..ops import knn

__all__ = ["AuditConfig", "AuditResult", "SpaceAudit", "Duplicates", "audit",
           "default_method", "encoder_section", "find_duplicates", "load_images", "load_features",
           "load_denoiser", "sample_model", "search", "verdict", "write_audit_report"]

RATIO_BINS = np.linspace(0.0, 1.0, 41)  # r = d1/d2 ∈ [0, 1]
COSINE_BINS = 60


@dataclass(frozen=True)
class AuditConfig:
    """Parameters of the audit. CLI flags of ``pydiffgen audit`` map 1:1 to these fields."""

    threshold: float = field(default=1 / 3, metadata={
        "help": "memorized when ‖x−NN1‖/‖x−NN2‖ is below this (default 1/3)"})
    dedup_threshold: float = field(default=0.95, metadata={
        "help": "training images with |correlation| above this are duplicates"})
    dedup_pool: int = field(default=20, metadata={
        "help": "images are average-pooled to this size before correlating"})
    center: bool = field(default=True, metadata={
        "help": "pixel-space cosines of mean-removed images (default on)"})
    background_size: int = field(default=10000, metadata={
        "help": "training images (evenly spaced) whose nearest other training image "
                "forms the background; 0 = all"})
    chunk_size: int = field(default=4096, metadata={"help": "query rows per search call"})
    n_show: int = field(default=8, metadata={"help": "most-copied samples shown"})
    n_boot: int = field(default=200, metadata={
        "help": "half-sample replicates of the feature-space intervals (with --encoder)"})


# ----------------------------------------------------------------------------------------
# the one search
# ----------------------------------------------------------------------------------------


def search(queries: torch.Tensor, keys: torch.Tensor, k: int, metric: str = "l2"):
    """Exact k nearest keys of each query: ``pydiffgen.ops.knn`` (values float32 [m, k],
    indices int64 [m, k]). Every search of the audit calls this function, so a sharded
    search with the same signature (``pydiffgen.distributed.knn``) replaces it here:
    under torchrun (R > 1 ranks) each rank scans only its shard of the keys and the exact
    top-k lists are merged across ranks (the same results as one process)."""
    from .. import distributed

    world = distributed.world_size()
    if world > 1:
        part = distributed.shard(len(keys), distributed.rank(), world)
        return distributed.knn(queries, keys[part.start : part.stop], k, metric,
                               offset=part.start)
    return knn(queries, keys, k, metric=metric)


def _search_chunked(queries, keys, k, metric, *, chunk, desc, progress):
    """:func:`search` over query chunks of ``chunk`` rows with a progress bar."""
    from tqdm.auto import tqdm

    values, index = [], []
    with tqdm(total=len(queries), desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, len(queries), chunk):
            v, i = search(queries[start : start + chunk], keys, k, metric)
            values.append(v)
            index.append(i)
            bar.update(len(v))
    return torch.cat(values), torch.cat(index)


# ----------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------


@dataclass
class SpaceAudit:
    """Ratio and cosine tests in one space (``"pixel"`` or ``"features"``).

    memorization: d1, d2, ratio, nn_index, memorized per sample [M];
    nearest_cosine / nearest_cosine_index [M]: best cosine to any training image;
    background_query [B]: training images used as queries, background_cosine /
    background_index [B]: their best cosine to another training image.
    """

    space: str
    memorization: MemorizationReport
    nearest_cosine: torch.Tensor
    nearest_cosine_index: torch.Tensor
    background_query: torch.Tensor
    background_cosine: torch.Tensor
    background_index: torch.Tensor
    centered: bool

    def most_copied(self, n: int) -> list[dict]:
        """The ``n`` samples with the smallest ratio r (ties: lower sample index)."""
        m = self.memorization
        order = torch.sort(m.ratio.double(), stable=True).indices[:n]
        return [{"sample": int(j), "train_index": int(m.nn_index[j]), "ratio": float(m.ratio[j]),
                 "d1": float(m.d1[j]), "d2": float(m.d2[j]),
                 "nearest_cosine": float(self.nearest_cosine[j]),
                 "memorized": bool(m.memorized[j])} for j in order]

    def summary(self, n_show: int = 8) -> dict:
        m = self.memorization
        ratio = m.ratio.double().numpy()
        cos, bg = self.nearest_cosine.double().numpy(), self.background_cosine.double().numpy()
        # the range of the data (at 0.05 resolution), so both histograms keep their detail
        lo = max(-1.0, math.floor(min(float(cos.min()), float(bg.min())) * 20) / 20 - 0.05)
        cos_edges = np.linspace(lo, 1.0, COSINE_BINS + 1)
        bg_p95 = float(np.quantile(bg, 0.95))
        return {
            "space": self.space,
            "centered_cosine": self.centered,
            "threshold": m.threshold,
            "memorized_count": int(m.memorized.sum()),
            "memorized_fraction": m.fraction,
            "ratio": _quantiles(ratio),
            "ratio_histogram": {"edges": RATIO_BINS.tolist(),
                                "counts": np.histogram(np.clip(ratio, 0, 1), RATIO_BINS)[0]
                                .tolist()},
            "nearest_distance": _quantiles(m.d1.double().numpy()),
            "nearest_cosine": _quantiles(cos),
            "nearest_cosine_above_0.5": float((cos > 0.5).mean()),
            "background_cosine": _quantiles(bg),
            "background_size": len(bg),
            # Somepalli et al.: how many samples are closer to Y than Y is to itself
            "above_background_p95": float((cos > bg_p95).mean()),
            "cosine_histogram": {
                "edges": cos_edges.tolist(),
                "samples": np.histogram(cos, cos_edges)[0].tolist(),
                "background": np.histogram(bg, cos_edges)[0].tolist(),
            },
            "most_copied": self.most_copied(n_show),
        }


@dataclass
class Duplicates:
    """Near-duplicates inside the training set (:func:`pydiffgen.data.deduplicate`).

    dropped [K]: images de-duplication would remove; partner [K]: the kept image each one
    duplicates (its best |correlation| among the kept); correlation [K] (signed).
    """

    threshold: float
    pool: int
    n_train: int
    dropped: torch.Tensor
    partner: torch.Tensor
    correlation: torch.Tensor

    def summary(self, n_list: int = 50) -> dict:
        return {
            "threshold": self.threshold,
            "pool": self.pool,
            "n_train": self.n_train,
            "n_duplicates": len(self.dropped),
            "n_unique": self.n_train - len(self.dropped),
            "fraction": len(self.dropped) / self.n_train,
            "pairs": [{"image": int(i), "duplicate_of": int(p), "correlation": float(c)}
                      for i, p, c in zip(self.dropped[:n_list], self.partner[:n_list],
                                         self.correlation[:n_list])],
        }


@dataclass
class AuditResult:
    """Everything :func:`audit` measured; ``summary()`` holds every number of the report."""

    config: AuditConfig
    samples: torch.Tensor  # [M, *F] the audited images
    train: torch.Tensor  # [N, *F]
    spaces: dict[str, SpaceAudit]
    duplicates: Duplicates
    sources: dict = field(default_factory=dict)
    encoder_metrics: dict | None = None  # see encoder_section

    def summary(self) -> dict:
        out = {
            "n_samples": len(self.samples),
            "n_train": len(self.train),
            "image_shape": list(self.samples.shape[1:]),
            "config": cfgmod.to_dict(self.config),
            "sources": self.sources,
            "spaces": {k: s.summary(self.config.n_show) for k, s in self.spaces.items()},
            "duplicates": self.duplicates.summary(),
        }
        if self.encoder_metrics is not None:
            out["encoder_metrics"] = self.encoder_metrics
        out["verdict"] = verdict(out)
        return out

    @property
    def verdict(self) -> str:
        return self.summary()["verdict"]


def _quantiles(v: np.ndarray) -> dict:
    finite = v[np.isfinite(v)]
    q = np.quantile(finite, [0.05, 0.25, 0.5, 0.75, 0.95]) if len(finite) else [math.nan] * 5
    return {"min": float(v.min()), "p05": float(q[0]), "p25": float(q[1]),
            "median": float(q[2]), "p75": float(q[3]), "p95": float(q[4]),
            "max": float(v.max()), "mean": float(finite.mean()) if len(finite) else math.nan}


def verdict(summary: dict) -> str:
    """One paragraph: what fraction is copied, against which background, and the verdict."""
    px = summary["spaces"]["pixel"]
    M, N = summary["n_samples"], summary["n_train"]
    frac, count = px["memorized_fraction"], px["memorized_count"]
    thr = px["threshold"]
    thr_text = "1/3" if abs(thr - 1 / 3) < 1e-12 else f"{thr:g}"
    parts = [
        f"{count} of {M} samples ({frac:.1%}) are memorized: their nearest of the {N} training "
        f"images is less than {thr_text} as far as the second nearest (pixel L2; median "
        f"ratio {px['ratio']['median']:.3f}).",
        f"Median nearest cosine {px['nearest_cosine']['median']:.3f} against "
        f"{px['background_cosine']['median']:.3f} for training images and their nearest other "
        f"training image; {px['above_background_p95']:.1%} of samples are closer to a training "
        f"image than 95% of training images are to theirs.",
    ]
    ft = summary["spaces"].get("features")
    if ft:
        parts.append(
            f"In feature space {ft['memorized_fraction']:.1%} are memorized (median ratio "
            f"{ft['ratio']['median']:.3f}), median nearest cosine "
            f"{ft['nearest_cosine']['median']:.3f} vs background "
            f"{ft['background_cosine']['median']:.3f}."
        )
    dup = summary["duplicates"]
    if dup["n_duplicates"]:
        parts.append(
            f"The training set holds {dup['n_duplicates']} near-duplicate images "
            f"(|correlation| > {dup['threshold']:g}); copies of duplicated images have "
            f"d1 ≈ d2 and escape the ratio test, so de-duplicate before trusting a low count."
        )
    else:
        parts.append("The training set has no near-duplicates "
                     f"(|correlation| > {dup['threshold']:g}).")
    scalings = {k: v.get("scaling") for k, v in summary.get("sources", {}).items()
                if isinstance(v, dict) and v.get("scaling")}
    if len(set(scalings.values())) > 1:
        parts.append("Warning: samples and training images were scaled differently on "
                     f"loading ({'; '.join(f'{k}: {v}' for k, v in scalings.items())}), "
                     "which inflates every distance.")
    worst = max([frac] + ([ft["memorized_fraction"]] if ft else []))
    if worst >= 0.5:
        parts.append("Verdict: the model memorizes; most samples reproduce training images.")
    elif worst > 0:
        parts.append("Verdict: the model partly memorizes; some samples copy training images "
                     "(see the most-copied grid).")
    else:
        parts.append("Verdict: no sample is a copy of a training image by the ratio test.")
    return " ".join(parts)


# ----------------------------------------------------------------------------------------
# the audit
# ----------------------------------------------------------------------------------------


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(len(x), -1)


def _centred(v: torch.Tensor) -> torch.Tensor:
    """Each row minus its mean: cosines of the result are correlations."""
    return v - v.mean(dim=1, keepdim=True)


def _audit_space(space, samples, train, config, *, center, progress) -> SpaceAudit:
    S, T = _flat(samples), _flat(train)  # [M, D], [N, D]
    chunk = config.chunk_size
    sq, idx = _search_chunked(S, T, 2, "l2", chunk=chunk, desc=f"{space}: nearest L2",
                              progress=progress)
    mem = memorization_from_knn(sq.cpu(), idx.cpu(), config.threshold)  # [M]: small
    if center:
        S, T = _centred(S), _centred(T)
    cos, cos_i = _search_chunked(S, T, 1, "cosine", chunk=chunk,
                                 desc=f"{space}: nearest cosine", progress=progress)
    N = len(T)
    B = N if config.background_size in (0, None) else min(N, config.background_size)
    query = torch.linspace(0, N - 1, B, dtype=torch.float64).round().long()  # evenly spaced
    query = query.to(T.device)
    bv, bi = _search_chunked(T[query], T, 2, "cosine", chunk=chunk,
                             desc=f"{space}: train vs train", progress=progress)
    # the best match is the image itself (or an identical copy ranked first): take the
    # first match that is not the query
    col = (bi[:, 0] == query).long()[:, None]
    return SpaceAudit(
        space=space, memorization=mem, nearest_cosine=cos[:, 0].cpu(),
        nearest_cosine_index=cos_i[:, 0].cpu(), background_query=query.cpu(),
        background_cosine=bv.gather(1, col)[:, 0].cpu(),
        background_index=bi.gather(1, col)[:, 0].cpu(), centered=center,
    )


def find_duplicates(train: torch.Tensor, threshold: float = 0.95, pool: int = 20, *,
                    chunk_size: int = 1024) -> Duplicates:
    """The images :func:`pydiffgen.data.deduplicate` drops, each with the kept image it
    duplicates (best |correlation| among the kept) and that correlation."""
    from ..data.dedup import correlation_features, deduplicate

    _, kept = deduplicate(train, threshold, pool, return_index=True, chunk_size=chunk_size,
                          search=search)
    N = len(train)
    is_kept = torch.zeros(N, dtype=torch.bool)
    is_kept[kept.cpu()] = True
    dropped = (~is_kept).nonzero()[:, 0]  # [K] on the CPU
    partner = torch.empty(0, dtype=torch.int64)
    corr = torch.empty(0, dtype=torch.float32)
    if len(dropped):
        feats = correlation_features(train, pool)  # [N, D'] unit-norm, centred
        q = feats[dropped.to(feats.device)]
        v, i = search(torch.cat([q, -q]), feats[kept], 1, "ip")
        v, i = v[:, 0].view(2, -1), i[:, 0].view(2, -1)
        neg = v[1] > v[0]  # an inverted copy
        partner = kept[torch.where(neg, i[1], i[0]).to(kept.device)].cpu()
        corr = torch.where(neg, -v[1], v[0]).cpu()
    return Duplicates(threshold=threshold, pool=pool, n_train=N, dropped=dropped,
                      partner=partner, correlation=corr)


def _check_inputs(samples, train, features):
    check_tensor(samples, "samples", min_ndim=2)
    check_tensor(train, "train", min_ndim=2)
    if samples.device != train.device:
        raise InputError(f"samples and train must be on one device, got {samples.device} "
                         f"and {train.device}")
    check_same_image_shape(samples, train, "samples", "train")
    if len(train) < 2:
        raise InputError(f"the audit needs at least 2 training images, got {len(train)}")
    if features is None:
        return None
    if not isinstance(features, dict) or set(features) != {"samples", "train"}:
        raise InputError("features must be a dict with exactly the keys 'samples' and 'train'")
    fs, ft = features["samples"], features["train"]
    check_tensor(fs, "features['samples']", ndim=2)
    check_tensor(ft, "features['train']", ndim=2)
    if len(fs) != len(samples) or len(ft) != len(train):
        raise InputError(
            f"features need one row per sample and per training image: got "
            f"{len(fs)} and {len(ft)} rows for {len(samples)} samples and {len(train)} "
            "training images"
        )
    if fs.shape[1] != ft.shape[1]:
        raise InputError(f"features['samples'] and features['train'] have different widths "
                         f"{fs.shape[1]} and {ft.shape[1]}")
    return fs.float().to(samples.device), ft.float().to(train.device)


def encoder_section(encoder, samples: torch.Tensor, train: torch.Tensor, *,
                    n_boot: int = 200, progress: bool = False) -> dict:
    """The field's metrics that need only the training set and the samples
    (:data:`~pydiffgen.experiments.feature_metrics.TRAIN_GEN_METRICS`: PRDC with train as
    the real set, AuthPct, extraction, copy score) on ``encoder``'s features of samples
    [M, C, H, W] and train [N, C, H, W]. Samples are clipped to [-1, 1], the encoders'
    range, as an image writer would. Returns ``{"encoder", "feature_dim", "metrics"}``
    with rows as :func:`~pydiffgen.experiments.feature_metrics.measure` gives them."""
    from ..features import load_encoder
    from .feature_metrics import TRAIN_GEN_METRICS, encode_sets, measure

    enc = load_encoder(encoder)
    sets = encode_sets({"fake": samples.clamp(-1, 1).cpu(), "train": train.cpu()}, enc,
                       progress=progress)
    rows, _ = measure({**sets, "real": sets["train"]}, TRAIN_GEN_METRICS, n_boot=n_boot)
    return {"encoder": enc.name, "feature_dim": int(sets["train"].shape[1]), "metrics": rows}


def audit(samples: torch.Tensor, train: torch.Tensor, *, features: dict | None = None,
          config: AuditConfig | None = None, sources: dict | None = None,
          encoder=None, progress: bool = False) -> AuditResult:
    """Audit ``samples`` [M, *F] against the training set ``train`` [N, *F] (N ≥ 2).

    ``features``: optional precomputed embeddings ``{"samples": [M, D], "train": [N, D]}``
    (e.g. SSCD or DINO), audited the same way in feature space. The searches run where the
    tensors are (CUDA: the Triton knn); results come back on the CPU. ``sources``: free-form
    description of the inputs, kept in the summary. ``encoder``: an encoder or its spec
    (:func:`pydiffgen.features.load_encoder`) adding :func:`encoder_section`. Memory: the
    inputs plus a mean-removed copy of each (pixel cosines) and chunk_size × key-tile
    scores; never M × N.
    """
    config = config or AuditConfig()
    check_positive_float(config.threshold, "threshold")
    check_positive_int(config.chunk_size, "chunk_size")
    check_positive_int(config.n_show, "n_show")
    check_positive_int(config.background_size, "background_size", minimum=0)
    check_positive_int(config.dedup_pool, "dedup_pool")
    check_positive_int(config.n_boot, "n_boot", minimum=2)
    if not 0.0 < config.dedup_threshold < 1.0:  # checked before the searches, not after
        raise InputError(f"dedup_threshold must lie in (0, 1), got {config.dedup_threshold!r}")
    feats = _check_inputs(samples, train, features)
    samples, train = samples.float(), train.float()
    spaces = {"pixel": _audit_space("pixel", samples, train, config, center=config.center,
                                    progress=progress)}
    if feats is not None:
        spaces["features"] = _audit_space("features", *feats, config, center=False,
                                          progress=progress)
    dups = find_duplicates(train, config.dedup_threshold, config.dedup_pool,
                           chunk_size=min(config.chunk_size, 1024))
    section = None if encoder is None else encoder_section(
        encoder, samples, train, n_boot=config.n_boot, progress=progress)
    return AuditResult(config=config, samples=samples, train=train, spaces=spaces,
                       duplicates=dups, sources=dict(sources or {}), encoder_metrics=section)


# ----------------------------------------------------------------------------------------
# inputs: files, embeddings, models
# ----------------------------------------------------------------------------------------


def load_images(path) -> tuple[torch.Tensor, dict]:
    """Images [N, C, H, W] in [-1, 1] from a ``.npy`` file, a ``.npz`` archive or a
    ``.safetensors`` file holding one array (or ``FILE.npz:KEY``, ``FILE.safetensors:KEY``,
    e.g. a sweep's ``samples.safetensors:A`` and ``:S1``) or a folder of image files; and
    how they were read."""
    from .. import data

    text = str(path)
    if not text.strip():  # Path("") is the current folder: never read it by accident
        raise DataError("an empty path; name a .npy, .npz or .safetensors file or a folder")
    key = None
    if ".npz:" in text or ".safetensors:" in text:
        text, key = text.rsplit(":", 1)
    p = Path(text).expanduser()
    if p.is_dir():
        x, info = data.load("folder", path=p, return_info=True)
    elif p.suffix == ".npy":
        x, info = data.load("npy", path=p, return_info=True)
    elif p.suffix in (".npz", ".safetensors"):
        x, info = data.load(p.suffix[1:], path=p, key=key, return_info=True)
    elif not p.exists():
        raise DataError(f"{p} does not exist")
    else:
        raise DataError(f"{p}: expected a .npy file, a .npz archive, a .safetensors file or "
                        "a folder of images")
    return x, {"path": str(p), "scaling": info.get("scaling"), "key": info.get("key")}


def load_features(path) -> dict:
    """Embeddings ``{"samples": [M, D], "train": [N, D]}`` float32 from a ``.npz`` archive
    with exactly those two keys (read with ``allow_pickle=False``)."""
    import zipfile

    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{p} does not exist or is not a file")
    try:
        with open(p, "rb") as fh:
            archive = np.load(fh, allow_pickle=False)  # an ndarray for a .npy file
            if not hasattr(archive, "files") or not {"samples", "train"} <= set(archive.files):
                raise DataError(f"{p}: expected an .npz archive with arrays 'samples' and "
                                "'train' (one embedding row per sample / training image)")
            arrays = {k: archive[k] for k in ("samples", "train")}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise DataError(f"{p}: expected an .npz archive written by numpy.savez ({err})") from None
    out = {}
    for k, a in arrays.items():
        if a.dtype.kind not in "uif" or a.ndim != 2 or a.size == 0:
            raise DataError(f"{p}[{k}]: expected a non-empty numeric [rows, D] array, got "
                            f"dtype {a.dtype} shape {a.shape}")
        out[k] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return out


def load_denoiser(path, *, device="cpu"):
    """A pydiffgen checkpoint (``load_model``) or a diffusers folder
    (:func:`pydiffgen.models.adapters.load_diffusers`)."""
    from ..checkpoint import load_model
    from ..models.adapters import is_diffusers_dir, load_diffusers

    if is_diffusers_dir(path):
        return load_diffusers(path, device=device)
    return load_model(path, device=device)


def default_method(model) -> str:
    """The sampler a model was built for: Kadkhodaie ascent for blind models, else EDM Heun."""
    return "kadkhodaie" if getattr(model, "blind", False) else "heun"


def sample_model(model, n: int, shape, *, method: str | None = None, seed: int = 0,
                 device="cpu", progress: bool = False, cache: Path | None = None,
                 **options) -> torch.Tensor:
    """``n`` samples [n, *shape] from ``model`` (decoded to images for a latent model);
    blind models default to the Kadkhodaie ascent, conditioned ones to EDM Heun (within a
    diffusers schedule's σ range).

    ``cache``: a folder; samples are stored there (``samples.npy`` + ``samples.json``
    describing the request) and reused by a rerun with the same request.
    """
    from ..diffusion.sampling import sample
    from ..io import atomic_path, read_json, write_json

    method = method or default_method(model)
    if method in ("heun", "euler", "ddpm") and hasattr(model, "sigma_max"):
        # a diffusers schedule covers [σ_0, σ_{T−1}] only
        options.setdefault("sigma_max", min(80.0, model.sigma_max))
        options.setdefault("sigma_min", max(0.002, min(model.sigma_min, options["sigma_max"])))
    request = {"model": getattr(model, "config", {}), "weights": _weights_digest(model),
               "n": n, "shape": list(shape),
               "method": method, "seed": seed, "options": options}
    request = json.loads(json.dumps(request))  # as it reads back from samples.json
    if cache is not None:
        npy, desc = Path(cache) / "samples.npy", Path(cache) / "samples.json"
        if npy.is_file() and desc.is_file() and read_json(desc) == request:
            with open(npy, "rb") as fh:
                return torch.from_numpy(np.load(fh, allow_pickle=False))
    x = sample(model, n, tuple(shape), method=method, seed=seed, device=device,
               progress=progress, **options).cpu().float()
    if getattr(model, "latent", False):  # a latent model's samples are audited as images
        x = model.decode(x.to(device)).cpu().float()
    if cache is not None:
        with atomic_path(npy) as tmp, open(tmp, "wb") as fh:
            np.save(fh, x.numpy())
        write_json(desc, request)  # written last: a torn pair is never reused
    return x


def _weights_digest(model) -> str:
    """sha256 of the model's state: cached samples of retrained weights are not reused."""
    import hashlib

    h = hashlib.sha256()
    if isinstance(model, torch.nn.Module):
        for name, t in model.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------
# outputs
# ----------------------------------------------------------------------------------------


def write_audit_report(result: AuditResult, out_dir) -> Path:
    """Write ``audit.json`` (every number of the report and the verdict), ``neighbours.npz``
    (per-sample ratio, distances, nearest indices and cosines) and ``report.html`` with its
    PNGs into ``out_dir``, each atomically. Returns the report's path."""
    from ..io import atomic_path, write_json
    from ..report.audit import audit_report

    out = Path(out_dir)
    summary = result.summary()
    write_json(out / "audit.json", summary)
    arrays = {}
    for name, s in result.spaces.items():
        m = s.memorization
        arrays.update({f"{name}_ratio": m.ratio, f"{name}_d1": m.d1, f"{name}_d2": m.d2,
                       f"{name}_nn_index": m.nn_index, f"{name}_memorized": m.memorized,
                       f"{name}_nearest_cosine": s.nearest_cosine,
                       f"{name}_nearest_cosine_index": s.nearest_cosine_index,
                       f"{name}_background_query": s.background_query,
                       f"{name}_background_cosine": s.background_cosine})
    arrays["duplicates_dropped"] = result.duplicates.dropped
    arrays["duplicates_partner"] = result.duplicates.partner
    with atomic_path(out / "neighbours.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **{k: v.cpu().numpy() for k, v in arrays.items()})
    return audit_report(result, summary, out)
