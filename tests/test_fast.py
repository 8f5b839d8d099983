"""Fast step backends (issue 14, gradleak.backends since issue 22): functional BatchNorm, the torch.func step,
its compiled form and fallbacks, and the search's backends giving the same numbers as the autograd loop."""
import copy

import pytest
import torch
import torch.nn.functional as F

from gradleak.attacks.engine import Objective, SearchContext, Stage, _value_and_grads, matching_problem, search
from gradleak.backends.fast import FastStep
from gradleak.backends.policy import choose
from gradleak.attacks.objectives import cosine_distance, l2_distance
from gradleak.attacks.parametrizations import Pixels
from gradleak.case import Case, capture
from gradleak.fl.client import batched_update, split_state
from gradleak.fl.functional_bn import FunctionalBatchNorm, functional_model
from gradleak.fl.protocol import Protocol
from gradleak.models import build_model, init_model

FEDAVG = Protocol(kind="fedavg", local_steps=3, lr=0.1, local_batch_size=2)


def _obs(bn: bool, protocol=Protocol(), batch=2, model_name="lenet", dtype=torch.float32):
    opts = {"width": 3, "batchnorm": bn}
    model = init_model(build_model(model_name, 10, 1, 8, **opts), 0).to(dtype)
    spec = {"name": model_name, "num_classes": 10, "in_channels": 1, "resolution": 8, "options": opts}
    x, y = torch.rand(batch, 1, 8, 8, dtype=dtype), torch.arange(batch)
    return capture(Case(model, x, y, protocol, give_labels=True, model_spec=spec)), model


def test_functional_batchnorm_matches_torch_forward_and_backward():
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    fbn = FunctionalBatchNorm(bn)
    assert dict(fbn.named_parameters()).keys() == dict(bn.named_parameters()).keys()
    assert dict(fbn.named_buffers()).keys() == dict(bn.named_buffers()).keys()
    for train in (True, False):
        bn.train(train), fbn.train(train)
        x = torch.randn(4, 3, 5, 5, requires_grad=True)
        ref_bn = copy.deepcopy(bn)  # torch's layer updates its running statistics in train mode
        ref = ref_bn(x)
        out = fbn(x)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        w = torch.randn_like(out)
        g_ref = torch.autograd.grad((ref * w).sum(), [x, ref_bn.weight, ref_bn.bias])
        g_out = torch.autograd.grad((out * w).sum(), [x, fbn.weight, fbn.bias])
        for a, b in zip(g_out, g_ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_functional_model_keeps_names_and_outputs():
    model = init_model(build_model("convnet", 10, 1, 16, width=2, batchnorm=True), 0).train()
    fm = functional_model(model)
    assert fm is not model and functional_model(model) is fm  # cached
    assert [k for k, _ in fm.named_parameters()] == [k for k, _ in model.named_parameters()]
    assert [k for k, _ in fm.named_buffers()] == [k for k, _ in model.named_buffers()]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fm.modules())
    x = torch.rand(3, 1, 16, 16)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.testing.assert_close(torch.func.functional_call(fm, state, (x,)),
                               torch.func.functional_call(model, state, (x,)), rtol=1e-4, atol=1e-5)
    plain = build_model("lenet", 10, 1, 8)
    assert functional_model(plain) is plain


def _distance_and_grad(obs, model, backend, images, labels, objective=Objective(distance="cosine")):
    names = list(obs.parameters)
    ctx = SearchContext(model, obs, names, [obs.update[n] for n in names])
    ctx.step, _ = choose(matching_problem(ctx, objective, labels.is_floating_point()), backend, images.shape[0],
                         labels, 1)
    assert ctx.step.name == backend
    x = images.clone().requires_grad_()
    lab = labels.clone().requires_grad_() if labels.is_floating_point() else labels
    variables = [x, lab] if labels.is_floating_point() else [x]
    d, grads = _value_and_grads(ctx, objective, x, lab, variables)
    return d.detach(), [g.detach() for g in grads]


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("protocol", [Protocol(), FEDAVG], ids=["fedsgd", "fedavg"])
def test_fast_step_equals_autograd_loop(bn, protocol):
    """vmap over torch.func.grad ∘ grad (functional BN for BN victims) = autograd create_graph per restart."""
    obs, model = _obs(bn, protocol, batch=4)
    images, labels = torch.rand(3, 4, 1, 8, 8), torch.randint(0, 10, (3, 4))
    d0, g0 = _distance_and_grad(obs, model, "loop", images, labels)
    d1, g1 = _distance_and_grad(obs, model, "vmap", images, labels)
    torch.testing.assert_close(d1, d0, rtol=1e-5, atol=1e-6)
    scale = g0[0].abs().max()
    assert float((g1[0] - g0[0]).abs().max()) <= 1e-5 * float(scale) + 1e-9


