"""Tests of aide_ray.distributed.predict_pool: the actor UDF, and the Ray Data pool against in-process prediction."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from aide_ray.cli.main import main
from aide_ray.config import load_config
from aide_ray.data.preprocess import Preprocessing
from aide_ray.distributed.predict_pool import PredictActor, RayCasePool
from aide_ray.eval.evaluate import evaluate_predictions
from aide_ray.exceptions import InputError
from aide_ray.inference.predictor import CasePredictor, PredictCase, PredictOptions, predict
from aide_ray.methods.registry import method_class
from aide_ray.runs.checkpoint import save_checkpoint

TRAIN_SIZE = 32
# (size xyz, spacing xyz, origin, direction): one case larger than the training size after resampling
# (sliding window), one smaller (padding); both anisotropic and rotated.
VOLUMES = {
    "big": ((40, 60, 3), (0.8, 0.6, 4.0), (12.5, -30.0, 7.0), (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)),
    "small": ((20, 18, 2), (1.3, 1.1, 5.0), (-4.0, 2.0, 100.0),
              (0.8, -0.6, 0.0, 0.6, 0.8, 0.0, 0.0, 0.0, -1.0)),
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A checkpoint of untrained AIDE nets with an ingest record, and a manifest of the two VOLUMES."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("predict_pool")
    cfg = load_config(None, ["model.base_width=4", "eval.largest_component=true"])
    prep = Preprocessing(target_spacing=(1.0, 1.0), size=TRAIN_SIZE, normalize="zscore")
    ckpt = save_checkpoint(root / "run" / "checkpoint_000000", config=cfg, in_channels=1, epoch=0,
                           nets=method_class("aide").from_config(cfg, 1).build_nets(),
                           eval_nets=method_class("aide").eval_nets, optimizers={}, schedulers={},
                           label_store_snapshot=None,
                           dataset_info={"preprocessing": prep.to_dict(), "shape": [1, TRAIN_SIZE, TRAIN_SIZE]})
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for case_id, (size, spacing, origin, direction) in VOLUMES.items():
        shape = size[::-1]
        image = sitk.GetImageFromArray(rng.normal(size=shape).astype(np.float32))
        label = sitk.GetImageFromArray((rng.random(shape) > 0.5).astype(np.uint8))
        for img, name in ((image, f"{case_id}.nii.gz"), (label, f"{case_id}_label.nii.gz")):
            img.SetSpacing(spacing)
            img.SetOrigin(origin)
            img.SetDirection(direction)
            sitk.WriteImage(img, str(data / name))
        rows.append({"case_id": case_id, "image": f"{case_id}.nii.gz", "label": f"{case_id}_label.nii.gz",
                     "label_kind": "hq", "split": "test"})
    pd.DataFrame(rows).to_csv(data / "manifest.csv", index=False)
    return {"root": root, "ckpt": ckpt, "data": data, "manifest": data / "manifest.csv"}


def _batch(cases: list[PredictCase]) -> dict[str, np.ndarray]:
    return {"case_id": np.array([c.case_id for c in cases]),
            "images": np.array([json.dumps(list(c.images)) for c in cases]),
            "out_name": np.array([c.out_name for c in cases])}


def test_actor_returns_encoded_files_and_errors(workspace, tmp_path):
    """The UDF alone, without a cluster: the bytes decode to the in-process prediction; failures are rows."""
    actor = PredictActor(str(workspace["ckpt"]), {"net": "ensemble", "largest_component": False})
    small = PredictCase("small", (str(workspace["data"] / "small.nii.gz"),), "small.nii.gz")
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    broken = PredictCase("broken", (str(tmp_path / "broken.nii.gz"),), "broken.nii.gz")
    out = actor(_batch([small, broken]))
    assert list(out["case_id"]) == ["small", "broken"] and out["error"][0] == ""
    assert out["error"][1].startswith("case broken: cannot read") and out["data"][1] == b""
    (tmp_path / "small.nii.gz").write_bytes(out["data"][0])
    expected = CasePredictor(workspace["ckpt"], PredictOptions(largest_component=False)).predict_case(small)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "small.nii.gz"))),
                          sitk.GetArrayFromImage(expected))


def test_pool_needs_an_actor():
    with pytest.raises(InputError, match="actors must be >= 1, got 0"):
        RayCasePool(actors=0)


@pytest.mark.ray
@pytest.mark.slow
def test_predict_on_ray_data_matches_in_process(workspace, ray_cluster):
    out = workspace["root"] / "pred_ray"
    rc = main(["predict", "--checkpoint", str(workspace["ckpt"]), "--input", str(workspace["manifest"]),
               "--out", str(out), "--ray", "--actors", "2", "--device", "cpu"])
    assert rc == 0
    info = json.loads((out / "predict_info.json").read_text())
    assert info["ray"] is True and [c["case_id"] for c in info["cases"]] == list(VOLUMES)
    local = workspace["root"] / "pred_local_cmp"
    predict(workspace["ckpt"], workspace["manifest"], local, progress=False)
    for case_id in VOLUMES:
        a = sitk.ReadImage(str(out / f"{case_id}.nii.gz"))
        b = sitk.ReadImage(str(local / f"{case_id}.nii.gz"))
        assert a.GetSize() == b.GetSize() and a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()
        assert a.GetDirection() == b.GetDirection()
        assert np.array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    res = evaluate_predictions(out, workspace["manifest"], workspace["root"] / "eval_ray", progress=False)
    assert len(res.per_case) == 2
