"""Tests of aide_ray.inference.predictor: a real checkpoint, geometry round trip, options, TTA, case pools, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from aide_ray.cli.main import main
from aide_ray.config import load_config
from aide_ray.data.preprocess import Preprocessing, preprocess_case
from aide_ray.eval.evaluate import evaluate_predictions
from aide_ray.exceptions import CheckpointError, InputError
from aide_ray.inference.predictor import (CasePredictor, PredictCase, PredictOptions, cases_from_input,
                                          encode_prediction, predict)
from aide_ray.methods.registry import method_class
from aide_ray.runs.checkpoint import save_checkpoint

TRAIN_SIZE = 32
# Volumes: (size xyz, spacing xyz, origin, direction): one larger than the training size after
# resampling (sliding window), one smaller (padding); both anisotropic and rotated.
VOLUMES = {
    "big": ((40, 60, 3), (0.8, 0.6, 4.0), (12.5, -30.0, 7.0), (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)),
    "small": ((20, 18, 2), (1.3, 1.1, 5.0), (-4.0, 2.0, 100.0),
              (0.8, -0.6, 0.0, 0.6, 0.8, 0.0, 0.0, 0.0, -1.0)),
}


def _image(arr: np.ndarray, spacing, origin, direction) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("predict")
    cfg = load_config(None, ["model.base_width=4", "eval.largest_component=true"])
    nets = method_class("aide").from_config(cfg, 1).build_nets()
    prep = Preprocessing(target_spacing=(1.0, 1.0), size=TRAIN_SIZE, normalize="zscore")
    ckpt = save_checkpoint(root / "run" / "checkpoint_000000", config=cfg, in_channels=1, epoch=0, nets=nets,
                           eval_nets=method_class("aide").eval_nets, optimizers={}, schedulers={},
                           label_store_snapshot=None,
                           dataset_info={"preprocessing": prep.to_dict(), "shape": [1, TRAIN_SIZE, TRAIN_SIZE]})
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for case_id, (size, spacing, origin, direction) in VOLUMES.items():
        shape = size[::-1]
        grid = np.indices(shape).astype(float)
        centre = [s / 2 for s in shape]
        label = (sum(((g - c) / (0.35 * s)) ** 2 for g, c, s in zip(grid[1:], centre[1:], shape[1:])) <= 1)
        label = np.broadcast_to(label, shape).astype(np.uint8)
        image = (rng.normal(size=shape) + 4.0 * label).astype(np.float32)
        sitk.WriteImage(_image(image, spacing, origin, direction), str(data / f"{case_id}.nii.gz"))
        sitk.WriteImage(_image(label, spacing, origin, direction), str(data / f"{case_id}_label.nii.gz"))
        rows.append({"case_id": case_id, "image": f"{case_id}.nii.gz", "label": f"{case_id}_label.nii.gz",
                     "label_kind": "hq", "split": "test"})
    pd.DataFrame(rows).to_csv(data / "manifest.csv", index=False)
    return {"root": root, "run": root / "run", "ckpt": ckpt, "data": data, "manifest": data / "manifest.csv",
            "prep": prep}


def _assert_same_geometry(pred_path: Path, ref_path: Path) -> None:
    pred, ref = sitk.ReadImage(str(pred_path)), sitk.ReadImage(str(ref_path))
    assert pred.GetSize() == ref.GetSize()
    assert pred.GetSpacing() == ref.GetSpacing()
    assert pred.GetOrigin() == ref.GetOrigin()
    # NIfTI stores a rotation as a float32 quaternion, so any write of a rotated image moves
    # the direction by ~1e-8; ours must match what SimpleITK itself writes for the input.
    np.testing.assert_allclose(pred.GetDirection(), ref.GetDirection(), rtol=0, atol=1e-6)
    roundtrip = pred_path.with_name(".roundtrip.nii.gz")
    sitk.WriteImage(ref, str(roundtrip))
    assert pred.GetDirection() == sitk.ReadImage(str(roundtrip)).GetDirection()
    roundtrip.unlink()


def _check_outputs(out: Path, data: Path) -> None:
    for case_id in VOLUMES:
        _assert_same_geometry(out / f"{case_id}.nii.gz", data / f"{case_id}.nii.gz")
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case_id}.nii.gz")))
        assert arr.dtype == np.uint8 and set(np.unique(arr)) <= {0, 1}
    info = json.loads((out / "predict_info.json").read_text())
    assert [c["case_id"] for c in info["cases"]] == list(VOLUMES)


def test_predict_in_process_keeps_geometry_and_evaluates(workspace):
    out = workspace["root"] / "pred_local"
    files = predict(workspace["run"], workspace["manifest"], out, progress=False)
    assert [f.name for f in files] == ["big.nii.gz", "small.nii.gz"]
    _check_outputs(out, workspace["data"])
    res = evaluate_predictions(out, workspace["manifest"], workspace["root"] / "eval_local", progress=False)
    assert list(res.per_case["case_id"]) == ["big", "small"]
    assert res.per_case["dice"].between(0, 1).all()
    assert (workspace["root"] / "eval_local" / "summary.csv").is_file()


class _FakePool:
    """A case pool in this process: encodes each case like a remote worker and writes the bytes."""

    def __init__(self):
        self.calls = []

    def __call__(self, checkpoint, cases, options, out, progress):
        self.calls.append((checkpoint, [c.case_id for c in cases], options))
        predictor = CasePredictor(checkpoint, options)
        records = []
        for case in reversed(cases):  # completion order differs from case order
            (out / case.out_name).write_bytes(encode_prediction(predictor.predict_case(case), case.out_name))
            records.append({"case_id": case.case_id, "file": case.out_name, "seconds": 0.0})
        return records, []


def test_pool_runs_many_cases_and_matches_in_process(workspace):
    pool = _FakePool()
    out = workspace["root"] / "pred_pool"
    files = predict(workspace["ckpt"], workspace["manifest"], out, options=PredictOptions(device="auto"),
                    pool=pool, progress=False)
    assert [f.name for f in files] == ["big.nii.gz", "small.nii.gz"]
    _check_outputs(out, workspace["data"])
    info = json.loads((out / "predict_info.json").read_text())
    assert info["ray"] is True and info["options"]["device"] == "auto"
    (checkpoint, case_ids, options), = pool.calls
    assert checkpoint == workspace["ckpt"] and case_ids == list(VOLUMES)
    # The pool gets the run's post-processing filled in and the device asked for.
    assert options.largest_component is True and options.fill_holes is False and options.device == "auto"
    local = workspace["root"] / "pred_local_for_pool"
    predict(workspace["ckpt"], workspace["manifest"], local, pool=pool, use_pool=False, progress=False)
    assert len(pool.calls) == 1 and json.loads((local / "predict_info.json").read_text())["ray"] is False
    for case_id in VOLUMES:
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case_id}.nii.gz"))),
                              sitk.GetArrayFromImage(sitk.ReadImage(str(local / f"{case_id}.nii.gz"))))


def test_one_case_stays_in_process_unless_the_pool_is_asked_for(workspace, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(workspace["data"] / "small.nii.gz")), str(one / "small.nii.gz"))
    pool = _FakePool()
    predict(workspace["ckpt"], one, tmp_path / "a", pool=pool, progress=False)
    assert pool.calls == []
    predict(workspace["ckpt"], one, tmp_path / "b", pool=pool, use_pool=True, progress=False)
    assert [c[1] for c in pool.calls] == [["small"]]
    with pytest.raises(ValueError, match="use_pool=True needs a pool, got pool=None"):
        predict(workspace["ckpt"], one, tmp_path / "c", use_pool=True, progress=False)


def test_pool_failures_are_listed_and_nothing_is_written(workspace, tmp_path):
    def failing(checkpoint, cases, options, out, progress):
        (out / "partial.nii.gz").write_bytes(b"x")
        return [], [f"case {c.case_id}: boom" for c in cases]

    with pytest.raises(InputError, match=r"2 of 2 case\(s\) could not be segmented:\n  case big: boom\n  case small"):
        predict(workspace["ckpt"], workspace["manifest"], tmp_path / "o", pool=failing, progress=False)
    assert not (tmp_path / "o").exists()


def test_encode_prediction_matches_a_written_file(workspace, tmp_path):
    image = CasePredictor(workspace["ckpt"], PredictOptions()).predict_case(
        PredictCase("small", (str(workspace["data"] / "small.nii.gz"),), "small.nii.gz"))
    path = tmp_path / "small.nii.gz"
    path.write_bytes(encode_prediction(image, "small.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), sitk.GetArrayFromImage(image))


def test_folder_input_png_output_and_net_choice(workspace, tmp_path):
    folder = tmp_path / "pngs"
    folder.mkdir()
    arr = (np.random.default_rng(1).random((40, 28)) * 255).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(folder / "xray1.png"))
    (folder / "notes.txt").write_text("ignored")
    cases = cases_from_input(folder)
    assert [(c.case_id, c.out_name) for c in cases] == [("xray1", "xray1.png")]
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(workspace["run"]), "--input", str(folder), "--out", str(out),
                 "--net", "2", "--tta", "flip", "--fill-holes"]) == 0
    pred = sitk.ReadImage(str(out / "xray1.png"))
    assert pred.GetSize() == (28, 40)
    assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 255}


def test_options_resolve_nets_and_run_postprocessing(workspace):
    p = CasePredictor(workspace["ckpt"], PredictOptions(net="2"))
    assert p.net_names == ("net2",) and p.options.largest_component is True and p.options.fill_holes is False
    both = CasePredictor(workspace["ckpt"], {"net": "ensemble", "largest_component": False})
    assert both.net_names == ("net1", "net2") and both.options.largest_component is False


def test_flip_tta_is_the_mean_over_flips(workspace):
    p = CasePredictor(workspace["ckpt"], PredictOptions(tta="flip"))
    plain = CasePredictor(workspace["ckpt"], PredictOptions())
    x = np.random.default_rng(2).normal(size=(2, 1, TRAIN_SIZE, TRAIN_SIZE)).astype(np.float32)
    expected = (plain.predict_slices(x) + plain.predict_slices(x[..., ::-1])[..., ::-1]
                + plain.predict_slices(x[..., ::-1, :])[..., ::-1, :]) / 3
    np.testing.assert_allclose(p.predict_slices(x), expected, atol=1e-5)
    assert np.allclose(p.predict_slices(x).sum(1), 1.0, atol=1e-5)


def test_large_image_is_predicted_whole_not_cropped(workspace):
    """A slice bigger than the training size is padded and tiled: no region is left out."""
    big = sitk.ReadImage(str(workspace["data"] / "big.nii.gz"))
    p = CasePredictor(workspace["ckpt"], PredictOptions(largest_component=False))
    # The training preprocessing alone would crop 36 rows to 32.
    assert preprocess_case([big], None, workspace["prep"]).image.shape[-2:] == (TRAIN_SIZE, TRAIN_SIZE)
    out = p.predict_images([big])
    assert out.GetSize() == big.GetSize()


def test_errors(workspace, tmp_path):
    with pytest.raises(ValueError, match=r"net must be one of \['ensemble', '1'\] for method 'supervised'"):
        cfg = load_config(None, ["model.base_width=4", "method=supervised"])
        nets = method_class("supervised").from_config(cfg, 1).build_nets()
        ck = save_checkpoint(tmp_path / "sup", config=cfg, in_channels=1, epoch=0, nets=nets,
                             eval_nets=method_class("supervised").eval_nets, optimizers={},
                             schedulers={}, label_store_snapshot=None,
                             dataset_info={"preprocessing": workspace["prep"].to_dict(), "shape": [1, 32, 32]})
        CasePredictor(ck, PredictOptions(net="2"))
    small = load_config(None, ["model.base_width=4"])
    bare = save_checkpoint(tmp_path / "bare", config=small, in_channels=1, epoch=0,
                           nets=method_class("aide").from_config(small, 1).build_nets(),
                           eval_nets=method_class("aide").eval_nets,
                           optimizers={}, schedulers={}, label_store_snapshot=None, dataset_info={})
    with pytest.raises(CheckpointError, match="has no ingest record"):
        CasePredictor(bare, PredictOptions())
    with pytest.raises(CheckpointError, match="neither a checkpoint folder"):
        predict(tmp_path, workspace["manifest"], tmp_path / "o", progress=False)
    with pytest.raises(InputError, match="holds no image file"):
        (tmp_path / "empty").mkdir()
        predict(workspace["ckpt"], tmp_path / "empty", tmp_path / "o", progress=False)
    # A broken image fails with its file name, and the output folder is not created.
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.nii.gz").write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"1 of 1 case\(s\) could not be segmented:\n  case broken: cannot read"):
        predict(workspace["ckpt"], tmp_path / "bad", tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match=r"tta must be one of \['none', 'flip'\], got 'rot'"):
        PredictOptions(tta="rot")
