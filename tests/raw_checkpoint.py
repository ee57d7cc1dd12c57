"""Reads a saved train state straight from disk, as NumPy arrays, for tests to inspect.

Restoring without restore arguments makes orbax build sharded jax arrays from the sharding
file it stored, and warn that doing so is unsafe on another topology; tests only look at the
values, so every leaf is read as a host ``np.ndarray`` instead (no sharding, no warning).
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


def read_state(path: str | pathlib.Path) -> dict[str, Any]:
    """The pytree saved under ``path`` (a checkpoint's ``state`` item), leaves as NumPy.

    Args:
      path: the item's folder, e.g. ``workdir/checkpoints/<step>/state``.

    Returns:
      The stored tree (nested dicts) with ``np.ndarray`` leaves.
    """
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
