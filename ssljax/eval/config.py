"""Evaluation settings: the presets of the papers' protocols, overrides and validation.

:func:`eval_config` holds every hyperparameter of the linear classifier, the kNN classifier,
the representation diagnostics and the feature cache in one ConfigDict;
:func:`resolve_eval_config` layers a run's own ``eval`` field and ``--eval_override`` strings on
top of a preset and validates the result before any feature is computed.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ml_collections

from ssljax import tree_paths

EVAL_PRESETS = ("cifar", "imagenet_byol", "imagenet_simsiam")
OPTIMIZERS = ("sgd", "lars")
SCHEDULES = ("cosine", "cosine_per_epoch", "step")
INITS = ("zeros", "normal", "truncated_normal_fan_in", "uniform_fan_in")


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
    (:data:`ssljax.eval.linear.DEVIATION_NOTE`).

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
    """The linear-classifier part of :func:`eval_config` (``eval_config(preset).linear``).

    Args:
      preset: one of :data:`EVAL_PRESETS`.

    Returns:
      The ``linear`` ConfigDict.

    Raises:
      ValueError: for an unknown preset.
    """
    return eval_config(preset).linear


def default_preset(config: ml_collections.ConfigDict) -> str:
    """The evaluation preset that matches a run: its method's paper for ImageNet, else CIFAR.

    Args:
      config: the training run's config.

    Returns:
      An :data:`EVAL_PRESETS` name.
    """
    if str(config.data.name).startswith("imagenet"):
        return "imagenet_simsiam" if config.method == "simsiam" else "imagenet_byol"
    return "cifar"


def _parse_value(text: str) -> Any:
    # Shell users write true/false and unquoted strings: neither is a Python literal.
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

    A value is read as a Python literal (``50``, ``(10, 20)``, ``'sgd'``), ``true``/``false``
    in any case, or else as a bare string; a single number given for a tuple field becomes a
    one-element tuple (``knn.ks=3``).

    Args:
      config: the evaluation config; it is not modified.
      overrides: ``key.path=value`` strings, applied in order.

    Returns:
      The changed copy.

    Raises:
      ValueError: for a malformed override, an unknown field (listing the valid ones) or a
        value of the wrong type.
    """
    config = ml_collections.ConfigDict(config.to_dict())
    flat = list(tree_paths.flatten(config))
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


def validate_eval_config(c: ml_collections.ConfigDict) -> None:
    """Checks every evaluation setting before features are computed.

    Args:
      c: an evaluation config (the layout of :func:`eval_config`).

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
        flat = flatten_settings(run_eval.to_dict() if hasattr(run_eval, "to_dict") else run_eval)
        c = apply_overrides(c, [f"{k}={v!r}" for k, v in flat.items() if k != "preset"])
    c = apply_overrides(c, overrides)
    validate_eval_config(c)
    return c


def flatten_settings(d: Mapping[str, Any]) -> dict[str, Any]:
    """Nested settings as ``{'linear.epochs': 100, ...}``, lists made tuples (so hashable).

    Args:
      d: a nested mapping (``ConfigDict.to_dict()``).

    Returns:
      The flat mapping of dotted keys to leaf values.
    """
    return tree_paths.flatten(d, leaf=lambda v: tuple(v) if isinstance(v, list) else v)
