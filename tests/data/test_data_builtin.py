"""Built-in datasets and the load() registry: shapes, ranges, options, errors."""

import pytest
import torch

from pydiffgen.data import DATASETS, PHOTOGRAPHS, load
from pydiffgen.errors import DataError, InputError


def _check_images(x, shape):
    assert tuple(x.shape) == shape
    assert x.dtype == torch.float32 and x.is_contiguous()
    assert float(x.min()) >= -1 and float(x.max()) <= 1


def test_digits_native_and_range():
    x, info = load("digits", return_info=True)
    _check_images(x, (1797, 1, 8, 8))
    # 0..16 maps onto the full [-1, 1]: both ends occur
    assert float(x.min()) == -1 and float(x.max()) == 1
    assert info["name"] == "digits" and info["groups"] is None
    assert info["options"] == {"size": 8, "n": None, "interpolation": "bilinear"}
    assert info["labels"].dtype == torch.int64 and info["labels"][:10].tolist() == list(range(10))


def test_digits_first_n_and_upsampling():
    small = load("digits", n=5)
    _check_images(small, (5, 1, 8, 8))
    assert torch.equal(small, load("digits")[:5])
    for mode in ("bilinear", "bicubic"):
        big = load("digits", n=5, size=16, interpolation=mode)
        _check_images(big, (5, 1, 16, 16))
        # 2× upsampling keeps each image's mean brightness
        assert torch.allclose(big.mean((2, 3)), small.mean((2, 3)), atol=0.05)


def test_faces():
    x, info = load("faces", return_info=True)
    _check_images(x, (100, 1, 25, 25))
    assert bool((info["labels"] == 1).all())
    both, info = load("faces", faces_only=False, size=20, return_info=True)
    _check_images(both, (200, 1, 20, 20))
    assert info["labels"].tolist() == [1] * 100 + [0] * 100


def test_patches_tiles_groups_and_positions():
    x, info = load("patches", images=["camera", "moon"], size=32, return_info=True)
    # camera and moon are 512×512: 16 × 16 non-overlapping tiles each
    _check_images(x, (512, 1, 32, 32))
    assert info["sources"] == ["camera", "moon"]
    assert info["groups"].tolist() == [0] * 256 + [1] * 256
    assert info["positions"][:3].tolist() == [[0, 0], [0, 32], [0, 64]]
    import skimage.data

    camera = torch.from_numpy(skimage.data.camera()).double() / 255 * 2 - 1
    r, c = info["positions"][17].tolist()
    assert torch.allclose(x[17, 0].double(), camera[r : r + 32, c : c + 32], atol=1e-6)


def test_patches_stride_subset_and_seed():
    dense = load("patches", images="camera", size=16, stride=8)
    assert len(dense) == 63 * 63
    a, info = load("patches", n=50, seed=1, return_info=True)
    _check_images(a, (50, 1, 16, 16))
    assert torch.equal(a, load("patches", n=50, seed=1))
    assert not torch.equal(a, load("patches", n=50, seed=2))
    assert info["sources"] == list(PHOTOGRAPHS)
    assert bool((info["groups"][1:] >= info["groups"][:-1]).all())  # kept in source order


def test_every_photograph_loads_offline():
    x, info = load("patches", size=64, return_info=True)
    assert set(info["groups"].tolist()) == set(range(len(PHOTOGRAPHS)))
    _check_images(x, (len(x), 1, 64, 64))


def test_registry_errors():
    with pytest.raises(DataError, match="known datasets: digits"):
        load("mnist")
    with pytest.raises(DataError, match="no option 'sise'.*valid options: size"):
        load("digits", sise=16)
    with pytest.raises(DataError, match="needs option path="):
        load("npy")
    with pytest.raises(DataError, match="unknown: lena"):
        load("patches", images=["camera", "lena"])
    with pytest.raises(DataError, match="exceeds"):
        load("digits", n=5000)
    with pytest.raises(InputError, match="size"):
        load("digits", size=0)
    with pytest.raises(InputError, match="interpolation"):
        load("digits", size=16, interpolation="nearest")
    assert set(DATASETS) >= {"digits", "faces", "patches", "gaussian", "disks", "calpha",
                             "npy", "npz", "folder", "cifar10"}
    assert all(isinstance(d, str) and d for d in DATASETS.values())
