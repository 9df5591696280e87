"""Segmenting new images with a trained checkpoint, written back in each input's exact geometry.

``aide-ray predict`` is a thin wrapper over :func:`predict`. Per case:

1. read the image(s) with SimpleITK (``aide_ray.data.preprocess.read_image``);
2. apply the preprocessing recorded at ingest (``dataset.json`` in the
   checkpoint: resampling, intensity normalisation, centred padding). Where
   the (resampled) slice is larger than the training size, the slice is padded
   to cover the whole field of view rather than cropped, and predicted with a
   sliding window of the training size (50 % overlap, softmax averaged);
3. predict slice by slice in batches: the mean softmax of the method's eval
   nets (``--net 1|2`` picks one), optionally averaged over flips (``--tta
   flip``: identity, horizontal, vertical);
4. argmax, map back onto the input grid (``restore_geometry``), optional
   post-processing (largest component, hole filling) in that grid, and write
   ``<case_id>.nii.gz`` (``<case_id>.png`` for PNG/JPEG/TIFF/BMP inputs) with
   the input's exact size, spacing, origin and direction.

One case runs in this process. Several run on Ray Data: ``map_batches`` over
the cases with a fixed pool of actors that each hold the model
(:class:`CasePredictor`); actors return the encoded files, so nothing but the
inputs and the checkpoint has to be on shared storage, and the driver writes
the output folder (atomically: a failure leaves nothing half-written).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from aide_ray._internal.io import atomic_dir, atomic_write_text
from aide_ray.exceptions import AideRayError, CheckpointError, InputError

__all__ = [
    "PredictOptions",
    "PredictCase",
    "CasePredictor",
    "cases_from_input",
    "sliding_window",
    "predict",
    "IMAGE_SUFFIXES",
]

# Files a FOLDER input may hold; anything else (e.g. .raw beside .mhd, .json) is ignored.
IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".tif",
                                   ".tiff", ".bmp")
_RASTER_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NET_CHOICES: tuple[str, ...] = ("ensemble", "1", "2")
TTA_CHOICES: tuple[str, ...] = ("none", "flip")


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
    from aide_ray.data.manifest import image_columns, read_manifest

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


def _starts(n: int, window: int, stride: int) -> list[int]:
    if n <= window:
        return [0]
    starts = list(range(0, n - window + 1, stride))
    if starts[-1] != n - window:
        starts.append(n - window)
    return starts


def sliding_window(x: torch.Tensor, window: int, overlap: float, fn) -> torch.Tensor:
    """Apply ``fn`` on ``window`` x ``window`` tiles of ``x`` and average the overlaps.

    Args:
        x: (B, M, H, W) float with H, W >= ``window``.
        window: tile side (the training size).
        overlap: fraction of the window shared by neighbouring tiles, in [0, 1).
        fn: maps (B, M, window, window) to (B, C, window, window) probabilities.
    Returns:
        (B, C, H, W) float, the mean of every tile's output covering each pixel.
    Raises:
        ValueError: if H or W is smaller than ``window``.
    """
    h, w = x.shape[-2:]
    if h < window or w < window:
        raise ValueError(f"sliding window of {window} px needs H, W >= {window}, got H={h}, W={w}")
    if h == window and w == window:
        return fn(x)
    stride = max(1, int(round(window * (1.0 - overlap))))
    out = None
    count = torch.zeros((1, 1, h, w), dtype=x.dtype, device=x.device)
    for top in _starts(h, window, stride):
        for left in _starts(w, window, stride):
            probs = fn(x[..., top:top + window, left:left + window])
            if out is None:
                out = torch.zeros((x.shape[0], probs.shape[1], h, w), dtype=probs.dtype, device=x.device)
            out[..., top:top + window, left:left + window] += probs
            count[..., top:top + window, left:left + window] += 1
    return out / count


class CasePredictor:
    """Holds a checkpoint's nets and segments cases; also the Ray Data actor class.

    Args:
        checkpoint: checkpoint folder or run folder (its best checkpoint).
        options: :class:`PredictOptions` or its dict.
    Raises:
        CheckpointError: unreadable checkpoint or no preprocessing record in it.
        ValueError: ``options.net`` names a net the method does not have.
    """

    def __init__(self, checkpoint: str | os.PathLike, options: PredictOptions | dict[str, Any]) -> None:
        from aide_ray.data.preprocess import Preprocessing
        from aide_ray.engine.checkpoint import load_checkpoint

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

    # ------------------------------------------------------------------ tensors

    def _probs(self, x: torch.Tensor) -> torch.Tensor:
        from aide_ray.engine.step import ensemble_probs

        probs = ensemble_probs(self.nets, self.net_names, x)
        if self.options.tta == "flip":
            # A flip is its own inverse: flip the input, predict, flip the output back.
            for dims in ((-1,), (-2,)):
                probs = probs + torch.flip(ensemble_probs(self.nets, self.net_names, torch.flip(x, dims)), dims)
            probs = probs / 3.0
        return probs

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

    # ------------------------------------------------------------------ cases

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
        from aide_ray.data.preprocess import plan_geometry, preprocess_case, restore_geometry
        from aide_ray.eval.postprocess import postprocess

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
        from aide_ray.data.preprocess import read_image

        images = [read_image(p) for p in case.images]
        return self.predict_images(images, [str(p) for p in case.images])

    # ------------------------------------------------------------------ Ray Data

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data UDF: segment each case of a batch and return the encoded output files.

        Args:
            batch: columns case_id, images (JSON list of paths), out_name.
        Returns:
            columns case_id, out_name, data (bytes of the output file, b"" on failure),
            error ("" or the message), seconds.
        """
        out: dict[str, list[Any]] = {"case_id": [], "out_name": [], "data": [], "error": [], "seconds": []}
        for case_id, images, out_name in zip(batch["case_id"], batch["images"], batch["out_name"]):
            start = time.perf_counter()
            case = PredictCase(str(case_id), tuple(json.loads(str(images))), str(out_name))
            data, error = b"", ""
            try:
                data = _encode(self.predict_case(case), case.out_name)
            except AideRayError as e:
                error = f"case {case.case_id}: {e}"
            out["case_id"].append(case.case_id)
            out["out_name"].append(case.out_name)
            out["data"].append(data)
            out["error"].append(error)
            out["seconds"].append(time.perf_counter() - start)
        return {"case_id": np.array(out["case_id"]), "out_name": np.array(out["out_name"]),
                "data": np.array(out["data"], dtype=object), "error": np.array(out["error"]),
                "seconds": np.array(out["seconds"], dtype=np.float64)}