def test_fast_step_soft_labels_equal_loop():
    obs, model = _obs(False, batch=2)
    images, labels = torch.rand(2, 2, 1, 8, 8), torch.softmax(torch.randn(2, 2, 10), -1)
    d0, g0 = _distance_and_grad(obs, model, "loop", images, labels)
    d1, g1 = _distance_and_grad(obs, model, "vmap", images, labels)
    torch.testing.assert_close(d1, d0, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_fast_step_second_order_through_train_bn_matches_finite_differences():
    """The image gradient of d(U(x), g) through train-mode BN, against central differences (float64)."""
    obs, model = _obs(True, FEDAVG, batch=4, dtype=torch.float64)
    names = list(obs.parameters)
    fs = FastStep(model, obs.protocol, obs.parameters, obs.buffers, [obs.update[n] for n in names], l2_distance)
    x = torch.rand(1, 4, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (1, 4))
    d, g, _ = fs(x, y)
    v = torch.randn_like(x)
    eps = 1e-5
    fd = (fs(x + eps * v, y)[0] - fs(x - eps * v, y)[0]) / (2 * eps)
    torch.testing.assert_close((g * v).sum(), fd[0], rtol=1e-5, atol=1e-10)


def test_vmap_batched_update_equals_loop_with_train_bn():
    obs, model = _obs(True, FEDAVG, batch=4)
    params, buffers = split_state(model)
    x, y = torch.rand(2, 4, 1, 8, 8), torch.randint(0, 10, (2, 4))
    a = batched_update(model, params, buffers, x, y, FEDAVG, "loop")
    b = batched_update(model, params, buffers, x, y, FEDAVG, "vmap")
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=1e-4, atol=1e-6)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    obs, model = _obs(False)
    names = list(obs.parameters)
    fs = FastStep(model, obs.protocol, obs.parameters, obs.buffers, [obs.update[n] for n in names],
                  cosine_distance, compile=True)

    def broken(*a, **k):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    x, y = torch.rand(2, 2, 1, 8, 8), torch.randint(0, 10, (2, 2))
    with pytest.warns(UserWarning, match="no compiler here"):
        d, g, _ = fs(x, y)
    assert fs.backend == "vmap" and "no compiler here" in fs.fallback
    ref = fs.eager_step(x, y)
    torch.testing.assert_close(g, ref[1])


def test_compiled_result_is_checked_against_eager(monkeypatch):
    """A compiled step that drops a term (as compiling autograd.grad(create_graph=True) does) is caught."""
    obs, model = _obs(False)
    names = list(obs.parameters)
    fs = FastStep(model, obs.protocol, obs.parameters, obs.buffers, [obs.update[n] for n in names],
                  cosine_distance, compile=True)

    def wrong_compile(fn, **k):
        def run(*args):
            grads, value = fn(*args)
            return grads * 0.5, value
        return run

    monkeypatch.setattr(torch, "compile", wrong_compile)
    x, y = torch.rand(2, 2, 1, 8, 8), torch.randint(0, 10, (2, 2))
    with pytest.warns(UserWarning, match="disagrees"):
        _, g, _ = fs(x, y)
    assert fs.backend == "vmap"
    torch.testing.assert_close(g, fs.eager_step(x, y)[1])


def test_compiled_step_is_rechecked_during_the_search(monkeypatch):
    """A compiled graph that is right on its first call and wrong later (it drifts with the images a search
    reaches) is caught by the periodic re-check, and from then on the eager step runs."""
    from gradleak.backends import fast

    monkeypatch.setattr(fast, "RECHECK_EVERY", 3)
    obs, model = _obs(False)
    names = list(obs.parameters)
    fs = FastStep(model, obs.protocol, obs.parameters, obs.buffers, [obs.update[n] for n in names],
                  cosine_distance, compile=True)
    drift = [False]

    def drifting_compile(fn, **k):
        def run(*args):
            grads, value = fn(*args)
            return (grads * 0.5 if drift[0] else grads), value
        return run

    monkeypatch.setattr(torch, "compile", drifting_compile)
    x, y = torch.rand(2, 2, 1, 8, 8), torch.randint(0, 10, (2, 2))
    fs(x, y), fs(x, y)  # first call (checked; variants timed) and one unchecked call: both right
    assert fs.backend == "compiled"
    drift[0] = True
    fs(x, y)  # wrong and unchecked (the 2nd call after the first)
    assert fs.backend == "compiled"
    with pytest.warns(UserWarning, match="disagrees"):
        _, g, _ = fs(x, y)  # the 3rd call after the first is re-checked
    assert fs.backend == "vmap"
    torch.testing.assert_close(g, fs.eager_step(x, y)[1])


