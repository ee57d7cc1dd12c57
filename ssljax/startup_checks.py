"""Start-up checks of what a run will need later: writable folders, dataset splits, sizes.

Each one fails in the first second, with the path or field and what to do, instead of after
compilation or after the whole schedule (a missing evaluation split used to surface only at
the final kNN).
"""

from __future__ import annotations

import os
import socket
from typing import Any

import ml_collections


def check_writable(path: str, what: str) -> None:
    """Fails fast if the folder ``path`` cannot be created, written and read back.

    Args:
      path: the folder.
      what: how to name it in the message (e.g. ``"--workdir=/x"``).

    Raises:
      PermissionError: naming the folder and what to do.
    """
    try:
        os.makedirs(path, exist_ok=True)
        # Host and pid: processes of a multi-host run check a shared folder at the same time.
        probe = os.path.join(path, f".write_test_{socket.gethostname()}_{os.getpid()}")
        with open(probe, "w", encoding="utf-8") as f:
            f.write("ok")
        with open(probe, encoding="utf-8") as f:
            f.read()
        os.remove(probe)
    except OSError as err:
        raise PermissionError(
            f"{what} is not writable ({err}); choose a folder you can write to."
        ) from err


def _base_splits(split: str) -> list[str]:
    """``'train[:90%]+test'`` -> ``['train', 'test']`` (TFDS slicing syntax)."""
    return [part.split("[")[0].strip() for part in split.split("+")]


def needed_splits(config: ml_collections.ConfigDict) -> dict[str, str]:
    """``{config field: split}`` of every split the run reads."""
    needed = {"data.train_split": config.data.train_split}
    knn = config.knn
    if knn.at_start or knn.at_end or knn.every_epochs > 0:
        needed["data.eval_split"] = config.data.eval_split
    return needed


def check_splits(config: ml_collections.ConfigDict, info: Any) -> None:
    """Refuses a run that would read a split the dataset does not have.

    Args:
      config: the run's config.
      info: the dataset's ``DatasetInfo`` (its ``split_sizes`` name the splits).

    Raises:
      ValueError: naming the field, the split and the splits there are.
    """
    available = sorted(info.split_sizes)
    for field, split in needed_splits(config).items():
        missing = [s for s in _base_splits(split) if s not in info.split_sizes]
        if missing:
            hint = " (or disable the kNN monitor)" if field == "data.eval_split" else ""
            raise ValueError(
                f"config.{field}: dataset {info.name!r} has no split {missing[0]!r}; its splits "
                f"are {available}. Set config.{field} to one of them{hint}."
            )


def check_batch_fits(config: ml_collections.ConfigDict, num_train: int) -> None:
    """Refuses a global batch larger than the training split (no full batch would exist).

    Raises:
      ValueError: naming ``config.global_batch`` and the split's size.
    """
    if config.global_batch > num_train:
        raise ValueError(
            f"config.global_batch: {config.global_batch} is larger than the "
            f"{num_train} examples of split {config.data.train_split!r}; use at most "
            f"{num_train}."
        )
