"""Shared benchmark helpers: metadata, timing, machine ceilings, JSON rows, tables.

Timing (``timed`` / ``bench``), the same rule for ours and for every peer: each callable is
run the way its users run it (the caller builds indexes, moves data and sets the peer's
own threads beforehand: ``peer_threads``), warmed up, then timed twice, independently:
CPU with ``torch.utils.benchmark.Timer.blocked_autorange`` (median of blocks), GPU with
``triton.testing.do_bench`` (median, L2 flushed between runs), and a bare
``time.perf_counter`` loop (median of ``CHECK_RUNS`` calls, GPU synchronized). A figure
is reported only when the two agree within ``CHECK_TOLERANCE`` (up to ``CHECK_ATTEMPTS``
tries; a figure that never agrees is reported with ``agree: false``). Every try, the
load average beside it, and the thread settings and versions of torch and the peers
(``thread_info``) go into the JSON (``write_json``: meta ``timing_checks`` and
``threads``). Every result row carries the device, versions and git sha; ``write_json``
puts them in benchmarks/results/<name>.json (or $PYDIFFGEN_BENCH_OUT/<name>.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("PYDIFFGEN_BENCH_OUT") or ROOT / "benchmarks" / "results")
QUICK = os.environ.get("PYDIFFGEN_BENCH_QUICK", "0") == "1"


def parse_args(description: str):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: cuda when available, else cpu")
    p.add_argument("--quick", action="store_true", help="smallest sizes only")
    args = p.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda but no CUDA device is available")
    args.quick = args.quick or QUICK
    return args


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        return out.stdout.strip() + ("-dirty" if dirty.strip() else "") or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def metadata(device: str) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    from pydiffgen import _native

    return {
        "device": device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "git_sha": git_sha(),
        "extension": {"cpu": _native.has_cpu_ops(), "cuda": _native.has_cuda_ops()},
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# the second, bare timing must agree with the harness's median within this fraction
CHECK_TOLERANCE = 0.10
CHECK_RUNS = 3
CHECK_ATTEMPTS = 3
CHECKS: list[dict] = []  # every timing and its check, written into the JSON meta


def load_average() -> float | None:
    """The 1-minute load average (``uptime``), None where the OS has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def harness_time(fn, device: str, min_run_time: float = 0.3) -> float:
    """Median seconds of one call of fn() by the standard harness (fn warmed up already)."""
    if device == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, return_mode="median") * 1e-3
    from torch.utils.benchmark import Timer

    # Timer runs fn with num_threads threads, and defaults to 1 whatever torch is set to
    # (and faiss shares torch's OpenMP runtime): pass the count everything else runs with
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return m.median


def bare_time(fn, device: str, runs: int = CHECK_RUNS) -> float:
    """Median seconds of ``runs`` calls of fn(), each timed by a bare perf_counter pair."""
    times = []
    for _ in range(runs):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timed(fn, device: str, label: str = "", min_run_time: float = 0.3) -> dict:
    """fn's time, checked (module doc): {"time_s": the harness median, "check_s": the bare
    perf_counter median, "agree": within CHECK_TOLERANCE, "attempts", "load_before",
    "load_after"}; also appended to CHECKS."""
    fn()  # warm-up (allocations, lazy init, caches)
    load_before = load_average()
    attempt, agree = 0, False
    while not agree and attempt < CHECK_ATTEMPTS:
        attempt += 1
        t = harness_time(fn, device, min_run_time)
        c = bare_time(fn, device)
        agree = abs(t - c) <= CHECK_TOLERANCE * min(t, c)
    out = {"label": label, "time_s": t, "check_s": c, "agree": agree, "attempts": attempt,
           "load_before": load_before, "load_after": load_average()}
    CHECKS.append(out)
    if not agree:
        print(f"warning: {label or 'timing'}: harness {fmt_s(t)} and bare perf_counter "
              f"{fmt_s(c)} disagree by more than {CHECK_TOLERANCE:.0%} after {attempt} tries "
              f"(load {out['load_after']})", flush=True)
    return out


def bench(fn, device: str, min_run_time: float = 0.3, label: str = "") -> float:
    """Median seconds of one call of fn(), checked as ``timed``."""
    return timed(fn, device, label, min_run_time)["time_s"]


def peer_threads(threads: int) -> dict:
    """Give the peers' own thread pools ``threads`` threads (faiss's OpenMP; torch's), the
    count ours runs with; returns what was set."""
    torch.set_num_threads(threads)
    out = {"torch": torch.get_num_threads()}
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
        out["faiss_omp"] = faiss.omp_get_max_threads()
    except ImportError:
        pass
    return out


def thread_info() -> dict:
    """Thread settings and versions of torch and the peers, for the JSON."""
    info = {"torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                   "PYDIFFGEN_BENCH_THREADS")},
            "torch_parallel": torch.__config__.parallel_info().strip().splitlines()[:6],
            "cpus": os.cpu_count()}
    try:
        import numpy

        info["numpy"] = numpy.__version__
    except ImportError:
        pass
    try:
        import faiss

        info["faiss"] = faiss.__version__
        info["faiss_omp_threads"] = faiss.omp_get_max_threads()
    except ImportError:
        info["faiss"] = None
    return info


_CEILINGS: dict = {}


def ceilings(device: str) -> dict:
    """This machine's measured fp32 GEMM GFLOP/s and copy GB/s (read + write)."""
    if device in _CEILINGS:
        return _CEILINGS[device]
    n = 2048 if device == "cuda" else 1024
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    t = bench(lambda: a @ b, device)
    elems = (1 << 28 if device == "cuda" else 1 << 25)
    src = torch.empty(elems, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    tc = bench(lambda: dst.copy_(src), device)
    _CEILINGS[device] = {"gemm_fp32_gflops": 2 * n**3 / t / 1e9,
                         "copy_gbs": 2 * src.numel() * 4 / tc / 1e9}
    return _CEILINGS[device]


def ratio_rows(case: str, times: dict[str, float], ours: str) -> list[dict]:
    """One row per peer: speedup = peer time / our time, both measured in this run; printed
    at once, so a run cut off later still reports the cases it finished."""
    for peer, t in times.items():
        if peer != ours:
            print(f"case {case}: {ours} {fmt_s(times[ours])} vs {peer} {fmt_s(t)} "
                  f"x{t / times[ours]:.2f}", flush=True)
    return [
        {"kind": "ratio", "case": case, "ours": ours, "peer": peer, "ours_s": times[ours],
         "peer_s": t, "speedup": t / times[ours]}
        for peer, t in times.items() if peer != ours
    ]


def write_json(name: str, rows: list[dict], meta: dict) -> Path:
    """rows and meta (plus ``thread_info`` and every timing check of this run) as JSON."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    meta = {**meta, "threads": thread_info(), "timing_checks": CHECKS,
            "check_tolerance": CHECK_TOLERANCE}
    path.write_text(json.dumps({"benchmark": name, "meta": meta, "rows": rows}, indent=1))
    return path


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def print_table(rows: list[dict], cols: list[str]) -> None:
    def cell(r, c):
        v = r.get(c)
        if isinstance(v, float):
            return fmt_s(v) if c.endswith("_s") else f"{v:.3g}"
        return "-" if v is None else str(v)

    table = [[cell(r, c) for c in cols] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) if table else len(c)
              for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for t in table:
        print("  ".join(x.ljust(w) for x, w in zip(t, widths)))
