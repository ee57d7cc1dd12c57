"""Evaluation protocols on a frozen pretrained backbone, and representation diagnostics.

``python -m ssljax.evaluate --workdir=DIR --protocol=linear|knn [--eval_preset=P]
[--eval_override=linear.epochs=50 ...]`` restores the online backbone of the newest checkpoint
of a run, computes its features once (evaluation preprocessing, running BatchNorm statistics;
cached in ``DIR/eval/`` when ``cache_features``), and then

* ``linear``: trains a linear classifier on the cached train features with the optimizer,
  schedule and epochs of an evaluation preset (:func:`eval_config`) and reports top-1 and
  top-5 on the evaluation split;
* ``knn``: weighted kNN (Wu et al. 2018) for several ``k``.

It also reports representation diagnostics of the evaluation split: RankMe, the mean
per-dimension std of the normalised features, alignment of two augmented views and
uniformity (:mod:`ssljax.diagnostics`, re-exported here). Results go to
``DIR/eval_<protocol>.json`` and to TensorBoard (and ``metrics.jsonl``) in ``DIR/eval``.

Stated deviation from the papers' ImageNet protocols: BYOL and SimSiam train the linear
classifier on random-resized crops and flips of the training images (centre crop at test time).
Here the classifier trains on the features of the centre crop, computed once, so that it trains
in seconds; expect a difference of the order of a point of top-1 in either direction. The CIFAR
recipes of solo-learn also augment during linear training; the same deviation applies.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ssljax import (
    checkpoint_integrity,
    checkpointing,
    data,
    knn,
    metric_writers,
    models,
    optim,
    paths,
    sharding,
    strict_json,
    train,
)
from ssljax.diagnostics import (
    alignment,
    normalized_std,
    per_dimension_std,
    rankme,
    uniformity,
)

EVALUATE_USAGE = """usage: python -m ssljax.evaluate --workdir=DIR [--protocol=knn|linear] [flags]

Evaluates the newest checkpoint of a training run on its frozen features and writes
DIR/eval_<protocol>.json. Examples:
  python -m ssljax.evaluate --workdir=/tmp/ssljax_digits --protocol=knn
  python -m ssljax.evaluate --workdir=/tmp/byol_cifar10 --protocol=linear \\
      --eval_override=linear.epochs=50 --data_dir=~/ssljax_data
