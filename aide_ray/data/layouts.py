"""Manifests from dataset folders as users keep them: nnU-Net v2 raw, Decathlon tasks, image/mask pairs.

:mod:`aide_ray.data.layout_readers` finds the cases of a folder; this module
makes them our manifest (:mod:`aide_ray.data.manifest`): it checks every
label's values against the classes the folder's dataset.json declares (naming
the file and the values), splits the labelled training cases into train/val
(and optionally test) with a seed, sends the held-out images (``imagesTs``,
the json's ``test``) to test as unlabelled rows, and writes the CSV with
relative paths so that the user can read and edit it. It is its own file
because it is the one place where a foreign layout meets the manifest's rules.

With ``label_kind="scribble"`` the folder's labels are scribbles (class indices,
255 unannotated): each is checked as ingest will read it (values, and the grid
of the case's first image, with the same functions ingest uses), and a folder of
full masks named like the labels (``masks``) gives the val and test rows the
full masks that validation and evaluation score against, and the train rows
their ``clean_label``.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from aide_ray.data.image_io import check_same_geometry, read_image, scribble_array
from aide_ray.data.label_kinds import HQ, LQ, NONE, SCRIBBLE
from aide_ray.data.layout_readers import FORMATS, LayoutCases, detect_format, read_msd, read_nnunet, read_pairs
from aide_ray.data.manifest import write_manifest
from aide_ray.data.recipes import split_cases
from aide_ray.exceptions import InputError
from aide_ray.label_values import UNANNOTATED

__all__ = ["LayoutManifest", "LayoutOptions", "build_manifest", "manifest_table", "write_layout_manifest"]


@dataclass(frozen=True)
class LayoutOptions:
    """How the cases of a layout become manifest rows.

    Attributes:
        val_fraction, test_fraction: shares of the labelled training cases sent
            to val and test (``round(fraction * n)`` each, seeded, as
            :func:`aide_ray.data.recipes.split_cases`); ``imagesTs`` / ``test``
            cases are test in any case.
        seed: seed of the split.
        label_kind: kind of every label, ``hq``, ``lq`` or ``scribble``.
        masks: (``scribble`` only) a folder of full masks named like the labels:
            val and test rows get theirs as label (kind ``hq``; it must exist),
            train rows as ``clean_label`` (where it exists). None: every label
            is a scribble, and a warning says that val and test need full masks.
        allow_unlabelled: keep training images without a label as train rows of
            kind ``none`` (default: an error naming the image).
        check_labels: read every label and check its values against the declared classes.
    """

    val_fraction: float = 0.1
    test_fraction: float = 0.0
    seed: int = 0
    label_kind: str = "hq"
    allow_unlabelled: bool = False
    check_labels: bool = True
    masks: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise InputError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise InputError(f"val_fraction + test_fraction must be < 1, got "
                             f"{self.val_fraction} + {self.test_fraction}")
        if self.label_kind not in (HQ, LQ, SCRIBBLE):
            raise InputError(f"label_kind must be 'hq', 'lq' or 'scribble', got {self.label_kind!r}")
        if self.masks is not None:
            if self.label_kind != SCRIBBLE:
                raise InputError(f"a folder of full masks ({self.masks}) goes with label_kind 'scribble', "
                                 f"got label_kind {self.label_kind!r}")
            if not Path(self.masks).is_dir():
                raise InputError(f"full-mask folder {self.masks} not found")


@dataclass(frozen=True)
class LayoutManifest:
    """A layout read as a manifest.

    Attributes:
        table: manifest rows with absolute paths: ``case_id``, ``image`` (one
            channel) or ``image_0`` ... ``image_{M-1}`` in channel order,
            ``label``, ``label_kind``, ``split``, ``annotator``, ``domain``.
        format: ``nnunet``, ``msd`` or ``pairs``.
        channel_names: modality names in image-column order.
        classes: declared label values -> names ({} for pairs).
    """

    table: pd.DataFrame
    format: str
    channel_names: tuple[str, ...]
    classes: dict[int, str] = field(default_factory=dict)


def _check_label(path: Path, classes: dict[int, str], meta: Path, image: sitk.Image | None = None, *,
                 scribble: bool = False) -> None:
    """Raise InputError if the label file holds a value that dataset.json does not declare (a scribble: nor 255)."""
    image = read_image(path) if image is None else image  # keep a reference: the view below does not own its memory
    values = np.unique(sitk.GetArrayViewFromImage(image))
    bad = [v for v in values.tolist() if v not in classes and not (scribble and v == UNANNOTATED)]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
        declared = ", ".join(f"{k} {n}" for k, n in sorted(classes.items()))
        what, extra = ("scribble label", f" and {UNANNOTATED} (unannotated)") if scribble else ("label", "")
        raise InputError(f"{what} {path} must hold only the classes declared in {meta} ({declared}){extra}, "
                         f"found [{shown}]")


def _check_scribble(path: Path, reference: Path, classes: dict[int, str], meta: Path) -> None:
    """Raise InputError, naming the file, for a scribble ingest would refuse: another grid than the case's first
    image, or values outside the declared classes (pairs: ingest's classes) and 255."""
    label = read_image(path)
    check_same_geometry(read_image(reference), label, str(reference), str(path))
    if classes:
        _check_label(path, classes, meta, label, scribble=True)
    else:
        scribble_array(label, str(path))


def _full_mask(label: Path, masks: str | os.PathLike | None, split: str, case_id: str) -> Path | None:
    """The full mask named like a scribble ``label`` in ``masks``; val and test rows must have one."""
    if masks is None:
        return None
    path = Path(masks) / label.name
    if path.is_file():
        return path
    if split != "train":
        raise InputError(f"{split} case {case_id!r} needs a full mask (validation and test score against full "
                         f"masks): {path} not found")
    return None


def manifest_table(found: LayoutCases, options: LayoutOptions = LayoutOptions()) -> LayoutManifest:
    """Check the labels of a folder's cases, split them, and build the manifest rows.

    Args:
        found: the cases, as a reader of :mod:`aide_ray.data.layout_readers` returns them.
        options: split and label options.
    Returns:
        The manifest; rows in case order (training cases, then held-out ones).
    Raises:
        InputError: no training case, a case id twice, a val or test scribble
            case without its full mask in ``masks``, or (``check_labels``) a
            label value outside the declared classes (a scribble's: outside them
            and 255), or a scribble on another grid than its image, naming the file.
    """
    cases = found.cases
    if all(c.held_out for c in cases):
        raise InputError(f"{found.meta}: found no training cases")
    dup = sorted(i for i, n in Counter(c.case_id for c in cases).items() if n > 1)
    if dup:
        raise InputError(f"{found.meta}: case ids must be unique across training and test images, got {dup[:5]} twice")
    if len(found.classes) > 2:
        # ingest reads binary labels only: say so now rather than at the first label holding a 2.
        warnings.warn(f"{found.meta} declares {len(found.classes)} classes {sorted(found.classes)}; aide-ray ingest "
                      f"reads binary labels (values 0 and 1), so merge or pick the foreground classes before "
                      f"ingesting", UserWarning, stacklevel=2)
    labelled = [c.case_id for c in cases if c.label is not None and not c.held_out]
    fractions = (1.0 - options.val_fraction - options.test_fraction, options.val_fraction, options.test_fraction)
    split = split_cases(labelled, fractions, options.seed) if labelled else {}
    multi = len(found.channel_names) > 1
    rows = []
    for c in cases:
        where = "test" if c.held_out else split.get(c.case_id, "train")
        label, kind, clean = c.label, (options.label_kind if c.label is not None else NONE), None
        if kind == SCRIBBLE:
            full = _full_mask(c.label, options.masks, where, c.case_id)
            if where == "train":
                clean = full
            elif full is not None:
                label, kind = full, HQ  # validation and test score against full masks
        if options.check_labels and kind == SCRIBBLE:
            _check_scribble(label, c.images[0], found.classes, found.meta)
        elif options.check_labels and label is not None and found.classes:
            _check_label(label, found.classes, found.meta)
        row = {"case_id": c.case_id}
        row.update({f"image_{i}" if multi else "image": os.path.abspath(p) for i, p in enumerate(c.images)})
        row.update(label=os.path.abspath(label) if label is not None else "", label_kind=kind, split=where,
                   annotator="", domain="")
        if options.masks is not None:
            row["clean_label"] = os.path.abspath(clean) if clean is not None else ""
        rows.append(row)
    held = sorted({r["split"] for r in rows if r["label_kind"] == SCRIBBLE and r["split"] != "train"})
    if held:
        warnings.warn(f"the {' and '.join(held)} rows hold scribbles, but validation and evaluation score against "
                      f"full masks: pass a folder of full masks named like the labels (--masks), or point those "
                      f"rows' label at full masks with label_kind hq", UserWarning, stacklevel=2)
    return LayoutManifest(pd.DataFrame(rows), found.format, found.channel_names, found.classes)


def build_manifest(layout_dir: str | os.PathLike, fmt: str = "auto", options: LayoutOptions = LayoutOptions(), *,
                   channels_dir: str | os.PathLike | None = None) -> LayoutManifest:
    """Read a dataset folder as a manifest.

    Args:
        layout_dir: an nnU-Net v2 raw dataset, a Decathlon task, or a pairs folder.
        fmt: ``auto`` (:func:`~aide_ray.data.layout_readers.detect_format`),
            ``nnunet``, ``msd`` or ``pairs``.
        options: split and label options.
        channels_dir: where 4D multi-modal Decathlon images are split into
            per-channel files; None: such an image is an error.
    Returns:
        The manifest (absolute paths); nothing is written but split channels.
    Raises:
        InputError: an unknown format or layout, or a bad layout, naming the file.
    """
    if fmt not in ("auto", *FORMATS):
        raise InputError(f"format must be one of {['auto', *FORMATS]}, got {fmt!r}")
    fmt = detect_format(layout_dir) if fmt == "auto" else fmt
    unlabelled = options.allow_unlabelled
    if fmt == "nnunet":
        found = read_nnunet(layout_dir, allow_unlabelled=unlabelled)
    elif fmt == "msd":
        found = read_msd(layout_dir, channels_dir=channels_dir, allow_unlabelled=unlabelled)
    else:
        found = read_pairs(layout_dir, allow_unlabelled=unlabelled)
    return manifest_table(found, options)


def write_layout_manifest(layout_dir: str | os.PathLike, out_csv: str | os.PathLike, fmt: str = "auto",
                          options: LayoutOptions = LayoutOptions(), *, overwrite: bool = False) -> LayoutManifest:
    """Build the manifest of a dataset folder and write it atomically to ``out_csv``.

    Paths in the CSV are relative to its folder. 4D Decathlon images are split
    into ``<out_csv stem>_channels/`` next to the CSV.

    Raises:
        InputError: as :func:`build_manifest`.
        FileExistsError: ``out_csv`` exists (it may hold the user's edits) and ``overwrite`` is False.
    """
    out_csv = Path(out_csv)
    if out_csv.exists() and not overwrite:
        raise FileExistsError(f"{out_csv} already exists; remove it, choose another output or pass --overwrite")
    result = build_manifest(layout_dir, fmt, options, channels_dir=out_csv.parent / f"{out_csv.stem}_channels")
    # Relative paths (from the CSV's folder) keep the CSV short to edit and movable together with the data.
    roots = [layout_dir, out_csv.parent] + ([options.masks] if options.masks is not None else [])
    common = os.path.commonpath([os.path.abspath(r) for r in roots])
    write_manifest(result.table, out_csv, relative_to=common)
    return result
