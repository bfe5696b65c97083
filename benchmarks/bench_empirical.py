"""Empirical optimal denoiser: correctness, then time and peak memory against the peers.

    python benchmarks/bench_empirical.py [--device cpu|cuda|auto] [--quick]
    PYDIFFGEN_BASELINE=/path/to/other/checkout  (optional: also time that tree's op)
    SWEEP_N=50000  (training rows of the σ-sweep row; smaller on a busy machine)

Ours: pydiffgen.ops.empirical_denoiser with its default backend (cpp on CPU, triton on
CUDA). Peers, measured in the same run: the naive torch.cdist → softmax → matmul (an
[M, N] matrix), "two GEMMs alone" (y·xᵀ and P·x with a prebuilt P [M, N]: the arithmetic
floor of any fp32 GEMM formulation), and, with PYDIFFGEN_BASELINE, the same op from
another checkout (in a subprocess, same data). Correctness: 16 rows within 1e-6 relative
of the float64 reference. Cases: σ = 1 and 0.1 on [-1, 1] data (sparse softmax: the bf16
candidate pass), σ = 20 (dense: the float64 pass), and the σ-sweep (64 log-spaced σ in
[0.002, 80], M = 256, d = 3072: one call per σ, total time). Peak extra memory: CPU via
the process's peak RSS (VmHWM, reset through /proc/self/clear_refs), CUDA via
max_memory_allocated. Rows go to <results>/bench_empirical.json.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
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


def data(M, N, D, sigma, device):
    """x [N, D] uniform in [-1, 1], y = x[:M] + σ·noise, σ [M] (fixed seed)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(N, D, generator=g) * 2 - 1
    y = x[:M] + sigma * torch.randn(M, D, generator=g)
    return x.to(device), y.to(device), torch.full((M,), sigma, device=device)


# Times the op of another checkout (PYDIFFGEN_BASELINE) on the same data, in a subprocess
# (its custom ops would clash with ours in this process).
_BASELINE = """
import json, sys, torch
sys.path.insert(0, {bench!r})
from bench_empirical import data
from _common import bench
from pydiffgen.ops import empirical_denoiser
x, y, sig = data({M}, {N}, {D}, {sigma}, {device!r})
print(json.dumps(bench(lambda: empirical_denoiser(y, x, sig), {device!r})))
"""


def baseline_time(M, N, D, sigma, device):
    """Seconds per call of PYDIFFGEN_BASELINE's empirical_denoiser, or None."""
    tree = os.environ.get("PYDIFFGEN_BASELINE")
    if not tree:
        return None
    code = _BASELINE.format(bench=str(Path(__file__).resolve().parent), M=M, N=N, D=D,
                            sigma=sigma, device=device)
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, cwd=tree)
    return json.loads(out.stdout.strip().splitlines()[-1])


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
    x, y, sig = data(M, N, D, sigma, device)
    # correctness first: 16 rows against the float64 reference
    ours = empirical_denoiser(y, x, sig)
    want = reference.empirical_denoiser(y[:16], x, sig[:16].double())
    err = float(((ours[:16].double() - want).norm(dim=1) / want.norm(dim=1)).max())
    assert err <= 1e-6, f"empirical_denoiser differs from the float64 reference by {err}"
    case = f"M={M} N={N} d={D} sigma={sigma}"
    times = {"empirical_denoiser": bench(lambda: empirical_denoiser(y, x, sig), device)}
    mem = {"empirical_denoiser": peak_extra_mb(lambda: empirical_denoiser(y, x, sig), device)}
    if peers:
        naive_err = float(((naive(y[:16], x, sigma).double() - want).norm(dim=1)
                           / want.norm(dim=1)).max())
        times["naive_cdist_softmax"] = bench(lambda: naive(y, x, sigma), device)
        mem["naive_cdist_softmax"] = peak_extra_mb(lambda: naive(y, x, sigma), device)
        P = torch.rand(M, N, device=device)
        times["two_gemms_alone"] = bench(lambda: (y @ x.T, P @ x), device)
        del P
        base = baseline_time(M, N, D, sigma, device)
        if base is not None:
            times["baseline_tree_op"] = base
    else:
        naive_err = None
    flops = 4.0 * M * N * D
    for name, t in times.items():
        rows.append({"kind": "time", "case": case, "impl": name, "time_s": t,
                     "gflops": flops / t / 1e9, "of_gemm_ceiling": flops / t / 1e9
                     / ceil["gemm_fp32_gflops"], "peak_extra_mb": mem.get(name),
                     "max_rel_err": err if name == "empirical_denoiser" else
                     (naive_err if name == "naive_cdist_softmax" else None)})
    if peers:
        ratios += ratio_rows(case, times, "empirical_denoiser")
        print(f"{case}: vs naive x{times['naive_cdist_softmax'] / times['empirical_denoiser']:.2f}"
              f", time / two GEMMs alone = "
              f"{times['empirical_denoiser'] / times['two_gemms_alone']:.2f}, peak extra "
              f"memory {mem['empirical_denoiser']:.0f} MB (naive "
              f"{mem['naive_cdist_softmax']:.0f} MB)", flush=True)


