"""Memorization audit end to end: time per sample, and what the searches cost inside it.

Correctness first: on a small set, the audit's nearest / second-nearest distances,
nearest index, memorized flags and nearest cosines equal a float64 ``torch.cdist`` /
cosine-matrix reference (ties aside), planted copies are flagged, planted duplicates found.

Then, on synthetic images (half the samples are noisy copies of training images):

- ``audit``:    ``experiments.audit.audit`` (three pixel searches, de-duplication of the
                training set, summary);
- ``searches``: the audit's three searches alone through ``ops.knn`` (samples → train
                L2 k=2 and cosine k=1, train → train cosine k=2 for the background);
- ``naive``:    what one writes by hand: chunked ``torch.cdist`` + ``topk`` and chunked
                normalized matmul + ``topk`` (1024 queries per chunk, never M × N).

Reported: seconds (fastest of ``--repeats``), samples/s, naive / searches (speedup) and
audit / searches (the overhead of everything else). Writes benchmarks/results/bench_audit.json.

    python benchmarks/bench_audit.py          # CPU: M=2000 N=50000 d=1024 (CUDA: also
                                              # M=10000 N=200000 d=3072)
    python benchmarks/bench_audit.py --quick  # M=256 N=5000 d=256
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import metadata, parse_args, print_table, ratio_rows, sync, write_json  # noqa: E402

from pydiffgen.experiments.audit import AuditConfig, audit  # noqa: E402
from pydiffgen.ops import knn  # noqa: E402


def make_data(m, n, shape, device, seed=0):
    """train [n, *shape] uniform in [-1, 1]; samples: m//2 noisy copies, then fresh images."""
    g = torch.Generator(device=device).manual_seed(seed)
    train = torch.rand(n, *shape, generator=g, device=device) * 2 - 1
    copied = torch.randint(0, n, (m // 2,), generator=g, device=device)
    copies = train[copied] + 0.01 * torch.randn(m // 2, *shape, generator=g, device=device)
    fresh = torch.rand(m - m // 2, *shape, generator=g, device=device) * 2 - 1
    return torch.cat([copies, fresh]), train, copied


def searches(samples, train, background):
    S, T = samples.reshape(len(samples), -1), train.reshape(len(train), -1)
    knn(S, T, 2, "l2")
    Sc, Tc = S - S.mean(1, keepdim=True), T - T.mean(1, keepdim=True)
    knn(Sc, Tc, 1, "cosine")
    knn(Tc[background], Tc, 2, "cosine")


def naive(samples, train, background, chunk=1024):
    """Chunked cdist + topk (L2) and normalized matmul + topk (cosine)."""
    S, T = samples.reshape(len(samples), -1), train.reshape(len(train), -1)
    for s in range(0, len(S), chunk):
        torch.cdist(S[s : s + chunk], T).topk(2, dim=1, largest=False)
    Tc = T - T.mean(1, keepdim=True)
    Tn = Tc / Tc.norm(dim=1, keepdim=True).clamp_min(1e-12)
    Sc = S - S.mean(1, keepdim=True)
    Sn = Sc / Sc.norm(dim=1, keepdim=True).clamp_min(1e-12)
    for s in range(0, len(Sn), chunk):
        (Sn[s : s + chunk] @ Tn.T).topk(1, dim=1)
    Q = Tn[background]
    for s in range(0, len(Q), chunk):
        (Q[s : s + chunk] @ Tn.T).topk(2, dim=1)


def check_correctness(device) -> None:
    samples, train, copied = make_data(37, 501, (1, 9, 9), device, seed=1)
    dup = torch.cat([train, train[7:8] + 0.001])  # a planted near-duplicate of image 7
    res = audit(samples, dup, config=AuditConfig(background_size=0, chunk_size=16))
    px = res.spaces["pixel"]
    S = samples.reshape(37, -1).double().cpu()
    T = dup.reshape(len(dup), -1).double().cpu()
    d, i = torch.cdist(S, T).topk(2, dim=1, largest=False)
    assert torch.allclose(px.memorization.d1.double(), d[:, 0], rtol=1e-5, atol=1e-5)
    assert torch.allclose(px.memorization.d2.double(), d[:, 1], rtol=1e-5, atol=1e-5)
    assert torch.equal(px.memorization.nn_index, i[:, 0])
    assert px.memorization.memorized[: len(copied)].all()
    assert not px.memorization.memorized[len(copied):].any()
    Sc, Tc = S - S.mean(1, keepdim=True), T - T.mean(1, keepdim=True)
    cos = (Sc / Sc.norm(dim=1, keepdim=True)) @ (Tc / Tc.norm(dim=1, keepdim=True)).T
    assert torch.allclose(px.nearest_cosine.double(), cos.max(dim=1).values, atol=1e-6)
    assert res.duplicates.dropped.tolist() == [len(train)]
    assert res.duplicates.partner.tolist() == [7]
    print("correctness: audit == float64 cdist / cosine reference; copies flagged; "
          "planted duplicate found", flush=True)


def timed(fn, device, repeats):
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    device = args.device
    repeats = 1 if args.quick else 2
    check_correctness(device)
    if args.quick:
        cases = [(256, 5000, (1, 16, 16))]
    elif device == "cuda":
        cases = [(2000, 50000, (1, 32, 32)), (10000, 200000, (3, 32, 32))]
    else:
        cases = [(2000, 50000, (1, 32, 32))]
    config = AuditConfig()
    rows = []
    for m, n, shape in cases:
        samples, train, _ = make_data(m, n, shape, device)
        B = min(n, config.background_size)
        background = torch.linspace(0, n - 1, B, dtype=torch.float64).round().long().to(device)
        case = f"M={m} N={n} d={samples[0].numel()}"
        data = (samples, train, background)
        times = {
            "audit": timed(lambda d=data: audit(d[0], d[1], config=config), device, repeats),
            "searches": timed(lambda d=data: searches(*d), device, repeats),
            "naive": timed(lambda d=data: naive(*d), device, repeats),
        }
        row = {"kind": "time", "case": case, "device": device, **{f"{k}_s": v for k, v in
                                                                  times.items()},
               "samples_per_s": m / times["audit"],
               "audit_over_searches": times["audit"] / times["searches"],
               "threads": torch.get_num_threads()}
        rows.append(row)
        rows += ratio_rows(case, {"ops.knn searches": times["searches"],
                                  "cdist/matmul + topk": times["naive"]}, "ops.knn searches")
        print(f"{case}: audit {times['audit']:.2f} s ({m / times['audit']:.0f} samples/s), "
              f"its searches {times['searches']:.2f} s, naive {times['naive']:.2f} s",
              flush=True)
    print_table([r for r in rows if r["kind"] == "ratio"],
                ["case", "ours", "peer", "ours_s", "peer_s", "speedup"])
    print(f"wrote {write_json('bench_audit', rows, metadata(device))}")


if __name__ == "__main__":
    main()
