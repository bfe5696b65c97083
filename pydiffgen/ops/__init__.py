"""Public ops. Each has a pure-PyTorch reference and faster backends chosen per device."""

from .eigh import eigh
from .empirical import empirical_denoiser
from .knn import knn
from .topk import topk_merge

__all__ = ["eigh", "empirical_denoiser", "knn", "topk_merge"]
