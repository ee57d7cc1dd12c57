"""The online backbone of a training run: its params and running BatchNorm statistics.

Only the backbone's arrays are read from a checkpoint (``params/backbone``,
``batch_stats/backbone`` and the step); the heads, the target network and the optimizer state
are left on disk, so evaluation needs neither the run's optimizer nor its Siamese network.
The backbone is built from the run's config by :func:`ssljax.models.backbone_from_config`.

"The newest checkpoint that reads back" is :func:`ssljax.checkpointing.restore_newest_intact`,
the loop training resumes with, run read-only: a damaged checkpoint is skipped with a warning
and never renamed (the run may still be writing its folder).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from ssljax import checkpoint_integrity, checkpointing, data, models, paths, sharding
from ssljax.eval import features


@dataclasses.dataclass
class Run:
    """The online backbone of one checkpoint of a training run.

    Attributes:
      workdir: the run's folder.
      config: the config evaluated (the run's ``config.json`` unless another was given).
      step: the checkpoint's step.
      checkpoint: the checkpoint's folder.
      backbone: the Flax backbone module built from ``config``.
      params: the backbone's ``params`` (replicated ``jax.Array`` leaves).
      batch_stats: the backbone's ``batch_stats`` (running BatchNorm statistics).
      components: the run's :class:`~ssljax.eval.features.Preprocessing` (evaluation
        preprocessing, augmentations, dataset info); ``None`` when loaded ``with_data=False``.
    """

    workdir: str
    config: ml_collections.ConfigDict
    step: int
    checkpoint: str
    backbone: Any
    params: dict[str, Any]
    batch_stats: dict[str, Any]
    components: features.Preprocessing | None = dataclasses.field(default=None, repr=False)

    @property
    def variables(self) -> dict[str, Any]:
        """``{'params', 'batch_stats'}`` for ``backbone.apply``."""
        return {"params": self.params, "batch_stats": self.batch_stats}


def _checkpoint_steps(ckpt_dir: str) -> list[int]:
    """Finished checkpoints (orbax names them by step; unfinished ones carry a suffix).

    Listed from the folder, not by an orbax ``CheckpointManager``: that would need write
    access to create its folder, and evaluation must leave the run's folder as it is.
    """
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(
        int(name)
        for name in os.listdir(ckpt_dir)
        if name.isdigit() and os.path.isdir(os.path.join(ckpt_dir, name))
    )


def _paths(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'a/b/c': leaf}`` of a nested mapping."""
    out = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_paths(v, path))
        else:
            out[path] = v
    return out


def _model_mismatch(expected: Mapping[str, Any], found: Mapping[str, Any]) -> list[str]:
    """Differences between expected and stored shapes, one line each, paths '/'-joined."""
    exp, got = _paths(expected), _paths(found)
    lines = []
    # Parameters before statistics: the first lines name the layer that differs.
    for path in sorted(set(exp) | set(got), key=lambda p: (not p.startswith("params/"), p)):
        if path not in got:
            lines.append(f"{path}: missing from the checkpoint (config expects {exp[path]})")
        elif path not in exp:
            lines.append(f"{path}: in the checkpoint {got[path]}, not in the config's model")
        elif tuple(exp[path]) != tuple(got[path]):
            lines.append(f"{path}: checkpoint {tuple(got[path])}, config {tuple(exp[path])}")
    return lines


def _integrity_problem(checkpoint: str, restored: Mapping[str, Any]) -> str | None:
    """Why the arrays restored from ``checkpoint`` cannot be used, or ``None``.

    Their checksums are compared with those written at save time (when the checkpoint has
    them), and NaN or infinity is refused.
    """
    checksums, nonfinite = checkpoint_integrity.summarize(restored)
    stored_path = os.path.join(checkpoint, "integrity", "metadata")
    if os.path.isfile(stored_path):
        with open(stored_path, encoding="utf-8") as f:
            stored = json.load(f).get("checksums", {})
        bad = checkpoint_integrity.mismatched(checksums, stored)
        if bad:
            return f"its bytes changed on disk (checksums of {', '.join(bad[:5])} differ)"
    if nonfinite:
        return f"NaN or infinity in {len(nonfinite)} array(s) ({', '.join(nonfinite[:5])})"
    return None


