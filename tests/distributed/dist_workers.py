"""Launch a few CPU ranks with gloo for the tests in this folder (torch.multiprocessing
spawn, a free port, a hard time limit). Workers run in fresh processes: each imports what
it needs, computes, and rank 0 writes its results to files the test reads back."""

from __future__ import annotations

import os
import socket
import time
import traceback

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(worker: str, world: int = 2, timeout: float = 60.0, **kwargs) -> None:
    """Run ``WORKERS[worker](rank, world, **kwargs)`` on ``world`` gloo ranks; raise
    RuntimeError if a rank fails or the whole run exceeds ``timeout`` seconds."""
    port = free_port()
    ctx = mp.start_processes(_entry, args=(world, port, worker, kwargs), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=max(0.1, min(1.0, deadline - time.monotonic()))):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{worker} on {world} ranks did not finish in {timeout} s")
    except mp.ProcessRaisedException as err:
        raise RuntimeError(f"{worker} failed on a rank:\n{err}") from None
    except mp.ProcessExitedException as err:
        raise RuntimeError(f"{worker}: a rank exited ({err})") from None
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)


def _entry(rank: int, world: int, port: int, worker: str, kwargs: dict) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from pydiffgen import distributed

    distributed.init("gloo", timeout_s=60)
    try:
        WORKERS[worker](rank, world, **kwargs)
    except BaseException:
        traceback.print_exc()
        raise
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------------------
# workers
# ----------------------------------------------------------------------------------------


def search_cases():
    """The inputs of the sharded-search test, the same on every rank and in the test:
    (name, queries, keys, k, metric, split) with split = rows of rank 0 (None: shard())."""
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(37, 13, generator=g)
    q = torch.randn(9, 13, generator=g)
    # near-duplicates: rows 30..36 copy rows 0..6 up to 1e-6, so each pair straddles ranks
    dup = keys.clone()
    dup[30:] = dup[:7] + 1e-6 * torch.randn(7, 13, generator=g)
    q_dup = dup[:7] + 1e-4 * torch.randn(7, 13, generator=g)
    return [
        ("even-l2", q, keys, 5, "l2", None),
        ("uneven-l2", q, keys, 6, "l2", 3),  # rank 0 holds 3 keys < k
        ("empty-shard", q, keys, 4, "l2", 0),
        ("near-duplicates", q_dup, dup, 4, "l2", 20),
        ("cosine", q, keys, 5, "cosine", 11),
        ("ip", q, keys, 7, "ip", None),
    ]


def empirical_cases():
    """(name, y, train, sigma, split) of the sharded empirical denoiser test."""
    g = torch.Generator().manual_seed(1)
    train = torch.rand(41, 2, 3, 3, generator=g) * 2 - 1
    y = train[:6] + 0.3 * torch.randn(6, 2, 3, 3, generator=g)
    dup = train.clone()
    dup[25:31] = dup[:6] + 1e-5 * torch.randn(6, 2, 3, 3, generator=g)
    y_dup = dup[:6] + 1e-3 * torch.randn(6, 2, 3, 3, generator=g)
    # a tight cluster of 150 points (more than the 64 candidates) across both shards: the
    # small-σ certificate fails and the float64 pass must take over
    cluster = torch.cat([train[0] + 3e-4 * torch.randn(150, 2, 3, 3, generator=g), train[1:]])
    y_cl = train[0] + 3e-4 * torch.randn(5, 2, 3, 3, generator=g)
    mixed = torch.tensor([0.002, 0.05, 0.5, 2.0, 20.0, 0.01], dtype=torch.float64)
    return [
        ("sigma-0.5", y, train, 0.5, None),
        ("sigma-2-uneven", y, train, 2.0, 7),
        ("sigma-mixed", y, train, mixed, 30),
        ("sigma-0.002-near-duplicates", y_dup, dup, 0.002, 20),
        ("empty-shard", y, train, 0.3, 0),
        ("cluster-uncertified", y_cl, cluster, 0.0005, 70),
        ("float64", y.double(), train.double(), 0.1, None),
    ]


