"""Reconstruction-quality metrics for gradient-inversion audits.

* :mod:`.image` - per-image ``mse``, ``psnr`` (capped at 100 dB), ``ssim`` (= scikit-image).
* :mod:`.lpips` - LPIPS (AlexNet, v0.1) implemented locally; weights loaded from disk only.
* :mod:`.matching` - Hungarian matching of reconstructions to originals.
* :mod:`.score` - ``score_images``: match, then a JSON-ready summary of all metrics.
* :mod:`.reference` - reference scores (grey, public mean, random same-class image), margins over the
  best reference and the graded verdict (none / partial / recognisable).
* :mod:`.semantic` - semantic similarity (ROGS eq. 21): taggers, ``jaccard``, ``semantic_scores``;
  :mod:`.attributes` / :mod:`.tagger` - the built-in tagger's public-data attributes and training.
"""

from .image import PSNR_CAP_DB, SSIM_WIN_SIZE, mse, psnr, ssim
from . import lpips as _lpips
from .lpips import *  # noqa: F403  (the LPIPS names listed in lpips.__all__)
from .matching import MATCH_BY, apply_match, match, pairwise_cost
from .reference import VerdictRule, calibrate, margins, reference_scores, verdict
from .score import sanitize_images, score_images
from .semantic import ModelTagger, jaccard, load_tagger, semantic_scores

__all__ = [
    "mse",
    "psnr",
    "ssim",
    "PSNR_CAP_DB",
    "SSIM_WIN_SIZE",
    *_lpips.__all__,
    "MATCH_BY",
    "match",
    "apply_match",
    "pairwise_cost",
    "score_images",
    "VerdictRule",
    "calibrate",
    "margins",
    "reference_scores",
    "verdict",
    "sanitize_images",
    "ModelTagger",
    "jaccard",
    "load_tagger",
    "semantic_scores",
]
