"""Empirical optimal denoiser: correctness, then time and peak memory against the peers.

    python benchmarks/bench_empirical.py [--device cpu|cuda|auto] [--quick]
        [--cases sigma0.1,sigma1,sigma20,memory,sweep] [--sweep-naive K]
    PYDIFFGEN_BASELINE=/path/to/other/checkout  (optional: also time that tree's op;
        issue 16's "today's op" is a6ae0f7, the main commit its empirical work started
        from: `git worktree add --detach DIR a6ae0f7`, `ln -s ../kernels
        DIR/pydiffgen/kernels`, `python setup.py build_ext --inplace` in DIR)
    SWEEP_N=50000  (training rows of the σ-sweep row; smaller on a busy machine)

The issue's target rows, about 8 minutes on a quiet 2-core CPU:
    python benchmarks/bench_empirical.py --device cpu --cases sigma0.1,sigma1,sigma20,sweep

Ours: pydiffgen.ops.empirical_denoiser with its default backend (cpp on CPU, triton on
CUDA), one call, and the same with the training set prepared once
(pydiffgen.ops.EmpiricalIndex, its build time reported beside). Peers, measured in the
same run: the naive torch.cdist → softmax → matmul (an [M, N] matrix), "two GEMMs alone"
(y·xᵀ and P·x with a prebuilt P [M, N]: the arithmetic floor of any fp32 GEMM
formulation), on the dense row the same two GEMMs in float64 (the floor of the certified
dense pass), and, with PYDIFFGEN_BASELINE, the same op from another checkout (in a
subprocess, same data). Correctness: 16 rows within 1e-6 relative
of the float64 reference. Cases: σ = 1 and 0.1 on [-1, 1] data (sparse softmax: the bf16
candidate pass), σ = 20 (dense: the float64 pass), "memory" (σ = 1 at N = 40000: the peak
memory does not grow with M×N), and the σ-sweep (64 log-spaced σ in [0.002, 80], M = 256,
d = 3072: one EmpiricalIndex, built inside the timed total, and one call per σ). Naive's
time does not depend on σ (every step is dense), so the sweep times it at K = --sweep-naive
σ's spread over the 64 (default 8; 64 times all) and scales the total by 64/K. Peak
extra memory: CPU via the process's peak RSS (VmHWM, reset through
/proc/self/clear_refs), CUDA via max_memory_allocated. Rows go to
<results>/bench_empirical.json.
"""

from __future__ import annotations

import argparse
import inspect
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

from pydiffgen.ops import EmpiricalIndex, empirical_denoiser, reference  # noqa: E402


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
# (its custom ops would clash with ours in this process). ``data`` goes in as source: this
# module imports names (EmpiricalIndex) an older tree does not have.
_BASELINE = """
import json, sys, torch
sys.path.insert(0, {bench!r})
from _common import bench
from pydiffgen.ops import empirical_denoiser
{data}
x, y, sig = data({M}, {N}, {D}, {sigma}, {device!r})
print(json.dumps(bench(lambda: empirical_denoiser(y, x, sig), {device!r})))
"""


def baseline_time(M, N, D, sigma, device):
    """Seconds per call of PYDIFFGEN_BASELINE's empirical_denoiser, or None."""
    tree = os.environ.get("PYDIFFGEN_BASELINE")
    if not tree:
        return None
    code = _BASELINE.format(bench=str(Path(__file__).resolve().parent), M=M, N=N, D=D,
                            sigma=sigma, device=device, data=inspect.getsource(data))
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


def run_case(device, M, N, D, sigma, rows, ratios, ceil, peers=True, gemm64=False):
    x, y, sig = data(M, N, D, sigma, device)
    # correctness first: 16 rows against the float64 reference
    want = reference.empirical_denoiser(y[:16], x, sig[:16].double())
    t0 = time.perf_counter()
    index = EmpiricalIndex(x)
    build_s = time.perf_counter() - t0
    err = 0.0
    for out in (empirical_denoiser(y, x, sig), index(y, sig)):
        err = max(err, float(((out[:16].double() - want).norm(dim=1)
                              / want.norm(dim=1)).max()))
    assert err <= 1e-6, f"empirical_denoiser differs from the float64 reference by {err}"
    case = f"M={M} N={N} d={D} sigma={sigma}"
    times = {"empirical_denoiser": bench(lambda: empirical_denoiser(y, x, sig), device),
             "EmpiricalIndex_held": bench(lambda: index(y, sig), device)}
    mem = {"empirical_denoiser": peak_extra_mb(lambda: empirical_denoiser(y, x, sig), device)}
    if peers:
        naive_err = float(((naive(y[:16], x, sigma).double() - want).norm(dim=1)
                           / want.norm(dim=1)).max())
        times["naive_cdist_softmax"] = bench(lambda: naive(y, x, sigma), device)
        mem["naive_cdist_softmax"] = peak_extra_mb(lambda: naive(y, x, sigma), device)
        P = torch.rand(M, N, device=device)
        times["two_gemms_alone"] = bench(lambda: (y @ x.T, P @ x), device)
        if gemm64:
            y64, x64, P64 = y.double(), x.double(), P.double()
            times["two_fp64_gemms_alone"] = bench(lambda: (y64 @ x64.T, P64 @ x64), device)
            del y64, x64, P64
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
                     "index_build_s": build_s if name == "EmpiricalIndex_held" else None,
                     "max_rel_err": err if name in ("empirical_denoiser", "EmpiricalIndex_held")
                     else (naive_err if name == "naive_cdist_softmax" else None)})
    if peers:
        for ours in ("empirical_denoiser", "EmpiricalIndex_held"):
            ratios += ratio_rows(case, {k: v for k, v in times.items()
                                        if k == ours or k not in ("empirical_denoiser",
                                                                  "EmpiricalIndex_held")}, ours)
        t = times["empirical_denoiser"]
        print(f"{case}: vs naive x{times['naive_cdist_softmax'] / t:.2f} (index held "
              f"x{times['naive_cdist_softmax'] / times['EmpiricalIndex_held']:.2f}), "
              f"time / two GEMMs alone = {t / times['two_gemms_alone']:.2f}, peak extra "
              f"memory {mem['empirical_denoiser']:.0f} MB (naive "
              f"{mem['naive_cdist_softmax']:.0f} MB)", flush=True)


