"""Memorization and generalization metrics; none builds an M×N matrix (search is tiled)."""

from .memorization import MemorizationReport, generalization_score, memorization
from .psnr import denoising_psnr_curve, psnr, sigma_for_psnr
from .similarity import closest_pairs_cosine, nearest_cosine, paired_cosine

__all__ = [
    "MemorizationReport",
    "closest_pairs_cosine",
    "denoising_psnr_curve",
    "generalization_score",
    "memorization",
    "nearest_cosine",
    "paired_cosine",
    "psnr",
    "sigma_for_psnr",
]
