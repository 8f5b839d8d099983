"""The five trainers' settings, each field declared once with its command-line help (issue 22).

:class:`TrainerConfig` holds what every trainer has (``steps``, ``seed``, ``checkpoint_every``) and the one
validation rule set; :class:`DataTrainerConfig` adds what every trainer on public images has (``data``, ``split``,
``resolution``, ``channels``, ``root``, ``batch_size``, ``lr``). Each trainer's config states only its own
fields, its defaults where they differ, and its own rules:

* :class:`PriorConfig` — ``gradleak train-prior`` (:mod:`gradleak.priors.train`, a DCGAN prior);
* :class:`EnhancerConfig` — ``gradleak train-enhancer`` (:mod:`gradleak.nets.enhancer`, ROG's U-Net);
* :class:`AutoencoderConfig` — ``gradleak train-autoencoder`` (:mod:`gradleak.nets.autoencoder`);
* :class:`TaggerConfig` — ``gradleak train-tagger`` (:mod:`gradleak.nets.tagger`);
* :class:`GIMLConfig` — ``gradleak giml`` (:mod:`gradleak.giml.meta`, Algorithm 2).

The commands' options are generated from these fields (:func:`gradleak.cli_train.trainer_command`): a field's
``--flag``, default and help are written here and nowhere else. A bad value is one line naming the setting and
its flag, e.g. ``train-tagger.lr (--lr): got nan; allowed: a finite number > 0``. No torch here: ``gradleak
--help`` reads this module.
"""
import math
from dataclasses import dataclass, field, fields
from typing import ClassVar, Optional

from gradleak.errors import bad_value

CHECKPOINT_HELP = ("Write the resume checkpoint (OUT/checkpoint.*) every N steps; Ctrl-C also writes it. Rerun the "
                   "same command to resume.")


def setting(default, help: str = "", flag: Optional[str] = None, cli: bool = True, required: bool = False):
    """A config field with its command-line form: ``help``; ``flag`` (default ``--name-with-dashes``, or
    ``--on/--off`` for a boolean); ``cli=False`` keeps it off the command line; ``required``: the command
    line must give it (the Python default stays)."""
    return field(default=default, metadata={"help": help, "flag": flag, "cli": cli, "required": required})


@dataclass
class TrainerConfig:
    """What every trainer has. ``command``: the CLI command (and the error-message prefix); ``HELP``: a
    trainer's own wording of an inherited field's help."""

    command: ClassVar[str] = ""
    HELP: ClassVar[dict] = {}

    steps: int = setting(2000, "Training steps.")
    seed: int = setting(0, "Initialisation and batch order.")
    checkpoint_every: int = setting(100, CHECKPOINT_HELP)

    def rules(self) -> list:
        """(field, ok, what is allowed) for every value this trainer refuses; subclasses extend."""
        return [("steps", self.steps >= 1, "an integer >= 1"),
                ("checkpoint_every", self.checkpoint_every >= 1, "an integer >= 1")]

    def check(self) -> None:
        """One-line errors for values no training run can use (before any data is read or file written)."""
        for key, ok, allowed in self.rules():
            value = getattr(self, key)
            bad_type = isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value))
            if bad_type or not ok:
                raise bad_value(self.key(key), value, allowed)

    @classmethod
    def key(cls, name: str) -> str:
        """How an error names a field: ``<command>.<field> (--<flag>)``."""
        return f"{cls.command}.{name} (--{name.replace('_', '-')})"

    @classmethod
    def meta(cls, name: str) -> dict:
        """The command-line form of field ``name`` (:func:`setting`), from the class that declared it with one (a
        trainer that only changes a default keeps its base's)."""
        for klass in cls.__mro__:
            for f in fields(klass) if "__dataclass_fields__" in vars(klass) else ():
                if f.name == name and f.metadata:
                    return dict(f.metadata)
        return {"help": "", "flag": None, "cli": True, "required": False}

    @classmethod
    def help(cls, name: str) -> str:
        return cls.HELP.get(name, cls.meta(name)["help"])


@dataclass
class DataTrainerConfig(TrainerConfig):
    """What every trainer on a public image set has. ``what``: the trained network, for the ``--data`` help."""

    what: ClassVar[str] = "network"

    data: str = setting("digits", required=True)
    split: str = setting("public", "Dataset split to train on (public = not the victim's).")
    resolution: int = setting(32, "Image size.")
    channels: int = setting(3, "1 or 3.")
    root: Optional[str] = setting(None, "Data root (cifar10/100, folder).")
    batch_size: int = setting(64, "Images per training step.")
    lr: float = setting(2e-4, "Adam learning rate (cosine decay).")

    def rules(self) -> list:
        return super().rules() + [("batch_size", self.batch_size >= 1, "an integer >= 1"),
                                  ("lr", math.isfinite(self.lr) and self.lr > 0, "a finite number > 0")]

    @classmethod
    def help(cls, name: str) -> str:
        if name == "data" and name not in cls.HELP:
            return f"Dataset whose public side the {cls.what} learns (digits, photos, cifar10, folder, ...)."
        return super().help(name)


