"""Images users bring: NumPy ``.npy`` / ``.npz`` arrays, ``.safetensors`` files and
folders of image files.

Arrays are read with ``allow_pickle=False`` or by safetensors: a file must never run code.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from . import transforms
from .transforms import array_to_unit, from_unit, resize, to_nchw

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# errors numpy raises for truncated, corrupt or pickled content
_NUMPY_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def _existing(path, kind: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise DataError(f"path must be a file or folder path, got {path!r}")
    p = Path(path).expanduser()
    if kind == "file" and not p.is_file():
        raise DataError(f"{p} does not exist or is not a file")
    if kind == "dir" and not p.is_dir():
        raise DataError(f"{p} does not exist or is not a directory")
    return p


def _from_array(arr: np.ndarray, source: str):
    unit, scaling = array_to_unit(to_nchw(arr, source), source)
    info = {"groups": None, "scaling": scaling}
    if "min/max" in scaling:
        info["note"] = f"{source}: {scaling}"
    return from_unit(unit), info


def npy(*, path):
    """Images from a ``.npy`` array ``[N, H, W]``, ``[N, H, W, C]`` or ``[N, C, H, W]``.

    uint8 is divided by 255; floats in [0, 1] or [-1, 1] are mapped exactly; other values
    are rescaled by min/max (``info["note"]`` says so). ``info["scaling"]`` records which.
    """
    p = _existing(path, "file")
    try:
        # our own handle: np.load leaks the one it opens when the archive is corrupt
        with open(p, "rb") as fh:
            arr = np.load(fh, allow_pickle=False)
    except _NUMPY_READ_ERRORS as err:
        raise DataError(f"{p}: expected a .npy array written by numpy.save ({err})") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{p}: expected a .npy array, found an .npz archive; use load('npz')")
    return _from_array(arr, str(p))


def npz(*, path, key: str | None = None):
    """Images from one array of a ``.npz`` archive (layouts and scaling as :func:`npy`).

    ``key`` names the array; it may be omitted when the archive holds exactly one.
    """
    p = _existing(path, "file")
    try:
        # our own handle: np.load leaks the one it opens when the archive is corrupt
        with open(p, "rb") as fh:
            archive = np.load(fh, allow_pickle=False)
            if isinstance(archive, np.ndarray):
                raise DataError(
                    f"{p}: expected an .npz archive, found a .npy array; use load('npy')"
                )
            keys = list(archive.files)
            if key is None:
                if len(keys) != 1:
                    raise DataError(
                        f"{p} holds arrays {', '.join(keys) or '(none)'}; pass key=... "
                        f"to choose one"
                    )
                key = keys[0]
            if key not in keys:
                raise DataError(f"{p} has no array {key!r}; it holds {', '.join(keys)}")
            arr = archive[key]
    except DataError:  # a ValueError too: keep ours from being re-wrapped below
        raise
    except _NUMPY_READ_ERRORS as err:
        raise DataError(f"{p}: expected an .npz archive written by numpy.savez ({err})") from None
    x, info = _from_array(arr, f"{p}[{key}]")
    return x, {**info, "key": key}


def safetensors(*, path, key: str | None = None):
    """Images from one tensor of a ``.safetensors`` file, e.g. a sweep's
    ``samples.safetensors`` (keys ``A``, ``B``, ``S1``, ``S2`` ...).

    Layouts as :func:`npy`. Float tensors are taken in pydiffgen's own [-1, 1] convention
    and clipped to it (a sampler's output overshoots slightly; a min/max rescale would
    shift every intensity); uint8 is divided by 255. ``key`` names the tensor; it may be
    omitted when the file holds exactly one.
    """
    from safetensors import SafetensorError, safe_open

    p = _existing(path, "file")
    try:
        with safe_open(str(p), framework="pt") as f:
            keys = list(f.keys())
            if key is None:
                if len(keys) != 1:
                    raise DataError(f"{p} holds tensors {', '.join(keys) or '(none)'}; pass "
                                    "key=... to choose one")
                key = keys[0]
            if key not in keys:
                raise DataError(f"{p} has no tensor {key!r}; it holds {', '.join(keys)}")
            t = f.get_tensor(key)
    except (SafetensorError, OSError) as err:
        raise DataError(f"{p}: expected a .safetensors file ({err})") from None
    source = f"{p}[{key}]"
    if t.dtype == torch.uint8:
        x, info = _from_array(t.numpy(), source)
        return x, {**info, "key": key}
    if not t.is_floating_point():
        raise DataError(f"{source}: expected a float or uint8 image tensor, got {t.dtype}")
    if not bool(torch.isfinite(t).all()):  # as array_to_unit refuses them in .npy files
        raise DataError(f"{source}: the array contains NaN or Inf values")
    x = torch.from_numpy(to_nchw(t.float().numpy(), source)).clamp(-1, 1).contiguous()
    return x, {"groups": None, "scaling": "float, pydiffgen's [-1, 1] (clipped)", "key": key}


def folder(*, path, size: int | None = None, grayscale: bool = False, center_crop: bool = True):
    """Every image file directly in ``path`` (png, jpg, bmp, tif), in sorted name order.

    Returns ``[N, 1 or 3, H, W]``. Without ``size`` all images must share one shape. With
    ``size`` each image is centre-cropped to a square (``center_crop=True``) or squashed
    (``False``), then resized to ``size × size``. 16-bit grayscale and float files in
    [0, 1] keep their precision; 32-bit integer files are refused. ``info["files"]`` lists
    the file names in order.
    """
    from PIL import Image, UnidentifiedImageError

    root = _existing(path, "dir")
    files = sorted(f for f in root.iterdir()
                   if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{root} contains no image files ({', '.join(IMAGE_SUFFIXES)})")
    images = []
    for f in files:
        try:
            with Image.open(f) as img:
                unit = _pil_to_unit(img, grayscale)  # [C, H, W]
        except DataError as err:  # a ValueError too: say which file, once
            raise DataError(f"{f}: {err}") from None
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
            raise DataError(f"{f}: cannot be read as an image ({err})") from None
        if size is not None:
            if center_crop:
                unit = transforms.center_crop(unit)
            unit = resize(unit[None], size, "bicubic")[0]
        images.append(unit)
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1:
        raise DataError(
            f"{root}: images have different shapes {sorted(shapes)[:4]}; pass size=... to "
            f"resize them to one square size"
        )
    return from_unit(torch.stack(images)), {"groups": None, "files": [f.name for f in files]}


def _pil_to_unit(img, grayscale: bool) -> torch.Tensor:
    """A PIL image as float64 ``[C, H, W]`` in [0, 1] (C = 1 if grayscale else 3).

    16-bit files keep their precision; float files (mode "F") are read as they are and
    must lie in [0, 1]; 32-bit integer files are refused (no full scale to divide by,
    and converting them to 8 bits saturates them).
    """
    if img.mode.startswith("I;16") or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F" and not (np.isfinite(arr).all() and arr.min() >= 0
                                    and arr.max() <= 1):
            raise DataError(f"a float image must hold finite values in [0, 1], got "
                            f"[{arr.min():.4g}, {arr.max():.4g}]; save it as a .npy array and "
                            "use load('npy'), which rescales any range")
        if img.mode != "F":
            arr = arr / 65535.0
        if not grayscale:
            arr = np.repeat(arr[..., None], 3, axis=-1)
    elif img.mode.startswith("I"):
        raise DataError(f"32-bit integer images (mode {img.mode!r}) have no known full scale; "
                        "save them as a .npy array and use load('npy'), which rescales them")
    else:
        arr = np.asarray(img.convert("L" if grayscale else "RGB"), dtype=np.float64) / 255.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))
