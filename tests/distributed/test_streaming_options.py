"""What the streaming pipeline changes, checked without a cluster: the workers' iterator options, and the
Parquet reader chosen for datasets that run every epoch (the plans themselves: test_data_pipeline.py)."""

from __future__ import annotations

from ray.data import DataContext

from aide_ray.distributed.data_pipeline import (PREFETCH_BATCHES, STREAMING_PREFETCH_BATCHES, iter_options,
                                                shuffle_buffer_rows)
from aide_ray.distributed.shard_reader import _planned_on_the_driver


def test_workers_prefetch_more_when_the_rows_stream_and_shuffle_only_the_train_pass():
    cached = iter_options(8, train=True, shuffle=True, streaming=False)
    assert cached == {"batch_size": 8, "batch_format": "numpy", "drop_last": True,
                      "prefetch_batches": PREFETCH_BATCHES, "local_shuffle_buffer_size": shuffle_buffer_rows(8)}
    streaming = iter_options(8, train=True, shuffle=True, streaming=True)
    assert streaming == {**cached, "prefetch_batches": STREAMING_PREFETCH_BATCHES} and STREAMING_PREFETCH_BATCHES > 1
    score = iter_options(8, train=False, shuffle=True, streaming=True)
    assert score["drop_last"] is False and score["local_shuffle_buffer_size"] is None  # every row, once
    assert iter_options(8, train=True, shuffle=False, streaming=False)["local_shuffle_buffer_size"] is None


def test_datasets_read_every_epoch_use_the_reader_planned_once_and_the_setting_is_restored():
    ctx = DataContext.get_current()
    before = ctx.use_datasource_v2
    try:
        for setting in (True, False):
            ctx.use_datasource_v2 = setting
            with _planned_on_the_driver():
                assert DataContext.get_current().use_datasource_v2 is False
            assert ctx.use_datasource_v2 is setting
    finally:
        ctx.use_datasource_v2 = before
