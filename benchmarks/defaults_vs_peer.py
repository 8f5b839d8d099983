"""gradleak's search-attack defaults against the peer tool breaching, on real photographs (issue 27).

Side by side on the same private batch (same images, same labels given to both), the same victim module and
weights (built once in torch; breaching gets the identical module, its parameters and BN buffers), the same
client computation (FedSGD gradient, or FedAvg τ SGD steps on the whole batch, BN in eval mode, the client
normalising its input with the CIFAR-10 mean/std), one restart, one torch thread:

* ``gl-old``   gradleak ``invertgrad`` with the defaults before this validation (TV 1e-4, lr 0.025);
* ``gl``       gradleak ``invertgrad`` with the defaults now in the code;
* ``peer``     breaching 0.1.2's own ``attack=invertinggradients`` config, read from the installed package
               (cosine, signed Adam lr 0.1 in normalised space, step-lr, box, TV 0.2), ``max_iterations``
               set to the same iteration count (its default is 24,000);
* ``gl-rog-paper`` gradleak ``rog`` as before issue 27 (the paper's 100 iterations, no TV; ``enhancer: auto``
               then chose ``photos64`` for any RGB images);
* ``gl:KEY=V/KEY=V``  any gradleak preset with options (``gl:attack=dlg/iterations=300``; tuning grids);
* ``peer:KEY=V/...``  breaching's InvertGrad config with overrides (``peer:regularization.total_variation.scale=0.5``);
* ``peer@NAME``, ``peer@NAME:KEY=V/...``  another of breaching's attack configs (``config/attack/NAME.yaml``),
               e.g. ``peer@deepleakage`` (DLG: L-BFGS lr 1, Euclidean, no prior, 1,200 steps by default), with
               ``max_iterations`` set to the same count. Labels are given to both tools, so a config of breaching's
               ``joint-optimization`` type (deepleakage: data and soft labels optimised together, which breaching
               refuses when labels are given) runs as ``attack_type=optimization`` — breaching's own advice in
               that refusal; everything else of the config (optimiser, objective, init, box) is kept.

``--defense NAME:KEY=V/...`` (repeatable; a gradleak defense, ``gradleak.defenses``, e.g. ``quantize:bits=4``,
``topk:sparsity=0.9``) is applied in the capture (:func:`gradleak.case.capture`, seeded); both tools get the
identical obfuscated upload (breaching receives ``obs.update``). gradleak's attacks are told the defense
(``Observation.defenses``), as the audit is; breaching's are not (it has no such input).

For an attack with post-processing steps (ROG: the enhancer), the row also holds the score of the search's own
output (``raw_psnr``, ``raw_ssim``). ``gl:attack=rog`` and the GIAS presets keep their own iteration counts
unless ``iterations=`` is given.

breaching sees the candidate in the client's normalised input space, as its users do; gradleak sees
[0, 1] images and the normalisation inside the client (``Protocol.mean/std``) — the victim's arithmetic is the
same. breaching's FedAvg upload is θ_τ − θ_0 (gradleak's is θ_0 − θ_τ; the sign is flipped for it).

Every cell is scored with :func:`gradleak.metrics.score_images` (matched to the originals) next to the
references of :func:`gradleak.metrics.reference.reference_scores`: the grey image and the mean of the other
images of the folder (the "public mean"); ``ref`` is the better of the two per image.

Images (``--images DIR``): a folder of images or of class subfolders, read by gradleak's folder reader
(centre square crop, bilinear resize); batch k is images k·B … k·B+B−1 in sorted order, labels 0 … B−1
(distinct; given to both tools). ``prepare`` builds the folders used in docs/defaults.md from two
packages outside gradleak's built-in data (see ``prepare``'s help).

    python benchmarks/defaults_vs_peer.py prepare [--cache ~/.cache/gradleak/peer-bench]
    python benchmarks/defaults_vs_peer.py run --images DIR --victim convnet --batch 4 --protocol fedsgd \
        --iterations 500 --batches 2 --methods gl-old,peer,gl [--out rows.jsonl]
    python benchmarks/defaults_vs_peer.py summary rows.jsonl [...]
    python benchmarks/defaults_vs_peer.py tv-share --images DIR [--victims lenet,convnet]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

from _common import ROOT, positive_int  # noqa: F401  (puts src/ on sys.path)

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # breaching's CIFAR-10 case
NUM_CLASSES = 10
OLD_DEFAULTS = {"tv": 1e-4, "lr": 0.025}  # gradleak invertgrad before issue 27
VICTIMS = {  # name -> (registry name, options, resolution)
    "lenet": ("lenet", {}, 32),
    "convnet": ("convnet", {"width": 16}, 32),
    "resnet18": ("resnet18", {"width": 8}, 64),
    "lenet64": ("lenet", {}, 64),  # DLG's LeNet on 64 px images (ROG's enhancer check at its training resolution)
}
DEFAULT_CACHE = Path(os.environ.get("GRADLEAK_PEER_CACHE", "~/.cache/gradleak/peer-bench")).expanduser()


# ------------------------------------------------------------------------------------------------ images
def prepare(cache: Path) -> None:
    """Download (pip / apt-get, the package registries) and crop the photographs into ``cache``.

    * ``foolbox==3.3.4`` wheel, ``foolbox/data``: 20 ImageNet samples (512², ``imagenet_*.jpg``) → folders
      ``fb-imagenet-32``, ``fb-imagenet-64``; 20 CIFAR-10 samples (32², ``cifar10_*.png``) → ``fb-cifar10-32``.
    * Debian ``endless-sky-data``, ``/usr/share/games/endless-sky/images/land/``: 273 landscape and city
      photographs (720×360) → ``es-land-32``, ``es-land-64``.
    Writes PNGs (centre square crop, bilinear) and ``PROVENANCE.txt``."""
    import subprocess
    import zipfile

    from PIL import Image

    raw = cache / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    wheel = next(raw.glob("foolbox-3.3.4-*.whl"), None)
    if wheel is None:
        subprocess.run([sys.executable, "-m", "pip", "download", "foolbox==3.3.4", "--no-deps", "-d", str(raw)],
                       check=True)
        wheel = next(raw.glob("foolbox-3.3.4-*.whl"))
    deb = next(raw.glob("endless-sky-data_*.deb"), None)
    if deb is None:
        subprocess.run(["apt-get", "download", "endless-sky-data"], cwd=raw, check=True)
        deb = next(raw.glob("endless-sky-data_*.deb"))
    es = raw / "es"
    if not es.is_dir():
        subprocess.run(["dpkg-deb", "-x", str(deb), str(es)], check=True)
    sources: dict[str, list[tuple[str, object]]] = {"fb-imagenet": [], "fb-cifar10": [], "es-land": []}
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(z.namelist()):
            base = name.rsplit("/", 1)[-1]
            if name.startswith("foolbox/data/imagenet_"):
                sources["fb-imagenet"].append((base, lambda n=name: Image.open(z.open(n)).convert("RGB").copy()))
            elif name.startswith("foolbox/data/cifar10_"):
                sources["fb-cifar10"].append((base, lambda n=name: Image.open(z.open(n)).convert("RGB").copy()))
        land = sorted((es / "usr/share/games/endless-sky/images/land").glob("*.jpg"))
        sources["es-land"] = [(p.name, lambda p=p: Image.open(p).convert("RGB")) for p in land]
        for src, items in sources.items():
            for res in ((32,) if src == "fb-cifar10" else (32, 64)):
                out = cache / f"{src}-{res}"
                out.mkdir(exist_ok=True)
                for name, load in items:
                    img = load()
                    w, h = img.size
                    s = min(w, h)
                    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                    img.resize((res, res), Image.Resampling.BILINEAR).save(out / (Path(name).stem + ".png"))
                print(f"{out}: {len(items)} images")
    (cache / "PROVENANCE.txt").write_text(
        f"fb-*: {wheel.name} (PyPI), foolbox/data/imagenet_*.jpg (20, 512x512) and cifar10_*.png (20, 32x32)\n"
        f"es-land-*: {deb.name} (Debian), usr/share/games/endless-sky/images/land/*.jpg (273, 720x360)\n"
        "all: centre square crop, bilinear resize (PIL), PNG\n")


def load_images(folder: Path, resolution: int):
    """All images of ``folder`` (flat or class subfolders), sorted, as N x 3 x R x R in [0, 1]."""
    import torch

    from gradleak.data.folder import is_image, read_image

    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image(p))
    if not files:
        raise SystemExit(f"error: --images: got {str(folder)!r}; allowed: a folder of images")
    return torch.stack([read_image(p, resolution, 3) for p in files])


# ------------------------------------------------------------------------------------------------ the case
def _value(text: str):
    """A JSON value (number, list, true/false/null) or else the string itself (``line_search=none``)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_defenses(texts: list[str] | None) -> list[dict]:
    """``["quantize:bits=4", "topk:sparsity=0.9"]`` → ``[{"name": "quantize", "bits": 4}, ...]``."""
    out = []
    for text in texts or []:
        name, _, rest = text.partition(":")
        spec: dict = {"name": name}
        for kv in filter(None, rest.split("/")):
            k, _, v = kv.partition("=")
            spec[k] = _value(v)
        out.append(spec)
    return out


