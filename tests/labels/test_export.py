"""Tests of aide_ray.labels.export and `aide-ray export-labels`.

Most tests build a run folder by hand (a checkpoint written by
``save_checkpoint`` with fresh nets, and a label-store snapshot with a few
commits) on tiny ingested demo data, so the exported files can be checked
against the committed masks exactly. One slow test exports a real run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from aide_ray.cli.main import main
from aide_ray.config import demo_config
from aide_ray.data.demo import make_demo_data
from aide_ray.data.ingest import ingest
from aide_ray.data.manifest import write_manifest
from aide_ray.data.noise import corrupt_manifest
from aide_ray.data.preprocess import Preprocessing
from aide_ray.data.shards import load_dataset_info, read_slices_local
from aide_ray.engine.local import train_local
from aide_ray.engine.step import make_optimizers
from aide_ray.eval.dice import mask_dice
from aide_ray.exceptions import CheckpointError, InputError
from aide_ray.label_values import UNANNOTATED
from aide_ray.labels import LabelStore
from aide_ray.labels.export import LABELS_CSV, export_labels
from aide_ray.methods.registry import method_class
from aide_ray.runs.checkpoint import save_checkpoint
from aide_ray.runs.folder import LABEL_STORE_FILE

SIZE = 48  # ingest size (a multiple of 16 for the U-Net): the 32 px demo slices are padded by 8 px a side
PAD = 8


def _square(y0: int, y1: int, x0: int, x1: int, size: int = SIZE) -> np.ndarray:
    out = np.zeros((size, size), np.uint8)
    out[y0:y1, x0:x1] = 1
    return out


def _ingested(root: Path, prep: Preprocessing) -> Path:
    manifest = make_demo_data(root / "raw", cases=4, slices=4, size=32)
    # 3 rows per shard: every case's 4 slices straddle two files.
    return ingest(manifest, root / "shards", prep, rows_per_shard=3, progress=False)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return _ingested(tmp_path_factory.mktemp("export"), Preprocessing(size=SIZE))


def _case_rows(shards_dir: Path, case_id: str) -> np.ndarray:
    """sample_index of a case's slices, in slice order."""
    rows = read_slices_local(shards_dir)
    mine = np.flatnonzero(rows["case_id"] == case_id)
    return rows["sample_index"][mine[np.argsort(rows["slice_index"][mine])]]


def _fake_run(run_dir: Path, shards_dir: Path, method: str, commits: list[tuple[int, int, np.ndarray]],
              slots: int | None = None) -> Path:
    """A run folder: one checkpoint with fresh nets, and a snapshot holding ``commits`` (slot, index, mask)."""
    cfg = demo_config([f"method={method}", "model.base_width=4", f"data.shards={shards_dir}"])
    plugin = method_class(method).from_config(cfg, 1)
    nets = plugin.build_nets()
    optimizers, schedulers = make_optimizers(cfg.optim, nets, plugin.trained_nets)
    info = load_dataset_info(shards_dir)
    source = read_slices_local(shards_dir)["label"]  # sample_index is dense, so row i is sample i
    store = LabelStore(int(info["num_samples"]), slots or plugin.label_slots, tuple(info["shape"][1:]))
    for slot, index, mask in commits:
        store.commit(0, slot, np.array([index]), mask[None], source[index][None])
    save_checkpoint(run_dir / "checkpoint_000000", config=cfg, in_channels=1, epoch=0, nets=nets,
                    eval_nets=plugin.eval_nets, optimizers=optimizers, schedulers=schedulers, label_store_snapshot=store.snapshot_bytes(),
                    dataset_info=info)
    store.save_snapshot(run_dir / LABEL_STORE_FILE)
    return run_dir


def _read(path: Path) -> tuple[sitk.Image, np.ndarray]:
    image = sitk.ReadImage(str(path))
    return image, sitk.GetArrayFromImage(image)


