"""How the search computes its step, apart from what it searches (issue 22): the step backends.

* :mod:`~gradleak.backends.base` — the interface: a :class:`~gradleak.backends.base.MatchingProblem` in, a
  :class:`~gradleak.backends.base.Step` out, one registered :class:`~gradleak.backends.base.StepBackend` per way;
* :mod:`~gradleak.backends.loop`, :mod:`~gradleak.backends.vmap`, :mod:`~gradleak.backends.compiled` — the
  backends (autograd per restart; torch.func over restarts; that compiled, with
  :mod:`~gradleak.backends.fused`'s whole-iteration Adam step and :mod:`~gradleak.backends.inductor_workarounds`);
  :mod:`~gradleak.backends.fast` is their shared torch.func / compilation machinery;
* :mod:`~gradleak.backends.setting` — the ``backend`` execution setting (beside ``device`` and ``threads``);
* :mod:`~gradleak.backends.policy` — the one place the setting is resolved (``auto``: measured).

Nothing is imported here: the setting is read by the CLI and the config schema without torch.
"""