def batch_references(images, x, index: int, batch: int) -> dict:
    """Mean scores of the references for batch ``index`` (images ``x``): the grey image, and per image the better
    of grey and the mean of the folder's other images (:func:`gradleak.metrics.reference.reference_scores`)."""
    import torch

    from gradleak.metrics.reference import reference_scores

    rest = torch.cat([images[:index * batch], images[(index + 1) * batch:]])
    refs = reference_scores(x, rest)
    others = refs.get("public_mean", refs["grey"])  # the folder's other images (none: grey only)
    grey = refs["grey"]
    return {"grey_psnr": statistics.mean(grey["psnr"]), "grey_ssim": statistics.mean(grey["ssim"]),
            "ref_psnr": statistics.mean(max(g, p) for g, p in zip(grey["psnr"], others["psnr"])),
            "ref_ssim": statistics.mean(max(g, p) for g, p in zip(grey["ssim"], others["ssim"]))}


def build_case(victim: str, images, batch: int, index: int, protocol: str, steps: int, seed: int,
               defenses: list[dict] | None = None):
    import torch

    import gradleak as gl
    from gradleak.models import build_model, init_model

    name, opts, res = VICTIMS[victim]
    x = images[index * batch:(index + 1) * batch].clone()
    y = torch.arange(batch) % NUM_CLASSES
    model = init_model(build_model(name, NUM_CLASSES, 3, res, **opts), seed)
    proto = gl.Protocol(kind=protocol, local_steps=steps if protocol == "fedavg" else 1, lr=0.1,
                        bn_mode="eval", mean=CIFAR_MEAN, std=CIFAR_STD)
    from gradleak.defenses.base import build_defenses

    case = gl.Case(model, x, y, proto, build_defenses(defenses or []), model.gradleak_spec, give_labels=True)
    return model, x, y, gl.capture(case, seed=seed)