def _write(image: sitk.Image, path: Path) -> None:
    if path.suffix.lower() == ".png":
        arr = sitk.GetArrayFromImage(image)
        if int(arr.max(initial=0)) <= 1:
            # Binary PNGs are stored as {0, 255} so they are viewable; evaluate maps them back to {0, 1}.
            scaled = sitk.GetImageFromArray((arr * 255).astype(np.uint8))
            scaled.CopyInformation(image)
            image = scaled
    sitk.WriteImage(image, str(path), useCompression=True)


def _encode(image: sitk.Image, out_name: str) -> bytes:
    suffix = ".nii.gz" if out_name.endswith(".nii.gz") else Path(out_name).suffix
    with tempfile.TemporaryDirectory(prefix="aide-ray-predict-") as tmp:
        path = Path(tmp) / f"out{suffix}"
        _write(image, path)
        return path.read_bytes()


def _init_ray() -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    env = {"env_vars": {"OMP_NUM_THREADS": "1"}}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=env)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # embedded: nothing listens beyond 127.0.0.1
    ray.init(num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False, runtime_env=env,
             _node_ip_address="127.0.0.1")


def _predict_ray(checkpoint: Path, cases: list[PredictCase], options: PredictOptions, out: Path, actors: int,
                 gpus_per_actor: float, progress: bool) -> tuple[list[dict[str, Any]], list[str]]:
    import ray
    from tqdm.auto import tqdm

    _init_ray()
    items = [{"case_id": c.case_id, "images": json.dumps(list(c.images)), "out_name": c.out_name} for c in cases]
    opts = dataclasses.asdict(options)
    if gpus_per_actor > 0 and opts["device"] == "cpu":
        opts["device"] = "cuda"
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        CasePredictor,
        fn_constructor_kwargs={"checkpoint": str(checkpoint), "options": opts},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=max(1, min(actors, len(cases)))),
        num_cpus=1,
        num_gpus=gpus_per_actor,
    )
    records, errors = [], []
    with tqdm(total=len(cases), desc="predicting (Ray)", unit="case", disable=not progress) as bar:
        for row in ds.iter_rows():
            if row["error"]:
                errors.append(str(row["error"]))
            else:
                (out / str(row["out_name"])).write_bytes(bytes(row["data"]))
                records.append({"case_id": str(row["case_id"]), "file": str(row["out_name"]),
                                "seconds": round(float(row["seconds"]), 3)})
            bar.update(1)
    return records, errors