def _expected_shapes(backbone: Any, image_size: int) -> dict[str, Any]:
    """``{'params', 'batch_stats'}`` shapes of ``backbone``, without computing anything."""
    # Three channels whatever the dataset: every backbone replicates one-channel images, so
    # the parameter shapes are the same (and two examples define BatchNorm's batch statistics).
    abstract = jax.eval_shape(
        lambda: backbone.init(
            jax.random.PRNGKey(0),
            jnp.zeros((2, image_size, image_size, 3), jnp.float32),
            train=True,
        )
    )
    return {
        "params": jax.tree.map(lambda s: s.shape, abstract["params"]),
        "batch_stats": jax.tree.map(lambda s: s.shape, abstract.get("batch_stats", {})),
    }


def _read_backbone(
    handler: ocp.PyTreeCheckpointHandler,
    step_dir: epath.Path,
    expected: Mapping[str, Any],
    sharding_: jax.sharding.Sharding,
    describe_models: str,
) -> dict[str, Any]:
    """Reads ``step``, ``params/backbone`` and ``batch_stats/backbone`` of one checkpoint.

    Args:
      handler: the orbax handler reading the ``state`` item.
      step_dir: the checkpoint's folder.
      expected: the backbone's shapes (:func:`_expected_shapes`).
      sharding_: where the arrays go (replicated).
      describe_models: the sentence naming both backbones, for a mismatch.

    Returns:
      The restored tree (``{'step', 'params': {'backbone'}, 'batch_stats': {'backbone'}}``).

    Raises:
      CheckpointDamagedError: unreadable metadata or arrays, changed bytes, NaN or infinity.
      CheckpointMismatchError: the checkpoint's backbone is not the config's.
    """
    path = step_dir / "state"
    try:
        tree = handler.metadata(path).tree
    except Exception as err:  # noqa: BLE001 -- unreadable metadata is damage
        raise checkpointing.CheckpointDamagedError(
            f"its metadata does not read ({type(err).__name__}: {err})"
        ) from err
    found = {
        col: jax.tree.map(lambda m: tuple(m.shape), tree.get(col, {}).get("backbone", {}))
        for col in ("params", "batch_stats")
    }
    mismatch = _model_mismatch(expected, found)
    if mismatch:
        raise checkpointing.CheckpointMismatchError(
            f"The checkpoint {step_dir} does not match the evaluation config's model: "
            f"{describe_models}. Differences:" + checkpointing.format_differences(mismatch)
        )

    def target(key_path, meta):
        keys = [getattr(k, "key", None) for k in key_path]
        wanted = keys[0] == "step" or (
            keys[0] in ("params", "batch_stats") and keys[1:2] == ["backbone"]
        )
        if not wanted:
            return ocp.PLACEHOLDER  # not read from disk
        return jax.ShapeDtypeStruct(meta.shape, meta.dtype, sharding=sharding_)

    item = jax.tree_util.tree_map_with_path(target, tree)
    restore_args = jax.tree.map(
        lambda t: (
            ocp.ArrayRestoreArgs(sharding=t.sharding, global_shape=t.shape, dtype=t.dtype)
            if isinstance(t, jax.ShapeDtypeStruct)
            else t
        ),
        item,
    )
    try:
        restored = handler.restore(
            path, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args)
        )
    except Exception as err:  # noqa: BLE001 -- any failure to read after the metadata fit
        raise checkpointing.CheckpointDamagedError(f"{type(err).__name__}: {err}") from err
    problem = _integrity_problem(str(step_dir), restored)
    if problem:
        raise checkpointing.CheckpointDamagedError(problem)
    return restored


