"""``load(name, **options)``: one entry point for every dataset, with checked options."""

from __future__ import annotations

import inspect
from pathlib import Path

from ..errors import DataError
from . import builtin, cifar, files, synthetic

_LOADERS = {
    "digits": (builtin.digits, "scikit-learn handwritten digits, 1797 × 8×8 grayscale"),
    "faces": (builtin.faces, "scikit-image LFW subset, 100 faces (or 200 images) 25×25"),
    "patches": (builtin.patches,
                "grayscale patches of scikit-image's 18 bundled photographs (groups = photo)"),
    "gaussian": (synthetic.gaussian,
                 "stationary Gaussian, power spectrum ∝ 1/|ω|^exponent (exact covariance known)"),
    "disks": (synthetic.disks, "antialiased disks: a 5-parameter image manifold"),
    "calpha": (synthetic.calpha, "two C^α backgrounds separated by a C^α contour"),
    "ray": (synthetic.ray, "one image under positive rescalings: a 1-dimensional ray"),
    "npy": (files.npy, "a .npy array of images (path=...)"),
    "npz": (files.npz, "one array of a .npz archive (path=..., key=...)"),
    "safetensors": (files.safetensors, "one tensor of a .safetensors file (path=..., key=...)"),
    "folder": (files.folder, "a folder of png/jpg/bmp/tif images (path=..., size=...)"),
    "cifar10": (cifar.cifar10, "CIFAR-10 python batches: folder or .tar.gz (path=..., split=...)"),
}

#: name → one-line description, for the CLI and error messages.
DATASETS = {name: desc for name, (_, desc) in _LOADERS.items()}


def load(name: str, *, return_info: bool = False, **options):
    """Load dataset ``name`` as float32 contiguous ``[N, C, H, W]`` in [-1, 1].

    ``options`` are the dataset's keyword options (see ``DATASETS`` and each loader's
    docstring in :mod:`pydiffgen.data`). With ``return_info=True`` returns ``(x, info)``:
    ``info["name"]``, ``info["groups"]`` (int64 [N] source group of each image, or None),
    ``info["options"]`` (every option with defaults filled in) and dataset extras such as
    ``labels``. The one exception to the [-1, 1] range is ``gaussian``, left unclipped so
    its covariance stays exact.
    """
    if name not in _LOADERS:
        raise DataError(
            f"unknown dataset {name!r}; known datasets: {', '.join(_LOADERS)}"
        )
    fn = _LOADERS[name][0]
    params = inspect.signature(fn).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise DataError(
            f"dataset {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(params) or '(none)'}"
        )
    missing = [p for p, spec in params.items()
               if spec.default is inspect.Parameter.empty and p not in options]
    if missing:
        raise DataError(
            f"dataset {name!r} needs option {', '.join(f'{p}=...' for p in missing)}"
        )
    resolved = {p: options.get(p, spec.default) for p, spec in params.items()}
    x, extra = fn(**resolved)
    if not return_info:
        return x
    used = {k: str(v) if isinstance(v, Path) else v for k, v in resolved.items()}
    return x, {"name": name, **extra, "options": used}