@pytest.mark.slow  # Inductor compiles for minutes on a loaded 2-core CPU; benchmarks/speed.py runs it too
def test_compiled_step_equals_eager_to_1e5():
    """The real torch.compile of the nested torch.func step (tiny victim: compilation is the slow part).
    Run with ``pytest -m slow tests/test_fast.py``; every compiled call also checks itself against eager."""
    pytest.importorskip("torch._inductor")
    obs, model = _obs(False, batch=1)
    names = list(obs.parameters)
    args = (model, obs.protocol, obs.parameters, obs.buffers, [obs.update[n] for n in names], cosine_distance)
    compiled, eager = FastStep(*args, compile=True), FastStep(*args)
    x, y = torch.rand(2, 1, 1, 8, 8), torch.randint(0, 10, (2, 1))
    d1, g1, _ = compiled(x, y)
    if compiled.fallback is not None and "failed" in compiled.fallback:
        pytest.skip(f"no working compiler: {compiled.fallback}")
    assert compiled.backend == "compiled", compiled.fallback
    assert not compiled.run.rejected, compiled.run.rejected  # both variants compiled and matched eager
    d0, g0, _ = eager(x, y)
    torch.testing.assert_close(d1, d0, rtol=1e-5, atol=1e-7)
    assert float((g1 - g0).abs().max()) <= 1e-5 * float(g0.abs().max())


@pytest.mark.parametrize("backend", ["vmap", "auto"])
def test_search_backends_agree_with_loop(backend, monkeypatch):
    from gradleak.backends import policy

    monkeypatch.setattr(policy, "AUTO_MIN_ITERATIONS", 1)  # measure even for this short search
    obs, model = _obs(True, FEDAVG, batch=2)

    def run(b):
        st = [Stage("x", Pixels(init="uniform", box=True), 5, 0.05, signed=False)]
        return search(obs, st, Objective(tv=1e-3), obs.labels, restarts=2, seed=3, backend=b, progress=False)

    ref, rec = run("loop"), run(backend)
    assert ref.backend == "loop"
    torch.testing.assert_close(rec.all_images, ref.all_images, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rec.losses, ref.losses, rtol=1e-4, atol=1e-6)
    assert [r["loss"] for r in rec.trace] == pytest.approx([r["loss"] for r in ref.trace], rel=1e-4, abs=1e-6)
    if backend == "auto":
        assert rec.backend in ("loop", "vmap") and set(rec.backend_timing) >= {"loop", "vmap"}
    else:
        assert rec.backend == "vmap"


def test_auto_skips_measuring_short_searches():
    obs, _ = _obs(False)
    rec = search(obs, [Stage("x", Pixels(), 3, 0.1)], Objective(), obs.labels, backend="auto", progress=False)
    assert rec.backend == "loop" and rec.backend_timing is None


def test_unknown_backend_is_a_user_error():
    from gradleak.errors import UserError

    obs, _ = _obs(False)
    with pytest.raises(UserError, match="backend"):
        search(obs, [Stage("x", Pixels(), 1, 0.1)], Objective(), obs.labels, backend="jit", progress=False)


# --- the fused compiled iteration (gradleak.backends.fused) ---------------------------------------------

