"""``ExactSplits`` lives in a light module (no Ray cluster needed).

cloudpickle pickles a class by reference, so every Ray process that unpickles a
run's ``dataset_config`` (the Train controller, the DatasetManager, each worker)
imports the module that defines ``ExactSplits``. That module must not pull torch,
the engine or the methods: when it was ``distributed/trainer.py`` the import cost
the controller ~2.2 s and the DatasetManager ~3.7 s of a fit's start-up.
"""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys

import aide_ray.distributed.trainer as trainer
from aide_ray.distributed.splits import ExactSplits, labelled_count

# aide_ray's package __init__ imports the config, which imports the method registry (which itself imports nothing).
_PACKAGE_IMPORTS = {"aide_ray.methods", "aide_ray.methods.registry"}


def test_splits_module_imports_no_torch_engine_or_methods():
    code = ("import aide_ray.distributed.splits, sys; "
            "print(sorted(m for m in sys.modules if m.startswith(('torch', 'aide_ray.engine', 'aide_ray.methods', "
            "'aide_ray.distributed.', 'ray.train.torch'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    heavy = set(ast.literal_eval(done.stdout.strip().splitlines()[-1])) - _PACKAGE_IMPORTS - {"aide_ray.distributed.splits"}
    assert not heavy, sorted(heavy)


def test_exact_splits_is_pickled_by_reference_to_the_light_module():
    assert trainer.ExactSplits is ExactSplits and trainer.labelled_count is labelled_count
    assert ExactSplits.__module__ == "aide_ray.distributed.splits"
    config = pickle.loads(pickle.dumps(ExactSplits({"score": 5, "val": 3})))
    assert isinstance(config, ExactSplits) and config.rows == {"score": 5, "val": 3}
    assert b"aide_ray.distributed.splits" in pickle.dumps(ExactSplits({}))


def test_labelled_count_leaves_out_unlabelled_rows():
    assert labelled_count({"none": 7, "full": 3, "scribble": 2}) == 5
    assert labelled_count({}) == 0
