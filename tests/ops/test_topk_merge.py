"""topk_merge: reference on closed-form cases, every backend vs the reference (exact)."""

import dataclasses

import pytest
import torch

from pydiffgen import _native
from pydiffgen.errors import BackendError, InputError
from pydiffgen.ops import dispatch, reference, topk_merge

_OP = dispatch.op("topk_merge")
CPU_BACKENDS = [name for name, why in _OP.reasons("cpu").items() if not why.startswith("does not")]
native = pytest.mark.native
needs_c = pytest.mark.skipif(not _native.LOADED, reason=str(_native.WHY_NOT))


def _runnable(name, device="cpu"):
    why = _OP.reasons(device)[name]
    if why != "ok":
        pytest.skip(f"backend {name!r} cannot run on {device}: {why}")


def _empty(M, k, dtype, largest):
    fill = float("-inf") if largest else float("inf")
    return torch.full((M, k), fill, dtype=dtype), torch.full((M, k), -1, dtype=torch.int64)


def _running(M, k, dtype, largest, n_seen, ties=False):
    """A valid running top-k after seeing ``n_seen`` keys (empty slots when n_seen < k)."""
    v, i = _empty(M, k, dtype, largest)
    if n_seen:
        first = _scores(M, n_seen, dtype, ties)
        v, i = reference.topk_merge(v, i, first, 0, largest)
    return v, i


def _scores(M, T, dtype, ties=False):
    if ties:
        return torch.randint(0, 4, (M, T)).to(dtype)
    return torch.randn(M, T, dtype=dtype)


def _assert_same(got, want):
    assert got[0].dtype == want[0].dtype and got[1].dtype == torch.int64
    assert torch.equal(got[1], want[1]), (got[1], want[1])
    assert torch.equal(got[0], want[0])


# --- reference on closed-form answers -------------------------------------------------


def test_reference_closed_form():
    v = torch.tensor([[1.0, 3.0, float("inf")]])
    i = torch.tensor([[4, 2, -1]])
    tile = torch.tensor([[3.0, 0.5, 2.0, float("inf")]])
    out_v, out_i = reference.topk_merge(v, i, tile, 10, False)
    assert out_v.tolist() == [[0.5, 1.0, 2.0]]
    assert out_i.tolist() == [[11, 4, 12]]
    # largest: ties broken by the lower index, empty slot (-1) beats nothing real
    v, i = _empty(1, 3, torch.float64, True)
    out_v, out_i = reference.topk_merge(v, i, torch.tensor([[2.0, 7.0, 7.0]]).double(), 5, True)
    assert out_v.tolist() == [[7.0, 7.0, 2.0]] and out_i.tolist() == [[6, 7, 5]]