def _split(n, rank, world, split):
    from pydiffgen import distributed

    if split is None:
        return distributed.shard(n, rank, world)
    return range(0, split) if rank == 0 else range(split, n)


def search(rank, world, out, device="cpu"):
    """The sharded searches of test_dist_search on ``device`` (every rank on the same GPU
    for the gpu test: gloo moves the collectives' tensors through the host)."""
    from pydiffgen import distributed
    from pydiffgen.errors import InputError

    results = {}
    for name, q, keys, k, metric, split in search_cases():
        rows = _split(len(keys), rank, world, split)
        v, i = distributed.knn(q.to(device), keys[rows.start : rows.stop].to(device), k, metric)
        results[f"knn/{name}/values"], results[f"knn/{name}/indices"] = v.cpu(), i.cpu()
    for name, y, train, sigma, split in empirical_cases():
        rows = _split(len(train), rank, world, split)
        sigma = sigma.to(device) if isinstance(sigma, torch.Tensor) else sigma
        results[f"empirical/{name}"] = distributed.empirical_denoiser(
            y.to(device), train[rows.start : rows.stop].to(device), sigma).cpu()
    # explicit offsets: shards laid out in reverse rank order
    _, q, keys, k, metric, _ = search_cases()[0]
    rows = range(20, 37) if rank == 0 else range(0, 20)
    v, i = distributed.knn(q, keys[rows.start : rows.stop], k, metric, offset=rows.start)
    results["knn/reversed-offsets/values"], results["knn/reversed-offsets/indices"] = v, i
    # queries that differ across ranks are refused on every rank, nobody hangs
    try:
        distributed.knn(q + rank, keys[rank::2], 3)
        results["mismatch-refused"] = torch.tensor(0)
    except InputError:
        results["mismatch-refused"] = torch.tensor(1)
    results["refused-on-every-rank"] = torch.tensor(
        int(distributed._all_reduce(results["mismatch-refused"].double(),
                                    torch.distributed.ReduceOp.MIN, None)))
    # bad input on one rank only (NaN keys, a wrong feature shape) is refused on every rank
    bad_keys = keys[rank::2].clone()
    if rank == 1:
        bad_keys[0, 0] = float("nan")
    y, train = empirical_cases()[0][1:3]
    for name, call in (("nan-keys", lambda: distributed.knn(q, bad_keys, 3)),
                       ("bad-shape", lambda: distributed.empirical_denoiser(
                           y, train[rank::2].flatten(1) if rank else train[rank::2], 0.5))):
        try:
            call()
            results[f"one-rank-{name}"] = torch.tensor(0)
        except InputError as err:
            results[f"one-rank-{name}"] = torch.tensor(int("on rank 1" in str(err)))

    # an error on rank 0 inside run_on_main reaches every rank with its type and message
    from pydiffgen.errors import ConfigError

    def fail():
        raise ConfigError("refused by rank 0")

    try:
        distributed.run_on_main(fail)
        results["run_on_main-error"] = torch.tensor(0)
    except ConfigError as err:
        results["run_on_main-error"] = torch.tensor(int(str(err) == "refused by rank 0"))
    results["run_on_main-error-everywhere"] = distributed._all_reduce(
        results["run_on_main-error"].double(), torch.distributed.ReduceOp.MIN, None)
    results["run_on_main-value"] = torch.tensor(
        distributed.run_on_main(lambda: 40 + distributed.rank() + 2))

    # the audit under 2 ranks: every search scans one shard per rank
    from pydiffgen.experiments.audit import audit

    samples, train = audit_inputs()
    a = audit(samples.to(device), train.to(device))
    px = a.spaces["pixel"]
    results.update({"audit/ratio": px.memorization.ratio, "audit/nn": px.memorization.nn_index,
                    "audit/cos_index": px.nearest_cosine_index,
                    "audit/background_index": px.background_index,
                    "audit/dropped": a.duplicates.dropped})
    if rank == 0:
        torch.save(results, out)


def audit_inputs():
    """Samples (half copies of training images) and a training set with duplicates."""
    g = torch.Generator().manual_seed(4)
    train = torch.rand(57, 1, 6, 6, generator=g) * 2 - 1
    train[50:] = train[:7] + 1e-3 * torch.randn(7, 1, 6, 6, generator=g)
    samples = torch.cat([train[10:20] + 1e-3 * torch.randn(10, 1, 6, 6, generator=g),
                         torch.rand(9, 1, 6, 6, generator=g) * 2 - 1])
    return samples, train