GAN_LR = "Adam learning rate of both nets (betas 0.5, 0.999)."


@dataclass
class PriorConfig(DataTrainerConfig):
    """``train-prior``: a DCGAN generative prior (and its discriminator) on the public side."""

    command: ClassVar[str] = "train-prior"
    what: ClassVar[str] = "prior"
    HELP: ClassVar[dict] = {
        "split": "Dataset split to train on (public = the prior-training side).", "resolution": "32 or 64.",
        "steps": "Total training steps (resume continues up to this).", "lr": GAN_LR,
        "seed": "Initialisation, batch order, z and augmentation.",
        "checkpoint_every": "Write the resume checkpoint every N steps."}

    steps: int = 3000
    checkpoint_every: int = 500
    latent_dim: int = setting(64, "Size of z.")
    width: int = setting(32, "Base width w of the DCGAN (generator widths 4w, 2w, w at 32x32).")
    conditional: bool = setting(False, "Label-conditioned generator.", "--conditional/--unconditional")
    augment: bool = setting(True, "Random translation of real and fake images before D (DiffAugment).",
                            "--augment/--no-augment")
    sample_every: int = setting(500, "Write samples/step_N.png every N steps (0: only first/last).")

    def rules(self) -> list:
        by_key = dict((k, (k, ok, a)) for k, ok, a in super().rules())
        by_key["steps"] = ("steps", 0 <= self.steps <= 10_000_000, "an integer in 0..10000000")
        by_key["checkpoint_every"] = ("checkpoint_every", self.checkpoint_every >= 0,
                                      "an integer >= 0 (0: at the end only)")
        return list(by_key.values()) + [
            ("latent_dim", self.latent_dim >= 1, "an integer >= 1"), ("width", self.width >= 1, "an integer >= 1"),
            ("sample_every", self.sample_every >= 0, "an integer >= 0 (0: first and last step only)")]


@dataclass
class EnhancerConfig(DataTrainerConfig):
    """``train-enhancer``: ROG's enhancement network (U-Net + PatchGAN, L1 + adversarial) on degraded public
    images."""

    command: ClassVar[str] = "train-enhancer"
    what: ClassVar[str] = "enhancer"
    HELP: ClassVar[dict] = {"resolution": "Training image size (a multiple of 2^depth).", "lr": GAN_LR,
                            "seed": "Initialisation, batches, degradations."}

    data: str = setting("photos", required=True)
    resolution: int = 64
    batch_size: int = 16
    width: int = setting(16, "U-Net base width (encoder widths w, 2w, 4w, 4w, 4w).")
    depth: int = setting(4, "Number of 2x downsamplings in the U-Net (ROG: 4).")
    disc_width: int = setting(16, "PatchGAN discriminator base width.")
    conditional: bool = setting(False, "Label-conditional enhancer.", "--conditional/--unconditional")
    adv_weight: float = setting(0.001, "Weight of the adversarial loss (L1 has weight 1; 0 = L1 only).")
    crops: bool = setting(True, "Half of each batch: random crops of the images loaded at twice the resolution.",
                          "--crops/--no-crops")
    max_noise: float = setting(0.3, "Largest Gaussian noise sigma of the synthetic degradation.")
    max_blur: float = setting(1.0, "Largest Gaussian blur sigma (pixels) of the synthetic degradation.")
    rog_pairs: int = setting(0, "Also train on ROG outputs of this many public batches (0 = synthetic degradations "
                                "only).")
    rog_iterations: int = setting(100, "ROG iterations per generated batch.")
    rog_batch: int = setting(8, cli=False)  # images per generated ROG batch

    def rules(self) -> list:
        return super().rules() + [
            ("width", self.width >= 1, "an integer >= 1"), ("depth", 1 <= self.depth <= 6, "an integer in 1..6"),
            ("disc_width", self.disc_width >= 1, "an integer >= 1"),
            ("adv_weight", self.adv_weight >= 0, "a finite number >= 0"),
            ("max_noise", self.max_noise >= 0, "a finite number >= 0"),
            ("max_blur", self.max_blur >= 0, "a finite number >= 0"), ("rog_pairs", self.rog_pairs >= 0, "an integer >= 0"),
            ("rog_iterations", self.rog_iterations >= 1, "an integer >= 1"),
            ("rog_batch", self.rog_batch >= 1, "an integer >= 1")]

    def check(self) -> None:
        super().check()
        if self.resolution % 2 ** self.depth:
            raise bad_value("train-enhancer.resolution", self.resolution, f"a multiple of 2^depth = {2 ** self.depth}")