# --- every backend vs the reference ---------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("M", [1, 7, 127])
@pytest.mark.parametrize("k", [1, 5, 64])
@pytest.mark.parametrize("T", [1, 33, 1025])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("largest", [False, True])
def test_backend_matches_reference(backend, M, k, T, dtype, largest):
    _runnable(backend)
    n_seen = (3 * k) // 2 if (M + T) % 2 else k // 2  # full or partly empty running lists
    v, i = _running(M, k, dtype, largest, n_seen)
    tile = _scores(M, T, dtype)
    got = topk_merge(v, i, tile, n_seen, largest, backend=backend)
    _assert_same(got, reference.topk_merge(v, i, tile, n_seen, largest))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("largest", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ties_lower_index_wins(backend, largest, dtype):
    _runnable(backend)
    M, k, T = 33, 17, 200
    v, i = _running(M, k, dtype, largest, 40, ties=True)
    tile = _scores(M, T, dtype, ties=True)
    # tile keys both after (offset 40) and before (offset -300 .. ) the running keys
    for offset in (40, -300):
        got = topk_merge(v, i, tile, offset, largest, backend=backend)
        want = reference.topk_merge(v, i, tile, offset, largest)
        _assert_same(got, want)
    # all equal: the k lowest indices win, in index order
    flat = torch.zeros(2, 9, dtype=dtype)
    e_v, e_i = _running(2, 4, dtype, largest, 0)
    got = topk_merge(e_v, e_i, flat, 100, largest, backend=backend)
    assert got[1].tolist() == [[100, 101, 102, 103]] * 2


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("largest", [False, True])
def test_infinite_scores_and_empty_slots(backend, largest):
    _runnable(backend)
    inf = float("inf")
    v, i = _running(3, 6, torch.float32, largest, 2)
    tile = torch.tensor([[inf, -inf, 0.0, inf], [inf] * 4, [-inf] * 4])
    _assert_same(topk_merge(v, i, tile, 2, largest, backend=backend),
                 reference.topk_merge(v, i, tile, 2, largest))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_tile_and_empty_shapes(backend):
    _runnable(backend)
    v, i = _running(5, 4, torch.float32, False, 9)
    got = topk_merge(v, i, torch.empty(5, 0), 9, False, backend=backend)
    _assert_same(got, (v, i))
    # no rows, or k = 0
    got = topk_merge(*_empty(0, 4, torch.float32, False), torch.empty(0, 3), 0, backend=backend)
    assert got[0].shape == (0, 4) and got[1].shape == (0, 4)
    got = topk_merge(*_empty(3, 0, torch.float64, True), torch.randn(3, 5).double(), 0, True,
                     backend=backend)
    assert got[0].shape == (3, 0) and got[1].shape == (3, 0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("largest", [False, True])
def test_non_contiguous_inputs(backend, largest):
    _runnable(backend)
    M, k = 19, 8
    v, i = _running(M, k, torch.float64, largest, 30, ties=True)
    v_t, i_t = v.T.contiguous().T, i.T.contiguous().T  # column-major
    assert not v_t.is_contiguous() and not i_t.is_contiguous()
    tile = _scores(M, 2 * 101, torch.float64, ties=True)[:, ::2]
    assert not tile.is_contiguous()
    got = topk_merge(v_t, i_t, tile, 30, largest, backend=backend)
    _assert_same(got, reference.topk_merge(v, i, tile.contiguous(), 30, largest))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("largest", [False, True])
def test_repeated_merges_equal_one_topk(backend, largest):
    _runnable(backend)
    M, N, k = 13, 1000, 25
    scores = torch.randn(M, N, dtype=torch.float64)  # distinct values: no tie ambiguity
    v, i = _empty(M, k, torch.float64, largest)
    for n0 in range(0, N, 77):
        v, i = topk_merge(v, i, scores[:, n0 : n0 + 77], n0, largest, backend=backend)
    want = torch.topk(scores, k, dim=1, largest=largest, sorted=True)
    assert torch.equal(i, want.indices) and torch.equal(v, want.values)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_and_mixed_dtypes(backend, dtype):
    _runnable(backend)
    v, i = _running(9, 6, dtype, False, 10, ties=True)
    tile = torch.randn(9, 50)  # float32 tile into a low-precision running list
    _assert_same(topk_merge(v, i, tile, 10, False, backend=backend),
                 reference.topk_merge(v, i, tile, 10, False))
    v, i = _running(9, 6, torch.float64, True, 10)
    _assert_same(topk_merge(v, i, tile, 10, True, backend=backend),
                 reference.topk_merge(v, i, tile, 10, True))


# --- errors and backend choice --------------------------------------------------------


def test_input_errors():
    v, i = _empty(3, 4, torch.float32, False)
    with pytest.raises(InputError, match="rows"):
        topk_merge(v, i, torch.randn(2, 5), 0)
    with pytest.raises(InputError, match="indices"):
        topk_merge(v, i[:, :2], torch.randn(3, 5), 0)
    with pytest.raises(InputError, match="NaN"):
        topk_merge(v, i, torch.tensor([[0.0]] * 3).expand(3, 2).clone().fill_(float("nan")), 0)
    with pytest.raises(InputError, match="2 dimensions"):
        topk_merge(v, i, torch.randn(3), 0)


def test_forced_cpp_when_not_built_lists_backends(monkeypatch):
    monkeypatch.setattr(_native, "has_cpu_ops", lambda: False)
    monkeypatch.setattr(_native, "WHY_NOT", "pydiffgen._C is not built (test)")
    v, i = _empty(2, 3, torch.float32, False)
    with pytest.raises(BackendError, match=r"'cpp' cannot run on cpu.*cpp: pydiffgen._C is not "
                                           r"built \(test\).*reference: ok"):
        topk_merge(v, i, torch.randn(2, 4), 0, backend="cpp")
    with pytest.raises(BackendError, match="unknown backend 'nope'"):
        topk_merge(v, i, torch.randn(2, 4), 0, backend="nope")
    # unforced, the reference takes over
    assert _OP.select("cpu").name == "reference"


@pytest.mark.parametrize(
    "spec", ["reference", "topk_merge=reference", "knn=cpp,topk_merge=reference"]
)
def test_env_forces_reference(monkeypatch, spec):
    monkeypatch.setenv("PYDIFFGEN_BACKEND", spec)
    assert _OP.select("cpu").name == "reference"
    calls = []
    ref = _OP.backends[-1]
    assert ref.name == "reference"
    spy = dataclasses.replace(ref, fn=lambda *a: calls.append(1) or ref.fn(*a))
    monkeypatch.setattr(_OP, "backends", [*_OP.backends[:-1], spy])
    v, i = _empty(2, 3, torch.float32, False)
    topk_merge(v, i, torch.randn(2, 4), 0)
    assert calls == [1]


# --- the C++ op itself ----------------------------------------------------------------


@native
@needs_c
@pytest.mark.parametrize("largest", [False, True])
def test_opcheck_cpp(largest):
    v, i = _running(7, 5, torch.float32, largest, 9)
    tile = torch.randn(7, 33)
    torch.library.opcheck(torch.ops.pydiffgen.topk_merge.default, (v, i, tile, 9, largest))
    v, i = _running(4, 3, torch.float64, largest, 1)
    torch.library.opcheck(torch.ops.pydiffgen.topk_merge.default,
                          (v, i, torch.randn(4, 0).double(), 1, largest))


@native
@needs_c
def test_cpp_op_rejects_bad_inputs():
    v, i = _empty(2, 3, torch.float32, False)
    with pytest.raises(RuntimeError, match="int64"):
        torch.ops.pydiffgen.topk_merge(v, i.int(), torch.randn(2, 4), 0, False)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        torch.ops.pydiffgen.topk_merge(v.half(), i, torch.randn(2, 4), 0, False)


@pytest.mark.slow
@native
@needs_c
def test_torch_compile_smoke():
    def step(v, i, tile):
        return torch.ops.pydiffgen.topk_merge(v, i, tile, 4, False)

    v, i = _running(6, 4, torch.float32, False, 4)
    tile = torch.randn(6, 20)
    got = torch.compile(step, fullgraph=True)(v, i, tile)
    _assert_same(got, reference.topk_merge(v, i, tile, 4, False))
