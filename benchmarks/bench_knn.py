"""knn (exact, streamed) vs chunked torch.cdist + topk and faiss IndexFlatL2 (when importable).

Correctness first: on a subset of queries, pydiffgen's neighbours must equal the float64
exact answer; the recall of cdist + topk and of faiss against it is reported too. Then
times, GFLOP/s of the 2·M·N·D distance work against this machine's measured fp32 (and
bf16 / int8) GEMM rates, and speed ratios from this run. Data: image-like values in
[-1, 1] with a 0.5 offset (not centred), and the same sizes as uint8 8-bit images.

    python benchmarks/bench_knn.py [--device cpu|cuda] [--quick]

CPU threads: torch's default (PYDIFFGEN_BENCH_THREADS overrides); faiss gets the same.
The issue's CPU target: M=2000 N=50000 D=1024 k=10 at ≤ 0.5 × faiss IndexFlatL2 and ≥ 4×
chunked cdist + topk; GPU: M=50000 N=1000000 D=3072 (≥ 3× fp32 GEMM + topk).
"""

from __future__ import annotations

import os
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

from pydiffgen.ops import dispatch, knn  # noqa: E402


def cdist_topk(q, x, k):
    """What a user would write, in query chunks so the [rows, N] matrix stays bounded."""
    rows = max(1, min(256, (1 << 28) // len(x)))
    out = [torch.cdist(q[i : i + rows], x).topk(k, dim=1, largest=False).indices
           for i in range(0, len(q), rows)]
    return torch.cat(out)


def gemm_topk(q, x, k):
    """fp32 GEMM + topk on ‖x‖² − 2⟨q, x⟩ (the GPU baseline: no exactness guarantees),
    in query chunks whose [rows, N] scores stay ≤ 1 GB."""
    rows = max(1, (1 << 28) // len(x))
    xsq = x.square().sum(1)
    out = [torch.addmm(xsq, q[i : i + rows], x.T, alpha=-2).topk(k, dim=1, largest=False).indices
           for i in range(0, len(q), rows)]
    return torch.cat(out)


def exact_float64(q, x, k):
    """float64 brute force (direct differences, no norm expansion), streamed over key
    chunks of ≤ 16 M elements: no float64 copy of the whole key set (12 GB on the GPU)."""
    qd = q.double()
    best_v = torch.full((len(q), k), float("inf"), dtype=torch.float64, device=q.device)
    best_i = torch.full((len(q), k), -1, dtype=torch.int64, device=q.device)
    step = max(1, (1 << 24) // x.shape[1])
    for n0 in range(0, len(x), step):
        xd = x[n0 : n0 + step].double()
        d = torch.cdist(qd, xd, compute_mode="donot_use_mm_for_euclid_dist")  # [m, step]
        v = torch.cat([best_v, d], 1)
        i = torch.cat([best_i, torch.arange(n0, n0 + len(xd), device=q.device).expand_as(d)], 1)
        order = v.topk(k, dim=1, largest=False).indices
        best_v, best_i = v.gather(1, order), i.gather(1, order)
    return best_i


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
    else:
        faiss.omp_set_num_threads(torch.get_num_threads())
    index.add(x.float().cpu().numpy())
    qn = q.float().cpu().numpy()
    return (lambda: index.search(qn, k)), f"faiss {faiss.__version__}"


def gemm_rates(device):
    """This machine's bf16 and int8 GEMM rates (GFLOP/s, 2·m·n·k / s) at knn-like shapes."""
    m, n, kk = (4096, 8192, 1024) if device == "cuda" else (2000, 4096, 1024)
    a = torch.randn(m, kk, device=device)
    b = torch.randn(n, kk, device=device)
    ab, bb = a.bfloat16(), b.bfloat16()
    out = {"gemm_bf16_gflops": 2 * m * n * kk / bench(lambda: ab @ bb.T, device) / 1e9}
    a8 = torch.randint(-128, 127, (m, kk), dtype=torch.int8, device=device)
    b8 = torch.randint(-128, 127, (kk, n), dtype=torch.int8, device=device)
    try:
        out["gemm_int8_gops"] = 2 * m * n * kk / bench(lambda: torch._int_mm(a8, b8), device) / 1e9
    except RuntimeError as err:
        out["gemm_int8_gops"] = None
        print(f"note: int8 GEMM unavailable ({err})")
    return out


def cases(device, quick):
    """(M, N, D, k, data) with data 'float' or 'uint8'."""
    if device == "cuda":
        full = [(4096, 100_000, 768, 10, "float"), (50_000, 1_000_000, 3072, 10, "float"),
                (50_000, 1_000_000, 3072, 10, "uint8")]
        quick_c = [(4096, 100_000, 768, 10, "float")]
    else:
        full = [(2000, 50_000, 1024, 10, "float"), (2000, 50_000, 1024, 10, "uint8"),
                (256, 16384, 256, 10, "float"), (64, 50_000, 3072, 10, "float")]
        quick_c = [(500, 8192, 1024, 10, "float"), (500, 8192, 1024, 10, "uint8")]
    return quick_c if quick else full


def make_data(dev, M, N, D, data):
    g = torch.Generator(device=dev).manual_seed(0)
    if data == "uint8":
        x = torch.randint(0, 256, (N, D), device=dev, generator=g, dtype=torch.uint8)
        q = torch.randint(0, 256, (M, D), device=dev, generator=g, dtype=torch.uint8)
        return q, x, q.float(), x.float()
    x = torch.rand(N, D, device=dev, generator=g) * 2 - 1 + 0.5
    q = torch.rand(M, D, device=dev, generator=g) * 2 - 1 + 0.5
    return q, x, q, x


def run_case(dev, M, N, D, k, data, backends, ceil, rows, ratios, notes):
    case = f"M={M} N={N} D={D} k={k} {data}"
    q, x, qf, xf = make_data(dev, M, N, D, data)  # qf, xf: float32 for the peers
    ours = f"knn[{backends[0]}]"
    # the largest cases time only the first backend (the others are checked for correctness)
    timed = backends if M * N * D <= 1e14 else backends[:1]
    impls = {f"knn[{b}]": (lambda b=b: knn(q, x, k, backend=b)) for b in timed}
    impls["cdist+topk"] = lambda: cdist_topk(qf, xf, k)
    if dev == "cuda":
        impls["fp32 GEMM+topk"] = lambda: gemm_topk(qf, xf, k)
    fa, note = faiss_peer(qf, xf, k, dev)
    if fa is not None:
        impls["faiss.IndexFlatL2"] = fa
    if note not in notes:
        notes.append(note)

    # correctness on a subset of queries: neighbour sets equal the float64 answer
    sub = slice(0, min(M, 64))
    want = exact_float64(qf[sub], xf, k).cpu()
    recall = {}
    for b in backends:
        got = knn(q[sub], x, k, backend=b)[1].cpu()
        assert torch.equal(got.sort(1).values, want.sort(1).values), \
            f"{case}: knn[{b}] differs from the float64 answer"
        recall[f"knn[{b}]"] = 1.0
    peers = {"cdist+topk": lambda: cdist_topk(qf[sub], xf, k).cpu()}
    if fa is not None:
        fq = qf[sub].cpu().numpy()
        peers["faiss.IndexFlatL2"] = lambda: torch.from_numpy(_faiss_sub(xf, fq, k))
    for name, fn in peers.items():
        got = fn()
        hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(got, want))
        recall[name] = hits / want.numel()

    times = {}
    for name, fn in impls.items():
        t = bench(fn, dev)
        times[name] = t
        gflops = 2 * M * N * D / t / 1e9
        rows.append({"kind": "time", "case": case, "impl": name, "time_s": t,
                     "gflops": gflops, "frac_fp32_gemm": gflops / ceil["gemm_fp32_gflops"],
                     "frac_bf16_gemm": gflops / ceil["gemm_bf16_gflops"],
                     "recall@k_vs_fp64": recall.get(name)})
    ratios.extend(ratio_rows(case, times, ours))


def _faiss_sub(xf, fq, k):
    import faiss

    index = faiss.IndexFlatL2(xf.shape[1])
    index.add(xf.float().cpu().numpy())
    return index.search(fq, k)[1]


def main():
    args = parse_args(__doc__.splitlines()[0])
    dev = args.device
    threads = os.environ.get("PYDIFFGEN_BENCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    ceil = {**ceilings(dev), **gemm_rates(dev)}
    backends = [b for b, why in dispatch.op("knn").reasons(dev).items() if why == "ok"]
    rows, ratios, notes = [], [], []
    for M, N, D, k, data in cases(dev, args.quick):
        run_case(dev, M, N, D, k, data, backends, ceil, rows, ratios, notes)
    meta = {**metadata(dev), "ceilings": ceil, "notes": notes, "threads": torch.get_num_threads(),
            "knn_backends": dispatch.op("knn").reasons(dev),
            "topk_merge_backend": dispatch.op("topk_merge").select(dev).name}
    path = write_json("bench_knn", rows + ratios, meta)
    i8 = ceil.get("gemm_int8_gops")
    print(f"knn on {meta['device_name']}: GEMM ceilings fp32 {ceil['gemm_fp32_gflops']:.0f}, "
          f"bf16 {ceil['gemm_bf16_gflops']:.0f}, int8 {i8 and round(i8)} G(FL)OP/s; "
          f"topk_merge backend: {meta['topk_merge_backend']}")
    print_table(rows, ["case", "impl", "time_s", "gflops", "frac_fp32_gemm", "frac_bf16_gemm",
                       "recall@k_vs_fp64"])
    print()
    print_table(ratios, ["case", "ours", "peer", "speedup"])
    for n in notes:
        print(f"note: {n}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
