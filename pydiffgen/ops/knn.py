"""Exact k-nearest-neighbour search, streamed over key tiles (never an M×N matrix).

Numerics (docs/design.md#numerics): keys' mean is subtracted before the ‖q‖²+‖x‖²−2⟨q,x⟩ expansion
(a float32 mean of a strided subset: the expansion is shift-invariant, only cancellation
matters), which only ranks candidates; the final k are recomputed directly as ‖q−x‖² in
float64, so near-duplicate keys (memorization) are ordered exactly.

The ``cpp`` backend is certified: a low-precision candidate pass (bfloat16 GEMM on CPUs
with AVX-512 BF16 / AMX, else float32; an exact int8 GEMM for uint8 data) keeps, per query,
every key whose score is within a rigorous error bound of the k-th best (the bound and why
it holds are at the top of csrc/cpu/knn.cpp), then re-ranks those in float64. A query whose
candidate set outgrows its budget is redone at the next precision (bf16 → fp32 → fp64), so
results equal the float64 brute force except for exact ties, for any data.
The ``triton`` backend runs the same certified algorithm with a Triton bf16 tile kernel,
and ``reference`` with torch matmuls (pydiffgen.ops.knn_certified).

Backends in priority order:
  CUDA: triton (bf16 bound tiles, int8 for uint8 data, by pydiffgen.kernels.knn_bound_tile,
        custom op ``pydiffgen::knn_bound_tile``; running sets by topk_merge's CUDA kernel)
        → reference;
  CPU:  cpp (pydiffgen._C: ``pydiffgen::knn_candidates`` does the whole tile loop, ATen GEMM
        + fused OpenMP certified selection; ``pydiffgen::knn_rerank`` the float64 re-rank)
        → reference (torch matmul tiles + topk_merge, the same certified algorithm).
``search`` is the search without argument checks, for callers whose inputs are checked
(``knn_stream``, ``distributed``, ``metrics``, the empirical denoiser's exact rows).

Extreme magnitudes (entries beyond 2^(57 − log2(D)/2), e.g. 4.5e15 for D = 1000, or all
below 2^-32): the fast passes' float32 sums of squares would overflow or underflow, so the
search runs on the data scaled by a power of two (exact) and scales l2 / ip values back;
the largest |entry| comes from the finiteness check's pass (``exact.check_finite``), so
in-range data pays nothing.
"""

from __future__ import annotations

import torch

from .. import _native
from .._checks import check_positive_int, check_tensor
from ..errors import InputError
from ..kernels import TRITON_WHY_NOT, cuda_why_not
from . import dispatch, knn_certified
from ._register import register
from .exact import centre, check_finite, ldexp, rescale_exponent, score64
from .topk import merge

METRICS = ("l2", "cosine", "ip")
PRECISIONS = ("auto", "bf16", "fp32", "fp64")
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8)


def knn(queries, keys, k: int, metric: str = "l2", backend: str | None = None,
        *, tile_elems: int = 1 << 24, precision: str = "auto", chunk_bytes: int = 1 << 28):
    """k nearest keys of each query.

    queries [M, *F], keys [N, *F] (flattened over F), floating point or uint8 (8-bit
    images: the cpp backend's exact int8 pass). keys may also be a numpy array / memmap
    or a path to a ``.npy`` file (larger than RAM / GPU memory): it is read in row chunks
    of at most ``chunk_bytes`` (see ``pydiffgen.ops.knn_stream``). metric ``l2``: squared
    Euclidean distances ascending; ``cosine``: cosine similarity descending; ``ip``: inner
    product descending. Returns (values float32 [M, k], indices int64 [M, k]).
    ``tile_elems`` bounds the scores held at once (M_chunk × N_tile). ``precision``: the
    cpp backend's first candidate pass (``auto``: bf16 where the CPU has native bf16
    dot products, else fp32); results are exact whatever it is. A value beyond float32
    (l2 / ip of entries near 1e19 and up) raises InputError rather than return inf.
    """
    if metric not in METRICS:
        raise InputError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    check_positive_int(tile_elems, "tile_elems")
    if not isinstance(keys, torch.Tensor):
        from . import knn_stream  # it builds on this module's search

        return knn_stream.knn(queries, keys, k, metric, backend, tile_elems=tile_elems,
                              precision=precision, chunk_bytes=chunk_bytes)
    check_tensor(queries, "queries", min_ndim=2, finite=False, floating=False)
    check_tensor(keys, "keys", min_ndim=2, finite=False, floating=False)
    for t, name in ((queries, "queries"), (keys, "keys")):
        if t.dtype not in DTYPES:
            raise InputError(
                f"{name} must be a floating-point or uint8 tensor, got dtype {t.dtype}"
            )
    if queries.device != keys.device:
        raise InputError(
            f"queries and keys must be on one device, got {queries.device} and {keys.device} "
            "(keys too large for the device can be passed as a numpy memmap or .npy path)"
        )
    amax = max(check_finite(queries, "queries"), check_finite(keys, "keys"))
    if queries.shape[1:] != keys.shape[1:]:
        raise InputError(
            f"queries and keys must share feature shape, got {tuple(queries.shape[1:])} "
            f"and {tuple(keys.shape[1:])}"
        )
    check_positive_int(k, "k")
    if k > keys.shape[0]:
        raise InputError(f"k={k} exceeds the number of keys N={keys.shape[0]}")
    q, x = queries.reshape(len(queries), -1), keys.reshape(len(keys), -1)
    values, indices = search(q, x, k, metric, backend, tile_elems=tile_elems,
                             precision=precision, amax=amax)
    check_representable(values, metric)
    return values, indices


