"""Checkpoints through ``orbax-checkpoint``: the train state and the data loader's position.

One checkpoint holds three items: ``state`` (the whole :class:`~ssljax.train_state.TrainState`,
restored directly into its sharding), ``loader`` (the input iterator's state, so a resumed
run continues with exactly the batches that would have come next) and ``integrity`` (a checksum
per array, verified on restore). Saves are asynchronous; the final save waits.

Damage and mismatch are told apart: a checkpoint that cannot be read, or whose bytes changed, is
renamed ``<step>.damaged`` and the previous one is used; a checkpoint that reads but does not
fit the state this config builds raises an error naming the arrays, and nothing is renamed.
That fallback is one loop, :func:`restore_newest_intact`, shared by the training resumption
(which renames) and by evaluation, export and ``init_from`` (which only read, and skip).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint._src.metadata import array_metadata_store
from orbax.checkpoint._src.serialization import type_handler_registry

from ssljax import checkpoint_integrity, closed_loop_callbacks, config_schema, tree_paths

T = TypeVar("T")

# The items of one checkpoint: the train state, the loader's position, the state's checksums.
ITEM_NAMES = ("state", "loader", "integrity")

# Replica-parallel saving (orbax's default except on GPU) splits every replicated array into one
# slice per replica, each cut by its own eager slice op (compiled once per shape). That pays for
# large arrays written from several hosts at once; for the many small ones (biases, BatchNorm
# statistics, a CIFAR network's kernels) it is thousands of dispatches per save: 10 of the 17 s
# of a test run's three saves on 8 CPU devices (2026-12-06). Slices under 1 MiB are therefore
# written whole by one replica, as orbax does on GPU.
MIN_REPLICA_PARALLEL_SLICE_BYTES = 1 << 20


def _use_replica_parallel_for_large_arrays_only() -> None:
    """Registers orbax's jax.Array handler with :data:`MIN_REPLICA_PARALLEL_SLICE_BYTES`.

    The same handler as orbax's default (``type_handler_registry._DEFAULT_TYPE_HANDLERS``, with
    its array metadata store) but for that threshold, in orbax's global registry, which its
    standard checkpoint handler reads; without the warning that ``register_type_handler``
    logs on every override, as orbax's own defaults are registered. Once per process.
    """
    handler = ocp.type_handlers.get_type_handler(jax.Array)
    if getattr(handler, "_min_slice_bytes_for_replica_parallel", None) == (
        MIN_REPLICA_PARALLEL_SLICE_BYTES
    ):
        return
    type_handler_registry.GLOBAL_TYPE_HANDLER_REGISTRY.add(
        jax.Array,
        ocp.type_handlers.ArrayHandler(
            array_metadata_store=array_metadata_store.Store(),
            min_slice_bytes_for_replica_parallel=MIN_REPLICA_PARALLEL_SLICE_BYTES,
        ),
        override=True,
        ignore_warnings=True,
    )


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


def format_differences(lines: list[str], limit: int = 12) -> str:
    """The first ``limit`` differences, one per indented line, and how many were left out."""
    shown = "".join(f"\n  {line}" for line in lines[:limit])
    more = f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else ""
    return shown + more


class CheckpointMismatchError(ValueError):
    """A readable checkpoint whose arrays do not fit the state this run builds (not damage)."""


class CheckpointDamagedError(RuntimeError):
    """A checkpoint that cannot be trusted: unreadable, missing files, wrong checksum, NaN/inf."""


class CheckpointSaveError(OSError):
    """Writing a checkpoint failed (disk full, permissions, ...); the message is one line."""


class NonFiniteStateError(FloatingPointError):
    """A state holding NaN or infinity was about to be saved; it is refused."""


def free_name(path: str, suffix: str = ".damaged") -> str:
    """``path + suffix``, or ``path + suffix + '.N'`` with the smallest N not taken yet."""
    candidate, n = path + suffix, 1
    while os.path.lexists(candidate):
        candidate, n = f"{path}{suffix}.{n}", n + 1
    return candidate


def _shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{path: (shape, dtype)}`` of a tree of arrays, abstract arrays or orbax metadata."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        checkpoint_integrity.path_name(path): (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
        for path, leaf in leaves
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype")
    }


def describe_mismatch(stored: Any, expected: Any) -> list[str]:
    """One line per array whose presence, shape or dtype differs between two trees.

    Args:
      stored: the checkpoint's metadata tree (anything with ``.shape`` and ``.dtype`` leaves).
      expected: the abstract state this run builds.

    Returns:
      The differences, parameters first; empty when the trees fit.
    """
    got, want = _shapes(stored), _shapes(expected)
    lines = []
    for path in sorted(set(got) | set(want), key=lambda p: (not p.startswith("params/"), p)):
        if path not in got:
            lines.append(
                f"{path}: this run has {want[path][0]} {want[path][1]}, checkpoint has none"
            )
        elif path not in want:
            lines.append(f"{path}: checkpoint has {got[path][0]} {got[path][1]}, this run has none")
        elif got[path] != want[path]:
            lines.append(
                f"{path}: checkpoint has {got[path][0]} {got[path][1]}, "
                f"this run has {want[path][0]} {want[path][1]}"
            )
    return lines


def _cause(err: BaseException) -> str:
    """The operating system's reason for a failed write, without tensorstore's long spec.

    Tensorstore reports ENOSPC as ``ValueError: RESOURCE_EXHAUSTED: ... [os_error_code='28']``
    followed by kilobytes of JSON; the error code is the useful part.
    """
    code = getattr(err, "errno", None)
    if code is None:
        found = re.search(r"os_error_code='(\d+)'", str(err))
        code = int(found.group(1)) if found else None
    if code is not None:
        return f"{os.strerror(code)}, errno {code}"
    first_line = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first_line[:200]}"


def _stored_tree(state_dir: str) -> Any:
    """The shapes and dtypes a checkpoint's ``state`` item holds, read from its metadata."""
    from etils import epath

    handler = ocp.PyTreeCheckpointHandler()
    try:
        metadata = handler.metadata(epath.Path(state_dir))
    finally:
        handler.close()
    tree = metadata.tree if hasattr(metadata, "tree") else metadata
    if tree is None:
        raise ValueError(f"no metadata in {state_dir}")
    return tree


