"""Method name -> implementing class, imported on first use.

Adding a method is one new module in this package (its options dataclass,
its step and, for a method that corrects labels, its correction plan) and
one line here. The map holds import paths rather than classes so that the
registry itself imports nothing; a method's module is imported when its
class or options are first asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aide_ray.methods.base import Method

__all__ = ["METHOD_NAMES", "method_class", "options_class", "create_method"]

_METHODS: dict[str, str] = {
    "aide": "aide_ray.methods.aide:Aide",
    "supervised": "aide_ray.methods.supervised:Supervised",
    "coteaching": "aide_ray.methods.coteaching:CoTeaching",
    "gce": "aide_ray.methods.gce:Gce",
    "nrdice": "aide_ray.methods.nrdice:NrDice",
    "meanteacher": "aide_ray.methods.meanteacher:MeanTeacher",
    "entmin": "aide_ray.methods.entmin:EntMin",
    "uamt": "aide_ray.methods.uamt:Uamt",
    "urpc": "aide_ray.methods.urpc:Urpc",
    "cct": "aide_ray.methods.cct:Cct",
    "cps": "aide_ray.methods.cps:Cps",
    "mae": "aide_ray.methods.mae:Mae",
    "clslsr": "aide_ray.methods.clslsr:ClSlsr",
    "trinet": "aide_ray.methods.trinet:TriNet",
    "dast": "aide_ray.methods.dast:Dast",
    "pce": "aide_ray.methods.pce:Pce",
    "scribble_entmin": "aide_ray.methods.scribble_entmin:ScribbleEntMin",
    "tv": "aide_ray.methods.tv:Tv",
    "mumford_shah": "aide_ray.methods.mumford_shah:MumfordShah",
    "gated_crf": "aide_ray.methods.gated_crf:GatedCrf",
    "ustm": "aide_ray.methods.ustm:Ustm",
    "dmpls": "aide_ray.methods.dmpls:Dmpls",
}

METHOD_NAMES: frozenset[str] = frozenset(_METHODS)


def method_class(name: str) -> type["Method"]:
    """The class implementing method ``name``.

    Raises:
        ValueError: if ``name`` is not registered (lists the valid names).
    """
    if name not in _METHODS:
        raise ValueError(f"method must be one of {sorted(_METHODS)}, got {name!r}")
    module, cls = _METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def options_class(name: str) -> type:
    """The options dataclass of method ``name`` (its config section ``<name>.*``)."""
    return method_class(name).Options


def create_method(cfg: Any, in_channels: int) -> "Method":
    """The method ``cfg.method`` with its options from ``cfg`` (an :class:`aide_ray.config.Config`, which
    imports this registry, hence not named in the signature), for ``in_channels`` modalities."""
    return method_class(cfg.method).from_config(cfg, in_channels)