@dataclass
class AutoencoderConfig(DataTrainerConfig):
    """``train-autoencoder``: the autoencoder of ROG's learned low-dimensional representation."""

    command: ClassVar[str] = "train-autoencoder"
    what: ClassVar[str] = "autoencoder"
    HELP: ClassVar[dict] = {"resolution": "Training image size."}

    data: str = setting("photos", required=True)
    resolution: int = 64
    batch_size: int = 32
    lr: float = 1e-3
    latent_dim: int = setting(768, "d_z: a multiple of (resolution/downsample)^2.")
    downsample: int = setting(4, "Spatial reduction of the latent (power of two).")
    width: int = setting(32, "Convolution width.")

    def rules(self) -> list:
        return super().rules() + [("width", self.width >= 1, "an integer >= 1")]


@dataclass
class TaggerConfig(DataTrainerConfig):
    """``train-tagger``: the semantic tagger (classes + public-data attribute tags) behind the Jaccard metric."""

    command: ClassVar[str] = "train-tagger"
    what: ClassVar[str] = "tagger"
    HELP: ClassVar[dict] = {"seed": "Initialisation, hold-out draw, batches."}

    channels: int = 1
    steps: int = 1500
    lr: float = 2e-3
    width: int = setting(16, "CNN base width (stages w, 2w, 4w).")
    holdout: float = setting(0.1, "Fraction of the split held out to measure the tagger.")

    def rules(self) -> list:
        return super().rules() + [("holdout", 0 <= self.holdout < 1, "a fraction in [0, 1)")]


@dataclass
class GIMLConfig(TrainerConfig):
    """Algorithm 2's symbols, with the paper's meaning, plus the generator and bookkeeping."""

    command: ClassVar[str] = "giml"
    HELP: ClassVar[dict] = {"steps": "Outer GIML steps (resume continues up to this).",
                            "seed": "Initial w, task sampling, latent initialisation.",
                            "checkpoint_every": "K: checkpoint, generator snapshot and sample grid every K steps."}

    steps: int = 100  # outer iterations of "while not done"
    checkpoint_every: int = 10  # K
    tasks_per_step: int = setting(4, "N: tasks sampled per step.")
    tau: int = setting(5, "tau: meta gradient steps on w' per outer step.")  # τ
    lam: float = setting(1e-3, "lambda: weight of sum_j ||z_j|| in the latent search.", "--lambda")  # λ
    alpha: float = setting(0.1, "alpha: step size of the meta gradient descent.")  # α (line 9)
    beta: float = setting(0.5, "beta: w <- (1-beta) w + beta w'.")  # β (line 11)
    latent_iterations: int = setting(50, "Iterations of each latent search (Adam).")
    lr_z: float = setting(3e-2, "Latent-search learning rate.")
    tv: float = setting(1e-4, "TV weight in the cost c.")
    distance: str = setting("auto", "Gradient distance d: cosine, l2, masked_cosine, tanh_sign, auto.")
    prior: Optional[str] = setting(None, "Start from this DCGAN prior (default: an untrained generator).")
    latent_dim: int = setting(64, "Untrained generator: size of z.")
    width: int = setting(16, "Untrained generator: DCGAN base width.")
    samples: int = setting(8, cli=False)  # fixed latents in the sample grids

    @classmethod
    def key(cls, name: str) -> str:
        return f"giml.{name}"

    def rules(self) -> list:
        by_key = dict((k, (k, ok, a)) for k, ok, a in super().rules())
        by_key["steps"] = ("steps", 0 <= self.steps <= 10_000_000, "an integer in 0..10000000")
        return list(by_key.values()) + [
            ("tasks_per_step", self.tasks_per_step >= 1, "an integer >= 1"), ("tau", self.tau >= 0, "an integer >= 0"),
            ("lam", self.lam >= 0, "a number >= 0"), ("alpha", self.alpha > 0, "a number > 0"),
            ("beta", 0 <= self.beta <= 1, "a number in [0, 1]"),
            ("latent_iterations", 0 <= self.latent_iterations <= 10_000_000, "an integer in 0..10000000"),
            ("lr_z", self.lr_z > 0, "a number > 0"), ("tv", self.tv >= 0, "a number >= 0"),
            ("samples", self.samples >= 1, "an integer >= 1")]



def cli_fields(cls) -> list:
    """The fields of a trainer config that are command-line options, in declaration order."""
    return [f for f in fields(cls) if cls.meta(f.name)["cli"]]
