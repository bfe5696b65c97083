"""topk_merge: native kernel (C++ on CPU, CUDA on GPU) vs the reference vs torch.topk on cat.

Steady state of a streamed kNN: the running list [M, k] came from one earlier tile of the
same size, so most scores of the new tile lose to its k-th best. Correctness first (the
native kernel equals the reference exactly; torch.topk's values equal the reference's),
then times, tile read bandwidth against the measured copy ceiling, and ratios from this run.

    python benchmarks/bench_topk.py [--device cpu|cuda] [--quick]
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
    write_json,
)

from pydiffgen.ops import dispatch, reference  # noqa: E402
from pydiffgen.ops.topk import merge  # noqa: E402


def torch_topk_cat(values, indices, tile, offset, largest):
    """What a user would write: cat the running list and the tile, torch.topk, gather."""
    M, T = tile.shape
    cat_v = torch.cat([values, tile], 1)
    cat_i = torch.cat([indices, torch.arange(offset, offset + T, device=tile.device)
                       .expand(M, T)], 1)
    top = torch.topk(cat_v, values.shape[1], dim=1, largest=largest, sorted=True)
    return top.values, cat_i.gather(1, top.indices)


def cases(device, quick):
    if device == "cuda":
        full = [(4096, 10, 16384), (4096, 100, 16384), (4096, 1000, 16384), (512, 16, 262144)]
    else:
        full = [(1024, 10, 4096), (1024, 100, 4096), (256, 10, 65536)]
    return full[:1] if quick else full


def run_case(dev, M, k, T, native, ceil, rows, ratios):
    case = f"M={M} k={k} T={T} fp32"
    prev = torch.randn(M, T, device=dev)
    tile = torch.randn(M, T, device=dev)
    v0 = torch.full((M, k), float("inf"), device=dev)
    i0 = torch.full((M, k), -1, dtype=torch.int64, device=dev)
    values, indices = reference.topk_merge(v0, i0, prev, 0, False)

    impls = {}
    if native is not None:
        impls[native] = lambda: merge(values, indices, tile, T, False, backend=native)
    impls["reference"] = lambda: reference.topk_merge(values, indices, tile, T, False)
    impls["torch.topk(cat)"] = lambda: torch_topk_cat(values, indices, tile, T, False)
    # correctness first
    want = impls["reference"]()
    if native is not None:
        got = impls[native]()
        assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0]), case
    assert torch.equal(impls["torch.topk(cat)"]()[0], want[0]), case

    times = {}
    for name, fn in impls.items():
        t = bench(fn, dev)
        times[name] = t
        gbs = M * T * 4 / t / 1e9
        rows.append({"kind": "time", "case": case, "impl": name, "time_s": t,
                     "tile_gbs": gbs, "frac_copy": gbs / ceil["copy_gbs"]})
    ratios.extend(ratio_rows(case, times, native or "reference"))


def main():
    args = parse_args(__doc__.splitlines()[0])
    dev = args.device
    native = "cuda" if dev == "cuda" else "cpp"
    native_ok = dispatch.op("topk_merge").reasons(dev)[native] == "ok"
    ceil = ceilings(dev)
    rows, ratios = [], []
    for M, k, T in cases(dev, args.quick):
        run_case(dev, M, k, T, native if native_ok else None, ceil, rows, ratios)
    if not native_ok:
        print(f"note: {native} backend not available: "
              f"{dispatch.op('topk_merge').reasons(dev)[native]}")
    meta = {**metadata(dev), "ceilings": ceil}
    path = write_json("bench_topk", rows + ratios, meta)
    print(f"topk_merge on {meta['device_name']} (copy ceiling {ceil['copy_gbs']:.1f} GB/s)")
    print_table(rows, ["case", "impl", "time_s", "tile_gbs", "frac_copy"])
    print()
    print_table(ratios, ["case", "ours", "peer", "speedup"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