@dataclasses.dataclass(frozen=True)
class DamagedCheckpoint:
    """A checkpoint that :func:`restore_newest_intact` passed over.

    Attributes:
      step: its step.
      reason: why it cannot be used (the :class:`CheckpointDamagedError` message).
      renamed_to: where it was moved, or ``None`` when it was left in place.
    """

    step: int
    reason: str
    renamed_to: str | None


@dataclasses.dataclass(frozen=True)
class Fallback(Generic[T]):
    """What :func:`restore_newest_intact` found.

    Attributes:
      step: the step restored, or ``None`` when every checkpoint was damaged (or none exists).
      value: what ``restore(step)`` returned, or ``None``.
      damaged: the newer checkpoints passed over, newest first.
    """

    step: int | None
    value: T | None
    damaged: list[DamagedCheckpoint]


def restore_newest_intact(
    directory: str,
    steps: Iterable[int],
    restore: Callable[[int], T],
    *,
    rename_damaged: bool,
) -> Fallback[T]:
    """Restores the newest checkpoint that reads back: the fallback of training and evaluation.

    Tries ``restore(step)`` from the newest step down. A :class:`CheckpointDamagedError` means
    that checkpoint cannot be trusted: it is reported by name and the next older one is tried.
    Any other error (a :class:`CheckpointMismatchError` above all: the checkpoint is intact but
    belongs to another model) propagates at once, because an older checkpoint of the same run
    would not fit either, and silently evaluating or resuming from it would hide the mistake.

    Args:
      directory: the checkpoint folder; checkpoint ``s`` is ``directory/<s>``.
      steps: the steps of the complete checkpoints, in any order.
      restore: reads one checkpoint; raises :class:`CheckpointDamagedError` on damage.
      rename_damaged: training owns its folder and renames a damaged checkpoint to a free
        ``<step>.damaged`` name (kept for inspection, never deleted), so that the next save or
        resumption does not trip over it again; evaluation, export and ``init_from`` only read
        a folder another process may be writing, and leave it as it is.

    Returns:
      A :class:`Fallback`; ``step is None`` when no checkpoint reads back (an error naming every
      damaged one is logged).

    Raises:
      CheckpointMismatchError: raised by ``restore``; nothing is renamed.
    """
    damaged = []
    for step in sorted(steps, reverse=True):
        try:
            return Fallback(step=step, value=restore(step), damaged=damaged)
        except CheckpointDamagedError as err:
            path = os.path.join(directory, str(step))
            logging.warning(
                "Checkpoint %s is damaged and will be skipped (%s); trying an older one.",
                path,
                err,
            )
            renamed_to = None
            # One process renames: on a shared file system the others would race it.
            if rename_damaged and jax.process_index() == 0 and os.path.exists(path):
                renamed_to = free_name(path)
                os.rename(path, renamed_to)
                logging.warning("Renamed %s to %s (kept for inspection).", path, renamed_to)
            damaged.append(DamagedCheckpoint(step=step, reason=str(err), renamed_to=renamed_to))
    if damaged:
        logging.error(
            "None of the %d checkpoint(s) in %s is usable (steps %s, all damaged)%s.",
            len(damaged),
            directory,
            [d.step for d in damaged],
            "; they were renamed *.damaged" if rename_damaged else "",
        )
    return Fallback(step=None, value=None, damaged=damaged)


