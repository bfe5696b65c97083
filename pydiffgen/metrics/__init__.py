"""Memorization and generalization metrics; none builds an M×N matrix (search is tiled).

Pixel space: ``memorization``, ``generalization_score``, similarities, PSNR. Feature space
(encoder features [N, F]): PRDC, AuthPct, C_T, FLD, FD, KID, extraction distance and copy
score, each with ``ci=`` confidence intervals (``confidence_interval``: half-sampling).
"""

from .bootstrap import Estimate, confidence_interval
from .copying import (
    CopyScore,
    Extraction,
    authpct,
    authpct_extraction,
    copy_score,
    ct_score,
    extraction_distance,
)
from .distribution import frechet_distance, kernel_distance
from .fidelity import PRDC, prdc
from .likelihood import FLD, fld
from .memorization import MemorizationReport, generalization_score, memorization
from .psnr import denoising_psnr_curve, psnr, sigma_for_psnr
from .similarity import closest_pairs_cosine, nearest_cosine, paired_cosine

__all__ = [
    "FLD",
    "PRDC",
    "CopyScore",
    "Estimate",
    "Extraction",
    "MemorizationReport",
    "authpct",
    "authpct_extraction",
    "closest_pairs_cosine",
    "confidence_interval",
    "copy_score",
    "ct_score",
    "denoising_psnr_curve",
    "extraction_distance",
    "fld",
    "frechet_distance",
    "generalization_score",
    "kernel_distance",
    "memorization",
    "nearest_cosine",
    "paired_cosine",
    "prdc",
    "psnr",
    "sigma_for_psnr",
]
