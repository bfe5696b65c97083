"""Beyond one machine: torch.distributed for training, sweeps and dataset-scale search.

Launch any pydiffgen program with ``torchrun --nproc_per_node=R ...``; ``init()`` reads
torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and joins
the default process group with NCCL on GPUs and gloo on CPUs. Without torchrun (or with
one process) every function here degrades to the single-process one.

Dataset-scale search shards the *training set* across ranks (rank r holds rows
``shard(N, r, R)``, global index = shard offset + local index) and replicates the queries:

- ``knn``: every rank finds the exact k nearest keys of its shard (``ops.knn``), recomputes
  their scores in float64, the [M, k] lists are all_gathered (16 bytes per query and
  neighbour per rank), and ``ops.topk_merge`` picks the best k, ties to the lower global
  index: the same neighbours, in the same order, as ``ops.knn`` over the whole set.
- ``empirical_denoiser``: the reduction of ``ops.empirical_denoiser`` (``ops.lse.denoise``)
  with the merges across ranks: each rank's exact float64 softmax over the candidates of
  its bf16 pass, as the online log-sum-exp state (m = max logit, s = Σ exp(l − m),
  a = Σ exp(l − m) x_i); an all_reduce MAX gives the global m*, and an all_reduce SUM of
  the states rescaled by exp(m − m*) gives Σ and Σ·D_M (8·(D + 1) bytes per row). Rows
  any rank leaves dense (σ comparable to the data's spread) or that the bound of
  ``ops.lse`` does not certify take every shard's float64 pass, merged the same way.
  A rank that passes ``ops.EmpiricalIndex(train_shard)`` prepares its shard once (the
  single-process index: bf16 keys and the kNN index of exact rows, ``ops.lse.Keys``) for
  every later call and σ.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable

import torch

from .errors import ConfigError, InputError, PydiffgenError

__all__ = [
    "barrier",
    "empirical_denoiser",
    "init",
    "is_initialized",
    "is_main",
    "knn",
    "launched",
    "rank",
    "run_on_main",
    "shard",
    "world_size",
]

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# ----------------------------------------------------------------------------------------
# process group
# ----------------------------------------------------------------------------------------


def launched() -> bool:
    """True when this process was started by torchrun (or another launcher setting its
    environment) as one of several ranks."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def is_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def init(backend: str | None = None, *, timeout_s: float = 1800.0) -> tuple[int, int]:
    """Join the default process group from torchrun's environment; returns (rank, world).

    backend: "nccl" or "gloo"; default NCCL when CUDA is available (each rank then uses
    ``cuda:LOCAL_RANK``), gloo otherwise. A no-op returning (0, 1) when the environment
    holds no launcher variables; idempotent once initialized.
    """
    if is_initialized():
        return rank(), world_size()
    if not any(v in os.environ for v in _TORCHRUN_VARS):
        return 0, 1
    missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise ConfigError(f"distributed.init needs the launcher variables {', '.join(missing)} "
                          "(set by torchrun); launch with `torchrun --nproc_per_node=R ...`")
    if not torch.distributed.is_available():
        raise ConfigError("this torch build has no torch.distributed")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and torch.distributed.is_nccl_available() \
            else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ConfigError(f"backend must be 'nccl' or 'gloo', got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(
        backend, init_method="env://", timeout=datetime.timedelta(seconds=timeout_s))
    return rank(), world_size()


def rank(group=None) -> int:
    return torch.distributed.get_rank(group) if is_initialized() else 0


def world_size(group=None) -> int:
    return torch.distributed.get_world_size(group) if is_initialized() else 1


def is_main(group=None) -> bool:
    """Rank 0 (or not distributed): the process that writes shared files and reports."""
    return rank(group) == 0


def barrier(group=None) -> None:
    if world_size(group) > 1:
        torch.distributed.barrier(group)


