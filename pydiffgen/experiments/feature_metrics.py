"""``pydiffgen metrics``: the field's feature-space metrics of generated images, each with
a confidence interval, in one table.

Images (or features) of four sets go through one encoder (:mod:`pydiffgen.features`):
``real`` and ``fake`` always, ``train`` (the generator's training set) and ``test`` (held
out from it) when given. Each metric runs on the sets it needs (``METRICS``); one whose
sets are missing is skipped and the table says why.

Intervals: each metric's own ``ci=`` (:func:`pydiffgen.metrics.confidence_interval`):
half-samples of every set drawn without replacement, so no point is repeated and the
neighbour-based metrics stay unbiased; the interval is centred on the full-set value.

Cost: every replicate repeats the whole metric on half the rows (C_T its k-means, FLD its
fitted mixture); KID draws 10 subsets (not its default 100): with sets of at most
``subset_size`` rows every subset is the whole set, and the replicates supply the spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .. import metrics as mt
from .._checks import check_positive_int
from ..errors import InputError


@dataclass(frozen=True)
class Metric:
    """One metric of the table: ``fn(*sets, ci=..., n_boot=..., seed=...)`` on the named
    sets ("fake" is the generated one), the result fields reported (None: a scalar) and a
    line saying what it measures."""

    fn: object
    sets: tuple[str, ...]
    fields: tuple[str, ...] | None
    about: str


METRICS = {
    "prdc": Metric(mt.prdc, ("real", "fake"),
                   ("precision", "recall", "density", "coverage"),
                   "precision, recall, density, coverage (Naeem et al. 2020); higher is closer"),
    "fd": Metric(mt.frechet_distance, ("real", "fake"), None,
                 "Fréchet distance of Gaussian fits; 0 = same mean and covariance"),
    "kid": Metric(mt.kernel_distance, ("real", "fake"), None,
                  "kernel (MMD²) distance, unbiased, 10 subsets; ≈ 0 = same distribution"),
    "authpct": Metric(mt.authpct, ("train", "fake"), None,
                      "% of generated samples that are authentic (Alaa et al. 2022)"),
    "ct": Metric(mt.ct_score, ("train", "test", "fake"), None,
                 "data-copying test C_T (Meehan et al. 2020); < 0 = copying"),
    "fld": Metric(mt.fld, ("train", "test", "fake"), ("fld", "gap"),
                  "feature likelihood divergence and train/test NLL gap (Jiralerspong et "
                  "al. 2023); lower fld is better, gap > 0 = overfit"),
    "extraction": Metric(mt.extraction_distance, ("fake", "train"), ("fraction",),
                         "fraction of samples with Carlini et al. 2023's relative distance "
                         "below 1/3 (α = 0.5, 50 neighbours); copies"),
    "copy": Metric(mt.copy_score, ("fake", "train"),
                   ("p95", "fraction", "background_p95"),
                   "top-1 cosine to train (Somepalli et al. 2023): 95th percentile, fraction "
                   "> 0.5, and train-vs-train 95th percentile"),
}

# asked for together, these come from one training index and one gen→train search over
# the same half-samples (``metrics.authpct_extraction``)
JOINT = ("authpct", "extraction")

# what an audit can measure from its samples and training set alone
TRAIN_GEN_METRICS = ("prdc", "authpct", "extraction", "copy")


def parse_metrics(text) -> tuple[str, ...]:
    """``"all"`` or a comma list of :data:`METRICS` names -> those names, in table order."""
    names = tuple(METRICS) if text in (None, "all") else \
        tuple(s.strip() for s in str(text).split(",") if s.strip())
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise InputError(f"unknown metric {', '.join(unknown) or repr(text)}; expected 'all' "
                         f"or a comma list of {', '.join(METRICS)}")
    return tuple(n for n in METRICS if n in names)


def measure(features: dict, metrics, *, k: int = 5, n_boot: int = 200, ci: float = 0.95,
            seed: int = 0, options: dict | None = None,
            skip_small: bool = False) -> tuple[dict, dict]:
    """Each metric of ``metrics`` on ``features`` (set name -> [N, F]), with its
    confidence interval at level ``ci`` over ``n_boot`` half-samples. Returns (rows,
    skipped): rows ``{"prdc.precision": {"value", "low", "high", "ci"}, "fd": {...}, ...}``
    and skipped ``{metric: why}`` for a metric whose sets are not all given. ``k``: PRDC's
    neighbours; ``options``: keyword arguments of a metric by name (``{"ct": {"tau":
    0.05}}``); ``skip_small``: a metric whose sets (or half-samples) are too small for it
    is skipped with the reason, not an error (a sweep's smallest N). ``JOINT`` metrics
    asked for together share their searches and half-samples (``joint_rows``)."""
    check_positive_int(k, "k")
    options = options or {}
    names = parse_metrics(",".join(metrics))
    rows, skipped = joint_rows(features, names, n_boot=n_boot, ci=ci, seed=seed,
                               options=options), {}
    for name in names:
        spec = METRICS[name]
        missing = [s for s in spec.sets if features.get(s) is None]
        if missing:
            skipped[name] = f"needs --{' and --'.join(missing)}"
            continue
        if name in JOINT and any(row.split(".")[0] == name for row in rows):
            continue
        kwargs = {"prdc": {"k": k}, "kid": {"subsets": 10}}.get(name, {})
        kwargs.update(options.get(name, {}))
        try:
            est = spec.fn(*(features[s] for s in spec.sets), ci=ci, n_boot=n_boot, seed=seed,
                          **kwargs)
        except InputError as err:
            if not skip_small:
                raise
            skipped[name] = str(err)
            continue
        parts = {name: est} if spec.fields is None else \
            {f"{name}.{f}": getattr(est, f) for f in spec.fields}
        rows.update({row: estimate_row(e) for row, e in parts.items()})
    order = {name: i for i, name in enumerate(METRICS)}  # table order, joint rows too
    return dict(sorted(rows.items(), key=lambda row: order[row[0].split(".")[0]])), skipped


def estimate_row(e) -> dict:
    """An ``Estimate`` as a table row."""
    return {"value": e.value, "low": e.low, "high": e.high, "ci": e.ci}


def joint_rows(features: dict, names, *, n_boot: int, ci: float, seed: int,
               options: dict) -> dict:
    """The rows of the ``JOINT`` metrics when all of them are asked for and their sets
    given, from one ``authpct_extraction`` call; {} otherwise, or when a set is too small
    for one of them (each then runs, or is skipped, on its own)."""
    if not all(n in names for n in JOINT) or features.get("fake") is None \
            or features.get("train") is None or options.get("authpct"):
        return {}
    try:
        est = mt.authpct_extraction(features["fake"], features["train"], ci=ci,
                                    n_boot=n_boot, seed=seed, **options.get("extraction", {}))
    except InputError:
        return {}
    return {row: estimate_row(e) for row, e in est.items()}


def encode_sets(sources: dict, encoder, *, cache=None, batch_size: int = 64,
                progress: bool = True) -> dict:
    """Features [N, F] of each image source (set name -> what
    :func:`pydiffgen.features.extract` reads; None stays None), cached as
    ``<cache>/<name>.npy`` when ``cache`` is a folder. Every set must give one width."""
    from ..features import extract

    for name, source in sources.items():  # a missing file fails before any cache is written
        text = str(source).rsplit(":", 1)[0] if ".npz:" in str(source) or \
            ".safetensors:" in str(source) else str(source)
        if isinstance(source, (str, Path)) and not Path(text).expanduser().exists():
            raise InputError(f"{name}: {text} does not exist")
    out = {}
    for name, source in sources.items():
        path = None if cache is None or source is None else Path(cache) / f"{name}.npy"
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        out[name] = None if source is None else extract(encoder, source, batch_size=batch_size,
                                                        cache=path, progress=progress)
    widths = {n: f.shape[1] for n, f in out.items() if f is not None}
    if len(set(widths.values())) > 1:
        raise InputError("the sets give features of different widths ("
                         + ", ".join(f"{n} {w}" for n, w in widths.items())
                         + "): expected images of one shape")
    return out


def feature_metrics(real, fake, *, train=None, test=None, encoder="pixel", metrics="all",
                    k: int = 5, n_boot: int = 200, seed: int = 0, batch_size: int = 64,
                    trust_code: bool = False, device=None, cache=None,
                    progress: bool = True) -> dict:
    """The table of ``pydiffgen metrics``: ``real`` and ``fake`` (and ``train``, ``test``)
    images — tensors [N, C, H, W] in [-1, 1], files or folders — through ``encoder`` (a
    :func:`pydiffgen.features.load_encoder` spec or module), then each metric of
    ``metrics`` (``"all"`` or names of :data:`METRICS`) with its confidence interval.

    Returns ``{"encoder", "sizes", "feature_dim", "k", "n_boot", "seed", "metrics": rows,
    "skipped": {metric: why}}`` with rows as :func:`measure` gives them. ``cache``: a
    folder for the features (``real.npy`` …), resumed by a rerun."""
    from ..features import load_encoder

    names = parse_metrics(metrics if isinstance(metrics, str) else ",".join(metrics))
    check_positive_int(n_boot, "n_boot", minimum=2)
    enc = load_encoder(encoder, device=device, trust_code=trust_code)
    sets = encode_sets({"real": real, "fake": fake, "train": train, "test": test}, enc,
                       cache=cache, batch_size=batch_size, progress=progress)
    rows, skipped = measure(sets, names, k=k, n_boot=n_boot, seed=seed)
    return {"encoder": enc.name,
            "sizes": {n: len(f) for n, f in sets.items() if f is not None},
            "feature_dim": int(sets["real"].shape[1]), "k": k, "n_boot": n_boot, "seed": seed,
            "metrics": rows, "skipped": skipped}


def table_rows(rows: dict) -> list[list[str]]:
    """[metric, value, "[low, high]"] per row, numbers to 4 significant digits."""
    def num(v):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return [[name, num(r["value"]), f"[{num(r['low'])}, {num(r['high'])}]"]
            for name, r in rows.items()]


def format_table(result: dict) -> str:
    """The result of :func:`feature_metrics` as the text table the command prints."""
    rows = table_rows(result["metrics"])
    ci = next(iter(result["metrics"].values()))["ci"] if result["metrics"] else 0.95
    header = ["metric", "value", f"{ci:.0%} CI"]
    width = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = [f"encoder {result['encoder']} (features {result['feature_dim']}); "
             + ", ".join(f"{n} {s}" for n, s in result["sizes"].items())
             + f"; intervals from {result['n_boot']} half-samples"]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(r, width))) for r in [header, *rows]]
    lines += [f"skipped {name}: {why}" for name, why in result["skipped"].items()]
    return "\n".join(lines)


def write_metrics(result: dict, out_dir) -> Path:
    """``metrics.json`` (the result) and ``report.html`` (the table, what each metric
    measures, the skipped ones) into ``out_dir``, each atomically. Returns the report."""
    from ..io import write_json
    from ..report.html import Report

    out = Path(out_dir)
    write_json(out / "metrics.json", result)
    rep = Report("Feature-space metrics", out)
    rep.paragraph(format_table(result).splitlines()[0])
    ci = next(iter(result["metrics"].values()))["ci"] if result["metrics"] else 0.95
    rep.table(["metric", "value", f"{ci:.0%} CI"], table_rows(result["metrics"]))
    rep.heading("What each metric measures")
    measured = {row.split(".")[0] for row in result["metrics"]}
    rep.table(["metric", "measures"], [[n, m.about] for n, m in METRICS.items()
                                       if n in measured])
    if result["skipped"]:
        rep.paragraph("Skipped: " + "; ".join(f"{n} ({why})"
                                              for n, why in result["skipped"].items()), "note")
    return rep.save()