def search(q, x, k: int, metric: str = "l2", backend: str | None = None, *,
           tile_elems: int = 1 << 24, precision: str = "auto", amax: float | None = None):
    """``knn`` without argument checks: q [M, D] and x [N, D] on one device, finite,
    floating point or uint8, 1 ≤ k ≤ N. amax: the largest |entry| of q and x (data outside
    the fast passes' range is rescaled, see ``rescaled``); None: the caller knows its data
    is in range. Returns (values float32 [M, k], indices [M, k])."""
    impl = dispatch.op("knn").select(q.device.type, backend)
    values, indices = rescaled(
        lambda qs, xs: impl.fn(qs, xs, k, metric, tile_elems, precision), q, x, metric, amax)
    return zero_queries(q, values, indices, metric)


def rescaled(fn, q, x, metric: str, amax: float | None):
    """fn(q, x) -> (values float32 [M, k], indices into x [M, k]) on q [M, D] and x [N, D]
    scaled by 2^e (``exact.rescale_exponent``: e = 0, no copy, when amax is in range or
    None). The orderings are scale-invariant, so the indices are exact; l2 and ip values
    are recomputed in float64 (fn's float32 ones may be subnormal at this scale) and scaled
    back by 2^-2e, ±inf where beyond float32 (``check_representable``)."""
    e = 0 if amax is None else rescale_exponent(amax, q.shape[1])
    if e == 0:
        return fn(q, x)
    qs, xs = ldexp(q, e), ldexp(x, e)
    values, indices = fn(qs, xs)
    if metric == "cosine":
        return values, indices
    return ldexp(score64(qs, xs, indices, metric), -2 * e).float(), indices


def check_representable(values, metric: str) -> None:
    """InputError when a returned value values [M, k] overflowed float32 (only rescaled
    data, ``rescaled``, can reach it)."""
    if bool(torch.isinf(values).any()):
        what = "squared distances" if metric == "l2" else "inner products"
        raise InputError(
            f"queries and keys are too large: some {what} exceed float32 (max "
            f"{torch.finfo(torch.float32).max:.3g}), the dtype of the returned values; "
            "scale queries and keys down"
        )


def zero_queries(q, values, indices, metric):
    """cos(0, x) := 0 for every key (as cos(q, 0) := 0): a zero query q [M, D] ties with
    all N keys, so by the tie rule its neighbours are the k lowest indices."""
    if metric == "cosine":
        zero = ~q.ne(0).any(dim=1)  # [M]
        if bool(zero.any()):
            values[zero] = 0.0
            indices[zero] = torch.arange(indices.shape[1], device=indices.device)
    return values, indices