def shard(n: int, rank: int, world: int) -> range:
    """The rows of an n-row set that rank ``rank`` of ``world`` holds: contiguous, in rank
    order, sizes differing by at most one (the first n mod world ranks get one more)."""
    for name, v in (("n", n), ("rank", rank), ("world", world)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise InputError(f"shard: {name} must be an integer, got {v!r}")
    if n < 0 or world < 1 or not 0 <= rank < world:
        raise InputError(f"shard needs n >= 0, world >= 1 and 0 <= rank < world, got n={n}, "
                         f"rank={rank}, world={world}")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def run_on_main(fn: Callable, group=None):
    """Run ``fn()`` on rank 0 only and return its (picklable) result on every rank; an
    error it raises is raised on every rank (as a PydiffgenError with the same message),
    so no rank is left waiting in a collective."""
    if world_size(group) == 1:
        return fn()
    box = [None]
    if is_main(group):
        try:
            box[0] = ("ok", fn())
        except PydiffgenError as err:
            box[0] = ("error", type(err).__name__, str(err))
            torch.distributed.broadcast_object_list(box, src=_global_rank(0, group), group=group)
            raise
    torch.distributed.broadcast_object_list(box, src=_global_rank(0, group), group=group)
    if box[0][0] == "error":
        from . import errors

        raise getattr(errors, box[0][1], PydiffgenError)(box[0][2])
    return box[0][1]


def _global_rank(group_rank: int, group) -> int:
    if group is None:
        return group_rank
    return torch.distributed.get_global_rank(group, group_rank)


def _comm_device(group) -> torch.device:
    """Where collective tensors must live: the current CUDA device for NCCL, else CPU."""
    if torch.distributed.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather(t: torch.Tensor, group) -> list[torch.Tensor]:
    dev = _comm_device(group)
    tc = t.to(dev).contiguous()
    out = [torch.empty_like(tc) for _ in range(world_size(group))]
    torch.distributed.all_gather(out, tc, group=group)
    return [o.to(t.device) for o in out]


def _all_reduce(t: torch.Tensor, op, group) -> torch.Tensor:
    """all_reduce into a new tensor (``t`` itself is left as it was)."""
    tc = t.to(_comm_device(group), copy=True).contiguous()
    torch.distributed.all_reduce(tc, op=op, group=group)
    return tc.to(t.device)


def _agree(what: str, values: list, names: list[str], group, queries=None,
           error: str | None = None) -> torch.Tensor:
    """all_gather a few numbers per rank and check that ``names`` agree (else every rank
    raises InputError instead of hanging or merging garbage); returns [world, len] float64.
    With ``queries``, also their float64 sum and absolute sum, which must agree to 1e-9.
    ``error``: this rank's own validation failure (bad input on one rank only), raised on
    every rank with the rank named."""
    row = [float(error is not None)] + [float(v) for v in values]
    if queries is not None and error is None:
        qd = queries.detach().double()
        row += [float(qd.sum()), float(qd.abs().sum())]
    elif queries is not None:
        row += [0.0, 0.0]
    rows = torch.stack(_all_gather(torch.tensor(row, dtype=torch.float64), group))
    if bool(rows[:, 0].any()):
        errors = [None] * world_size(group)
        torch.distributed.all_gather_object(errors, error, group=group)
        bad = [r for r, e in enumerate(errors) if e is not None]
        raise InputError(f"distributed.{what} on rank {bad[0]}: {errors[bad[0]]}")
    rows = rows[:, 1:]
    for j, name in enumerate(names):
        if not bool((rows[:, j] == rows[0, j]).all()):
            raise InputError(f"distributed.{what}: {name} differs across ranks "
                             f"({rows[:, j].tolist()}); every rank must pass the same {name}")
    if queries is not None:
        fp = rows[:, -2:]
        if not bool(((fp - fp[0]).abs() <= 1e-9 * (fp[0].abs() + 1)).all()):
            raise InputError(f"distributed.{what}: the queries differ across ranks; every rank "
                             "must pass the same queries (only the training set is sharded)")
    return rows


# ----------------------------------------------------------------------------------------
# sharded exact k-nearest neighbours
# ----------------------------------------------------------------------------------------


def knn(queries, keys_shard, k: int, metric: str = "l2", *, offset: int | None = None,
        group=None, backend: str | None = None):
    """``ops.knn`` over a key set split across the ranks of ``group``.

    queries [M, *F] the same on every rank; keys_shard [N_r, *F] this rank's keys (may be
    empty); offset: the global index of keys_shard[0] (default: the shard sizes of the
    lower ranks, i.e. shards laid out in rank order). Returns, on every rank, (values
    float32 [M, k], global indices int64 [M, k]) equal to ``ops.knn`` over the
    concatenated keys: exact scores, ties to the lower global index.
    """
    from .ops.exact import score64
    from .ops.knn import METRICS, search
    from .ops.knn import knn as local_knn
    from .ops.topk import topk_merge

    if world_size(group) == 1:
        v, i = local_knn(queries, keys_shard, k, metric, backend)
        return v, i + (offset or 0)
    # check locally, then agree: an error on one rank is raised on every rank, no hang
    error, meta = None, [0, 0, 0, 0, 0]
    try:
        _check_knn_inputs(queries, keys_shard, k, metric, offset)
        meta = [queries.shape[0], queries.shape[1:].numel(), k, METRICS.index(metric),
                keys_shard.shape[0]]
    except InputError as err:
        error = str(err)
    rows = _agree("knn", meta, ["the number of queries", "the feature size", "k", "metric"],
                  group, queries, error)
    M, D, _, _, n_local = meta
    sizes = rows[:, 4].long().tolist()
    if k > sum(sizes):
        raise InputError(f"k={k} exceeds the number of keys N={sum(sizes)} over all ranks")
    if offset is None:
        offset = sum(sizes[: rank(group)])

    largest = metric != "l2"
    fill = float("-inf") if largest else float("inf")
    values = torch.full((M, k), fill, dtype=torch.float64, device=queries.device)
    indices = torch.full((M, k), -1, dtype=torch.int64, device=queries.device)
    kl = min(k, n_local)
    if kl and M:
        q, x = queries.reshape(M, D), keys_shard.reshape(n_local, D)
        _, li = search(q, x, kl, metric, backend)
        values[:, :kl] = score64(q, x, li, metric)  # float64, as ops.knn's re-rank
        indices[:, :kl] = li + offset
    # [M, R·k] candidates, in global-index order so that the merge's ties (the lower
    # position) go to the lower global index
    cand_v = torch.cat(_all_gather(values, group), dim=1)
    cand_i = torch.cat(_all_gather(indices, group), dim=1)
    order = torch.argsort(cand_i, dim=1, stable=True)
    cand_v, cand_i = cand_v.gather(1, order), cand_i.gather(1, order)
    v0 = torch.full((M, k), fill, dtype=torch.float64, device=queries.device)
    i0 = torch.full((M, k), -1, dtype=torch.int64, device=queries.device)
    best_v, pos = topk_merge(v0, i0, cand_v, 0, largest)
    return best_v.float(), cand_i.gather(1, pos)


def _check_knn_inputs(queries, keys_shard, k, metric, offset):
    from .ops.exact import check_finite
    from .ops.knn import METRICS

    if metric not in METRICS:
        raise InputError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    for name, t in (("queries", queries), ("keys_shard", keys_shard)):
        if not isinstance(t, torch.Tensor) or t.ndim < 2 or not t.is_floating_point():
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise InputError(f"{name} must be a floating-point tensor [rows, *F], got {got}")
    if queries.shape[1:] != keys_shard.shape[1:]:
        raise InputError(f"queries and keys_shard must share feature shape, got "
                         f"{tuple(queries.shape[1:])} and {tuple(keys_shard.shape[1:])}")
    if queries.shape[0] == 0:
        raise InputError("queries is empty; expected at least one query")
    if queries.device != keys_shard.device:
        raise InputError(f"queries and keys_shard must be on one device, got {queries.device} "
                         f"and {keys_shard.device}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be an integer >= 1, got {k!r}")
    if offset is not None and (isinstance(offset, bool) or not isinstance(offset, int)
                               or offset < 0):
        raise InputError(f"offset must be None or an integer >= 0, got {offset!r}")
    check_finite(queries, "queries")
    check_finite(keys_shard, "keys_shard")


# ----------------------------------------------------------------------------------------
# sharded empirical denoiser
# ----------------------------------------------------------------------------------------


@torch.no_grad()
def empirical_denoiser(y, train_shard, sigma, *, group=None):
    """``ops.empirical_denoiser`` over a training set split across the ranks of ``group``.

    y [M, *F] and sigma (a float or [M]) the same on every rank; train_shard [N_r, *F]
    this rank's training points (may be empty), or ``ops.EmpiricalIndex(train_shard)``:
    the shard prepared once (bf16 keys, the kNN index of exact rows) for every call and σ
    of a sweep or a sampler, as in one process. Returns D_M(y; σ) [M, *F] on every rank,
    equal to the single-process result (exact small-σ rows included). Not differentiable.
    """
    from .ops import empirical as E  # the module: ops.empirical_denoiser is the function

    index = train_shard if isinstance(train_shard, E.EmpiricalIndex) else None
    if world_size(group) == 1:
        if index is not None:
            return index(y, sigma)
        return E.empirical_denoiser(y, train_shard, sigma)
    # check locally, then agree: an error on one rank is raised on every rank, no hang
    error, meta = None, [0, 0, 0]
    try:
        if index is None:
            y, train_shard, sig = E.validate(y, train_shard, sigma, train_name="train_shard",
                                             empty_train=True)
        else:
            y, train_shard, sig = index.inputs(y, sigma)
        meta = [y.shape[0], y.shape[1:].numel(), train_shard.shape[0]]
    except InputError as err:
        error = str(err)
    rows = _agree("empirical_denoiser", meta, ["the number of rows y", "the feature size"],
                  group, y, error)
    M, D, n_local = meta
    shape = y.shape
    if int(rows[:, 2].sum()) == 0:
        raise InputError("distributed.empirical_denoiser: the training set is empty on every "
                         "rank")
    if M == 0:
        return y.clone()
    _agree("empirical_denoiser", [float(sig.sum()), float(sig.min())], ["sigma", "sigma"],
           group)
    keys = index.keys if index is not None else None
    out = _sharded_denoise(y.reshape(M, D), train_shard.reshape(n_local, D), sig, group, keys)
    return out.to(y.dtype).reshape(shape)


def _merge(m, s, a, group):
    """D_M [M, D] float64 from every rank's log-sum-exp state (m, s, a)."""
    MAX, SUM = torch.distributed.ReduceOp.MAX, torch.distributed.ReduceOp.SUM
    m_star = _all_reduce(m, MAX, group)
    scale = torch.exp(m - m_star)  # 0 where this shard holds nothing (m = −inf)
    merged = torch.cat([s[:, None] * scale[:, None], a * scale[:, None]], dim=1)  # [M, 1 + D]
    merged = _all_reduce(merged, SUM, group)
    return merged[:, 1:] / merged[:, :1]


def _sharded_denoise(y, x, sig, group, keys=None):
    """D_M [M, D] float64 for rows y [M, D] over every rank's shard x, by the reduction of
    ``ops.empirical_denoiser`` (``ops.lse.denoise``): each rank's exact softmax over its
    bf16 pass's candidates (every point a shard omits lies MARGIN + log N_r below its own
    largest kept logit, hence below the global one), merged; rows any rank leaves dense or
    uncertified by the float64 pass of every shard, merged. keys: x prepared
    (``ops.lse.Keys``, held by an ``ops.EmpiricalIndex``); default: prepared per call."""
    from .ops import lse

    def merge(m, s, a):
        return _merge(m, s, a, group)

    def agree(t):
        return _all_reduce(t, torch.distributed.ReduceOp.MAX, group)

    def dense(y, x, sig):
        return merge(*lse.partials(y, x, sig, torch.float64)[:3])

    return lse.denoise(y, x, sig, dense, merge, agree, parts=world_size(group), keys=keys)
