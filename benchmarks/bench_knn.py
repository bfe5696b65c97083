"""knn (exact) vs faiss IndexFlatL2 and chunked torch.cdist + topk, on Gaussian and image data.

Correctness first: on a subset of queries, pydiffgen's neighbours must equal the float64
exact answer in order (ties to the lower index); the recall of the peers against it is
reported too. Then times, interleaved so that ours and the peers see the same machine
state: each implementation is warmed up, then ROUNDS rounds each call every
implementation once (in an order rotated per round) under a bare perf_counter pair; the
figure is the median over rounds, reported with the min, max and spread (max − min over
median) and the load average before and after. Each median is checked against a second,
independent timing (``_common.harness_time``: torch.utils.benchmark's blocked_autorange)
and flagged ``agree: false`` beyond ``CHECK_TOLERANCE``. Ratios ours / peer come from the
medians (and the mins) of this run; GFLOP/s of the 2·M·N·D distance work.

    python benchmarks/bench_knn.py [--device cpu|cuda] [--quick]

How each is run (the way its users run it): faiss with its OpenMP threads set to ours
(``_common.peer_threads``), the keys already added to its index, timed ``search`` only;
ours as ``knn(queries, keys)`` (one call: keys prepared inside) and as
``KnnIndex(keys).search(queries)`` (keys prepared once, outside the timing, as faiss's
``add``); cdist + topk in query chunks. CPU threads: torch's default
(PYDIFFGEN_BENCH_THREADS overrides); faiss gets the same. Data: Gaussian; grayscale
32×32 photograph patches (scikit-image, d = 1024) and a CIFAR-sized d = 3072 made of three
overlapping patches as channels (no CIFAR files are downloaded), float32 and 8-bit;
index reuse: one key set, many query batches. Writes benchmarks/results/bench_knn.json
and prints the RESULTS.md rows (also in the JSON's meta.markdown).
The issue's CPU target: M=2000 N=50000 D=1024 k=10 at ≤ 0.5 × faiss IndexFlatL2 (aim 0.3).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    CHECK_TOLERANCE,
    CHECKS,
    ceilings,
    fmt_s,
    harness_time,
    load_average,
    metadata,
    parse_args,
    peer_threads,
    print_table,
    write_json,
)

from pydiffgen.ops import dispatch, knn, topk_merge  # noqa: E402
from pydiffgen.ops.knn import KnnIndex  # noqa: E402


def cdist_topk(q, x, k):
    """What a user would write, in query chunks so the [rows, N] matrix stays bounded."""
    rows = max(1, min(256, (1 << 28) // len(x)))
    out = [torch.cdist(q[i : i + rows], x).topk(k, dim=1, largest=False).indices
           for i in range(0, len(q), rows)]
    return torch.cat(out)


def exact_float64(q, x, k):
    """float64 brute force from direct differences (no norm expansion), ties to the lower
    index (``topk_merge``), over key chunks of ≤ 16 M float64 differences."""
    qd = q.double()
    v = torch.full((len(q), k), float("inf"), dtype=torch.float64, device=q.device)
    i = torch.full((len(q), k), -1, dtype=torch.int64, device=q.device)
    step = max(1, (1 << 24) // (len(q) * x.shape[1]))
    for n0 in range(0, len(x), step):
        d = (qd[:, None, :] - x[n0 : n0 + step].double()[None]).square().sum(-1)
        v, i = topk_merge(v, i, d, n0)
    return i


def faiss_index(x, device):
    """(faiss IndexFlatL2 holding x, note) or (None, reason)."""
    try:
        import faiss
    except ImportError as err:
        return None, f"faiss not importable ({err})"
    index = faiss.IndexFlatL2(x.shape[1])
    if device == "cuda":
        if not hasattr(faiss, "StandardGpuResources"):
            return None, "faiss has no GPU support (CPU wheel)"
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(),
                                       torch.cuda.current_device(), index)
    index.add(x.float().cpu().numpy())
    threads = faiss.omp_get_max_threads()
    return index, f"faiss {faiss.__version__} IndexFlatL2, {threads} OpenMP threads"


# ---- data ---------------------------------------------------------------------------------

def gaussian(M, N, D, dev):
    g = torch.Generator().manual_seed(0)
    x, q = torch.randn(N, D, generator=g), torch.randn(M, D, generator=g)
    return q.to(dev), x.to(dev)


def image_rows(M, N, D, dev, eight_bit=False):
    """Queries and keys from disjoint random patches of the bundled photographs: D = 1024
    (one 32×32 patch) or 3072 (three patches offset by 4 pixels, as colour channels)."""
    from pydiffgen.data.builtin import patches

    x, _ = patches(size=36, stride=6)  # [P, 1, 36, 36] in [-1, 1]
    x = x[:, 0]
    if D == 1024:
        rows = x[:, :32, :32].reshape(len(x), -1)
    else:
        rows = torch.stack([x[:, :32, :32], x[:, 4:, :32], x[:, :32, 4:]], 1).reshape(len(x), -1)
    if M + N > len(rows):
        raise SystemExit(f"only {len(rows)} patches, need {M + N}")
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))
    rows = rows[perm[: M + N]].float()
    if eight_bit:
        rows = ((rows + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return rows[:M].to(dev), rows[M:].to(dev)


def cases(device, quick):
    """(name, M, N, D, data) with data gaussian / patches / patches-uint8."""
    if device == "cuda":
        return [("gaussian", 4096, 100_000, 768, "gaussian")]
    if quick:
        return [("gaussian", 500, 8192, 1024, "gaussian"),
                ("photo patches", 500, 8192, 1024, "patches")]
    return [("gaussian (target)", 2000, 50_000, 1024, "gaussian"),
            ("photo patches (target size)", 2000, 50_000, 1024, "patches"),
            ("photo patches, 8-bit", 2000, 50_000, 1024, "patches-uint8"),
            ("CIFAR-sized patches", 500, 50_000, 3072, "patches"),
            ("gaussian small", 256, 16384, 256, "gaussian")]


def make(M, N, D, data, dev):
    if data == "gaussian":
        return gaussian(M, N, D, dev)
    return image_rows(M, N, D, dev, eight_bit=data == "patches-uint8")


# ---- timing -------------------------------------------------------------------------------

ROUNDS = 7  # interleaved rounds for ours and faiss (the figures the ratios are made of)
SLOW_ROUNDS = 2  # cdist + topk, several times slower and only a reference point


def interleaved(fns, label_prefix):
    """Times of the callables fns {label: fn()} (module doc): {label: {"time_s": median,
    "min_s", "max_s", "spread", "times", "check_s", "agree", "load_before", "load_after"}}."""
    for fn in fns.values():
        fn()  # warm-up (allocations, lazy init, caches, the index's later passes)
    labels = list(fns)
    rounds = {lab: SLOW_ROUNDS if lab == "cdist+topk" else ROUNDS for lab in labels}
    times = {lab: [] for lab in labels}
    load_before = load_average()
    for r in range(max(rounds.values())):
        for lab in labels[r % len(labels):] + labels[: r % len(labels)]:
            if len(times[lab]) < rounds[lab]:
                t0 = time.perf_counter()
                fns[lab]()
                times[lab].append(time.perf_counter() - t0)
    load_after = load_average()
    out = {}
    for lab, ts in times.items():
        med = statistics.median(ts)
        check = harness_time(fns[lab], "cpu", min_run_time=0.3)
        agree = abs(med - check) <= CHECK_TOLERANCE * min(med, check)
        out[lab] = {"label": f"{label_prefix} | {lab}", "time_s": med, "min_s": min(ts),
                    "max_s": max(ts), "spread": (max(ts) - min(ts)) / med, "times": ts,
                    "check_s": check, "agree": agree, "load_before": load_before,
                    "load_after": load_after}
        CHECKS.append(out[lab])
        if not agree:
            print(f"warning: {lab}: rounds' median {fmt_s(med)} and harness {fmt_s(check)} "
                  f"disagree by more than {CHECK_TOLERANCE:.0%} (load {load_after})", flush=True)
    return out


def report(label, r):
    print(f"  {label:<20} median {fmt_s(r['time_s'])} min {fmt_s(r['min_s'])} spread "
          f"{r['spread']:.0%} over {len(r['times'])} (harness {fmt_s(r['check_s'])}, agree "
          f"{r['agree']}, load {r['load_before']} -> {r['load_after']})", flush=True)


# ---- one case -----------------------------------------------------------------------------

def check_exact(name, q, x, k, impls):
    """Our neighbours equal the float64 ones in order on ≤ 64 queries; peers' recall."""
    sub = slice(0, min(len(q), 64))
    qf, xf = q.float(), x.float()
    want = exact_float64(qf[sub], xf, k).cpu()
    recall = {}
    for label, fn in impls.items():
        got = fn(q[sub]).cpu()
        if label.startswith(("knn", "KnnIndex")):
            assert torch.equal(got, want), f"{name}: {label} differs from the float64 answer"
        hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(got, want))
        recall[label] = hits / want.numel()
    return recall


