"""Ctrl-C and SIGKILL for run, giml, train-prior and the small trainers (issue 17).

SIGINT is a real signal sent to this process at a chosen point (a hook wraps one function and calls
``os.kill(os.getpid(), SIGINT)``), and the command runs in-process through the real entry point: exit 130,
``interrupted``, nothing half-written. SIGKILL needs a child process (it cannot be caught): a resumed run loses
at most the steps since the last checkpoint and ends bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SRC = str(Path(__file__).resolve().parents[1] / "src")
PRIOR = ["--data", "digits", "--steps", "6", "--batch-size", "4", "--width", "4", "--latent-dim", "8", "--channels",
         "1", "--checkpoint-every", "2", "--sample-every", "0", "--no-progress"]
GIML = ["--steps", "4", "--tasks-per-step", "1", "--tau", "1", "--latent-iterations", "2", "--width", "4",
        "--latent-dim", "8", "--checkpoint-every", "2", "--no-progress"]
FAST_RUN = ["--set", "attack.options.iterations=3", "--no-progress"]


def _after_calls(module, name: str, n: int, sig: int, monkeypatch=None):
    """Wrap ``module.name`` so that its ``n``-th call first sends ``sig`` to this process."""
    orig = getattr(module, name)
    count = [0]

    def hooked(*a, **k):
        count[0] += 1
        if count[0] == n:
            os.kill(os.getpid(), sig)
        return orig(*a, **k)

    if monkeypatch is None:
        setattr(module, name, hooked)
    else:
        monkeypatch.setattr(module, name, hooked)


def _same_tensors(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _interrupted(r) -> None:
    assert r.returncode == 130, (r.returncode, r.stderr[-1500:])
    assert r.stderr.strip().splitlines()[-1] == "interrupted", r.stderr[-1500:]


def _kill_child(hook: str, args: list[str]) -> subprocess.CompletedProcess:
    """Run ``gradleak ARGS`` in a child whose ``hook`` (Python source run before main) SIGKILLs it at a chosen
    point."""
    code = "\n".join(["import os, signal, sys", "import torch", "torch.set_num_threads(1)", textwrap.dedent(hook),
                      "from gradleak.cli import main", f"sys.argv = ['gradleak', *{args!r}]", "main()"])
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)


def _kill_forked(module: str, name: str, n: int, args: list[str], log: Path) -> int:
    """Fork a child that runs ``gradleak ARGS`` and SIGKILLs itself at the ``n``-th call of ``module.name``;
    returns its wait status. Like :func:`_kill_child`, but the child inherits this process's imports (torch and
    gradleak: seconds of start-up on a loaded machine), so a test stays a few seconds. Its stderr goes to ``log``."""
    import importlib

    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 2)
            sys.stderr = open(2, "w", closefd=False)
            owner = importlib.import_module(module)
            *path, attr = name.split(".")
            for part in path:
                owner = getattr(owner, part)
            _after_calls(owner, attr, n, signal.SIGKILL)
            from gradleak.cli import main

            sys.argv = ["gradleak", *args]
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - reported through the exit status
            import traceback

            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def _kill_at_call(module: str, name: str, n: int) -> str:
    """Hook source: the ``n``-th call of ``module.name`` SIGKILLs the process."""
    return f"""
        import {module} as _m
        _orig, _count = _m.{name}, [0]
        def _hooked(*a, **k):
            _count[0] += 1
            if _count[0] == {n}:
                os.kill(os.getpid(), signal.SIGKILL)
            return _orig(*a, **k)
        _m.{name} = _hooked
    """


# --- run -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["attack", "write phase"])
def test_run_ctrl_c_exits_130_and_leaves_no_run_directory(cli, tmp_path, monkeypatch, where):
    import gradleak.attacks.presets as presets
    import gradleak.report as writer

    if where == "attack":
        _after_calls(presets, "search", 1, signal.SIGINT, monkeypatch)
    else:  # after config.yaml and the observation are written, before the report
        _after_calls(writer, "write_report", 1, signal.SIGINT, monkeypatch)
    out = tmp_path / "run"
    r = cli("demo", "--out", out, *FAST_RUN)
    _interrupted(r)
    assert not out.exists()


def test_run_ctrl_c_while_rewriting_an_old_run_leaves_it_marked_unfinished(cli, tmp_path, monkeypatch):
    import gradleak.report as writer

    out = tmp_path / "run"
    assert cli("demo", "--out", out, *FAST_RUN).returncode == 0
    (out / "mine.txt").write_text("kept")
    _after_calls(writer, "write_report", 1, signal.SIGINT, monkeypatch)
    _interrupted(cli("demo", "--out", out, *FAST_RUN))
    assert not (out / "metrics.json").exists()  # the old marker would vouch for new files of an unfinished run
    assert (out / "mine.txt").read_text() == "kept" and not list(out.glob(".*.tmp"))


def test_run_sigkill_while_writing_then_rerun_cleans_up_and_finishes(cli, tmp_path):
    out = tmp_path / "run"
    r = _kill_child(_kill_at_call("gradleak.report", "write_report", 1), ["demo", "--out", str(out), *FAST_RUN])
    assert r.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists()
    (out / ".report.html.x1y2z3w4.tmp").write_text("left by the kill")
    assert cli("demo", "--out", out, *FAST_RUN).returncode == 0
    assert (out / "metrics.json").is_file() and not list(out.rglob("*.tmp"))


# --- train-prior -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prior_reference(tmp_path_factory):
    """An uninterrupted train-prior run (in-process, through the entry point)."""
    from gradleak.cli import main

    out = tmp_path_factory.mktemp("prior-full")
    argv, sys.argv = sys.argv, ["gradleak", "train-prior", "--out", str(out), *PRIOR]
    try:
        main()
    finally:
        sys.argv = argv
    return out


def test_train_prior_ctrl_c_checkpoints_the_step_and_resumes_bit_identically(cli, tmp_path, monkeypatch,
                                                                              prior_reference):
    import gradleak.priors.train as train

    out = tmp_path / "cut"
    _after_calls(train, "_augment", 3 * 2 + 2, signal.SIGINT, monkeypatch)  # during step 3 (3 augment calls a step)
    _interrupted(cli("train-prior", "--out", out, *PRIOR))
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 3  # the step in flight was finished, kept
    assert not (out / "prior.safetensors").exists()
    monkeypatch.undo()
    assert cli("train-prior", "--out", out, *PRIOR).returncode == 0
    assert _same_tensors(out / "prior.safetensors", prior_reference / "prior.safetensors")


def test_train_prior_sigkill_loses_at_most_the_steps_since_the_checkpoint(cli, tmp_path, prior_reference):
    out = tmp_path / "cut"
    r = _kill_child(_kill_at_call("gradleak.priors.train", "_augment", 3 * 4 + 2), ["train-prior", "--out", str(out), *PRIOR])
    assert r.returncode == -signal.SIGKILL
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 4  # killed in step 5: steps 1-4 kept
    assert cli("train-prior", "--out", out, *PRIOR).returncode == 0
    assert _same_tensors(out / "prior.safetensors", prior_reference / "prior.safetensors")


# --- giml ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def giml_setup(tmp_path_factory):
    from gradleak.giml import GIMLConfig, TaskSetConfig, make_task_set, train_giml

    tasks = tmp_path_factory.mktemp("tasks")
    make_task_set(TaskSetConfig(clients=2, rounds=1, batch=1, model_options={"width": 4, "batchnorm": True}),
                  tasks, progress=False)
    full = tmp_path_factory.mktemp("giml-full")
    cfg = GIMLConfig(steps=4, tasks_per_step=1, tau=1, latent_iterations=2, width=4, latent_dim=8, checkpoint_every=2)
    train_giml(cfg, tasks, full, progress=False)
    return tasks, full


def test_giml_ctrl_c_exits_130_and_resumes_bit_identically(cli, tmp_path, monkeypatch, giml_setup):
    import gradleak.giml.meta as meta

    tasks, full = giml_setup
    out = tmp_path / "cut"
    _after_calls(meta, "giml_step", 3, signal.SIGINT, monkeypatch)  # Ctrl-C as step 3 starts
    _interrupted(cli("giml", "--tasks", tasks, "--out", out, *GIML))
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 2  # every completed step kept
    monkeypatch.undo()
    assert cli("giml", "--tasks", tasks, "--out", out, *GIML).returncode == 0
    assert _same_tensors(out / "prior.safetensors", full / "prior.safetensors")


def test_giml_sigkill_resumes_from_the_last_checkpoint_bit_identically(cli, tmp_path, giml_setup):
    tasks, full = giml_setup
    out = tmp_path / "cut"
    r = _kill_child(_kill_at_call("gradleak.giml.meta", "giml_step", 4), ["giml", "--tasks", str(tasks), "--out", str(out), *GIML])
    assert r.returncode == -signal.SIGKILL
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 2  # killed in step 4: step 3 lost, no more
    assert cli("giml", "--tasks", tasks, "--out", out, *GIML).returncode == 0
    assert _same_tensors(out / "prior.safetensors", full / "prior.safetensors")


# --- train-enhancer, train-autoencoder, train-tagger: checkpoint every N steps and on Ctrl-C, resume ----------

SMALL_TRAINERS = {  # command: (arguments, module and function called once per step, result file)
    "train-autoencoder": (["--data", "digits", "--resolution", "16", "--channels", "1", "--latent-dim", "16",
                           "--downsample", "4", "--width", "4", "--steps", "4", "--batch-size", "4"],
                          "gradleak.nets.autoencoder", "augment", "autoencoder.safetensors"),
    "train-tagger": (["--data", "digits", "--resolution", "16", "--width", "4", "--steps", "4", "--batch-size", "8"],
                     "gradleak.nets.tagger", "TaggerNet.loss", "tagger.safetensors"),
    "train-enhancer": (["--data", "digits", "--resolution", "16", "--channels", "1", "--width", "4", "--depth", "2",
                        "--disc-width", "4", "--steps", "4", "--batch-size", "2"],
                       "gradleak.nets.enhancer", "_batch", "enhancer.safetensors"),
}


@pytest.fixture(scope="module")
def trainer_reference(tmp_path_factory):
    """``reference(command)``: the directory of an uninterrupted run (default --checkpoint-every: no periodic
    checkpoint in 4 steps), made once per command, in-process through the entry point."""
    from gradleak.cli import main

    done: dict[str, Path] = {}

    def reference(command: str) -> Path:
        if command not in done:
            out = tmp_path_factory.mktemp(command)
            argv, sys.argv = sys.argv, ["gradleak", command, "--out", str(out), *SMALL_TRAINERS[command][0],
                                        "--no-progress"]
            try:
                main()
            finally:
                sys.argv = argv
            assert not (out / "checkpoint.json").exists()  # removed once the result is written
            done[command] = out
        return done[command]

    return reference


@pytest.mark.parametrize("command", sorted(SMALL_TRAINERS))
def test_trainer_ctrl_c_checkpoints_and_resumes_bit_identically(cli, tmp_path, monkeypatch, command,
                                                                trainer_reference):
    import importlib

    args, module, name, result = SMALL_TRAINERS[command]
    full = trainer_reference(command)
    target = importlib.import_module(module)
    owner, attr = (getattr(target, name.split(".")[0]), name.split(".")[1]) if "." in name else (target, name)
    _after_calls(owner, attr, 2, signal.SIGINT, monkeypatch)  # Ctrl-C during step 2
    out = tmp_path / "cut"
    _interrupted(cli(command, "--out", out, *args, "--no-progress"))
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 2 and not (out / result).exists()
    monkeypatch.undo()
    # --checkpoint-every may differ on resume (it does not change the training)
    assert cli(command, "--out", out, *args, "--checkpoint-every", "3", "--no-progress").returncode == 0
    assert _same_tensors(out / result, full / result)
    assert not (out / "checkpoint.json").exists()
    r = cli(command, "--out", out, *args[:-1], "3", "--no-progress")  # no checkpoint left: a fresh run is fine
    assert r.returncode == 0


@pytest.mark.parametrize("command", sorted(SMALL_TRAINERS))
def test_trainer_sigkill_resumes_from_the_periodic_checkpoint_bit_identically(cli, tmp_path, command,
                                                                             trainer_reference):
    args, module, name, result = SMALL_TRAINERS[command]
    args = [*args, "--checkpoint-every", "2", "--no-progress"]
    out = tmp_path / "cut"
    log = tmp_path / "child.stderr"
    status = _kill_forked(module, name, 3, [command, "--out", str(out), *args], log)  # killed in step 3
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (status, log.read_text()[-1500:])
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 2  # steps 1-2 kept, step 3 lost
    assert not (out / result).exists()
    assert cli(command, "--out", out, *args).returncode == 0  # the same command again
    assert _same_tensors(out / result, trainer_reference(command) / result)
    assert not (out / "checkpoint.json").exists() and not list(out.glob("*.tmp"))
