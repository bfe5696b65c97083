"""Exact k-nearest-neighbour search, streamed over key tiles (never an M×N matrix).

Numerics (docs/design.md#numerics): keys' mean is subtracted before the ‖q‖²+‖x‖²−2⟨q,x⟩ expansion
(a float32 mean of a strided subset: the expansion is shift-invariant, only cancellation
matters), which only ranks candidates; the final k are recomputed directly as ‖q−x‖² in
float64, so near-duplicate keys (memorization) are ordered exactly.

The ``cpp`` backend is certified: a low-precision candidate pass keeps, per query, every
key whose score is within a rigorous error bound of the k-th best (the bound and why it
holds are at the top of csrc/cpu/knn.cpp), then re-ranks those in float64 (in order of
their lower bounds, stopping past the k-th exact score). Each row's mean level is scored
in float32 and only the rest is rounded, so on image rows (a large shared brightness
level) the bound, and the candidates it keeps, shrink about tenfold. The first pass: q8 (keys and
queries quantized to int8 with one scale per row, an exact int32 GEMM) on CPUs with int8
dot products (VNNI / AMX), else bfloat16 on CPUs with AVX-512 BF16 / AMX, else float32;
an exact int8 GEMM for uint8 data. A query whose candidate set outgrows its budget is
redone at the next precision (q8 → bf16 → fp32 → fp64), so results equal the float64
brute force except for exact ties, for any data.
The ``triton`` backend runs the same certified algorithm with a Triton bf16 tile kernel,
and ``reference`` with torch matmuls (pydiffgen.ops.knn_certified).

Keys are prepared (centred, rounded, their bound terms computed) once per key set by
``KnnIndex``, which each backend fills on first use (``CppKeys``, ``CertifiedKeys``);
``knn`` is ``KnnIndex(keys).search(queries)``, so there is one search path.

Backends in priority order:
  CUDA: triton (bf16 bound tiles, int8 for uint8 data, by pydiffgen.kernels.knn_bound_tile,
        custom op ``pydiffgen::knn_bound_tile``; running sets by topk_merge's CUDA kernel)
        → reference;
  CPU:  cpp (pydiffgen._C: ``pydiffgen::knn_prepare`` the keys, ``pydiffgen::knn_candidates``
        the whole tile loop, ATen GEMM + fused OpenMP certified selection;
        ``pydiffgen::knn_rerank`` the float64 re-rank)
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

import functools

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
PRECISIONS = ("auto", "int8", "bf16", "fp32", "fp64")
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
    cpp backend's first candidate pass (``auto``: int8 where the CPU has int8 dot products
    (VNNI / AMX), else bf16 where it has native bf16 ones, else fp32); results are exact
    whatever it is. A value beyond float32 (l2 / ip of entries near 1e19 and up) raises
    InputError rather than return inf. Searching one key set many times: ``KnnIndex``
    (this function is ``KnnIndex(keys, ...).search(queries, k)``).
    """
    check_options(metric, precision)
    check_positive_int(tile_elems, "tile_elems")
    if not isinstance(keys, torch.Tensor):
        from . import knn_stream  # it builds on this module's search

        return knn_stream.knn(queries, keys, k, metric, backend, tile_elems=tile_elems,
                              precision=precision, chunk_bytes=chunk_bytes)
    check_rows(queries, "queries")
    check_rows(keys, "keys")
    check_same_device(queries, keys)
    index = KnnIndex(keys, metric, backend, precision=precision)
    return index.search(queries, k, tile_elems=tile_elems)


