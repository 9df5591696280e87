"""Evaluation: metrics, post-processing, reports and pictures.

The metrics and post-processing are re-exported here; the rest are imported
from their modules so that ``import aide_ray.eval`` does not pull in matplotlib
(torch it does, through the one Dice, which scores tensors on their device too):

- :mod:`aide_ray.eval.dice`: the one Dice (numpy and torch) and its empty-mask policy.
- :mod:`aide_ray.eval.metrics`: per-case DSC, IoU, RAVD, ASSD, MSSD, HD95, ... in mm.
- :mod:`aide_ray.eval.postprocess`: largest connected component, hole filling.
- :mod:`aide_ray.eval.stats`: paired t-test, mean ± std and p-value formats.
- :mod:`aide_ray.eval.evaluate`: per-case / summary tables, paired t-tests, report folder.
- :mod:`aide_ray.eval.report`: the printed tables, overlays and ``index.md`` of an evaluation.
- :mod:`aide_ray.eval.figures`: overlays and label-correction panels (and the shared canvas).
- :mod:`aide_ray.eval.figures_training`: Dice scatter and training curves.
- :mod:`aide_ray.eval.figures_run`: a run's figures folder (``aide-ray figures``).
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
