"""`aide-ray evaluate` on real NIfTI/PNG files: tables, annotators, t-tests, overlays, errors."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import stats

from aide_ray.cli.main import main
from aide_ray.eval.evaluate import evaluate_predictions, paired_ttests
from aide_ray.eval.metrics import METRIC_NAMES, binary_metrics
from aide_ray.exceptions import InputError

SPACING_XYZ = (0.8, 0.6, 4.0)
ORIGIN = (10.0, -5.0, 2.5)
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def _ball(shape, centre, radii) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    return (sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1).astype(np.uint8)


def _write(arr: np.ndarray, path: Path, spacing=SPACING_XYZ, origin=ORIGIN, direction=DIRECTION) -> Path:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    sitk.WriteImage(img, str(path))
    return path


@pytest.fixture()
def dataset(tmp_path):
    """Four 3D cases (test split) and one train case; predictions shifted by 0-3 voxels."""
    rng = np.random.default_rng(0)
    data, preds = tmp_path / "data", tmp_path / "preds"
    data.mkdir()
    preds.mkdir()
    rows = []
    shape = (6, 24, 20)
    for i in range(5):
        ref = _ball(shape, (3, 12, 10), (2.5, 7, 6))
        image = rng.normal(size=shape).astype(np.float32) + 3 * ref
        pred = np.roll(ref, i, axis=2)
        _write(image, data / f"c{i}_img.nii.gz")
        _write(ref, data / f"c{i}_lab.nii.gz")
        _write(pred, preds / f"c{i}.nii.gz")
        rows.append({"case_id": f"c{i}", "image": f"c{i}_img.nii.gz", "label": f"c{i}_lab.nii.gz",
                     "label_kind": "hq", "split": "test" if i < 4 else "train"})
    pd.DataFrame(rows).to_csv(data / "manifest.csv", index=False)
    return data / "manifest.csv", preds


def test_per_case_values_match_direct_metrics_in_numpy_spacing(dataset, tmp_path):
    manifest, preds = dataset
    res = evaluate_predictions(preds, manifest, tmp_path / "report", split="test", progress=False)
    table = res.per_case
    assert list(table["case_id"]) == ["c0", "c1", "c2", "c3"]
    assert list(table.columns) == ["case_id", "split", "prediction", "reference", *METRIC_NAMES]
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(manifest.parent / "c2_lab.nii.gz")))
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(preds / "c2.nii.gz")))
    expected = binary_metrics(pred, ref, SPACING_XYZ[::-1])
    for name in METRIC_NAMES:
        assert table.loc[2, name] == pytest.approx(expected[name])
    assert table.loc[0, "dice"] == 1.0 and table.loc[0, "hd95"] == 0.0
    # A shift of 2 voxels along x (0.8 mm, stored as float32 by NIfTI) bounds the Hausdorff distance.
    assert 0 < table.loc[2, "mssd"] <= 1.6 + 1e-6

    out = tmp_path / "report"
    per_case = pd.read_csv(out / "per_case.csv")
    assert per_case["dice"].to_numpy() == pytest.approx(table["dice"].to_numpy())
    summary = pd.read_csv(out / "summary.csv", index_col="metric")
    assert summary.loc["dice", "mean"] == pytest.approx(table["dice"].mean())
    assert summary.loc["dice", "std"] == pytest.approx(table["dice"].std(ddof=1))
    assert summary.loc["dice", "n"] == 4 and summary.loc["dice", "n_excluded"] == 0
    pngs = sorted(p.name for p in out.glob("overlay_*.png"))
    assert pngs == ["overlay_best_c0.png", "overlay_median_c2.png", "overlay_worst_c3.png"]
    for p in pngs:
        assert mpimg.imread(out / p).ndim == 3
    index = (out / "index.md").read_text(encoding="utf-8")
    assert "(per_case.csv)" in index and "(summary.csv)" in index and "(overlay_worst_c3.png)" in index


def test_compare_runs_paired_ttests_on_shared_cases(dataset, tmp_path):
    manifest, preds = dataset
    a = evaluate_predictions(preds, manifest, tmp_path / "a", split="test", overlays=False, progress=False)
    # B: a different "run" that only covers three of the cases.
    preds_b = tmp_path / "preds_b"
    preds_b.mkdir()
    for i in range(4):
        arr = sitk.ReadImage(str(preds / f"c{i}.nii.gz"))
        sitk.WriteImage(sitk.ReadImage(str(manifest.parent / f"c{i}_lab.nii.gz")) if i % 2 else arr,
                        str(preds_b / f"c{i}.nii.gz"))
    b = evaluate_predictions(preds_b, manifest, tmp_path / "b", split="test", overlays=False, progress=False)
    b.per_case.iloc[:3].to_csv(tmp_path / "b_three.csv", index=False)
    assert main(["evaluate", "--pred", str(preds), "--ref", str(manifest), "--split", "test",
                 "--out", str(tmp_path / "ab"), "--compare", str(tmp_path / "b_three.csv"), "--no-overlays"]) == 0
    comp = pd.read_csv(tmp_path / "ab" / "comparison.csv", index_col="metric")
    t, p = stats.ttest_rel(a.per_case["dice"][:3], b.per_case["dice"][:3])
    assert comp.loc["dice", "n"] == 3
    assert comp.loc["dice", "t"] == pytest.approx(t) and comp.loc["dice", "p"] == pytest.approx(p)
    assert comp.loc["dice", "mean_b"] == pytest.approx(b.per_case["dice"][:3].mean())
    assert list(comp.columns) == ["mean_a", "mean_b", "t", "p", "n"]


def test_paired_ttests_drop_nan_pairs():
    a = pd.DataFrame({"case_id": ["x", "y", "z", "w"], "dice": [0.9, 0.8, 0.7, 0.6],
                      "assd": [1.0, np.nan, 2.0, 3.5]})
    b = pd.DataFrame({"case_id": ["w", "z", "y", "q"], "dice": [0.5, 0.75, 0.6, 0.1], "assd": [3.0, 2.5, 1.0, 0.0]})
    comp = paired_ttests(a, b)
    assert comp.loc["dice", "n"] == 3 and comp.loc["assd", "n"] == 2
    t, p = stats.ttest_rel([0.8, 0.7, 0.6], [0.6, 0.75, 0.5])
    assert comp.loc["dice", "t"] == pytest.approx(t) and comp.loc["dice", "p"] == pytest.approx(p)
    with pytest.raises(InputError, match="share no case"):
        paired_ttests(a, b.assign(case_id=["a", "b", "c", "d"]))


def test_annotators_and_png_and_empty_masks(tmp_path):
    """2D PNG case scored against three annotators, one of whom labelled nothing."""
    data = tmp_path / "d"
    data.mkdir()
    ref = _ball((32, 32), (16, 16), (8, 8))
    sitk.WriteImage(sitk.GetImageFromArray((ref * 200).astype(np.uint8)), str(data / "img.png"))
    sitk.WriteImage(sitk.GetImageFromArray(ref * 255), str(data / "r1.png"))
    sitk.WriteImage(sitk.GetImageFromArray(np.roll(ref, 3, axis=0)), str(data / "r2.png"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros_like(ref)), str(data / "r3.png"))
    preds = tmp_path / "p"
    preds.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(ref * 255), str(preds / "case1.png"))
    pd.DataFrame([{"case_id": "case1", "image": "img.png", "label": f"r{k}.png", "label_kind": "lq",
                   "annotator": f"rater{k}", "split": "test"} for k in (1, 2, 3)]).to_csv(data / "m.csv", index=False)
    res = evaluate_predictions(preds, data / "m.csv", tmp_path / "out", progress=False)
    t = res.per_case.set_index("annotator")
    assert t.loc["rater1", "dice"] == 1.0
    assert 0 < t.loc["rater2", "dice"] < 1
    assert t.loc["rater3", "dice"] == 0.0 and np.isnan(t.loc["rater3", "assd"])
    assert res.summary.loc["assd", "n"] == 2 and res.summary.loc["assd", "n_excluded"] == 1
    assert (tmp_path / "out" / "overlay_worst_case1_rater3.png").is_file()


def test_errors_name_files(dataset, tmp_path, capsys):
    manifest, preds = dataset
    (preds / "c3.nii.gz").unlink()
    with pytest.raises(InputError, match=r"has no prediction for case\(s\) c3 of manifest.csv"):
        evaluate_predictions(preds, manifest, tmp_path / "r", split="test", progress=False)
    assert not (tmp_path / "r").exists()
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(preds / "c0.nii.gz")))
    _write(arr, preds / "c3.nii.gz", spacing=(0.8, 0.6, 5.0))
    with pytest.raises(InputError, match=r"geometry mismatch between .*c3_lab.nii.gz and .*c3.nii.gz: spacing"):
        evaluate_predictions(preds, manifest, tmp_path / "r", split="test", progress=False)
    assert not (tmp_path / "r").exists()
    with pytest.raises(InputError, match=r"no row of split 'val'; its splits are \['test', 'train'\]"):
        evaluate_predictions(preds, manifest, tmp_path / "r", split="val", progress=False)
    with pytest.raises(InputError, match="no row of split 'test' has a reference in column 'clean_label'"):
        evaluate_predictions(preds, manifest, tmp_path / "r", split="test", label_column="clean_label",
                             progress=False)
    (tmp_path / "exists").mkdir()
    assert main(["evaluate", "--pred", str(preds), "--ref", str(manifest), "--out", str(tmp_path / "exists")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_postprocessing_flags_change_scores(dataset, tmp_path):
    manifest, preds = dataset
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(preds / "c0.nii.gz")))
    arr[0, 0, 0] = 1  # a far island
    _write(arr, preds / "c0.nii.gz")
    raw = evaluate_predictions(preds, manifest, tmp_path / "raw", split="test", overlays=False, progress=False)
    lcc = evaluate_predictions(preds, manifest, tmp_path / "lcc", split="test", overlays=False, progress=False,
                               largest_component=True)
    assert raw.per_case.loc[0, "dice"] < 1.0 and raw.per_case.loc[0, "mssd"] > 5
    assert lcc.per_case.loc[0, "dice"] == 1.0 and lcc.per_case.loc[0, "mssd"] == 0.0


QUBIQ = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "qubiq_brain_growth"


@pytest.mark.skipif(not (QUBIQ / "masks").is_dir(), reason="real QUBIQ data not present")
def test_real_multi_rater_data_rater1_against_all_raters(tmp_path):
    """Rater 1's masks scored as predictions against all 7 raters of 4 real QUBIQ cases."""
    import shutil

    from medpy.metric import binary as mb

    preds = tmp_path / "rater1"
    preds.mkdir()
    rows = []
    for case in ("case01", "case02", "case03", "case04"):
        shutil.copy(QUBIQ / "masks" / f"{case}_rater1.png", preds / f"{case}.png")
        rows += [{"case_id": case, "image": str(QUBIQ / "images" / f"{case}.png"),
                  "label": str(QUBIQ / "masks" / f"{case}_rater{k}.png"), "label_kind": "lq",
                  "annotator": f"rater{k}", "split": "test"} for k in range(1, 8)]
    pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
    res = evaluate_predictions(preds, tmp_path / "m.csv", tmp_path / "out", progress=False)
    t = res.per_case
    assert len(t) == 28 and (t.loc[t["annotator"] == "rater1", "dice"] == 1.0).all()
    others = t[t["annotator"] != "rater1"]
    assert 0.7 < others["dice"].mean() < 0.95  # the documented inter-rater agreement
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(QUBIQ / "masks" / "case02_rater1.png"))) > 0
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(QUBIQ / "masks" / "case02_rater5.png"))) > 0
    row = t[(t["case_id"] == "case02") & (t["annotator"] == "rater5")].iloc[0]
    assert row["dice"] == pytest.approx(mb.dc(a, b)) and row["hd95"] == pytest.approx(mb.hd95(a, b))
    assert (tmp_path / "out" / "index.md").is_file()