def sweep(device, M, N, D, rows, ratios):
    """The σ-sweep row: one call per σ (64 log-spaced in [0.002, 80]), total seconds of
    ours and of naive, and the largest relative error of ours over 4 rows per σ."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(N, D, generator=g) * 2 - 1).to(device)
    noise = torch.randn(M, D, generator=g).to(device)
    total = {"empirical_denoiser": 0.0, "naive_cdist_softmax": 0.0}
    worst = 0.0
    for sigma in torch.logspace(math.log10(0.002), math.log10(80), 64).tolist():
        y = x[:M] + sigma * noise
        sig = torch.full((M,), sigma, device=device)
        for name, fn, args in (("empirical_denoiser", empirical_denoiser, (y, x, sig)),
                               ("naive_cdist_softmax", naive, (y, x, sigma))):
            sync(device)
            t0 = time.perf_counter()
            out = fn(*args)
            sync(device)
            total[name] += time.perf_counter() - t0
            if name == "empirical_denoiser":
                want = reference.empirical_denoiser(y[:4], x, sig[:4].double())
                worst = max(worst, float(((out[:4].double() - want).norm(dim=1)
                                          / want.norm(dim=1)).max()))
        print(f"sweep sigma={sigma:.4g}: ours {total['empirical_denoiser']:.1f} s, naive "
              f"{total['naive_cdist_softmax']:.1f} s so far", flush=True)
    case = f"sweep 64 sigma in [0.002, 80] M={M} N={N} d={D}"
    for name, t in total.items():
        rows.append({"kind": "time", "case": case, "impl": name, "time_s": t,
                     "max_rel_err": worst if name == "empirical_denoiser" else None})
    ratios += ratio_rows(case, total, "empirical_denoiser")


def main():
    args = parse_args(__doc__.splitlines()[0])
    device = args.device
    meta = metadata(device)
    meta["uptime_before"] = Path("/proc/loadavg").read_text().strip()
    ceil = ceilings(device)
    rows, ratios = [], []
    if args.quick:
        cases = [(128, 2000, 256, 1.0, True)]
    elif device == "cuda":
        cases = [(512, 20000, 1024, 1.0, True), (4096, 100000, 3072, 1.0, True),
                 (512, 20000, 1024, 0.1, True), (512, 20000, 1024, 20.0, True)]
    else:
        # sparse softmax (σ = 1, 0.1: the bf16 candidate pass), dense (σ = 20: the float64
        # pass); N = 40000 shows that the peak memory does not grow with M×N
        cases = [(512, 20000, 1024, 1.0, True), (512, 20000, 1024, 0.1, True),
                 (512, 20000, 1024, 20.0, True), (512, 40000, 1024, 1.0, False)]
    for M, N, D, sigma, peers in cases:
        run_case(device, M, N, D, sigma, rows, ratios, ceil, peers)
    if not args.quick:
        sweep(device, 256, int(os.environ.get("SWEEP_N", 50000)), 3072, rows, ratios)
    meta["uptime_after"] = Path("/proc/loadavg").read_text().strip()
    print_table(rows, ["case", "impl", "time_s", "gflops", "of_gemm_ceiling",
                       "peak_extra_mb", "max_rel_err"])
    print_table(ratios, ["case", "ours", "peer", "speedup"])
    path = write_json("bench_empirical", rows + ratios, {**meta, "ceilings": ceil})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
