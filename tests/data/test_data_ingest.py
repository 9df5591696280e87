"""Ingest: shard contents, schema, determinism, dataset.json, and every bad input."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
import SimpleITK as sitk

from aide_ray.cli.main import main
from aide_ray.data.ingest import ROW_GROUP_SIZE, ingest, sample_id
from aide_ray.data.manifest import read_manifest
from aide_ray.data.image_io import read_image, read_label
from aide_ray.data.preprocess import Preprocessing, preprocess_case
from aide_ray.data.shards import SCHEMA, load_dataset_info, read_slices_local
from aide_ray.exceptions import InputError


def test_demo_shards_counts_and_schema(demo_manifest, demo_shards):
    info = load_dataset_info(demo_shards)
    df = read_manifest(demo_manifest)
    assert info["num_samples"] == 12 * 8 == len(df) * 8
    assert info["shape"] == [1, 64, 64]
    assert info["counts"]["split"] == {"test": 16, "train": 64, "val": 16}
    assert info["counts"]["label_kind"] == {"hq": 40, "lq": 56}
    assert info["counts"]["split_label_kind"] == {"test": {"hq": 16}, "train": {"hq": 8, "lq": 56},
                                                  "val": {"hq": 16}}
    assert info["preprocessing"] == Preprocessing(size=64).to_dict()
    assert info["manifest"] == str(demo_manifest.resolve())
    assert info["shards"] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert len(info["source_sha256"]) == 12 + 12 + 7  # images, HQ labels, LQ labels
    assert [c["case_id"] for c in info["cases"]] == sorted(df["case_id"])
    assert all(c["num_slices"] == 8 for c in info["cases"])
    case0 = info["cases"][0]
    assert case0["images"] == [df.loc[1, "image"]] and case0["label"] == df.loc[1, "label"]
    assert case0["clean_label"] == df.loc[1, "clean_label"] and case0["split"] == "train"

    ids, indices = [], []
    for name in info["shards"]:
        f = pq.ParquetFile(demo_shards / name)
        assert f.schema_arrow.equals(SCHEMA)
        assert f.metadata.num_row_groups >= 1
        for g in range(f.metadata.num_row_groups):
            rg = f.metadata.row_group(g)
            assert rg.num_rows <= ROW_GROUP_SIZE
            assert rg.column(0).compression == "ZSTD"
        t = f.read()
        ids += t.column("sample_id").to_pylist()
        indices += t.column("sample_index").to_pylist()
    assert indices == list(range(96))
    assert ids == sorted(ids) and len(set(ids)) == 96
    assert ids[:2] == ["case_000/-/0000", "case_000/-/0001"]


def test_rows_match_preprocessing_of_the_case(demo_manifest, demo_shards):
    df = read_manifest(demo_manifest)
    rec = df[df["case_id"] == "case_003"].iloc[0]
    case = preprocess_case([read_image(rec["image"])], read_label(rec["label"]), Preprocessing(size=64))
    data = read_slices_local(demo_shards)
    rows = np.flatnonzero(data["case_id"] == "case_003")
    assert data["slice_index"][rows].tolist() == list(range(8))
    assert np.array_equal(data["image"][rows], case.image)
    assert np.array_equal(data["label"][rows], case.label)
    assert data["has_label"][rows].all() and not data["hq"][rows].any()
    clean = preprocess_case([read_image(rec["image"])], read_label(rec["clean_label"]), Preprocessing(size=64))
    assert np.array_equal(data["clean_label"][rows], clean.label)
    table = pq.read_table(demo_shards / "part-00000.parquet")
    assert table.column("spacing_z").to_pylist()[0] == pytest.approx(5.0)
    assert table.column("spacing_x").to_pylist()[0] == pytest.approx(0.8)


def test_ingest_is_byte_identical(demo_manifest, demo_shards, tmp_path):
    again = ingest(demo_manifest, tmp_path / "again", Preprocessing(size=64), rows_per_shard=32, progress=False)
    for name in [*load_dataset_info(demo_shards)["shards"], "dataset.json"]:
        assert (again / name).read_bytes() == (demo_shards / name).read_bytes(), name


def test_resampling_multi_rater_and_unlabelled_rows(tiny_case, tmp_path):
    path = tiny_case([{"annotator": "r2"}, {"case_id": "c0", "annotator": "r10", "split": "train",
                                             "label": "", "label_kind": "none", "image": "img0.nii.gz"}])
    out = ingest(path, tmp_path / "s", Preprocessing(target_spacing=(1.4, 1.8), size=16), rows_per_shard=4)
    info = load_dataset_info(out)
    assert info["num_samples"] == 6 and info["shape"] == [1, 16, 16]
    assert len(info["shards"]) == 2
    data = read_slices_local(out)
    # "c0/r10/" sorts before "c0/r2/" as strings: sample ids are in string order.
    assert list(data["sample_id"]) == [sample_id("c0", "r10", s) for s in range(3)] + \
        [sample_id("c0", "r2", s) for s in range(3)]
    assert data["has_label"].tolist() == [False] * 3 + [True] * 3
    assert not data["label"][:3].any() and data["label"][3:].any()
    assert np.array_equal(data["image"][:3], data["image"][3:])
    t = pq.read_table(out / "part-00000.parquet")
    assert t.column("spacing_x")[0].as_py() == 1.4 and t.column("spacing_z")[0].as_py() == 3.0


def _break(kind, tiny_case, write_volume, blob):
    d = tiny_case.dir
    if kind == "missing file":
        return tiny_case([{"image": "nope.nii.gz"}]), r"manifest.csv row 1: image file not found: .*nope.nii.gz"
    if kind == "unreadable image":
        (d / "img0.nii.gz").write_bytes(b"garbage" * 50)
        return tiny_case(), r"manifest.csv row 1: cannot read image .*img0.nii.gz"
    if kind == "truncated image":
        raw = (d / "img0.nii.gz").read_bytes()
        (d / "img0.nii.gz").write_bytes(raw[: len(raw) // 2])
        return tiny_case(), r"manifest.csv row 1: cannot read image .*img0.nii.gz: file is truncated"
    if kind == "geometry mismatch":
        write_volume(d / "lab0.nii.gz", blob(), spacing=(1.0, 1.0, 1.0))
        return tiny_case(), r"manifest.csv row 1: geometry mismatch between .*img0.nii.gz and .*lab0.nii.gz: spacing"
    if kind == "label values":
        write_volume(d / "lab0.nii.gz", blob() * 3)
        return tiny_case(), r"manifest.csv row 1: label .*lab0.nii.gz must contain only the values 0 and 1 .*\[0, 3\]"
    if kind in ("nan", "inf"):
        arr = np.ones((3, 32, 32), np.float32)
        arr[1, 5, 5] = np.nan if kind == "nan" else np.inf
        write_volume(d / "img0.nii.gz", arr)
        return tiny_case(), r"manifest.csv row 1: image .*img0.nii.gz has 1 NaN or infinite intensities"
    if kind == "4D image":
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 32, 32), np.float32), isVector=False),
                        str(d / "img0.nii.gz"))
        return tiny_case(), r"manifest.csv row 1: image .*img0.nii.gz must be 2D or 3D, got 4D"
    if kind == "duplicate case":
        return tiny_case([{}, {"case_id": "c0", "split": "train"}]), \
            r"manifest.csv row 2: duplicate \(case_id, annotator\) = \('c0', ''\) in split 'train'"
    if kind == "empty csv":
        (d / "manifest.csv").write_text("")
        return d / "manifest.csv", r"manifest.csv: the manifest is empty"
    if kind == "missing column":
        path = tiny_case()
        path.write_text(path.read_text().replace("label_kind", "kind"))
        return path, r"manifest.csv: missing required column 'label_kind'"
    if kind == "unknown label_kind":
        return tiny_case([{}, {"label_kind": "good"}]), \
            r"manifest.csv row 2: label_kind must be one of \['hq', 'lq', 'scribble', 'none'\], got 'good'"
    if kind == "unknown split":
        return tiny_case([{"split": "dev"}]), r"manifest.csv row 1: split must be one of .*, got 'dev'"
    raise AssertionError(kind)


BAD = ["missing file", "unreadable image", "truncated image", "geometry mismatch", "label values", "nan", "inf",
       "4D image", "duplicate case", "empty csv", "missing column", "unknown label_kind", "unknown split"]


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_raises_and_leaves_nothing(kind, tiny_case, write_volume, blob, tmp_path_factory):
    manifest, match = _break(kind, tiny_case, write_volume, blob)
    parent = tmp_path_factory.mktemp("out")
    with pytest.raises(InputError, match=match):
        ingest(manifest, parent / "shards", Preprocessing(size=32), progress=False)
    assert list(parent.iterdir()) == []


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_cli_one_line_nonzero(kind, tiny_case, write_volume, blob, tmp_path_factory, capsys):
    manifest, match = _break(kind, tiny_case, write_volume, blob)
    parent = tmp_path_factory.mktemp("out")
    assert main(["ingest", str(manifest), "--out", str(parent / "shards"), "--size", "32"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("aide-ray ingest: error: "), err
    assert re.search(match, err), err
    assert list(parent.iterdir()) == []


def test_cli_ok_and_existing_output(tiny_case, tmp_path, capsys):
    path = tiny_case()
    assert main(["ingest", str(path), "--out", str(tmp_path / "s"), "--size", "32", "--spacing", "1", "1",
                 "--normalize", "minmax", "--rows-per-shard", "2"]) == 0
    assert "6 slices (train 3, val 3) of shape [1, 32, 32] in 3 shard(s)" in capsys.readouterr().out
    info = json.loads((tmp_path / "s" / "dataset.json").read_text())
    assert info["preprocessing"]["target_spacing"] == [1.0, 1.0] and info["preprocessing"]["normalize"] == "minmax"
    assert main(["ingest", str(path), "--out", str(tmp_path / "s")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["ingest", str(path), "--out", str(tmp_path / "t"), "--size", "0"]) == 2
    assert "size must be an integer in [1, 4096], got 0" in capsys.readouterr().err