def sweep(device, M, N, D, rows, ratios, naive_sigmas=8):
    """The σ-sweep row: one EmpiricalIndex (its build inside the total) and one call per σ
    (64 log-spaced in [0.002, 80]), total seconds of ours and of naive (timed at
    ``naive_sigmas`` of the σ's, evenly spread, and scaled to 64: its time does not depend
    on σ), and the largest relative error of ours over 4 rows per σ."""
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(N, D, generator=g) * 2 - 1).to(device)
    noise = torch.randn(M, D, generator=g).to(device)
    sigmas = torch.logspace(math.log10(0.002), math.log10(80), 64).tolist()
    timed_naive = set(range(0, 64, max(1, 64 // naive_sigmas)))
    sync(device)
    t0 = time.perf_counter()
    index = EmpiricalIndex(x)
    sync(device)
    total = {"empirical_denoiser": time.perf_counter() - t0, "naive_cdist_softmax": 0.0}
    worst = 0.0
    for k, sigma in enumerate(sigmas):
        y = x[:M] + sigma * noise
        sig = torch.full((M,), sigma, device=device)
        calls = [("empirical_denoiser", index, (y, sig))]
        if k in timed_naive:
            calls.append(("naive_cdist_softmax", naive, (y, x, sigma)))
        for name, fn, args in calls:
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
              f"{total['naive_cdist_softmax']:.1f} s at {len(timed_naive & set(range(k + 1)))}"
              f" sigmas so far", flush=True)
    total["naive_cdist_softmax"] *= 64 / len(timed_naive)
    case = (f"sweep 64 sigma in [0.002, 80] M={M} N={N} d={D} (naive timed at "
            f"{len(timed_naive)} sigmas, scaled to 64)")
    for name, t in total.items():
        rows.append({"kind": "time", "case": case, "impl": name, "time_s": t,
                     "max_rel_err": worst if name == "empirical_denoiser" else None})
    ratios += ratio_rows(case, total, "empirical_denoiser")


# The rows --cases selects: name -> (M, N, D, σ, peers, float64 GEMMs)
CASES = {"sigma1": (512, 20000, 1024, 1.0, True, False),
         "sigma0.1": (512, 20000, 1024, 0.1, True, False),
         "sigma20": (512, 20000, 1024, 20.0, True, True),
         "memory": (512, 40000, 1024, 1.0, False, False)}
CUDA_CASES = {"large": (4096, 100000, 3072, 1.0, True, False)}


def selected_cases():
    """(--cases names, --sweep-naive K), removed from sys.argv before _common's parser."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--cases", default=",".join([*CASES, "sweep"]))
    p.add_argument("--sweep-naive", type=int, default=8)
    args, rest = p.parse_known_args()
    sys.argv[1:] = rest
    names = [c for c in args.cases.split(",") if c]
    unknown = set(names) - {*CASES, *CUDA_CASES, "sweep"}
    if unknown:
        sys.exit(f"unknown --cases {sorted(unknown)}; known: {', '.join([*CASES, 'sweep'])}"
                 f" (cuda: also {', '.join(CUDA_CASES)})")
    return names, args.sweep_naive


def main():
    names, naive_sigmas = selected_cases()
    args = parse_args(__doc__.splitlines()[0])
    device = args.device
    meta = metadata(device)
    meta["uptime_before"] = Path("/proc/loadavg").read_text().strip()
    ceil = ceilings(device)
    rows, ratios = [], []
    if args.quick:
        cases = [(128, 2000, 256, 1.0, True, False)]
    else:
        if device == "cuda" and "sigma1" in names:
            names = [*names, *CUDA_CASES]
        cases = [{**CASES, **CUDA_CASES}[n] for n in names if n != "sweep"]
    for case in cases:
        run_case(device, *case[:4], rows, ratios, ceil, *case[4:])
    if not args.quick and "sweep" in names:
        sweep(device, 256, int(os.environ.get("SWEEP_N", 50000)), 3072, rows, ratios,
              naive_sigmas)
    meta["uptime_after"] = Path("/proc/loadavg").read_text().strip()
    meta["cases"] = names
    print_table(rows, ["case", "impl", "time_s", "gflops", "of_gemm_ceiling",
                       "peak_extra_mb", "index_build_s", "max_rel_err"])
    print_table(ratios, ["case", "ours", "peer", "speedup"])
    path = write_json("bench_empirical", rows + ratios, {**meta, "ceilings": ceil})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
