"""Checkpoints through ``orbax-checkpoint``: the train state and the data loader's position.

One checkpoint holds two items: ``state`` (the whole :class:`~ssljax.train_state.TrainState`,
restored directly into its sharding) and ``loader`` (the input iterator's state, so a resumed
run continues with exactly the batches that would have come next). Saves are asynchronous;
the final save waits.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

# Fields that may change between a run and its resumption: they do not change what is
# computed, only how long, how often it is reported, or where things are.
RESUMABLE_CHANGES = (
    "num_steps",
    "num_epochs",
    "log_every_steps",
    "checkpoint.",
    "knn.every_epochs",
    "knn.at_end",
    "data.num_workers",
    "data.data_dir",
    "data.root",
    "init_from",
    "allow_config_change",
)


def _encode_loader_state(loader_state: Any) -> dict[str, Any]:
    if loader_state is None:
        return {"kind": "none"}
    if isinstance(loader_state, bytes):
        return {"kind": "bytes", "value": loader_state.decode("utf-8")}
    return {"kind": "json", "value": loader_state}


def _decode_loader_state(blob: dict[str, Any]) -> Any:
    if blob.get("kind") == "bytes":
        return blob["value"].encode("utf-8")
    if blob.get("kind") == "json":
        return blob["value"]
    return None


class Checkpointer:
    """Saves and restores ``(state, loader_state)`` under ``directory/<step>/``.

    Args:
      directory: the checkpoint folder (created if missing).
      keep: how many of the newest checkpoints to keep.
      async_save: return from :meth:`save` before the files are written.
    """

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "loader")
        )

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or ``None``."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, loader_state: Any, *, force: bool = False) -> None:
        """Starts saving ``state`` and ``loader_state`` as checkpoint ``step``.

        Args:
          step: the step number that names the checkpoint.
          state: the train state (a pytree of ``jax.Array``).
          loader_state: the input iterator's state for the batches consumed so far.
          force: save even if a checkpoint of this step exists (it is replaced).
        """
        if step in self._manager.all_steps():
            if not force:
                return
            self._manager.delete(step)
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                loader=ocp.args.JsonSave(_encode_loader_state(loader_state)),
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state: Any, shardings: Any) -> tuple[Any, Any]:
        """Restores checkpoint ``step`` into ``shardings``.

        Args:
          step: which checkpoint.
          abstract_state: a pytree of ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``).
          shardings: a matching pytree of ``jax.sharding.Sharding``.

        Returns:
          ``(state, loader_state)``.
        """
        target = jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            abstract_state,
            shardings,
        )
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), loader=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], _decode_loader_state(restored["loader"])

    def restore_latest(self, abstract_state: Any, shardings: Any) -> tuple[Any, Any] | None:
        """Restores the newest checkpoint that reads back; ``None`` when there is none.

        A checkpoint that fails to restore (truncated or missing files) is reported by name,
        renamed to ``<step>.damaged`` -- kept for inspection, never deleted -- and the next
        older one is tried.
        """
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                return self.restore(step, abstract_state, shardings)
            except Exception as err:  # noqa: BLE001 -- any failure to read means "damaged"
                path = os.path.join(self.directory, str(step))
                logging.warning(
                    "Checkpoint %s is damaged and will be skipped (%s: %s); trying an older one.",
                    path,
                    type(err).__name__,
                    err,
                )
                if jax.process_index() == 0 and os.path.exists(path):
                    os.rename(path, path + ".damaged")
                self._manager.reload()
        return None

    def wait(self) -> None:
        """Blocks until every pending asynchronous save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple]:
    """Fields whose values differ between two configs, ignoring :data:`RESUMABLE_CHANGES`."""
    a, b = _flatten(saved), _flatten(current)
    diffs = {}
    for key in sorted(set(a) | set(b)):
        if any(key == f or (f.endswith(".") and key.startswith(f)) for f in RESUMABLE_CHANGES):
            continue
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if isinstance(va, list):
            va = tuple(va)
        if isinstance(vb, list):
            vb = tuple(vb)
        if va != vb:
            diffs[key] = (va, vb)
    return diffs


def check_config_matches(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuses to resume a run in ``workdir`` that was started with a different config.

    Raises:
      ValueError: listing each differing field, unless ``config.allow_config_change``.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    current = json.loads(config.to_json_best_effort())
    diffs = config_differences(saved, current)
    if not diffs:
        return
    lines = "\n".join(
        f"  {k}: checkpoint has {a!r}, this run has {b!r}" for k, (a, b) in diffs.items()
    )
    if config.get("allow_config_change", False):
        logging.warning("Resuming despite config changes:\n%s", lines)
        return
    raise ValueError(
        f"{workdir} holds a run with a different config:\n{lines}\n"
        "Use a new --workdir, or pass --config.allow_config_change=True to resume anyway."
    )


def load_params_from(path: str, state: Any, shardings: Any) -> Any:
    """Initialises ``state``'s params and statistics from another run's newest checkpoint.

    Args:
      path: a workdir (or its ``checkpoints`` folder) of an earlier run.
      state: the freshly initialised state.
      shardings: its shardings.

    Returns:
      ``state`` with params, batch statistics and target params taken from the checkpoint;
      the step, optimizer state and RNG stay fresh.

    Raises:
      FileNotFoundError: if ``path`` has no readable checkpoint.
    """
    directory = (
        path
        if os.path.basename(path.rstrip("/")) == "checkpoints"
        else os.path.join(path, "checkpoints")
    )
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"config.init_from: no checkpoints folder at {directory}.")
    ckpt = Checkpointer(directory, async_save=False)
    abstract = jax.eval_shape(lambda s: s, state)
    restored = ckpt.restore_latest(abstract, shardings)
    ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"config.init_from: no readable checkpoint in {directory}.")
    other, _ = restored
    logging.info("Initialised params from %s (step %d).", directory, int(other.step))
    return state.replace(
        params=other.params,
        batch_stats=other.batch_stats,
        target_params=other.target_params,
        target_batch_stats=other.target_batch_stats,
    )