class KnnIndex:
    """A key set prepared once for exact k-nearest-neighbour searches.

    The fast candidate pass needs every key centred, rounded (int8 / bf16) and its
    error-bound terms (``pydiffgen::knn_prepare``); ``knn`` does that on each call, the
    index once: audits, metrics and sweeps that query one training set many times hold
    an index and call ``search``. Results are those of ``knn`` (exactly the float64
    neighbours, ties to the lower index).

    keys [N, *F], floating point or uint8 (a tensor; keys on disk: ``knn``). metric,
    backend, precision: as in ``knn``. Memory beside the keys (kept by reference: do not
    modify them in place while the index is in use): the prepared first pass (int8 N·D
    bytes, bf16 2·N·D); a later pass is prepared, and kept, only when some query needs it.
    """

    def __init__(self, keys, metric: str = "l2", backend: str | None = None, *,
                 precision: str = "auto"):
        check_options(metric, precision)
        check_rows(keys, "keys")
        amax = check_finite(keys, "keys")
        self._setup(keys.reshape(len(keys), -1), tuple(keys.shape[1:]), metric, backend,
                   precision, amax)

    @classmethod
    def of_rows(cls, x, metric: str = "l2", backend: str | None = None, *,
                precision: str = "auto", amax: float | None = None) -> KnnIndex:
        """The index of rows x [N, D] without argument checks (finite, floating point or
        uint8, N ≥ 1). amax: the largest |entry| of x (data beyond the fast passes' range
        is rescaled, see ``rescaled``); None: the caller knows it is in range."""
        index = cls.__new__(cls)
        index._setup(x, tuple(x.shape[1:]), metric, backend, precision, amax)
        return index

    def _setup(self, x, feature_shape, metric, backend, precision, amax) -> None:
        self.rows, self.feature_shape, self.metric = x, feature_shape, metric
        self.precision, self.amax = precision, amax
        self.backend = dispatch.op("knn").select(x.device.type, backend).name
        self.prepared = {}  # rescaling exponent -> the backend's prepared keys

    def __len__(self) -> int:
        return self.rows.shape[0]

    def search(self, queries, k: int, *, tile_elems: int = 1 << 24):
        """k nearest keys of each query: queries [M, *F] on the keys' device. Returns
        (values float32 [M, k], indices int64 [M, k]) as ``knn``."""
        check_rows(queries, "queries")
        check_same_device(queries, self.rows)
        amax = check_finite(queries, "queries")
        if tuple(queries.shape[1:]) != self.feature_shape:
            raise InputError(
                f"queries and keys must share feature shape, got {tuple(queries.shape[1:])} "
                f"and {self.feature_shape}"
            )
        check_positive_int(k, "k")
        if k > len(self):
            raise InputError(f"k={k} exceeds the number of keys N={len(self)}")
        check_positive_int(tile_elems, "tile_elems")
        values, indices = self.search_rows(queries.reshape(len(queries), -1), k,
                                           tile_elems=tile_elems, amax=amax)
        check_representable(values, self.metric)
        return values, indices

    def search_rows(self, q, k: int, *, tile_elems: int = 1 << 24, amax: float | None = None):
        """``search`` without argument checks: q [M, D] finite, 1 ≤ k ≤ N; amax the largest
        |entry| of q (None: in range). Returns (values float32 [M, k], indices [M, k])."""
        known = [a for a in (amax, self.amax) if a is not None]
        bound = max(known) if known else None
        e = 0 if bound is None else rescale_exponent(bound, q.shape[1])
        values, indices = rescaled(
            lambda qs, xs: self.keys_at(e, xs).search(qs, k, tile_elems), q, self.rows,
            self.metric, bound)
        return zero_queries(q, values, indices, self.metric)

    def keys_at(self, e: int, xs):
        """The backend's prepared keys of xs = rows·2^e (``rescaled``), made once per e."""
        if e not in self.prepared:
            fn = dispatch.op("knn").select(xs.device.type, self.backend).fn
            self.prepared[e] = fn(xs, self.metric, self.precision)
        return self.prepared[e]


def search(q, x, k: int, metric: str = "l2", backend: str | None = None, *,
           tile_elems: int = 1 << 24, precision: str = "auto", amax: float | None = None):
    """``knn`` without argument checks: q [M, D] and x [N, D] on one device, finite,
    floating point or uint8, 1 ≤ k ≤ N. amax: the largest |entry| of q and x (data outside
    the fast passes' range is rescaled, see ``rescaled``); None: the caller knows its data
    is in range. Returns (values float32 [M, k], indices [M, k])."""
    index = KnnIndex.of_rows(x, metric, backend, precision=precision, amax=amax)
    return index.search_rows(q, k, tile_elems=tile_elems, amax=amax)


def check_options(metric: str, precision: str) -> None:
    if metric not in METRICS:
        raise InputError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def check_rows(t, name: str) -> None:
    """InputError unless t is a tensor of ≥ 2 dimensions of a dtype knn searches."""
    check_tensor(t, name, min_ndim=2, finite=False, floating=False)
    if t.dtype not in DTYPES:
        raise InputError(f"{name} must be a floating-point or uint8 tensor, got dtype {t.dtype}")


def check_same_device(queries, keys) -> None:
    if queries.device != keys.device:
        raise InputError(
            f"queries and keys must be on one device, got {queries.device} and {keys.device} "
            "(keys too large for the device can be passed as a numpy memmap or .npy path)"
        )


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


