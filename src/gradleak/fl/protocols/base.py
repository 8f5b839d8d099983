"""The protocol seam: what a client protocol is, how its settings are declared, and the one local round
every optimizer-based protocol shares.

A protocol is a :class:`ClientProtocol` subclass registered in :data:`PROTOCOLS` by decorator, one file per
protocol (:mod:`gradleak.fl.protocols.fedsgd`, ``fedavg``, ``fedprox``, ``scaffold``). It declares

* ``settings``: the :class:`Setting` s it adds to the client's settings (FedProx's μ). The fields of
  :class:`gradleak.fl.protocol.Protocol` and the ``client`` section of the run config
  (:class:`gradleak.config.ClientConfig`) are both derived from the common settings plus these — one
  definition, no mirror;
* ``state``: names of per-parameter tensor sets the server knows and the client's round reads (SCAFFOLD's
  control variates); carried by ``Protocol.state`` and saved with the Observation;
* ``uploads``: names of per-parameter tensor sets uploaded beside the model update (SCAFFOLD's Δc),
  carried by ``Observation.extra_uploads``;
* hooks: :meth:`ClientProtocol.direction` (the local step's direction from the mini-batch gradient),
  :meth:`ClientProtocol.run` (the whole round), :meth:`ClientProtocol.extra_uploads`,
  :meth:`ClientProtocol.gradient_offset` (the known constant each local step adds to the gradient, for
  averaged-gradient label recovery and R-GAP).

Everything here is pure functions over ``{name: tensor}`` dicts, used both by the simulated client
(detached) and by the attacker's differentiable re-run (``create_graph=True``, ``vmap``), so the attacker's
forward model is the client's own code. Nothing here imports torch at module import (``gradleak --help``
stays torch-free).

Update conventions (``update``, stated in the Observation, never guessed) — :func:`to_delta` and
:func:`from_delta` are the one conversion every consumer uses (:func:`upload_of` states a round θ_0 → θ_τ):
``old_minus_new`` Δ = θ_0 − θ_τ (the default), ``new_minus_old`` θ_τ − θ_0, ``new_weights`` θ_τ.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

from gradleak.errors import bad_value
from gradleak.registry import Registry

Params = dict  # {parameter name: Tensor}
UPDATES = ("old_minus_new", "new_minus_old", "new_weights")

#: registered client protocols by name (``client.protocol`` in a config, ``Protocol.kind`` in Python)
PROTOCOLS = Registry("protocol")


# --- settings -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """One client setting, declared once: its dataclass field on ``Protocol``, its pydantic field in the
    config's ``client`` section and its one-line check all come from here.

    ``kind``: ``int`` | ``float`` | ``bool`` | ``str`` | ``choice`` (one of ``choices``) | ``floats`` (a
    list of numbers, ``length`` long when set, all > 0 with ``positive``); ``nullable``: None allowed;
    ``ge``/``gt``/``le``/``lt``: bounds of a number; ``owner``: the protocol that adds the setting (None:
    common to all) — any other protocol refuses a value other than the default."""

    name: str
    default: Any
    kind: Literal["int", "float", "bool", "str", "choice", "floats"]
    doc: str = ""
    nullable: bool = False
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] = ()
    length: int | None = None
    positive: bool = False
    owner: str | None = None

    @property
    def annotation(self) -> Any:
        """The Python type (for the dataclass field and pydantic's schema)."""
        base = {"int": int, "float": float, "bool": bool, "str": str}.get(self.kind)
        if self.kind == "choice":
            base = Literal[self.choices]
        elif self.kind == "floats":
            base = tuple[float, float] if self.length == 2 else tuple[float, ...]
        return base | None if self.nullable else base

    def bounds(self) -> dict:
        """pydantic ``Field`` constraints."""
        return {k: getattr(self, k) for k in ("ge", "gt", "le", "lt") if getattr(self, k) is not None}

    def check(self, value: Any) -> Any:
        """``value`` validated (tuples normalised); raises the one-line ``client.<name>: got …; allowed: …``."""
        key = f"client.{self.name}"
        if value is None and self.nullable:
            return None
        if self.kind == "choice":
            if value not in self.choices:
                raise bad_value(key, value, " | ".join(self.choices))
            return value
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise bad_value(key, value, "true | false")
            return value
        if self.kind == "str":
            if not isinstance(value, str):
                raise bad_value(key, value, "a string")
            return value
        if self.kind == "floats":
            return _floats(key, value, self.length, self.positive)
        is_int = isinstance(value, int) and not isinstance(value, bool)
        ok = is_int if self.kind == "int" else (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))
        for bound, test in (("ge", lambda v, b: v >= b), ("gt", lambda v, b: v > b),
                            ("le", lambda v, b: v <= b), ("lt", lambda v, b: v < b)):
            b = getattr(self, bound)
            ok = ok and (b is None or test(value, b))
        if not ok:
            lim = " and ".join(f"{s} {getattr(self, k)}" for k, s in (("ge", ">="), ("gt", ">"), ("le", "<="),
                                                                     ("lt", "<")) if getattr(self, k) is not None)
            what = "integer" if self.kind == "int" else "a number"
            raise bad_value(key, value, f"{what}{' ' + lim if lim else ''}{' or null' if self.nullable else ''}")
        return value


