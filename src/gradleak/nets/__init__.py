"""Trained networks that are not image priors: ROG's enhancer and autoencoder, and the semantic tagger
(with their training loops and safetensors + JSON files). Generative priors live in :mod:`gradleak.priors`."""

import torch


def val_psnr(x: "torch.Tensor", ref: "torch.Tensor") -> float:
    """Mean PSNR (dB, peak 1) of a validation batch — the training summary's number (the audit's metrics,
    with the 100 dB cap and SSIM, are :mod:`gradleak.metrics`, a layer above the networks)."""
    mse = (x.float() - ref.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())