"""

__all__ = [
    "EVAL_PRESETS",
    "PROTOCOLS",
    "Run",
    "alignment",
    "apply_overrides",
    "classifier_accuracy",
    "default_preset",
    "eval_config",
    "evaluate_run",
    "knn_protocol",
    "linear_eval_config",
    "linear_protocol",
    "load_run",
    "normalized_std",
    "per_dimension_std",
    "rankme",
    "resolve_eval_config",
    "train_linear_classifier",
    "uniformity",
    "validate_eval_config",
]

PROTOCOLS = ("linear", "knn")
EVAL_PRESETS = ("cifar", "imagenet_byol", "imagenet_simsiam")
OPTIMIZERS = ("sgd", "lars")
SCHEDULES = ("cosine", "cosine_per_epoch", "step")
INITS = ("zeros", "normal", "truncated_normal_fan_in", "uniform_fan_in")
DEVIATION_NOTE = (
    "Linear classifier trained on cached centre-crop features without augmentation (the papers "
    "train it on random-resized crops and flips); see ssljax.evaluate."
)


# ----------------------------------------------------------------------------------------------
# Evaluation presets: every hyperparameter of the protocols in one ConfigDict.
# ----------------------------------------------------------------------------------------------
def eval_config(preset: str = "cifar") -> ml_collections.ConfigDict:
    """The evaluation settings of a preset: linear classifier, kNN, diagnostics, caching.

    Presets (the linear classifier; kNN and diagnostics are the same in all):

    * ``cifar`` -- the CIFAR linear evaluation of the solo-learn reproductions
      (``scripts/linear/cifar/*.yaml``): SGD, momentum 0.9, batch 256, lr 0.3 (scaled by
      batch / 256), no weight decay, 100 epochs, lr x0.1 at epochs 60 and 80; PyTorch's default
      ``nn.Linear`` initialisation.
    * ``imagenet_byol`` -- Grill et al. 2020, Appendix C.1 and deepmind-research/byol
      ``configs/eval.py``: SGD with Nesterov momentum 0.9, batch 1024, 80 epochs, no weight
      decay, base lr 0.2 scaled by batch / 256 (the official code's value; the paper selects
      it from {0.4, 0.3, 0.2, 0.1, 0.05} on a 10k-image validation split), cosine decay per step,
      no warm-up; Haiku's default ``Linear`` initialisation (truncated normal, std
      ``1/sqrt(d)``, zero bias).
    * ``imagenet_simsiam`` -- Chen & He 2021, Appendix A and facebookresearch/simsiam
      ``main_lincls.py``: LARS (apex LARC, trust coefficient 0.001, no clipping, on weight and
      bias) over SGD with momentum 0.9, batch 4096, lr 0.1 x batch / 256 = 1.6, no weight decay,
      90 epochs, cosine decay per *epoch*; weight ~ N(0, 0.01), zero bias.

    No preset standardises the features (``linear.standardize``): none of the papers does;
    turning it on changes the optimisation path, not the optimum without weight decay.
    All ImageNet presets deviate from the papers by training on cached centre-crop features
    (:data:`DEVIATION_NOTE`).

    Args:
      preset: one of :data:`EVAL_PRESETS`.

    Returns:
      A ConfigDict with fields ``preset``, ``linear``, ``knn``, ``diagnostics``,
      ``cache_features`` and ``feature_batch``.

    Raises:
      ValueError: for an unknown preset.
    """
    if preset not in EVAL_PRESETS:
        raise ValueError(f"--eval_preset={preset!r} does not exist; valid: {list(EVAL_PRESETS)}.")
    c = ml_collections.ConfigDict()
    c.preset = preset

    lin = ml_collections.ConfigDict()
    lin.optimizer = "sgd"  # 'sgd' (PyTorch ordering: momentum, then lr) or 'lars'
    lin.epochs = 100
    lin.batch_size = 256
    lin.base_lr = 0.3
    lin.lr_batch_scaling = True  # lr = base_lr * batch_size / 256
    lin.momentum = 0.9
    lin.nesterov = False
    lin.weight_decay = 0.0
    lin.trust_coefficient = 1e-3  # LARS only
    lin.schedule = "step"  # 'cosine' (per step), 'cosine_per_epoch', 'step'
    lin.lr_decay_epochs = (60, 80)  # 'step' only
    lin.lr_decay_factor = 0.1  # 'step' only
    lin.init = "uniform_fan_in"  # one of INITS
    lin.init_std = 0.01  # 'normal' only
    lin.standardize = False  # features -> (x - mean) / std of the train split first
    lin.seed = 0
    if preset == "imagenet_byol":
        lin.epochs = 80
        lin.batch_size = 1024
        lin.base_lr = 0.2
        lin.nesterov = True
        lin.schedule = "cosine"
        lin.init = "truncated_normal_fan_in"
    elif preset == "imagenet_simsiam":
        lin.optimizer = "lars"
        lin.epochs = 90
        lin.batch_size = 4096
        lin.base_lr = 0.1
        lin.schedule = "cosine_per_epoch"
        lin.init = "normal"
        lin.init_std = 0.01
    c.linear = lin

    # Weighted kNN (Wu et al. 2018): cosine similarity, votes exp(s / T).
    c.knn = ml_collections.ConfigDict()
    c.knn.ks = (10, 20, 100, 200)
    c.knn.temperature = 0.07

    c.diagnostics = ml_collections.ConfigDict()
    c.diagnostics.enabled = True
    # Alignment needs two augmented views per example and uniformity an [n, n] matrix: both
    # run on the first max_examples of the evaluation split.
    c.diagnostics.max_examples = 2048
    c.diagnostics.seed = 0

    # Keep the features in DIR/eval/ so another protocol or preset reuses them (ImageNet's
    # 1.28M x 2048 float32 train features are 10 GB: off by default there).
    c.cache_features = not preset.startswith("imagenet")
    c.feature_batch = 0  # images per feature batch; 0 = the run's global batch
    return c


def linear_eval_config(preset: str = "cifar") -> ml_collections.ConfigDict:
    """The linear-classifier part of :func:`eval_config` (``eval_config(preset).linear``)."""
    return eval_config(preset).linear


def default_preset(config: ml_collections.ConfigDict) -> str:
    """The evaluation preset that matches a run: its method's paper for ImageNet, else CIFAR."""
    if str(config.data.name).startswith("imagenet"):
        return "imagenet_simsiam" if config.method == "simsiam" else "imagenet_byol"
    return "cifar"


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        lowered = text.strip().lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        return text


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Iterable[str]
) -> ml_collections.ConfigDict:
    """Applies ``key.path=value`` strings (``--eval_override``) to a copy of ``config``.

    Raises:
      ValueError: for a malformed override, an unknown field (listing the valid ones) or a
        value of the wrong type.
    """
    config = ml_collections.ConfigDict(config.to_dict())
    flat = _flatten_keys(config)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--eval_override={item!r} must look like 'linear.epochs=50'.")
        if key not in flat:
            raise ValueError(f"--eval_override: unknown field {key!r}; valid: {sorted(flat)}.")
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        value = _parse_value(text)
        if isinstance(node[leaf], tuple) and isinstance(value, (int, float)):
            value = (value,)
        try:
            node[leaf] = value
        except TypeError as err:
            raise ValueError(
                f"--eval_override={item!r}: {key} holds a {type(node[leaf]).__name__}, got "
                f"{value!r}."
            ) from err
    return config


def _flatten_keys(config: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in config.items():
        if isinstance(v, (Mapping, ml_collections.ConfigDict)):
            keys.extend(_flatten_keys(v, f"{prefix}{k}."))
        else:
            keys.append(f"{prefix}{k}")
    return keys


def validate_eval_config(c: ml_collections.ConfigDict) -> None:
    """Checks every evaluation setting before features are computed.

    Raises:
      ValueError: naming the first invalid field.
    """

    def fail(field: str, msg: str) -> None:
        raise ValueError(f"eval.{field}: {msg}")

    lin = c.linear
    if lin.optimizer not in OPTIMIZERS:
        fail("linear.optimizer", f"must be one of {OPTIMIZERS}, got {lin.optimizer!r}.")
    if lin.schedule not in SCHEDULES:
        fail("linear.schedule", f"must be one of {SCHEDULES}, got {lin.schedule!r}.")
    if lin.init not in INITS:
        fail("linear.init", f"must be one of {INITS}, got {lin.init!r}.")
    if lin.epochs <= 0:
        fail("linear.epochs", f"must be positive, got {lin.epochs}.")
    if lin.batch_size <= 0:
        fail("linear.batch_size", f"must be positive, got {lin.batch_size}.")
    if lin.base_lr < 0:
        fail("linear.base_lr", f"must be >= 0, got {lin.base_lr}.")
    if not 0.0 <= lin.momentum < 1.0:
        fail("linear.momentum", f"must lie in [0, 1), got {lin.momentum}.")
    if lin.weight_decay < 0:
        fail("linear.weight_decay", f"must be >= 0, got {lin.weight_decay}.")
    if lin.trust_coefficient <= 0:
        fail("linear.trust_coefficient", f"must be > 0, got {lin.trust_coefficient}.")
    if list(lin.lr_decay_epochs) != sorted(lin.lr_decay_epochs):
        fail("linear.lr_decay_epochs", f"must be increasing, got {tuple(lin.lr_decay_epochs)}.")
    if not 0.0 < lin.lr_decay_factor <= 1.0:
        fail("linear.lr_decay_factor", f"must lie in (0, 1], got {lin.lr_decay_factor}.")
    if lin.init_std < 0:
        fail("linear.init_std", f"must be >= 0, got {lin.init_std}.")
    if not c.knn.ks or any(int(k) < 1 for k in c.knn.ks):
        fail("knn.ks", f"must be positive integers, got {tuple(c.knn.ks)}.")
    if c.knn.temperature <= 0:
        fail("knn.temperature", f"must be > 0, got {c.knn.temperature}.")
    if c.diagnostics.max_examples < 2:
        fail("diagnostics.max_examples", f"must be >= 2, got {c.diagnostics.max_examples}.")
    if c.feature_batch < 0:
        fail("feature_batch", f"must be >= 0, got {c.feature_batch}.")


def resolve_eval_config(
    run_config: ml_collections.ConfigDict,
    preset: str | None = None,
    overrides: Sequence[str] = (),
) -> ml_collections.ConfigDict:
    """The evaluation config of a run: preset defaults, then the run's ``eval``, then overrides.

    Args:
      run_config: the training run's config; an ``eval`` field in it (same layout as
        :func:`eval_config`) overrides the preset's defaults.
      preset: an :data:`EVAL_PRESETS` name; default the run's ``eval.preset``, else
        :func:`default_preset` of the run.
      overrides: ``key.path=value`` strings.

    Returns:
      The validated evaluation ConfigDict.

    Raises:
      ValueError: for an unknown preset, override or invalid value.
    """
    run_eval = run_config.get("eval") if hasattr(run_config, "get") else None
    c = eval_config(preset or (run_eval or {}).get("preset") or default_preset(run_config))
    if run_eval:
        flat = _flatten_dict(run_eval.to_dict() if hasattr(run_eval, "to_dict") else run_eval)
        c = apply_overrides(c, [f"{k}={v!r}" for k, v in flat.items() if k != "preset"])
    c = apply_overrides(c, overrides)
    validate_eval_config(c)
    return c


def _flatten_dict(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


# ----------------------------------------------------------------------------------------------
# Loading a run: the online backbone of the newest readable checkpoint.
# ----------------------------------------------------------------------------------------------
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
      components: the run's ``train.Components`` (evaluation preprocessing, augmentations,
        dataset info); ``None`` when loaded ``with_data=False``.
    """

    workdir: str
    config: ml_collections.ConfigDict
    step: int
    checkpoint: str
    backbone: Any
    params: dict[str, Any]
    batch_stats: dict[str, Any]
    components: Any = dataclasses.field(default=None, repr=False)

    @property
    def variables(self) -> dict[str, Any]:
        """``{'params', 'batch_stats'}`` for ``backbone.apply``."""
        return {"params": self.params, "batch_stats": self.batch_stats}


def _checkpoint_steps(ckpt_dir: str) -> list[int]:
    """Finished checkpoints (orbax names them by step; unfinished ones carry a suffix)."""
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(
        int(name)
        for name in os.listdir(ckpt_dir)
        if name.isdigit() and os.path.isdir(os.path.join(ckpt_dir, name))
    )


def _paths(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
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


def _backbone_desc(config: ml_collections.ConfigDict) -> str:
    return f"{config.model.backbone!r} with {dict(config.model.backbone_kwargs)}"


def load_run(
    workdir: str,
    config: ml_collections.ConfigDict | None = None,
    *,
    step: int | None = None,
    with_data: bool = True,
) -> Run:
    """Restores the online backbone (params and running statistics) of a training run.

    Only the backbone's arrays are read (the optimizer state, heads and target network are not),
    after their shapes were checked against the model that ``config`` builds.

    Args:
      workdir: the run's folder (``config.json`` and ``checkpoints/``).
      config: the evaluation config; default the run's own ``config.json``.
      step: which checkpoint; default the newest one that reads back.
      with_data: also build the run's components (evaluation preprocessing, augmentations),
        which needs the prepared dataset; export does without.

    Returns:
      The :class:`Run`.

    Raises:
      FileNotFoundError: if ``workdir`` has no config or no finished checkpoint (the message
        lists what the folder holds).
      ValueError: if the checkpoint's backbone does not match ``config``'s, listing the
        differing parameters and both backbone settings.
    """
    import orbax.checkpoint as ocp
    from etils import epath

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
    if step is not None:
        if step not in steps:
            raise FileNotFoundError(f"{ckpt_dir} has no checkpoint of step {step}; found {steps}.")
        steps = [step]
    if not steps:
        found = sorted(os.listdir(ckpt_dir)) if os.path.isdir(ckpt_dir) else "no such folder"
        raise FileNotFoundError(
            f"{ckpt_dir} holds no finished checkpoint (found: {found or 'an empty folder'}); "
            "train first, or point --workdir at a run that saved one."
        )

    comps = None
    if with_data:
        info = data.get_dataset_info(config.data)
        comps = train.build_components(
            config, info, num_train_examples=info.split_sizes[config.data.train_split]
        )
    # The backbone as train.build_components makes it; one-channel images are replicated to
    # three by every backbone, so the parameter shapes do not depend on the dataset.
    backbone = models.create_backbone(
        config.model.backbone,
        dtype=train.DTYPES[config.model.dtype],
        **dict(config.model.backbone_kwargs),
    )
    size = config.data.image_size
    abstract = jax.eval_shape(
        lambda: backbone.init(
            jax.random.PRNGKey(0), jnp.zeros((2, size, size, 3), jnp.float32), train=True
        )
    )
    expected = {
        "params": jax.tree.map(lambda s: s.shape, abstract["params"]),
        "batch_stats": jax.tree.map(lambda s: s.shape, abstract.get("batch_stats", {})),
    }
    mesh = sharding.make_mesh()
    repl = sharding.replicated(mesh)
    handler = ocp.PyTreeCheckpointHandler()
    errors = []
    try:
        for s in sorted(steps, reverse=True):
            path = epath.Path(ckpt_dir) / str(s) / "state"
            try:
                tree = handler.metadata(path).tree
            except Exception as err:  # noqa: BLE001 -- unreadable: try an older checkpoint
                errors.append(f"step {s}: {type(err).__name__}: {err}")
                logging.warning("Checkpoint %s is unreadable (%s); trying an older one.", path, err)
                continue
            found = {
                col: jax.tree.map(lambda m: tuple(m.shape), tree.get(col, {}).get("backbone", {}))
                for col in ("params", "batch_stats")
            }
            mismatch = _model_mismatch(expected, found)
            if mismatch:
                raise ValueError(
                    f"The checkpoint {path.parent} does not match the evaluation config's model: "
                    f"the config builds backbone {_backbone_desc(config)}, the run was trained "
                    f"with {_backbone_desc(saved)}. Differences:"
                    + checkpointing.format_differences(mismatch)
                )

            def target(key_path, meta):
                keys = [getattr(k, "key", None) for k in key_path]
                wanted = keys[0] == "step" or (
                    keys[0] in ("params", "batch_stats") and keys[1:2] == ["backbone"]
                )
                if not wanted:
                    return ocp.PLACEHOLDER  # not read from disk
                return jax.ShapeDtypeStruct(meta.shape, meta.dtype, sharding=repl)

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
            except Exception as err:  # noqa: BLE001 -- damaged files: try an older checkpoint
                errors.append(f"step {s}: {type(err).__name__}: {err}")
                logging.warning(
                    "Checkpoint %s does not read back (%s); trying an older one.", path, err
                )
                continue
            problem = _integrity_problem(str(path.parent), restored)
            if problem:
                if step is not None:
                    raise ValueError(f"Checkpoint {path.parent} is unusable: {problem}.")
                errors.append(f"step {s}: {problem}")
                logging.warning(
                    "Checkpoint %s is unusable (%s); trying an older one.", path, problem
                )
                continue
            return Run(
                workdir=workdir,
                config=config,
                step=int(restored["step"]),
                checkpoint=str(path.parent),
                backbone=backbone,
                params=restored["params"]["backbone"],
                batch_stats=restored.get("batch_stats", {}).get("backbone", {}),
                components=comps,
            )
    finally:
        handler.close()
    raise FileNotFoundError(f"No checkpoint in {ckpt_dir} reads back:\n  " + "\n  ".join(errors))


# ----------------------------------------------------------------------------------------------
# Features, computed once per split and step.
# ----------------------------------------------------------------------------------------------
def _feature_fn(backbone, preprocess):
    def features(variables, images):
        return backbone.apply(variables, preprocess(images), train=False)

    return features


def _loader(config, split: str, batch: int, *, crop_mode: str, shuffle: bool = False):
    return data.make_loader(
        config.data,
        split=split,
        global_batch=batch,
        seed=config.seed,
        shuffle=shuffle,
        drop_remainder=False,
        num_epochs=1,
        num_views=2,
        crop_mode=crop_mode if config.data.crop_in_loader else None,
    )


def compute_split_features(
    run: Run, split: str, ecfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> tuple[np.ndarray, np.ndarray]:
    """Features ``[n, D]`` and labels of every example of ``split``, from the cache if present.

    The cache file ``DIR/eval/features_step<step>_<split>.npz`` records the dataset, image size
    and backbone it was computed with, and is recomputed when any differs.
    """
    config = run.config
    key = {
        "step": run.step,
        "split": split,
        "data": str(config.data.name),
        "image_size": int(config.data.image_size),
        "backbone": _backbone_desc(config),
    }
    path = os.path.join(run.workdir, "eval", f"features_step{run.step}_{split}.npz")
    if ecfg.cache_features and os.path.isfile(path):
        with np.load(path) as f:
            if json.loads(str(f["key"])) == key:
                logging.info("Features of %s read from %s.", split, path)
                return f["x"], f["y"]
    batch = int(ecfg.feature_batch or config.global_batch)
    loader = _loader(config, split, batch, crop_mode="center")
    x, y = train.compute_features(
        _feature_fn(run.backbone, run.components.eval_preprocess),
        run.variables,
        iter(loader),
        mesh,
    )
    if ecfg.cache_features and jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp.npz"
        np.savez(tmp, x=x, y=y, key=json.dumps(key))
        os.replace(tmp, path)
    return x, y


# ----------------------------------------------------------------------------------------------
# Linear classifier on cached features.
# ----------------------------------------------------------------------------------------------
def _lr_schedule(lin: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    lr = lin.base_lr * (lin.batch_size / 256.0 if lin.lr_batch_scaling else 1.0)
    total = lin.epochs * steps_per_epoch
    milestones = jnp.asarray(tuple(lin.lr_decay_epochs) or (lin.epochs + 1,), jnp.int32)

    def schedule(step):
        step = jnp.asarray(step)
        epoch = step // steps_per_epoch
        if lin.schedule == "cosine":  # per step (BYOL's learning_schedule)
            return lr * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(step, total) / total))
        if lin.schedule == "cosine_per_epoch":  # SimSiam's adjust_learning_rate
            return lr * 0.5 * (1.0 + jnp.cos(jnp.pi * epoch / lin.epochs))
        decays = jnp.sum(epoch >= milestones)  # 'step' (torch MultiStepLR)
        return lr * lin.lr_decay_factor**decays

    return schedule


def _init_classifier(lin, d: int, num_classes: int, rng: jax.Array) -> dict[str, jax.Array]:
    kw, kb = jax.random.split(rng)
    zeros_b = jnp.zeros((num_classes,), jnp.float32)
    if lin.init == "zeros":
        return {"w": jnp.zeros((d, num_classes), jnp.float32), "b": zeros_b}
    if lin.init == "normal":  # SimSiam / MoCo: fc.weight.normal_(0, 0.01), fc.bias.zero_()
        return {"w": lin.init_std * jax.random.normal(kw, (d, num_classes)), "b": zeros_b}
    bound = 1.0 / math.sqrt(d)
    if lin.init == "truncated_normal_fan_in":  # Haiku Linear: TruncatedNormal(1/sqrt(fan_in))
        w = bound * jax.random.truncated_normal(kw, -2.0, 2.0, (d, num_classes))
        return {"w": w, "b": zeros_b}
    # PyTorch nn.Linear: W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    return {
        "w": jax.random.uniform(kw, (d, num_classes), minval=-bound, maxval=bound),
        "b": jax.random.uniform(kb, (num_classes,), minval=-bound, maxval=bound),
    }


def _linear_config(config: ml_collections.ConfigDict | None, overrides: Mapping[str, Any]):
    lin = ml_collections.ConfigDict((config or linear_eval_config("cifar")).to_dict())
    for k, v in overrides.items():
        if k not in lin:
            raise ValueError(f"Unknown linear-classifier setting {k!r}; valid: {sorted(lin)}.")
        lin[k] = tuple(v) if isinstance(v, list) else v
    holder = eval_config("cifar")
    holder.linear = lin
    validate_eval_config(holder)
    return lin


@functools.lru_cache(maxsize=8)
def _compiled_epoch(key: tuple, steps_per_epoch: int, batch: int, n: int):
    """The optimizer and the jitted epoch ``(carry, perm, xs, ys) -> (carry, mean loss)``.

    Cached on the (hashable) linear settings and the data size, so evaluating several runs with
    one preset compiles once.
    """
    lin = ml_collections.ConfigDict(dict(key))
    schedule = _lr_schedule(lin, steps_per_epoch)
    if lin.optimizer == "sgd":
        tx = optim.sgd(
            schedule,
            weight_decay=lin.weight_decay,
            momentum=lin.momentum,
            nesterov=lin.nesterov,
            weight_decay_mask=None,
        )
    else:
        # apex LARC (SimSiam): trust ratio per tensor, then momentum, then the rate.
        tx = optim.byol_lars(
            schedule,
            weight_decay=lin.weight_decay,
            momentum=lin.momentum,
            eta=lin.trust_coefficient,
            weight_decay_mask=None,
            trust_ratio_mask=None,
            nesterov=lin.nesterov,
        )

    def loss_fn(p, xs, ys, idx, mask):
        logits = xs[idx] @ p["w"] + p["b"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, ys[idx])
        return jnp.sum(ce * mask) / jnp.sum(mask)

    @jax.jit
    def run_epoch(carry, perm, xs, ys):
        def step(carry, batch_idx):
            p, s = carry
            idx, mask = batch_idx
            loss, g = jax.value_and_grad(loss_fn)(p, xs, ys, idx, mask)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss * jnp.sum(mask)

        padded = steps_per_epoch * batch
        idx = jnp.concatenate([perm, jnp.zeros((padded - n,), perm.dtype)])
        mask = (jnp.arange(padded) < n).astype(jnp.float32)
        carry, losses = jax.lax.scan(
            step, carry, (idx.reshape(steps_per_epoch, batch), mask.reshape(steps_per_epoch, batch))
        )
        return carry, jnp.sum(losses) / n

    return tx, run_epoch


def train_linear_classifier(
    train_x: np.ndarray,
    train_y: np.ndarray,
    *,
    num_classes: int,
    config: ml_collections.ConfigDict | None = None,
    **overrides: Any,
) -> dict[str, np.ndarray]:
    """Trains ``softmax(x W + b)`` on fixed features with the optimizer and schedule of a preset.

    Minimises the mean softmax cross-entropy over minibatches of a fresh permutation each
    epoch; the last, short minibatch of an epoch is kept (PyTorch's ``drop_last=False``) and
    weighted by its size. The optimizers are the papers': SGD with momentum (and Nesterov),
    ``v <- m v + g; w <- w - lr v`` (``torch.optim.SGD`` = ``optax.sgd``), or LARS as SimSiam's
    apex LARC (trust ratio ``eta ||w|| / ||g||`` per tensor before the momentum, on weight and
    bias). Without weight decay the problem is convex, so the result depends on the settings
    only through how far the optimiser gets.

    Args:
      train_x: ``[n, d]`` features.
      train_y: ``[n]`` integer labels in ``[0, num_classes)``.
      num_classes: number of classes.
      config: the ``linear`` ConfigDict of :func:`eval_config` (default preset ``cifar``).
      **overrides: fields of ``config`` to replace, e.g. ``epochs=20, standardize=True``.

    Returns:
      ``{'w' [d, C], 'b' [C], 'mean' [d], 'std' [d], 'epoch_loss' [epochs]}`` as NumPy arrays;
      ``mean``/``std`` are the standardisation applied before ``w`` (0 and 1 without it).

    Raises:
      ValueError: on inconsistent shapes, labels out of range or invalid settings.
    """
    lin = _linear_config(config, overrides)
    x = np.asarray(train_x, np.float32)
    y = np.asarray(train_y).astype(np.int32)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ValueError(f"train_x {x.shape} must be [n > 0, d] and train_y {y.shape} [n].")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(
            f"train_y holds labels in [{y.min()}, {y.max()}], outside [0, {num_classes})."
        )
    n, d = x.shape
    if lin.standardize:
        mean = x.mean(0, dtype=np.float64).astype(np.float32)
        std = x.std(0, dtype=np.float64).astype(np.float32) + 1e-6
    else:
        mean, std = np.zeros(d, np.float32), np.ones(d, np.float32)
    x = (x - mean) / std

    # A minibatch larger than the data is the whole data: same gradient, less padding.
    batch = min(int(lin.batch_size), n)
    steps_per_epoch = -(-n // batch)
    key = tuple(sorted(_flatten_dict(lin.to_dict()).items()))
    tx, run_epoch = _compiled_epoch(key, steps_per_epoch, batch, n)
    params = _init_classifier(lin, d, num_classes, jax.random.PRNGKey(lin.seed))
    opt_state = tx.init(params)
    # Features are arguments of the jitted epoch, not constants closed over: a 100 MB constant
    # would be copied into the compiled program.
    xs, ys = jnp.asarray(x), jnp.asarray(y)
    perm_rng = np.random.default_rng(lin.seed)
    carry = (params, opt_state)
    epoch_loss = []
    for _ in range(lin.epochs):
        perm = jnp.asarray(perm_rng.permutation(n), jnp.int32)
        carry, loss = run_epoch(carry, perm, xs, ys)
        epoch_loss.append(loss)
    params = carry[0]
    return {
        "w": np.asarray(params["w"]),
        "b": np.asarray(params["b"]),
        "mean": mean,
        "std": std,
        "epoch_loss": np.asarray(jnp.stack(epoch_loss)),
    }


def classifier_accuracy(
    clf: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray
) -> dict[str, float]:
    """Top-1 and top-5 accuracy of a classifier from :func:`train_linear_classifier`.

    Top-5 counts a hit when the label is among the 5 largest logits (all classes when there are
    fewer than 5). Ties between logits go to the lower class index.
    """
    logits = ((np.asarray(x, np.float32) - clf["mean"]) / clf["std"]) @ clf["w"] + clf["b"]
    order = np.argsort(-logits, axis=1, kind="stable")
    y = np.asarray(y)
    top1 = float(np.mean(order[:, 0] == y))
    top5 = float(np.mean(np.any(order[:, : min(5, logits.shape[1])] == y[:, None], axis=1)))
    return {"top1": top1, "top5": top5}


# ----------------------------------------------------------------------------------------------
# Protocols.
# ----------------------------------------------------------------------------------------------
def linear_protocol(
    train_feats: tuple[np.ndarray, np.ndarray],
    test_feats: tuple[np.ndarray, np.ndarray],
    *,
    num_classes: int,
    config: ml_collections.ConfigDict | None = None,
) -> dict[str, float]:
    """Linear classification of cached features: trains on ``train_feats``, tests on ``test_feats``.

    Args:
      train_feats: ``(x, y)`` of the train split.
      test_feats: ``(x, y)`` of the evaluation split.
      num_classes: number of classes.
      config: the ``linear`` settings (default ``linear_eval_config('cifar')``).

    Returns:
      ``{'linear_top1', 'linear_top5', 'linear_train_top1', 'linear_final_loss',
      'linear_seconds'}``.
    """
    start = time.perf_counter()
    clf = train_linear_classifier(*train_feats, num_classes=num_classes, config=config)
    seconds = time.perf_counter() - start
    acc = classifier_accuracy(clf, *test_feats)
    train_acc = classifier_accuracy(clf, *train_feats)
    return {
        "linear_top1": acc["top1"],
        "linear_top5": acc["top5"],
        "linear_train_top1": train_acc["top1"],
        "linear_final_loss": float(clf["epoch_loss"][-1]),
        "linear_seconds": seconds,
    }


def knn_protocol(
    train_feats: tuple[np.ndarray, np.ndarray],
    test_feats: tuple[np.ndarray, np.ndarray],
    *,
    num_classes: int,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
) -> dict[str, float]:
    """Cosine-weighted kNN top-1 (Wu et al. 2018) for each ``k`` in ``ks``.

    Returns:
      ``{'knn_top1_k<k>': accuracy, ..., 'knn_seconds'}``.
    """
    start = time.perf_counter()
    accs = knn.knn_accuracies(
        train_feats[0],
        train_feats[1],
        test_feats[0],
        test_feats[1],
        ks=tuple(int(k) for k in ks),
        temperature=temperature,
        num_classes=num_classes,
    )
    out = {f"knn_top1_k{k}": v for k, v in accs.items()}
    out["knn_seconds"] = time.perf_counter() - start
    return out


def representation_diagnostics(
    run: Run, test_x: np.ndarray, ecfg: ml_collections.ConfigDict
) -> dict[str, float]:
    """RankMe, normalised std, alignment and uniformity on the evaluation split.

    RankMe and the std use every evaluation feature. Uniformity uses a random subset of
    ``diagnostics.max_examples`` of them, alignment two augmented views (the run's own
    augmentations, evaluation-mode BatchNorm) of as many randomly ordered examples: the
    loader's order is often sorted by class, and a class-pure subset would bias both.

    Args:
      run: the restored run.
      test_x: the centre-crop features of the evaluation split ``[n, D]``.
      ecfg: the evaluation config.

    Returns:
      ``{'rankme', 'normalized_std', 'normalized_std_x_sqrt_d', 'uniformity', 'alignment',
      'diagnostics_seconds'}``.
    """
    config = run.config
    n_max = int(ecfg.diagnostics.max_examples)
    start = time.perf_counter()
    subset = np.random.default_rng(ecfg.diagnostics.seed).permutation(test_x.shape[0])[:n_max]
    scalars = jax.jit(lambda f, s: (rankme(f), normalized_std(f), uniformity(s)))(
        test_x, test_x[np.sort(subset)]
    )
    rank, std, unif = (float(v) for v in scalars)
    out = {
        "rankme": rank,
        "normalized_std": std,
        "normalized_std_x_sqrt_d": std * math.sqrt(test_x.shape[1]),
        "uniformity": unif,
    }
    backbone, augment_fn = run.backbone, run.components.augment_fn

    @jax.jit
    def two_views(variables, rng, images):
        views = augment_fn(rng, images)
        return tuple(backbone.apply(variables, v, train=False) for v in views[:2])

    batch = int(ecfg.feature_batch or config.global_batch)
    loader = _loader(config, config.data.eval_split, batch, crop_mode="random", shuffle=True)
    rng = jax.random.PRNGKey(ecfg.diagnostics.seed)
    za, zb, seen = [], [], 0
    for i, batch in enumerate(loader):
        images = np.asarray(batch["image"])
        keep = np.asarray(batch.get("mask", np.ones(images.shape[0], bool)), bool)
        a, b = two_views(run.variables, jax.random.fold_in(rng, i), images)
        za.append(np.asarray(a)[keep])
        zb.append(np.asarray(b)[keep])
        seen += int(keep.sum())
        if seen >= n_max:
            break
    if hasattr(loader, "close"):
        loader.close()
    out["alignment"] = float(
        alignment(jnp.asarray(np.concatenate(za)[:n_max]), jnp.asarray(np.concatenate(zb)[:n_max]))
    )
    out["diagnostics_seconds"] = time.perf_counter() - start
    return out


# ----------------------------------------------------------------------------------------------
# The job.
# ----------------------------------------------------------------------------------------------
def evaluate_run(
    workdir: str,
    protocol: str,
    *,
    eval_preset: str | None = None,
    eval_overrides: Sequence[str] = (),
    config: ml_collections.ConfigDict | None = None,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Runs ``protocol`` on the newest checkpoint of ``workdir`` and writes the results.

    Args:
      workdir: the training run's folder.
      protocol: ``"linear"`` or ``"knn"``.
      eval_preset: one of :data:`EVAL_PRESETS`; default :func:`default_preset` of the run.
      eval_overrides: ``key.path=value`` changes to the evaluation config.
      config: a training config to evaluate with instead of the run's ``config.json``.
      data_dir: where the prepared dataset lives, if not where the run had it.

    Returns:
      The results, also written to ``workdir/eval_<protocol>.json`` and as TensorBoard scalars
      ``eval_<protocol>/<name>`` in ``workdir/eval``.

    Raises:
      ValueError: for an unknown protocol, preset or override, or a checkpoint that does not
        match the config.
      FileNotFoundError: for a workdir without a run or checkpoint.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol={protocol!r} does not exist; valid: {list(PROTOCOLS)}.")
    if eval_preset is not None and eval_preset not in EVAL_PRESETS:
        raise ValueError(
            f"--eval_preset={eval_preset!r} does not exist; valid: {list(EVAL_PRESETS)}."
        )
    if data_dir:
        if config is None:
            path = os.path.join(os.path.abspath(paths.expand(workdir)), "config.json")
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    config = ml_collections.ConfigDict(json.load(f))
        if config is not None:
            config.data.data_dir = paths.expand(data_dir)
    run = load_run(workdir, config)
    ecfg = resolve_eval_config(run.config, eval_preset, eval_overrides)
    mesh = sharding.make_mesh()
    info = data.get_dataset_info(run.config.data)

    start = time.perf_counter()
    train_feats = compute_split_features(run, run.config.data.train_split, ecfg, mesh)
    train_seconds = time.perf_counter() - start
    test_feats = compute_split_features(run, run.config.data.eval_split, ecfg, mesh)
    feature_seconds = time.perf_counter() - start
    results: dict[str, Any] = {
        "num_train": int(train_feats[0].shape[0]),
        "num_test": int(test_feats[0].shape[0]),
        "feature_dim": int(train_feats[0].shape[1]),
        "feature_seconds": feature_seconds,
        "feature_seconds_train": train_seconds,
    }
    if protocol == "linear":
        results.update(
            linear_protocol(
                train_feats, test_feats, num_classes=info.num_classes, config=ecfg.linear
            )
        )
    else:
        results.update(
            knn_protocol(
                train_feats,
                test_feats,
                num_classes=info.num_classes,
                ks=tuple(ecfg.knn.ks),
                temperature=ecfg.knn.temperature,
            )
        )
        results["training_log_knn"] = training_knn_note(run.config.knn, ecfg.knn)
    if ecfg.diagnostics.enabled:
        results.update(representation_diagnostics(run, test_feats[0], ecfg))

    if jax.process_index() == 0:
        record = {
            "protocol": protocol,
            "step": run.step,
            "checkpoint": run.checkpoint,
            "eval_preset": ecfg.preset,
            **results,
            "eval_config": json.loads(ecfg.to_json_best_effort()),
        }
        if protocol == "linear":
            record["note"] = DEVIATION_NOTE
        strict_json.write(os.path.join(run.workdir, f"eval_{protocol}.json"), record)
        writer = metric_writers.MetricWriter(os.path.join(run.workdir, "eval"))
        scalars = {k: v for k, v in results.items() if isinstance(v, (int, float))}
        writer.write_scalars(run.step, {f"eval_{protocol}/{k}": v for k, v in scalars.items()})
        writer.close()
    return results


def training_knn_note(train_knn: Any, eval_knn: Any) -> str:
    """Says which of the evaluation's k values the training log's "kNN top-1" is.

    Args:
      train_knn: the run's ``config.knn`` (``k``, ``temperature``).
      eval_knn: the evaluation config's ``knn`` (``ks``, ``temperature``).

    Returns:
      One sentence naming the matching result key, or saying that none matches.
    """
    k, t = int(train_knn.k), float(train_knn.temperature)
    ks = [int(x) for x in eval_knn.ks]
    if k in ks and math.isclose(t, float(eval_knn.temperature)):
        return (
            f"knn_top1_k{k} is the training log's kNN top-1 (config.knn.k={k}, temperature {t:g})."
        )
    return (
        f"The training log's kNN top-1 uses k={k}, temperature {t:g}; none of these results "
        f"does (ks={ks}, temperature {float(eval_knn.temperature):g}): add "
        "--eval_override=knn.ks=" + ",".join(str(x) for x in sorted({*ks, k})) + "."
    )


def _main(argv: Any) -> None:  # pragma: no cover - thin CLI
    from absl import flags

    from ssljax import cli, config_schema, log_filters

    del argv
    f = flags.FLAGS
    log_filters.quiet_libraries()
    with cli.user_errors_exit_2(verbose=f.verbosity >= 1):
        if not f.workdir:
            cli.fail("--workdir is required: a training run's folder (--help for examples).")
        config = config_schema.load_config(paths.expand(f.config)) if f.config else None
        results = evaluate_run(
            f.workdir,
            f.protocol,
            eval_preset=f.eval_preset,
            eval_overrides=f.eval_override or (),
            config=config,
            data_dir=f.data_dir,
        )
    print(strict_json.dumps(results, indent=2))


if __name__ == "__main__":  # pragma: no cover
    import sys

    from absl import app, flags

    from ssljax import cli, host_devices

    host_devices.configure_cpu_devices()
    flags.DEFINE_string("workdir", None, "A training run's workdir.")
    flags.DEFINE_string("protocol", "linear", f"One of {list(PROTOCOLS)}.")
    flags.DEFINE_string(
        "eval_preset", None, f"One of {list(EVAL_PRESETS)}; default: chosen from the run."
    )
    flags.DEFINE_multi_string(
        "eval_override", [], "key.path=value changes to the eval config, e.g. linear.epochs=50."
    )
    flags.DEFINE_string(
        "config", None, "A config file[:preset] to evaluate with (default: the run's)."
    )
    flags.DEFINE_string("data_dir", None, "Where the prepared dataset lives, if it moved.")
    cli.absl_help(EVALUATE_USAGE, sys.argv)
    app.run(_main, flags_parser=cli.parse_flags_or_fail)
