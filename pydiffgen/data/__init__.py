"""Datasets for memorization/generalization studies, de-duplication and disjoint splits.

- :func:`load` / :data:`DATASETS`: built-in (digits, faces, patches), synthetic with known
  structure (gaussian, disks, calpha) and user files (npy, npz, folder, cifar10), all as
  float32 ``[N, C, H, W]`` in [-1, 1].
- :func:`gaussian_params`: exact mean and covariance of the ``gaussian`` data set.
- :func:`toy2d`: 2-D point sets (circle, mixture of Gaussians).
"""

from .builtin import PHOTOGRAPHS
from .registry import DATASETS, load
from .synthetic import gaussian_params, toy2d

__all__ = [
    "DATASETS",
    "PHOTOGRAPHS",
    "gaussian_params",
    "load",
    "toy2d",
]
