"""``jntk drift``: many finite networks at once, and how far their kernels are from the
analytic ones (Figs. 1–3).

A grid of widths × depths × seeds runs concurrently on Ray. Each run is one network (or, for the
Jacobian NNGP, one Monte-Carlo ensemble) and measures, per block component (α, β),

* ``experiment: nngp`` (Fig. 1): Δ = max_{i,j} |Σ̂(x_i,x_j)_{αβ} − Σ^(L)(x_i,x_j)_{αβ}| for the
  Monte-Carlo Jacobian NNGP Σ̂ over ``monte_carlo.n_networks`` random networks;
* ``experiment: jntk`` (Fig. 2 with ``record_steps: [0]``, Fig. 3 with 0, 2^0 … 2^11):
  Δ_{αβ,t} = max_{i,j} |Θ_{d,θ_t}(x_i,x_j)_{αβ} − Θ(x_i,x_j)_{αβ}| while gradient descent on the
  Jacobian-regularised loss (eq. 1) trains the network, plus loss and accuracies.

Two ways to run a grid (``ray.backend``):

* ``train`` -- one Ray Train ``TorchTrainer`` per run (launched from zero-CPU Ray tasks so several
  run at once), checkpointing through ``ray.train.report``; a preempted worker is restarted by
  Ray Train (``max_failures``) and a rerun of the job resumes from the latest checkpoint.
* ``tasks`` -- one plain Ray task per run, checkpointing to a file; retried by Ray on failure.

Resources per run: ``cpus_per_run`` CPUs; with ``use_gpu`` a fraction of a GPU for narrow nets
and a whole GPU from ``wide_width`` on. Results go into one Zarr store with dimensions
(width, depth, seed, step, component), one chunk per run (written by the driver as each run
finishes, so a killed job keeps what it finished), plus PNG plots and fitted log-log slopes.

Rooms: :mod:`.config` (the typed config), :mod:`.runs` (one run), :mod:`.backends` (Ray Train
or plain tasks), :mod:`.store` (the result store), :mod:`.plots` (slopes, figures),
:mod:`.job` (the driver).
"""

from .config import DriftConfig
from .job import CONFIG, DriftResult, describe, execute, run_drift
from .plots import drift_figures, fit_slopes, loglog_slope, plot_drift
from .runs import RunData, RunSpec, execute_run, grid_runs, load_run_data, run_device
from .store import open_drift

__all__ = ["CONFIG", "DriftConfig", "execute", "DriftResult", "RunData", "RunSpec", "describe",
           "drift_figures", "execute_run", "fit_slopes", "grid_runs", "load_run_data",
           "loglog_slope", "open_drift", "plot_drift", "run_device", "run_drift"]
