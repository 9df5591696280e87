"""Tiny dataset folders in the nnU-Net v2, Decathlon and pairs layouts (8 x 8 x 4 volumes), for the layout tests.

A plain module rather than fixtures, so that tests build variants by calling
the functions with arguments (pytest puts this folder on sys.path).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SHAPE = (4, 8, 8)  # numpy order: 4 slices of 8 x 8


def volume(path: Path, value: float = 0.0, label: bool = False, classes=(0, 1)) -> Path:
    """An 8x8x4 volume: random intensities + ``value``, or a label holding ``classes``."""
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    if label:
        arr = np.zeros(SHAPE, np.uint8)
        for k, c in enumerate(classes):
            arr[:, 2 * k:2 * k + 2, 2:6] = c
    else:
        arr = (rng.random(SHAPE) * 10 + value).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.5, 2.0))
    img.SetOrigin((1.0, 2.0, 3.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), useCompression=True)
    return path


def make_nnunet(root: Path, cases=("case0", "case1"), test=("case2",), channels=2, classes=None) -> Path:
    """nnU-Net v2 raw dataset: 2 channels, imagesTr/labelsTr for ``cases``, imagesTs for ``test``."""
    labels = classes or {"background": 0, "lesion": 1}
    (root / "labelsTr").mkdir(parents=True)
    root.joinpath("dataset.json").write_text(json.dumps({
        "channel_names": {str(c): f"mod{c}" for c in range(channels)}, "labels": labels,
        "numTraining": len(cases), "file_ending": ".nii.gz"}))
    for folder, ids in (("imagesTr", cases), ("imagesTs", test)):
        for case in ids:
            for c in range(channels):
                volume(root / folder / f"{case}_{c:04d}.nii.gz", value=100 * c)
    for case in cases:
        volume(root / "labelsTr" / f"{case}.nii.gz", label=True)
    return root


def make_msd(root: Path, channels=2, cases=("t_001", "t_002"), test=("t_003",)) -> Path:
    """Decathlon task: 4D images of ``channels`` channels (3D when 1), json training/test lists."""
    def image(path: Path) -> None:
        parts = [sitk.ReadImage(str(volume(path.with_name(f"c{c}.nii.gz"), value=100 * c))) for c in range(channels)]
        sitk.WriteImage(sitk.JoinSeries(parts) if channels > 1 else parts[0], str(path), useCompression=True)
        for c in range(channels):
            path.with_name(f"c{c}.nii.gz").unlink()

    for case in cases:
        image(root / "imagesTr" / f"{case}.nii.gz")
        volume(root / "labelsTr" / f"{case}.nii.gz", label=True)
    for case in test:
        image(root / "imagesTs" / f"{case}.nii.gz")
    root.joinpath("dataset.json").write_text(json.dumps({
        "name": "Fake", "modality": {str(c): f"mod{c}" for c in range(channels)},
        "labels": {"0": "background", "1": "tumour"}, "numTraining": len(cases),
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases],
        "test": [f"./imagesTs/{c}.nii.gz" for c in test]}))
    return root


def make_pairs(root: Path, cases=("a", "b"), mask_dir="masks") -> Path:
    for case in cases:
        volume(root / "images" / f"{case}.nii.gz")
        volume(root / mask_dir / f"{case}.nii.gz", label=True)
    return root