def _search_fused(obs, signed, box, tv, monkeypatch, compile_as=None):
    """A two-stage InvertGrad-style search on ``backend: compiled`` whose fused steps run eagerly (Inductor is
    replaced by ``compile_as``: None = never compile, else a stand-in for torch.compile)."""
    from gradleak.backends import fused

    made = []

    class Recorded(fused.FusedAdam):  # the compiled backend's own fused step; compile only through compile_as
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            if compile_as is None:
                self.run.compile = False
            made.append(self)

    FusedAdam = fused.FusedAdam
    monkeypatch.setattr(fused, "FusedAdam", Recorded)
    if compile_as is not None:
        monkeypatch.setattr(torch, "compile", compile_as)
    stages = [Stage("a", Pixels(init="randn", box=box), 4, 0.05, signed=signed),
              Stage("b", Pixels(init="previous", box=box), 3, 0.02, schedule="cosine", signed=signed)]
    rec = search(obs, stages, Objective(tv=tv), obs.labels, restarts=2, seed=5, backend="compiled", progress=False)
    assert made and all(isinstance(f, FusedAdam) for f in made)
    return rec


def _search_loop(obs, signed, box, tv):
    stages = [Stage("a", Pixels(init="randn", box=box), 4, 0.05, signed=signed),
              Stage("b", Pixels(init="previous", box=box), 3, 0.02, schedule="cosine", signed=signed)]
    return search(obs, stages, Objective(tv=tv), obs.labels, restarts=2, seed=5, backend="loop", progress=False)


def _assert_same_search(rec, ref, tol=1e-5):
    torch.testing.assert_close(rec.all_images, ref.all_images, rtol=tol, atol=tol)
    torch.testing.assert_close(rec.losses, ref.losses, rtol=tol, atol=tol)
    assert [(r["iteration"], r["stage"], r["restart"]) for r in rec.trace] == \
        [(r["iteration"], r["stage"], r["restart"]) for r in ref.trace]
    assert [r["loss"] for r in rec.trace] == pytest.approx([r["loss"] for r in ref.trace], rel=tol, abs=tol)


@pytest.mark.parametrize("protocol,signed,box", [(Protocol(), True, True), (Protocol(), False, False),
                                                 (FEDAVG, True, False), (FEDAVG, False, True)],
                         ids=["fedsgd-signed-box", "fedsgd-plain", "fedavg-signed", "fedavg-box"])
def test_fused_iteration_equals_loop_search(protocol, signed, box, monkeypatch):
    """The fused step (∇_x(d + tv·TV) by torch.func, written-out Adam, box), run eagerly inside the engine,
    gives the `loop` backend's images, losses and trace (torch.optim.Adam + MultiStep/cosine schedule)."""
    obs, model = _obs(False, protocol, batch=2)
    ref = _search_loop(obs, signed, box, 1e-2)
    rec = _search_fused(obs, signed, box, 1e-2, monkeypatch)
    assert not torch.equal(rec.all_images, torch.zeros_like(rec.all_images))
    _assert_same_search(rec, ref)
    assert rec.backend == "compiled"


def test_fused_traced_graph_equals_loop_search(monkeypatch):
    """The functionalized make_fx trace of the fused step (what Inductor would compile), run as it is."""
    obs, model = _obs(False, batch=2)
    ref = _search_loop(obs, True, True, 1e-2)
    rec = _search_fused(obs, True, True, 1e-2, monkeypatch, compile_as=lambda fn, **k: fn)
    _assert_same_search(rec, ref)
    assert rec.backend == "compiled"
    # both traces (convolutions as they are, and as im2col + matmul) ran, were timed, and are on record
    assert set(rec.backend_timing) == {"compiled/conv", "compiled/matmul-conv"}


def test_fused_wrong_compile_falls_back(monkeypatch):
    """A compiled fused step that gets the Adam update wrong is caught on its first call (fallback: vmap)."""
    def wrong(fn, **k):
        def run(*args):
            x, m, v, f, g = fn(*args)
            return x + 1e-2, m, v, f, g
        return run

    obs, model = _obs(False, batch=2)
    ref = _search_loop(obs, True, True, 1e-2)
    with pytest.warns(UserWarning, match="images"):
        rec = _search_fused(obs, True, True, 1e-2, monkeypatch, compile_as=wrong)
    _assert_same_search(rec, ref)
    assert rec.backend == "vmap"


