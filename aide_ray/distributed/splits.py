"""How Ray Train splits a run's datasets over its workers (:class:`ExactSplits`), in a module of its own.

It is kept light on purpose: its only import is Ray Train's ``DataConfig``,
never torch, :mod:`aide_ray.engine` or :mod:`aide_ray.methods`. cloudpickle
pickles a class by reference (its ``__module__``), so every process that
unpickles a run's ``dataset_config`` imports the module that *defines* it: the
Train controller (twice: ``TrainRunContext.dataset_config`` and the datasets
callback), the DatasetManager actor and each Train worker. When the class
lived in :mod:`aide_ray.distributed.trainer` that import pulled the whole
driver (``ray.train.torch``, the backend, the engine): about 2.2 s more in the
controller's creation and 3.6-3.9 s more in the DatasetManager's, on the
critical path of a fit's start on a loaded 2-core machine (docs/performance.md,
"Start-up"). :mod:`aide_ray.distributed.trainer` re-exports both names.
"""

from __future__ import annotations

from ray.train import DataConfig

__all__ = ["ExactSplits", "labelled_count"]


def labelled_count(kind_counts: dict[str, int]) -> int:
    """Rows of a split that carry a label (every kind but ``none``): the rows of the score and val passes."""
    return sum(int(n) for kind, n in kind_counts.items() if kind != "none")


class ExactSplits(DataConfig):
    """How Ray Train splits the datasets over the workers: every row of the score and val passes, once.

    Ray's default splits every dataset with ``equal=True``, which drops the rows
    left over when the world size does not divide a pass: a sample never scored
    can never be corrected, and a validation case loses slices. The train pass
    keeps ``equal=True`` (DDP needs the same number of steps on every worker). The
    score and val passes run no collective per batch (their forward passes see
    through DDP, and their results are gathered once at the end), so a pass whose
    rows the world size does not divide is split with ``equal=False``: whole
    blocks to the worker with the fewest rows, none dropped, possibly unevenly.
    A pass it divides keeps the even ``equal=True`` split, which then drops
    nothing. This matters most with elastic workers, whose world size changes.

    Args:
        rows: rows of each pass that must not lose rows (``score``, ``val``); a pass
            not named here is split like the train pass.
    """

    def __init__(self, rows: dict[str, int]) -> None:
        super().__init__()
        self.rows = dict(rows)

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        if world_size == 1:
            return [self._whole(datasets)]
        even = {name: ds for name, ds in datasets.items()
                if name not in self.rows or self.rows[name] % world_size == 0}
        output = super().configure(even, world_size, worker_handles, worker_node_ids, **kwargs)
        for name, ds in datasets.items():
            if name in even:
                continue
            ds = self._own_copy(name, ds)
            for rank, split in enumerate(ds.streaming_split(world_size, equal=False,
                                                            locality_hints=worker_node_ids)):
                output[rank][name] = split
        return output

    def _whole(self, datasets):
        """One worker reads each dataset whole, through ``ds.iterator()``: the execution runs in the worker
        itself. ``streaming_split(1)`` gives the same rows but starts a SplitCoordinator actor per dataset
        (three new processes, each ~2-3 s of spawn and imports, while the worker sets up and its first batch
        waits on the train one: docs/performance.md, "Start-up")."""
        return {name: self._own_copy(name, ds).iterator() for name, ds in datasets.items()}

    def _own_copy(self, name, ds):
        """``ds`` named and copied with this config's execution options, as ``DataConfig.configure`` does
        before it splits a dataset."""
        if ds.name is None:
            ds.set_name(name)
        ds = ds.copy(ds)
        ds.context.execution_options = self._resolve_execution_options(name)
        return ds
