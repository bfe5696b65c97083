"""Feature-space metrics (pydiffgen.metrics) vs the field's reference code, one run.

- PRDC k=5 at 10,000 real × 10,000 fake × 512: ``prdc.compute_prdc`` (clovaai; three
  dense sklearn distance matrices + argpartition) vs ``pydiffgen.metrics.prdc``.
- AuthPct at 50,000 train × 10,000 gen × 768: dgm-eval's ``compute_authpct`` (torch.cdist
  train × train and train × gen, float32) vs ``pydiffgen.metrics.authpct``.
- C_T at 50,000 train × 10,000 test × 10,000 gen × 768: dgm-eval's ``compute_CTscore``
  (PCA to 64 components, KMeans(3) cells, sklearn NearestNeighbors per cell, scipy
  mannwhitneyu) vs ``pydiffgen.metrics.ct_score`` on the same PCA features and cells.

- PRDC k=5 at 100,000 × 100,000 × 768 (dense matrices would need 120 GB): ours alone,
  its time and peak memory (case ``prdc-large``; ``PYDIFFGEN_BENCH_PRDC_LARGE=N`` sets N).

Each row: seconds of one call, peak resident memory above what the process held before
the call (Linux: VmHWM after resetting it through /proc/self/clear_refs), the speedup
(peer / ours) and the values side by side; PRDC rows also give the share of the time spent
in the kNN searches (``KnnIndex.search_rows``) and their count. Every row carries the load
average (``uptime``) when it was measured: the machine is shared. Data: Gaussian features
with a shifted fake set and a tenth of gen copied from train (so AuthPct and C_T see
copying).

    python benchmarks/bench_metrics.py [--quick]
    PYDIFFGEN_BENCH_CASES=prdc-large OMP_NUM_THREADS=1 nice -n 19 python benchmarks/bench_metrics.py

The first (cases prdc, authpct, ct) took 13.5 min wall at load 12–16 on the shared 2-core
machine (2026-12-06; timed calls: ours 45 s, the peers 364 s, the dense AuthPct alone
275 s and 12 GB), so a quiet 2-core machine does it within 12 min. The second: one thread, because a
starved nice-19 process with two spin-waiting OpenMP threads burns its share waiting.

``PYDIFFGEN_BENCH_CASES``: a comma list of ``prdc`` (10,000 × 10,000 × 512), ``authpct``
and ``ct`` (50,000 × 10,000 × 768; ``ct`` includes ``authpct``'s data generation) and
``prdc-large``; default ``prdc,authpct,ct``.

The issue's targets: PRDC ≥ 10× faster with ≤ 10% of the package's peak memory;
AuthPct and C_T ≥ 10× faster than dgm-eval's formulas.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import metadata, parse_args, print_table, ratio_rows, write_json  # noqa: E402

from pydiffgen.metrics import authpct, ct_score, prdc  # noqa: E402
from pydiffgen.ops import KnnIndex  # noqa: E402


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def run(fn):
    """(value, seconds, peak MiB above the resident set before the call) of one call."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        before = rss_kib("VmRSS")
    except OSError:
        before = None
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        value = fn()
    seconds = time.perf_counter() - t0
    peak = None if before is None else (rss_kib("VmHWM") - before) / 1024
    return value, seconds, peak


def dgm_authpct(train, gen):
    """dgm-eval's compute_authpct (from marcojira/fls): dense float32 torch.cdist."""
    train = torch.tensor(train, dtype=torch.float32)
    gen = torch.tensor(gen, dtype=torch.float32)
    real_dists = torch.cdist(train, train)
    real_dists.fill_diagonal_(float("inf"))
    gen_dists = torch.cdist(train, gen)
    real_min = real_dists.min(axis=0)
    gen_min = gen_dists.min(dim=0)
    authen = real_min.values[gen_min.indices] < gen_min.values
    return (100 * torch.sum(authen) / len(authen)).item()


