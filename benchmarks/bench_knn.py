"""knn (exact, streamed) vs torch.cdist + topk (and faiss IndexFlatL2 when importable).

Correctness first: on a subset of queries, pydiffgen's neighbours must equal the float64
exact answer; the recall of float32 cdist + topk against it is reported too. Then times,
GFLOP/s of the 2·M·N·D distance work against the measured fp32 GEMM ceiling, and speed
ratios from this run. Data: image-like values in [-1, 1] with a 0.5 offset (not centred).

    python benchmarks/bench_knn.py [--device cpu|cuda] [--quick]
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

from pydiffgen.ops import _dispatch, knn  # noqa: E402


def cdist_topk(q, x, k):
    """What a user would write: the full [M, N] distance matrix, then topk."""
    return torch.cdist(q, x).topk(k, dim=1, largest=False)


def exact_float64(q, x, k):
    d = torch.cdist(q.double(), x.double())
    return d.topk(k, dim=1, largest=False).indices


def faiss_peer(q, x, k, device):
    """(search fn, note) for faiss IndexFlatL2, or (None, reason)."""
    try:
        import faiss
    except ImportError as err:
        return None, f"faiss not importable ({err})"
    d = x.shape[1]
    index = faiss.IndexFlatL2(d)
    if device == "cuda":
        if not hasattr(faiss, "StandardGpuResources"):
            return None, "faiss has no GPU support (CPU wheel)"
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, torch.cuda.current_device(), index)
    index.add(x.cpu().numpy())
    qn = q.cpu().numpy()
    return (lambda: index.search(qn, k)), f"faiss {faiss.__version__}"


def cases(device, quick):
    if device == "cuda":
        full = [(1024, 100_000, 768, 10), (4096, 50_000, 3072, 10), (10_000, 60_000, 784, 50)]
    else:
        full = [(256, 16384, 256, 10), (1024, 8192, 64, 10), (64, 50_000, 3072, 10)]
    return full[:1] if quick else full


def run_case(dev, M, N, D, k, backends, ceil, rows, ratios, notes):
    case = f"M={M} N={N} D={D} k={k}"
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.rand(N, D, device=dev, generator=g) * 2 - 1 + 0.5
    q = torch.rand(M, D, device=dev, generator=g) * 2 - 1 + 0.5
    impls = {f"knn[{b}]": (lambda b=b: knn(q, x, k, backend=b)) for b in backends}
    impls["cdist+topk"] = lambda: cdist_topk(q, x, k)
    fa, note = faiss_peer(q, x, k, dev)
    if fa is not None:
        impls["faiss.IndexFlatL2"] = fa
    if note not in notes:
        notes.append(note)

    # correctness on a subset of queries
    sub = slice(0, min(M, 64))
    want = exact_float64(q[sub], x, k).cpu()
    for b in backends:
        got = knn(q[sub], x, k, backend=b)[1].cpu()
        assert torch.equal(got, want), f"{case}: knn[{b}] differs from the float64 answer"
    cd = cdist_topk(q[sub], x, k).indices.cpu()
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(cd, want))
    recall = hits / want.numel()

    times = {}
    for name, fn in impls.items():
        t = bench(fn, dev)
        times[name] = t
        gflops = 2 * M * N * D / t / 1e9
        rows.append({"kind": "time", "case": case, "impl": name, "time_s": t,
                     "gflops": gflops, "frac_gemm": gflops / ceil["gemm_fp32_gflops"],
                     "recall@k_vs_fp64": 1.0 if name.startswith("knn") else
                     (recall if name == "cdist+topk" else None)})
    ratios.extend(ratio_rows(case, times, f"knn[{backends[0]}]"))


def main():
    args = parse_args(__doc__.splitlines()[0])
    dev = args.device
    ceil = ceilings(dev)
    backends = [b for b, why in _dispatch.op("knn").reasons(dev).items() if why == "ok"]
    rows, ratios, notes = [], [], []
    for M, N, D, k in cases(dev, args.quick):
        run_case(dev, M, N, D, k, backends, ceil, rows, ratios, notes)
    meta = {**metadata(dev), "ceilings": ceil, "notes": notes,
            "knn_backends": _dispatch.op("knn").reasons(dev),
            "topk_merge_backend": _dispatch.op("topk_merge").select(dev).name}
    path = write_json("bench_knn", rows + ratios, meta)
    print(f"knn on {meta['device_name']} (fp32 GEMM ceiling {ceil['gemm_fp32_gflops']:.0f} "
          f"GFLOP/s; topk_merge backend: {meta['topk_merge_backend']})")
    print_table(rows, ["case", "impl", "time_s", "gflops", "frac_gemm", "recall@k_vs_fp64"])
    print()
    print_table(ratios, ["case", "ours", "peer", "speedup"])
    for n in notes:
        print(f"note: {n}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
