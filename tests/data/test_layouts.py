"""Layout folders (nnU-Net v2, Decathlon, pairs) become checked, split, editable manifests."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from aide_ray.data.image_io import check_same_geometry
from aide_ray.data.ingest import ingest
from aide_ray.data.layouts import LayoutOptions, build_manifest, write_layout_manifest
from aide_ray.data.manifest import read_manifest
from aide_ray.data.preprocess import Preprocessing
from aide_ray.data.shards import load_dataset_info
from aide_ray.exceptions import InputError
from layout_folders import make_msd, make_nnunet, make_pairs, volume

HALF = LayoutOptions(val_fraction=0.5)


def test_nnunet_manifest_has_channels_in_order_splits_and_test_cases(tmp_path):
    root = make_nnunet(tmp_path / "Dataset001_Fake")
    result = build_manifest(root, options=HALF)
    df = result.table
    assert (result.format, result.channel_names) == ("nnunet", ("mod0", "mod1"))
    assert result.classes == {0: "background", 1: "lesion"}
    assert list(df.columns) == ["case_id", "image_0", "image_1", "label", "label_kind", "split", "annotator", "domain"]
    assert df["case_id"].tolist() == ["case0", "case1", "case2"]
    for _, row in df.iterrows():
        folder = "imagesTs" if row.case_id == "case2" else "imagesTr"
        assert row.image_0 == str(root / folder / f"{row.case_id}_0000.nii.gz")
        assert row.image_1 == str(root / folder / f"{row.case_id}_0001.nii.gz")
    train = df[df.case_id != "case2"]
    assert sorted(train["split"]) == ["train", "val"] and set(train["label_kind"]) == {"hq"}
    assert train["label"].tolist() == [str(root / "labelsTr" / f"case{i}.nii.gz") for i in range(2)]
    test = df[df.case_id == "case2"].iloc[0]
    assert (test.split, test.label_kind, test.label) == ("test", "none", "")


def test_split_is_seeded_and_fractions_apply_to_labelled_cases(tmp_path):
    root = make_nnunet(tmp_path / "d", cases=tuple(f"c{i}" for i in range(10)), test=())
    splits = lambda **kw: build_manifest(root, options=LayoutOptions(**kw)).table["split"].tolist()
    assert splits(val_fraction=0.2, seed=3) == splits(val_fraction=0.2, seed=3)
    assert splits(val_fraction=0.2, seed=3) != splits(val_fraction=0.2, seed=4)
    counts = pd.Series(splits(val_fraction=0.2, test_fraction=0.3)).value_counts().to_dict()
    assert counts == {"train": 5, "test": 3, "val": 2}
    assert set(splits(val_fraction=0.0)) == {"train"}
    with pytest.raises(InputError, match="val_fraction"):
        LayoutOptions(val_fraction=1.0)
    with pytest.raises(InputError, match="label_kind"):
        LayoutOptions(label_kind="good")


def test_msd_4d_images_are_split_into_channel_files_on_the_label_grid(tmp_path):
    root = make_msd(tmp_path / "Task01_Fake")
    with pytest.raises(InputError, match=r"t_001\.nii\.gz is a 4D volume of 2 channels.*must be split"):
        build_manifest(root)
    result = build_manifest(root, options=HALF, channels_dir=tmp_path / "channels")
    df = result.table
    assert (result.format, result.channel_names) == ("msd", ("mod0", "mod1"))
    assert df["case_id"].tolist() == ["t_001", "t_002", "t_003"]
    assert df["split"].tolist()[2] == "test" and sorted(df["split"][:2]) == ["train", "val"]
    four_d = sitk.ReadImage(str(root / "imagesTr" / "t_001.nii.gz"))
    label = sitk.ReadImage(str(root / "labelsTr" / "t_001.nii.gz"))
    for c in range(2):
        path = df.loc[0, f"image_{c}"]
        assert path == str(tmp_path / "channels" / f"t_001_{c:04d}.nii.gz")
        channel = sitk.ReadImage(path)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(channel), sitk.GetArrayFromImage(four_d)[c])
        check_same_geometry(label, channel, "label", path)
    assert not list((tmp_path / "channels").glob(".*"))  # no temporary files left


def test_single_modality_msd_and_pairs_use_one_image_column(tmp_path):
    msd = build_manifest(make_msd(tmp_path / "Task02", channels=1), options=HALF).table
    assert "image" in msd.columns and msd.loc[0, "image"] == str(tmp_path / "Task02" / "imagesTr" / "t_001.nii.gz")
    pairs = build_manifest(make_pairs(tmp_path / "p", mask_dir="labels"), options=HALF)
    assert pairs.format == "pairs" and pairs.classes == {}
    assert pairs.table["case_id"].tolist() == ["a", "b"]
    assert pairs.table.loc[1, "label"] == str(tmp_path / "p" / "labels" / "b.nii.gz")


def test_label_values_outside_the_declared_classes_name_the_file(tmp_path):
    root = make_nnunet(tmp_path / "d")
    volume(root / "labelsTr" / "case1.nii.gz", label=True, classes=(0, 1, 3))
    with pytest.raises(InputError, match=r"label .*labelsTr/case1\.nii\.gz must hold only the classes .*found \[3\]"):
        build_manifest(root)
    assert len(build_manifest(root, options=LayoutOptions(check_labels=False)).table) == 3


def test_more_than_two_classes_warn_that_ingest_is_binary(tmp_path):
    root = make_nnunet(tmp_path / "d", classes={"background": 0, "a": 1, "b": 2})
    with pytest.warns(UserWarning, match="declares 3 classes.*binary"):
        build_manifest(root)


def test_unlabelled_training_images_are_an_error_unless_allowed(tmp_path):
    root = make_nnunet(tmp_path / "d")
    (root / "labelsTr" / "case1.nii.gz").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match=r"image .*imagesTr/case1_0000\.nii\.gz has no label"):
            build_manifest(root)
        df = build_manifest(root, options=LayoutOptions(allow_unlabelled=True)).table
    row = df[df.case_id == "case1"].iloc[0]
    assert (row.label_kind, row.label, row.split) == ("none", "", "train")


def test_unknown_format_and_layout_are_errors(tmp_path):
    with pytest.raises(InputError, match="format must be one of"):
        build_manifest(make_pairs(tmp_path / "p"), "nnunet-v9")
    (tmp_path / "empty" / "stuff").mkdir(parents=True)
    with pytest.raises(InputError, match=r"empty: unknown dataset layout.*found \['stuff'\]"):
        build_manifest(tmp_path / "empty")


def test_written_manifest_is_relative_editable_and_ingests(tmp_path):
    root = make_msd(tmp_path / "data" / "Task01_Fake")
    out = tmp_path / "work" / "manifest.csv"
    write_layout_manifest(root, out, options=HALF)
    text = out.read_text()
    assert str(tmp_path) not in text and "../data/Task01_Fake/labelsTr/t_001.nii.gz" in text
    assert "manifest_channels/t_001_0001.nii.gz" in text
    df = read_manifest(out)  # the project's own validation: columns, kinds, files exist
    assert df["split"].tolist().count("test") == 1
    with pytest.raises(FileExistsError, match="already exists"):
        write_layout_manifest(root, out)
    write_layout_manifest(root, out, options=LayoutOptions(val_fraction=0.0), overwrite=True)
    shards = ingest(out, tmp_path / "shards", Preprocessing(size=8), progress=False)
    info = load_dataset_info(shards)
    assert info["shape"] == [2, 8, 8] and info["counts"]["split"] == {"test": 4, "train": 8}
