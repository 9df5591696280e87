"""Reading dataset folders as users keep them (nnU-Net v2, Decathlon, image/mask pairs) into cases.

Each layout has its own naming rules (``CASE_XXXX`` channel files, a json list
of training pairs, masks named like their images); this module knows them and
finds, per case, its image files in channel order and its label, and refuses
incomplete folders (a label without an image, a case missing a channel) with
a message naming the file. It is its own file because it knows only foreign
formats; :mod:`aide_ray.data.layouts` turns the cases into our manifest
(split, label classes, CSV).

- ``nnunet``: ``dataset.json`` with ``channel_names``, ``labels`` ({name: int
  or [int, ...]}), ``file_ending``; ``imagesTr/CASE_XXXX<ending>`` per channel,
  ``labelsTr/CASE<ending>``, optional ``imagesTs/`` (and ``labelsTs/``).
- ``msd``: ``dataset.json`` with ``modality``, ``labels`` ({"0": name}),
  ``training`` [{image, label}], ``test`` [path]. Multi-modal images are 4D
  (x, y, z, channel) while a manifest takes one file per modality, so they are
  split into ``channels_dir/CASE_XXXX.nii.gz``. nnU-Net v1 folders (the same
  json, per-channel ``CASE_XXXX`` files) are read as they are.
- ``pairs``: ``images/`` and ``masks/`` (or ``labels/``), matched by name.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from aide_ray.exceptions import InputError

__all__ = ["FORMATS", "MASK_DIRS", "LayoutCase", "LayoutCases", "detect_format", "read_msd", "read_nnunet",
           "read_pairs"]

FORMATS: tuple[str, ...] = ("nnunet", "msd", "pairs")
MASK_DIRS: tuple[str, ...] = ("masks", "labels")
_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_CHANNEL = re.compile(r"^(.+)_(\d{4})$")


@dataclass
class LayoutCase:
    """One case: ``images`` in channel order, ``label`` or None; ``held_out``: from imagesTs / the test list."""

    case_id: str
    images: list[Path]
    label: Path | None
    held_out: bool = False


@dataclass
class LayoutCases:
    """What a folder holds: its cases, modality names in channel order, declared classes ({} for pairs)."""

    format: str
    cases: list[LayoutCase]
    channel_names: tuple[str, ...]
    classes: dict[int, str]
    meta: Path  # dataset.json, or the folder for pairs: named in messages


def _natural_key(value: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", value))


def _stem(name: str, suffixes: tuple[str, ...] = _SUFFIXES) -> str | None:
    """The name without its image suffix, or None if it is not an image file name."""
    low = name.lower()
    return next((name[: -len(s)] for s in suffixes if low.endswith(s)), None)


def _visible(folder: Path) -> list[Path]:
    # "._x.nii.gz" AppleDouble files ship inside the Decathlon tarballs; hidden files are never data.
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: _natural_key(p.name))


def _read_json(path: Path) -> dict:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path} must be a readable JSON file, got: {e}") from None
    if not isinstance(info, dict):
        raise InputError(f"{path} must hold a JSON object, got {type(info).__name__}")
    return info


def _require(info: dict, key: str, meta: Path, what: str):
    if key not in info:
        raise InputError(f"{meta} must have a {key!r} entry ({what}); keys are {sorted(info)}")
    return info[key]


def _indexed_names(mapping, key: str, meta: Path) -> tuple[str, ...]:
    """``{"0": "T2", "1": "ADC"}`` -> ("T2", "ADC"), checking the keys are exactly 0 .. C-1."""
    try:
        items = sorted((int(k), str(v)) for k, v in dict(mapping).items())
    except (TypeError, ValueError):
        raise InputError(f"{meta}: {key!r} must map channel numbers '0', '1', ... to names, got {mapping!r}") from None
    if not items or [i for i, _ in items] != list(range(len(items))):
        raise InputError(f"{meta}: {key!r} keys must be 0 ... C-1 without gaps, got {[i for i, _ in items]}")
    return tuple(name for _, name in items)


def _pair_up(images: dict[str, list[Path]], labels: dict[str, Path], label_dir: Path, image_hint: str,
             allow_unlabelled: bool, held_out: bool = False) -> list[LayoutCase]:
    """Match labels to images by case id; ``image_hint`` formats the expected image of a case id."""
    for case_id, label in labels.items():
        if case_id not in images:
            raise InputError(f"label {label} has no image: expected {image_hint.format(case_id)}")
    cases = []
    for case_id in sorted(images, key=_natural_key):
        label = labels.get(case_id)
        if label is None and not held_out and not allow_unlabelled:
            raise InputError(f"image {images[case_id][0]} has no label in {label_dir} "
                             f"(allow unlabelled training cases to keep it as kind 'none')")
        cases.append(LayoutCase(case_id, images[case_id], label, held_out))
    return cases


def _classes_nnunet(labels, meta: Path) -> dict[int, str]:
    """nnU-Net v2 ``labels``: {name: int} or, for regions, {name: [int, ...]} -> {value: name}."""
    classes: dict[int, str] = {}
    for name, value in dict(labels).items():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise InputError(f"{meta}: labels[{name!r}] must be a class number >= 0 or a list of them, "
                                 f"got {value!r}")
            classes.setdefault(v, str(name))
    if 0 not in classes:
        raise InputError(f"{meta}: labels must declare the background as 0, got {dict(labels)!r}")
    return classes


def _channel_files(folder: Path, ending: str, num_channels: int) -> dict[str, list[Path]]:
    """``CASE_XXXX<ending>`` files of a folder -> {case: its channel files in order}, none missing."""
    found: dict[str, dict[int, Path]] = {}
    for path in _visible(folder):
        stem = _stem(path.name, (ending,))
        if stem is None:
            continue
        m = _CHANNEL.match(stem)
        if not m:
            raise InputError(f"{path}: nnU-Net image names must be CASE_XXXX{ending} (XXXX = 4-digit channel)")
        if int(m.group(2)) >= num_channels:
            raise InputError(f"{path}: channel must be < {num_channels} (dataset.json channel_names), "
                             f"got {int(m.group(2))}")
        found.setdefault(m.group(1), {})[int(m.group(2))] = path
    for case_id, channels in found.items():
        missing = [str(folder / f"{case_id}_{c:04d}{ending}") for c in range(num_channels) if c not in channels]
        if missing:
            raise InputError(f"case {case_id!r} is missing channel file(s) {', '.join(missing)}")
    return {case_id: [channels[c] for c in range(num_channels)] for case_id, channels in found.items()}


def read_nnunet(root: str | os.PathLike, *, allow_unlabelled: bool = False) -> LayoutCases:
    """The cases of an nnU-Net v2 raw dataset folder (``DatasetXXX_Name``).

    Raises:
        InputError: naming the file: missing or malformed dataset.json, badly
            named images, a label without an image, a case missing a channel,
            an image without a label (unless ``allow_unlabelled``).
    """
    root = Path(root)
    meta = root / "dataset.json"
    info = _read_json(meta)
    channels = _indexed_names(_require(info, "channel_names", meta, "nnU-Net v2 modality names"), "channel_names", meta)
    classes = _classes_nnunet(_require(info, "labels", meta, "class names and values"), meta)
    ending = str(info.get("file_ending", ".nii.gz"))
    if not (root / "imagesTr").is_dir():
        raise InputError(f"{root / 'imagesTr'} not found: an nnU-Net v2 dataset keeps its training images there")
    cases: list[LayoutCase] = []
    for part, held_out in (("Tr", False), ("Ts", True)):
        images = _channel_files(root / f"images{part}", ending, len(channels))
        labels = {s: p for p in _visible(root / f"labels{part}") if (s := _stem(p.name, (ending,))) is not None}
        hint = str(root / f"images{part}" / f"{{}}_0000{ending}")
        cases += _pair_up(images, labels, root / f"labels{part}", hint, allow_unlabelled, held_out)
        if not held_out and info.get("numTraining", len(cases)) != len(cases):
            # nnU-Net's own integrity check refuses this: most often an incomplete copy.
            warnings.warn(f"{meta}: numTraining is {info['numTraining']} but imagesTr holds {len(cases)} cases",
                          UserWarning, stacklevel=2)
    return LayoutCases("nnunet", cases, channels, classes, meta)


def _split_4d(image: sitk.Image, case_id: str, channels_dir: Path) -> list[Path]:
    """Write the channels of a 4D (x, y, z, c) image as ``channels_dir/CASE_XXXX.nii.gz`` (3D, same geometry)."""
    channels_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for c in range(image.GetSize()[3]):
        target = channels_dir / f"{case_id}_{c:04d}.nii.gz"
        # A temporary name that still ends in .nii.gz (ITK picks the writer by suffix), then a rename.
        tmp = channels_dir / f".{case_id}_{c:04d}.tmp-{os.getpid()}.nii.gz"
        try:
            sitk.WriteImage(image[:, :, :, c], str(tmp), useCompression=True)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        out.append(target)
    return out


def _msd_images(root: Path, entry: str, num_channels: int, channels_dir: Path | None, where: str,
                label: Path | None = None) -> list[Path]:
    """The per-channel files of one Decathlon image entry (``./imagesTr/x.nii.gz``)."""
    path = root / entry
    case_id = _stem(path.name) or path.name
    if not path.is_file():
        # nnU-Net v1 keeps the Decathlon json but stores CASE_XXXX.nii.gz per channel.
        per_channel = [path.parent / f"{case_id}_{c:04d}.nii.gz" for c in range(num_channels)]
        if all(p.is_file() for p in per_channel):
            return per_channel
        if label is not None:
            raise InputError(f"label {label} has no image: {where} names {path}, which is missing")
        raise InputError(f"{where}: image {path} not found")
    if num_channels == 1:
        return [path]  # a 3D volume as it is; ingest reads it (and rejects a 4D one, naming it)
    if channels_dir is None:
        raise InputError(f"image {path} is a 4D volume of {num_channels} channels; 4D multi-channel volumes must be "
                         f"split into per-channel files: pass channels_dir (aide-ray manifest does)")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputError(f"cannot read image {path}: {str(e).strip().splitlines()[-1]}") from None
    if image.GetDimension() != 4 or image.GetSize()[3] != num_channels:
        raise InputError(f"image {path} must be 4D with {num_channels} channels (dataset.json modality), "
                         f"got size {image.GetSize()}")
    return _split_4d(image, case_id, channels_dir)


def read_msd(root: str | os.PathLike, *, channels_dir: str | os.PathLike | None = None,
             allow_unlabelled: bool = False) -> LayoutCases:
    """The cases of a Medical Segmentation Decathlon task folder (``TaskXX_Name``), or an nnU-Net v1 one.

    Args:
        root: the task folder (holds dataset.json).
        channels_dir: where 4D multi-modal images are split into
            ``CASE_XXXX.nii.gz`` files; None: a multi-modal 4D image is an error.
        allow_unlabelled: accept training entries without a label.
    Raises:
        InputError: naming the file, as :func:`read_nnunet`; also a label in
            labelsTr/ that dataset.json does not list.
    """
    root = Path(root)
    meta = root / "dataset.json"
    info = _read_json(meta)
    channels = _indexed_names(_require(info, "modality", meta, "Decathlon modality names"), "modality", meta)
    labels = _require(info, "labels", meta, "class numbers and names")
    try:
        classes = {int(k): str(v) for k, v in dict(labels).items()}
    except (TypeError, ValueError):
        raise InputError(f"{meta}: labels must map class numbers '0', '1', ... to names, got {labels!r}") from None
    split_dir = Path(channels_dir) if channels_dir is not None else None
    cases, listed = [], set()
    for i, entry in enumerate(_require(info, "training", meta, "the list of training image/label pairs")):
        where = f"{meta} training[{i}]"
        if not isinstance(entry, dict) or "image" not in entry:
            raise InputError(f"{where} must be {{'image': ..., 'label': ...}}, got {entry!r}")
        label = root / entry["label"] if entry.get("label") else None
        if label is not None and not label.is_file():
            raise InputError(f"{where}: label {label} not found")
        if label is None and not allow_unlabelled:
            raise InputError(f"{where}: image {root / entry['image']} has no label")
        images = _msd_images(root, entry["image"], len(channels), split_dir, where, label)
        listed.add(os.path.normpath(label) if label is not None else "")
        cases.append(LayoutCase(_stem(Path(entry["image"]).name) or entry["image"], images, label))
    stray = [p for p in _visible(root / "labelsTr") if _stem(p.name) and os.path.normpath(p) not in listed]
    if stray:
        raise InputError(f"label {stray[0]} has no image: it is not listed in {meta} 'training'"
                         + (f" (nor are {len(stray) - 1} more)" if len(stray) > 1 else ""))
    for i, entry in enumerate(info.get("test", [])):
        entry = entry["image"] if isinstance(entry, dict) else entry
        images = _msd_images(root, entry, len(channels), split_dir, f"{meta} test[{i}]")
        cases.append(LayoutCase(_stem(Path(entry).name) or entry, images, None, held_out=True))
    return LayoutCases("msd", cases, channels, classes, meta)


def _by_stem(folder: Path, allow_dirs: bool) -> dict[str, Path]:
    """Image files (and, if allowed, DICOM folders) of a folder by name without suffix."""
    found: dict[str, Path] = {}
    for p in _visible(folder):
        stem = p.name if (allow_dirs and p.is_dir()) else _stem(p.name)
        if stem is None:
            continue
        if stem in found:
            raise InputError(f"{p} and {found[stem]} must not share the name {stem!r}; keep one")
        found[stem] = p
    return found


def read_pairs(root: str | os.PathLike, *, allow_unlabelled: bool = False) -> LayoutCases:
    """The cases of a folder of ``images/`` and ``masks/`` (or ``labels/``), matched by name (any image suffix).

    An entry of ``images/`` may also be a folder holding one DICOM series.
    There are no declared classes (ingest checks the label values).

    Raises:
        InputError: missing folders, both masks/ and labels/, two files of one
            name, a mask without its image, an image without its mask.
    """
    root = Path(root)
    mask_dirs = [root / n for n in MASK_DIRS if (root / n).is_dir()]
    if not (root / "images").is_dir() or len(mask_dirs) != 1:
        raise InputError(f"{root}: a pairs layout needs images/ and one of masks/ or labels/, "
                         f"got {sorted(p.name for p in _visible(root) if p.is_dir())}")
    images = {k: [v] for k, v in _by_stem(root / "images", True).items()}
    hint = str(root / "images" / "{}.<suffix>")
    cases = _pair_up(images, _by_stem(mask_dirs[0], False), mask_dirs[0], hint, allow_unlabelled)
    return LayoutCases("pairs", cases, ("image",), {}, root)


def detect_format(root: str | os.PathLike) -> str:
    """``nnunet``, ``msd`` or ``pairs``, from dataset.json's keys or the folder names.

    Raises:
        InputError: the folder is missing or matches none of the layouts.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"layout folder {root} not found")
    meta = root / "dataset.json"
    if meta.is_file():
        info = _read_json(meta)
        if "channel_names" in info:
            return "nnunet"
        if "modality" in info:
            return "msd"
        raise InputError(f"{meta} must have 'channel_names' (nnU-Net v2) or 'modality' (Decathlon), "
                         f"got keys {sorted(info)}")
    if (root / "images").is_dir() and any((root / n).is_dir() for n in MASK_DIRS):
        return "pairs"
    if (root / "imagesTr").is_dir():
        raise InputError(f"{meta} not found: an nnU-Net or Decathlon folder needs its dataset.json")
    raise InputError(f"{root}: unknown dataset layout; expected dataset.json + imagesTr/ (nnU-Net v2, Decathlon) "
                     f"or images/ + masks/ or labels/ (pairs), found {[p.name for p in _visible(root)][:10]}")
