"""The linear classification protocol: softmax regression on frozen, cached features.

:func:`train_linear_classifier` trains ``softmax(x W + b)`` with the optimizer, schedule,
batch size, epochs and initialisation of an evaluation preset (:mod:`ssljax.eval.config`), as
the papers' linear evaluations do; :func:`linear_protocol` reports top-1 and top-5 on the
evaluation split.

Stated deviation from the papers' ImageNet protocols: BYOL and SimSiam train the linear
classifier on random-resized crops and flips of the training images (centre crop at test time).
Here the classifier trains on the features of the centre crop, computed once, so that it trains
in seconds; expect a difference of the order of a point of top-1 in either direction. The CIFAR
recipes of solo-learn also augment during linear training; the same deviation applies.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ssljax import optim
from ssljax.eval import config as config_lib

DEVIATION_NOTE = (
    "Linear classifier trained on cached centre-crop features without augmentation (the papers "
    "train it on random-resized crops and flips); see ssljax.evaluate."
)


def _lr_schedule(lin: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate per step of the preset's schedule, scaled by batch / 256 if asked."""
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


def _init_classifier(
    lin: ml_collections.ConfigDict, d: int, num_classes: int, rng: jax.Array
) -> dict[str, jax.Array]:
    """``{'w' [d, C], 'b' [C]}`` initialised as the preset's reference code does."""
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


def _linear_config(
    config: ml_collections.ConfigDict | None, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """A validated copy of the ``linear`` settings with keyword ``overrides`` applied."""
    lin = ml_collections.ConfigDict((config or config_lib.linear_eval_config("cifar")).to_dict())
    for k, v in overrides.items():
        if k not in lin:
            raise ValueError(f"Unknown linear-classifier setting {k!r}; valid: {sorted(lin)}.")
        lin[k] = tuple(v) if isinstance(v, list) else v
    # Validated as part of a whole evaluation config, so the messages name the same fields.
    holder = config_lib.eval_config("cifar")
    holder.linear = lin
    config_lib.validate_eval_config(holder)
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
      config: the ``linear`` ConfigDict of :func:`ssljax.eval.config.eval_config` (default
        preset ``cifar``).
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
    key = tuple(sorted(config_lib.flatten_settings(lin.to_dict()).items()))
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

    Args:
      clf: the classifier (``w``, ``b`` and the standardisation ``mean``, ``std``).
      x: ``[n, d]`` features.
      y: ``[n]`` integer labels.

    Returns:
      ``{'top1', 'top5'}`` as fractions in [0, 1].
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
