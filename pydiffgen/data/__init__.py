"""Datasets for memorization/generalization studies, de-duplication and disjoint splits.

- :func:`load` / :data:`DATASETS`: built-in (digits, faces, patches), synthetic with known
  structure (gaussian, disks, calpha, ray) and user files (npy, npz, folder, cifar10), all as
  float32 ``[N, C, H, W]`` in [-1, 1].
- :func:`gaussian_params`: exact mean and covariance of the ``gaussian`` data set.
- :func:`toy2d`: 2-D point sets (circle, mixture of Gaussians).
- :func:`deduplicate`: the paper's |correlation| > 0.95 near-duplicate removal, streamed.
- :func:`disjoint_split`: two non-overlapping training sets S1, S2.
"""

from .builtin import PHOTOGRAPHS
from .dedup import correlation_features, deduplicate
from .registry import DATASETS, load
from .splits import disjoint_split
from .synthetic import gaussian_params, render_disks, toy2d

__all__ = [
    "DATASETS",
    "PHOTOGRAPHS",
    "correlation_features",
    "deduplicate",
    "disjoint_split",
    "gaussian_params",
    "load",
    "render_disks",
    "toy2d",
]
