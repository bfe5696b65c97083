"""User files: .npy / .npz arrays and image folders round-trip exactly; bad files fail clearly."""

import numpy as np
import pytest
import torch
from PIL import Image

from pydiffgen.data import load
from pydiffgen.errors import DataError


@pytest.fixture
def uint8_images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(5, 3, 12, 10), dtype=np.uint8)  # [N, C, H, W]


def _expected(arr_nchw_uint8):
    return torch.from_numpy(arr_nchw_uint8.astype(np.float64) / 255 * 2 - 1).float()


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "nhw"])
def test_npy_layouts_round_trip(tmp_path, uint8_images, layout):
    arr = {"nchw": uint8_images, "nhwc": uint8_images.transpose(0, 2, 3, 1),
           "nhw": uint8_images[:, 0]}[layout]
    np.save(tmp_path / "x.npy", arr)
    x, info = load("npy", path=tmp_path / "x.npy", return_info=True)
    want = _expected(uint8_images if layout != "nhw" else uint8_images[:, :1])
    assert x.dtype == torch.float32 and x.is_contiguous()
    assert torch.allclose(x, want, atol=1e-6)
    assert info["scaling"] == "uint8 / 255" and "note" not in info
    assert info["options"]["path"] == str(tmp_path / "x.npy")


def test_float_ranges_are_detected(tmp_path):
    rng = np.random.default_rng(1)
    unit = rng.random((4, 1, 6, 6)).astype(np.float32)
    np.save(tmp_path / "unit.npy", unit)
    np.save(tmp_path / "signed.npy", unit * 2 - 1)
    np.save(tmp_path / "wide.npy", unit * 300 - 50)
    want = torch.from_numpy(unit * 2 - 1)
    assert torch.allclose(load("npy", path=tmp_path / "unit.npy"), want, atol=1e-6)
    assert torch.allclose(load("npy", path=tmp_path / "signed.npy"), want, atol=1e-6)
    wide, info = load("npy", path=tmp_path / "wide.npy", return_info=True)
    assert "min/max" in info["note"]
    assert float(wide.min()) == -1 and float(wide.max()) == 1
    lo, hi = unit.min(), unit.max()
    assert torch.allclose(wide, torch.from_numpy((unit - lo) / (hi - lo) * 2 - 1), atol=1e-5)


def test_npz_keys(tmp_path, uint8_images):
    np.savez(tmp_path / "one.npz", images=uint8_images)
    x, info = load("npz", path=tmp_path / "one.npz", return_info=True)
    assert torch.allclose(x, _expected(uint8_images), atol=1e-6) and info["key"] == "images"
    np.savez_compressed(tmp_path / "two.npz", train=uint8_images, test=uint8_images[:2])
    with pytest.raises(DataError, match="pass key="):
        load("npz", path=tmp_path / "two.npz")
    assert len(load("npz", path=tmp_path / "two.npz", key="test")) == 2
    with pytest.raises(DataError, match="no array 'val'"):
        load("npz", path=tmp_path / "two.npz", key="val")


def test_safetensors_keys(tmp_path, uint8_images):
    from safetensors.torch import save_file

    imgs = torch.from_numpy(uint8_images)
    save_file({"A": imgs, "S1": imgs[:2].clone()}, str(tmp_path / "s.safetensors"))
    x, info = load("safetensors", path=tmp_path / "s.safetensors", key="A", return_info=True)
    assert torch.allclose(x, _expected(uint8_images), atol=1e-6) and info["key"] == "A"
    assert len(load("safetensors", path=tmp_path / "s.safetensors", key="S1")) == 2
    with pytest.raises(DataError, match="pass key="):
        load("safetensors", path=tmp_path / "s.safetensors")
    with pytest.raises(DataError, match="no tensor 'B'"):
        load("safetensors", path=tmp_path / "s.safetensors", key="B")
    over = torch.linspace(-1.2, 1.3, 2 * 5 * 6).reshape(2, 1, 5, 6)  # a sampler's overshoot
    save_file({"A": over}, str(tmp_path / "f.safetensors"))
    torch.testing.assert_close(load("safetensors", path=tmp_path / "f.safetensors"),
                               over.clamp(-1, 1))
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(DataError, match="expected a .safetensors file"):
        load("safetensors", path=tmp_path / "bad.safetensors")