def predict(checkpoint: str | os.PathLike, input_path: str | os.PathLike, out_dir: str | os.PathLike, *,
            options: PredictOptions = PredictOptions(), split: str | None = None, use_ray: bool | None = None,
            actors: int = 2, gpus_per_actor: float = 0.0, overwrite: bool = False, progress: bool = True,
            ) -> list[Path]:
    """Segment every case of a manifest or folder and write the label maps into ``out_dir``.

    Args:
        checkpoint: checkpoint folder, or a run folder (its best checkpoint).
        input_path: manifest CSV or folder of images.
        out_dir: output folder (written atomically; must not exist unless ``overwrite``).
        options: :class:`PredictOptions`.
        split: manifest split to predict (None: every case).
        use_ray: True: Ray Data actor pool; False: this process; None: Ray for more than one case.
        actors: size of the Ray actor pool (each holds the model and takes 1 CPU).
        gpus_per_actor: GPUs per actor (> 0 also predicts on CUDA).
        overwrite: replace an existing ``out_dir``.
        progress: show a progress bar.
    Returns:
        The written prediction files, in case order.
    Raises:
        InputError: bad input, or a case that cannot be segmented (every failing case is listed).
        CheckpointError: unusable checkpoint.
        FileExistsError: ``out_dir`` exists and not ``overwrite``.
    """
    from aide_ray.engine.checkpoint import resolve_checkpoint

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; remove it, choose another --out or pass --overwrite")
    if actors < 1:
        raise InputError(f"actors must be >= 1, got {actors}")
    folder = resolve_checkpoint(checkpoint)
    cases = cases_from_input(input_path, split=split)
    ray_path = len(cases) > 1 if use_ray is None else use_ray
    start = time.perf_counter()
    # Loaded here also on the Ray path: a bad checkpoint or --net fails once, not in every actor.
    # On the Ray path the driver's copy stays on the CPU, leaving GPUs to the actors.
    predictor = CasePredictor(folder, dataclasses.replace(options, device="cpu") if ray_path else options)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        if ray_path:
            resolved = dataclasses.replace(predictor.options, device=options.device)
            records, errors = _predict_ray(folder, cases, resolved, tmp, actors, gpus_per_actor, progress)
        else:
            records, errors = _predict_local(predictor, cases, tmp, progress)
        if errors:
            shown = "\n  ".join(errors[:10]) + (f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else "")
            raise InputError(f"{len(errors)} of {len(cases)} case(s) could not be segmented:\n  {shown}")
        order = {c.case_id: i for i, c in enumerate(cases)}
        records.sort(key=lambda r: order[r["case_id"]])
        info = {"checkpoint": str(folder), "epoch": predictor.epoch, "input": str(input_path), "split": split,
                "options": dataclasses.asdict(dataclasses.replace(predictor.options, device=options.device)),
                "ray": ray_path, "cases": records, "seconds": round(time.perf_counter() - start, 3)}
        atomic_write_text(tmp / "predict_info.json", json.dumps(info, indent=1) + "\n")
    return [out_dir / r["file"] for r in records]


def _predict_local(predictor: CasePredictor, cases: list[PredictCase], out: Path,
                   progress: bool) -> tuple[list[dict[str, Any]], list[str]]:
    from tqdm.auto import tqdm

    records, errors = [], []
    for case in tqdm(cases, desc="predicting", unit="case", disable=not progress):
        t0 = time.perf_counter()
        try:
            image = predictor.predict_case(case)
        except AideRayError as e:
            errors.append(f"case {case.case_id}: {e}")
            continue
        _write(image, out / case.out_name)
        records.append({"case_id": case.case_id, "file": case.out_name,
                        "seconds": round(time.perf_counter() - t0, 3)})
    return records, errors
