"""Ray Tune sweeps of a training config: the search space, the scheduling rules, the trials and the outputs.

``space`` parses and checks the search space before any Ray work; ``schedule``
holds the ranking metric, early stopping and resources; ``sweep`` runs the
trials (each one Ray Train run); ``report`` writes the results table, the
winning config and the plots. The public names of all four are re-exported here.
"""

from aide_ray.distributed.tune.report import (
    BEST_CONFIG_FILE,
    RESULTS_FILE,
    best_config,
    plot_file,
    results_table,
    summary_text,
    write_outputs,
)
from aide_ray.distributed.tune.schedule import (
    DATA_CPUS_PER_TRIAL,
    DRIVER_CPUS,
    grace_period,
    make_scheduler,
    max_concurrent_trials,
    resources_per_trial,
    sweep_metric,
    trial_resources,
)
from aide_ray.distributed.tune.space import (
    DEFAULT_SPACE,
    DISTRIBUTIONS,
    SEARCH_ALGORITHMS,
    Param,
    check_search,
    default_space,
    load_space,
    parse_space,
    tune_param_space,
)
from aide_ray.distributed.tune.sweep import TRIALS_DIR, SweepOutcome, run_sweep, train_trial, trial_config

__all__ = [
    "Param",
    "SEARCH_ALGORITHMS",
    "DISTRIBUTIONS",
    "DEFAULT_SPACE",
    "DRIVER_CPUS",
    "DATA_CPUS_PER_TRIAL",
    "RESULTS_FILE",
    "BEST_CONFIG_FILE",
    "TRIALS_DIR",
    "SweepOutcome",
    "parse_space",
    "load_space",
    "default_space",
    "check_search",
    "tune_param_space",
    "sweep_metric",
    "grace_period",
    "make_scheduler",
    "trial_resources",
    "resources_per_trial",
    "max_concurrent_trials",
    "trial_config",
    "train_trial",
    "results_table",
    "best_config",
    "plot_file",
    "summary_text",
    "write_outputs",
    "run_sweep",
]
