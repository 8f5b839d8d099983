"""GIML (Jeon et al., 2021, §4.2, Algorithm 2): meta-learn a generative prior from gradients alone, and
inversion of one client's data from many of its gradients (appendix D).

* :mod:`.tasks` — the task set S = {(θ_i, g_i)} from a simulated FL run, saved as Observations;
* :mod:`.meta` — Algorithm 2 with checkpoints, resume and sample grids; the result is a GIAS prior;
* :mod:`.multi` — min_x Σ_t c(x; θ_t, g_t), vectorised over the T gradients.
"""
from gradleak.giml.meta import GIMLConfig, giml_step, initial_prior, train_giml
from gradleak.giml.multi import GradientSequence, MultiGradientInversion, multi_gradient_cost, observe_sequence
from gradleak.giml.tasks import TaskSet, TaskSetConfig, make_task_set

__all__ = ["GIMLConfig", "GradientSequence", "MultiGradientInversion", "TaskSet", "TaskSetConfig", "giml_step",
           "initial_prior", "make_task_set", "multi_gradient_cost", "observe_sequence", "train_giml"]