def _assert_same_grid(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def test_export_writes_committed_masks_in_input_geometry(shards, tmp_path):
    info = load_dataset_info(shards)
    cases = {c["case_id"]: c for c in info["cases"]}
    i0, i1 = _case_rows(shards, "case_000"), _case_rows(shards, "case_001")
    a, b = _square(10, 22, 12, 26), _square(14, 30, 8, 20)
    commits = [(0, int(i0[1]), a), (1, int(i0[2]), b), (0, int(i1[0]), b), (1, int(i1[0]), b)]
    run = _fake_run(tmp_path / "run", shards, "aide", commits)

    table = export_labels(run, tmp_path / "out")

    out = tmp_path / "out"
    train = sorted(c for c, r in cases.items() if r["split"] == "train")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [LABELS_CSV] + [f"{c}_{k}.nii.gz" for c in train for k in ("net1", "net2", "agreement")])
    for case_id in train:
        rec = cases[case_id]
        ref, _ = _read(Path(rec["images"][0]))
        _, source = _read(Path(rec["label"]))  # the label trained on, in the input grid
        labels = {}
        for kind in ("net1", "net2", "agreement"):
            image, labels[kind] = _read(out / f"{case_id}_{kind}.nii.gz")
            _assert_same_grid(image, ref)
            assert image.GetPixelID() == sitk.sitkUInt8
        np.testing.assert_array_equal(labels["agreement"], labels["net1"] & labels["net2"])
        expected = {"net1": source.copy(), "net2": source.copy()}
        for slot, index, mask in commits:
            rows = _case_rows(shards, case_id)
            if index in rows:
                expected[f"net{slot + 1}"][int(np.flatnonzero(rows == index)[0])] = mask[PAD:-PAD, PAD:-PAD]
        np.testing.assert_array_equal(labels["net1"], expected["net1"])
        np.testing.assert_array_equal(labels["net2"], expected["net2"])

    csv = pd.read_csv(out / LABELS_CSV, keep_default_na=False, na_values=[""])
    assert list(csv["case_id"]) == train == list(table["case_id"])
    row0 = csv.set_index("case_id").loc["case_000"]
    assert (row0["corrected_slices_net1"], row0["corrected_slices_net2"]) == (1, 1)
    row1 = csv.set_index("case_id").loc["case_001"]
    assert (row1["corrected_slices_net1"], row1["corrected_slices_net2"]) == (1, 1)
    assert row1["dice_net1_vs_net2"] == pytest.approx(1.0)  # both slots got the same mask
    assert row0["dice_net1_vs_net2"] < 1.0
    slices = read_slices_local(shards)
    for case_id in train:
        row = csv.set_index("case_id").loc[case_id]
        _, net1 = _read(out / f"{case_id}_net1.nii.gz")
        _, src = _read(Path(cases[case_id]["label"]))
        _, clean = _read(Path(cases[case_id]["clean_label"]))
        # No resampling and an all-zero pad ring: Dice on the input grid equals Dice on the slices.
        assert row["dice_net1_vs_source"] == pytest.approx(mask_dice(net1, src), abs=1e-6)
        assert row["dice_net1_vs_clean"] == pytest.approx(mask_dice(net1, clean), abs=1e-6)
        assert row["dice_source_vs_clean"] == pytest.approx(mask_dice(src, clean), abs=1e-6)
        assert row["slices"] == int((slices["case_id"] == case_id).sum())
        assert row["agreement_voxels"] == int((net1 & _read(out / f"{case_id}_net2.nii.gz")[1]).sum())
    assert row0["dice_net1_vs_source"] < 1.0


def test_export_after_resampling_and_crop_restores_input_grid(tmp_path):
    # 32 px at 0.8 mm resampled to 1 mm (26 px), then padded to 24: nearest-neighbour round trip.
    shards_dir = _ingested(tmp_path / "data", Preprocessing(target_spacing=(1.0, 1.0), size=24))
    run = _fake_run(tmp_path / "run", shards_dir, "aide", [])
    table = export_labels(run, tmp_path / "out")
    info = load_dataset_info(shards_dir)
    for rec in info["cases"]:
        if rec["split"] != "train":
            continue
        ref, _ = _read(Path(rec["images"][0]))
        image, net1 = _read(tmp_path / "out" / f"{rec['case_id']}_net1.nii.gz")
        _assert_same_grid(image, ref)
        _, source = _read(Path(rec["label"]))
        assert mask_dice(net1, source) > 0.85
    assert (table["corrected_slices_net1"] == 0).all() and (table["dice_net1_vs_source"] == 1.0).all()


