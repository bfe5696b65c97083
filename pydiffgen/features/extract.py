"""``extract(encoder, source)``: features of a whole image set, streamed in batches into a
resumable ``.npy`` cache.

The cache is ``CACHE.npy`` (a float32 ``[N, F]`` array written through a memory map) and
``CACHE.npy.json``, which records the encoder, the source's identity and how many rows are
done; it is replaced atomically after each batch. A killed run resumes at that row; a cache
made by another encoder or from another source is refused, never reused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from .. import data
from .._checks import check_positive_int
from ..errors import CheckpointError, DataError, InputError
from ..io import read_json, write_json
from .base import check_images
from .load import load_encoder


def source_identity(source) -> dict:
    """What a cache records of its source: a tensor's sha256, or a file's path, size and
    mtime (a folder's: of every file in it)."""
    if isinstance(source, torch.Tensor):
        digest = hashlib.sha256(source.detach().cpu().contiguous().numpy().tobytes())
        return {"tensor_sha256": digest.hexdigest(), "shape": list(source.shape)}
    text = str(source)
    path, key = (text.rsplit(":", 1) if ".npz:" in text or ".safetensors:" in text
                 else (text, None))
    p = Path(path).expanduser().resolve()
    files = sorted(p.iterdir()) if p.is_dir() else [p]
    stats = "\n".join(f"{f.name} {f.stat().st_size} {f.stat().st_mtime_ns}" for f in files)
    return {"path": str(p), "key": key, "files_sha256": hashlib.sha256(stats.encode()).hexdigest()}


def read_images(source) -> torch.Tensor:
    """Images ``[N, C, H, W]`` in [-1, 1] from a tensor (checked, not rescaled), a ``.npy``,
    ``.npz[:KEY]`` or ``.safetensors[:KEY]`` file, or a folder of image files (read by
    :func:`pydiffgen.data.load`)."""
    if isinstance(source, torch.Tensor):
        return check_images(source, "source")
    if not isinstance(source, (str, Path)) or not str(source).strip():
        raise InputError(f"source must be an image tensor, a file or a folder, got "
                         f"{source!r}")
    text = str(source)
    key = None
    if ".npz:" in text or ".safetensors:" in text:
        text, key = text.rsplit(":", 1)
    p = Path(text).expanduser()
    if p.is_dir():
        return data.load("folder", path=p)
    if p.suffix == ".npy":
        return data.load("npy", path=p)
    if p.suffix in (".npz", ".safetensors"):
        return data.load(p.suffix[1:], path=p, key=key)
    if not p.exists():
        raise DataError(f"source {p} does not exist")
    raise DataError(f"source {p}: expected a .npy file, a .npz archive, a .safetensors file "
                    "or a folder of images")


def resume(path: Path, record: dict, rows: int):
    """The cache's memory map and its first row not yet done, or None when there is no
    cache to resume (nothing there, or a kill before the array was created)."""
    sidecar = Path(f"{path}.json")
    if not sidecar.is_file():
        if path.exists():
            raise CheckpointError(f"{path} exists without {sidecar.name}: not a pydiffgen "
                                  "feature cache (or its record was lost); delete it or pass "
                                  "another cache")
        return None
    saved = read_json(sidecar)
    for field, how in (("encoder", "by encoder"), ("source", "from")):
        if saved.get(field) != record[field]:
            raise CheckpointError(f"cache {path} was made {how} {saved.get(field)}, not "
                                  f"{record[field]}; delete it or pass another cache")
    if not path.is_file():
        return None
    feats = np.load(path, mmap_mode="r+")
    if feats.dtype != np.float32 or feats.ndim != 2 or feats.shape[0] != rows:
        raise CheckpointError(f"cache {path} holds {feats.dtype} {feats.shape}, expected "
                              f"float32 [{rows}, F]; delete it")
    return feats, int(saved.get("done", 0))


def create(path: Path, record: dict, rows: int, dim: int):
    """A new cache ``[rows, dim]``; the record is written first, so a kill before the
    array exists leaves a cache that restarts at row 0."""
    write_json(Path(f"{path}.json"), {**record, "done": 0})
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))


def extract(encoder, source, *, batch_size: int = 64, cache=None,
            progress: bool = True) -> torch.Tensor:
    """Features ``[N, F]`` float32 (CPU) of every image of ``source``.

    ``encoder``: an :class:`~pydiffgen.features.Encoder` or anything
    :func:`~pydiffgen.features.load_encoder` accepts. ``source``: images ``[N, C, H, W]``
    float in [-1, 1], a ``.npy`` / ``.npz[:KEY]`` / ``.safetensors[:KEY]`` file or a
    folder of images. ``cache``: a ``.npy`` path; rows are written there as they are
    computed and a rerun resumes after the last completed batch (see the module
    docstring). The progress bar shows images/s.
    """
    from tqdm.auto import tqdm

    check_positive_int(batch_size, "batch_size")
    encoder = load_encoder(encoder)
    images = read_images(source)
    n = len(images)
    feats, start, out = None, 0, []
    if cache is not None:
        path = Path(cache).expanduser()
        if path.suffix != ".npy":
            raise InputError(f"cache must be a .npy path, got {path}")
        record = {"encoder": encoder.name, "source": source_identity(source)}
        feats, start = resume(path, record, n) or (None, 0)
    bar = tqdm(total=n, initial=start, unit="img", desc=f"features ({encoder.name})",
               disable=not progress, dynamic_ncols=True)
    for lo in range(start, n, batch_size):
        batch = encoder.encode(images[lo:lo + batch_size]).cpu()
        if cache is None:
            out.append(batch)
            bar.update(len(batch))
            continue
        if feats is None:
            feats = create(path, record, n, batch.shape[1])
        feats[lo:lo + len(batch)] = batch.numpy()
        feats.flush()  # the rows reach the file before the record says they are done
        write_json(Path(f"{path}.json"), {**record, "done": lo + len(batch)})
        bar.update(len(batch))
    bar.close()
    return torch.cat(out) if cache is None else torch.from_numpy(np.array(feats))
