"""Config sections of the layers above config.py (the engine's tracking, the Ray layer's cluster placement).

They live here, beside config.py and free of Ray and torch, so that config.py imports only downward
(engine and distributed import config, never the reverse) and reading a config imports neither Ray nor
TensorBoard/MLflow.
"""
