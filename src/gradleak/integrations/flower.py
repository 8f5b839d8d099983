"""Flower integration: the honest-but-curious server's view of every client upload, as Observations.

:class:`GradleakCapture` wraps any Flower strategy of the Message API (``flwr.serverapp.strategy``,
Flower ≥ 1.21; tested with 1.42) and behaves exactly like it — sampling, aggregation and evaluation are
the wrapped strategy's — while it saves, for every sampled client in every round, what the server
process holds after that client's reply arrived:

* θ_0, the global arrays the server sent to that client (parameters and buffers, e.g. BN statistics);
* the update computed from the arrays the client sent back, over the model's parameters, in the
  convention the protocol states (``Protocol.update``: ``old_minus_new`` Δ = θ_0 − θ_τ by default,
  ``new_minus_old``, or ``new_weights`` θ_τ), exact in float32 because both θ_0 and θ_τ are the very
  arrays that travelled;
* the number of examples the client reported (the Observation's ``num_images``: the client's local
  dataset is the batch the attacker reconstructs), the round, the client's node id;
* the client protocol as the server knows it (:class:`gradleak.fl.protocol.Protocol`: lr, local steps or
  epochs, local batch size) — fixed, or derived per client from the train config the server sent.

Each capture is ``OUT/round-RRR/node-ID.safetensors`` + ``.json``, loadable with
:meth:`gradleak.fl.observation.Observation.load` and attackable like any other; ``OUT/index.json``
lists them (rewritten atomically after every round). With ``capture_aggregate=True`` the round's
aggregate (θ_global before − θ_global after, *after* whatever the wrapped strategy added, e.g. the
Gaussian noise of Flower's central-DP wrappers) is saved as ``round-RRR/aggregate``; it equals one
client's protocol exactly only when one client is sampled per round, which ``extra`` records.

Where to put the wrapper decides what is captured: ``GradleakCapture(DifferentialPrivacy…(FedAvg()))``
captures the replies *as the server process receives them*, before any server-side clipping or noise
— the honest-but-curious server's view. Flower's central-DP wrappers add noise only to the aggregate,
so each individual reply reaches the server un-noised (clipped, with client-side clipping); only
client-side noise (``LocalDpMod``) changes what the server holds per client.

``import gradleak`` never imports Flower; importing this module does (``pip install gradleak[flower]``).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor, nn

from gradleak.errors import UserError
from gradleak.fl.observation import Observation
from gradleak.fl.protocol import Protocol
from gradleak.fl.protocols import upload_of

try:
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import Strategy
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "gradleak.integrations.flower needs Flower: pip install 'gradleak[flower]' (flwr>=1.42)"
    ) from err

StateDict = dict[str, Tensor]
#: ``(server_round, node_id, train config sent to that node) -> Protocol``
ProtocolFn = Callable[[int, int, dict], Protocol]


def _spec_of(model: Union[nn.Module, dict]) -> dict:
    if isinstance(model, nn.Module):
        spec = getattr(model, "gradleak_spec", None)
        if spec is None:
            raise UserError("flower capture: model: got a module not built by gradleak.build_model; allowed: "
                            "a model from gradleak.build_model or a spec dict {name, num_classes, in_channels, "
                            "resolution, options}")
        return dict(spec)
    if not isinstance(model, dict) or not {"name", "num_classes"} <= set(model):
        raise UserError(f"flower capture: model: got {model!r}; allowed: a spec dict with name, num_classes, "
                        "in_channels, resolution, options")
    return {"in_channels": 3, "resolution": 32, "options": {}, **model}


class ServerRecorder:
    """Framework-free core: turns (θ_0 sent, θ_τ received, n) into saved Observations.

    ``model``: a gradleak-built model or its spec dict (the Observation's ``model_spec``);
    ``protocol``: a :class:`Protocol` or a :data:`ProtocolFn`.
    """

    def __init__(self, out: str | Path, model: Union[nn.Module, dict], protocol: Union[Protocol, ProtocolFn]):
        from gradleak.models import build_model

        self.out = Path(out)
        self.spec = _spec_of(model)
        net = build_model(self.spec["name"], self.spec["num_classes"], self.spec["in_channels"],
                          self.spec["resolution"], **self.spec.get("options", {}))
        self._params = {k: tuple(v.shape) for k, v in net.named_parameters()}
        self._buffers = {k: tuple(v.shape) for k, v in net.named_buffers()}
        self.image_shape = (self.spec["in_channels"], self.spec["resolution"], self.spec["resolution"])
        if not isinstance(protocol, Protocol) and not callable(protocol):
            raise UserError(f"flower capture: protocol: got {protocol!r}; allowed: a gradleak Protocol or a "
                            "function (server_round, node_id, config) -> Protocol")
        self.protocol = protocol
        self.index: list[dict] = []

    def check_state(self, state: StateDict, what: str) -> tuple[StateDict, StateDict]:
        """Split a state dict into (parameters, buffers) of the model, float tensors as float32; a missing,
        unknown or mis-shaped key is one line naming the key and both shapes."""
        for name, shape in self._params.items():
            if name not in state:
                raise UserError(f"flower capture: {what}: parameter {name!r} missing; allowed: the arrays of "
                                f"model {self.spec['name']!r} ({len(self._params)} parameters)")
        params, buffers = {}, {}
        for name, t in state.items():
            expected = self._params.get(name, self._buffers.get(name))
            if expected is None:
                raise UserError(f"flower capture: {what}: got array {name!r}; allowed: the parameter and buffer "
                                f"names of model {self.spec['name']!r}")
            if tuple(t.shape) != expected:
                raise UserError(f"flower capture: {what}: array {name!r} has shape {tuple(t.shape)}, model "
                                f"{self.spec['name']!r} expects {expected}")
            t = t.detach().clone()
            if t.is_floating_point():
                t = t.float()
            (params if name in self._params else buffers)[name] = t
        return params, buffers

    def protocol_for(self, server_round: int, node_id: int, config: dict) -> Protocol:
        if isinstance(self.protocol, Protocol):
            return self.protocol
        proto = self.protocol(server_round, node_id, config)
        if not isinstance(proto, Protocol):
            raise UserError(f"flower capture: protocol function: got {type(proto).__name__}; allowed: a gradleak "
                            "Protocol")
        return proto

    def record(self, server_round: int, node_id: int | str, sent: StateDict, received: StateDict,
               num_examples: int, protocol: Protocol, stem: str | None = None, extra: dict | None = None,
               defenses: list[dict] | None = None) -> Path:
        """Save one Observation: θ_0 = ``sent``, θ_τ = ``received``, the update in ``protocol.update``'s
        convention (``protocol.server_view()`` is stored: no shuffle seed the server does not know)."""
        params, buffers = self.check_state(sent, f"round {server_round}, arrays sent to node {node_id}")
        after, _ = self.check_state(received, f"round {server_round}, arrays received from node {node_id}")
        if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
            raise UserError(f"flower capture: round {server_round}, node {node_id}: num-examples: got "
                            f"{num_examples!r}; allowed: an integer >= 1")
        protocol = protocol.server_view()
        if protocol.rule.state or protocol.rule.uploads:
            raise UserError(f"flower capture: protocol: got {protocol.kind!r}; allowed: a protocol without server-known "
                            f"state or extra uploads (the recorder does not capture "
                            f"{', '.join(protocol.rule.state + protocol.rule.uploads)} yet)")
        convention = protocol.update  # stated in the Observation's protocol, computed exactly as stated
        update = upload_of(params, {n: after[n].clone() for n in params}, convention)
        stem = stem or f"node-{node_id}"
        rel = Path(f"round-{server_round:03d}") / stem
        meta = {"round": server_round, "node_id": node_id, "num_examples": num_examples,
                "update_convention": convention, **(extra or {})}
        obs = Observation(model_spec=self.spec, parameters=params, buffers=buffers, update=update,
                          protocol=protocol, num_images=num_examples, image_shape=self.image_shape,
                          defenses=list(defenses or []), extra={"source": "flower", **meta})
        obs.save(self.out / rel)
        self.index.append({"path": str(rel), **meta})
        return self.out / rel

    def write_index(self) -> Path:
        from gradleak.atomic import atomic_write_json

        self.out.mkdir(parents=True, exist_ok=True)
        return atomic_write_json(self.out / "index.json", {"format": "gradleak-flower-capture", "model": self.spec,
                                                            "captures": self.index})


def _single_array_record(content: RecordDict, key: str | None, what: str) -> ArrayRecord:
    records = content.array_records
    if key is not None:
        if key not in records:
            raise UserError(f"flower capture: {what}: ArrayRecord {key!r} missing; allowed: {sorted(records)}")
        return records[key]
    if len(records) != 1:
        raise UserError(f"flower capture: {what}: got {len(records)} ArrayRecords {sorted(records)}; allowed: "
                        "exactly one, or name it with arrayrecord_key=")
    return next(iter(records.values()))


def _to_state(record: ArrayRecord) -> StateDict:
    return {k: t.clone() for k, t in record.to_torch_state_dict().items()}


def _metrics(content: RecordDict) -> dict:
    """The reply's metrics (what the client reported besides its arrays), JSON-ready."""
    out: dict = {}
    for record in content.metric_records.values():
        for k, v in record.items():
            out[k] = v.tolist() if hasattr(v, "tolist") else v
    return out


def _num_examples(content: RecordDict, key: str, what: str) -> int:
    for metrics in content.metric_records.values():
        if key in metrics:
            value = metrics[key]
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            return value
    raise UserError(f"flower capture: {what}: no metric {key!r} in the reply; allowed: a MetricRecord carrying "
                    f"it (set num_examples_key=)")


class GradleakCapture(Strategy):
    """Wrap a Flower (Message API) ``strategy``; save every client's upload as a gradleak Observation.

    ``out``: capture directory; ``model``: a model built by :func:`gradleak.build_model` or its spec dict
    (the architecture whose ``state_dict`` travels in the ArrayRecord); ``protocol``: the clients' local
    training as the server knows it (a :class:`Protocol`, or ``f(server_round, node_id, config) ->
    Protocol`` reading e.g. the lr the server put in the train config); ``num_examples_key``: the reply
    metric holding n (FedAvg's ``weighted_by_key``); ``arrayrecord_key``: which ArrayRecord holds the
    model (default: the only one); ``rounds``: capture only these rounds (default all);
    ``defenses`` / ``aggregate_defenses``: what the server knows was applied to each client upload / to the
    aggregate, in gradleak's ``describe()`` form (e.g. ``[{"name": "clip", "max_norm": C, "scope":
    "global"}]`` for Flower's ``fixedclipping_mod``), stored in the Observations for the attacker.
    """

    def __init__(self, strategy: Strategy, out: str | Path, model: Union[nn.Module, dict],
                 protocol: Union[Protocol, ProtocolFn], *, num_examples_key: str = "num-examples",
                 arrayrecord_key: str | None = None, capture_aggregate: bool = True,
                 rounds: Iterable[int] | None = None, defenses: list[dict] | None = None,
                 aggregate_defenses: list[dict] | None = None):
        super().__init__()
        if not isinstance(strategy, Strategy):
            raise UserError(f"flower capture: strategy: got {type(strategy).__name__}; allowed: a "
                            "flwr.serverapp.strategy.Strategy (Message API)")
        self.strategy = strategy
        self.recorder = ServerRecorder(out, model, protocol)
        self.num_examples_key, self.arrayrecord_key = num_examples_key, arrayrecord_key
        self.capture_aggregate = capture_aggregate
        self.rounds = None if rounds is None else set(rounds)
        self.defenses, self.aggregate_defenses = list(defenses or []), list(aggregate_defenses or [])
        self._sent: dict[int, tuple[StateDict, dict]] = {}
        self._global: StateDict | None = None

    def __repr__(self) -> str:
        return f"GradleakCapture({self.strategy!r})"

    def __getattr__(self, name: str) -> Any:  # e.g. privacy_spent() of a DP wrapper
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    @property
    def out(self) -> Path:
        return self.recorder.out

    def _active(self, server_round: int) -> bool:
        return self.rounds is None or server_round in self.rounds

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._sent, self._global = {}, None
        if not self._active(server_round):
            return messages
        self._global = _to_state(arrays)
        self.recorder.check_state(self._global, f"round {server_round}, global arrays")
        cache: dict[int, StateDict] = {}
        for msg in messages:
            node = msg.metadata.dst_node_id
            record = _single_array_record(msg.content, self.arrayrecord_key, f"round {server_round}, message to "
                                          f"node {node}")
            if id(record) not in cache:
                cache[id(record)] = _to_state(record)
            cfg = {}
            for c in msg.content.config_records.values():
                cfg.update(dict(c))
            self._sent[node] = (cache[id(record)], cfg)
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if self._active(server_round):
            # read every reply before the wrapped strategy may change it (server-side clipping edits in place)
            for reply in replies:
                if reply.has_error() or not reply.has_content():
                    continue
                node = reply.metadata.src_node_id
                what = f"round {server_round}, reply from node {node}"
                if node not in self._sent:
                    raise UserError(f"flower capture: {what}: this node was not sent a train message this round")
                sent, cfg = self._sent[node]
                received = _to_state(_single_array_record(reply.content, self.arrayrecord_key, what))
                n = _num_examples(reply.content, self.num_examples_key, what)
                self.recorder.record(server_round, node, sent, received, n,
                                     self.recorder.protocol_for(server_round, node, cfg),
                                     extra={"kind": "client", "metrics": _metrics(reply.content)},
                                     defenses=self.defenses)
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if self._active(server_round):
            answered = [r for r in replies if not r.has_error() and r.has_content()]
            if self.capture_aggregate and arrays is not None and self._global is not None and answered:
                ns = [_num_examples(r.content, self.num_examples_key, "aggregate") for r in answered]
                cfg = self._sent[answered[0].metadata.src_node_id][1]
                self.recorder.record(
                    server_round, "aggregate", self._global, _to_state(arrays), max(1, sum(ns)),
                    self.recorder.protocol_for(server_round, 0, cfg), stem="aggregate",
                    extra={"kind": "aggregate", "clients": len(answered), "client_examples": ns,
                           "single_client_protocol_exact": len(answered) == 1},
                    defenses=self.aggregate_defenses)
            self.recorder.write_index()
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)