def as_float(t):
    """uint8 rows as float32 (other dtypes unchanged): what the torch paths compute on."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def rerank(q, x, cand_i, k: int, metric: str):
    """Exact float64 scores of the candidates cand_i [M, kc] (−1: no candidate); the best
    k, ties to the lower index (as the reference). Returns (values float32 [M, k],
    indices int64 [M, k])."""
    largest = metric != "l2"
    N = x.shape[0]
    if len(q) == 0:
        return (q.new_empty(0, k, dtype=torch.float32),
                cand_i.new_empty(0, k, dtype=torch.int64))
    # index order first (empty slots last): the stable sort keeps it on ties
    cand_i = torch.where(cand_i >= 0, cand_i, N).sort(dim=1).values
    valid = cand_i < N
    cand_i = cand_i.clamp(max=N - 1)
    fill = float("-inf") if largest else float("inf")
    exact = torch.where(valid, score64(q, x, cand_i, metric), fill)  # [M, kc]
    order = torch.sort(exact, dim=1, descending=largest, stable=True).indices[:, :k]
    return exact.gather(1, order).float(), cand_i.gather(1, order)


def _bruteforce_rows(q, x, k, metric, tile_elems):
    """float64 brute force over key chunks (the last resort for rows with thousands of
    exact ties): direct ‖q − x‖², never the expansion."""
    largest = metric != "l2"
    M = q.shape[0]
    fill = float("-inf") if largest else float("inf")
    v = torch.full((M, k), fill, dtype=torch.float64, device=q.device)
    i = torch.full((M, k), -1, dtype=torch.int64, device=q.device)
    step = max(1, tile_elems // max(1, M * q.shape[1]))
    for n0 in range(0, x.shape[0], step):
        idx = torch.arange(n0, min(n0 + step, x.shape[0]), device=q.device).expand(M, -1)
        v, i = merge(v, i, score64(q, x, idx, metric), n0, largest)
    return v.float(), i


def _knn_certified(q, x, k, metric, tile_elems, precision="auto", score_fn=None):
    """Certified candidates (bf16 tiles by score_fn; overflowing rows in float64, then by
    brute force) + float64 re-rank. Any device; the triton backend's path on CUDA."""
    score_fn = score_fn or knn_certified.torch_bound_tile
    M = q.shape[0]
    u8 = q.dtype == torch.uint8 and x.dtype == torch.uint8
    if u8:
        # 8-bit levels are exact in bfloat16, and so are x − 128: an exact shift as centre
        mu = torch.full((x.shape[1],), 128.0, device=x.device)
    else:
        mu = centre(x) if metric == "l2" else x.new_zeros(0, dtype=torch.float32)
    # no converted copy of the keys: prepare() widens each tile, the re-rank each gather
    passes = [(torch.bfloat16, score_fn), (torch.float64, knn_certified.torch_bound_tile)]
    if precision in ("fp32", "fp64"):
        passes = passes[1:]
    elif u8 and metric != "cosine" and x.shape[1] < 1 << 17:
        passes[0] = (torch.int8, score_fn)  # exact int32 dot of x − 128
    values = torch.empty(M, k, dtype=torch.float32, device=q.device)
    indices = torch.empty(M, k, dtype=torch.int64, device=q.device)
    rows = torch.arange(M, device=q.device)
    for gemm_dtype, fn in passes:
        qr = q[rows]
        cand, over = knn_certified.candidates(qr, x, k, metric, tile_elems, 4 * k + 256,
                                              gemm_dtype, fn, mu)
        done = ~over
        v, i = rerank(qr[done], x, cand[done], k, metric)
        values[rows[done]], indices[rows[done]] = v, i
        rows = rows[over]
        if len(rows) == 0:
            return values, indices
    values[rows], indices[rows] = _bruteforce_rows(q[rows], x, k, metric, tile_elems)
    return values, indices


def _triton_bound_tile(qg, xg, a, p, dx, A, B, w, cg, ca, eta, safety):
    return torch.ops.pydiffgen.knn_bound_tile(qg, xg, a, p, dx, A, B, w, cg, ca, eta, safety)


def _knn_triton(q, x, k, metric, tile_elems, precision="auto"):
    return _knn_certified(q, x, k, metric, tile_elems, precision, score_fn=_triton_bound_tile)