def run_case(dev, name, M, N, D, data, k, rows):
    q, x = make(M, N, D, data, dev)
    qf, xf = q.float(), x.float()  # the peers get the same values as float32
    index = KnnIndex(x)
    fa, note = faiss_index(xf, dev)
    searches = {  # label -> fn(queries) -> indices
        "knn (one call)": lambda qq: knn(qq, x, k)[1],
        "KnnIndex.search": lambda qq: index.search(qq, k)[1],
        "cdist+topk": lambda qq: cdist_topk(qq.float(), xf, k),
    }
    if fa is not None:
        searches["faiss.IndexFlatL2"] = lambda qq: torch.from_numpy(
            fa.search(qq.float().cpu().numpy(), k)[1])
    recall = check_exact(name, q, x, k, searches)
    case = f"{name}: M={M} N={N} D={D} k={k} {x.dtype}".replace("torch.", "")
    ours = {label: label.startswith(("knn", "KnnIndex")) for label in searches}
    calls = {label: (lambda fn=fn, qq=q if ours[label] else qf: fn(qq))
             for label, fn in searches.items()}
    timing = interleaved(calls, case)
    for label, r in timing.items():
        rows.append({"kind": "time", "case": case, "impl": label, **r,
                     "gflops": 2 * M * N * D / r["time_s"] / 1e9,
                     "recall@k_vs_fp64": recall[label], "peer_note": note})
        report(label, r)
    return case, timing