class LegacyGradleakCapture:
    """The same capture for a legacy ``flwr.server.strategy`` strategy (``configure_fit`` /
    ``aggregate_fit`` with ``Parameters``). Legacy parameters are an unnamed list of arrays: they are
    matched to the model's ``state_dict()`` keys in order (Flower's PyTorch convention
    ``[v.cpu().numpy() for v in net.state_dict().values()]``). Node ids are the ClientProxy ``cid``;
    ``num_examples`` is ``FitRes.num_examples``. Built lazily as a subclass of the legacy Strategy."""

    def __new__(cls, strategy, out, model, protocol, **kwargs):
        return _legacy_class()(strategy, out, model, protocol, **kwargs)


def _legacy_class():
    from flwr.common import parameters_to_ndarrays
    from flwr.server.strategy import Strategy as LegacyStrategy

    class _LegacyCapture(LegacyStrategy):
        def __init__(self, strategy, out, model, protocol, *, capture_aggregate: bool = True,
                     rounds: Iterable[int] | None = None, defenses: list[dict] | None = None,
                     aggregate_defenses: list[dict] | None = None):
            if not isinstance(strategy, LegacyStrategy):
                raise UserError(f"flower capture: strategy: got {type(strategy).__name__}; allowed: a "
                                "flwr.server.strategy.Strategy (legacy API)")
            from gradleak.models import build_model

            self.strategy = strategy
            self.recorder = ServerRecorder(out, model, protocol)
            spec = self.recorder.spec
            self._keys = list(build_model(spec["name"], spec["num_classes"], spec["in_channels"],
                                          spec["resolution"], **spec.get("options", {})).state_dict())
            self.capture_aggregate = capture_aggregate
            self.rounds = None if rounds is None else set(rounds)
            self.defenses, self.aggregate_defenses = list(defenses or []), list(aggregate_defenses or [])
            self._sent: dict[str, tuple[StateDict, dict]] = {}
            self._global: StateDict | None = None

        def __repr__(self) -> str:
            return f"LegacyGradleakCapture({self.strategy!r})"

        def _state(self, parameters, what: str) -> StateDict:
            arrays = parameters_to_ndarrays(parameters)
            if len(arrays) != len(self._keys):
                raise UserError(f"flower capture: {what}: got {len(arrays)} arrays; allowed: {len(self._keys)}, the "
                                f"state_dict of model {self.recorder.spec['name']!r} in order")
            return {k: torch.from_numpy(a.copy()) for k, a in zip(self._keys, arrays)}

        def _active(self, server_round: int) -> bool:
            return self.rounds is None or server_round in self.rounds

        def initialize_parameters(self, client_manager):
            return self.strategy.initialize_parameters(client_manager)

        def configure_fit(self, server_round, parameters, client_manager):
            instructions = self.strategy.configure_fit(server_round, parameters, client_manager)
            self._sent, self._global = {}, None
            if self._active(server_round):
                self._global = self._state(parameters, f"round {server_round}, global parameters")
                for proxy, fit_ins in instructions:
                    self._sent[proxy.cid] = (self._state(fit_ins.parameters, f"round {server_round}, FitIns to "
                                                         f"client {proxy.cid}"), dict(fit_ins.config))
            return instructions

        def aggregate_fit(self, server_round, results, failures):
            if self._active(server_round):
                for proxy, fit_res in results:
                    what = f"round {server_round}, FitRes from client {proxy.cid}"
                    if proxy.cid not in self._sent:
                        raise UserError(f"flower capture: {what}: this client was not sent FitIns this round")
                    sent, cfg = self._sent[proxy.cid]
                    self.recorder.record(server_round, proxy.cid, sent, self._state(fit_res.parameters, what),
                                         fit_res.num_examples, self.recorder.protocol_for(server_round, proxy.cid, cfg),
                                         extra={"kind": "client", "metrics": dict(fit_res.metrics)},
                                         defenses=self.defenses)
            parameters, metrics = self.strategy.aggregate_fit(server_round, results, failures)
            if self._active(server_round):
                if self.capture_aggregate and parameters is not None and self._global is not None and results:
                    ns = [fit_res.num_examples for _, fit_res in results]
                    cfg = self._sent[results[0][0].cid][1]
                    self.recorder.record(
                        server_round, "aggregate", self._global,
                        self._state(parameters, f"round {server_round}, aggregate"), max(1, sum(ns)),
                        self.recorder.protocol_for(server_round, 0, cfg), stem="aggregate",
                        extra={"kind": "aggregate", "clients": len(ns), "client_examples": ns,
                               "single_client_protocol_exact": len(ns) == 1},
                        defenses=self.aggregate_defenses)
                self.recorder.write_index()
            return parameters, metrics

        def configure_evaluate(self, server_round, parameters, client_manager):
            return self.strategy.configure_evaluate(server_round, parameters, client_manager)

        def aggregate_evaluate(self, server_round, results, failures):
            return self.strategy.aggregate_evaluate(server_round, results, failures)

        def evaluate(self, server_round, parameters):
            return self.strategy.evaluate(server_round, parameters)

    return _LegacyCapture


def load_index(out: str | Path) -> list[dict]:
    """The captures listed in ``OUT/index.json`` (dicts with ``path``, ``round``, ``node_id``, …)."""
    path = Path(out) / "index.json"
    if not path.is_file():
        raise UserError(f"flower capture: file not found: {str(path)!r}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"flower capture: cannot read {str(path)!r}: {err.msg}") from None
    if data.get("format") != "gradleak-flower-capture":
        raise UserError(f"flower capture: {str(path)!r} is not a gradleak Flower capture index")
    return data["captures"]


__all__ = ["GradleakCapture", "LegacyGradleakCapture", "ServerRecorder", "load_index"]
