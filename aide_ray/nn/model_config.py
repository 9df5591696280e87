"""The model section of the configuration: which network, its size, and where its weights start.

Kept apart from :mod:`aide_ray.nn.model` (which builds networks, and imports
torch) so that reading and validating a config never imports torch: Ray Data
workers import the package only to decode rows. A MONAI backbone's arguments
are checked against its class here, which imports MONAI (and torch) only for a
config that selects one (:mod:`aide_ray.nn.backbones`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from aide_ray.exceptions import ConfigError
from aide_ray.nn.backbones import BACKBONES, check_monai_args, monai_net_name
from aide_ray.options import Section, fail

__all__ = ["ModelConfig", "parse_init_from"]


@dataclass(frozen=True)
class ModelConfig(Section):
    """The network and its size. Input channels come from the dataset (number of modalities)."""

    _prefix: ClassVar[str] = "model"
    # "unet": the built-in U-Nets (nn/unet.py; one encoder per modality); "monai.<Net>": a MONAI
    # network of nn.backbones.MONAI_NETS in 2D (pip install aide_ray[monai]), e.g. "monai.BasicUNet".
    name: str = "unet"
    base_width: int = 16  # the built-in U-Net's width; paper: 64 (64 ... 1024); small for CPU runs
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
    # PyMIC's U-Net decoder (its UpBlock): each up-stage halves the channels with a 1x1 conv at the
    # coarse resolution before the bilinear x2 upsampling, instead of our 3x3 conv after it. About
    # 0.71x the FLOPs per training step for the same widths, so that a run can match the peer
    # toolkit's network cost (benchmarks/unet_flops.py, docs/performance.md); false keeps the
    # reference AIDE network and its checkpoints' keys. Built-in U-Net only.
    light_decoder: bool = False
    # The MONAI network's own arguments, e.g. {channels: [16, 32, 64], strides: [2, 2]} for
    # monai.UNet, checked against its signature; spatial_dims (2), in_channels (the modalities) and
    # out_channels (num_classes) are aide_ray's. A mapping given on the command line updates the
    # file's key by key. Not hashed: a dict.
    monai_args: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        self._in_range("base_width", 1, 1024)
        self._in_range("num_classes", 2, 255)
        parse_init_from(self.init_from, ())  # syntax only; net names are checked against the method
        self._one_of("name", BACKBONES)
        if not isinstance(self.monai_args, Mapping) or not all(isinstance(k, str) for k in self.monai_args):
            fail(self._key("monai_args"), "a mapping of argument names to values", self.monai_args)
        # Plain lists, not tuples: the config goes to YAML and to torch.load(weights_only=True).
        object.__setattr__(self, "monai_args", {k: _plain(v) for k, v in self.monai_args.items()})
        net = monai_net_name(self.name)
        if net is None:
            if self.monai_args:
                fail(self._key("monai_args"), "empty for model.name='unet' (it takes base_width)", self.monai_args)
            return
        if self.deep_supervision:
            fail(self._key("deep_supervision"), f"false for model.name={self.name!r} (the heads are the built-in "
                 "U-Net's)", self.deep_supervision)
        if self.light_decoder:
            fail(self._key("light_decoder"), f"false for model.name={self.name!r} (the light decoder is the "
                 "built-in U-Net's)", self.light_decoder)
        check_monai_args(net, self.monai_args)


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


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
