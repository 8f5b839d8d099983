"""TensorFlow.js graph models read without TensorFlow: ``model.json`` + binary weight shards.

A TF.js *graph model* (``"format": "graph-model"``, written by the ``tensorflowjs_converter``) is

* ``modelTopology.node``: the frozen TensorFlow GraphDef as JSON — every node has ``name``, ``op``,
  ``input`` (names of the nodes it reads, optionally ``name:k`` or ``^control``) and ``attr`` (strings are
  base64, e.g. ``padding``/``data_format``);
* ``weightsManifest``: groups of ``{"paths": [shard files], "weights": [{"name", "shape", "dtype"}]}``:
  the values of the graph's ``Const`` nodes, stored back to back (little-endian, C order) across the
  concatenation of the group's shards.

:func:`read_graph_model` validates and reads both (numpy only; a shard of the wrong length, a missing file,
a quantised or unknown dtype is one line, :class:`~gradleak.errors.UserError`). :func:`evaluate` is a plain
numpy interpreter of the graph, op by op with TensorFlow's semantics (NHWC), in float64 — the independent
reference that the torch conversion (:mod:`gradleak.priors.progan`) is tested against.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gradleak.errors import UserError, bad_value

DTYPES = {"float32": "<f4", "int32": "<i4"}
MODEL_FILE = "model.json"


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]
    attr: dict

    def attr_s(self, key: str, default: str = "") -> str:
        """A string attribute (base64 in the JSON)."""
        v = self.attr.get(key, {})
        return base64.b64decode(v["s"]).decode() if "s" in v else default

    def attr_ints(self, key: str) -> list[int]:
        return [int(i) for i in self.attr.get(key, {}).get("list", {}).get("i", [])]

    def attr_b(self, key: str, default: bool = False) -> bool:
        return bool(self.attr.get(key, {}).get("b", default))


@dataclass
class GraphModel:
    """A parsed TF.js graph model: nodes in file order, constant values by node name, the signature."""

    nodes: list[Node]
    weights: dict[str, np.ndarray]
    inputs: list[str]
    outputs: list[str]
    meta: dict = field(default_factory=dict)

    def node(self, name: str) -> Node:
        return self._by_name[name]

    def __post_init__(self):
        self._by_name = {n.name: n for n in self.nodes}

    def consumers(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                out.setdefault(i, []).append(n)
        return out


def _tensor_name(s: str) -> str:
    """``node:0`` → ``node`` (every op used here has one output)."""
    name, _, port = s.partition(":")
    if port not in ("", "0"):
        raise UserError(f"TF.js graph: input {s!r} reads output {port}; allowed: single-output ops")
    return name


def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise bad_value("prior", str(path), f"a TF.js graph model directory holding {MODEL_FILE}")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: got invalid JSON ({err}); allowed: a TF.js model.json") from None
    if not isinstance(doc, dict) or doc.get("format") != "graph-model" or "modelTopology" not in doc:
        fmt = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise UserError(f"{path}: got format {fmt!r}; allowed: 'graph-model' (tensorflowjs_converter output)")
    return doc


def read_graph_model(path: str | Path) -> GraphModel:
    """Read a TF.js graph model (``path``: the directory or its ``model.json``)."""
    path = Path(path).expanduser()
    mj = path / MODEL_FILE if path.is_dir() else path
    doc = _load_json(mj)
    try:
        raw_nodes = doc["modelTopology"]["node"]
        nodes = [Node(str(n["name"]), str(n["op"]), [i for i in n.get("input", []) if not i.startswith("^")],
                      n.get("attr", {})) for n in raw_nodes]
        for n in nodes:
            n.inputs = [_tensor_name(i) for i in n.inputs]
        manifest = doc["weightsManifest"]
        sig = doc.get("signature", {})
        ins = [_tensor_name(k) for k in sig.get("inputs", {})] or [n.name for n in nodes if n.op == "Placeholder"]
        outs = [_tensor_name(k) for k in sig.get("outputs", {})]
    except (KeyError, TypeError) as err:
        raise UserError(f"{mj}: got a model.json without {err}; allowed: a TF.js graph model") from None
    weights = _read_weights(mj.parent, manifest)
    if not outs:  # no signature: the nodes nobody reads
        used = {i for n in nodes for i in n.inputs}
        outs = [n.name for n in nodes if n.name not in used and n.op != "Const"]
    meta = {k: doc.get(k) for k in ("format", "generatedBy", "convertedBy")}
    return GraphModel(nodes, weights, ins, outs, meta)


def _read_weights(root: Path, manifest) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    if not isinstance(manifest, list):
        raise UserError(f"{root / MODEL_FILE}: got weightsManifest {type(manifest).__name__}; allowed: a list of groups")
    for group in manifest:
        buf = b"".join(_read_shard(root, p) for p in group["paths"])
        offset = 0
        specs = group["weights"]
        need = 0
        for w in specs:
            if "quantization" in w or w.get("dtype") not in DTYPES:
                what = "quantized " + str(w.get("quantization", {}).get("dtype")) if "quantization" in w else w.get("dtype")
                raise UserError(f"{root / MODEL_FILE}: weight {w.get('name')!r}: got dtype {what!r}; allowed: "
                                f"{', '.join(DTYPES)} (unquantised)")
            need += int(np.prod(w["shape"], dtype=np.int64)) * 4
        if need != len(buf):
            raise UserError(f"{root / group['paths'][-1]}: got {len(buf)} bytes in the shards "
                            f"{', '.join(group['paths'])}; allowed: {need} bytes (the weightsManifest's shapes)")
        for w in specs:
            shape = [int(s) for s in w["shape"]]
            n = int(np.prod(shape, dtype=np.int64))
            out[w["name"]] = np.frombuffer(buf, dtype=DTYPES[w["dtype"]], count=n, offset=offset).reshape(shape)
            offset += n * 4
    return out


def _read_shard(root: Path, name: str) -> bytes:
    p = root / name
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise bad_value("weightsManifest path", name, "a shard file name inside the model directory")
    if not p.is_file():
        raise bad_value("weightsManifest path", str(p), "an existing shard file beside model.json")
    return p.read_bytes()


# --- the numpy reference interpreter -------------------------------------------------------------------------

def _conv2d_nhwc(x: np.ndarray, k: np.ndarray, node: Node) -> np.ndarray:
    """TF ``Conv2D`` (NHWC input, HWIO kernel), stride 1, no dilation, padding SAME or VALID."""
    if node.attr_s("data_format", "NHWC") != "NHWC" or set(node.attr_ints("strides") or [1]) != {1} \
            or set(node.attr_ints("dilations") or [1]) != {1}:
        raise UserError(f"TF.js graph: Conv2D {node.name}: got {node.attr_s('data_format')} strides "
                        f"{node.attr_ints('strides')} dilations {node.attr_ints('dilations')}; allowed: NHWC, 1, 1")
    kh, kw = k.shape[:2]
    pad = node.attr_s("padding")
    if pad == "SAME":  # TF: total k-1, the smaller half before
        x = np.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    elif pad != "VALID":
        raise UserError(f"TF.js graph: Conv2D {node.name}: got padding {pad!r}; allowed: SAME, VALID")
    N, H, W, _ = x.shape
    Ho, Wo = H - kh + 1, W - kw + 1
    out = np.zeros((N, Ho, Wo, k.shape[3]), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            out += x[:, i:i + Ho, j:j + Wo, :] @ k[i, j]
    return out


def _batch_to_space(x: np.ndarray, block: np.ndarray, crops: np.ndarray) -> np.ndarray:
    """TF ``BatchToSpaceND`` for 2 spatial dims (its documented reshape / permute / reshape / crop)."""
    b0, b1 = (int(v) for v in block)
    B, H, W = x.shape[:3]
    rest = x.shape[3:]
    n = B // (b0 * b1)
    y = x.reshape(b0, b1, n, H, W, *rest)
    y = y.transpose(2, 3, 0, 4, 1, *range(5, 5 + len(rest)))
    y = y.reshape(n, H * b0, W * b1, *rest)
    (t, bo), (le, r) = crops.tolist()
    return y[:, t:H * b0 - bo, le:W * b1 - r]


def evaluate(model: GraphModel, feeds: dict[str, np.ndarray], output: str | None = None) -> np.ndarray:
    """Run the graph on ``feeds`` (placeholder name → array) in float64 numpy and return ``output`` (default:
    the signature's first output). Supported ops: those of the ProGAN graph and a few neighbours."""
    output = output or model.outputs[0]
    vals: dict[str, np.ndarray] = {}

    def get(name: str) -> np.ndarray:
        if name in vals:
            return vals[name]
        node = model.node(name)
        if node.op == "Const":
            if name not in model.weights:
                raise UserError(f"TF.js graph: Const {name} has no value in the weightsManifest")
            w = model.weights[name]
            v = w.astype(np.float64) if w.dtype.kind == "f" else w.astype(np.int64)
        elif node.op == "Placeholder":
            v = np.asarray(feeds[name], dtype=np.float64)
        else:
            v = _apply(node, [get(i) for i in node.inputs])
        vals[name] = v
        return v

    return get(output)


def _apply(node: Node, a: list[np.ndarray]) -> np.ndarray:
    op = node.op
    if op in ("Add", "AddV2", "BiasAdd"):
        return a[0] + a[1]
    if op == "Sub":
        return a[0] - a[1]
    if op == "Mul":
        return a[0] * a[1]
    if op == "Maximum":
        return np.maximum(a[0], a[1])
    if op == "Minimum":
        return np.minimum(a[0], a[1])
    if op == "Square":
        return a[0] * a[0]
    if op == "Rsqrt":
        return 1.0 / np.sqrt(a[0])
    if op == "Identity":
        return a[0]
    if op == "Relu":
        return np.maximum(a[0], 0.0)
    if op == "Tanh":
        return np.tanh(a[0])
    if op == "Mean":
        axes = tuple(int(i) for i in np.atleast_1d(a[1]))
        return a[0].mean(axis=axes, keepdims=node.attr_b("keep_dims"))
    if op == "Reshape":
        return a[0].reshape([int(s) for s in a[1]])
    if op == "Pad":
        return np.pad(a[0], a[1].astype(np.int64).tolist())
    if op == "Tile":
        return np.tile(a[0], [int(m) for m in a[1]])
    if op == "BatchToSpaceND":
        return _batch_to_space(a[0], a[1], a[2])
    if op == "Conv2D":
        return _conv2d_nhwc(a[0], a[1], node)
    raise UserError(f"TF.js graph: node {node.name}: got op {op!r}; allowed: the ops of a ProGAN graph "
                    "(Conv2D, Add, Mul, Maximum, Minimum, Square, Mean, Rsqrt, Reshape, Pad, Tile, BatchToSpaceND)")
