"""Reproductions of the paper's experiments.

* :mod:`rnnfast.experiments.sweep` — configuration hashing, an atomic per-run
  result store and :func:`run_sweep`, which runs configurations on any
  :class:`concurrent.futures.Executor` (by default a local spawn process pool)
  and resumes interrupted sweeps;
* :mod:`rnnfast.experiments.synthetic` — the synthetic-task sweep of Figure 7
  (SGD / SGD-C / SGD-CR x initialisations x lengths x seeds);
* :mod:`rnnfast.experiments.generalization` — the generalisation test;
* :mod:`rnnfast.experiments.natural` — the natural problems of Table 1.

The command line is ``rnnfast reproduce synthetic|generalization``
(:mod:`rnnfast.cli.reproduce`).
"""

from .sweep import (ResultStore, SweepProgress, SweepResult, config_hash, local_executor,
                    run_sweep)
from .generalization import GeneralizationSettings, run_generalization
from .synthetic import DEFAULT, FULL, SweepSettings, aggregate, make_configs, run_synthetic, train_run

__all__ = [
    "ResultStore",
    "SweepProgress",
    "SweepResult",
    "config_hash",
    "local_executor",
    "run_sweep",
    "DEFAULT",
    "FULL",
    "GeneralizationSettings",
    "SweepSettings",
    "aggregate",
    "make_configs",
    "run_generalization",
    "run_synthetic",
    "train_run",
]