def train_setup():
    """(model, data, config) of the DDP test: an odd global batch (4 + 3 images on 2 ranks),
    EMA, EDM σ, checkpoints every 2 steps."""
    from pydiffgen import models
    from pydiffgen.training import TrainConfig

    torch.manual_seed(5)
    model = models.build("unet", channels=1, width=8, levels=2)
    data = torch.rand(23, 1, 8, 8, generator=torch.Generator().manual_seed(6)) * 2 - 1
    config = TrainConfig(steps=5, batch_size=7, sigma_dist="edm", ema=0.9, grad_clip=50.0,
                         checkpoint_every=2, seed=3, lr=2e-3)
    return model, data, config


def first_step_grads(grads):
    """A train() callback that copies the gradients of step 1 into ``grads``."""

    def callback(step, loss, model):
        if step == 1:
            grads.update({k: p.grad.clone() for k, p in model.named_parameters()})

    return callback


def train_ddp(rank, world, out_dir, result, die_at=None):
    """DDP training; rank 1 dies (exits without a word) at step ``die_at``."""
    from pydiffgen.training import train

    model, data, config = train_setup()
    grads = {}
    record = first_step_grads(grads)

    def callback(step, loss, model):
        record(step, loss, model)
        if rank == 1 and step == die_at:
            os._exit(3)

    r = train(model, data, config, out_dir=out_dir, progress=False, distributed=True,
              callback=callback)
    if rank == 0:
        torch.save({"losses": torch.tensor(r.losses),
                    **{f"grad1/{k}": v for k, v in grads.items()},
                    **{f"model/{k}": v for k, v in r.model.state_dict().items()},
                    **{f"ema/{k}": v for k, v in r.ema.state_dict().items()}}, result)


def sweep_config():
    from pydiffgen.experiments import SweepConfig

    return SweepConfig(
        name="dist", dataset="gaussian", dataset_options=(("n", 64), ("size", 8)),
        dedup_threshold=None, sizes=(2, 4), model="bf_unet",
        model_options=(("levels", 1), ("width", 8)), steps=6, batch_size=8, n_samples=4,
        n_eval=2, n_baseline=8, psnr_levels=(10.0,), sampler="euler",
        sampler_options=(("steps", 3),),
    )


def sweep(rank, world, out, die_after_first_run=False):
    """The sweep on every rank; rank 1 dies when it starts its second training."""
    from pydiffgen.experiments import generalization_sweep

    started = []

    def log(msg):
        if "training" in msg:
            started.append(msg)
            if die_after_first_run and rank == 1 and len(started) == 2:
                os._exit(3)

    generalization_sweep(sweep_config(), out, progress=False, log=log)


def index_cases():
    """(name, y [M, D], train [N, D], σ calls: a list of [M] tensors) of the sharded
    EmpiricalIndex test: 64 midpoints of two digits (8×8, [-1, 1]; the first is digits 4
    and 14) with one σ per row over 64 log-spaced σ in [0.002, 80] (and reversed), then
    16 σ's per call; the same ×100 + 50 (large norm); random odd sizes; a tight cluster of
    150 points whose exact rows need the kNN candidates."""
    import math

    from pydiffgen.data.builtin import digits

    x = digits()[0].reshape(-1, 64).float()
    g = torch.Generator().manual_seed(0)
    pairs = torch.cat([torch.tensor([[4, 14]]), torch.randint(0, len(x), (63, 2), generator=g)])
    mid = (x[pairs[:, 0]] + x[pairs[:, 1]]) / 2  # [64, 64]
    sig = torch.logspace(math.log10(0.002), math.log10(80), 64, dtype=torch.float64)
    odd = torch.rand(127, 37, generator=g) * 2 - 1
    odd[100:] = odd[:27].clone()  # duplicated rows
    y_odd = (odd[:7] + odd[1:8]) / 2 + 0.01 * torch.randn(7, 37, generator=g)
    s_odd = torch.logspace(math.log10(0.002), math.log10(80), 63, dtype=torch.float64)
    c0 = odd[0, :18]
    cluster = torch.cat([c0 + 3e-4 * torch.randn(150, 18, generator=g), odd[1:41, :18]])
    y_cl = c0 + 3e-4 * torch.randn(5, 18, generator=g)
    s_cl = torch.tensor([3e-4, 5e-4, 1e-3, 0.01, 0.5], dtype=torch.float64)
    return [
        ("digits-midpoints", mid, x, [sig, sig.flip(0), *(s.repeat(4) for s in sig.split(16))]),
        ("digits-large-norm", mid * 100 + 50, x * 100 + 50, [sig * 100, sig.flip(0) * 100]),
        ("odd-sizes", y_odd, odd, list(s_odd.split(7))),
        ("cluster-knn-rows", y_cl, cluster, [s_cl, s_cl.flip(0), s_cl.roll(2)]),
    ]


