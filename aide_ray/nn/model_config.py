"""The model section of the configuration: network size and where its weights start.

Kept apart from :mod:`aide_ray.nn.model` (which builds networks, and imports
torch) so that reading and validating a config never imports torch: Ray Data
workers import the package only to decode rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from aide_ray.exceptions import ConfigError
from aide_ray.options import Section

__all__ = ["ModelConfig", "parse_init_from"]


@dataclass(frozen=True)
class ModelConfig(Section):
    """U-Net size. Input channels come from the dataset (number of modalities)."""

    _prefix: ClassVar[str] = "model"
    base_width: int = 16  # paper: 64 (64 ... 1024); small for CPU runs
    num_classes: int = 2  # including background
    # Checkpoints or run folders whose weights start the nets: one PATH for every net (a same-named
    # net, else its first inference net; the reference code starts both AIDE nets from one
    # pretrained network), or NET=PATH pairs separated by commas, e.g. "net1=runs/a,net2=runs/b".
    init_from: str = ""
    # 1x1 heads on the decoder's three coarser stages, read by a method through
    # net(x, pyramid=True) (URPC's pyramid; the urpc method builds its net with them whatever
    # this says). net(x), inference and every other method see the main logits only; a
    # method that never reads the heads leaves them untrained, and DDP rejects such parameters.
    deep_supervision: bool = False

    def __post_init__(self) -> None:
        self._in_range("base_width", 1, 1024)
        self._in_range("num_classes", 2, 255)
        parse_init_from(self.init_from, ())  # syntax only; net names are checked against the method


def parse_init_from(spec: str, net_names: tuple[str, ...]) -> dict[str, str]:
    """``model.init_from`` as net name -> path.

    Args:
        spec: "" (no net), "PATH" (every net) or "NAME=PATH,NAME=PATH".
        net_names: the method's nets; () checks the syntax only.
    Raises:
        ConfigError: a pair without a name or path, a name twice, or a name the method lacks.
    """
    spec = spec.strip()
    if not spec:
        return {}
    parts = [p.strip() for p in spec.split(",")]
    if not any("=" in p for p in parts):
        return {name: spec for name in net_names}
    out: dict[str, str] = {}
    for part in parts:
        name, sep, path = part.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ConfigError(f"model.init_from must be PATH or NET=PATH pairs separated by commas, got {spec!r}")
        if name in out:
            raise ConfigError(f"model.init_from names net {name!r} twice in {spec!r}")
        if net_names and name not in net_names:
            raise ConfigError(f"model.init_from names net {name!r}, but the method's nets are {list(net_names)}")
        out[name] = path
    return out
