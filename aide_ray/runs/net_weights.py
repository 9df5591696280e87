"""One net's weights loaded by name where only auxiliary heads may differ (``model.init_from``).

A plain U-Net checkpoint starts URPC's net (which adds pyramid heads to the
decoder) and CCT's (which wraps the U-Net as ``unet`` and adds auxiliary
decoders): every tensor they share is loaded, the heads stay at their
initialisation. The other way round, a URPC or CCT checkpoint starts a plain
U-Net without its heads. Any other difference (a missing or extra tensor
elsewhere, another shape) is an error, as with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from aide_ray.nn.modules import unwrap

__all__ = ["NetInit", "load_matching"]


@dataclass(frozen=True)
class NetInit:
    """What ``model.init_from`` loaded into one net.

    Attributes:
        net: the net's name.
        folder: the checkpoint folder its weights came from.
        left_at_init: the net's auxiliary-head tensors the checkpoint has no weights for
            (URPC's pyramid heads, CCT's auxiliary decoders), kept at their initialisation.
        ignored: the checkpoint's auxiliary-head tensors this net has no place for.
    """

    net: str
    folder: Path
    left_at_init: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()

    @property
    def partial(self) -> bool:
        return bool(self.left_at_init or self.ignored)

    def describe(self) -> str:
        """One line for the console, naming the heads by module (``decoder.aux_heads``: 6 tensors)."""
        parts = [f"model.init_from: net {self.net!r} loaded from {self.folder}"]
        if self.left_at_init:
            parts.append(f"left at their initialisation (not in the checkpoint): {_modules(self.left_at_init)}")
        if self.ignored:
            parts.append(f"not used (no such heads here): {_modules(self.ignored)}")
        return "; ".join(parts)


# Module names of auxiliary heads, which a checkpoint may lack or hold in excess: URPC's pyramid heads
# (nn.unet.UNetDecoder.aux_heads) and CCT's auxiliary decoders (methods.cct.CctNet.aux_decoders).
_AUX_MODULES = ("aux_heads", "aux_decoders")
_WRAPPED_UNET = "unet."  # CctNet holds the U-Net whose weights a plain U-Net checkpoint has as .unet


def _is_aux(key: str) -> bool:
    return any(part in _AUX_MODULES for part in key.split("."))


def _plain_key(key: str) -> str:
    return key[len(_WRAPPED_UNET):] if key.startswith(_WRAPPED_UNET) else key


def _modules(keys: Iterable[str]) -> str:
    """``decoder.aux_heads (6 tensors)``: keys grouped by the path up to their auxiliary module."""
    counts: dict[str, int] = {}
    for key in keys:
        parts = key.split(".")
        cut = next(i for i, part in enumerate(parts) if part in _AUX_MODULES) + 1
        counts[".".join(parts[:cut])] = counts.get(".".join(parts[:cut]), 0) + 1
    return ", ".join(f"{module} ({n} tensors)" for module, n in counts.items())


def load_matching(net: nn.Module, weights: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Load ``weights`` into ``net`` by name; only auxiliary heads may be missing on either side.

    A plain U-Net's keys also fit the U-Net inside a wrapper (CCT's ``unet.``) and back.

    Returns:
        (the net's keys left at their initialisation, the checkpoint's keys not used).
    Raises:
        RuntimeError: any other key missing or extra, or a tensor of another shape (``net`` is then
            partly loaded).
    """
    target = unwrap(net)
    own = {_plain_key(k): k for k in target.state_dict()}  # shapes are checked by load_state_dict
    mapped = {own.get(_plain_key(k), k): v for k, v in weights.items()}
    ignored = sorted(k for k in mapped if k not in own.values() and _is_aux(k))
    result = target.load_state_dict({k: v for k, v in mapped.items() if k not in ignored}, strict=False)
    missing = [k for k in result.missing_keys if not _is_aux(k)]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"missing keys {_few(missing)}, unexpected keys {_few(result.unexpected_keys)}")
    return sorted(k for k in result.missing_keys if _is_aux(k)), ignored


def _few(keys: list[str]) -> str:
    return f"{keys[:3]}{f' and {len(keys) - 3} more' if len(keys) > 3 else ''}"