def index_splits(n, world):
    """Shard sizes per rank for ``world`` ranks (every layout holds a single image;
    uneven; 4 ranks: an empty shard too)."""
    return {1: [n], 2: [1, n - 1], 3: [n // 2, 1, n - n // 2 - 1],
            4: [n - 8, 7, 1, 0]}[world]


def empirical_index(rank, world, out):
    """distributed.empirical_denoiser with an ops.EmpiricalIndex of each rank's shard, on
    groups of 1 to ``world`` ranks: the outputs of every σ call, how often a rank
    prepared bf16 keys (lse.Keys) or a kNN index during the calls, and whether the held
    keys are the same objects after them; the plain-tensor call's output beside."""
    from pydiffgen import distributed
    from pydiffgen.ops import EmpiricalIndex, lse
    from pydiffgen.ops.knn import KnnIndex

    prepared = {"keys": 0, "knn": 0}
    keys_init, of_rows = lse.Keys.__init__, KnnIndex.of_rows.__func__

    def counted_keys(self, *a, **k):
        prepared["keys"] += 1
        keys_init(self, *a, **k)

    def counted_knn(cls, *a, **k):
        prepared["knn"] += 1
        return of_rows(cls, *a, **k)

    lse.Keys.__init__, KnnIndex.of_rows = counted_keys, classmethod(counted_knn)
    results = {}
    for R in range(1, world + 1):
        group = torch.distributed.new_group(list(range(R)))  # every rank takes part
        if rank >= R:
            continue
        for name, y, train, sigmas in index_cases():
            sizes = index_splits(len(train), R)
            start = sum(sizes[:rank])
            shard = train[start : start + sizes[rank]]
            index = EmpiricalIndex(shard)
            held = [id(t) for _, t in index.keys.held] if index.keys else []
            prepared.update(keys=0, knn=0)
            for c, sig in enumerate(sigmas):
                d = distributed.empirical_denoiser(y, index, sig, group=group)
                results[f"{R}/{name}/{c}"] = d
            reheld = [id(t) for _, t in index.keys.held] if index.keys else []
            results[f"{R}/{name}/prepared-keys"] = torch.tensor(prepared["keys"])
            results[f"{R}/{name}/prepared-knn"] = torch.tensor(prepared["knn"])
            results[f"{R}/{name}/same-held"] = torch.tensor(int(held == reheld))
            results[f"{R}/{name}/tensor"] = distributed.empirical_denoiser(
                y, shard, sigmas[0], group=group)
            # every rank's counts, so the test sees each shard's (the largest here)
            for what in ("prepared-keys", "prepared-knn"):
                results[f"{R}/{name}/{what}"] = distributed._all_reduce(
                    results[f"{R}/{name}/{what}"].double(), torch.distributed.ReduceOp.MAX,
                    group)
            results[f"{R}/{name}/same-held"] = distributed._all_reduce(
                results[f"{R}/{name}/same-held"].double(), torch.distributed.ReduceOp.MIN,
                group)
    if rank == 0:
        torch.save(results, out)


WORKERS = {"sweep": sweep, "search": search, "train_ddp": train_ddp,
           "empirical_index": empirical_index}
