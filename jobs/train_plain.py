"""Train one config in this process with the plain PyTorch loop: no Ray, one device.

For a single GPU, for debugging a method, and for machines where Ray is not
installed. It runs :func:`aide_ray.engine.loop.train_in_memory` (the same method
plug-ins, step and correction rule as the Ray engine; see docs/architecture.md)
on the shards decoded into memory, and writes a run folder that
``aide-ray predict``, ``evaluate`` and ``figures`` read like one of the Ray
engine's:

    RUN_DIR/config.yaml  metrics.csv  best_checkpoint.txt  checkpoint_best/{state.pt, dataset.json}
            final_labels.npz  train_scores.csv

``train_scores.csv`` has the Ray engine's columns but only two epochs: the labels as
given (epoch 0) and the labels after the last epoch (epoch = ``epochs``), each against
the HQ label where the shards hold one, so that the results page can show what label
correction did to the training labels.

What it does not do: data parallelism, resume, the label-store actor and its
snapshots (the corrected labels live in memory; the checkpoint holds the nets
of the best epoch by validation Dice), ``data.unlabelled_fraction`` (semi-
supervised methods see labelled and unlabelled rows shuffled together).

    python jobs/train_plain.py --config jobs/experiments/noisy/aide.yaml data.shards=SHARDS \\
        use_gpu=true run.storage_path=runs run.name=aide_s0
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from aide_ray._internal.io import atomic_dir, atomic_write_text  # noqa: E402
from aide_ray.config import load_config  # noqa: E402
from aide_ray.data.shards import load_dataset_info, read_slices_local  # noqa: E402
from aide_ray.engine.checkpoint import BEST_POINTER, save_checkpoint  # noqa: E402
from aide_ray.engine.loop import train_in_memory  # noqa: E402
from aide_ray.engine.train import check_init_from  # noqa: E402
from aide_ray.exceptions import ConfigError  # noqa: E402

BEST_DIR = "checkpoint_best"
COLUMNS = ["epoch", "loss", "train_dice_net1", "train_dice_net2", "train_dice_net", "val_dice", "labels_corrected",
           "seconds"]


def write_label_scores(path: Path, rows: dict[str, np.ndarray], final: np.ndarray, epochs: int) -> None:
    """``train_scores.csv`` of the given (epoch 0) and final (epoch ``epochs``) labels against the HQ ones.

    Args:
        rows: the train split as :func:`read_slices_local` gives it.
        final: (N, S, H, W) labels of each slot after the last epoch, rows in the order of ``rows``.
    """
    from aide_ray.methods.correction import dice_per_sample

    has_clean = rows["has_clean_label"] & rows["has_label"]
    tables = []
    for epoch, labels in ((0, np.repeat(rows["label"][:, None], final.shape[1], axis=1)), (epochs, final)):
        for slot in range(final.shape[1]):
            dice = np.asarray(dice_per_sample(labels[:, slot], rows["clean_label"]), dtype=float)
            tables.append(pd.DataFrame({"epoch": epoch, "sample_index": rows["sample_index"], "slot": slot,
                                        "dice_pred_vs_label": np.nan,
                                        "dice_label_vs_clean": np.where(has_clean, dice, np.nan)}))
    pd.concat(tables, ignore_index=True).to_csv(path, index=False)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="YAML config (as for `aide-ray train`)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    if not cfg.data.shards:
        raise ConfigError("data.shards: set it to a folder written by `aide-ray ingest`")
    if not cfg.run.name:
        raise ConfigError("run.name: set it, the run folder is run.storage_path/run.name")
    run_dir = Path(cfg.run.storage_path).expanduser().resolve() / cfg.run.name
    if run_dir.exists():
        raise ConfigError(f"run.name: {run_dir} already exists; pick another name")

    info = load_dataset_info(cfg.data.shards)
    check_init_from(cfg, cfg.data.shards)
    train = read_slices_local(cfg.data.shards, split=cfg.data.train_split)
    val = None
    if cfg.data.val_split:
        rows = read_slices_local(cfg.data.shards, split=cfg.data.val_split)
        if rows["has_label"].any():
            val = (rows["image"][rows["has_label"]], rows["label"][rows["has_label"]])
    device = "cuda" if cfg.use_gpu else "cpu"
    print(f"Training {cfg.method} in this process on {device} ({len(train['label'])} slices of "
          f"{cfg.data.shards}); run folder {run_dir}", flush=True)

    started = time.perf_counter()

    def progress(epoch: int, record: dict[str, float]) -> None:
        shown = ", ".join(f"{k}={record[k]:.4f}" for k in ("loss", "val_dice") if k in record)
        print(f"epoch {epoch + 1}/{cfg.epochs}: {shown}, labels corrected {int(record['labels_corrected'])}, "
              f"{record['seconds']:.1f} s", flush=True)

    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    result = train_in_memory(cfg, train["image"], train["label"], train["has_label"], train["hq"], val=val,
                             seed=cfg.seed, callback=progress)
    history = pd.DataFrame(result.history)
    for name, state in result.best_state.items():
        result.nets[name].load_state_dict(state)

    with atomic_dir(run_dir) as tmp:
        save_checkpoint(tmp / BEST_DIR, config=cfg, in_channels=int(train["image"].shape[1]),
                        epoch=result.best_epoch, nets=result.nets, optimizers={}, schedulers={},
                        label_store_snapshot=None, dataset_info=info,
                        metrics={"best_metric": result.best_metric})
        history.to_csv(tmp / "metrics.csv", index=False)
        np.savez_compressed(tmp / "final_labels.npz", sample_index=train["sample_index"], labels=result.labels)
        write_label_scores(tmp / "train_scores.csv", train, result.labels, len(history))
        (tmp / BEST_POINTER).write_text(BEST_DIR + "\n")
        atomic_write_text(tmp / "config.yaml", cfg.to_yaml())
    shown = [c for c in COLUMNS if c in history.columns]
    print("\n" + history[shown].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"\nbest epoch {result.best_epoch + 1} ({result.best_metric:.4f}); {time.perf_counter() - started:.0f} s; "
          f"run folder {run_dir}", flush=True)
    return run_dir


if __name__ == "__main__":
    main()
