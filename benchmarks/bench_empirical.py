"""Empirical optimal denoiser: correctness, then time and peak memory against the peers.

    python benchmarks/bench_empirical.py [--device cpu|cuda|auto] [--quick]

Ours: pydiffgen.ops.empirical_denoiser with its default backend (cpp on CPU, triton on
CUDA). Peers, measured in the same run: the naive torch.cdist → softmax → matmul (an
[M, N] matrix), and "two GEMMs alone" (y·xᵀ and P·x with a prebuilt P [M, N]: the
arithmetic floor of any GEMM formulation). Peak extra memory: CPU via the process's peak
RSS (VmHWM, reset through /proc/self/clear_refs), CUDA via max_memory_allocated.
Rows go to <results>/bench_empirical.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    bench,
    ceilings,
    metadata,
    parse_args,
    print_table,
    ratio_rows,
    sync,
    write_json,
)

from pydiffgen.ops import empirical_denoiser, reference  # noqa: E402


def naive(y, x, sigma):
    d2 = torch.cdist(y, x).square_()  # [M, N]
    return torch.softmax(-d2 / (2 * sigma**2), dim=1) @ x


def _rss_kb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def peak_extra_mb(fn, device):
    """Peak memory above the current level while fn() runs, MB."""
    if device == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        return None
    base = _rss_kb("VmRSS:")
    fn()
    return (_rss_kb("VmHWM:") - base) / 1024


def run_case(device, M, N, D, sigma, rows, ratios, ceil, peers=True):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(N, D, generator=g) * 2 - 1).to(device)
    y = (x[:M].cpu() + sigma * torch.randn(M, D, generator=g)).to(device)
    sig = torch.full((M,), sigma, device=device)
    # correctness first: 16 rows against the float64 reference
    ours = empirical_denoiser(y, x, sig)
    want = reference.empirical_denoiser(y[:16], x, sig[:16].double())
    err = float((ours[:16].double() - want).abs().max())
    assert err < 1e-4, f"empirical_denoiser differs from the float64 reference by {err}"
    case = f"M={M} N={N} d={D} sigma={sigma}"
    times = {"empirical_denoiser": bench(lambda: empirical_denoiser(y, x, sig), device)}
    mem = {"empirical_denoiser": peak_extra_mb(lambda: empirical_denoiser(y, x, sig), device)}
    if peers:
        naive_err = float((naive(y[:16], x, sigma).double() - want).abs().max())
        times["naive_cdist_softmax"] = bench(lambda: naive(y, x, sigma), device)
        mem["naive_cdist_softmax"] = peak_extra_mb(lambda: naive(y, x, sigma), device)
        P = torch.rand(M, N, device=device)
        times["two_gemms_alone"] = bench(lambda: (y @ x.T, P @ x), device)
        del P
    else:
        naive_err = None
    flops = 4.0 * M * N * D
    for name, t in times.items():
        rows.append({"kind": "time", "case": case, "impl": name, "time_s": t,
                     "gflops": flops / t / 1e9, "of_gemm_ceiling": flops / t / 1e9
                     / ceil["gemm_fp32_gflops"], "peak_extra_mb": mem.get(name),
                     "max_abs_err": err if name == "empirical_denoiser" else
                     (naive_err if name == "naive_cdist_softmax" else None)})
    if peers:
        ratios += ratio_rows(case, times, "empirical_denoiser")
        print(f"{case}: vs naive x{times['naive_cdist_softmax'] / times['empirical_denoiser']:.2f}"
              f", time / two GEMMs alone = "
              f"{times['empirical_denoiser'] / times['two_gemms_alone']:.2f}, peak extra "
              f"memory {mem['empirical_denoiser']:.0f} MB (naive "
              f"{mem['naive_cdist_softmax']:.0f} MB)", flush=True)


def main():
    args = parse_args(__doc__.splitlines()[0])
    device = args.device
    meta = metadata(device)
    ceil = ceilings(device)
    rows, ratios = [], []
    if args.quick:
        cases = [(128, 2000, 256, 1.0, True)]
    elif device == "cuda":
        cases = [(512, 20000, 1024, 1.0, True), (4096, 100000, 3072, 1.0, True),
                 (512, 20000, 1024, 0.1, False)]
    else:
        # the case; σ = 0.1 takes the exact small-σ path; N = 40000 shows that
        # the peak memory does not grow with M×N
        cases = [(512, 20000, 1024, 1.0, True), (512, 20000, 1024, 0.1, False),
                 (512, 40000, 1024, 1.0, False)]
    for M, N, D, sigma, peers in cases:
        run_case(device, M, N, D, sigma, rows, ratios, ceil, peers)
    print_table(rows, ["case", "impl", "time_s", "gflops", "of_gemm_ceiling",
                       "peak_extra_mb", "max_abs_err"])
    print_table(ratios, ["case", "ours", "peer", "speedup"])
    path = write_json("bench_empirical", rows + ratios, {**meta, "ceilings": ceil})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
