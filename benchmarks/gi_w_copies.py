"""GI-w's per-image generator copies: one vmapped call vs a Python loop over copies (the guide's "per-image
generator copies batched rather than looped", measured).

For R restarts × B images = N copies of the shipped DCGAN prior's weights, times forward + backward of
Σ images² (the generator part of one GI-w step; the victim re-run is the same either way):
* ``vmap``: :class:`gradleak.attacks.generative.GeneratorWeights` — ``torch.vmap`` over
  ``functional_call`` with the copies stacked (R·B, *shape);
* ``loop``: one ``functional_call`` per copy, outputs stacked (what deep copies or a per-image loop cost).
Both give the same images and gradients (checked here, and in tests/test_gias.py). 1 torch thread.

    python benchmarks/gi_w_copies.py [--repeats 20]
"""
from __future__ import annotations

import argparse
import time

from _common import positive_int  # (importing _common puts this checkout's src first on sys.path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=positive_int, default=20)
    ap.add_argument("--prior", default="photos")
    args = ap.parse_args()
    import torch
    from torch.func import functional_call

    from gradleak.attacks.generative import GeneratorWeights
    from gradleak.priors.prior import load_prior

    torch.set_num_threads(1)
    prior = load_prior(args.prior)
    buffers = dict(prior.net.named_buffers())

    def loop_raw(param):
        w = param.w
        return torch.stack([functional_call(prior.net, {**{k: v[i] for k, v in w.items()}, **param.fixed, **buffers},
                                             (param.z[i:i + 1],))[0] for i in range(param.z.shape[0])])

    print(f"prior {args.prior!r}: {sum(p.numel() for p in prior.net.parameters()) / 1e3:.0f}k weights per copy, "
          f"{args.repeats} timed steps after 2 warm-up steps, 1 thread")
    print("| copies (R × B) | vmap ms / step | loop ms / step | loop / vmap |")
    print("|---|---:|---:|---:|")
    for R, B in ((1, 4), (4, 4), (4, 8)):
        param = GeneratorWeights(prior)
        variables = param.start(R, B, (3, 32, 32), None, torch.Generator().manual_seed(0))
        gv = torch.autograd.grad(param.raw().square().sum(), variables)
        gl = torch.autograd.grad(loop_raw(param).square().sum(), variables)
        for a, b in zip(gv, gl):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max()))  # float32 sums
        times = {}
        for name, fn in (("vmap", param.raw), ("loop", lambda: loop_raw(param))):
            for i in range(args.repeats + 2):
                if i == 2:
                    t0 = time.perf_counter()
                torch.autograd.grad(fn().square().sum(), variables)
            times[name] = (time.perf_counter() - t0) / args.repeats * 1e3
        print(f"| {R} × {B} = {R * B} | {times['vmap']:.1f} | {times['loop']:.1f} | {times['loop'] / times['vmap']:.1f}× |")


if __name__ == "__main__":
    main()