def test_fused_not_used_outside_its_stage_kind(monkeypatch):
    """Soft labels (DLG), L-BFGS, other regularizers keep the FastStep path; only the compiled step fuses."""
    import gradleak.attacks.engine as engine
    from gradleak.backends.fused import FusedAdam

    obs, model = _obs(False, batch=2)
    ctx = SearchContext(model, obs, list(obs.parameters), [obs.update[n] for n in obs.parameters])
    ctx.step, _ = choose(matching_problem(ctx, Objective(), False), "compiled", 1, obs.labels, 1)
    adam = Stage("a", Pixels(), 2, 0.1)
    assert engine._fused_stage(ctx, Objective(), adam, soft=True) is None
    assert engine._fused_stage(ctx, Objective(), Stage("l", Pixels(), 2, 0.1, optimizer="lbfgs"), False) is None
    assert engine._fused_stage(ctx, Objective(regularizers=[(1.0, lambda x, c: x.sum())]), adam, False) is None
    assert isinstance(engine._fused_stage(ctx, Objective(tv=0.1), adam, False), FusedAdam)
    ctx.step, _ = choose(matching_problem(ctx, Objective(), False), "vmap", 1, obs.labels, 1)
    assert engine._fused_stage(ctx, Objective(), adam, False) is None


@pytest.mark.slow  # Inductor, minutes on this CPU
def test_fused_compiled_equals_loop_search():
    pytest.importorskip("torch._inductor")
    obs, model = _obs(False, batch=1)
    ref = _search_loop(obs, True, True, 1e-2)
    stages = [Stage("a", Pixels(init="randn", box=True), 4, 0.05, signed=True),
              Stage("b", Pixels(init="previous", box=True), 3, 0.02, schedule="cosine", signed=True)]
    rec = search(obs, stages, Objective(tv=1e-2), obs.labels, restarts=2, seed=5, backend="compiled", progress=False)
    assert rec.backend == "compiled"
    _assert_same_search(rec, ref, tol=1e-4)


def _count_convolutions(graph) -> int:
    return sum(1 for n in graph.graph.nodes if n.op == "call_function" and "convolution" in str(n.target))


def _compile_by_convolutions(slow_if, corrupt_if=lambda convs: False):
    """A stand-in for torch.compile that runs the traced graph itself, 30 ms slower when
    ``slow_if(number of convolution nodes)`` and with halved gradients when ``corrupt_if(...)``."""
    import time

    def compile_(graph, **k):
        convs = _count_convolutions(graph)

        def run(*args):
            if slow_if(convs):
                time.sleep(0.03)
            grads, value = graph(*args)
            return (grads * 0.5 if corrupt_if(convs) else grads), value
        return run
    return compile_


@pytest.mark.parametrize("faster", ["conv", "matmul-conv"])
def test_compiled_keeps_the_faster_variant(faster, monkeypatch):
    """Both the convolution and the im2col trace are compiled and checked; the faster one is kept."""
    obs, model = _obs(False, batch=1)
    names = list(obs.parameters)
    fs = FastStep(model, obs.protocol, obs.parameters, obs.buffers, [obs.update[n] for n in names],
                  cosine_distance, compile=True)
    assert set(fs.run.variants) == {"conv", "matmul-conv"}
    slow = (lambda convs: convs > 0) if faster == "matmul-conv" else (lambda convs: convs == 0)
    monkeypatch.setattr(torch, "compile", _compile_by_convolutions(slow))
    x, y = torch.rand(1, 1, 1, 8, 8), torch.randint(0, 10, (1, 1))
    d, g, _ = fs(x, y)
    key = next(iter(fs.run.chosen))
    assert fs.run.chosen[key] == faster and fs.backend == "compiled" and not fs.run.rejected
    assert set(fs.run.timings[key]) == {"conv", "matmul-conv"}
    ref = fs.eager_step(x, y)
    torch.testing.assert_close(g, ref[1], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(fs(x, y)[1], ref[1], rtol=1e-4, atol=1e-7)  # the kept graph, second call


def test_a_wrong_variant_is_dropped_not_the_backend(monkeypatch):
    obs, model = _obs(False, batch=1)
    names = list(obs.parameters)
    fs = FastStep(model, obs.protocol, obs.parameters, obs.buffers, [obs.update[n] for n in names],
                  cosine_distance, compile=True)
    # the im2col graph (no convolution node left at this size) is fast but wrong: it must not be chosen
    monkeypatch.setattr(torch, "compile", _compile_by_convolutions(lambda c: c > 0, corrupt_if=lambda c: c == 0))
    x, y = torch.rand(1, 1, 1, 8, 8), torch.randint(0, 10, (1, 1))
    _, g, _ = fs(x, y)
    assert fs.backend == "compiled" and list(fs.run.chosen.values()) == ["conv"]
    assert "disagrees" in fs.run.rejected["matmul-conv"]
    torch.testing.assert_close(g, fs.eager_step(x, y)[1], rtol=1e-4, atol=1e-7)


def test_identical_variant_is_not_compiled_twice(monkeypatch):
    """When no convolution is small enough to switch, the im2col trace is the same computation: one compile."""
    from gradleak.fl import matmul_conv

    monkeypatch.setattr(matmul_conv, "SMALL_CONV_MACS", 0)
    obs, model = _obs(False, batch=1)
    names = list(obs.parameters)
    fs = FastStep(model, obs.protocol, obs.parameters, obs.buffers, [obs.update[n] for n in names],
                  cosine_distance, compile=True)
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda graph, **k: compiled.append(graph) or graph)
    fs(torch.rand(1, 1, 1, 8, 8), torch.randint(0, 10, (1, 1)))
    assert len(compiled) == 1 and list(fs.run.chosen.values()) == ["conv"] and not fs.run.timings


