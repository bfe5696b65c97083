"""Wall time of the demo on a quiet machine and with two CPU-bound competitors running.

A new user runs ``make demo`` on a machine where other jobs already run. The demo must not
collapse there: with two competing processes each spinning one core, the run may take at
most 2.5× its quiet time (issue 20). This runs the demo twice, each time from an empty
output folder in a fresh process (``python -m pydiffgen --quiet demo``, the command
``make demo`` runs, with its default threads): once quiet, once beside two competitors
(pure-Python busy loops, one process each, started before and stopped after the run).

    python benchmarks/bench_demo.py            # the full demo, twice (≈ 2 × 10 min)
    python benchmarks/bench_demo.py --quick    # a shortened demo sweep, to check the setup

Writes benchmarks/results/bench_demo.json: both wall times, their ratio against the 2.5
target, the load average before each run, and the demo's own summary table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import QUICK, ROOT, metadata, write_json  # noqa: E402

TARGET_RATIO = 2.5
COMPETITORS = 2
# the shortened sweep of --quick: the demo preset at two small sizes and few steps
QUICK_ARGS = ["sweep", "--preset", "demo", "--sizes", "2,16", "--steps", "40",
              "--n-samples", "8", "--n-eval", "8", "--jacobian-images", "0"]


def demo_command(out: Path, quick: bool) -> list[str]:
    args = [*QUICK_ARGS, "--name", "bench-demo"] if quick else ["demo"]
    return [sys.executable, "-m", "pydiffgen", "--quiet", *args, "--out", str(out)]


def timed_run(out: Path, quick: bool) -> tuple[float, str]:
    """Seconds of one demo run into the empty folder ``out``, and its printed summary."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    t0 = time.perf_counter()
    done = subprocess.run(demo_command(out, quick), cwd=ROOT, env=env, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"the demo failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return seconds, done.stdout


def start_competitors(n: int) -> list[subprocess.Popen]:
    """n processes that each keep one core busy until killed (no I/O, no threads)."""
    return [subprocess.Popen([sys.executable, "-c", "while True:\n    pass"])
            for _ in range(n)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a shortened demo sweep")
    p.add_argument("--keep", metavar="DIR", help="write the two runs to DIR/quiet and "
                   "DIR/loaded and keep them (default: a temporary folder)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="the demo is a CPU run: only auto and cpu measure it")
    args = p.parse_args()
    if args.device == "cuda":  # run_all.py --device cuda: nothing of this bench runs there
        print("bench_demo times the CPU demo; nothing to measure with --device cuda")
        return
    quick = args.quick or QUICK
    rows = []
    with (contextlib.nullcontext(args.keep) if args.keep else
          tempfile.TemporaryDirectory(prefix="bench_demo_")) as tmp:
        for setting, competitors in (("quiet", 0), ("loaded", COMPETITORS)):
            load_before = os.getloadavg()
            procs = start_competitors(competitors)
            try:
                seconds, summary = timed_run(Path(tmp) / setting, quick)
            finally:
                stop(procs)
            print(f"{setting}: {seconds:.1f} s ({competitors} competitors, load average "
                  f"before {load_before[0]:.2f})", flush=True)
            rows.append({"setting": setting, "competitors": competitors, "seconds": seconds,
                         "load_before": list(load_before), "summary": summary.splitlines()})
    ratio = rows[1]["seconds"] / rows[0]["seconds"]
    rows.append({"setting": "ratio", "loaded_over_quiet": ratio, "target": TARGET_RATIO,
                 "within_target": ratio <= TARGET_RATIO})
    print(f"loaded / quiet = {ratio:.2f} (target ≤ {TARGET_RATIO})")
    meta = {**metadata("cpu"), "quick": quick, "cores": os.cpu_count(),
            "command": " ".join(demo_command(Path("OUT"), quick)[1:])}
    print(f"wrote {write_json('bench_demo', rows, meta)}")


if __name__ == "__main__":
    main()
