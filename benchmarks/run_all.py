"""Run every benchmarks/bench_*.py, then print one short table of the speed ratios.

    python benchmarks/run_all.py [--device cpu|cuda|auto] [--quick] [--only NAME ...]
    python benchmarks/run_all.py --collect   # the summary of the JSON already written

Each script writes <results>/<name>.json (benchmarks/results, or $PYDIFFGEN_BENCH_OUT);
this collects their "ratio" rows (speedup = peer time / our time, same run) into
<results>/summary.json. A failing script is reported and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import RESULTS, print_table  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="*", help="bench names to run (default: all)")
    p.add_argument("--collect", action="store_true",
                   help="run nothing: summarise the <results>/bench_*.json present (the "
                        "benchmarks/gpu.sh bench stage runs one script per command)")
    args = p.parse_args()

    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem in args.only or s.stem[6:] in args.only]
    status = {}
    if args.collect:
        status = {s.stem: (0 if (RESULTS / f"{s.stem}.json").exists() else "no result", None)
                  for s in scripts}
        scripts = []
    for script in scripts:
        # flags only when asked for, so scripts with their own CLI run with their defaults;
        # quick mode travels as PYDIFFGEN_BENCH_QUICK=1 (read by _common.parse_args)
        cmd = [sys.executable, str(script)]
        if args.device != "auto":
            cmd += ["--device", args.device]
        env = os.environ.copy()
        if args.quick:
            env["PYDIFFGEN_BENCH_QUICK"] = "1"
        print(f"== {script.name}", flush=True)
        t0 = time.perf_counter()
        res = subprocess.run(cmd, env=env)
        status[script.stem] = (res.returncode, time.perf_counter() - t0)

    summary, runs = [], []
    for name, (rc, seconds) in status.items():
        runs.append({"bench": name, "status": "ok" if rc == 0 else
                     rc if isinstance(rc, str) else f"FAILED (exit {rc})",
                     "wall_s": seconds})
        path = RESULTS / f"{name}.json"
        if rc != 0 or not path.exists():
            continue
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        # {"meta": ..., "rows": [...]} as written by _common.write_json, or a bare list
        rows = data.get("rows", []) if isinstance(data, dict) else data
        meta = data.get("meta", {}) if isinstance(data, dict) else {}
        device = meta.get("device_name", "?") if isinstance(meta, dict) else "?"
        for row in rows if isinstance(rows, list) else []:
            if isinstance(row, dict) and row.get("kind") == "ratio":
                summary.append({"bench": name, "device": device, **row})
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.json").write_text(json.dumps({"runs": runs, "ratios": summary},
                                                     indent=1))
    print("\n== summary (speedup = peer time / our time, measured in the same run)")
    print_table(runs, ["bench", "status", "wall_s"])
    print()
    print_table(summary, ["bench", "case", "ours", "peer", "ours_s", "peer_s", "speedup"])
    sys.exit(0 if args.collect or all(rc == 0 for rc, _ in status.values()) else 1)


if __name__ == "__main__":
    main()
