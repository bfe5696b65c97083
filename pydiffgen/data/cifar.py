"""CIFAR-10 from the official *python* batches, read safely and without extracting.

The batches are pickles. A plain ``pickle.load`` of a file someone handed you can run
arbitrary code, so :class:`_BatchUnpickler` resolves only the handful of globals that
NumPy array reconstruction needs (and ``_codecs.encode``, which protocol-2 pickles use
for bytes); any other global (``os.system``, ``builtins.eval`` ...) is refused before
it can be called.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .transforms import from_unit

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
SPLITS = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_SUBDIR = "cifar-10-batches-py"
# ITU-R 601 luma, the weights PIL uses for RGB → L
_LUMA = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),   # NumPy 1.x array pickles
    ("numpy._core.multiarray", "_reconstruct"),  # NumPy 2.x
    ("numpy.core.numeric", "_frombuffer"),       # protocol 5 array pickles
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild dicts, lists, bytes, str, numbers and NumPy arrays only."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")


def _read_batch(stream, source: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch: images uint8 [n, 3, 32, 32] and labels int64 [n]."""
    try:
        # encoding="bytes": the official batches were pickled by Python 2
        batch = _BatchUnpickler(stream, encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise DataError(
            f"{source}: refused or failed to unpickle ({err}); a CIFAR-10 batch holds only "
            f"NumPy arrays, lists and strings"
        ) from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OSError) as err:
        raise DataError(f"{source}: not a CIFAR-10 python batch ({err})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{source}: expected a pickled dict, got {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != 3 * 32 * 32 or labels is None):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(
            f"{source}: expected b'data' uint8 [n, 3072] and b'labels', got data {got}"
            + ("" if labels is not None else " and no labels")
        )
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(data),):
        raise DataError(f"{source}: {len(data)} images but labels of shape {labels.shape}")
    # rows are the R, G and B planes, each 32×32 in row-major order
    return data.reshape(-1, 3, 32, 32), labels


def _read_split(path: Path, names: tuple[str, ...]):
    """Batches ``names`` from a directory (or its cifar-10-batches-py/) or a tarball."""
    if path.is_dir():
        root = path / _SUBDIR if (path / _SUBDIR).is_dir() else path
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise DataError(
                f"{root}: missing CIFAR-10 batch file(s) {', '.join(missing)}; expected the "
                f"extracted cifar-10-python.tar.gz ({', '.join(names)})"
            )
        batches = []
        for n in names:
            with open(root / n, "rb") as f:
                batches.append(_read_batch(f, str(root / n)))
        return batches
    if not path.is_file():
        raise DataError(
            f"{path} does not exist; pass the cifar-10-python.tar.gz file or the folder "
            f"holding data_batch_1..5 and test_batch"
        )
    try:
        found = {}
        with tarfile.open(path, "r:*") as tar:
            # one pass in archive order (a .gz cannot seek back cheaply); each batch is
            # read into memory, nothing is extracted to disk
            for member in tar:
                name = Path(member.name).name
                if member.isfile() and name in names and name not in found:
                    stream = io.BytesIO(tar.extractfile(member).read())
                    found[name] = _read_batch(stream, f"{path}:{member.name}")
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(
            f"{path}: expected a CIFAR-10 directory or cifar-10-python.tar.gz archive ({err})"
        ) from None
    missing = [n for n in names if n not in found]
    if missing:
        raise DataError(f"{path}: the archive lacks CIFAR-10 batch(es) {', '.join(missing)}")
    return [found[n] for n in names]


def cifar10(*, path, split: str = "train", grayscale: bool = False):
    """CIFAR-10 32×32 images ``[N, 3 or 1, 32, 32]`` from the python-version batches.

    ``path``: the folder with ``data_batch_1..5`` / ``test_batch`` (or its parent) or the
    ``cifar-10-python.tar.gz`` archive itself. ``split``: "train" (50 000 images) or
    "test" (10 000). ``grayscale`` uses ITU-R 601 luma. ``info["labels"]`` int64 [N];
    ``info["classes"]`` names them.
    """
    if split not in SPLITS:
        raise DataError(f"cifar10: split must be one of {', '.join(SPLITS)}, got {split!r}")
    batches = _read_split(Path(path).expanduser(), SPLITS[split])
    x = torch.from_numpy(np.concatenate([b[0] for b in batches])).to(torch.float64) / 255.0
    labels = torch.from_numpy(np.concatenate([b[1] for b in batches]))
    if grayscale:
        x = torch.einsum("c,nchw->nhw", _LUMA, x)[:, None]
    return from_unit(x), {"groups": None, "labels": labels, "classes": list(CLASSES)}