def run_gradleak(spec: dict, model, obs, seed: int):
    from gradleak.attacks.presets import build_attack

    spec = dict(spec)
    attack = build_attack(spec.pop("attack", "invertgrad"), **spec)
    rec = attack(obs, labels=obs.labels, seed=seed, model=model, progress=False)
    from gradleak.attacks.rog import PostSteps

    post = rec.get(PostSteps)
    raw = post.steps["raw"] if post is not None and len(post.steps) > 1 else None
    return rec.images, rec.seconds, rec.iterations, raw


def peer_config(iterations: int, overrides: dict | None = None, name: str = "invertinggradients"):
    import _peer_shim  # noqa: F401  (before breaching/torchvision)
    import logging

    import breaching

    logging.getLogger("breaching").setLevel(logging.WARNING)
    cfg = breaching.get_attack_config(name)
    cfg.optim.max_iterations = iterations
    if cfg.attack_type == "joint-optimization":  # labels are given (breaching refuses joint with labels)
        cfg.attack_type = "optimization"
    cfg.optim.callback = 10 ** 9
    for k, v in (overrides or {}).items():
        node, key = cfg, k.split(".")
        for part in key[:-1]:
            node = node[part]
        node[key[-1]] = v
    return cfg


def run_peer(iterations: int, model, obs, x, y, protocol: str, seed: int, overrides: dict | None = None):
    import contextlib
    import io

    import torch
    from omegaconf import OmegaConf

    overrides = dict(overrides or {})
    cfg = peer_config(iterations, overrides, overrides.pop("_config", "invertinggradients"))
    from breaching.attacks import prepare_attack

    names = [n for n, _ in model.named_parameters()]
    params = [obs.parameters[n].clone() for n in names]
    buffers = [obs.buffers[n].clone() for n, _ in model.named_buffers()]
    sign = -1.0 if protocol == "fedavg" else 1.0  # breaching: θ_τ − θ_0; gradleak: θ_0 − θ_τ
    grads = [sign * obs.update[n].clone() for n in names]
    meta = OmegaConf.create({"shape": list(x.shape[1:]), "mean": list(CIFAR_MEAN), "std": list(CIFAR_STD),
                             "modality": "vision"})
    hyper = None
    if protocol == "fedavg":
        hyper = {"lr": obs.protocol.lr, "steps": obs.protocol.local_steps, "data_per_step": x.shape[0],
                 "labels": [y.clone() for _ in range(obs.protocol.local_steps)]}
    shared = [{"gradients": grads, "buffers": None,
               "metadata": {"num_data_points": x.shape[0], "labels": y.clone(), "local_hyperparams": hyper}}]
    payload = [{"parameters": params, "buffers": buffers, "metadata": meta}]
    attacker = prepare_attack(model, torch.nn.CrossEntropyLoss(), cfg, dict(dtype=torch.float, device=torch.device("cpu")))
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        out, _ = attacker.reconstruct(payload, shared, {}, dryrun=False)
    seconds = time.perf_counter() - t0
    m = torch.tensor(CIFAR_MEAN)[None, :, None, None]
    s = torch.tensor(CIFAR_STD)[None, :, None, None]
    return (out["data"] * s + m).clamp(0, 1), seconds, iterations, None


