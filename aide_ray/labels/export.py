"""Export a run's final corrected training labels, per case, in each input's geometry.

AIDE's label store keeps, per label slot (one per net), the training labels
as corrected during the run, as differences from the ingested slices. A user
who wants to inspect or reuse the cleaned dataset needs them as ordinary
label files next to the original images. :func:`export_labels` (behind
``aide-ray export-labels``) reads the run's final label-store snapshot, the
ingest record (``dataset.json`` of the checkpoint) and the Parquet shards
(source labels and ``sample_index -> (case, annotator, slice)``), and writes,
per labelled training case (and annotator):

- ``<case_id>[_<annotator>]_net1.nii.gz`` (``.png`` for 2D raster inputs):
  slot 1's current label; ``_net2`` for two-slot methods (AIDE);
- ``<case_id>[_<annotator>]_agreement.nii.gz`` (two slots only): 1 where both
  nets' labels are foreground;
- a scribble case (``label_kind`` scribble) keeps ``UNANNOTATED`` (255) where
  its label was not corrected, also outside the ingest's crop, and its PNGs hold
  the values as they are (class indices and 255), as the scribble files do;
- ``labels.csv``: per case, the slices whose label was corrected per net and
  the Dice between the nets' labels, against the source label and against the
  clean reference where the manifest gave one.

Labels go back onto the first image's exact grid with the ingest's own
inverse (:func:`aide_ray.data.preprocess.restore_geometry`). Dice values are
computed on the ingested slices (the grid that was trained on), over the whole
case, with :func:`aide_ray.eval.dice.mask_dice`: two empty masks score 1.0, as
in the engine's training Dice; pixels unannotated in either label are left out
(a scribble says nothing about them). The output folder is written atomically: a
failure leaves nothing behind.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import SimpleITK as sitk
from tqdm import tqdm

from aide_ray._internal.io import atomic_dir
from aide_ray.config import Config, from_dict
from aide_ray.data.decode import decode_batch
from aide_ray.data.image_io import RASTER_SUFFIXES, read_image
from aide_ray.data.preprocess import Preprocessing, restore_geometry
from aide_ray.data.shards import load_dataset_info, shard_files
from aide_ray.eval.dice import mask_dice
from aide_ray.data.label_kinds import SCRIBBLE
from aide_ray.exceptions import CheckpointError, InputError
from aide_ray.label_values import UNANNOTATED
from aide_ray.labels import LabelStore
from aide_ray.methods.registry import method_class
from aide_ray.runs.checkpoint import load_state, resolve_checkpoint
from aide_ray.runs.folder import DATASET_FILE, LABEL_STORE_FILE, STATE_FILE

__all__ = ["LABELS_CSV", "CaseLabels", "export_labels", "case_file_stem"]

LABELS_CSV = "labels.csv"
# Columns read from the shards: everything but the images (which can be most of the bytes).
_COLUMNS = ["sample_index", "case_id", "annotator", "slice_index", "split", "label_kind", "height", "width",
            "label", "clean_label"]


@dataclass
class CaseLabels:
    """One (case, annotator) of the training split, as stored in the shards.

    Attributes:
        case_id, annotator: the manifest's identifiers ("" when no annotator).
        label_kind: "hq", "lq" or "scribble".
        sample_index: (S,) int64, the label store's index of each slice, in slice order.
        source: (S, H, W) uint8 {0, 1} (a scribble: also 255), the ingested label.
        clean: (S, H, W) uint8 {0, 1}, the clean reference, or None when the manifest has none.
    """

    case_id: str
    annotator: str
    label_kind: str
    sample_index: np.ndarray
    source: np.ndarray
    clean: np.ndarray | None


def case_file_stem(case_id: str, annotator: str) -> str:
    """``<case_id>`` or ``<case_id>_<annotator>``: the prefix of a case's output files."""
    return f"{case_id}_{annotator}" if annotator else case_id


# --------------------------------------------------------------------------- inputs


def _run_inputs(run_dir: Path) -> tuple[Path, Path]:
    """(checkpoint folder, label-store snapshot) of a run folder or of one checkpoint folder."""
    if not run_dir.is_dir():
        raise InputError(f"run folder {run_dir} does not exist")
    checkpoint = resolve_checkpoint(run_dir)
    # A checkpoint folder carries its own snapshot; a run folder's is the final one.
    snapshot = run_dir / LABEL_STORE_FILE
    if not snapshot.is_file():
        kind = "checkpoint folder" if (run_dir / STATE_FILE).is_file() else "run folder"
        raise CheckpointError(f"{kind} {run_dir} has no {LABEL_STORE_FILE} (the label store's snapshot); "
                              f"pass a finished run folder or one of its checkpoint_* folders")
    if not (checkpoint / DATASET_FILE).is_file():
        raise CheckpointError(f"checkpoint {checkpoint} has no {DATASET_FILE} (the ingest record)")
    return checkpoint, snapshot