class Checkpointer:
    """Saves and restores ``(state, loader_state)`` under ``directory/<step>/``.

    Each checkpoint also holds an ``integrity`` item: a checksum of every array of the state
    (:mod:`ssljax.checkpoint_integrity`), verified when it is restored. A state with NaN or
    infinity is never saved.

    Args:
      directory: the checkpoint folder (created if missing, unless ``read_only``).
      keep: how many of the newest checkpoints to keep.
      async_save: return from :meth:`save` before the files are written.
      read_only: only read (``config.init_from``): nothing in ``directory`` is created,
        renamed or deleted.
    """

    def __init__(
        self,
        directory: str,
        *,
        keep: int = 3,
        async_save: bool = True,
        read_only: bool = False,
    ):
        self.directory = os.path.abspath(directory)
        self.read_only = read_only
        if read_only:
            options = ocp.CheckpointManagerOptions(read_only=True, create=False)
        else:
            os.makedirs(self.directory, exist_ok=True)
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                create=True,
            )
        _use_replica_parallel_for_large_arrays_only()
        # A damaged checkpoint's failed read would otherwise end in "Exception ignored ...
        # Event loop is closed" tracebacks after ssljax has reported the damage.
        closed_loop_callbacks.install()
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=ITEM_NAMES
        )
        self._saving_step: int | None = None

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or ``None``."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of every complete checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, loader_state: Any, *, force: bool = False) -> None:
        """Starts saving ``state`` and ``loader_state`` as checkpoint ``step``.

        Args:
          step: the step number that names the checkpoint.
          state: the train state (a pytree of ``jax.Array``).
          loader_state: the input iterator's state for the batches consumed so far.
          force: save even if a checkpoint of this step exists (it is replaced).

        Raises:
          NonFiniteStateError: if any floating-point array of ``state`` holds NaN or infinity
            (nothing is written).
          CheckpointSaveError: if writing failed (this save's or an earlier asynchronous one's).
        """
        checksums, nonfinite = checkpoint_integrity.summarize(state)
        if nonfinite:
            shown = ", ".join(nonfinite[:5]) + (" ..." if len(nonfinite) > 5 else "")
            raise NonFiniteStateError(
                f"Refusing to save checkpoint {step}: the state holds NaN or infinity in "
                f"{len(nonfinite)} array(s) ({shown}). The newest checkpoint "
                f"(step {self.latest_step()}) in {self.directory} is kept."
            )
        # A failure of the previous (asynchronous) save is reported as that save's, not this one.
        self.wait()
        try:
            if step in self._manager.all_steps():
                if not force:
                    return
                self._manager.delete(step)
            self._saving_step = step
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    loader=ocp.args.JsonSave(_encode_loader_state(loader_state)),
                    integrity=ocp.args.JsonSave({"checksums": checksums}),
                ),
                force=True,
            )
        except Exception as err:  # noqa: BLE001 -- any failure to write is reported in one line
            raise self._save_error(err) from None  # the cause is in the message

    def _save_error(self, err: BaseException) -> CheckpointSaveError:
        try:
            free = f"{shutil.disk_usage(self.directory).free / 2**30:.2f} GiB free there"
        except OSError:
            free = "free space unknown"
        kept = [s for s in self._manager.all_steps() if s != self._saving_step]
        previous = (
            f"The previous checkpoint (step {max(kept)}) is kept: free disk space (or lower "
            "config.checkpoint.keep) and rerun the same command to resume from it."
            if kept
            else "There is no earlier checkpoint: free disk space and rerun the same command."
        )
        return CheckpointSaveError(
            f"Saving checkpoint {self._saving_step} to {self.directory} failed "
            f"({_cause(err)}); {free}. {previous}"
        )

    def restore(
        self,
        step: int,
        abstract_state: Any,
        shardings: Any,
        *,
        fields: tuple[str, ...] | None = None,
    ) -> tuple[Any, Any]:
        """Restores checkpoint ``step`` into ``shardings``, verifying every array read.

        Args:
          step: which checkpoint.
          abstract_state: a pytree of ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``).
          shardings: a matching pytree of ``jax.sharding.Sharding``.
          fields: restore only these top-level fields of the state (e.g. the params for
            ``init_from``); ``None`` restores everything.

        Returns:
          ``(state, loader_state)``; with ``fields``, ``state`` is a dict of those fields and
          ``loader_state`` is ``None``.

        Raises:
          CheckpointMismatchError: the checkpoint reads but its arrays do not fit
            ``abstract_state`` (another model, optimizer or config): nothing is renamed.
          CheckpointDamagedError: the checkpoint cannot be read, or an array's checksum or
            finiteness is wrong.
        """
        path = os.path.join(self.directory, str(step))
        target = jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            abstract_state,
            shardings,
        )
        if fields is not None:
            target = {f: getattr(target, f) for f in fields}
        try:
            stored_tree = _stored_tree(os.path.join(path, "state"))
        except Exception as err:  # noqa: BLE001 -- unreadable metadata is damage
            raise CheckpointDamagedError(
                f"its metadata does not read ({type(err).__name__}: {err})"
            ) from err
        if fields is not None:
            # Everything else on disk is skipped (orbax's placeholder), not read.
            others = {
                k: jax.tree.map(lambda _: ocp.PLACEHOLDER, v)
                for k, v in stored_tree.items()
                if k not in fields
            }
            stored_tree = {f: stored_tree.get(f, {}) for f in fields}
        mismatch = describe_mismatch(stored_tree, target)
        if mismatch:
            raise CheckpointMismatchError(
                f"Checkpoint {path} does not fit the state this config builds (a different "
                f"model, heads or optimizer):{format_differences(mismatch)}\n"
                "The checkpoint is intact and was left as it is. Run with the config it was "
                "trained with, or use a new --workdir (with --config.init_from to start from "
                "its weights)."
            )
        has_integrity = os.path.isdir(os.path.join(path, "integrity"))
        try:
            if fields is None:
                args = {
                    "state": ocp.args.StandardRestore(target),
                    "loader": ocp.args.JsonRestore(),
                }
            else:
                restore_args = jax.tree.map(
                    lambda t: ocp.ArrayRestoreArgs(
                        sharding=t.sharding, global_shape=t.shape, dtype=t.dtype
                    ),
                    target,
                )
                args = {
                    "state": ocp.args.PyTreeRestore(
                        item={**target, **others}, restore_args={**restore_args, **others}
                    )
                }
            if has_integrity:
                args["integrity"] = ocp.args.JsonRestore()
            restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as err:  # noqa: BLE001 -- any failure to read after the metadata fit
            raise CheckpointDamagedError(f"{type(err).__name__}: {err}") from err
        state = restored["state"]
        checksums, nonfinite = checkpoint_integrity.summarize(state)
        if has_integrity:
            bad = checkpoint_integrity.mismatched(
                checksums, restored["integrity"].get("checksums", {})
            )
            if bad:
                raise CheckpointDamagedError(
                    f"the checksums of {len(bad)} array(s) differ from those written at save "
                    f"time ({', '.join(bad[:5])}): its bytes changed on disk"
                )
        else:
            logging.warning("Checkpoint %s has no checksums (older format): not verified.", path)
        if nonfinite:
            raise CheckpointDamagedError(
                f"it holds NaN or infinity in {len(nonfinite)} array(s) "
                f"({', '.join(nonfinite[:5])})"
            )
        if fields is not None:
            return state, None
        return state, _decode_loader_state(restored["loader"])

    def restore_latest(
        self, abstract_state: Any, shardings: Any, *, fields: tuple[str, ...] | None = None
    ) -> tuple[Any, Any] | None:
        """Restores the newest checkpoint that reads back intact; ``None`` when there is none.

        The fallback is :func:`restore_newest_intact`: a damaged checkpoint (unreadable, missing
        files, a wrong checksum, NaN or infinity) is reported by name, renamed to a free
        ``<step>.damaged`` name -- kept for inspection, never deleted; left in place when
        ``read_only`` -- and the next older one is tried. A checkpoint that reads but does not
        fit this run's state is not damaged: that raises.

        Raises:
          CheckpointMismatchError: see :meth:`restore`.
        """
        found = restore_newest_intact(
            self.directory,
            self.all_steps(),
            lambda step: self.restore(step, abstract_state, shardings, fields=fields),
            rename_damaged=not self.read_only,
        )
        if found.damaged:
            # The manager lists steps from its own cache: a renamed step must leave it, or a
            # later save would count (and try to delete) a checkpoint that is gone.
            self._manager.reload()
        return found.value

    def wait(self) -> None:
        """Blocks until every pending asynchronous save is on disk.

        Raises:
          CheckpointSaveError: if a pending save failed.
        """
        try:
            self._manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001 -- reported in one line
            raise self._save_error(err) from None  # the cause is in the message

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        try:
            self.wait()
        finally:
            self._manager.close()


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple]:
    """Fields whose values differ between two configs, ignoring :data:`RESUMABLE_CHANGES`."""
    a, b = tree_paths.flatten(saved), tree_paths.flatten(current)
    # A field that a later version of ssljax added is absent from an older run's config; at
    # its default it changes nothing (the older code behaved so), so it does not block a resume.
    defaults = tree_paths.flatten(json.loads(config_schema.base_config().to_json_best_effort()))
    diffs = {}
    for key in sorted(set(a) | set(b)):
        if any(key == f or (f.endswith(".") and key.startswith(f)) for f in RESUMABLE_CHANGES):
            continue
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if va == "<absent>" and key in defaults and defaults[key] == vb:
            continue
        if isinstance(va, list):
            va = tuple(va)
        if isinstance(vb, list):
            vb = tuple(vb)
        if va != vb:
            diffs[key] = (va, vb)
    return diffs


