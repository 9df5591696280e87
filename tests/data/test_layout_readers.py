"""Layout readers: format detection, and bad layouts refused with the offending file named."""

from __future__ import annotations

import json
import shutil

import pytest

from aide_ray.data.layout_readers import detect_format, read_msd, read_nnunet, read_pairs
from aide_ray.exceptions import InputError
from layout_folders import make_msd, make_nnunet, make_pairs, volume


def test_detect_format(tmp_path):
    assert detect_format(make_nnunet(tmp_path / "n")) == "nnunet"
    assert detect_format(make_msd(tmp_path / "m", channels=1)) == "msd"
    assert detect_format(make_pairs(tmp_path / "p")) == "pairs"
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "dataset.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(InputError, match=r"odd/dataset\.json must have 'channel_names'.*got keys \['name'\]"):
        detect_format(tmp_path / "odd")
    (tmp_path / "n" / "dataset.json").unlink()
    with pytest.raises(InputError, match=r"n/dataset\.json not found"):
        detect_format(tmp_path / "n")
    with pytest.raises(InputError, match="layout folder .*missing not found"):
        detect_format(tmp_path / "missing")


def test_nnunet_label_without_image(tmp_path):
    root = make_nnunet(tmp_path / "d")
    volume(root / "labelsTr" / "case9.nii.gz", label=True)
    with pytest.raises(InputError, match=r"label .*labelsTr/case9\.nii\.gz has no image: expected "
                                         r".*imagesTr/case9_0000\.nii\.gz"):
        read_nnunet(root)


def test_nnunet_missing_channel_names_the_file(tmp_path):
    root = make_nnunet(tmp_path / "d")
    (root / "imagesTr" / "case1_0001.nii.gz").unlink()
    with pytest.raises(InputError, match=r"case 'case1' is missing channel file\(s\) .*imagesTr/case1_0001\.nii\.gz"):
        read_nnunet(root)
    volume(root / "imagesTr" / "case1_0001.nii.gz")
    volume(root / "imagesTr" / "case1_0002.nii.gz")
    with pytest.raises(InputError, match=r"case1_0002\.nii\.gz: channel must be < 2"):
        read_nnunet(root)


def test_nnunet_bad_names_and_json(tmp_path):
    root = make_nnunet(tmp_path / "d")
    volume(root / "imagesTr" / "case1.nii.gz")
    with pytest.raises(InputError, match=r"imagesTr/case1\.nii\.gz: nnU-Net image names must be CASE_XXXX"):
        read_nnunet(root)
    (root / "imagesTr" / "case1.nii.gz").unlink()
    info = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**info, "channel_names": {"0": "a", "2": "b"}}))
    with pytest.raises(InputError, match="'channel_names' keys must be 0 ... C-1 without gaps"):
        read_nnunet(root)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(InputError, match=r"dataset\.json must be a readable JSON file"):
        read_nnunet(root)


def test_nnunet_region_labels_hidden_files_and_labelled_test_cases(tmp_path):
    root = make_nnunet(tmp_path / "d", classes={"background": 0, "whole": [1, 2], "core": [2]})
    (root / "imagesTr" / "._case0_0000.nii.gz").write_bytes(b"AppleDouble junk")
    volume(root / "labelsTs" / "case2.nii.gz", label=True)
    found = read_nnunet(root)
    assert found.classes == {0: "background", 1: "whole", 2: "whole"}
    assert [(c.case_id, c.held_out, c.label is not None) for c in found.cases] == [
        ("case0", False, True), ("case1", False, True), ("case2", True, True)]


def test_msd_label_without_image_and_stray_labels(tmp_path):
    root = make_msd(tmp_path / "t", channels=1)
    (root / "imagesTr" / "t_002.nii.gz").unlink()
    with pytest.raises(InputError, match=r"label .*labelsTr/t_002\.nii\.gz has no image: .*training\[1\] names "
                                         r".*imagesTr/t_002\.nii\.gz, which is missing"):
        read_msd(root)
    root = make_msd(tmp_path / "u", channels=1)
    volume(root / "labelsTr" / "t_099.nii.gz", label=True)
    with pytest.raises(InputError, match=r"label .*labelsTr/t_099\.nii\.gz has no image: it is not listed"):
        read_msd(root)


def test_msd_4d_with_the_wrong_channel_count(tmp_path):
    root = make_msd(tmp_path / "t", channels=2)
    info = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**info, "modality": {"0": "a", "1": "b", "2": "c"}}))
    with pytest.raises(InputError, match=r"imagesTr/t_001\.nii\.gz must be 4D with 3 channels"):
        read_msd(root, channels_dir=tmp_path / "ch")


def test_nnunet_v1_folder_reads_per_channel_files(tmp_path):
    # nnU-Net v1: Decathlon-style json, but CASE_XXXX.nii.gz files per channel.
    v2 = make_nnunet(tmp_path / "v2", test=())
    root = make_msd(tmp_path / "v1", channels=2, test=())
    shutil.rmtree(root / "imagesTr")
    shutil.copytree(v2 / "imagesTr", root / "imagesTr")
    info = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**info, "training": [
        {"image": f"./imagesTr/case{i}.nii.gz", "label": f"./labelsTr/t_00{i + 1}.nii.gz"} for i in range(2)]}))
    found = read_msd(root)
    assert [p.name for p in found.cases[1].images] == ["case1_0000.nii.gz", "case1_0001.nii.gz"]


def test_pairs_mask_without_image_and_duplicates(tmp_path):
    root = make_pairs(tmp_path / "p")
    volume(root / "masks" / "zz.nii.gz", label=True)
    with pytest.raises(InputError, match=r"label .*masks/zz\.nii\.gz has no image: expected .*images/zz\.<suffix>"):
        read_pairs(root)
    (root / "masks" / "zz.nii.gz").unlink()
    volume(root / "images" / "a.nrrd")
    with pytest.raises(InputError, match=r"must not share the name 'a'"):
        read_pairs(root)
    (root / "images" / "a.nrrd").unlink()
    (root / "labels").mkdir()
    with pytest.raises(InputError, match="needs images/ and one of masks/ or labels/"):
        read_pairs(root)