class CertifiedKeys:
    """Keys of the reference and triton backends (``pydiffgen.ops.knn_certified``): the
    certified candidates of each pass (bf16 tiles scored by score_fn, or int8 for uint8
    data; overflowing rows in float64, then by brute force) + the float64 re-rank. Each
    pass's keys are prepared on first use and kept. Any device."""

    def __init__(self, x, metric: str, precision: str = "auto", score_fn=None):
        self.x, self.metric, self.precision = x, metric, precision
        self.score_fn = score_fn or knn_certified.torch_bound_tile
        self.mu = centre(x) if metric == "l2" else x.new_zeros(0, dtype=torch.float32)
        self.prepared = {}  # GEMM dtype -> knn_certified.prepare_keys of x

    def centre_for(self, gemm_dtype):
        # 8-bit levels are exact in bfloat16, and so are x − 128: an exact shift as centre
        if gemm_dtype == torch.int8:
            return torch.full((self.x.shape[1],), 128.0, device=self.x.device)
        return self.mu

    def pass_keys(self, gemm_dtype):
        if gemm_dtype not in self.prepared:
            self.prepared[gemm_dtype] = knn_certified.prepare_keys(
                self.x, self.centre_for(gemm_dtype), self.metric, gemm_dtype)
        return self.prepared[gemm_dtype]

    def passes(self, q):
        passes = [(torch.bfloat16, self.score_fn), (torch.float64, knn_certified.torch_bound_tile)]
        u8 = q.dtype == torch.uint8 and self.x.dtype == torch.uint8
        if self.precision in ("fp32", "fp64"):
            return passes[1:]
        if u8 and self.metric != "cosine" and self.x.shape[1] < 1 << 17:
            passes[0] = (torch.int8, self.score_fn)  # exact int32 dot of x − 128
        return passes

    def search(self, q, k: int, tile_elems: int):
        """(values float32 [M, k], indices int64 [M, k]) of the queries q [M, D]."""
        M, x, metric = q.shape[0], self.x, self.metric
        values = torch.empty(M, k, dtype=torch.float32, device=q.device)
        indices = torch.empty(M, k, dtype=torch.int64, device=q.device)
        rows = torch.arange(M, device=q.device)
        for gemm_dtype, fn in self.passes(q):
            qr = q[rows]
            cand, over = knn_certified.candidates(
                qr, self.pass_keys(gemm_dtype), k, metric, tile_elems, 4 * k + 256, gemm_dtype,
                fn, self.centre_for(gemm_dtype))
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


def _triton_keys(x, metric, precision="auto"):
    return CertifiedKeys(x, metric, precision, score_fn=_triton_bound_tile)


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
_PRECISION_CODE = {"int8": 0, "bf16": 1, "fp32": 2, "fp64": 3, "q8": 4}