if TRITON_WHY_NOT is None:
    # The Triton launcher is the op's kernel for every device (on the CPU it runs only under
    # TRITON_INTERPRET=1, which the tests use); torch.library.triton_op would fail to
    # register on machines without a GPU.
    @torch.library.custom_op("pydiffgen::knn_bound_tile", mutates_args=())
    def _knn_bound_tile(
        qg: torch.Tensor, xg: torch.Tensor, a: torch.Tensor, p: torch.Tensor, dx: torch.Tensor,
        A: torch.Tensor, B: torch.Tensor, w: float, cg: float, ca: float, eta: float,
        safety: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from ..kernels.knn_bound_tile import bound_tile

        return bound_tile(qg, xg, a, p, dx, A, B, w=w, cg=cg, ca=ca, eta=eta, safety=safety)

    def _bound_tile_fake(qg, xg, a, p, dx, A, B, w, cg, ca, eta, safety):
        lo = qg.new_empty(qg.shape[0], xg.shape[0], dtype=torch.float32)
        return lo, torch.empty_like(lo)

    register("knn_bound_tile", fake=_bound_tile_fake)


METRIC_CODE = {"l2": 0, "ip": 1, "cosine": 2}
_PRECISION_CODE = {"int8": 0, "bf16": 1, "fp32": 2, "fp64": 3}


def native_bf16() -> bool:
    """Whether this CPU has native bfloat16 dot products (AVX-512 BF16 or AMX): only then is
    a bf16 GEMM faster than float32."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split()
                    return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        pass
    return False


def _capacity(k: int, n: int, precision: str) -> int:
    """Candidate budget per query; past it the row is redone at the next precision. The
    float64 re-rank costs D flops per candidate, the GEMM N·D per query: a few k suffice."""
    if precision in ("int8", "fp64"):
        return max(k, n)  # exact / last pass: never overflows
    return min(max(k, n), 4 * k + (256 if precision == "bf16" else 1024))


def _passes(q, x, metric, precision):
    if q.dtype == torch.uint8 and x.dtype == torch.uint8 and metric != "cosine":
        return ["int8"]
    first = ("bf16" if native_bf16() else "fp32") if precision == "auto" else precision
    order = ["bf16", "fp32", "fp64"]
    return order[order.index(first):]


def _knn_cpp(q, x, k, metric, tile_elems, precision="auto"):
    """Certified candidate passes (C++ tile loop) + float64 re-rank, with the overflowing
    queries of a pass redone at the next precision."""
    passes = _passes(q, x, metric, precision)
    if passes[0] != "int8":
        q, x = as_float(q), as_float(x)
    M, N = q.shape[0], x.shape[0]
    mu = centre(x) if metric == "l2" and passes[0] != "int8" else x.new_empty(0, dtype=torch.float)
    values = torch.empty(M, k, dtype=torch.float32)
    indices = torch.empty(M, k, dtype=torch.int64)
    rows = torch.arange(M)
    for p in passes:
        qr = q[rows]
        cand, _, _, over = torch.ops.pydiffgen.knn_candidates(
            qr, x, mu, k, METRIC_CODE[metric], _PRECISION_CODE[p], tile_elems,
            _capacity(k, N, p), 0)
        done = ~over
        v, i = torch.ops.pydiffgen.knn_rerank(qr[done], x, cand[done], k, METRIC_CODE[metric])
        values[rows[done]] = v.float()
        indices[rows[done]] = i
        rows = rows[over]
        if len(rows) == 0:
            break
    return values, indices


def _candidates_fake(queries, keys, centre, k, metric, precision, tile_elems, capacity, offset):
    M = queries.shape[0]
    C = torch.library.get_ctx().new_dynamic_size()
    return (queries.new_empty(M, C, dtype=torch.int64),
            queries.new_empty(M, C, dtype=torch.float64),
            queries.new_empty(M, dtype=torch.float64),
            queries.new_empty(M, dtype=torch.bool))


def _rerank_fake(queries, keys, cand, k, metric):
    torch._check(cand.shape[0] == queries.shape[0])
    M = queries.shape[0]
    return (queries.new_empty(M, k, dtype=torch.float64),
            queries.new_empty(M, k, dtype=torch.int64))


if _native.LOADED:
    register("knn_candidates", fake=_candidates_fake)
    register("knn_rerank", fake=_rerank_fake)


dispatch.op("knn").register("triton", ("cuda",), _knn_triton, cuda_why_not)
dispatch.op("knn").register("cpp", ("cpu",), _knn_cpp, _native.cpu_why_not)
dispatch.op("knn").register("reference", ("cpu", "cuda"), _knn_certified)
