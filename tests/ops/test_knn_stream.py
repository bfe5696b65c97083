"""knn with keys on disk (numpy memmap / .npy path), streamed in row chunks: the same
answer as the in-memory float64 brute force, chunk boundaries anywhere, clear errors."""

import numpy as np
import pytest
import torch

from pydiffgen.errors import InputError
from pydiffgen.ops import knn, reference


def _keys(n=2000, shape=(3, 4, 4), seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    return (rng.random((n, *shape)) * 2 - 1 + 0.5).astype(dtype)


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
@pytest.mark.parametrize("chunk_rows", [5, 137, 5000])
def test_npy_path_matches_in_memory(tmp_path, metric, chunk_rows):
    x = _keys(600)
    x[500] = x[20]  # an exact duplicate across chunks: the lower index wins
    path = tmp_path / "keys.npy"
    np.save(path, x)
    q = torch.from_numpy(x[[20, 3, 599]]) + 1e-4
    q = torch.cat([q, torch.rand(5, 3, 4, 4)])
    k = 6
    got = knn(q, path, k, metric, chunk_bytes=chunk_rows * 48 * 4)
    want = reference.knn_bruteforce(q, torch.from_numpy(x), k, metric)
    assert got[1].dtype == torch.int64 and got[0].dtype == torch.float32
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0], want[0].float(), rtol=1e-6, atol=1e-6)


def test_memmap_uint8_and_float64(tmp_path):
    x8 = _keys(900, (2, 5, 5), dtype=np.uint8)
    mm = np.lib.format.open_memmap(tmp_path / "u8.npy", mode="w+", dtype=np.uint8,
                                   shape=x8.shape)
    mm[:] = x8
    mm.flush()
    q8 = torch.from_numpy(x8[:7].copy())
    got = knn(q8, np.load(tmp_path / "u8.npy", mmap_mode="r"), 4, chunk_bytes=5000)
    want = reference.knn_bruteforce(q8.double(), torch.from_numpy(x8).double(), 4)
    assert torch.equal(got[1], want[1])
    x64 = _keys(500, (10,), dtype=np.float64)
    q = torch.randn(4, 10, dtype=torch.float64)
    got = knn(q, x64, 3, "cosine", chunk_bytes=800)
    assert torch.equal(got[1], reference.knn_bruteforce(q, torch.from_numpy(x64), 3, "cosine")[1])


def test_file_key_errors(tmp_path):
    q = torch.rand(2, 3, 4, 4)
    with pytest.raises(InputError, match="does not exist"):
        knn(q, tmp_path / "missing.npy", 3)
    x = _keys(50)
    x[33, 1, 2, 3] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(InputError, match=r"NaN or Inf values \(rows 30\.\.39\)"):
        knn(q, tmp_path / "nan.npy", 3, chunk_bytes=10 * 48 * 4)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="not a numeric .npy array"):
        knn(q, tmp_path / "obj.npy", 1)
    with pytest.raises(InputError, match="feature shape"):
        knn(q, _keys(10, (48,)), 3)
    with pytest.raises(InputError, match="exceeds the number of keys"):
        knn(q, _keys(5), 6)
    with pytest.raises(InputError, match="float16/32/64 or uint8"):
        knn(q, _keys(5).astype(np.int32), 2)
    with pytest.raises(InputError, match="numpy array / memmap or a path"):
        knn(q, [[1.0]], 1)
    np.savez(tmp_path / "arch.npz", a=_keys(5))
    with pytest.raises(InputError, match="npz"):
        knn(q, tmp_path / "arch.npz", 1)
