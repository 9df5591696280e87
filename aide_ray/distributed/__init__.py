"""The Ray layer: Ray Data pipelines, the Ray Train backend and driver, the label-store actor, Tune, the prediction pool and the local head."""