# --- the max-pool backward the compiled trace sees (gradleak.backends.inductor_workarounds) ----------------

@pytest.mark.parametrize("k,s,p,ceil", [(3, 3, 0, False), (2, 2, 0, False), (3, 2, 1, False), (3, 2, 0, True),
                                        (2, 1, 0, False), (3, 1, 1, False)])
def test_max_pool_backward_gather_equals_aten(k, s, p, ceil):
    from gradleak.backends.inductor_workarounds import max_pool2d_backward_gather

    aten = torch.ops.aten
    torch.manual_seed(k * 10 + s)
    x = torch.relu(torch.randn(2, 3, 11, 10) - 0.7)  # all-zero windows: ties routed by the forward's indices
    x[0, 0, :3, :3] = 0.0
    _, idx = aten.max_pool2d_with_indices(x, [k, k], [s, s], [p, p], [1, 1], ceil)
    g = torch.randn(idx.shape)
    ref = aten.max_pool2d_with_indices_backward(g, x, [k, k], [s, s], [p, p], [1, 1], ceil, idx)
    out = max_pool2d_backward_gather(g, x, [k, k], [s, s], [p, p], [1, 1], ceil, idx)
    if k <= s:  # one window per input position: the same numbers, bit for bit
        assert torch.equal(out, ref)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    assert max_pool2d_backward_gather(g, x, [k, k], [s, s], [p, p], [2, 2], ceil, idx) is NotImplemented


