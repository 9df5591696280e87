"""Scribble labels through ingest: dataset.json counts, 255 kept in Parquet rows and decoded batches, bad files."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import SimpleITK as sitk
import torch

from aide_ray.cli.main import main
from aide_ray.config import load_config
from aide_ray.data.augment import no_flip
from aide_ray.data.decode import decode_batch
from aide_ray.data.ingest import ingest
from aide_ray.data.manifest import write_manifest
from aide_ray.data.preprocess import Preprocessing, prepare_label, restore_geometry
from aide_ray.data.shards import load_dataset_info, read_slices_local
from aide_ray.engine.batches import to_batch
from aide_ray.engine.run_setup import prepare_run
from aide_ray.exceptions import InputError
from aide_ray.label_values import UNANNOTATED
from aide_ray.labels import LabelCache

U = UNANNOTATED


def _scribble(shape=(3, 32, 32)) -> np.ndarray:
    """(S, H, W): a foreground stroke (1), a background stroke (0), 255 elsewhere; slice 2 unannotated."""
    out = np.full(shape, U, np.uint8)
    out[:2, 14:18, 10:22] = 1
    out[:2, 8:10, :] = 0
    return out


def _dataset(tiny_case, write_volume, scribble=None, **scribble_geometry):
    """tiny_case's two cases, c0 (train) labelled by a scribble, c1 (val) by its mask."""
    write_volume(tiny_case.dir / "scr0.nii.gz", _scribble() if scribble is None else scribble, **scribble_geometry)
    return tiny_case([{"label": "scr0.nii.gz", "label_kind": "scribble", "clean_label": "lab0.nii.gz"}])


def test_ingest_counts_scribbles_and_keeps_255_in_rows_and_batches(tiny_case, write_volume, tmp_path):
    manifest = _dataset(tiny_case, write_volume)
    out = ingest(manifest, tmp_path / "s", Preprocessing(size=40), progress=False)  # 32 px padded by 4 a side
    info = load_dataset_info(out)
    assert info["counts"]["label_kind"] == {"hq": 3, "scribble": 3}
    assert info["counts"]["split_label_kind"] == {"train": {"scribble": 3}, "val": {"hq": 3}}
    assert [c["label_kind"] for c in info["cases"]] == ["scribble", "hq"]

    expected = np.pad(_scribble(), ((0, 0), (4, 4), (4, 4)), constant_values=U)  # the padding is unannotated
    table = pq.read_table(out / info["shards"][0])
    train = table.filter(pc.field("split") == "train").sort_by("slice_index")
    raw = np.stack([np.frombuffer(b, np.uint8).reshape(40, 40) for b in train.column("label").to_pylist()])
    np.testing.assert_array_equal(raw, expected)
    assert train.column("label_kind").to_pylist() == ["scribble"] * 3

    rows = read_slices_local(out)
    assert rows["scribble"].tolist() == [True] * 3 + [False] * 3 and not rows["hq"][:3].any()
    assert rows["has_label"].all()
    np.testing.assert_array_equal(rows["label"][:3], expected)
    assert set(np.unique(rows["label"][3:])) == {0, 1}  # the val mask: no 255
    assert set(np.unique(rows["clean_label"][:3])) == {0, 1}  # clean_label is a full mask
    # Ray Data's numpy batches: binary cells as bytes in object arrays.
    decoded = decode_batch({name: train.column(name).to_numpy(zero_copy_only=False) for name in train.column_names})
    np.testing.assert_array_equal(decoded["label"], expected)
    assert decoded["scribble"].all()

    # The method's batch keeps 255 (class indices as int64), with or without corrections in the store.
    cache = LabelCache(6, 1, (40, 40))
    batch = to_batch(no_flip({k: v[:3] for k, v in rows.items()}), cache, 1, torch.device("cpu"))
    assert batch.labels.dtype == torch.int64
    np.testing.assert_array_equal(batch.labels[:, 0].numpy(), expected)


def test_nearest_neighbour_resampling_keeps_255_and_restores_the_scribble(write_volume, tmp_path):
    scribble = _scribble()
    reference = sitk.ReadImage(str(write_volume(tmp_path / "img.nii.gz", np.zeros((3, 32, 32), np.float32))))
    label = sitk.ReadImage(str(write_volume(tmp_path / "scr.nii.gz", scribble)))
    prep = Preprocessing(target_spacing=(0.35, 0.45), size=48)  # twice as fine: 64 px, cropped to 48
    slices = prepare_label(label, reference, prep, scribble=True)
    assert set(np.unique(slices)) == {0, 1, U}
    assert (slices[2] == U).all()
    restored = sitk.GetArrayFromImage(restore_geometry(slices, reference, prep, fill=U))
    # Pixels the crop removed come back unannotated; the rest is the scribble exactly.
    inside = restored != U
    np.testing.assert_array_equal(restored[inside], scribble[inside])
    np.testing.assert_array_equal(restored[:, 6:26, 6:26], scribble[:, 6:26, 6:26])
    # Read as a binary mask, 255 would be foreground: the kind decides.
    binary = prepare_label(sitk.ReadImage(str(write_volume(tmp_path / "m.nii.gz", (scribble == 1).astype(np.uint8)
                                                                                    * np.uint8(255)))),
                           reference, Preprocessing(size=32))
    assert set(np.unique(binary)) == {0, 1}


