"""aide_ray: AIDE and its baselines for annotation-efficient medical image segmentation, on Ray."""

from aide_ray.config import Config, load_config
from aide_ray.exceptions import AideRayError, CheckpointError, ConfigError, InputError

__all__ = ["Config", "load_config", "AideRayError", "CheckpointError", "ConfigError", "InputError"]
__version__ = "0.1.0"
