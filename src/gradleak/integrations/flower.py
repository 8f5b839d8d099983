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
Gaussian noise of Flower's central-DP wrappers) is saved as ``round-RRR/aggregate``: a secure-aggregation
Observation (:mod:`gradleak.fl.secagg`) of the K answering clients, FedAvg's weighted mean of their Δ_k,
each with its own protocol and n_k — what a server running secure aggregation holds; ``extra`` records
how far the saved aggregate is from that weighted mean (``aggregation_residual``). A reply that carries an
error (e.g. an update a :class:`LeakageGuard` blocked) is listed in the index with its reason.

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

    def __init__(self, out: str | Path | None, model: Union[nn.Module, dict], protocol: Union[Protocol, ProtocolFn]):
        from gradleak.models import build_model

        self.out = Path(out) if out is not None else None  # None: in-memory only (the guard)
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
        obs = self.observation(server_round, node_id, sent, received, num_examples, protocol, extra, defenses)
        return self.save(obs, server_round, stem or f"node-{node_id}")

    def save(self, obs: Observation, server_round: int, stem: str) -> Path:
        """Write ``obs`` as ``round-RRR/<stem>`` and list it in the index (its ``extra`` minus ``source``)."""
        rel = Path(f"round-{server_round:03d}") / stem
        obs.save(self.out / rel)
        self.index.append({"path": str(rel), **{k: v for k, v in obs.extra.items() if k != "source"}})
        return self.out / rel

    def aggregate(self, server_round: int, sent: StateDict, received: StateDict, parts: list[Observation],
                  defenses: list[dict] | None = None) -> Observation:
        """The round's aggregate as a secure-aggregation Observation (:mod:`gradleak.fl.secagg`): the update
        θ_global before − θ_global after, described as FedAvg's weighted mean Σ_k (n_k/N) Δ_k of the clients'
        uploads ``parts`` (each with its own protocol and n_k). ``extra.aggregation_residual`` is
        ‖u − Σ_k (n_k/N) Δ_k‖ / ‖Σ_k (n_k/N) Δ_k‖: ~1e-5 for FedAvg (float32 rounding), larger where the wrapped strategy did
        something else (noise, a server optimizer), which ``defenses`` should then state."""
        import math

        from gradleak.fl.secagg import Aggregation

        params, buffers = self.check_state(sent, f"round {server_round}, global arrays")
        after, _ = self.check_state(received, f"round {server_round}, aggregated arrays")
        parts = [p.as_delta() for p in parts]
        agg = Aggregation.of([p.num_images for p in parts], [p.protocol for p in parts], "weighted_mean")
        update = {n: params[n] - after[n] for n in params}
        expected = {n: sum(w * p.update[n] for w, p in zip(agg.weights, parts)) for n in params}
        num = sum(float((update[n] - expected[n]).double().pow(2).sum()) for n in params)
        den = sum(float(expected[n].double().pow(2).sum()) for n in params)
        residual = math.sqrt(num / den) if den > 0 else math.sqrt(num)
        extra = {"source": "flower", "round": server_round, "node_id": "aggregate", "num_examples": agg.num_images,
                 "update_convention": "old_minus_new", "kind": "aggregate", "clients": agg.clients,
                 "client_examples": list(agg.sizes), "client_nodes": [p.extra.get("node_id") for p in parts],
                 "single_client_protocol_exact": agg.clients == 1, "aggregation": "weighted_mean",
                 "aggregation_residual": residual}
        return Observation(model_spec=self.spec, parameters=params, buffers=buffers, update=update,
                           protocol=agg.protocols[0], num_images=agg.num_images, image_shape=self.image_shape,
                           defenses=list(defenses or []), extra=extra, aggregation=agg)

    def observation(self, server_round: int, node_id: int | str, sent: StateDict, received: StateDict,
                    num_examples: int, protocol: Protocol, extra: dict | None = None,
                    defenses: list[dict] | None = None) -> Observation:
        """The Observation of one reply (what :meth:`record` saves), in memory."""
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
        meta = {"round": server_round, "node_id": node_id, "num_examples": num_examples,
                "update_convention": convention, **(extra or {})}
        return Observation(model_spec=self.spec, parameters=params, buffers=buffers, update=update,
                           protocol=protocol, num_images=num_examples, image_shape=self.image_shape,
                           defenses=list(defenses or []), extra={"source": "flower", **meta})

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


