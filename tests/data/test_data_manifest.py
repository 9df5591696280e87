"""Manifest validation: every bad cell fails with the CSV name, the row and the problem."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from aide_ray.data.manifest import image_columns, read_manifest, write_manifest
from aide_ray.exceptions import InputError


def test_valid_manifest_resolves_paths_and_fills_optional_columns(tiny_case):
    path = tiny_case()
    df = read_manifest(path)
    assert list(df.index) == [1, 2]
    assert df.loc[1, "image"] == str(tiny_case.dir / "img0.nii.gz")
    assert os.path.isabs(df.loc[2, "label"])
    for col in ("annotator", "domain", "clean_label"):
        assert (df[col] == "").all()
    assert image_columns(list(df.columns)) == ["image"]


def test_several_modalities(tiny_case):
    path = tiny_case()
    df = pd.read_csv(path).rename(columns={"image": "image_0"})
    df["image_1"] = df["image_0"]
    df.to_csv(path, index=False)
    assert image_columns(list(read_manifest(path).columns)) == ["image_0", "image_1"]


@pytest.mark.parametrize("columns, match", [
    (["image", "image_0"], "either an 'image' column or"),
    (["image_0", "image_2"], r"image_0 \.\.\. image_1 without gaps"),
    (["case_id"], "missing required column 'image'"),
])
def test_image_column_errors(columns, match):
    with pytest.raises(InputError, match=match):
        image_columns(columns)


@pytest.mark.parametrize("rows, match", [
    ([{"label_kind": "good"}], r"manifest.csv row 1: label_kind must be one of \['hq', 'lq', 'scribble', 'none'\], got 'good'"),
    ([{}, {"split": "training"}], r"manifest.csv row 2: split must be one of \['train', 'val', 'test'\], got 'training'"),
    ([{}, {"case_id": "c0", "split": "train"}], r"row 2: duplicate \(case_id, annotator\) = \('c0', ''\) in split 'train'"),
    ([{}, {"case_id": "c0"}], r"row 2: duplicate .* in splits 'train' and 'val'"),
    ([{"image": "nope.nii.gz"}], r"row 1: image file not found: .*nope.nii.gz"),
    ([{"label": ""}], r"row 1: label_kind 'lq' needs a label file"),
    ([{"label_kind": "none"}], r"row 1: label_kind 'none' must have an empty label"),
    ([{"case_id": ""}], r"row 1: case_id must be non-empty"),
    ([{"annotator": "a/b"}], r"row 1: case_id and annotator must not contain '/'"),
    ([{"clean_label": "gone.nii.gz"}], r"row 1: clean_label file not found: .*gone.nii.gz"),
])
def test_bad_rows(tiny_case, rows, match):
    with pytest.raises(InputError, match=match):
        read_manifest(tiny_case(rows))


def test_same_case_different_annotators_is_fine(tiny_case):
    df = read_manifest(tiny_case([{"annotator": "r1"}, {"case_id": "c0", "annotator": "r2", "split": "train"}]))
    assert list(df["annotator"]) == ["r1", "r2"]


def test_empty_and_header_only_and_missing_column(tmp_path, tiny_case):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(InputError, match="empty.csv: the manifest is empty"):
        read_manifest(empty)
    header = tmp_path / "header.csv"
    header.write_text("case_id,image,label,label_kind,split\n")
    with pytest.raises(InputError, match="header.csv: the manifest has a header but no rows"):
        read_manifest(header)
    path = tiny_case()
    pd.read_csv(path).drop(columns=["split"]).to_csv(path, index=False)
    with pytest.raises(InputError, match="missing required column 'split'"):
        read_manifest(path)
    with pytest.raises(InputError, match="manifest not found"):
        read_manifest(tmp_path / "absent.csv")


def test_write_manifest_relative_round_trip(tiny_case, tmp_path):
    df = read_manifest(tiny_case())
    out = write_manifest(df, tiny_case.dir / "copy.csv", relative_to=tiny_case.dir)
    raw = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert raw.loc[0, "image"] == "img0.nii.gz"
    again = read_manifest(out)
    pd.testing.assert_frame_equal(again, df)


def test_unknown_columns_warn_with_the_closest_known_column(tiny_case):
    path = tiny_case()
    df = pd.read_csv(path)
    df["lable_kind"] = "hq"  # a typo beside the real column: silently ignored before
    df["notes"] = "x"
    df["noise_protocol"] = "pymic-jsrt"  # our own record columns are known
    df.to_csv(path, index=False)
    with pytest.warns(UserWarning) as caught:
        out = read_manifest(path)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "column 'lable_kind' is not a manifest column and is never read; did you mean 'label_kind'?" in messages[0]
    assert "column 'notes' is not a manifest column" in messages[1] and "known columns: case_id" in messages[1]
    assert list(out["lable_kind"]) == ["hq", "hq"]  # still kept
    df.drop(columns=["label_kind"]).to_csv(path, index=False)
    with pytest.raises(InputError, match="missing required column 'label_kind' \\('lable_kind' looks like a typo"):
        read_manifest(path)
