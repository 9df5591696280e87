"""Inference: segmenting new images with a trained checkpoint, without Ray.

- :mod:`aide_ray.inference.sliding_window`: tiling and flip test-time augmentation on tensors (plain torch).
- :mod:`aide_ray.inference.predictor`: :class:`CasePredictor` (checkpoint, preprocessing, nets, geometry)
  and :func:`predict`, which writes an output folder, in this process or through a given case pool
  (``aide_ray.distributed.predict_pool`` runs one on Ray Data).

Nothing is re-exported here: import the module you need.
"""