def test_png_scribble_ingests(tmp_path):
    image = (np.arange(24 * 20).reshape(24, 20) % 200).astype(np.uint8)
    scribble = np.full((24, 20), U, np.uint8)
    scribble[10:12, 5:15], scribble[0, :] = 1, 0
    sitk.WriteImage(sitk.GetImageFromArray(image), str(tmp_path / "img.png"))
    sitk.WriteImage(sitk.GetImageFromArray(scribble), str(tmp_path / "scr.png"))
    rows = [{"case_id": "p0", "image": "img.png", "label": "scr.png", "label_kind": "scribble", "split": "train"}]
    manifest = write_manifest(pd.DataFrame(rows), tmp_path / "manifest.csv")
    out = ingest(manifest, tmp_path / "s", Preprocessing(size=24), progress=False)
    label = read_slices_local(out)["label"][0]
    np.testing.assert_array_equal(label[:, 2:22], scribble)
    assert (label[:, :2] == U).all() and (label[:, 22:] == U).all()


def _bad(kind, tiny_case, write_volume):
    if kind == "values":
        bad = _scribble()
        bad[0, 0, 0], bad[1, 0, 0] = 2, 7
        return _dataset(tiny_case, write_volume, bad), \
            r"manifest.csv row 1: scribble label .*scr0.nii.gz must contain only the classes 0 and 1 and 255 " \
            r"\(unannotated\), found \[2, 7\]"
    if kind == "spacing":
        return _dataset(tiny_case, write_volume, spacing=(1.0, 1.0, 3.0)), \
            r"manifest.csv row 1: geometry mismatch between .*img0.nii.gz and .*scr0.nii.gz: spacing"
    if kind == "size":
        return _dataset(tiny_case, write_volume, _scribble((3, 30, 32))), \
            r"manifest.csv row 1: geometry mismatch between .*img0.nii.gz and .*scr0.nii.gz: size"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["values", "spacing", "size"])
def test_bad_scribble_is_one_line_naming_the_file(kind, tiny_case, write_volume, tmp_path, capsys):
    manifest, match = _bad(kind, tiny_case, write_volume)
    with pytest.raises(InputError, match=match):
        ingest(manifest, tmp_path / "s", Preprocessing(size=32), progress=False)
    assert main(["ingest", str(manifest), "--out", str(tmp_path / "s"), "--size", "32"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(match, err), err
    assert not (tmp_path / "s").exists()


def test_a_run_trains_on_scribbles_and_validates_only_on_full_masks(tiny_case, write_volume, tmp_path):
    shards = ingest(_dataset(tiny_case, write_volume), tmp_path / "s", Preprocessing(size=32), progress=False)
    base = [f"data.shards={shards}", f"run.storage_path={tmp_path / 'runs'}", "method=supervised"]
    setup = prepare_run(load_config(None, [*base, "run.name=a"]))
    assert setup.has_val  # train has only scribble rows: trainable; val has a full mask
    with pytest.raises(InputError, match=r"split 'train' \(data.val_split\) has 3 scribble slices; validation "
                                         r"needs full masks"):
        prepare_run(load_config(None, [*base, "run.name=b", "data.val_split=train"]))
    # A loss that needs a class at every pixel is refused before training, naming the methods that fit.
    for method in ("gce", "trinet", "coteaching"):
        extra = ["coteaching.pixel_level=true"] if method == "coteaching" else []
        with pytest.raises(InputError, match=rf"split 'train' has 3 scribble slices and method '{method}' needs a "
                                             r"class at every pixel; train scribbles with pce"):
            prepare_run(load_config(None, [*base, f"run.name=c{method}", f"method={method}", *extra]))
    prepare_run(load_config(None, [*base, "run.name=d", "method=coteaching"]))  # image-level: L_seg skips 255


@pytest.mark.ray
def test_ray_data_decodes_scribbles_like_the_local_reader(ray_cluster, tiny_case, write_volume, tmp_path):
    from aide_ray.distributed.shard_reader import read_slices, summarize

    shards = ingest(_dataset(tiny_case, write_volume), tmp_path / "s", Preprocessing(size=32), progress=False)
    ds = read_slices(shards, split="train").map_batches(decode_batch, batch_format="numpy")
    rows = next(iter(ds.iter_batches(batch_size=8, batch_format="numpy")))
    order = np.argsort(rows["slice_index"])
    np.testing.assert_array_equal(rows["label"][order], _scribble())
    assert rows["scribble"].all() and rows["has_label"].all()
    table = summarize(shards).set_index("label_kind")
    # Foreground counts class pixels, not the unannotated 255s: two 4 x 12 strokes in 3 slices of 32 x 32.
    assert table.loc["scribble", "foreground_fraction"] == pytest.approx(2 * 48 / (3 * 32 * 32))
