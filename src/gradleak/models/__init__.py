"""Victim models for gradient-inversion audits.

Every model maps ``N x C x H x W`` float images in ``[0, 1]`` to ``N x num_classes`` logits, has
a ``classifier`` attribute pointing to its final ``nn.Linear``, avoids in-place operations (so it
works with ``torch.func.functional_call``/``vmap``) and is twice differentiable almost everywhere.

* :data:`MODELS` / :func:`build_model` -- build by name (``lenet``, ``convnet``, ``resnet18``,
  ``vgg7``) or by import path ``package.module:factory``.
* :func:`init_model` -- deterministic seeded re-initialisation.
* :func:`pretrain` -- a few deterministic SGD steps to get a "trained for N steps" victim.
* :func:`feature_layer` -- the final classifier ``nn.Linear``.
* ``precode`` (:mod:`.precode`) -- PRECODE: a base model with a variational bottleneck before its head;
  :func:`kl_loss` for training.
"""

from .convnet import ConvNet
from .lenet import LeNet
from .precode import Precode, VariationalBottleneck, kl_loss, precode_block
from .registry import MODELS, ModelFactory, build_model, feature_layer
from .resnet import BasicBlock, ResNet18
from .training import init_model, pretrain
from .vgg import VGG7

__all__ = [
    "MODELS",
    "BasicBlock",
    "ConvNet",
    "LeNet",
    "Precode",
    "VariationalBottleneck",
    "ModelFactory",
    "ResNet18",
    "VGG7",
    "build_model",
    "feature_layer",
    "init_model",
    "kl_loss",
    "precode_block",
    "pretrain",
]