def run_reuse(dev, quick, k, rows):
    """One key set, many query batches: KnnIndex (prepared once) vs knn per batch vs faiss."""
    M, N, D, batches = (100, 8192, 1024, 5) if quick else (200, 50_000, 1024, 10)
    q, x = image_rows(M * batches, N, D, dev)
    qs = q.split(M)
    index = KnnIndex(x)
    fa, note = faiss_index(x, dev)
    impls = {"KnnIndex.search": lambda: [index.search(b, k) for b in qs],
             "knn per batch": lambda: [knn(b, x, k) for b in qs]}
    if fa is not None:
        qn = [b.cpu().numpy() for b in qs]
        impls["faiss.IndexFlatL2"] = lambda: [fa.search(b, k) for b in qn]
    for b in qs[:2]:
        want = exact_float64(b[:32], x, k).cpu()
        assert torch.equal(index.search(b[:32], k)[1], want), "index reuse differs from float64"
    case = f"index reuse (photo patches): {batches} batches of M={M}, N={N} D={D} k={k}"
    timing = interleaved(impls, case)
    for label, r in timing.items():
        rows.append({"kind": "time", "case": case, "impl": label, **r, "peer_note": note})
        report(label, r)
    return case, timing


def ratios(case, timing, ours_labels):
    """ours / peer from this run's medians and mins, with the load beside them."""
    out = []
    for ours in ours_labels:
        for peer, t in timing.items():
            if peer not in ours_labels and ours in timing:
                o = timing[ours]
                out.append({"kind": "ratio", "case": case, "ours": ours, "peer": peer,
                            "ours_s": o["time_s"], "peer_s": t["time_s"],
                            "ours_over_peer": o["time_s"] / t["time_s"],
                            "ours_over_peer_min": o["min_s"] / t["min_s"],
                            "peer_spread": t["spread"], "load_after": t["load_after"]})
    return out