def _png_dataset(root: Path) -> Path:
    """Two 2D PNG cases (32 x 28, labels stored as {0, 255}) ingested at 32 px."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows = []
    for i in range(2):
        disc = _square(8 + i, 20, 6, 18 + i, size=32)[:, :28]
        image = (rng.random((32, 28)) * 60 + disc * 120).astype(np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(image), str(root / f"img{i}.png"))
        sitk.WriteImage(sitk.GetImageFromArray(disc * np.uint8(255)), str(root / f"lab{i}.png"))
        rows.append({"case_id": f"p{i}", "image": f"img{i}.png", "label": f"lab{i}.png", "label_kind": "lq",
                     "split": "train"})
    write_manifest(pd.DataFrame(rows), root / "manifest.csv")
    return ingest(root / "manifest.csv", root / "shards", Preprocessing(size=32), progress=False)


def test_export_png_single_slot_method(tmp_path):
    shards_dir = _png_dataset(tmp_path / "png")
    mask = _square(5, 15, 10, 24, size=32)
    run = _fake_run(tmp_path / "run", shards_dir, "supervised", [(0, 0, mask)])
    table = export_labels(run, tmp_path / "out")

    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [LABELS_CSV, "p0_net1.png", "p1_net1.png"]
    assert not [c for c in table.columns if "net2" in c or "agreement" in c]
    assert list(table["corrected_slices_net1"]) == [1, 0]
    image, arr = _read(tmp_path / "out" / "p0_net1.png")
    assert image.GetSize() == (28, 32)
    assert set(np.unique(arr)) <= {0, 255}
    # 28 px wide input padded to 32: the restored label is the committed mask without the 2 px pad.
    np.testing.assert_array_equal(arr, mask[:, 2:30] * 255)
    _, unchanged = _read(tmp_path / "out" / "p1_net1.png")
    _, source = _read(tmp_path / "png" / "lab1.png")
    np.testing.assert_array_equal(unchanged, source)
    assert np.isnan(table["dice_net1_vs_clean"]).all()  # the manifest has no clean labels


def test_cli_export_labels(shards, tmp_path, capsys):
    run = _fake_run(tmp_path / "run", shards, "aide", [(0, int(_case_rows(shards, "case_000")[0]),
                                                        _square(10, 20, 10, 20))])
    assert main(["export-labels", str(run), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "2 case(s) written" in printed and "net1: 1 of 8 slices corrected" in printed
    assert main(["export-labels", str(run), "--out", str(tmp_path / "out")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export-labels", str(run), "--out", str(tmp_path / "out"), "--overwrite"]) == 0


def test_export_errors_name_the_problem(shards, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        export_labels(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a checkpoint folder"):
        export_labels(tmp_path / "empty", tmp_path / "out")

    run = _fake_run(tmp_path / "run", shards, "aide", [])
    other = _ingested(tmp_path / "other", Preprocessing(size=32))
    with pytest.raises(InputError, match=r"is not the one run .* differs .* in \[.*'preprocessing'"):
        export_labels(run, tmp_path / "out", shards=other)

    (run / LABEL_STORE_FILE).unlink()
    with pytest.raises(CheckpointError, match="has no label_store.npz"):
        export_labels(run, tmp_path / "out")

    # A snapshot made for another method (2 slots) than the checkpoint's (1 slot).
    bad = _fake_run(tmp_path / "bad", shards, "supervised", [], slots=2)
    with pytest.raises(CheckpointError, match=r"label_slots.*\(\d+, 2, .*method 'supervised'.*needs \(\d+, 1,"):
        export_labels(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_is_atomic_when_a_source_image_is_gone(tmp_path):
    shards_dir = _ingested(tmp_path / "data", Preprocessing(size=SIZE))
    run = _fake_run(tmp_path / "run", shards_dir, "aide", [])
    info = json.loads((shards_dir / "dataset.json").read_text())
    image = Path(next(c for c in info["cases"] if c["case_id"] == "case_001")["images"][0])
    shutil.move(image, tmp_path / "moved.nii.gz")
    with pytest.raises(InputError, match=r"case 'case_001': image file not found: .*case_001\.nii\.gz"):
        export_labels(run, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "moved.nii.gz", "run"]  # no out, no temp


def test_export_real_run(shards, tmp_path):
    cfg = demo_config(["epochs=1", "workers=1", "model.base_width=4", "aide.supervised_epochs=0", "aide.warmup_epochs=1",
                       "aide.num_augmentations=2", f"data.shards={shards}", f"run.storage_path={tmp_path / 'runs'}",
                       "run.name=r"])
    outcome = train_local(cfg)
    store = LabelStore.from_snapshot_file(outcome.run_dir / LABEL_STORE_FILE)
    table = export_labels(outcome.run_dir, tmp_path / "out")
    for slot in range(2):
        assert int(table[f"corrected_slices_net{slot + 1}"].sum()) == store.stats()["corrected"][slot]
    # Whether this one tiny epoch corrected anything depends on the nets (empty predictions are never
    # written); the hand-built stores above cover non-empty corrections, this covers a real run folder.
    for row in table.itertuples():
        image, arr = _read(tmp_path / "out" / row.file_net1)
        assert image.GetSize() == (32, 32, 4) and set(np.unique(arr)) <= {0, 1}


def test_export_scribbles_keeps_255_where_uncorrected(tmp_path):
    # Scribbles drawn from the demo masks; 32 px slices cropped to 24 (4 px a side never trained on).
    raw = make_demo_data(tmp_path / "raw", cases=4, slices=4, size=32)
    scribbles = corrupt_manifest(raw, tmp_path / "scribbles", "scribbles", seed=0)
    shards_dir = ingest(scribbles, tmp_path / "shards", Preprocessing(size=24), progress=False)
    rows = _case_rows(shards_dir, "case_000")
    full = _square(6, 18, 4, 16, size=24)
    run = _fake_run(tmp_path / "run", shards_dir, "aide", [(0, int(rows[1]), full), (1, int(rows[1]), full)])

    table = export_labels(run, tmp_path / "out").set_index("case_id")

    cases = {c["case_id"]: c for c in load_dataset_info(shards_dir)["cases"]}
    assert {cases[c]["label_kind"] for c in table.index} == {"scribble"}
    _, scribble = _read(Path(cases["case_000"]["label"]))
    _, net1 = _read(tmp_path / "out" / "case_000_net1.nii.gz")
    inside = (slice(None), slice(4, 28), slice(4, 28))
    expected = np.full_like(scribble, UNANNOTATED)  # what the crop removed is unannotated
    expected[inside] = scribble[inside]
    expected[1][4:28, 4:28] = full  # the corrected slice is a full label (inside the crop)
    np.testing.assert_array_equal(net1, expected)
    assert (scribble[inside] == UNANNOTATED).any() and (scribble == 1).any()
    _, agreement = _read(tmp_path / "out" / "case_000_agreement.nii.gz")
    np.testing.assert_array_equal(agreement, (expected == 1).astype(np.uint8))  # 255 is not foreground
    # Dice over annotated pixels: an uncorrected scribble agrees with its source and with the
    # mask it was drawn from; the full correction agrees with the scribble only where the scribble says so.
    assert table.loc["case_001", "dice_net1_vs_source"] == pytest.approx(1.0)
    assert table.loc["case_001", "dice_source_vs_clean"] < 1.0  # demo train labels are the noisy ones
    assert table.loc["case_000", "corrected_slices_net1"] == 1
    assert table.loc["case_000", "dice_net1_vs_source"] < 1.0


def test_export_png_scribble_keeps_its_values(tmp_path):
    root = tmp_path / "png"
    root.mkdir()
    scribble = np.full((32, 28), UNANNOTATED, np.uint8)
    scribble[10:14, 6:20], scribble[1, :] = 1, 0
    image = (np.arange(32 * 28).reshape(32, 28) % 200).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(image), str(root / "img.png"))
    sitk.WriteImage(sitk.GetImageFromArray(scribble), str(root / "scr.png"))
    write_manifest(pd.DataFrame([{"case_id": "p0", "image": "img.png", "label": "scr.png",
                                  "label_kind": "scribble", "split": "train"}]), root / "manifest.csv")
    shards_dir = ingest(root / "manifest.csv", root / "shards", Preprocessing(size=32), progress=False)
    run = _fake_run(tmp_path / "run", shards_dir, "supervised", [])
    export_labels(run, tmp_path / "out")
    _, arr = _read(tmp_path / "out" / "p0_net1.png")
    np.testing.assert_array_equal(arr, scribble)  # 1 stays 1 (not 255), 255 stays unannotated