def parse_method(text: str, iterations: int) -> tuple[str, dict]:
    if text == "gl-old":
        return "gl", {"attack": "invertgrad", "iterations": iterations, **OLD_DEFAULTS}
    if text == "gl":
        return "gl", {"attack": "invertgrad", "iterations": iterations}
    if text == "gl-rog-paper":  # ROG before issue 27 = the paper's search; auto enhancer picked photos64 for RGB
        return "gl", {"attack": "rog", "iterations": 100, "lr": 0.05, "tv": 0.0, "enhancer": "photos64"}
    if text == "peer":
        return "peer", {}
    kind, _, rest = text.partition(":")
    config = None
    if kind.startswith("peer@") and kind[5:]:
        kind, config = "peer", kind[5:]
    if kind not in ("gl", "peer") or not (rest or config):
        raise SystemExit(f"error: --methods: got {text!r}; allowed: gl-old, gl, peer, gl:KEY=V/KEY=V..., peer:KEY=V/..., "
                         "peer@CONFIG, peer@CONFIG:KEY=V/...")
    opts: dict = {} if config is None else {"_config": config}
    for kv in filter(None, rest.split("/")):
        k, _, v = kv.partition("=")
        opts[k] = _value(v)
    if kind == "gl":
        opts.setdefault("attack", "invertgrad")
        if opts["attack"] not in ("gi-z", "gi-w", "gi-zw", "gi-zx", "rog"):  # these keep their own schedules
            opts.setdefault("iterations", iterations)
    return kind, opts