def markdown(results):
    """The RESULTS.md rows: medians over the rounds with their spread (⚠: the harness check
    disagreed), ours / faiss from the medians (and the mins), cdist / ours, the load."""
    lines = ["| case | knn (one call) | KnnIndex.search | faiss IndexFlatL2 | cdist + topk "
             "| one call / faiss | index / faiss | cdist / index | load |",
             "|---|---|---|---|---|---|---|---|---|"]
    for case, t in results:
        one_label = "knn (one call)" if "knn (one call)" in t else "knn per batch"

        def cell(label, t=t):
            if label not in t:
                return "-"
            r = t[label]
            return (f"{fmt_s(r['time_s'])} ±{r['spread'] / 2:.0%}"
                    + ("" if r["agree"] else " ⚠"))

        def ratio(a, b, t=t, suffix=""):
            if a not in t or b not in t:
                return "-"
            med = t[a]["time_s"] / t[b]["time_s"]
            low = t[a]["min_s"] / t[b]["min_s"]
            return f"{med:.2f}{suffix}" + (f" (min {low:.2f})" if not suffix else "")

        load = max(r["load_after"] or 0.0 for r in t.values())
        lines.append(" | ".join([
            f"| {case}", cell(one_label), cell("KnnIndex.search"), cell("faiss.IndexFlatL2"),
            cell("cdist+topk"), ratio(one_label, "faiss.IndexFlatL2"),
            ratio("KnnIndex.search", "faiss.IndexFlatL2"),
            ratio("cdist+topk", "KnnIndex.search", suffix="×"), f"{load:.2f}"]) + " |")
    return "\n".join(lines)


def main():
    args = parse_args(__doc__.splitlines()[0])
    dev = args.device
    threads = int(os.environ.get("PYDIFFGEN_BENCH_THREADS") or torch.get_num_threads())
    set_threads = peer_threads(threads)
    ceil = ceilings(dev)
    k = 10
    rows, results, ratio_rows = [], [], []
    for name, M, N, D, data in cases(dev, args.quick):
        print(f"{name}: M={M} N={N} D={D} ({data}), load {load_average()}", flush=True)
        case, times = run_case(dev, name, M, N, D, data, k, rows)
        results.append((case, times))
        ratio_rows += ratios(case, times, ["knn (one call)", "KnnIndex.search"])
    if dev == "cpu":
        print("index reuse:", flush=True)
        case, times = run_reuse(dev, args.quick, k, rows)
        results.append((case, times))
        ratio_rows += ratios(case, times, ["KnnIndex.search", "knn per batch"])
    meta = {**metadata(dev), "ceilings": ceil, "threads_set": set_threads,
            "knn_backends": dispatch.op("knn").reasons(dev), "quick": args.quick,
            "timing": {"method": "interleaved rounds, median (min, spread), harness check",
                       "rounds": ROUNDS, "slow_rounds": SLOW_ROUNDS}}
    table = markdown(results)
    header = (f"`python benchmarks/bench_knn.py{' --quick' if args.quick else ''}` "
              f"({meta['time']}, git {meta['git_sha']}, {meta['device_name']}, torch "
              f"{meta['torch']}, threads {set_threads}, load average after: {load_average()})")
    path = write_json("bench_knn", rows + ratio_rows, {**meta, "markdown": f"{header}\n\n{table}"})
    print()
    print_table([r for r in rows if r["kind"] == "time"],
                ["case", "impl", "time_s", "min_s", "spread", "check_s", "agree", "load_after",
                 "recall@k_vs_fp64"])
    print()
    print(header)
    print()
    print(table)
    print(f"wrote {path} (its meta.markdown holds the table above)")


if __name__ == "__main__":
    main()