class _Capture:
    """What the Message-API and the legacy capture share: the wrapped strategy, the recorder, which rounds are
    captured, the defenses the server knows of, and per round the global model and what each client was sent."""

    def _start(self, strategy: Any, kind: type, api: str, out: str | Path, model: Union[nn.Module, dict],
               protocol: Union[Protocol, ProtocolFn], capture_aggregate: bool, rounds: Iterable[int] | None,
               defenses: list[dict] | None, aggregate_defenses: list[dict] | None) -> None:
        if not isinstance(strategy, kind):
            raise UserError(f"flower capture: strategy: got {type(strategy).__name__}; allowed: a {api}")
        self.strategy = strategy
        self.recorder = ServerRecorder(out, model, protocol)
        self.capture_aggregate = capture_aggregate
        self.rounds = None if rounds is None else set(rounds)
        self.defenses, self.aggregate_defenses = list(defenses or []), list(aggregate_defenses or [])
        self._sent: dict[Any, tuple[StateDict, dict]] = {}
        self._global: StateDict | None = None

    def _active(self, server_round: int) -> bool:
        return self.rounds is None or server_round in self.rounds

    def _end_round(self, server_round: int, aggregated: Callable[[], StateDict] | None,
                   parts: list[Observation]) -> None:
        """After the wrapped strategy aggregated (``aggregated``: its result as a state dict, None when it
        returned none): the aggregate's Observation when asked for and clients answered, then the index."""
        if self.capture_aggregate and aggregated is not None and self._global is not None and parts:
            agg = self.recorder.aggregate(server_round, self._global, aggregated(), parts, self.aggregate_defenses)
            self.recorder.save(agg, server_round, "aggregate")
        self.recorder.write_index()


class GradleakCapture(_Capture, Strategy):
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
        self._start(strategy, Strategy, "flwr.serverapp.strategy.Strategy (Message API)", out, model, protocol,
                    capture_aggregate, rounds, defenses, aggregate_defenses)
        self.num_examples_key, self.arrayrecord_key = num_examples_key, arrayrecord_key

    def __repr__(self) -> str:
        return f"GradleakCapture({self.strategy!r})"

    def __getattr__(self, name: str) -> Any:  # e.g. privacy_spent() of a DP wrapper
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    @property
    def out(self) -> Path:
        return self.recorder.out

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
        parts: list[Observation] = []
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
                obs = self.recorder.observation(server_round, node, sent, received, n,
                                                self.recorder.protocol_for(server_round, node, cfg),
                                                extra={"kind": "client", "metrics": _metrics(reply.content)},
                                                defenses=self.defenses)
                self.recorder.save(obs, server_round, f"node-{node}")
                parts.append(obs)
            for reply in replies:  # e.g. a LeakageGuard that blocked the update: the round records why
                if reply.has_error():
                    self.recorder.index.append({"path": None, "round": server_round, "node_id":
                                                reply.metadata.src_node_id, "kind": "error",
                                                "code": reply.error.code, "reason": reply.error.reason})
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if self._active(server_round):
            self._end_round(server_round, None if arrays is None else lambda: _to_state(arrays), parts)
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

    class _LegacyCapture(_Capture, LegacyStrategy):
        def __init__(self, strategy, out, model, protocol, *, capture_aggregate: bool = True,
                     rounds: Iterable[int] | None = None, defenses: list[dict] | None = None,
                     aggregate_defenses: list[dict] | None = None):
            from gradleak.models import build_model

            self._start(strategy, LegacyStrategy, "flwr.server.strategy.Strategy (legacy API)", out, model,
                        protocol, capture_aggregate, rounds, defenses, aggregate_defenses)
            spec = self.recorder.spec
            self._keys = list(build_model(spec["name"], spec["num_classes"], spec["in_channels"],
                                          spec["resolution"], **spec.get("options", {})).state_dict())

        def __repr__(self) -> str:
            return f"LegacyGradleakCapture({self.strategy!r})"

        def _state(self, parameters, what: str) -> StateDict:
            arrays = parameters_to_ndarrays(parameters)
            if len(arrays) != len(self._keys):
                raise UserError(f"flower capture: {what}: got {len(arrays)} arrays; allowed: {len(self._keys)}, the "
                                f"state_dict of model {self.recorder.spec['name']!r} in order")
            return {k: torch.from_numpy(a.copy()) for k, a in zip(self._keys, arrays)}

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
            parts: list[Observation] = []
            if self._active(server_round):
                for proxy, fit_res in results:
                    what = f"round {server_round}, FitRes from client {proxy.cid}"
                    if proxy.cid not in self._sent:
                        raise UserError(f"flower capture: {what}: this client was not sent FitIns this round")
                    sent, cfg = self._sent[proxy.cid]
                    obs = self.recorder.observation(
                        server_round, proxy.cid, sent, self._state(fit_res.parameters, what), fit_res.num_examples,
                        self.recorder.protocol_for(server_round, proxy.cid, cfg),
                        extra={"kind": "client", "metrics": dict(fit_res.metrics)}, defenses=self.defenses)
                    self.recorder.save(obs, server_round, f"node-{proxy.cid}")
                    parts.append(obs)
            parameters, metrics = self.strategy.aggregate_fit(server_round, results, failures)
            if self._active(server_round):
                self._end_round(server_round, None if parameters is None else
                                lambda: self._state(parameters, f"round {server_round}, aggregate"), parts)
            return parameters, metrics

        def configure_evaluate(self, server_round, parameters, client_manager):
            return self.strategy.configure_evaluate(server_round, parameters, client_manager)

        def aggregate_evaluate(self, server_round, results, failures):
            return self.strategy.aggregate_evaluate(server_round, results, failures)

        def evaluate(self, server_round, parameters):
            return self.strategy.evaluate(server_round, parameters)

    return _LegacyCapture