def test_compiled_trace_has_no_max_pool_scatter_and_equals_eager():
    """The graph handed to Inductor computes the pooled layers' backward by gathers (no
    max_pool2d_with_indices_backward for Inductor to turn into scatter_add), and still equals the eager step."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from gradleak.backends.inductor_workarounds import TRACE_DECOMPOSITIONS

    model = init_model(build_model("convnet", 10, 1, 9, width=1, batchnorm=True), 0)
    spec = {"name": "convnet", "num_classes": 10, "in_channels": 1, "resolution": 9,
            "options": {"width": 1, "batchnorm": True}}
    obs = capture(Case(model, torch.rand(2, 1, 9, 9), torch.arange(2), Protocol(), give_labels=True, model_spec=spec))
    names = list(obs.parameters)
    fs = FastStep(model, obs.protocol, obs.parameters, obs.buffers, [obs.update[n] for n in names], cosine_distance)
    full = (torch.rand(1, 2, 1, 9, 9), torch.arange(2).unsqueeze(0), *fs.run.const)
    graph = make_fx(torch.func.functionalize(fs.run.fn, remove="mutations_and_views"),
                    decomposition_table=TRACE_DECOMPOSITIONS)(*full)
    targets = {str(n.target) for n in graph.graph.nodes if n.op == "call_function"}
    assert not any("max_pool2d_with_indices_backward" in t or "scatter" in t for t in targets)
    assert any("max_pool2d_with_indices" in t for t in targets)  # the forward pooling is still there
    (g1, d1), (g0, d0) = graph(*full), fs.run.fn(*full)
    torch.testing.assert_close(d1, d0, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # a real Inductor compile, ~1 min on this CPU
def test_inductor_max_pool_backward_workaround_is_exact():
    """docs/inductor_maxpool_scatter_repro.py as a test: the gradient graph of conv → BN (two-pass) → ReLU →
    MaxPool2d(3) → linear, with every intermediate an output. Inductor (torch 2.13, CPU) computes the ReLU
    backward after the pooling from the zero-filled scatter_add buffer (relative error 1.0 there) unless
    the max-pool backward is traced in gather form, which is what the compiled attack step does."""
    pytest.importorskip("torch._inductor")
    from torch import nn
    from torch.fx.experimental.proxy_tensor import make_fx

    from gradleak.backends.inductor_workarounds import TRACE_DECOMPOSITIONS

    torch.manual_seed(0)
    bn = FunctionalBatchNorm(nn.BatchNorm2d(64, track_running_stats=False))
    net = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, bias=False), bn, nn.ReLU(), nn.MaxPool2d(3),
                        nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(576, 10))
    params = {k: v.detach() for k, v in net.named_parameters()}
    x, y = torch.relu(torch.randn(4, 64, 10, 10)), torch.arange(4)

    def loss(p, x):
        return F.cross_entropy(torch.func.functional_call(net, p, (x,)), y)

    gm = make_fx(torch.func.grad(loss), decomposition_table=TRACE_DECOMPOSITIONS)(params, x)
    nodes = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
    gm.graph.erase_node([n for n in gm.graph.nodes if n.op == "output"][0])
    gm.graph.output(tuple(nodes))
    gm.graph._codegen = torch.fx.graph.CodeGen()
    gm.recompile()
    flat = [*params.values(), x]
    ref, out = gm(*flat), torch.compile(gm, dynamic=False)(*flat)
    for n, o, r in zip(nodes, out, ref):
        if torch.is_tensor(r) and r.is_floating_point() and r.numel():
            assert float((o - r).abs().max()) <= 1e-4 * float(r.abs().max()) + 1e-12, n.format_node()


def _kinked(x):
    """A step with a kink: its 'gradient' jumps by 0.04 where x crosses 0.3 (as a ReLU mask flips)."""
    return x.sum(), x + 0.02 * torch.sign(x - 0.3)


def _compiled_kinked(x, shift_at, monkeypatch):
    """Compiled(_kinked) whose stand-in compiler returns the other side of the kink at index ``shift_at``
    (what a different rounding does next to a kink), or 0.05 added everywhere when ``shift_at`` is None."""
    from gradleak.backends.fast import Compiled, _mismatch

    def compile_(graph, **k):
        def run(*args):
            value, grad = graph(*args)
            if shift_at is None:
                return value, grad + 0.05
            return value, grad.index_put((torch.tensor([shift_at]),), -grad[shift_at] + 2 * x[shift_at])
        return run
    monkeypatch.setattr(torch, "compile", compile_)
    return Compiled({"conv": _kinked}, (), True, lambda out, ref, rtol=1e-4: _mismatch(out, ref, rtol))


def test_check_accepts_a_difference_the_eager_step_shows_by_itself(monkeypatch):
    """At an input within rounding of a kink the eager step itself jumps; a compiled result on the other side
    of that kink is not a miscompilation (the BN ConvNet's ReLU kinks, docs/speed.md)."""
    x = torch.tensor([0.1, 0.3 + 1e-7, 0.7, 0.9])  # within a 1e-6 relative change of the kink
    run = _compiled_kinked(x, 1, monkeypatch)
    out = run(x)
    assert run.active and run.kinks == 1
    assert not torch.equal(out[1], _kinked(x)[1])  # the compiled graph's side of the kink was kept


def test_check_still_rejects_an_error_where_the_step_is_smooth(monkeypatch):
    x = torch.tensor([0.1, 0.2, 0.7, 0.9])  # no element near the kink: eager moves by ~1e-6 only
    run = _compiled_kinked(x, None, monkeypatch)
    with pytest.warns(UserWarning, match="moves by"):
        out = run(x)
    assert not run.active and run.kinks == 0
    torch.testing.assert_close(out[1], _kinked(x)[1])


def test_check_rejects_a_large_error_even_at_a_kink(monkeypatch):
    """Whatever the eager spread, a compiled result further than KINK_CAP from eager is rejected (the jump
    here is 0.04 of the gradient's scale: accepted at the default cap of 0.1, rejected at 0.03)."""
    from gradleak.backends import fast

    monkeypatch.setattr(fast, "KINK_CAP", 0.03)
    x = torch.tensor([0.1, 0.3 + 1e-7, 0.7, 0.9])  # within a 1e-6 relative change of the kink
    run = _compiled_kinked(x, 1, monkeypatch)
    with pytest.warns(UserWarning, match="disagrees"):
        run(x)
    assert not run.active