def dgm_ct(train, test, gen, labels):
    """dgm-eval's C_T (from casey-meehan/data-copying) given the cell labels: per cell,
    sklearn NearestNeighbors on the cell's train points and scipy's mannwhitneyu."""
    from scipy.stats import mannwhitneyu
    from sklearn.neighbors import NearestNeighbors

    t_lab, p_lab, q_lab = labels
    m, n, tau = len(gen), len(test), 20 / len(gen)
    weights, zs = [], []
    for c in range(int(t_lab.max()) + 1):
        T, P, Q = train[t_lab == c], test[p_lab == c], gen[q_lab == c]
        if len(Q) / m <= tau:
            continue
        nn = NearestNeighbors(n_neighbors=1).fit(T)
        lq, lp = nn.kneighbors(Q, 1)[0], nn.kneighbors(P, 1)[0]
        u, _ = mannwhitneyu(lq, lp, alternative="less")
        nc, mc = len(P), len(Q)
        z = (u - (nc * mc / 2 - 0.5)) / np.sqrt(nc * mc * (nc + mc + 1) / 12)
        zs.append(float(np.squeeze(z)))
        weights.append(len(P) / n)
    return float(np.dot(weights, zs) / np.sum(weights))


def pca64(train, test, gen):
    """dgm-eval's preprocessing: features wider than 64 projected on train's first 64
    principal components."""
    if train.shape[1] <= 64:
        return train, test, gen
    from sklearn.decomposition import PCA

    pca = PCA(n_components=64).fit(train)
    return [pca.transform(s).astype(np.float32) for s in (train, test, gen)]


def kmeans_labels(train, test, gen, seed=0):
    """KMeans(3) cells as dgm-eval, on one OpenMP thread like pydiffgen's (the same k-means
    cost on both sides of the ratio)."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="openmp"):
        km = KMeans(n_clusters=3, n_init=10, random_state=seed).fit(train)
    return [km.predict(s) for s in (train, test, gen)]


def load() -> str:
    """The 1-minute load average (as ``uptime`` prints it) on this shared machine."""
    return f"{os.getloadavg()[0]:.2f}"


def row(case, impl, value, seconds, peak, **extra):
    print(f"{case}, {impl}: {seconds:.1f} s, load {load()}", flush=True)  # progress
    return {"kind": "time", "case": case, "impl": impl, "value": value, "time_s": seconds,
            "peak_mib": peak, "load": load(), **extra}


@contextlib.contextmanager
def knn_timer():
    """Seconds spent in, and number of, the kNN searches PRDC makes (``KnnIndex``'s
    ``search_rows``, the one search path, wrapped for the call)."""
    spent = {"s": 0.0, "calls": 0}
    inner = KnnIndex.search_rows

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent["s"] += time.perf_counter() - t0
            spent["calls"] += 1

    KnnIndex.search_rows = timed
    try:
        yield spent
    finally:
        KnnIndex.search_rows = inner


def our_prdc(real, fake):
    """(value, seconds, peak MiB, kNN share of the time, kNN searches) of our PRDC."""
    with knn_timer() as spent:
        value, seconds, peak = run(lambda: prdc(torch.from_numpy(real), torch.from_numpy(fake),
                                                5))
    return value, seconds, peak, spent["s"] / seconds, spent["calls"]


def prdc_rows(n, d, rng):
    import prdc as package

    real = rng.normal(size=(n, d)).astype(np.float32)
    fake = (rng.normal(size=(n, d)) * 1.05 + 0.05).astype(np.float32)
    case = f"prdc k=5 {n}x{n}x{d}"
    ours = our_prdc(real, fake)
    peer = run(lambda: package.compute_prdc(real, fake, 5))
    rows = [row(case, "pydiffgen", str(ours[0]), ours[1], ours[2], knn_share=ours[3],
                knn_calls=ours[4]),
            row(case, "prdc package", str({k: round(float(v), 6) for k, v in peer[0].items()}),
                peer[1], peer[2])]
    rows.append({"kind": "memory", "case": case, "ours_peak_mib": ours[2],
                 "peer_peak_mib": peer[2],
                 "ours_over_peer": None if peer[2] is None else ours[2] / peer[2]})
    return rows + ratio_rows(case, {"pydiffgen": ours[1], "prdc package": peer[1]}, "pydiffgen")


def large_prdc_rows(n, d, rng):
    """Ours alone where the package's three dense n×n float32 matrices do not fit."""
    real = rng.normal(size=(n, d)).astype(np.float32)
    fake = (rng.normal(size=(n, d)) * 1.05 + 0.05).astype(np.float32)
    ours = our_prdc(real, fake)
    dense_gib = 3 * n * n * 4 / 2**30
    return [row(f"prdc k=5 {n}x{n}x{d} (dense: {dense_gib:.0f} GiB)", "pydiffgen",
                str(ours[0]), ours[1], ours[2], knn_share=ours[3], knn_calls=ours[4])]