def load_run(
    workdir: str,
    config: ml_collections.ConfigDict | None = None,
    *,
    step: int | None = None,
    with_data: bool = True,
) -> Run:
    """Restores the online backbone (params and running statistics) of a training run.

    Only the backbone's arrays are read (the optimizer state, heads and target network are not),
    after their shapes were checked against the model that ``config`` builds. Nothing in
    ``workdir`` is created, renamed or deleted: a damaged checkpoint is skipped, not renamed.

    Args:
      workdir: the run's folder (``config.json`` and ``checkpoints/``).
      config: the evaluation config; default the run's own ``config.json``.
      step: which checkpoint; default the newest one that reads back.
      with_data: also build the run's preprocessing (evaluation preprocessing, augmentations),
        which needs the prepared dataset; export does without.

    Returns:
      The :class:`Run`.

    Raises:
      FileNotFoundError: if ``workdir`` has no config or no finished checkpoint (the message
        lists what the folder holds), or no checkpoint reads back (the message lists why).
      ValueError: if the checkpoint's backbone does not match ``config``'s, listing the
        differing parameters and both backbone settings, or if the checkpoint of an explicit
        ``step`` is damaged.
    """
    workdir = os.path.abspath(paths.expand(workdir))
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"--workdir={workdir} does not exist.")
    config_path = os.path.join(workdir, "config.json")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"{workdir} holds no config.json of a training run; found: "
            f"{sorted(os.listdir(workdir)) or 'an empty folder'}."
        )
    with open(config_path, encoding="utf-8") as f:
        saved = ml_collections.ConfigDict(json.load(f))
    config = config if config is not None else saved
    steps = _checkpoint_steps(ckpt_dir)
    if step is not None and step not in steps:
        raise FileNotFoundError(f"{ckpt_dir} has no checkpoint of step {step}; found {steps}.")
    if not steps:
        found = sorted(os.listdir(ckpt_dir)) if os.path.isdir(ckpt_dir) else "no such folder"
        raise FileNotFoundError(
            f"{ckpt_dir} holds no finished checkpoint (found: {found or 'an empty folder'}); "
            "train first, or point --workdir at a run that saved one."
        )

    comps = None
    if with_data:
        info = data.get_dataset_info(config.data)
        comps = features.preprocessing_from_config(config, info)
    backbone = models.backbone_from_config(config.model)
    expected = _expected_shapes(backbone, config.data.image_size)
    describe_models = (
        f"the config builds backbone {features.backbone_desc(config)}, the run was trained "
        f"with {features.backbone_desc(saved)}"
    )
    repl = sharding.replicated(sharding.make_mesh())
    handler = ocp.PyTreeCheckpointHandler()

    def read(s: int) -> dict[str, Any]:
        return _read_backbone(
            handler, epath.Path(ckpt_dir) / str(s), expected, repl, describe_models
        )

    try:
        if step is not None:
            # The checkpoint asked for by name: no fallback to another one.
            try:
                restored, used = read(step), step
            except checkpointing.CheckpointDamagedError as err:
                raise ValueError(
                    f"Checkpoint {os.path.join(ckpt_dir, str(step))} is unusable: {err}."
                ) from err
        else:
            found = checkpointing.restore_newest_intact(ckpt_dir, steps, read, rename_damaged=False)
            if found.step is None:
                raise FileNotFoundError(
                    f"No checkpoint in {ckpt_dir} reads back:\n  "
                    + "\n  ".join(f"step {d.step}: {d.reason}" for d in found.damaged)
                )
            restored, used = found.value, found.step
    finally:
        handler.close()
    return Run(
        workdir=workdir,
        config=config,
        step=int(restored["step"]),
        checkpoint=os.path.join(ckpt_dir, str(used)),
        backbone=backbone,
        params=restored["params"]["backbone"],
        batch_stats=restored.get("batch_stats", {}).get("backbone", {}),
        components=comps,
    )
