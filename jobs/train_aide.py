"""Train AIDE (or a baseline) with Ray, or in this process with --backend local.

    python jobs/train_aide.py [--config CONFIG.yaml] [--resume RUN_DIR] [--backend ray|local] [key=value ...]
    ray job submit --working-dir . -- python jobs/train_aide.py --config CONFIG.yaml

Without RAY_ADDRESS (and outside `ray job submit`) an embedded local Ray is
started; with no config the demo data is generated and trained on.
"""

import sys
from pathlib import Path

# Under `ray job submit --working-dir .` the uploaded checkout, not an installed
# copy, must provide aide_ray; Python only puts this script's folder on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aide_ray.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