def copying_sets(n_train, n_gen, d, rng):
    train = rng.normal(size=(n_train, d)).astype(np.float32)
    test = rng.normal(size=(n_gen, d)).astype(np.float32)
    gen = rng.normal(size=(n_gen, d)).astype(np.float32)
    gen[: n_gen // 10] = train[: n_gen // 10] + 0.01 * rng.normal(size=(n_gen // 10, d))
    return train, test, gen


def authpct_rows(train, gen):
    case = f"authpct {len(train)}x{len(gen)}x{train.shape[1]}"
    ours = run(lambda: authpct(torch.from_numpy(train), torch.from_numpy(gen)))
    peer = run(lambda: dgm_authpct(train, gen))
    rows = [row(case, "pydiffgen", ours[0], ours[1], ours[2]),
            row(case, "dgm-eval cdist", peer[0], peer[1], peer[2])]
    return rows + ratio_rows(case, {"pydiffgen": ours[1], "dgm-eval cdist": peer[1]},
                             "pydiffgen")


def ct_rows(train, test, gen):
    case = f"C_T {len(train)}x{len(test)}x{len(gen)}x{train.shape[1]} (pca 64)"
    tr, te, ge = pca64(train, test, gen)
    labels = kmeans_labels(tr, te, ge)
    ours = run(lambda: ct_score(torch.from_numpy(tr), torch.from_numpy(te), torch.from_numpy(ge),
                                cells=3, seed=0))
    peer = run(lambda: dgm_ct(tr, te, ge, labels))
    kmeans = run(lambda: kmeans_labels(tr, te, ge))
    rows = [row(case, "pydiffgen (with its KMeans)", ours[0], ours[1], ours[2]),
            row(case, "dgm-eval sklearn NN (cells given)", peer[0], peer[1], peer[2]),
            row(case, "KMeans(3, n_init=10) alone", None, kmeans[1], kmeans[2])]
    return rows + ratio_rows(case, {"pydiffgen": ours[1], "dgm-eval": peer[1] + kmeans[1]},
                             "pydiffgen")


CASES = ("prdc", "authpct", "ct", "prdc-large")


def selected_cases() -> list[str]:
    names = [c.strip() for c in os.environ.get("PYDIFFGEN_BENCH_CASES",
                                               "prdc,authpct,ct").split(",") if c.strip()]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        sys.exit(f"PYDIFFGEN_BENCH_CASES: unknown {', '.join(unknown)}; expected a comma "
                 f"list of {', '.join(CASES)}")
    return names


def main():
    args = parse_args(__doc__.splitlines()[0])
    if args.device != "cpu":
        print("note: the metrics run on the features' device; this script keeps them on the CPU")
    cases = selected_cases()
    n_prdc, d_prdc, n_train, n_gen, d = (2000, 128, 5000, 1000, 128) if args.quick else \
        (10_000, 512, 50_000, 10_000, 768)
    # one generator per case: a case's data do not depend on which others run
    rows = prdc_rows(n_prdc, d_prdc, np.random.default_rng(0)) if "prdc" in cases else []
    if "authpct" in cases or "ct" in cases:
        train, test, gen = copying_sets(n_train, n_gen, d, np.random.default_rng(1))
        rows += authpct_rows(train, gen) if "authpct" in cases else []
        rows += ct_rows(train, test, gen) if "ct" in cases else []
        del train, test, gen
    if "prdc-large" in cases:
        rows += large_prdc_rows(int(os.environ.get("PYDIFFGEN_BENCH_PRDC_LARGE", "100000")),
                                768, np.random.default_rng(2))
    print_table([r for r in rows if r["kind"] == "time"],
                ["case", "impl", "time_s", "peak_mib", "knn_share", "knn_calls", "load",
                 "value"])
    print()
    print_table([r for r in rows if r["kind"] == "ratio"], ["case", "peer", "speedup"])
    print_table([r for r in rows if r["kind"] == "memory"],
                ["case", "ours_peak_mib", "peer_peak_mib", "ours_over_peer"])
    print("wrote", write_json("metrics", rows, metadata("cpu")))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
