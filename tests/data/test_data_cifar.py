"""CIFAR-10 python batches: folder and tarball round-trips, safe unpickling, clear errors."""

import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from pydiffgen.data import load
from pydiffgen.errors import DataError

NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _batches(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return {name: {b"batch_label": name.encode(),
                   b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                   b"labels": rng.integers(0, 10, size=n).tolist()}
            for name in NAMES}


def _write_dir(root, batches, protocol=pickle.DEFAULT_PROTOCOL):
    root.mkdir(parents=True)
    for name, batch in batches.items():
        with open(root / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)


def _expected(batches, names):
    data = np.concatenate([batches[n][b"data"] for n in names]).reshape(-1, 3, 32, 32)
    labels = sum((batches[n][b"labels"] for n in names), [])
    return torch.from_numpy(data / 255.0 * 2 - 1).float(), torch.tensor(labels)


@pytest.mark.parametrize("protocol", [2, 5])
def test_directory_round_trip(tmp_path, protocol):
    batches = _batches()
    _write_dir(tmp_path / "cifar", batches, protocol)
    x, info = load("cifar10", path=tmp_path / "cifar", return_info=True)
    want, labels = _expected(batches, NAMES[:5])
    assert x.shape == (15, 3, 32, 32) and x.dtype == torch.float32 and x.is_contiguous()
    assert torch.allclose(x, want, atol=1e-6)
    assert torch.equal(info["labels"], labels) and info["classes"][0] == "airplane"
    test = load("cifar10", path=tmp_path / "cifar", split="test")
    assert torch.allclose(test, _expected(batches, ["test_batch"])[0], atol=1e-6)


def test_parent_directory_and_grayscale(tmp_path):
    batches = _batches()
    _write_dir(tmp_path / "cifar-10-batches-py", batches)
    gray = load("cifar10", path=tmp_path, split="test", grayscale=True)
    rgb = (_expected(batches, ["test_batch"])[0].double() + 1) / 2
    luma = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    assert gray.shape == (3, 1, 32, 32)
    assert torch.allclose(gray[:, 0].double(), luma * 2 - 1, atol=1e-6)


def _write_tar(tar_path, batches):
    with tarfile.open(tar_path, "w:gz") as tar:
        for name, batch in batches.items():
            payload = pickle.dumps(batch)
            member = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))


def test_tarball_read_without_extracting(tmp_path):
    batches = _batches(n=2, seed=1)
    tar_path = tmp_path / "cifar-10-python.tar.gz"
    _write_tar(tar_path, batches)
    before = set(os.listdir(tmp_path))
    x, info = load("cifar10", path=tar_path, return_info=True)
    want, labels = _expected(batches, NAMES[:5])
    assert torch.allclose(x, want, atol=1e-6) and torch.equal(info["labels"], labels)
    assert set(os.listdir(tmp_path)) == before  # nothing extracted next to it


class _Exploit:
    """Pickles to a call of os.system: what a hostile 'dataset' would ship."""

    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    batches = _batches()
    batches["test_batch"][b"data"] = _Exploit()
    _write_dir(tmp_path / "cifar", batches)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"test_batch: refused.*(os|posix)\.system"):
        load("cifar10", path=tmp_path / "cifar", split="test")
    assert not (tmp_path / "pwned.txt").exists()


def test_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load("cifar10", path=tmp_path / "missing.tar.gz")
    batches = _batches()
    del batches["data_batch_3"]
    _write_dir(tmp_path / "partial", batches)
    with pytest.raises(DataError, match="missing CIFAR-10 batch file.*data_batch_3"):
        load("cifar10", path=tmp_path / "partial")
    _write_tar(tmp_path / "partial.tar.gz", batches)
    with pytest.raises(DataError, match="partial.tar.gz: the archive lacks.*data_batch_3"):
        load("cifar10", path=tmp_path / "partial.tar.gz")
    (tmp_path / "broken.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(DataError, match="broken.tar.gz: expected a CIFAR-10"):
        load("cifar10", path=tmp_path / "broken.tar.gz")
    wrong = _batches()
    wrong["test_batch"][b"data"] = np.zeros((3, 100), np.uint8)
    _write_dir(tmp_path / "wrong", wrong)
    with pytest.raises(DataError, match=r"uint8 \[n, 3072\]"):
        load("cifar10", path=tmp_path / "wrong", split="test")
    (tmp_path / "trunc").mkdir()
    for name in NAMES:
        (tmp_path / "trunc" / name).write_bytes(pickle.dumps(_batches()["test_batch"])[:50])
    with pytest.raises(DataError, match="data_batch_1"):
        load("cifar10", path=tmp_path / "trunc")
    with pytest.raises(DataError, match="split must be one of train, test"):
        load("cifar10", path=tmp_path / "wrong", split="val")
