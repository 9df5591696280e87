"""Project exceptions.

One place for the errors a user can see, so that the command line can turn
them into one clear line and a non-zero exit instead of a traceback.
"""

from __future__ import annotations

__all__ = ["AideRayError", "ConfigError", "InputError", "CheckpointError"]


class AideRayError(Exception):
    """Base class of every error aide_ray raises on purpose."""


class ConfigError(AideRayError, ValueError):
    """A configuration key or value is invalid; the message names the dotted key."""


class InputError(AideRayError, ValueError):
    """Input data is unusable; the message names the file or CSV row and the problem."""


class CheckpointError(AideRayError, RuntimeError):
    """A checkpoint or run folder is missing, incomplete or of an unknown format."""
