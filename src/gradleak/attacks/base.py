"""The attack interface: observation in, reconstruction out.

Every attack — an optimisation preset of the search engine (:mod:`gradleak.attacks.engine`), a closed-form
or recursive inversion, an analytic read-out — is a callable object with one signature (like
torchattacks; like breaching's ``reconstruct(server_payload, shared_data)``)::

    rec = attack(obs, labels=None, seed=0, model=None, progress=True)

``obs`` is the :class:`~gradleak.fl.observation.Observation` the server holds, ``labels`` the labels the
attacker knows or recovered (None: the attack learns them or does without). An attack object holds only
its options (and read-only loaded networks): one instance is safely reused across calls and workers.

Attacks are registered by name with ``@ATTACKS.register("name", *aliases)`` where they are defined.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from torch import Tensor, nn

from gradleak.attacks.artifacts import Artifact, merge_facts, to_cpu
from gradleak.errors import UserError
from gradleak.registry import Registry

LabelMode = Literal["oracle", "recover", "learn"]

ATTACKS = Registry("attack")

A = TypeVar("A", bound=Artifact)


@dataclass
class Reconstruction:
    """What an attack returns: what every attack has. ``images``, ``labels``, ``attack`` and ``seconds`` are
    always set; a search fills the rest (a closed-form attack has no restarts or loss trace).

    Search attacks: ``all_images`` (R,B,C,H,W) of every restart, their final objective ``losses`` (R,),
    ``best_restart``, the loss ``trace`` (one row per iteration and restart), ``iterations``, the resolved
    gradient ``distance`` of the objective (every gradient-matching search has one, set by the engine),
    ``stopped`` and ``halving`` (budgeted search), ``backend`` (the backend that ran, "auto" resolved) and
    ``backend_timing`` (what "auto" measured).

    Everything only one attack family produces (ROG's post-processing steps, ROGS' inversion path, GIAS
    snapshots, R-GAP's rank analysis, the prior, the random-gradient control) is a typed
    :class:`~gradleak.attacks.artifacts.Artifact` in ``artifacts``; :meth:`get` finds one by its class.
    """

    images: Tensor
    labels: Tensor | None
    attack: str
    seconds: float
    all_images: Tensor | None = None
    losses: Tensor | None = None
    best_restart: int | None = None
    trace: list[dict] = field(default_factory=list)
    iterations: int = 0
    backend: str | None = None
    backend_timing: dict[str, float] | None = None  # seconds per evaluation of each "auto" candidate / compiled variant
    distance: str | None = None
    stopped: str | None = None  # budgeted search: completed | plateau | budget | interrupted (gradleak.attacks.budget)
    halving: list[dict] | None = None  # successive halving: schedule position and the restarts kept there
    artifacts: list[Artifact] = field(default_factory=list)

    def add(self, artifact: A) -> A:
        """Attach ``artifact`` (replacing one of the same class); returns it."""
        self.artifacts = [a for a in self.artifacts if type(a) is not type(artifact)] + [artifact]
        return artifact

    def get(self, kind: type[A]) -> A | None:
        """The attached artifact of class ``kind`` (or a subclass), or None."""
        return next((a for a in self.artifacts if isinstance(a, kind)), None)

    def cpu(self) -> "Reconstruction":
        """The same reconstruction with every tensor on the CPU (for scoring and writing)."""
        self.images, self.labels, self.all_images, self.losses = map(to_cpu, (self.images, self.labels,
                                                                              self.all_images, self.losses))
        self.artifacts = [a.cpu() for a in self.artifacts]
        return self

    def describe(self) -> dict:
        """The JSON-able facts of this reconstruction (everything but image tensors) for ``metrics.json``:
        the common fields, then each artifact's :meth:`~gradleak.attacks.artifacts.Artifact.describe`."""
        out: dict = {"attack": self.attack, "seconds": round(self.seconds, 3), "iterations": self.iterations}
        if self.losses is not None:
            out["best_restart"] = self.best_restart
            out["restart_losses"] = [float(v) for v in self.losses]
        for key in ("backend", "backend_timing", "distance", "stopped", "halving"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return merge_facts(out, *(a.describe() for a in self.artifacts))


@dataclass
class Situation:
    """What an audit's portfolio is chosen from — the observation and what the attacker holds, never the
    private images: ``obs`` (the Observation), ``view`` (the defense chain's
    :class:`~gradleak.defenses.base.AttackerView`), ``model`` (θ_0 loaded), ``labels`` (given or recovered),
    ``prior`` (a generative prior the user named, or None: the shipped ones are tried), ``restarts`` (each
    search starts this many, pruned by successive halving)."""

    obs: Any
    view: Any
    model: nn.Module
    labels: Tensor | None
    prior: str | None = None
    restarts: int = 4


@dataclass
class AuditPlan:
    """One attack of an audit's portfolio: the attack object with its settings, why it was chosen (in the
    report), and whether it is a closed-form attack (run first, outside the time split)."""

    attack: "Attack"
    reason: str
    closed_form: bool = False


class Attack:
    """Base of every attack: ``name``, the default label strategy, and :meth:`__call__`.

    :meth:`audit_plan` is how an attack family joins ``gradleak audit``'s portfolio: given the
    :class:`Situation` it returns an :class:`AuditPlan` (its documented settings, no per-case tuning) or None.
    Only a class that defines it itself is asked (a subclass does not inherit its parent's place)."""

    name: ClassVar[str] = "attack"
    default_labels: ClassVar[LabelMode] = "oracle"

    @classmethod
    def audit_plan(cls, situation: Situation) -> "AuditPlan | None":
        """This family's place in an audit of ``situation`` (default: none)."""
        return None

    def __call__(self, obs, labels: Tensor | None = None, seed: int = 0, model: nn.Module | None = None,
                 progress: bool = True) -> Reconstruction:
        """Reconstruct the client's images from ``obs``."""
        raise NotImplementedError


def build_attack(name: str, **options) -> Attack:
    """Instantiate a registered attack; options are validated against its constructor (one-line errors)."""
    import gradleak.attacks  # noqa: F401  (the package import registers every attack)
    from gradleak.validate import validate_options

    if name not in ATTACKS:
        raise UserError(f"attack.name: got {name!r}; allowed: {', '.join(ATTACKS)}")
    if "backend" in options:  # an execution setting since issue 22, not an attack option
        from gradleak.backends.setting import refuse_option

        raise refuse_option(options["backend"])
    cls = ATTACKS[name]
    return cls(**validate_options(cls.__init__, options, "attack.options"))
