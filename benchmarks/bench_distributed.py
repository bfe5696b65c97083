"""Per-rank throughput and communication of pydiffgen.distributed on R local ranks.

Correctness first (every rank count): the sharded knn returns the single-process
neighbours and the sharded empirical denoiser the single-process output. Then, with the
training set split over R ranks (gloo on CPU, R = 1 and 2; NCCL on one GPU, R = 1):

- ``knn``: M queries against N keys of dimension D, k = 10: seconds per call, aggregate
  GFLOP/s (2·M·N·D / t) and per rank (÷ R); bytes every rank receives in the top-k
  all_gather, R·k·16 per query (float64 score + int64 index);
- ``empirical``: the sharded empirical denoiser at σ = 2 (a dense softmax on these
  [-1, 1]^D rows: the exact float64 streamed pass on every rank): rows/s and GFLOP/s
  (4·M·N·D / t: the logit and the weighted-sum GEMMs); bytes per row of the log-sum-exp
  merge, 8·(D + 1) for the SUM plus 8 for the MAX (all_reduce payloads);
- ``train``: DDP training of the default UNet on 16×16 images, global batch 64: images/s;
  DDP all-reduces 4·P gradient bytes per step (P parameters);
- ``comm``: the same collectives alone at those sizes (seconds, payload GB/s).

CPU runs: R = 1 on all cores, R = 1 on one core, R = 2 with cores // 2 threads each (the
same cores): per-rank numbers at equal threads show what sharding costs per rank, and
per-rank × R projects to R machines. Timing: barrier, ``--repeats`` calls, barrier; the
median over repeats.

    python benchmarks/bench_distributed.py            # CPU, R = 1, 2
    python benchmarks/bench_distributed.py --quick    # small sizes
    python benchmarks/bench_distributed.py --device cuda   # one GPU: R = 1 (NCCL)
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import metadata, parse_args, print_table, write_json  # noqa: E402


def sizes(quick: bool, device: str) -> dict:
    if device == "cuda":
        return dict(knn=(1024, 1 << 18, 3072), emp=(1024, 1 << 17, 3072), train=(64, 16),
                    repeats=5 if quick else 10)
    if quick:
        return dict(knn=(64, 8192, 784), emp=(64, 4096, 784), train=(64, 16), repeats=3)
    return dict(knn=(256, 65536, 3072), emp=(256, 16384, 3072), train=(64, 16), repeats=5)


def _timed(fn, repeats: int, device: str) -> float:
    from pydiffgen import distributed

    fn()  # warm-up
    times = []
    for _ in range(repeats):
        distributed.barrier()
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        distributed.barrier()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def worker(rank: int, world: int, threads: int, port: int, device: str, cfg: dict,
           out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if device == "cpu":
        torch.set_num_threads(threads)
    from pydiffgen import distributed, models, ops
    from pydiffgen.training import TrainConfig, train

    distributed.init("nccl" if device == "cuda" else "gloo")
    dev = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else "cpu"
    rows = []
    g = torch.Generator().manual_seed(0)

    # knn: keys on [-1, 1] with every rank generating only its shard (same global rows)
    M, N, D = cfg["knn"]
    rng = distributed.shard(N, rank, world)
    q = (torch.rand(M, D, generator=g) * 2 - 1).to(dev)
    keys = _rows(rng, D, seed=1).to(dev)
    k = 10
    v, i = distributed.knn(q, keys, k)
    if cfg["check"]:
        full = _rows(range(N), D, seed=1).to(dev)
        v1, i1 = ops.knn(q, full, k)
        assert torch.equal(i, i1), "sharded knn differs from ops.knn"
        del full
    t = _timed(lambda: distributed.knn(q, keys, k), cfg["repeats"], device)
    flops = 2 * M * N * D
    rows.append({"case": f"knn M={M} N={N} D={D} k={k}", "op": "knn", "ranks": world,
                 "threads_per_rank": threads, "seconds": t, "gflops": flops / t / 1e9,
                 "gflops_per_rank": flops / t / 1e9 / world,
                 "comm_bytes_per_query": world * k * 16 if world > 1 else 0})

    # empirical denoiser at σ = 2 (uniform [-1, 1] rows at D = 3072: a dense softmax, the
    # float64 streamed pass on every rank, merged)
    M, N, D = cfg["emp"]
    rng = distributed.shard(N, rank, world)
    train_shard = _rows(rng, D, seed=2).to(dev)
    y = (torch.rand(M, D, generator=g) * 2 - 1).to(dev)
    d = distributed.empirical_denoiser(y, train_shard, 2.0)
    if cfg["check"]:
        full = _rows(range(N), D, seed=2).to(dev)
        d1 = ops.empirical_denoiser(y, full, 2.0)
        assert torch.allclose(d, d1, rtol=1e-4, atol=1e-4), "sharded empirical differs"
        del full
    t = _timed(lambda: distributed.empirical_denoiser(y, train_shard, 2.0), cfg["repeats"],
               device)
    flops = 4 * M * N * D
    rows.append({"case": f"empirical M={M} N={N} D={D}", "op": "empirical", "ranks": world,
                 "threads_per_rank": threads, "seconds": t, "rows_per_sec": M / t,
                 "gflops": flops / t / 1e9, "gflops_per_rank": flops / t / 1e9 / world,
                 "comm_bytes_per_row": 8 * (D + 2) if world > 1 else 0})

    # the per-rank work of the sharded empirical denoiser alone: the partials of this shard
    from pydiffgen.ops import lse

    sig = torch.full((M,), 2.0, dtype=torch.float64, device=dev)
    t = _timed(lambda: lse.partials(y, train_shard, sig), cfg["repeats"], device)
    flops = 4 * M * len(rng) * D
    rows.append({"case": f"empirical partials M={M} N_r={len(rng)} D={D}", "op": "partials",
                 "ranks": world, "threads_per_rank": threads, "seconds": t,
                 "gflops": flops / t / 1e9 * world, "gflops_per_rank": flops / t / 1e9})

    # communication alone at the sizes above
    if world > 1:
        MAX, SUM = torch.distributed.ReduceOp.MAX, torch.distributed.ReduceOp.SUM
        Mk = cfg["knn"][0]
        cand = torch.zeros(Mk, k, dtype=torch.float64, device=dev)

        def gather():
            distributed._all_gather(cand, None)
            distributed._all_gather(cand.long(), None)

        t = _timed(gather, cfg["repeats"], device)
        rows.append({"case": f"all_gather top-k M={Mk} k={k}", "op": "comm", "ranks": world,
                     "seconds": t, "payload_gbs": world * Mk * k * 16 / t / 1e9})
        Me, De = cfg["emp"][0], cfg["emp"][2]
        part = torch.zeros(Me, De + 1, dtype=torch.float64, device=dev)

        def lse():
            distributed._all_reduce(part[:, 0], MAX, None)
            distributed._all_reduce(part, SUM, None)

        t = _timed(lse, cfg["repeats"], device)
        rows.append({"case": f"all_reduce LSE M={Me} D={De}", "op": "comm", "ranks": world,
                     "seconds": t, "payload_gbs": Me * (De + 2) * 8 / t / 1e9})

    # DDP training: global batch B, 16×16 images
    B, S = cfg["train"]
    x = _rows(range(512), S * S, seed=3).reshape(512, 1, S, S)
    torch.manual_seed(0)
    model = models.build("unet", channels=1)
    n_params = sum(p.numel() for p in model.parameters())
    steps = 4 if cfg["quick"] else 12
    tc = TrainConfig(steps=steps, batch_size=B, sigma_dist="edm", checkpoint_every=None,
                     device=device)
    train(model, x, TrainConfig(steps=2, batch_size=B, sigma_dist="edm",
                                checkpoint_every=None, device=device),
          progress=False, distributed=world > 1)  # warm-up
    rates = []
    for _ in range(max(1, cfg["repeats"] // 2)):
        torch.manual_seed(0)
        model = models.build("unet", channels=1)
        rates.append(train(model, x, tc, progress=False, distributed=world > 1).images_per_s)
    rate = statistics.median(rates)
    rows.append({"case": f"train unet {S}x{S} batch {B}", "op": "train", "ranks": world,
                 "threads_per_rank": threads, "images_per_sec": rate,
                 "images_per_sec_per_rank": rate / world, "params": n_params,
                 "comm_bytes_per_step": 4 * n_params if world > 1 else 0})
    if rank == 0:
        torch.save(rows, out)
    torch.distributed.destroy_process_group()


def _rows(rng: range, D: int, seed: int) -> torch.Tensor:
    """Rows rng of a fixed [N, D] set in [-1, 1], generated in blocks of 1024 rows so any
    shard is made without the others (row r depends on (seed, r // 1024) only)."""
    out = torch.empty(len(rng), D)
    for b0 in range(rng.start - rng.start % 1024, rng.stop, 1024):
        block = torch.rand(1024, D, generator=torch.Generator().manual_seed(seed * 7919 + b0))
        lo, hi = max(b0, rng.start), min(b0 + 1024, rng.stop)
        out[lo - rng.start : hi - rng.start] = block[lo - b0 : hi - b0] * 2 - 1
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    args = parse_args(__doc__.splitlines()[0])
    cfg = sizes(args.quick, args.device)
    cfg.update(quick=args.quick, check=True)
    cores = os.cpu_count() or 1
    # (ranks, threads per rank): one rank on every core, one rank on one core (the per-rank
    # baseline), and R = 2 ranks sharing the cores
    runs = [(1, 1)] if args.device == "cuda" else [(1, cores), (1, 1), (2, max(1, cores // 2))]
    rows = []
    tmp = ROOT / "benchmarks" / "results" / ".bench_distributed.pt"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    for world, threads in runs:
        ctx = mp.start_processes(worker, args=(world, threads, _free_port(), args.device, cfg,
                                               str(tmp)),
                                 nprocs=world, join=False, start_method="spawn")
        while not ctx.join():
            pass
        rows += torch.load(tmp, weights_only=True)
        tmp.unlink()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    meta = metadata(args.device) | {"load_average_1min": load, "cores": os.cpu_count()}
    path = write_json("bench_distributed", rows, meta)
    print_table(rows, ["case", "ranks", "threads_per_rank", "seconds", "gflops",
                       "gflops_per_rank", "rows_per_sec", "images_per_sec", "payload_gbs"])
    print(f"load average {load}; wrote {path}")


if __name__ == "__main__":
    main()
