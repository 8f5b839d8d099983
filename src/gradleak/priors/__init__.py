"""Generative image priors for the GIAS attacks (Jeon et al., 2021): DCGAN generators trained here
(``gradleak train-prior``, shipped for the built-in datasets), a StyleGAN2 synthesis network that loads
rosinality-layout checkpoints, and any generator given by import path. See :mod:`gradleak.priors.prior`.
"""
from gradleak.priors.dcgan import DCGANDiscriminator, DCGANGenerator, calibrate_bn
from gradleak.priors.prior import BUILTIN_PRIORS, Prior, load_prior, match_shape
from gradleak.priors.stylegan2 import StyleGAN2Generator, StyleGAN2Latent, stylegan2_from_state_dict
from gradleak.priors.train import TrainConfig, train_prior

__all__ = ["BUILTIN_PRIORS", "DCGANDiscriminator", "DCGANGenerator", "Prior", "StyleGAN2Generator",
           "StyleGAN2Latent", "TrainConfig", "calibrate_bn", "load_prior", "match_shape", "stylegan2_from_state_dict",
           "train_prior"]
