"""Public ops. Each has a pure-PyTorch reference and faster backends chosen per device."""

from .knn import knn
from .topk import topk_merge

__all__ = ["knn", "topk_merge"]