def _floats(key: str, value, length: int | None = None, positive: bool = False) -> tuple[float, ...]:
    allowed = f"a list of {length or 'one or more'} {'positive ' if positive else ''}numbers"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise bad_value(key, value, allowed) from None
    if (length is not None and len(out) != length) or not out or any(not math.isfinite(v) for v in out) \
            or (positive and any(v <= 0 for v in out)):
        raise bad_value(key, value, allowed)
    return out


# --- update conventions -----------------------------------------------------------------------------------------

def to_delta(update: Params, theta0: Params, convention: str) -> Params:
    """The upload ``update`` stated in ``convention`` as Δ = θ_0 − θ_τ (it points along the gradient):
    θ_τ − θ_0 is negated, new weights θ_τ give θ_0 − θ_τ; the same dict for ``old_minus_new``."""
    if convention == "old_minus_new":
        return update
    if convention == "new_minus_old":
        return {n: -t for n, t in update.items()}
    if convention == "new_weights":
        return {n: theta0[n] - t for n, t in update.items()}
    raise bad_value("client.update", convention, " | ".join(UPDATES))


def from_delta(delta: Params, theta0: Params, convention: str) -> Params:
    """Inverse of :func:`to_delta`: Δ = θ_0 − θ_τ expressed in ``convention``."""
    if convention == "new_weights":
        return {n: theta0[n] - t for n, t in delta.items()}
    return to_delta(delta, theta0, convention)  # old_minus_new: itself; new_minus_old: negated


def upload_of(theta0: Params, theta: Params, convention: str) -> Params:
    """The upload of a round that went from θ_0 to θ_τ, stated in ``convention`` (θ_τ itself, exactly, for
    ``new_weights``)."""
    if convention == "new_weights":
        return dict(theta)
    if convention == "new_minus_old":
        return {n: theta[n] - theta0[n] for n in theta}
    if convention == "old_minus_new":
        return {n: theta0[n] - theta[n] for n in theta}
    raise bad_value("client.update", convention, " | ".join(UPDATES))


# --- local data order ------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=256)
def local_schedule(p, n: int) -> tuple[tuple[int, ...], ...]:
    """The mini-batches of a local round over n samples (see :mod:`gradleak.fl.protocol`)."""
    b = min(p.local_batch_size or n, n)
    if p.order == "sequential" and p.epochs is None:
        return tuple(tuple((t * b + i) % n for i in range(b)) for t in range(p.local_steps))
    shuffled = p.order == "shuffled" or (p.order == "unknown" and p.seed is not None)
    if shuffled:
        import torch
        from torch.utils.data import DataLoader

        loader = DataLoader(range(n), batch_size=b, shuffle=True, drop_last=p.drop_last,
                            generator=torch.Generator().manual_seed(p.seed))
        one_epoch = lambda: (tuple(int(i) for i in batch) for batch in loader)  # noqa: E731
    else:
        starts = [s for s in range(0, n, b) if not (p.drop_last and s + b > n)]
        one_epoch = lambda: (tuple(range(s, min(s + b, n))) for s in starts)  # noqa: E731
    out: list[tuple[int, ...]] = []
    if p.epochs is not None:
        for _ in range(p.epochs):
            out.extend(one_epoch())
        return tuple(out)
    while len(out) < p.local_steps:
        for batch in one_epoch():
            out.append(batch)
            if len(out) == p.local_steps:
                break
    return tuple(out)


