"""Image encoders for feature-space metrics, and resumable feature extraction.

- :class:`Encoder`: images ``[B, C, H, W]`` in [-1, 1] → features ``[B, F]`` float32,
  preprocessing owned by the encoder.
- :func:`load_encoder` / :data:`ENCODERS`: ``"pixel"``, ``"inception:FILE"``,
  ``"dinov2:DIR"``, ``"clip:DIR"``, ``"torchscript:FILE"`` (``trust_code=True``), or any
  module / callable; local weights only, nothing is downloaded.
- :func:`extract`: features of a tensor, file or image folder, in batches, into a
  ``.npy`` cache that resumes after a kill and refuses a stale one.
- :class:`InceptionV3`: the Inception-v3 trunk with torchvision's parameter names.
"""

from .base import Encoder, NetworkEncoder, Preprocess, check_images, wrap
from .extract import extract, read_images
from .inception import InceptionV3
from .load import ENCODERS, load_encoder

__all__ = [
    "ENCODERS",
    "Encoder",
    "InceptionV3",
    "NetworkEncoder",
    "Preprocess",
    "check_images",
    "extract",
    "load_encoder",
    "read_images",
    "wrap",
]