def _shards_folder(cfg: Config, given: str | os.PathLike | None) -> Path:
    """The shards folder: ``given``, else where training found it (data.shards, else the demo's)."""
    if given is not None:
        return Path(given).expanduser().resolve()
    if cfg.data.shards:
        return Path(cfg.data.shards).expanduser().resolve()
    return Path(cfg.data.demo_dir).expanduser().resolve() / "shards"


def _check_same_dataset(run_info: dict[str, Any], shards_info: dict[str, Any], shards: Path,
                        checkpoint: Path) -> None:
    differing = sorted(k for k in set(run_info) | set(shards_info) if run_info.get(k) != shards_info.get(k))
    if differing:
        raise InputError(f"shards folder {shards} is not the one run {checkpoint.parent} was trained on: "
                         f"its dataset.json differs from {checkpoint / DATASET_FILE} in {differing}; "
                         f"pass the right folder with --shards")


def _iter_cases(shards: Path, split: str) -> Iterator[CaseLabels]:
    """The labelled (case, annotator) groups of ``split``, streamed file by file (bounded memory).

    Ingest writes the rows of one (case, annotator) contiguously in sample_index
    order, so a group ends where the next begins (possibly in the next file).
    """
    pending: list[dict[str, np.ndarray]] = []

    def finish(parts: list[dict[str, np.ndarray]]) -> CaseLabels | None:
        rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if str(rows["label_kind"][0]) == "none":
            return None
        order = np.argsort(rows["slice_index"], kind="stable")
        decoded = decode_batch({k: v[order] for k, v in rows.items()})
        has_clean = decoded["has_clean_label"]
        return CaseLabels(case_id=str(rows["case_id"][0]), annotator=str(rows["annotator"][0]),
                          label_kind=str(rows["label_kind"][0]), sample_index=decoded["sample_index"],
                          source=decoded["label"], clean=decoded["clean_label"] if has_clean.all() else None)

    for path in shard_files(shards):
        for record_batch in pq.ParquetFile(path).iter_batches(columns=_COLUMNS, batch_size=256):
            batch = {name: record_batch.column(name).to_numpy(zero_copy_only=False)
                     for name in record_batch.schema.names}
            keep = batch["split"].astype(str) == split
            if not keep.any():
                continue
            batch = {k: v[keep] for k, v in batch.items()}
            key = batch["case_id"].astype(str) + "/" + batch["annotator"].astype(str)
            starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
            for a, b in zip(starts, [*starts[1:], len(key)]):
                part = {k: v[a:b] for k, v in batch.items()}
                if pending and (pending[0]["case_id"][0], pending[0]["annotator"][0]) != \
                        (part["case_id"][0], part["annotator"][0]):
                    case = finish(pending)
                    pending = []
                    if case is not None:
                        yield case
                pending.append(part)
    if pending:
        case = finish(pending)
        if case is not None:
            yield case


# --------------------------------------------------------------------------- outputs


def _write(mask: np.ndarray, reference: sitk.Image, prep: Preprocessing, path: Path, scribble: bool) -> None:
    """Write (S, size, size) {0, 1} slices onto ``reference``'s grid; PNGs as {0, 255} (viewable).

    A scribble keeps its values (255 is unannotated, not foreground), and the pixels
    the ingest cropped away, never trained on, are unannotated.
    """
    image = restore_geometry(mask.astype(np.uint8), reference, prep, fill=UNANNOTATED if scribble else 0)
    if path.suffix == ".png" and not scribble:
        scaled = sitk.GetImageFromArray(sitk.GetArrayFromImage(image) * np.uint8(255))
        scaled.CopyInformation(image)
        image = scaled
    sitk.WriteImage(image, str(path), useCompression=True)


