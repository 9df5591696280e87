"""Evaluation: metrics, post-processing, reports, pictures and inference.

The light, dependency-free parts are re-exported here; the rest are imported
from their modules so that ``import aide_ray.eval`` pulls in neither torch nor
matplotlib:

- :mod:`aide_ray.eval.metrics`: per-case DSC, IoU, RAVD, ASSD, MSSD, HD95, ... in mm.
- :mod:`aide_ray.eval.postprocess`: largest connected component, hole filling.
- :mod:`aide_ray.eval.evaluate`: per-case / summary tables, paired t-tests, report folder.
- :mod:`aide_ray.eval.figures`: overlays, label-correction panels, Dice scatter, curves.
- :mod:`aide_ray.eval.predict`: segmenting images with a checkpoint (in process or on Ray Data).
"""

from aide_ray.eval.metrics import METRIC_NAMES, binary_metrics, case_metrics, sampling_from_spacing_xyz, summarize
from aide_ray.eval.postprocess import fill_holes, largest_component, postprocess

__all__ = [
    "METRIC_NAMES",
    "binary_metrics",
    "case_metrics",
    "sampling_from_spacing_xyz",
    "summarize",
    "fill_holes",
    "largest_component",
    "postprocess",
]
