"""knn at extreme magnitudes (issue 19): exact indices and values for every metric and
backend, in memory and streamed from disk, at 1e18 … float32 max/4 and at 1e-30; a
one-line InputError where a returned value cannot be a float32; never a silent −1 / NaN.
The oracle is the float64 brute force on the data scaled by a power of two."""

import importlib
import math

import numpy as np
import pytest
import torch

from pydiffgen.errors import InputError
from pydiffgen.kernels import TRITON_WHY_NOT, interpreted
from pydiffgen.ops import dispatch, knn, reference

knn_mod = importlib.import_module("pydiffgen.ops.knn")
CPU_BACKENDS = [name for name, why in dispatch.op("knn").reasons("cpu").items() if why == "ok"]
TRITON_ON_CPU = TRITON_WHY_NOT is None and interpreted()
F32_MAX = torch.finfo(torch.float32).max
CASES = [(1e18, torch.float32), (1e19, torch.float32), (1e30, torch.float32),
         (F32_MAX / 4, torch.float32), (1e-30, torch.float32),
         (1e200, torch.float64), (1e-200, torch.float64)]
METRICS = ["l2", "ip", "cosine"]


def _data(scale, dtype, metric, seed=0):
    """q [5, 8], x [40, 8] of largest magnitude `scale` whose k nearest values fit float32:
    l2: one coordinate ±scale shared by query and key signs, the rest small; ip: small
    queries against large keys; cosine: any."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 8, generator=g, dtype=torch.float64)
    q = torch.randn(5, 8, generator=g, dtype=torch.float64)
    if metric == "l2":
        small = min(scale, 1e15)
        x, q = x * small, q * small
        x[:, 0] = scale * (1 - 2 * (torch.arange(40, dtype=torch.float64) % 2))  # ±scale
        q[:, 0] = scale * (1 - 2 * (torch.arange(5, dtype=torch.float64) % 2))
        x[3] = q[0]  # an exact duplicate
        x[4, 1:] = q[0, 1:] * (1 + 2**-20)  # and a near one
    elif metric == "ip":
        x = x * (scale / 4)
        q = q * (min(1.0, 1e36 / scale) if scale > 1 else scale)
    else:
        x, q = x * (scale / 4), q * (scale / 4)
    return q.to(dtype), x.to(dtype)


def _ldexp(t, e):
    return t * 2.0 ** (e // 2) * 2.0 ** (e - e // 2)


def _want(q, x, k, metric):
    """float64 brute force on the data scaled into [1/2, 1), values scaled back."""
    e = -math.frexp(max(float(q.abs().max()), float(x.abs().max())))[1]
    v, i = reference.knn_bruteforce(_ldexp(q.double(), e), _ldexp(x.double(), e), k, metric)
    return (v if metric == "cosine" else _ldexp(v, -2 * e)).float(), i


def _check(got, want):
    v, i = got
    assert v.dtype == torch.float32 and i.dtype == torch.int64
    assert bool((i >= 0).all()) and bool(torch.isfinite(v).all())
    assert torch.equal(i, want[1]), (i, want[1])
    torch.testing.assert_close(v, want[0], rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("scale,dtype", CASES)
def test_extreme_magnitudes_exact(backend, metric, scale, dtype):
    q, x = _data(scale, dtype, metric)
    _check(knn(q, x, 4, metric, backend=backend, tile_elems=512), _want(q, x, 4, metric))


@pytest.mark.skipif(not TRITON_ON_CPU, reason="needs TRITON_INTERPRET=1 and triton on CPU")
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("scale,dtype", [CASES[1], CASES[3], CASES[4], CASES[5]])
def test_extreme_magnitudes_triton_interpreted(metric, scale, dtype):
    """The triton backend's path, as ``search`` runs it (``rescaled`` around the backend)."""
    q, x = _data(scale, dtype, metric)
    amax = max(float(q.abs().max()), float(x.abs().max()))
    got = knn_mod.rescaled(
        lambda qs, xs: knn_mod.CertifiedKeys(xs, metric, score_fn=knn_mod._triton_bound_tile)
        .search(qs, 4, 512), q, x, metric, amax)
    _check(got, _want(q, x, 4, metric))


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("scale,dtype", CASES)
def test_extreme_magnitudes_streamed(tmp_path, metric, scale, dtype):
    q, x = _data(scale, dtype, metric)
    np.save(tmp_path / "keys.npy", x.numpy())
    got = knn(q, tmp_path / "keys.npy", 4, metric, chunk_bytes=7 * 8 * x.element_size())
    _check(got, _want(q, x, 4, metric))


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("scale", [1e19, 1e30, F32_MAX / 4])
def test_unrepresentable_values_raise(tmp_path, metric, scale):
    """Random data at 1e19 and up: the l2 / ip values exceed float32, so a one-line
    InputError (it was index −1 and NaN); cosine values still come back exact."""
    g = torch.Generator().manual_seed(1)
    q, x = torch.randn(3, 8, generator=g) * scale, torch.randn(20, 8, generator=g) * scale
    for backend in CPU_BACKENDS:
        with pytest.raises(InputError, match="queries and keys are too large") as err:
            knn(q, x, 3, metric, backend=backend)
        assert "\n" not in str(err.value)
    np.save(tmp_path / "keys.npy", x.numpy())
    with pytest.raises(InputError, match="queries and keys are too large"):
        knn(q, tmp_path / "keys.npy", 3, metric, chunk_bytes=5 * 32)
    _check(knn(q, x, 3, "cosine"), _want(q, x, 3, "cosine"))


def test_far_chunk_does_not_raise(tmp_path):
    """A chunk whose own nearest keys are beyond float32 must not fail the search when
    the global nearest are representable."""
    q, x = _data(1e30, torch.float32, "l2")
    x[20:] = torch.randn(20, 8) * 1e30  # far from every query
    np.save(tmp_path / "keys.npy", x.numpy())
    got = knn(q, tmp_path / "keys.npy", 4, chunk_bytes=20 * 8 * 4)
    _check(got, _want(q, x, 4, "l2"))


def test_bad_key_files_and_tile_elems(tmp_path):
    q = torch.randn(2, 8)
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(InputError, match="keys file .*empty.npy.* is not a numeric .npy"):
        knn(q, tmp_path / "empty.npy", 2)
    np.save(tmp_path / "rows0.npy", np.zeros((0, 8), np.float32))
    with pytest.raises(InputError, match="keys is empty"):
        knn(q, tmp_path / "rows0.npy", 2)
    np.save(tmp_path / "one.npy", np.zeros((1, 8), np.float32))
    with pytest.raises(InputError, match="k=2 exceeds the number of keys N=1"):
        knn(q, tmp_path / "one.npy", 2)
    for bad in (0, -5, 2.5):
        with pytest.raises(InputError, match="tile_elems must be an integer >= 1"):
            knn(q, torch.randn(5, 8), 2, tile_elems=bad)
        with pytest.raises(InputError, match="tile_elems must be an integer >= 1"):
            knn(q, tmp_path / "one.npy", 1, tile_elems=bad)


@pytest.mark.gpu
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("scale,dtype", CASES)
def test_extreme_magnitudes_gpu(metric, scale, dtype):
    q, x = _data(scale, dtype, metric)
    want = _want(q, x, 4, metric)
    for backend, why in dispatch.op("knn").reasons("cuda").items():
        if why == "ok":
            v, i = knn(q.cuda(), x.cuda(), 4, metric, backend=backend, tile_elems=512)
            _check((v.cpu(), i.cpu()), want)