@functools.cache
def cpu_flags() -> frozenset:
    """This CPU's feature flags (/proc/cpuinfo; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16() -> bool:
    """Whether this CPU has native bfloat16 dot products (AVX-512 BF16 or AMX): only then is
    a bf16 GEMM faster than float32."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def native_int8() -> bool:
    """Whether this CPU has int8 dot products (VNNI or AMX): there an int8 GEMM runs at
    about twice the bf16 rate (4× float32)."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def _capacity(k: int, n: int, precision: str) -> int:
    """Candidate budget per query; past it the row is redone at the next precision. The
    float64 re-rank costs D flops per candidate, redoing the row N·D at the next precision
    (and a preparation of the keys for it): image data, where many keys lie near the k-th
    distance, keeps hundreds."""
    if precision in ("int8", "fp64"):
        return max(k, n)  # exact / last pass: never overflows
    return min(max(k, n), 4 * k + 2048)


def _passes(q, x, metric, precision):
    """The cpp backend's candidate passes, in order: int8 (exact, 8-bit data), or q8 (float
    data quantized to int8 per row) / bf16 / fp32, then the next precisions."""
    small = x.shape[1] < 1 << 17  # the int32 dots of the int8 passes are exact below it
    if q.dtype == torch.uint8 and x.dtype == torch.uint8 and metric != "cosine" and small:
        return ["int8"]
    if precision == "auto":
        first = "q8" if native_int8() else "bf16" if native_bf16() else "fp32"
    else:
        first = "q8" if precision == "int8" else precision
    order = ["q8", "bf16", "fp32", "fp64"] if small else ["bf16", "fp32", "fp64"]
    return order[order.index(first):] if first in order else order


class CppKeys:
    """Keys of the cpp backend: each candidate pass's keys prepared by
    ``pydiffgen::knn_prepare`` on first use and kept; a search runs the certified passes
    (C++ tile loop, ``pydiffgen::knn_candidates``) + the float64 re-rank
    (``pydiffgen::knn_rerank``), redoing a pass's overflowing queries at the next one."""

    def __init__(self, x, metric: str, precision: str = "auto"):
        # the re-rank reads float32 / float64 / uint8 rows; half and bfloat16 widen exactly
        self.x = x if x.dtype in (torch.float32, torch.float64, torch.uint8) else x.float()
        self.metric, self.precision = metric, precision
        self.mu = centre(self.x) if metric == "l2" else x.new_empty(0, dtype=torch.float)
        self.prepared = {}  # pass -> (x̃, ‖r̃‖, dx, a, s, level)

    def pass_keys(self, p: str):
        if p not in self.prepared:
            self.prepared[p] = torch.ops.pydiffgen.knn_prepare(
                self.x, self.mu, METRIC_CODE[self.metric], _PRECISION_CODE[p])
        return self.prepared[p]

    def search(self, q, k: int, tile_elems: int):
        """(values float32 [M, k], indices int64 [M, k]) of the queries q [M, D]."""
        M, N, code = q.shape[0], self.x.shape[0], METRIC_CODE[self.metric]
        values = torch.empty(M, k, dtype=torch.float32)
        indices = torch.empty(M, k, dtype=torch.int64)
        rows = torch.arange(M)
        for p in _passes(q, self.x, self.metric, self.precision):
            qr = q[rows]
            cand, lower, _, over = torch.ops.pydiffgen.knn_candidates(
                qr, *self.pass_keys(p), self.mu, k, code, _PRECISION_CODE[p], tile_elems,
                _capacity(k, N, p), 0)
            done = ~over
            # the bounds let the re-rank stop early; they are relative to the pass's centre
            mu = torch.full_like(self.mu, 128.0) if p == "int8" else self.mu
            v, i = torch.ops.pydiffgen.knn_rerank(qr[done], self.x, cand[done], k, code,
                                                  lower[done], mu)
            values[rows[done]] = v.float()
            indices[rows[done]] = i
            rows = rows[over]
            if len(rows) == 0:
                break
        return values, indices


def _prepare_fake(keys, centre, metric, precision):
    N, D = keys.shape
    dtype = {0: torch.int8, 1: torch.bfloat16, 2: torch.float32, 3: torch.float64,
             4: torch.int8}[precision]
    f64 = dict(dtype=torch.float64)
    return (keys.new_empty(N, D, dtype=dtype), keys.new_empty(N, **f64),
            keys.new_empty(N, **f64), keys.new_empty(N, **f64),
            keys.new_empty(N if precision == 4 else 0, dtype=torch.float32),
            keys.new_empty(N, 3, **f64))


def _candidates_fake(queries, key_gemm, key_norm, key_delta, key_add, key_scale, key_level,
                     centre, k, metric, precision, tile_elems, capacity, offset):
    M = queries.shape[0]
    C = torch.library.get_ctx().new_dynamic_size()
    return (queries.new_empty(M, C, dtype=torch.int64),
            queries.new_empty(M, C, dtype=torch.float64),
            queries.new_empty(M, dtype=torch.float64),
            queries.new_empty(M, dtype=torch.bool))


def _rerank_fake(queries, keys, cand, k, metric, lower=None, centre=None):
    torch._check(cand.shape[0] == queries.shape[0])
    M = queries.shape[0]
    return (queries.new_empty(M, k, dtype=torch.float64),
            queries.new_empty(M, k, dtype=torch.int64))


if _native.LOADED:
    register("knn_prepare", fake=_prepare_fake)
    register("knn_candidates", fake=_candidates_fake)
    register("knn_rerank", fake=_rerank_fake)


# each backend's fn(x [N, D], metric, precision) prepares keys with .search(q, k, tile_elems)
dispatch.op("knn").register("triton", ("cuda",), _triton_keys, cuda_why_not)
dispatch.op("knn").register("cpp", ("cpu",), CppKeys, _native.cpu_why_not)
dispatch.op("knn").register("reference", ("cpu", "cuda"), CertifiedKeys)
