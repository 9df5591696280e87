"""Segmenting new images with a trained checkpoint, written back in each input's exact geometry.

Per case: read the image(s) with SimpleITK; repeat the preprocessing recorded
at ingest (``dataset.json`` in the checkpoint), padding a slice larger than
the training size to the whole field of view instead of cropping it (then a
sliding window of the training size predicts it); the mean softmax of the
method's eval nets (``--net 1|2`` picks one), optionally averaged over flips;
argmax, map back onto the input grid (``restore_geometry``), optional
post-processing there, and write ``<case_id>.nii.gz`` (``.png`` for raster
inputs) with the input's exact size, spacing, origin and direction.

Its own file because it is everything about prediction that needs no Ray:
:func:`predict` runs the cases in this process or hands them to a ``CasePool``
it is given (``aide_ray.distributed.predict_pool.RayCasePool``), and writes the
output folder atomically either way (a failure leaves nothing half-written).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from tqdm.auto import tqdm

from aide_ray._internal.io import atomic_dir, atomic_write_text
from aide_ray.data.image_io import read_image
from aide_ray.data.manifest import image_columns, read_manifest
from aide_ray.data.preprocess import Preprocessing, plan_geometry, preprocess_case, restore_geometry
from aide_ray.eval.postprocess import postprocess
from aide_ray.exceptions import AideRayError, CheckpointError, InputError
from aide_ray.inference.sliding_window import flip_tta, sliding_window
from aide_ray.nn.modules import ensemble_probs
from aide_ray.runs.checkpoint import load_checkpoint, resolve_checkpoint

__all__ = ["PredictOptions", "PredictCase", "CasePredictor", "CasePool", "cases_from_input", "predict",
           "write_prediction", "encode_prediction", "IMAGE_SUFFIXES", "INFO_FILE"]

# Files a FOLDER input may hold; anything else (e.g. .raw beside .mhd, .json) is ignored.
IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".tif",
                                   ".tiff", ".bmp")
_RASTER_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NET_CHOICES: tuple[str, ...] = ("ensemble", "1", "2")
TTA_CHOICES: tuple[str, ...] = ("none", "flip")
INFO_FILE = "predict_info.json"


@dataclass(frozen=True)
class PredictOptions:
    """How predictions are made.

    Attributes:
        net: "ensemble" (mean softmax of the method's eval nets), or "1" / "2": only the
            first / second eval net (for single-net methods "1" equals "ensemble").
        tta: "none" or "flip" (mean softmax over identity, horizontal and vertical flips).
        largest_component: keep each class's largest connected component (3D in the input grid);
            None: the run's ``eval.largest_component``.
        fill_holes: fill background holes enclosed by a class (per slice); None: the run's
            ``eval.fill_holes``.
        batch_size: slices per forward pass.
        overlap: sliding-window overlap, a fraction of the window in [0, 1).
        device: "cpu", "cuda" or "auto" (CUDA when available).
    """

    net: str = "ensemble"
    tta: str = "none"
    largest_component: bool | None = None
    fill_holes: bool | None = None
    batch_size: int = 16
    overlap: float = 0.5
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.net not in NET_CHOICES:
            raise ValueError(f"net must be one of {list(NET_CHOICES)}, got {self.net!r}")
        if self.tta not in TTA_CHOICES:
            raise ValueError(f"tta must be one of {list(TTA_CHOICES)}, got {self.tta!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap!r}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"device must be one of ['cpu', 'cuda', 'auto'], got {self.device!r}")


@dataclass(frozen=True)
class PredictCase:
    """One case to segment.

    Attributes:
        case_id: output file stem.
        images: the case's modalities (files or DICOM folders), in the checkpoint's order.
        out_name: output file name, ``<case_id>.nii.gz`` or ``<case_id>.png``.
    """

    case_id: str
    images: tuple[str, ...]
    out_name: str


def _stem(path: Path) -> tuple[str, str] | None:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], suffix
    return None


def _out_name(case_id: str, first_image: str) -> str:
    raster = Path(first_image).name.lower().endswith(_RASTER_SUFFIXES)
    return f"{case_id}.png" if raster else f"{case_id}.nii.gz"


def cases_from_input(path: str | os.PathLike, *, split: str | None = None) -> list[PredictCase]:
    """The cases of a manifest CSV or of a folder of images.

    A manifest gives one case per case_id (rows of several annotators share the
    images); a folder gives one single-modality case per image file
    (:data:`IMAGE_SUFFIXES`; case_id = file name without suffix).

    Args:
        path: manifest ``.csv`` or folder.
        split: for a manifest, only this split (None: every row).
    Returns:
        Cases in manifest order / sorted by file name.
    Raises:
        InputError: no such path, no case, conflicting images for one case_id, or
            ``split`` with a folder.
    """
    path = Path(path)
    if path.is_dir():
        if split is not None:
            raise InputError(f"--split applies to a manifest input, but {path} is a folder")
        cases = []
        seen: dict[str, str] = {}
        for file in sorted(path.iterdir()):
            parsed = _stem(file) if file.is_file() and not file.name.startswith(".") else None
            if parsed is None:
                continue
            case_id, _ = parsed
            if case_id in seen:
                raise InputError(f"{path}: files {seen[case_id]} and {file.name} both give case_id {case_id!r}")
            seen[case_id] = file.name
            cases.append(PredictCase(case_id, (str(file),), _out_name(case_id, str(file))))
        if not cases:
            raise InputError(f"{path} holds no image file (looked for {', '.join(IMAGE_SUFFIXES)})")
        return cases
    if not path.is_file():
        raise InputError(f"input {path} is neither a manifest CSV nor a folder of images")
    # Labels need not exist for prediction; missing images fail when read, naming the file.
    manifest = read_manifest(path, check_files=False)
    if split is not None:
        manifest = manifest[manifest["split"] == split]
        if manifest.empty:
            raise InputError(f"{path} has no row of split {split!r}")
    columns = image_columns(list(manifest.columns), source=str(path))
    cases: dict[str, PredictCase] = {}
    for row, rec in manifest.iterrows():
        images = tuple(rec[c] for c in columns)
        known = cases.get(rec["case_id"])
        if known is not None:
            if known.images != images:
                raise InputError(f"{path.name} row {row}: case_id {rec['case_id']!r} has images {list(images)}, "
                                 f"but an earlier row has {list(known.images)}")
            continue
        cases[rec["case_id"]] = PredictCase(rec["case_id"], images, _out_name(rec["case_id"], images[0]))
    return list(cases.values())


class CasePredictor:
    """Holds a checkpoint's nets and segments cases.

    Args:
        checkpoint: checkpoint folder or run folder (its best checkpoint).
        options: :class:`PredictOptions` or its dict.
    Raises:
        CheckpointError: unreadable checkpoint or no preprocessing record in it.
        ValueError: ``options.net`` names a net the method does not have.
    """

    def __init__(self, checkpoint: str | os.PathLike, options: PredictOptions | dict[str, Any]) -> None:
        options = options if isinstance(options, PredictOptions) else PredictOptions(**options)
        ckpt = load_checkpoint(checkpoint)
        # Unset post-processing follows the run's configuration.
        self.options = dataclasses.replace(
            options,
            largest_component=(ckpt.config.eval.largest_component if options.largest_component is None
                               else options.largest_component),
            fill_holes=ckpt.config.eval.fill_holes if options.fill_holes is None else options.fill_holes,
        )
        info = ckpt.dataset_info
        if "preprocessing" not in info or "shape" not in info:
            raise CheckpointError(f"checkpoint {ckpt.path} has no ingest record (dataset.json with preprocessing "
                                  f"and shape); it cannot repeat the training preprocessing")
        try:
            self.prep = Preprocessing.from_dict(info["preprocessing"])
        except ValueError as e:
            raise CheckpointError(f"checkpoint {ckpt.path}: dataset.json preprocessing is invalid: {e}") from e
        self.in_channels = int(info["shape"][0])
        self.checkpoint_path = ckpt.path
        self.epoch = ckpt.epoch
        self.method = ckpt.config.method
        eval_nets = tuple(ckpt.eval_nets)
        if self.options.net == "ensemble":
            self.net_names = eval_nets
        else:
            index = int(self.options.net) - 1
            if index >= len(eval_nets):
                raise ValueError(f"net must be one of {['ensemble', *map(str, range(1, len(eval_nets) + 1))]} "
                                 f"for method {self.method!r} (eval nets {list(eval_nets)}), got {self.options.net!r}")
            self.net_names = (eval_nets[index],)
        device = self.options.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.nets = {name: ckpt.nets[name].to(self.device).eval() for name in self.net_names}

    def _net_probs(self, x: torch.Tensor) -> torch.Tensor:
        return ensemble_probs(self.nets, self.net_names, x)

    def _probs(self, x: torch.Tensor) -> torch.Tensor:
        return flip_tta(self._net_probs, x) if self.options.tta == "flip" else self._net_probs(x)

    def predict_slices(self, slices: np.ndarray) -> np.ndarray:
        """Class probabilities of preprocessed slices.

        Args:
            slices: (S, M, H, W) float32 with H, W >= the training size.
        Returns:
            (S, C, H, W) float32 probabilities (C includes background).
        Raises:
            InputError: if M differs from the checkpoint's number of modalities.
        """
        if slices.ndim != 4 or slices.shape[1] != self.in_channels:
            raise InputError(f"the checkpoint expects {self.in_channels} modalit"
                             f"{'y' if self.in_channels == 1 else 'ies'} per case, got slices of shape {slices.shape}")
        out = []
        bs = self.options.batch_size
        for i in range(0, len(slices), bs):
            x = torch.from_numpy(np.ascontiguousarray(slices[i:i + bs])).to(self.device)
            probs = sliding_window(x, self.prep.size, self.options.overlap, self._probs)
            out.append(probs.float().cpu().numpy())
        return np.concatenate(out, axis=0)

    def predict_images(self, images: Sequence[sitk.Image], names: Sequence[str] | None = None) -> sitk.Image:
        """Segment one case given as SimpleITK images.

        Args:
            images: the case's M modalities on one grid (2D or 3D).
            names: file names for messages.
        Returns:
            uint8 label map (class indices) with ``images[0]``'s size, spacing, origin, direction.
        Raises:
            InputError: wrong number of modalities, geometry mismatch, non-finite intensities.
        """
        if len(images) != self.in_channels:
            what = ", ".join(names) if names else f"{len(images)} image(s)"
            raise InputError(f"the checkpoint expects {self.in_channels} modalit"
                             f"{'y' if self.in_channels == 1 else 'ies'} per case, got {len(images)} ({what})")
        plan = plan_geometry(images[0], self.prep)
        side = max(self.prep.size, *plan.resampled_size)
        # Pad to cover the whole field of view instead of cropping it; tiles keep the training size.
        prep = self.prep if side == self.prep.size else dataclasses.replace(self.prep, size=int(side))
        case = preprocess_case(list(images), None, prep, names=names)
        labels = self.predict_slices(case.image).argmax(axis=1).astype(np.uint8)
        restored = restore_geometry(labels, images[0], prep)
        if self.options.largest_component or self.options.fill_holes:
            arr = postprocess(sitk.GetArrayFromImage(restored), largest_component=self.options.largest_component,
                              fill_holes=self.options.fill_holes)
            out = sitk.GetImageFromArray(arr)
            out.CopyInformation(restored)
            restored = out
        return restored

    def predict_case(self, case: PredictCase) -> sitk.Image:
        """Read and segment one case (see :meth:`predict_images`)."""
        images = [read_image(p) for p in case.images]
        return self.predict_images(images, [str(p) for p in case.images])


def write_prediction(image: sitk.Image, path: Path) -> None:
    """Write a label map as NIfTI or PNG; binary PNGs as {0, 255}, viewable (evaluate maps them back to {0, 1})."""
    if path.suffix.lower() == ".png":
        arr = sitk.GetArrayFromImage(image)
        if int(arr.max(initial=0)) <= 1:
            scaled = sitk.GetImageFromArray((arr * 255).astype(np.uint8))
            scaled.CopyInformation(image)
            image = scaled
    sitk.WriteImage(image, str(path), useCompression=True)


def encode_prediction(image: sitk.Image, out_name: str) -> bytes:
    """The bytes :func:`write_prediction` would write to ``out_name`` (for workers without shared storage)."""
    suffix = ".nii.gz" if out_name.endswith(".nii.gz") else Path(out_name).suffix
    with tempfile.TemporaryDirectory(prefix="aide-ray-predict-") as tmp:
        path = Path(tmp) / f"out{suffix}"
        write_prediction(image, path)
        return path.read_bytes()


# Segments many cases elsewhere (e.g. a Ray Data actor pool) and writes them into a folder. Called with
# (checkpoint folder, cases, options with the run's post-processing filled in, output folder, progress);
# returns one record {"case_id", "file", "seconds"} per written case and one message per failed case.
CasePool = Callable[[Path, list[PredictCase], PredictOptions, Path, bool], tuple[list[dict[str, Any]], list[str]]]


def predict(checkpoint: str | os.PathLike, input_path: str | os.PathLike, out_dir: str | os.PathLike, *,
            options: PredictOptions = PredictOptions(), split: str | None = None, pool: CasePool | None = None,
            use_pool: bool | None = None, overwrite: bool = False, progress: bool = True) -> list[Path]:
    """Segment every case of a manifest or folder and write the label maps into ``out_dir``.

    Args:
        checkpoint: checkpoint folder, or a run folder (its best checkpoint).
        input_path: manifest CSV or folder of images.
        out_dir: output folder (written atomically; must not exist unless ``overwrite``).
        options: :class:`PredictOptions`.
        split: manifest split to predict (None: every case).
        pool: where to run the cases off this process (e.g.
            ``aide_ray.distributed.predict_pool.RayCasePool``); None: always in this process.
        use_pool: True: ``pool``; False: this process; None: ``pool`` for more than one case.
        overwrite: replace an existing ``out_dir``.
        progress: show a progress bar.
    Returns:
        The written prediction files, in case order.
    Raises:
        InputError: bad input, or a case that cannot be segmented (every failing case is listed).
        CheckpointError: unusable checkpoint.
        FileExistsError: ``out_dir`` exists and not ``overwrite``.
        ValueError: ``use_pool`` is True without a ``pool``.
    """
    if use_pool and pool is None:
        raise ValueError("use_pool=True needs a pool, got pool=None")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; remove it, choose another --out or pass --overwrite")
    folder = resolve_checkpoint(checkpoint)
    cases = cases_from_input(input_path, split=split)
    pooled = pool is not None and (len(cases) > 1 if use_pool is None else use_pool)
    start = time.perf_counter()
    # Loaded here also for a pool: a bad checkpoint or --net fails once, not in every worker.
    # For a pool the driver's copy stays on the CPU, leaving GPUs to the workers.
    predictor = CasePredictor(folder, dataclasses.replace(options, device="cpu") if pooled else options)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        if pooled:
            resolved = dataclasses.replace(predictor.options, device=options.device)
            records, errors = pool(folder, cases, resolved, tmp, progress)
        else:
            records, errors = _predict_local(predictor, cases, tmp, progress)
        if errors:
            shown = "\n  ".join(errors[:10]) + (f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else "")
            raise InputError(f"{len(errors)} of {len(cases)} case(s) could not be segmented:\n  {shown}")
        order = {c.case_id: i for i, c in enumerate(cases)}
        records.sort(key=lambda r: order[r["case_id"]])
        # "ray" names the pooled path in predict_info.json (the pool of the CLI is Ray Data's).
        info = {"checkpoint": str(folder), "epoch": predictor.epoch, "input": str(input_path), "split": split,
                "options": dataclasses.asdict(dataclasses.replace(predictor.options, device=options.device)),
                "ray": pooled, "cases": records, "seconds": round(time.perf_counter() - start, 3)}
        atomic_write_text(tmp / INFO_FILE, json.dumps(info, indent=1) + "\n")
    return [out_dir / r["file"] for r in records]


def _predict_local(predictor: CasePredictor, cases: list[PredictCase], out: Path,
                   progress: bool) -> tuple[list[dict[str, Any]], list[str]]:
    records, errors = [], []
    for case in tqdm(cases, desc="predicting", unit="case", disable=not progress):
        t0 = time.perf_counter()
        try:
            image = predictor.predict_case(case)
        except AideRayError as e:
            errors.append(f"case {case.case_id}: {e}")
            continue
        write_prediction(image, out / case.out_name)
        records.append({"case_id": case.case_id, "file": case.out_name,
                        "seconds": round(time.perf_counter() - t0, 3)})
    return records, errors