def has_checkpoint(workdir: str) -> bool:
    """Whether ``workdir/checkpoints`` holds a finished checkpoint (a folder named by a step)."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return False
    return any(
        name.isdigit() and os.path.isdir(os.path.join(directory, name))
        for name in os.listdir(directory)
    )


def check_config_matches(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Refuses to resume a run in ``workdir`` that was started with a different config.

    Raises:
      ValueError: listing each differing field, unless ``config.allow_config_change``.
    """
    path = os.path.join(workdir, "config.json")
    # A config.json without a checkpoint is left by a start that failed: nothing to resume.
    if not os.path.exists(path) or not has_checkpoint(workdir):
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


# What config.init_from takes from another run: weights and statistics, not its optimizer
# state, RNG or step (those start fresh, so the optimizer may differ).
INIT_FROM_FIELDS = ("step", "params", "batch_stats", "method_state")


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
    # Another run's folder is only read: never renamed into, written or cleaned up.
    ckpt = Checkpointer(directory, read_only=True)
    abstract = jax.eval_shape(lambda s: s, state)
    try:
        restored = ckpt.restore_latest(abstract, shardings, fields=INIT_FROM_FIELDS)
    except CheckpointMismatchError as err:
        raise CheckpointMismatchError(f"config.init_from: {err}") from err
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"config.init_from: no readable checkpoint in {directory}.")
    other, _ = restored
    logging.info("Initialised params from %s (step %d).", directory, int(other["step"]))
    return state.replace(**{f: other[f] for f in INIT_FROM_FIELDS if f != "step"})
