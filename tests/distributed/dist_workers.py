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


WORKERS = {"sweep": sweep, "search": search, "train_ddp": train_ddp}