def run(args) -> list[dict]:
    import torch

    from gradleak.metrics import score_images

    torch.set_num_threads(args.threads)
    _, _, res = VICTIMS[args.victim]
    images = load_images(Path(args.images).expanduser(), res)
    methods = [(m, *parse_method(m, args.iterations)) for m in args.methods.split(",")]
    defenses = parse_defenses(args.defense)
    defense = "+".join(args.defense or []) or "none"
    rows = []
    for k in range(args.first, args.first + args.batches):
        if (k + 1) * args.batch > images.shape[0]:
            break
        seed = k
        model, x, y, obs = build_case(args.victim, images, args.batch, k, args.protocol, args.steps, seed,
                                      defenses)
        refs = batch_references(images, x, k, args.batch)
        for label, kind, spec in methods:  # interleaved: every method on this batch before the next batch
            if kind == "gl":
                rec, sec, its, raw = run_gradleak(spec, model, obs, seed)
            else:
                rec, sec, its, raw = run_peer(args.iterations, model, obs, x, y, args.protocol, seed, spec)
            s = score_images(rec, x)
            row = {"images": str(args.images), "victim": args.victim, "batch": args.batch, "protocol": args.protocol,
                   "steps": args.steps if args.protocol == "fedavg" else 1, "index": k, "method": label,
                   "defense": defense, "budget": args.iterations,
                   "iterations": its, "seconds": sec, "threads": args.threads, "load": os.getloadavg()[0],
                   "psnr": s["psnr"]["mean"], "ssim": s["ssim"]["mean"],
                   **refs}
            if raw is not None:
                sr = score_images(raw, x)
                row.update(raw_psnr=sr["psnr"]["mean"], raw_ssim=sr["ssim"]["mean"])
            rows.append(row)
            extra = f" raw {row['raw_psnr']:.2f}" if raw is not None else ""
            print(f"  {args.victim} B{args.batch} {args.protocol} {defense} #{k} {label:<28} PSNR {row['psnr']:6.2f}{extra} "
                  f"SSIM {row['ssim']:.3f}  ({row['seconds']:6.1f} s; grey {row['grey_psnr']:.2f}, "
                  f"ref {row['ref_psnr']:.2f} dB)", flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    return rows


def summarise(rows: list[dict]) -> None:
    """One Markdown row per (cell, method): means over the batches that every method of the cell ran (paired),
    or, where the methods share no batch (tuning grids run in pieces), over each method's own batches (listed)."""
    cells: dict[tuple, dict[str, dict[int, dict]]] = {}
    for r in rows:
        cell = (Path(r["images"]).name, r["victim"], r["batch"], r["protocol"], r["steps"],
                r.get("budget", r["iterations"]), r.get("defense", "none"))
        cells.setdefault(cell, {}).setdefault(r["method"], {})[r["index"]] = r
    print("| images | victim | B | protocol | defense | iters | method | batches | PSNR | SSIM | s | grey PSNR / SSIM | "
          "ref PSNR / SSIM |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (im, v, b, p, steps, its, defense), methods in cells.items():
        common = set.intersection(*(set(m) for m in methods.values()))
        for name, by_index in methods.items():
            rs = [by_index[i] for i in sorted(common or by_index)]
            mean = lambda key: statistics.mean(r[key] for r in rs)  # noqa: E731
            proto = p if p == "fedsgd" else f"fedavg τ={steps}"
            idx = ",".join(str(r["index"]) for r in rs)
            own = {r["iterations"] for r in rs}
            label = name if own == {its} else f"{name} ({'/'.join(map(str, sorted(own)))} it.)"
            raw = (f" (raw {mean('raw_psnr'):.2f} / {mean('raw_ssim'):.3f})"
                   if all("raw_psnr" in r for r in rs) else "")
            print(f"| {im} | {v} | {b} | {proto} | {defense} | {its} | {label} | {idx} | {mean('psnr'):.2f}{raw} | "
                  f"{mean('ssim'):.3f} | {mean('seconds'):.1f} | {mean('grey_psnr'):.2f} / {mean('grey_ssim'):.3f} | "
                  f"{mean('ref_psnr'):.2f} / {mean('ref_ssim'):.3f} |")


def tv_share(args) -> None:
    """Per victim and TV weight λ: the share of pixels where the gradient-matching term's image gradient is larger
    than λ times TV's — under signed Adam the others follow TV's sign alone (docs/defaults.md, caveat)."""
    import torch

    from gradleak.attacks.objectives import cosine_distance, total_variation
    from gradleak.fl.client import client_update

    torch.set_num_threads(args.threads)
    for victim in args.victims.split(","):
        images = load_images(Path(args.images).expanduser(), VICTIMS[victim][2])
        model, x, y, obs = build_case(victim, images, args.batch, args.first, "fedsgd", 1, args.first)
        names = list(obs.update)
        g = torch.Generator().manual_seed(0)
        starts = {"random start": torch.randn(x.shape, generator=g).clamp(0, 1),
                  "truth + noise 0.1": (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)}
        for where, v in starts.items():
            v = v.clone().requires_grad_(True)
            up = client_update(model, obs.parameters, obs.buffers, v, y, obs.protocol, create_graph=True)
            (gd,) = torch.autograd.grad(cosine_distance([up[n][None] for n in names],
                                                        [obs.update[n] for n in names]).sum(), v)
            w = v.detach()[None].clone().requires_grad_(True)
            (gt,) = torch.autograd.grad(total_variation(w).sum(), w)
            shares = [f"λ={lam:g}: {float((gd.abs() > lam * gt[0].abs()).float().mean()):.2f}"
                      for lam in (1e-4, 1e-2, 0.1, 0.5)]
            print(f"{victim} B{args.batch} batch {args.first}, {where}: " + ", ".join(shares))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help=prepare.__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    r = sub.add_parser("run")
    r.add_argument("--images", required=True)
    r.add_argument("--victim", choices=list(VICTIMS), default="convnet")
    r.add_argument("--batch", type=positive_int, default=4)
    r.add_argument("--protocol", choices=["fedsgd", "fedavg"], default="fedsgd")
    r.add_argument("--steps", type=positive_int, default=5, help="FedAvg local steps τ (lr 0.1, whole batch)")
    r.add_argument("--iterations", type=positive_int, default=500)
    r.add_argument("--batches", type=positive_int, default=2)
    r.add_argument("--first", type=int, default=0)
    r.add_argument("--methods", default="gl-old,peer,gl")
    r.add_argument("--threads", type=positive_int, default=1)
    r.add_argument("--defense", action="append", help="gradleak defense NAME:KEY=V/... applied in the capture "
                   "(repeatable: a chain), e.g. quantize:bits=4, topk:sparsity=0.9")
    r.add_argument("--out", help="append one JSON line per cell")
    t = sub.add_parser("tv-share", help=tv_share.__doc__.splitlines()[0])
    t.add_argument("--images", required=True)
    t.add_argument("--victims", default="lenet,convnet")
    t.add_argument("--batch", type=positive_int, default=4)
    t.add_argument("--first", type=int, default=10)
    t.add_argument("--threads", type=positive_int, default=1)
    s = sub.add_parser("summary")
    s.add_argument("jsonl", nargs="+")
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(args.cache.expanduser())
    elif args.cmd == "run":
        summarise(run(args))
    elif args.cmd == "tv-share":
        tv_share(args)
    else:
        summarise([json.loads(line) for f in args.jsonl for line in open(f) if line.strip()])


if __name__ == "__main__":
    main()