# --- the protocol interface --------------------------------------------------------------------------------------

#: ``grad(theta, batch_indices) -> {name: ∇_θ ℓ(batch)}`` — the mini-batch gradient, built by the caller
#: (:mod:`gradleak.fl.client`: ``torch.autograd.grad`` for the loop re-run, ``torch.func.grad`` under vmap)
GradFn = Callable[[Params, tuple], Params]
#: ``between(theta, optimizer_state) -> (theta, optimizer_state)`` after each local step (the detached
#: simulation cuts the graph there; the attacker's re-run passes None)
Between = Callable[[Params, dict], tuple]


class ClientProtocol:
    """Base class of a client protocol (see the module docstring). The default :meth:`run` is the local
    round of FedAvg (McMahan et al., 2017): τ steps of the local optimizer (:mod:`gradleak.fl.optim`, state
    from zero) along :meth:`direction`, the upload θ_0 − θ_τ in the stated convention."""

    name: ClassVar[str] = ""
    settings: ClassVar[tuple[Setting, ...]] = ()
    uploads_gradient: ClassVar[bool] = False  # True: the upload is one gradient (no optimizer, no convention)
    state: ClassVar[tuple[str, ...]] = ()
    uploads: ClassVar[tuple[str, ...]] = ()

    def check(self, p) -> None:
        """Refuse settings this protocol would silently ignore (one line naming ``client.<key>``)."""

    def schedule(self, p, n: int) -> tuple[tuple[int, ...], ...]:
        """Index tuples of the mini-batch of each local step."""
        return local_schedule(p, n)

    def direction(self, p, theta: Params, theta0: Params, grads: Params, state: dict[str, Params]) -> Params:
        """What the local optimizer is fed at θ: the mini-batch gradient (FedAvg)."""
        return grads

    def run(self, p, theta0: Params, grad: GradFn, n: int, state: dict[str, Params],
            between: Between | None = None) -> Params:
        """The round's model upload in ``p.update``'s convention. ``theta0``: the weights the server sent
        (used as the anchor; the caller decides whether they carry a graph)."""
        from gradleak.fl.optim import init_state, optimizer_step

        theta, opt = theta0, init_state()
        for idx in self.schedule(p, n):
            theta, opt = optimizer_step(p, theta, self.direction(p, theta, theta0, grad(theta, idx), state), opt)
            if between is not None:
                theta, opt = between(theta, opt)
        return upload_of(theta0, theta, p.update)

    def extra_uploads(self, p, delta: Params, n: int, state: dict[str, Params]) -> dict[str, Params]:
        """Tensor sets uploaded beside the model update, computed from its Δ = θ_0 − θ_τ form (after the
        defense chain: a defense then covers them too)."""
        return {}

    def gradient_offset(self, p, state: dict[str, Params]) -> Params | None:
        """The known constant :meth:`direction` adds to every local gradient (None: none)."""
        return None

    def initial_state(self, params: Params) -> dict[str, Params]:
        """The state a simulated client starts from when none is given (zeros, e.g. SCAFFOLD's first round)."""
        return {s: {n: t.detach().new_zeros(t.shape) for n, t in params.items()} for s in self.state}

    def describe(self, p, n: int) -> str:
        """The protocol line of a report header."""
        return (f"{self.name}, τ = {len(self.schedule(p, n))} local steps, lr {p.lr}, "
                f"mini-batch {p.local_batch_size or 'full'}")


def register_protocol(name: str):
    """Class decorator: register one instance of the protocol under ``name`` (its settings get ``owner``
    ``name``); a second protocol of the same name is refused (:class:`gradleak.registry.Registry`)."""
    def add(cls: type[ClientProtocol]) -> type[ClientProtocol]:
        cls.name = name
        cls.settings = tuple(dataclasses.replace(s, owner=name) for s in cls.settings)
        PROTOCOLS.register(name)(cls())
        return cls
    return add


def protocol_of(kind: str) -> ClientProtocol:
    """The registered protocol named ``kind`` (one line listing the registered names otherwise)."""
    if kind not in PROTOCOLS:
        raise bad_value("client.protocol", kind, " | ".join(PROTOCOLS))
    return PROTOCOLS[kind]