def test_bad_array_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load("npy", path=tmp_path / "missing.npy")
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(DataError, match=r"corrupt\.npz: expected an \.npz archive"):
        load("npz", path=tmp_path / "corrupt.npz")
    (tmp_path / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match=r"garbage\.npy: expected a \.npy array"):
        load("npy", path=tmp_path / "garbage.npy")
    np.save(tmp_path / "flat.npy", np.zeros((4, 16), np.uint8))
    with pytest.raises(DataError, match=r"expected images shaped .* shape \(4, 16\)"):
        load("npy", path=tmp_path / "flat.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="objects.npy"):
        load("npy", path=tmp_path / "objects.npy")
    np.save(tmp_path / "nan.npy", np.full((2, 4, 4), np.nan, np.float32))
    with pytest.raises(DataError, match="NaN"):
        load("npy", path=tmp_path / "nan.npy")
    np.savez(tmp_path / "fine.npz", x=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match=r"found a \.npy array; use load\('npy'\)"):
        load("npz", path=tmp_path / "flat.npy")
    with pytest.raises(DataError, match=r"found an \.npz archive; use load\('npz'\)"):
        load("npy", path=tmp_path / "fine.npz")


def _write_folder(root, images, suffix=".png"):
    root.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(root / f"img_{i:02d}{suffix}")


def test_folder_round_trip_rgb_and_gray(tmp_path, uint8_images):
    rgb = uint8_images.transpose(0, 2, 3, 1)  # [N, H, W, 3]
    _write_folder(tmp_path / "rgb", list(rgb))
    (tmp_path / "rgb" / "notes.txt").write_text("ignored: not an image")
    x, info = load("folder", path=tmp_path / "rgb", return_info=True)
    assert info["files"] == [f"img_{i:02d}.png" for i in range(5)]
    assert torch.allclose(x, _expected(uint8_images), atol=1e-6)
    _write_folder(tmp_path / "gray", list(uint8_images[:, 0]), suffix=".bmp")
    gray = load("folder", path=tmp_path / "gray", grayscale=True)
    assert torch.allclose(gray, _expected(uint8_images[:, :1]), atol=1e-6)


def test_folder_16bit(tmp_path):
    arr = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    (tmp_path / "deep").mkdir()
    Image.fromarray(arr).save(tmp_path / "deep" / "a.png")
    x = load("folder", path=tmp_path / "deep", grayscale=True)
    assert torch.allclose(x[0, 0].double(), torch.from_numpy(arr / 65535 * 2 - 1), atol=1e-6)


def test_folder_resize_and_crop(tmp_path):
    # a 20×40 image: left half black, right half white; the centre crop is half and half
    img = np.zeros((20, 40), np.uint8)
    img[:, 20:] = 255
    (tmp_path / "wide").mkdir()
    Image.fromarray(img).save(tmp_path / "wide" / "a.png")
    Image.fromarray(np.full((30, 30), 128, np.uint8)).save(tmp_path / "wide" / "b.jpg")
    with pytest.raises(DataError, match="different shapes.*size="):
        load("folder", path=tmp_path / "wide", grayscale=True)
    x = load("folder", path=tmp_path / "wide", size=10, grayscale=True)
    assert x.shape == (2, 1, 10, 10)
    assert float(x[0, 0, :, :4].max()) < -0.9 and float(x[0, 0, :, 6:].min()) > 0.9
    squashed = load("folder", path=tmp_path / "wide", size=10, grayscale=True,
                    center_crop=False)
    assert abs(float(squashed[0].mean())) < 0.05
    assert torch.allclose(x[1], torch.full((1, 10, 10), 128 / 255 * 2 - 1), atol=0.02)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        load("folder", path=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="contains no image files"):
        load("folder", path=tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png: cannot be read as an image"):
        load("folder", path=tmp_path / "bad")