# --- the client-side leakage guard --------------------------------------------------------------------------

GUARD_POLICIES = ("report", "block", "protect")
#: relative noise levels of ``protect``: the Gaussian noise's expected norm as a multiple of the (clipped)
#: update's norm, tried in order until the re-measured verdict is below the threshold
PROTECT_NOISE = (0.1, 0.3, 1.0, 3.0)
#: reply metrics the guard adds (every reply carries all of them, as FedAvg requires equal keys)
GUARD_KEYS = ("gradleak-guard-decision", "gradleak-guard-leaky", "gradleak-guard-verdict",
              "gradleak-guard-verdict-before", "gradleak-guard-psnr-worst", "gradleak-guard-psnr-worst-before",
              "gradleak-guard-reference-psnr", "gradleak-guard-dpsnr-max", "gradleak-guard-tries",
              "gradleak-guard-noise", "gradleak-guard-clip", "gradleak-guard-seconds")
#: ``gradleak-guard-decision`` codes (MetricRecord values are numbers)
DECISIONS = {"sent": 0, "protected": 1, "blocked": 2}
GUARD_ERROR_CODE = 4201  # Error.code of a reply whose update the guard blocked


class LeakageGuard:
    """A Flower client mod: before a train reply leaves the client, attack the client's own update with its
    own images as the truth (:func:`gradleak.leakage.measure_leakage`) and apply ``policy``:

    * ``report``: the update is sent unchanged (bit for bit); the scores go into the reply's metrics;
    * ``block``: an update whose verdict reaches ``threshold`` is not sent — the reply becomes a Flower
      ``Error`` (code :data:`GUARD_ERROR_CODE`) whose reason holds the decision and the scores as JSON, which
      the strategy skips and :class:`GradleakCapture` lists in the round's index; others are sent unchanged;
    * ``protect``: a leaky update is clipped to ``clip`` (L2, over all parameters; default no clip) and
      Gaussian noise is added (Δ' = clip(Δ) + N(0, σ²), σ = r·‖clip(Δ)‖/√d for r in ``noise_levels``, the
      expected noise norm r times the update's), re-measured after each level, and sent at the first level
      whose verdict is below ``threshold``; when the last level (the stated limit) is still leaky the update
      is blocked (``on_limit="block"``) or sent with the last protection (``on_limit="send"``).

    The decision and the scores are added to the reply's MetricRecord (:data:`GUARD_KEYS`; numbers only:
    decision 0 sent / 1 protected, verdict levels 0 none / 1 partial / 2 recognisable) and logged
    (``logging.getLogger("gradleak.guard")``); :attr:`decisions` keeps them in this process. An update sent
    unprotected is never changed: its arrays are the reply's own objects. Buffers (BN statistics) travel as
    the client computed them; the update of the parameters is Δ = θ_0 − θ_τ as in :class:`GradleakCapture`.

    ``model``, ``protocol``: the architecture and the client's training as the server knows it (as for
    :class:`GradleakCapture`; the protocol function receives the train config); ``data``: ``f(msg,
    context) -> (images, labels)``, the client's private batch in its training order (images in [0, 1]).
    ``attack``/``attack_options``/``budget_s``: passed to :func:`gradleak.leakage.measure_leakage` (one
    configured attack until ``gradleak audit`` lands); the attacker is given the true labels (worst case).
    ``seed``: the attack's and the noise's (with the round and the node id)."""

    def __init__(self, model: Union[nn.Module, dict], protocol: Union[Protocol, ProtocolFn],
                 data: Callable[[Message, Any], tuple[Tensor, Tensor]], *, policy: str = "report",
                 threshold: str = "partial", attack: str | None = None, attack_options: dict | None = None,
                 budget_s: float | None = None, clip: float | None = None,
                 noise_levels: Iterable[float] = PROTECT_NOISE, on_limit: str = "block", seed: int = 0,
                 public: tuple[Tensor, Tensor | None] | None = None, num_examples_key: str = "num-examples",
                 arrayrecord_key: str | None = None):
        from gradleak.leakage import LEVELS

        if policy not in GUARD_POLICIES:
            raise UserError(f"flower guard: policy: got {policy!r}; allowed: {' | '.join(GUARD_POLICIES)}")
        if threshold not in LEVELS[1:]:
            raise UserError(f"flower guard: threshold: got {threshold!r}; allowed: partial | recognisable")
        if on_limit not in ("block", "send"):
            raise UserError(f"flower guard: on_limit: got {on_limit!r}; allowed: block | send")
        levels = tuple(float(r) for r in noise_levels)
        if not levels or any(not r > 0 for r in levels):
            raise UserError(f"flower guard: noise_levels: got {list(noise_levels)}; allowed: numbers > 0")
        if clip is not None and not clip > 0:
            raise UserError(f"flower guard: clip: got {clip!r}; allowed: a number > 0 or None")
        if not callable(data):
            raise UserError(f"flower guard: data: got {data!r}; allowed: f(msg, context) -> (images, labels)")
        self.recorder = ServerRecorder(None, model, protocol)
        self.data, self.policy, self.threshold = data, policy, threshold
        self.level_threshold = LEVELS.index(threshold)
        self.attack, self.attack_options, self.budget_s = attack, dict(attack_options or {}), budget_s
        self.clip, self.noise_levels, self.on_limit, self.seed = clip, levels, on_limit, seed
        self.public, self.num_examples_key, self.arrayrecord_key = public, num_examples_key, arrayrecord_key
        self.decisions: list[dict] = []

    def _measure(self, obs: Observation, x: Tensor, y: Tensor):
        from gradleak.leakage import measure_leakage

        return measure_leakage(obs, x, y, attack=self.attack, options=self.attack_options, budget_s=self.budget_s,
                               seed=self.seed, public=self.public)

    def __call__(self, msg: Message, context: Any, call_next: Callable) -> Message:
        import logging
        import math
        import time

        from flwr.app import Error, MessageType

        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        sent = _to_state(_single_array_record(msg.content, self.arrayrecord_key, "guard: train message"))
        cfg: dict = {}
        for c in msg.content.config_records.values():
            cfg.update(dict(c))
        reply = call_next(msg, context)
        if reply.has_error() or not reply.has_content():
            return reply
        t0 = time.perf_counter()
        server_round = int(cfg.get("server-round", 0))
        node = context.node_id
        record = _single_array_record(reply.content, self.arrayrecord_key, "guard: reply")
        key = self.arrayrecord_key or next(iter(reply.content.array_records))
        received = _to_state(record)
        n = _num_examples(reply.content, self.num_examples_key, "reply")
        proto = self.recorder.protocol_for(server_round, node, cfg)
        obs = self.recorder.observation(server_round, node, sent, received, n, proto, extra={"kind": "guard"})
        x, y = self.data(msg, context)
        before = self._measure(obs, x, y)
        leaky = before.level() >= self.level_threshold
        decision, after, tries, noise, clip_used = "sent", before, 0, 0.0, 0.0
        protected_state: StateDict | None = None
        if leaky and self.policy == "block":
            decision = "blocked"
        elif leaky and self.policy == "protect":
            delta = obs.as_delta().update
            norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in delta.values()))
            scale = min(1.0, self.clip / norm) if self.clip is not None and norm > 0 else 1.0
            clipped = {k: t * scale for k, t in delta.items()}
            clip_used = norm * scale
            d = sum(t.numel() for t in clipped.values())
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + server_round * 7919 + int(node)) % 2 ** 63)
            decision = "blocked" if self.on_limit == "block" else "protected"
            for r in self.noise_levels:
                tries += 1
                sigma = r * clip_used / math.sqrt(d)
                noisy = {k: t + sigma * torch.randn(t.shape, generator=gen, dtype=t.dtype) for k, t in clipped.items()}
                # the arrays that would leave (θ_0 − Δ', the reply's dtypes), measured as the server would see them
                protected_state = {k: (obs.parameters[k] - noisy[k]).to(t.dtype) if k in noisy else t
                                   for k, t in received.items()}
                trial = self.recorder.observation(server_round, node, sent, protected_state, n, proto,
                                                  extra={"kind": "guard", "noise": r})
                after, noise = self._measure(trial, x, y), r
                if after.level() < self.level_threshold:
                    decision = "protected"
                    break
        scores = {"gradleak-guard-decision": DECISIONS[decision], "gradleak-guard-leaky": int(leaky),
                  "gradleak-guard-verdict": after.level(), "gradleak-guard-verdict-before": before.level(),
                  "gradleak-guard-psnr-worst": float(after.psnr_worst),
                  "gradleak-guard-psnr-worst-before": float(before.psnr_worst),
                  "gradleak-guard-reference-psnr": float(before.reference_psnr),
                  "gradleak-guard-dpsnr-max": float(after.dpsnr_max), "gradleak-guard-tries": tries,
                  "gradleak-guard-noise": float(noise), "gradleak-guard-clip": float(clip_used),
                  "gradleak-guard-seconds": round(time.perf_counter() - t0, 3)}
        entry = {"round": server_round, "node_id": node, "policy": self.policy, "threshold": self.threshold,
                 "decision": decision, "verdict": after.verdict, "verdict_before": before.verdict,
                 "attack": before.attack, "scores": scores}
        self.decisions.append(entry)
        logging.getLogger("gradleak.guard").info(
            "gradleak guard: round %s node %s: %s (policy %s, verdict %s -> %s, worst-case PSNR %.2f -> %.2f dB, "
            "best reference %.2f dB, noise %g, tries %d)", server_round, node, decision, self.policy, before.verdict,
            after.verdict, before.psnr_worst, after.psnr_worst, before.reference_psnr, noise, tries)
        if decision == "blocked":
            return Message(Error(GUARD_ERROR_CODE, "gradleak guard blocked the update: " + json.dumps(entry)),
                           reply_to=msg)
        metrics = next(iter(reply.content.metric_records.values()), None)
        if metrics is None:
            reply.content["gradleak-guard"] = MetricRecord(scores)
        else:
            for k, v in scores.items():
                metrics[k] = v
        if decision == "protected" and protected_state is not None:
            reply.content.array_records[key] = ArrayRecord({k: protected_state[k] for k in record.keys()})
        return reply


def load_index(out: str | Path) -> list[dict]:
    """The captures listed in ``OUT/index.json`` (dicts with ``path``, ``round``, ``node_id``, …)."""
    path = Path(out) / "index.json"
    if not path.is_file():
        raise UserError(f"flower capture: file not found: {str(path)!r}")
    from gradleak import filemeta
    from gradleak.safefile import read_json

    data = read_json(path, "flower capture")  # size-bounded, UTF-8, an object (one-line errors)
    if data.get("format") != "gradleak-flower-capture":
        raise UserError(f"flower capture: {str(path)!r} is not a gradleak Flower capture index")
    filemeta.check(filemeta.CaptureIndex, data, "flower capture", path)  # every entry names its path or error
    return data["captures"]


__all__ = ["GradleakCapture", "LegacyGradleakCapture", "LeakageGuard", "ServerRecorder", "load_index",
           "GUARD_KEYS", "GUARD_POLICIES", "DECISIONS", "GUARD_ERROR_CODE"]