def _annotated_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two labels over the pixels both annotate (all of them unless one is a scribble)."""
    annotated = (a != UNANNOTATED) & (b != UNANNOTATED)
    return mask_dice(np.where(annotated, a, 0), np.where(annotated, b, 0))


def _foreground(label: np.ndarray) -> np.ndarray:
    return (label > 0) & (label != UNANNOTATED)


def export_labels(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                  shards: str | os.PathLike | None = None, overwrite: bool = False,
                  progress: bool | None = None) -> pd.DataFrame:
    """Write a run's final corrected labels of every labelled training case as label files.

    Args:
        run_dir: a finished run folder (its ``label_store.npz`` and best
            checkpoint's ``dataset.json``), or one checkpoint folder (its own snapshot).
        out_dir: output folder (written atomically).
        shards: the Parquet shards the run trained on; None: the run's
            ``data.shards`` (or the demo data's shards when that is empty).
        overwrite: replace an existing ``out_dir``.
        progress: show a tqdm bar; None: only on a terminal.

    Returns:
        The ``labels.csv`` table: one row per (case, annotator) with ``case_id``,
        ``annotator``, ``label_kind``, ``slices``, ``corrected_slices_net<k>``,
        ``dice_net<k>_vs_source``, ``dice_net<k>_vs_clean``, ``dice_source_vs_clean``
        (NaN without a clean reference), ``file_net<k>``; with two slots also
        ``dice_net1_vs_net2``, ``agreement_voxels`` and ``file_agreement``.

    Raises:
        InputError: missing folder, shards that are not the run's, a source image
            that is missing or no longer matches the ingest record.
        CheckpointError: no checkpoint or label-store snapshot, or a snapshot that
            does not fit the dataset or the method.
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
    """
    run_dir = Path(run_dir).expanduser().resolve()
    checkpoint, snapshot = _run_inputs(run_dir)
    cfg = from_dict(load_state(checkpoint)["config"], source=str(checkpoint / STATE_FILE))
    run_info = json.loads((checkpoint / DATASET_FILE).read_text())
    shards_dir = _shards_folder(cfg, shards)
    _check_same_dataset(run_info, load_dataset_info(shards_dir), shards_dir, checkpoint)

    store = LabelStore.from_snapshot_file(snapshot)
    slots = method_class(cfg.method).label_slots
    expected = (int(run_info["num_samples"]), slots, tuple(int(v) for v in run_info["shape"][1:]))
    if (store.num_samples, store.label_slots, store.shape) != expected:
        raise CheckpointError(f"{snapshot} holds (num_samples, label_slots, shape) = "
                              f"{(store.num_samples, store.label_slots, store.shape)}, but method "
                              f"{cfg.method!r} on {checkpoint / DATASET_FILE} needs {expected}")
    prep = Preprocessing.from_dict(run_info["preprocessing"])
    records = {(c["case_id"], c["annotator"]): c for c in run_info["cases"]}
    split = cfg.data.train_split
    nets = [f"net{s + 1}" for s in range(slots)]

    rows: list[dict[str, Any]] = []
    stems: set[str] = set()
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        total = sum(1 for c in run_info["cases"] if c["split"] == split and c["label_kind"] != "none")
        bar = tqdm(_iter_cases(shards_dir, split), total=total, desc="export-labels", unit="case",
                   disable=(None if progress is None else not progress))
        for case in bar:
            record = records[(case.case_id, case.annotator)]
            where = f"case {case.case_id!r}" + (f" (annotator {case.annotator!r})" if case.annotator else "")
            stem = case_file_stem(case.case_id, case.annotator)
            if stem in stems:
                raise InputError(f"{where}: output name {stem!r} is taken by another (case, annotator); "
                                 f"rename the case or annotator in the manifest")
            stems.add(stem)
            if not np.array_equal(np.sort(case.sample_index), case.sample_index) or \
                    len(case.sample_index) != int(record["num_slices"]):
                raise InputError(f"{where}: the shards hold {len(case.sample_index)} slices, dataset.json says "
                                 f"{record['num_slices']}; the shards folder {shards_dir} is damaged")
            try:
                reference = read_image(record["images"][0])
            except InputError as e:
                raise InputError(f"{where}: {e}; the source images must stay where they were ingested from") \
                    from None
            if list(reference.GetSize()) != list(record["input_size"]):
                raise InputError(f"{where}: image {record['images'][0]} has size {list(reference.GetSize())}, "
                                 f"but it had size {record['input_size']} when ingested")
            suffix = ".png" if Path(record["images"][0]).name.lower().endswith(RASTER_SUFFIXES) else ".nii.gz"

            labels = [store.current(s, case.sample_index, case.source) for s in range(slots)]
            row: dict[str, Any] = {"case_id": case.case_id, "annotator": case.annotator,
                                   "label_kind": case.label_kind, "slices": len(case.sample_index)}
            for name, label in zip(nets, labels):
                row[f"corrected_slices_{name}"] = int((label != case.source).reshape(len(label), -1).any(1).sum())
            if slots == 2:
                row["dice_net1_vs_net2"] = _annotated_dice(labels[0], labels[1])
            for name, label in zip(nets, labels):
                row[f"dice_{name}_vs_source"] = _annotated_dice(label, case.source)
            row["dice_source_vs_clean"] = float("nan") if case.clean is None else \
                _annotated_dice(case.source, case.clean)
            for name, label in zip(nets, labels):
                row[f"dice_{name}_vs_clean"] = float("nan") if case.clean is None else \
                    _annotated_dice(label, case.clean)

            outputs = dict(zip(nets, labels))
            if slots == 2:
                agreement = (_foreground(labels[0]) & _foreground(labels[1])).astype(np.uint8)
                outputs["agreement"] = agreement
                row["agreement_voxels"] = int(agreement.sum())
            for name, mask in outputs.items():
                file_name = f"{stem}_{name}{suffix}"
                _write(mask, reference, prep, tmp / file_name, case.label_kind == SCRIBBLE and name != "agreement")
                row[f"file_{name}"] = file_name
            rows.append(row)
        table = pd.DataFrame(rows)
        table.to_csv(tmp / LABELS_CSV, index=False, float_format="%.6f")
    return table
