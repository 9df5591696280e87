"""A quiet console for Ray runs: one line per epoch, the summary, and the warnings a user can act on.

Left alone, a 2-worker run prints every epoch line twice (Ray Train patches
``print`` in its workers to log through its logger, and Ray also forwards the
worker's stdout), a raw ``TrainingReport(...)`` per worker and epoch, and Ray
Data's progress bars and three execution lines per dataset and epoch. This
module holds the settings that turn those off (``aide-ray train --verbose``
keeps them): environment variables for Ray's worker processes, applied by
:func:`aide_ray.distributed.runtime.init_ray` to an embedded Ray; the same
loggers' levels for this process; and a logging filter Ray Data's console
handler uses in every process (``ray_data_logging.yaml``).
"""

from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["HideRayNotices", "QUIET_WORKER_ENV", "RAY_DATA_LOGGING_CONFIG", "quiet_loggers"]

RAY_DATA_LOGGING_CONFIG = Path(__file__).with_name("ray_data_logging.yaml")

# Environment of Ray's worker processes (and this one) for a quiet console.
QUIET_WORKER_ENV = {
    # print() in a Train worker goes to stdout once instead of through Ray Train's logger as well.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # Ray Data's console at WARNING (file logs keep everything).
    "RAY_DATA_LOGGING_CONFIG": str(RAY_DATA_LOGGING_CONFIG),
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    # Deprecation notices of Ray's own internals are for Ray's developers, not for a user of a run.
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
}


# Ray's INFO lines that ask nothing of the user: the raw dict of every ray.train.report() call (logged by
# a logger named after Ray's source file, hence by its text).
_NOTICES = ("Reporting training result",)
# Ray Data logs this hint at WARNING in the driver and in every SplitCoordinator, although the quiet
# console turned the bars off on purpose (QUIET_WORKER_ENV): dropped at any level.
_ANSWERED_WARNINGS = ("Progress bars disabled",)


class HideRayNotices(logging.Filter):
    """Drops Ray's notices that ask nothing of the user (:data:`_NOTICES` below WARNING, and
    :data:`_ANSWERED_WARNINGS` at any level)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(n in message for n in _ANSWERED_WARNINGS):
            return False
        return record.levelno >= logging.WARNING or not any(n in message for n in _NOTICES)


def quiet_loggers(verbose: bool = False) -> None:
    """This process's Ray Train and Ray Data loggers at WARNING, and Ray's notices off (all kept with ``verbose``)."""
    if verbose:
        return
    for name in ("ray.train", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    quiet = HideRayNotices()
    for handler in logging.getLogger().handlers:
        handler.addFilter(quiet)
