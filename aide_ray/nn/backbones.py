"""MONAI backbones: which networks ``model.name`` may select, the check of their arguments, and their build.

Its own file because it is the one place that knows MONAI (an optional extra,
``pip install aide_ray[monai]``) and because two floors use it: the model
section (:mod:`aide_ray.nn.model_config`) checks a MONAI network's arguments
when the config is built, before any Ray work, and
:func:`aide_ray.nn.model.build_model` builds the network. It imports neither
torch nor MONAI itself: a config of the built-in U-Net never loads MONAI, and
one of a MONAI backbone loads it once, on first use.

A backbone maps (B, M, H, W) to logits (B, C, H, W). aide_ray sets the three
arguments that tie a MONAI network to the run (``spatial_dims=2``,
``in_channels`` = the modalities M, ``out_channels`` = ``model.num_classes``);
``model.monai_args`` gives the rest, checked against the class's signature.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import TYPE_CHECKING, Any, Mapping

from aide_ray.exceptions import ConfigError
from aide_ray.options import fail

if TYPE_CHECKING:
    from torch import nn

__all__ = ["UNET", "MONAI_PREFIX", "MONAI_NETS", "BACKBONES", "FILLED_ARGS", "monai_net_name", "monai_class",
           "check_monai_args", "build_monai"]

UNET = "unet"
MONAI_PREFIX = "monai."
# The MONAI segmentation networks whose forward returns one (B, C, H, W) tensor in 2D
# (tests/nn/test_model_backbones.py builds and runs each); one more is one entry here.
MONAI_NETS = ("UNet", "BasicUNet", "AttentionUnet", "SegResNet", "SwinUNETR", "UNETR", "DynUNet")
BACKBONES = (UNET, *(MONAI_PREFIX + net for net in MONAI_NETS))
FILLED_ARGS = ("spatial_dims", "in_channels", "out_channels")
# Arguments that make forward return deep-supervision heads (a list, or a stacked
# (B, S, C, H, W) in training mode) and the value every method needs instead.
_FIXED_ARGS: dict[str, dict[str, Any]] = {"DynUNet": {"deep_supervision": False}}


def monai_net_name(name: str) -> str | None:
    """The MONAI class name of ``model.name`` ("monai.UNet" -> "UNet"), or None for the built-in U-Net."""
    return name[len(MONAI_PREFIX):] if name.startswith(MONAI_PREFIX) else None


def monai_class(net: str) -> type:
    """``monai.networks.nets.<net>``.

    Raises:
        ConfigError: MONAI is not installed (one line saying how to install it).
    """
    try:
        # Imported here, not at the top: MONAI is an optional extra and takes seconds to
        # import; only a config that selects a MONAI backbone needs it.
        nets = importlib.import_module("monai.networks.nets")
    except ImportError as e:
        raise ConfigError(f"model.name={MONAI_PREFIX}{net} needs MONAI: pip install aide_ray[monai]") from e
    return getattr(nets, net)


def _parameters(cls: type) -> dict[str, inspect.Parameter]:
    params = inspect.signature(cls.__init__).parameters
    return {name: p for name, p in params.items() if name != "self"
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}


def check_monai_args(net: str, args: Mapping[str, Any]) -> None:
    """Check ``model.monai_args`` against ``monai.networks.nets.<net>``'s signature.

    Raises:
        ConfigError: MONAI is missing; an argument aide_ray sets, one the class does not
            take (with the closest valid name and every valid name), a required one
            missing, or a value that would make the net return deep-supervision heads.
    """
    key = "model.monai_args"
    params = _parameters(monai_class(net))
    filled = sorted(k for k in args if k in FILLED_ARGS)
    if filled:
        fail(key, f"free of {list(FILLED_ARGS)} (aide_ray sets them: 2, the modalities, model.num_classes)",
             dict(args))
    valid = [k for k in params if k not in FILLED_ARGS]
    for name in args:
        if name not in params:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            fail(key, f"arguments of {MONAI_PREFIX}{net}{hint}: {valid}", name)
    missing = [k for k in valid if params[k].default is inspect.Parameter.empty and k not in args]
    if missing:
        fail(key, f"a mapping that gives {missing} (required by {MONAI_PREFIX}{net})", dict(args))
    for name, value in _FIXED_ARGS.get(net, {}).items():
        if name in args and args[name] != value:
            fail(f"{key}.{name}", f"{value!r} for {MONAI_PREFIX}{net} (every method reads one (B, C, H, W) output)",
                 args[name])


def build_monai(net: str, args: Mapping[str, Any], in_channels: int, num_classes: int) -> "nn.Module":
    """A fresh ``monai.networks.nets.<net>`` in 2D, mapping (B, in_channels, H, W) to logits (B, num_classes, H, W).

    Raises:
        ConfigError: MONAI is missing, or the network refuses the arguments' values
            (MONAI's own message, after the key).
    """
    check_monai_args(net, args)
    cls = monai_class(net)
    try:
        return cls(spatial_dims=2, in_channels=in_channels, out_channels=num_classes, **args)
    except (TypeError, ValueError, AssertionError) as e:
        raise ConfigError(f"model.monai_args must be values {MONAI_PREFIX}{net} accepts, got {dict(args)!r}: "
                          f"{e}") from e
