"""Prediction of many cases on a Ray Data actor pool.

Its own file because it is the only Ray part of prediction: everything else
(reading, preprocessing, the nets, writing) is :mod:`aide_ray.inference.predictor`,
which runs without Ray. :class:`RayCasePool` is a
:class:`~aide_ray.inference.predictor.CasePool`: ``map_batches`` over the
cases with a fixed pool of actors that each hold the model
(:class:`PredictActor`). Actors return the encoded files, so nothing but the
inputs and the checkpoint has to be on shared storage; the driver writes them
into the output folder that :func:`~aide_ray.inference.predictor.predict`
commits atomically.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
from tqdm.auto import tqdm

from aide_ray.distributed.runtime import init_ray
from aide_ray.exceptions import AideRayError, InputError
from aide_ray.inference.predictor import CasePredictor, PredictCase, PredictOptions, encode_prediction

__all__ = ["PredictActor", "RayCasePool"]


class PredictActor:
    """Ray Data actor: holds one :class:`CasePredictor` and segments the cases of each batch.

    Args:
        checkpoint: checkpoint folder.
        options: :class:`PredictOptions` as a dict (plain types travel to the actors).
    """

    def __init__(self, checkpoint: str, options: dict[str, Any]) -> None:
        self.predictor = CasePredictor(checkpoint, options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Segment each case of a batch and return the encoded output files.

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
                data = encode_prediction(self.predictor.predict_case(case), case.out_name)
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


@dataclass(frozen=True)
class RayCasePool:
    """Runs cases on a Ray Data actor pool (joins ``RAY_ADDRESS`` or starts an embedded Ray).

    Attributes:
        actors: size of the actor pool (each holds the model and takes 1 CPU).
        gpus_per_actor: GPUs per actor (> 0 also predicts on CUDA).
    Raises:
        InputError: ``actors`` < 1.
    """

    actors: int = 2
    gpus_per_actor: float = 0.0

    def __post_init__(self) -> None:
        if self.actors < 1:
            raise InputError(f"actors must be >= 1, got {self.actors}")

    def __call__(self, checkpoint: Path, cases: list[PredictCase], options: PredictOptions, out: Path,
                 progress: bool) -> tuple[list[dict[str, Any]], list[str]]:
        """Segment ``cases`` on the pool and write each output file into ``out``.

        Returns:
            One record ``{"case_id", "file", "seconds"}`` per written case (in completion
            order) and one message per failed case.
        """
        # Progress bars of Ray Data are off (init_ray); ours counts cases.
        init_ray(dashboard=False)
        items = [{"case_id": c.case_id, "images": json.dumps(list(c.images)), "out_name": c.out_name}
                 for c in cases]
        opts = dataclasses.asdict(options)
        if self.gpus_per_actor > 0 and opts["device"] == "cpu":
            opts["device"] = "cuda"
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            PredictActor,
            fn_constructor_kwargs={"checkpoint": str(checkpoint), "options": opts},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=max(1, min(self.actors, len(cases)))),
            num_cpus=1,
            num_gpus=self.gpus_per_actor,
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
