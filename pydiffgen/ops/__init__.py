"""Public ops. Each has a pure-PyTorch reference and faster backends chosen per device."""

from .blocks import bf_batchnorm_relu, groupnorm_film_silu
from .eigh import eigh
from .empirical import EmpiricalIndex, empirical_denoiser
from .knn import KnnIndex, knn
from .topk import topk_merge

__all__ = ["bf_batchnorm_relu", "eigh", "EmpiricalIndex", "empirical_denoiser",
           "groupnorm_film_silu", "KnnIndex", "knn", "topk_merge"]
