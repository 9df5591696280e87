"""The base of every typed options section: range and choice checks with messages that name the key.

Sections are frozen dataclasses that check their fields in ``__post_init__``.
They are defined by the room that owns them (a method's options in the
method's own file, the model's in :mod:`aide_ray.nn.unet`, the run's in
:mod:`aide_ray.config`) and assembled into one :class:`aide_ray.config.Config`.
This module sits on the lowest floor so that any of them can use it.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from aide_ray.exceptions import ConfigError

__all__ = ["Section", "NoOptions", "fail"]


def fail(key: str, allowed: str, value: Any) -> None:
    """Raise ``ConfigError("<key> must be <allowed>, got <value>")``."""
    raise ConfigError(f"{key} must be {allowed}, got {value!r}")


class Section:
    """Mixin for an options dataclass: its dotted prefix (``aide``, ``data``) and shared checks."""

    _prefix: ClassVar[str] = ""

    def _key(self, name: str) -> str:
        return f"{self._prefix}.{name}" if self._prefix else name

    def _in_range(self, name: str, lo: float | None, hi: float | None, *, lo_open: bool = False,
                  hi_open: bool = False) -> None:
        value = getattr(self, name)
        bad = isinstance(value, float) and not math.isfinite(value)
        if lo is not None:
            bad = bad or (value <= lo if lo_open else value < lo)
        if hi is not None:
            bad = bad or (value >= hi if hi_open else value > hi)
        if bad:
            left = "(" if lo_open else "["
            right = ")" if hi_open or hi is None else "]"
            lo_s = "-inf" if lo is None else f"{lo:g}"
            hi_s = "inf" if hi is None else f"{hi:g}"
            fail(self._key(name), f"in {left}{lo_s}, {hi_s}{right}", value)

    def _one_of(self, name: str, options: Sequence[str]) -> None:
        value = getattr(self, name)
        if value not in options:
            close = difflib.get_close_matches(str(value), options, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            fail(self._key(name), f"one of {list(options)}{hint}", value)


@dataclass(frozen=True)
class NoOptions(Section):
    """The options of a method that has none."""
