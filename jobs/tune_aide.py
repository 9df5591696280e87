"""Sweep AIDE's hyperparameters with Ray Tune (each trial is a Ray Train run).

    python jobs/tune_aide.py [--config CONFIG.yaml] [--space SPACE.yaml] [--num-samples N]
                             [--search random|grid|optuna] [--out DIR] [key=value ...]
    ray job submit --working-dir . -- python jobs/tune_aide.py --config CONFIG.yaml \
        --space jobs/configs/space.default.yaml

Without RAY_ADDRESS (and outside `ray job submit`) an embedded local Ray is
started; with no config the demo data and demo settings are used. See docs/tune.md.
"""

import sys
from pathlib import Path

# Under `ray job submit --working-dir .` the uploaded checkout, not an installed
# copy, must provide aide_ray; Python only puts this script's folder on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aide_ray.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
