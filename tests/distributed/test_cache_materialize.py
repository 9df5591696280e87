"""The cached path's one-off decode: its materialisations run at the same time, results in place (no Ray)."""

from __future__ import annotations

import threading

from aide_ray.distributed.data_pipeline import _materialize_concurrently


class _Pipeline:
    """Stands in for a lazy dataset: ``materialize()`` waits until every pipeline has started one."""

    def __init__(self, name: str, started: threading.Barrier | None) -> None:
        self.name, self.started = name, started

    def materialize(self) -> str:
        if self.started is not None:
            self.started.wait(timeout=10)  # raises BrokenBarrierError if they ran one after the other
        return f"{self.name} materialised"


def test_the_materialisations_overlap_and_keep_their_places():
    started = threading.Barrier(2)
    out = _materialize_concurrently(_Pipeline("train", started), None, _Pipeline("val", started))
    assert out == ["train materialised", None, "val materialised"]


def test_a_single_pipeline_is_materialised_in_this_thread():
    assert _materialize_concurrently(_Pipeline("train", None), None, None) == ["train materialised", None, None]
