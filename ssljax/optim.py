"""Optimizers, learning-rate and target-EMA schedules, and parameter masks.

Everything here is an optax object so the training loop treats all methods alike:

* :func:`warmup_cosine_lr`: linear warmup then cosine decay of ``base_lr * batch / 256``
  (Goyal et al. 2017 scaling; the schedule of BYOL and SimCLR).
* :func:`byol_tau_schedule` and :func:`update_target`: BYOL's target network EMA
  (Grill et al. 2020, sec. 3.2).
* :func:`byol_lars`, :func:`solo_learn_lars`, :func:`sgd`, :func:`adamw`: the optimizers, with
  weight-decay masks built by :func:`path_mask` from regexes over parameter paths
  ('backbone/conv_init/kernel').
* :func:`build_optimizer`: all of the above from an ``ml_collections`` config, with
  per-group learning rates through ``optax.multi_transform`` (SimSiam's fixed predictor rate,
  Barlow Twins' lower rate for biases and BatchNorm parameters).
"""

from __future__ import annotations

import functools
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "check_tau_base",
    "resolve_optimizer_config",
    "DEFAULT_EXCLUDE_FROM_WEIGHT_DECAY",
    "OPTIMIZERS",
    "adamw",
    "add_scheduled_decayed_weights",
    "build_optimizer",
    "byol_lars",
    "byol_tau_schedule",
    "clip_by_per_param_norm",
    "cosine_schedule",
    "freeze_for_steps",
    "matching_paths",
    "param_paths",
    "path_mask",
    "sgd",
    "solo_learn_lars",
    "update_target",
    "warmup_cosine_lr",
]

# Flax names the additive parameters of Dense/Conv and of BatchNorm/LayerNorm/GroupNorm `bias`
# and the multiplicative ones of the normalisation layers `scale`; kernels and embeddings have
# other names. BYOL excludes exactly these from weight decay and from the LARS trust ratio.
DEFAULT_EXCLUDE_FROM_WEIGHT_DECAY: tuple[str, ...] = (r"bias$", r"scale$")

# solo-learn's LARS adds this to the trust ratio's denominator (solo/utils/lars.py, `eps=1e-8`;
# no CIFAR yaml overrides it).
SOLO_LEARN_LARS_EPS = 1e-8

# How many parameter paths an error message shows before abbreviating.
_MAX_PATHS_IN_ERROR = 24

Mask = Any  # A bool pytree shaped like the params (or a prefix of it), or a function giving one.


# ----------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------


def warmup_cosine_lr(
    base_lr: float,
    *,
    global_batch: int,
    total_steps: int,
    warmup_steps: int,
    final_lr: float = 0.0,
) -> optax.Schedule:
    r"""Linear warmup then cosine decay of the batch-scaled learning rate.

    With peak = ``base_lr * global_batch / 256`` (the linear scaling rule of Goyal et al. 2017
    used by SimCLR, BYOL, SimSiam and VICReg), W = ``warmup_steps``, K = ``total_steps`` and
    f = ``final_lr``, the rate at step k (0-based, the optimizer's update count) is::

        lr(k) = peak * k / W                                              if k < W
        lr(k) = f + (peak - f) * (1 + cos(pi * min(k - W, K - W) / (K - W))) / 2   if k >= W

    so lr(0) = 0 when W > 0, the peak is reached at k = W, and lr(K) = f (held beyond K).
    With f = 0 this is ``learning_schedule`` of the official BYOL code (utils/schedules.py).

    Args:
        base_lr: Learning rate for a batch of 256; >= 0.
        global_batch: Batch size summed over all devices and hosts; >= 1.
        total_steps: K, the number of optimizer steps of the run; >= 1.
        warmup_steps: W, the length of the linear warmup; 0 <= W < K.
        final_lr: f, the rate reached at step K (absolute, not scaled by the batch); >= 0.

    Returns:
        An ``optax.Schedule`` mapping an integer step to a float32 learning rate.

    Raises:
        ValueError: If an argument is out of the ranges above.
    """
    _check_nonnegative("base_lr", base_lr)
    _check_nonnegative("final_lr", final_lr)
    if int(global_batch) < 1:
        raise ValueError(f"global_batch must be >= 1, got {global_batch}.")
    if int(total_steps) < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
    if not 0 <= int(warmup_steps) < int(total_steps):
        raise ValueError(
            f"warmup_steps must satisfy 0 <= warmup_steps < total_steps={total_steps}, "
            f"got {warmup_steps}; shorten the warmup or lengthen the run."
        )
    peak = float(base_lr) * int(global_batch) / 256.0
    warmup, total, final = int(warmup_steps), int(total_steps), float(final_lr)
    decay_steps = total - warmup

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        k = jnp.asarray(step, jnp.float32)
        # max(W, 1) keeps the unused branch finite when W = 0 (jnp.where evaluates both).
        warm = peak * k / max(warmup, 1)
        progress = jnp.clip(k - warmup, 0.0, decay_steps) / decay_steps
        cosine = final + (peak - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(k < warmup, warm, cosine).astype(jnp.float32)

    return schedule


def check_tau_base(tau_base: Any) -> None:
    """Refuses a target EMA rate outside [0, 1] (the one check of ``config.tau_base``).

    Raises:
        ValueError: naming ``tau_base`` and the value.
    """
    if isinstance(tau_base, bool) or not isinstance(tau_base, numbers.Real):
        raise ValueError(f"tau_base must be a number in [0, 1], got {tau_base!r}.")
    if not 0.0 <= float(tau_base) <= 1.0:
        raise ValueError(f"tau_base must be in [0, 1], got {tau_base}.")


def byol_tau_schedule(tau_base: float, total_steps: int) -> optax.Schedule:
    r"""BYOL's target decay rate, increased from ``tau_base`` to 1 by a cosine.

    Grill et al. 2020, sec. 3.2: with K = ``total_steps`` and k the training step,

        tau_k = 1 - (1 - tau_base) * (cos(pi * k / K) + 1) / 2,

    so tau_0 = tau_base and tau_K = 1 (k is clipped to K beyond the end). This is
    ``target_ema`` of the official BYOL code. SimSiam (target = online under stop-gradient)
    needs tau = 0 at every step, which is a constant, not this schedule with tau_base = 0.

    Args:
        tau_base: The initial rate, in [0, 1] (0.996 for BYOL at batch 4096).
        total_steps: K, the number of training steps; >= 1.

    Returns:
        An ``optax.Schedule`` mapping an integer step to a float32 tau.

    Raises:
        ValueError: If ``tau_base`` is outside [0, 1] or ``total_steps`` < 1.
    """
    check_tau_base(tau_base)
    if int(total_steps) < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
    tau_base, total = float(tau_base), int(total_steps)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        k = jnp.minimum(jnp.asarray(step, jnp.float32), total)
        return (1.0 - (1.0 - tau_base) * (jnp.cos(jnp.pi * k / total) + 1.0) / 2.0).astype(
            jnp.float32
        )

    return schedule


def cosine_schedule(start: float, end: float, total_steps: int) -> optax.Schedule:
    r"""A value moved from ``start`` to ``end`` by a half cosine over ``total_steps``.

    ``v(k) = end + (start - end) * (1 + cos(pi * min(k, K) / K)) / 2``: DINO's weight-decay
    schedule, 0.04 to 0.4 over the run (Caron et al. 2021, sec. 3.1 "Implementation details";
    ``utils.cosine_scheduler`` without warm-up in the official code, evaluated per iteration).

    Args:
        start: the value at step 0; >= 0.
        end: the value at step K and beyond; >= 0.
        total_steps: K; >= 1.

    Returns:
        An ``optax.Schedule`` of the step, float32.

    Raises:
        ValueError: for a negative value or ``total_steps`` < 1.
    """
    _check_nonnegative("start", start)
    _check_nonnegative("end", end)
    if int(total_steps) < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
    start, end, total = float(start), float(end), int(total_steps)

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        k = jnp.minimum(jnp.asarray(step, jnp.float32), total)
        return (end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * k / total))).astype(jnp.float32)

    return schedule


def update_target(online_params: Any, target_params: Any, tau: jax.typing.ArrayLike) -> Any:
    """BYOL's target update xi <- tau * xi + (1 - tau) * theta (Grill et al. 2020, eq. 1).

    Args:
        online_params: theta, the online network's parameters.
        target_params: xi, the target network's parameters (same tree structure).
        tau: The decay rate, a Python float or a scalar array (may be traced under jit).

    Returns:
        The new target parameters, a tree like ``target_params``.
    """
    return optax.incremental_update(online_params, target_params, step_size=1.0 - tau)


# ----------------------------------------------------------------------------------------------
# Parameter paths and masks
# ----------------------------------------------------------------------------------------------


def _key_name(key: Any) -> str:
    # Flax params are nested dicts (DictKey); lists/tuples and dataclasses can appear in
    # user trees, so the other key kinds are named too.
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def _path_str(key_path: Sequence[Any]) -> str:
    return "/".join(_key_name(k) for k in key_path)


def param_paths(params: Any) -> list[str]:
    """Lists the '/'-joined path of every leaf, e.g. ``'projector/bn_0/scale'``.

    Args:
        params: A pytree of parameters (Flax params are nested dicts).

    Returns:
        The paths in ``jax.tree`` leaf order.
    """
    return [_path_str(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _as_patterns(patterns: str | Sequence[str], name: str) -> tuple[str, ...]:
    # A lone string is one pattern: `('bias$')` (a string, not a tuple) is the usual slip in
    # configs, and reading it character by character would match almost everything.
    if isinstance(patterns, str):
        patterns = (patterns,)
    if not isinstance(patterns, Sequence) or not all(isinstance(p, str) for p in patterns):
        raise ValueError(f"{name} must be a sequence of regex strings, got {patterns!r}.")
    for p in patterns:
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"{name} holds an invalid regex {p!r}: {e}.") from e
    return tuple(patterns)


def _abbreviated(paths: Sequence[str]) -> str:
    shown = "\n  ".join(paths[:_MAX_PATHS_IN_ERROR])
    more = len(paths) - _MAX_PATHS_IN_ERROR
    return shown + (f"\n  ... and {more} more" if more > 0 else "")


def matching_paths(params: Any, patterns: str | Sequence[str]) -> list[str]:
    """Lists the parameter paths in which at least one regex is found (``re.search``).

    Args:
        params: A pytree of parameters.
        patterns: Regexes searched in each '/'-joined path (a lone string is one pattern).

    Returns:
        The matching paths in leaf order; no check that every pattern matched.

    Raises:
        ValueError: If ``patterns`` is not a sequence of valid regexes.
    """
    compiled = [re.compile(p) for p in _as_patterns(patterns, "patterns")]
    return [path for path in param_paths(params) if any(c.search(path) for c in compiled)]


def path_mask(params: Any, patterns: str | Sequence[str], *, name: str = "patterns") -> Any:
    """Marks the parameters whose '/'-joined path contains a match of one of the regexes.

    Example: ``path_mask(params, (r'bias$', r'scale$'))`` is True for the biases of Dense and
    Conv layers and for the scales and biases of BatchNorm/LayerNorm layers. An empty sequence
    marks nothing.

    Args:
        params: A pytree of parameters; a parameter's path is its keys joined by '/',
            e.g. ``'backbone/stage1_block0/conv1/kernel'``.
        patterns: Regexes searched (``re.search``) in each path; a lone string is one pattern.
        name: The name of the config field the patterns come from, used in error messages.

    Returns:
        A pytree of Python bools with the structure of ``params``.

    Raises:
        ValueError: If a pattern is not a valid regex or matches no parameter (a mask that
            silently selects nothing is almost always a typo); the message lists the paths.
    """
    compiled = [(p, re.compile(p)) for p in _as_patterns(patterns, name)]
    paths = param_paths(params)
    unmatched = [p for p, c in compiled if not any(c.search(path) for path in paths)]
    if unmatched:
        raise ValueError(
            f"{name}: pattern(s) {unmatched} match no parameter path; fix or remove them. "
            f"Available paths:\n  {_abbreviated(paths)}"
        )
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(c.search(_path_str(path)) for _, c in compiled), params
    )


def _negate(mask: Any) -> Any:
    return jax.tree.map(lambda m: not m, mask)


# ----------------------------------------------------------------------------------------------
# Optimizers
# ----------------------------------------------------------------------------------------------


def _maybe_masked(
    inner: optax.GradientTransformation, mask: Mask | None
) -> optax.GradientTransformation:
    return inner if mask is None else optax.masked(inner, mask)


def byol_lars(
    learning_rate: optax.ScalarOrSchedule,
    *,
    weight_decay: float,
    momentum: float = 0.9,
    eta: float = 1e-3,
    weight_decay_mask: Mask | None,
    trust_ratio_mask: Mask | None,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    r"""LARS as the official BYOL code applies it (You et al. 2017; Grill et al. 2020, sec. 3.2).

    For each parameter tensor p with gradient g, at step k with learning rate lr_k::

        g <- g + weight_decay * p                      (where weight_decay_mask is True)
        g <- eta * ||p|| / ||g|| * g                    (where trust_ratio_mask is True;
                                                          ratio 1 if ||p|| = 0 or ||g|| = 0)
        v <- momentum * v + g                           (every parameter)
        update = -lr_k * v                              (-lr_k * (g + momentum * v) if nesterov)

    The momentum accumulates the *unscaled* step and the learning rate multiplies the whole
    buffer, as in deepmind-research/byol/utils/optimizers.py. ``optax.lars`` instead scales by
    the learning rate before its momentum trace (v <- momentum * v - lr_k * g; update = v), so
    the two agree while the rate is constant and part while it changes (warmup, cosine):
    there BYOL's past gradients are re-weighted by the current rate, optax's keep the rate they
    were taken with.

    Args:
        learning_rate: A float or an ``optax.Schedule`` of the update count.
        weight_decay: The L2 coefficient added to the gradient; >= 0.
        momentum: The heavy-ball coefficient, in [0, 1).
        eta: The trust coefficient of the LARS ratio; > 0.
        weight_decay_mask: Bool pytree (or function of params returning one), True where weight
            decay applies; None applies it everywhere.
        trust_ratio_mask: Likewise for the trust ratio; None applies it everywhere.
        nesterov: Use Nesterov momentum (not used by BYOL).

    Returns:
        An ``optax.GradientTransformation``; its ``update`` needs ``params``.
    """
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
        # optax's trust ratio with min_norm = eps = 0 is BYOL's: eta * ||p|| / ||g||, and 1
        # when either norm is zero (a zero-initialised tensor still moves).
        _maybe_masked(optax.scale_by_trust_ratio(trust_coefficient=eta), trust_ratio_mask),
        optax.trace(decay=momentum, nesterov=nesterov),
        optax.scale_by_learning_rate(learning_rate),
    )


class SoloLearnLarsState(NamedTuple):
    """The update count, for the learning rate that ``clip_lr`` divides by."""

    count: jax.Array


def scale_by_solo_learn_lars(
    learning_rate: optax.ScalarOrSchedule,
    *,
    weight_decay: float,
    eta: float,
    clip_lr: bool,
    eps: float = SOLO_LEARN_LARS_EPS,
) -> optax.GradientTransformation:
    r"""The weight decay and trust ratio of solo-learn's LARS, for every leaf it is given.

    For a tensor p with gradient g at step k (rate lr_k), as solo-learn's ``LARS.step``
    (solo/utils/lars.py, from PyTorch Lightning Bolts)::

        r = eta * ||p|| / (||g|| + weight_decay * ||p|| + eps)
        r <- min(r / lr_k, 1)                      (if clip_lr; 1 when lr_k = 0, as torch's
                                                     inf/min gives)
        g <- r * (g + weight_decay * p)            (if ||p|| > 0 and ||g|| > 0; else g unchanged,
                                                     with no weight decay)

    With ``clip_lr`` the step of a tensor, lr_k * r, is min(eta * ||p|| / (||g|| + wd ||p||),
    lr_k) times the direction: LARC's clipping (the trust ratio caps the global rate).

    Args:
        learning_rate: The rate of the group (float or schedule of the update count); read
            only when ``clip_lr``.
        weight_decay: The L2 coefficient; >= 0.
        eta: The trust coefficient; > 0.
        clip_lr: Divide the ratio by the current rate and cap it at 1.
        eps: Added to the denominator.

    Returns:
        An ``optax.GradientTransformation``; its ``update`` needs ``params``.
    """

    def init_fn(params: Any) -> SoloLearnLarsState:
        del params
        return SoloLearnLarsState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates: Any, state: SoloLearnLarsState, params: Any = None):
        if params is None:
            raise ValueError("solo-learn's LARS needs the params: call update(g, state, params).")
        lr = jnp.asarray(
            learning_rate(state.count) if callable(learning_rate) else learning_rate,
            jnp.float32,
        )

        def leaf(g: jax.Array, p: jax.Array) -> jax.Array:
            p_norm = jnp.linalg.norm(p.astype(jnp.float32))
            g_norm = jnp.linalg.norm(g.astype(jnp.float32))
            ratio = eta * p_norm / (g_norm + weight_decay * p_norm + eps)
            if clip_lr:
                ratio = jnp.where(lr > 0, jnp.minimum(ratio / jnp.where(lr > 0, lr, 1.0), 1.0), 1.0)
            adapted = (ratio * (g + weight_decay * p)).astype(g.dtype)
            return jnp.where((p_norm > 0) & (g_norm > 0), adapted, g)

        new_updates = jax.tree.map(leaf, updates, params)
        return new_updates, SoloLearnLarsState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def solo_learn_lars(
    learning_rate: optax.ScalarOrSchedule,
    *,
    weight_decay: float,
    momentum: float = 0.9,
    eta: float = 0.02,
    clip_lr: bool = False,
    adapt_mask: Mask | None,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    r"""LARS as solo-learn applies it to its CIFAR recipes (``optimizer: lars`` in its yamls).

    Where ``adapt_mask`` is True, :func:`scale_by_solo_learn_lars` (weight decay and trust
    ratio, optionally clipped); elsewhere the gradient is left alone, with no weight decay
    either: solo-learn's ``exclude_bias_n_norm`` skips both for 1-D tensors (biases and
    BatchNorm parameters). Then, for every parameter::

        v <- momentum * v + g;  update = -lr_k * v       (-lr_k * (g + momentum * v) if nesterov)

    It differs from :func:`byol_lars` in the denominator of the ratio (||g|| + wd ||p|| + eps
    instead of ||g + wd p||), in ``clip_lr``, and in tying weight decay to the adaptation.

    Args:
        learning_rate: A float or an ``optax.Schedule`` of the update count.
        weight_decay: The L2 coefficient; >= 0.
        momentum: The heavy-ball coefficient, in [0, 1).
        eta: The trust coefficient (0.02 in solo-learn's CIFAR yamls); > 0.
        clip_lr: solo-learn's ``clip_lr``: cap the ratio at 1 after dividing it by the rate.
        adapt_mask: Bool pytree (or function of params), True where weight decay and the trust
            ratio apply; None applies them everywhere.
        nesterov: Use Nesterov momentum (not used by solo-learn's recipes).

    Returns:
        An ``optax.GradientTransformation``; its ``update`` needs ``params``.
    """
    return optax.chain(
        _maybe_masked(
            scale_by_solo_learn_lars(
                learning_rate, weight_decay=weight_decay, eta=eta, clip_lr=clip_lr
            ),
            adapt_mask,
        ),
        optax.trace(decay=momentum, nesterov=nesterov),
        optax.scale_by_learning_rate(learning_rate),
    )


def sgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    weight_decay: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay_mask: Mask | None,
) -> optax.GradientTransformation:
    """SGD with L2 weight decay and (Nesterov) momentum, in PyTorch's ordering.

    ``g <- g + weight_decay * p`` (masked); ``v <- momentum * v + g``; update ``-lr_k * v``
    (``-lr_k * (g + momentum * v)`` with Nesterov). This is ``torch.optim.SGD``, which the
    official SimSiam code uses; ``optax.sgd`` scales by the rate before its momentum trace,
    which differs while the rate changes (see :func:`byol_lars`).

    Args:
        learning_rate: A float or an ``optax.Schedule`` of the update count.
        weight_decay: The L2 coefficient added to the gradient; >= 0.
        momentum: The heavy-ball coefficient, in [0, 1); 0 disables momentum.
        nesterov: Use Nesterov momentum.
        weight_decay_mask: Bool pytree (or function), True where weight decay applies; None
            applies it everywhere.

    Returns:
        An ``optax.GradientTransformation``; its ``update`` needs ``params``.
    """
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
        optax.trace(decay=momentum, nesterov=nesterov) if momentum else optax.identity(),
        optax.scale_by_learning_rate(learning_rate),
    )


class CountState(NamedTuple):
    """The number of updates applied so far (the step a schedule reads)."""

    count: jax.Array


def add_scheduled_decayed_weights(
    schedule: optax.Schedule, mask: Mask | None = None
) -> optax.GradientTransformation:
    """``optax.add_decayed_weights`` with a coefficient that follows a schedule of the step.

    Adds ``schedule(k) * p`` to the update of every masked parameter at update k (0-based), as
    PyTorch's AdamW does when the training loop rewrites a group's ``weight_decay`` every
    iteration (DINO's ``main_dino.py``).

    Args:
        schedule: the coefficient as a function of the update count.
        mask: bool pytree (or function), True where weight decay applies; None = everywhere.

    Returns:
        An ``optax.GradientTransformation``; its ``update`` needs ``params``.
    """

    def init_fn(params: Any) -> CountState:
        del params
        return CountState(count=jnp.zeros((), jnp.int32))

    def update_fn(updates: Any, state: CountState, params: Any = None):
        if params is None:
            raise ValueError("add_scheduled_decayed_weights needs the params.")
        wd = schedule(state.count)
        updates = jax.tree.map(lambda g, p: g + wd * p, updates, params)
        return updates, CountState(count=optax.safe_increment(state.count))

    tx = optax.GradientTransformation(init_fn, update_fn)
    return optax.masked(tx, mask) if mask is not None else tx


def clip_by_per_param_norm(max_norm: float) -> optax.GradientTransformation:
    """Scales each parameter's gradient to norm at most ``max_norm``, tensor by tensor.

    DINO's ``utils.clip_gradients``: ``g <- g * min(1, max_norm / (||g|| + 1e-6))`` for every
    parameter separately (not the global norm of ``optax.clip_by_global_norm``).

    Args:
        max_norm: the bound, > 0.

    Returns:
        A stateless ``optax.GradientTransformation``.

    Raises:
        ValueError: if ``max_norm`` is not positive.
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm!r}.")

    def update_fn(updates: Any, state: Any, params: Any = None):
        del params

        def clip(g: jax.Array) -> jax.Array:
            coef = max_norm / (jnp.linalg.norm(g.astype(jnp.float32)) + 1e-6)
            return jnp.where(coef < 1.0, g * coef, g).astype(g.dtype)

        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


class FreezeState(NamedTuple):
    """The wrapped optimizer's state and the number of updates so far."""

    inner: Any
    count: jax.Array


def _hold_adam_counts(new: Any, old: Any, hold: jax.Array) -> Any:
    """``new`` with every ``optax.ScaleByAdamState``'s count taken from ``old`` where ``hold``.

    Only Adam's count is held: the other counts of an optimizer state are schedules of the
    run's global step (learning rate, weight decay), which a frozen parameter's group keeps
    following, as PyTorch's schedulers set every group's rate at every iteration.
    """
    if isinstance(new, optax.ScaleByAdamState):
        return new._replace(count=jnp.where(hold, old.count, new.count))
    if isinstance(new, tuple) and hasattr(new, "_fields"):  # a NamedTuple state
        return type(new)(*(_hold_adam_counts(n, o, hold) for n, o in zip(new, old, strict=True)))
    if isinstance(new, (tuple, list)):
        return type(new)(_hold_adam_counts(n, o, hold) for n, o in zip(new, old, strict=True))
    if isinstance(new, dict):
        return {k: _hold_adam_counts(v, old[k], hold) for k, v in new.items()}
    return new


def _held_for_steps(inner: optax.GradientTransformation, num_steps: int):
    """``inner`` that makes no update and keeps its Adam counts for ``num_steps`` updates."""

    def init_fn(params: Any) -> FreezeState:
        return FreezeState(inner=inner.init(params), count=jnp.zeros((), jnp.int32))

    def update_fn(updates: Any, state: FreezeState, params: Any = None):
        frozen = state.count < num_steps
        hold = functools.partial(jax.tree.map, lambda u: jnp.where(frozen, jnp.zeros_like(u), u))
        new_updates, inner_state = inner.update(hold(updates), state.inner, params)
        inner_state = _hold_adam_counts(inner_state, state.inner, frozen)
        return hold(new_updates), FreezeState(inner_state, optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def freeze_for_steps(
    inner: optax.GradientTransformation, mask: Any, num_steps: int
) -> optax.GradientTransformation:
    """``inner`` with the masked parameters held fixed for the first ``num_steps`` updates.

    DINO freezes its head's last layer during the first epoch ("cancel_gradients_last_layer"
    in ``main_dino.py``): the gradients are set to ``None``, so PyTorch's optimizer skips those
    tensors altogether -- no move, no weight decay, and for AdamW no step of their own count,
    so Adam's bias correction of the released layer starts at step 1. Here the masked
    parameters get their own copy of ``inner`` (``optax.multi_transform``) whose gradients are
    zeroed before it (Adam's moments stay 0), whose updates are zeroed after it (no weight
    decay), and whose Adam count does not advance while frozen. Its learning-rate and
    weight-decay schedules follow the run's step, as PyTorch's per-iteration schedules do.

    Args:
        inner: the optimizer.
        mask: bool pytree like the params, True where frozen.
        num_steps: updates 0 .. num_steps - 1 are frozen; 0 freezes nothing.

    Returns:
        The wrapped ``optax.GradientTransformation``.
    """
    # The step count is int32: a longer freeze (a frozen-kernel baseline's 1e9 epochs) is the
    # whole run.
    num_steps = min(int(num_steps), int(jnp.iinfo(jnp.int32).max))
    if num_steps <= 0:
        return inner
    labels = jax.tree.map(lambda m: "frozen" if m else "free", mask)
    present = set(jax.tree.leaves(labels))
    transforms = {"frozen": _held_for_steps(inner, num_steps), "free": inner}
    return optax.multi_transform({k: v for k, v in transforms.items() if k in present}, labels)


def adamw(
    learning_rate: optax.ScalarOrSchedule,
    *,
    weight_decay: float,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay_mask: Mask | None,
) -> optax.GradientTransformation:
    """AdamW (Loshchilov & Hutter 2019) with a weight-decay mask: ``optax.adamw``.

    The update is ``-lr_k * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p)``: as in PyTorch,
    the decoupled decay is multiplied by the scheduled learning rate. With a schedule as
    ``weight_decay`` (DINO's cosine from 0.04 to 0.4) the coefficient at update k is
    ``weight_decay(k)``.

    Args:
        learning_rate: A float or an ``optax.Schedule`` of the update count.
        weight_decay: The decoupled decay coefficient (>= 0) or a schedule of it.
        b1: Decay of the first-moment estimate.
        b2: Decay of the second-moment estimate.
        eps: Added to the denominator.
        weight_decay_mask: Bool pytree (or function), True where weight decay applies; None
            applies it everywhere.

    Returns:
        An ``optax.GradientTransformation``; its ``update`` needs ``params``.
    """
    if callable(weight_decay):
        # optax.adamw's chain with the scheduled decay in place of the constant one.
        return optax.chain(
            optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
            add_scheduled_decayed_weights(weight_decay, weight_decay_mask),
            optax.scale_by_learning_rate(learning_rate),
        )
    return optax.adamw(
        learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=weight_decay_mask
    )


# name -> the config fields it reads besides the common ones.
OPTIMIZERS: dict[str, tuple[str, ...]] = {
    "lars": ("momentum", "nesterov", "eta", "lars_form", "clip_lr"),
    "sgd": ("momentum", "nesterov"),
    "adamw": ("b1", "b2", "eps"),
}

_DEFAULTS: dict[str, Any] = {
    "weight_decay": 0.0,
    "momentum": 0.9,
    "nesterov": False,
    "eta": 1e-3,
    "lars_form": "byol",
    "clip_lr": False,
    "b1": 0.9,
    "b2": 0.999,
    "eps": 1e-8,
    "final_lr": 0.0,
    "exclude_from_weight_decay": DEFAULT_EXCLUDE_FROM_WEIGHT_DECAY,
    "fixed_lr": (),
    "lr_multipliers": (),
    # DINO (main_dino.py): weight decay by cosine to this value (None: constant; AdamW only),
    # per-tensor gradient clipping (0: none) and ((regex, epochs), ...) held frozen.
    "final_weight_decay": None,
    "clip_grad_per_param": 0.0,
    "freeze": (),
}

# The LARS variants `lars_form` selects.
LARS_FORMS = ("byol", "solo_learn")
_REQUIRED = ("name", "base_lr")


def _check_nonnegative(name: str, value: Any) -> None:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}.")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}.")


def _check_unit_interval(name: str, value: Any) -> None:
    _check_nonnegative(name, value)
    if not value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}.")


def _config_to_dict(opt_config: Any) -> dict[str, Any]:
    if hasattr(opt_config, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
        return dict(opt_config.to_dict())
    if isinstance(opt_config, Mapping):
        return dict(opt_config)
    raise ValueError(f"opt_config must be a ConfigDict or a dict, got {type(opt_config).__name__}.")


def resolve_optimizer_config(opt_config: Any) -> dict[str, Any]:
    """An optimizer config with its defaults filled in, every field checked.

    The one validation of the optimizer's settings: :func:`build_optimizer` calls it, and so
    does ``ssljax.config_schema.validate`` at start-up, before any data is read or anything
    compiled. The fields are those :func:`build_optimizer` describes.

    Args:
        opt_config: A ``ConfigDict`` or mapping of optimizer fields.

    Returns:
        A plain dict of every field, defaults included.

    Raises:
        ValueError: For an unknown optimizer name or field, a missing or out-of-range value or
            an inconsistent combination, naming the field.
    """
    cfg = _config_to_dict(opt_config)
    missing = [k for k in _REQUIRED if cfg.get(k) is None]
    if missing:
        raise ValueError(f"optimizer config is missing required field(s) {missing}.")
    unknown = sorted(set(cfg) - set(_REQUIRED) - set(_DEFAULTS))
    if unknown:
        raise ValueError(
            f"optimizer config has unknown field(s) {unknown}; valid fields are "
            f"{sorted(set(_REQUIRED) | set(_DEFAULTS))}."
        )
    cfg = {**_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    name = cfg["name"]
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer name {name!r}; valid names are {sorted(OPTIMIZERS)}.")

    _check_nonnegative("base_lr", cfg["base_lr"])
    _check_nonnegative("weight_decay", cfg["weight_decay"])
    _check_nonnegative("final_lr", cfg["final_lr"])
    if name in ("lars", "sgd"):
        _check_unit_interval("momentum", cfg["momentum"])
    if name == "lars" and not (isinstance(cfg["eta"], numbers.Real) and cfg["eta"] > 0):
        raise ValueError(f"eta must be a number > 0, got {cfg['eta']!r}.")
    if cfg["lars_form"] not in LARS_FORMS:
        raise ValueError(f"lars_form must be one of {LARS_FORMS}, got {cfg['lars_form']!r}.")
    if cfg["clip_lr"] and not (name == "lars" and cfg["lars_form"] == "solo_learn"):
        raise ValueError(
            "clip_lr is solo-learn's LARS option: set name='lars' and lars_form='solo_learn', "
            f"or clip_lr=False (got name={name!r}, lars_form={cfg['lars_form']!r})."
        )
    _as_multipliers(cfg["lr_multipliers"])  # checks the pairs
    if cfg["final_weight_decay"] is not None:
        if name != "adamw":
            raise ValueError(
                f"final_weight_decay (a weight-decay schedule) needs name='adamw', got {name!r}."
            )
        _check_nonnegative("final_weight_decay", cfg["final_weight_decay"])
    _check_nonnegative("clip_grad_per_param", cfg["clip_grad_per_param"])
    if name == "adamw":
        _check_unit_interval("b1", cfg["b1"])
        _check_unit_interval("b2", cfg["b2"])
        _check_nonnegative("eps", cfg["eps"])
    return cfg


def build_optimizer(
    opt_config: Any,
    params: Any,
    *,
    global_batch: int,
    total_steps: int,
    warmup_steps: int,
    steps_per_epoch: int = 1,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds the optimizer and its learning-rate schedule from a config.

    Config fields (``ml_collections.ConfigDict`` or dict; unknown fields are an error):

    * ``name``: ``'lars'`` (:func:`byol_lars`), ``'sgd'`` (:func:`sgd`) or ``'adamw'``.
    * ``base_lr``: the rate for a batch of 256; the peak is ``base_lr * global_batch / 256``
      and the schedule is :func:`warmup_cosine_lr` down to ``final_lr`` (default 0).
    * ``weight_decay`` (default 0), ``momentum`` (0.9), ``nesterov`` (False), ``eta`` (1e-3,
      LARS), ``b1``/``b2``/``eps`` (0.9/0.999/1e-8, AdamW).
    * ``exclude_from_weight_decay``: regexes of parameter paths without weight decay, default
      ``(r'bias$', r'scale$')`` (biases of Dense/Conv and scales and biases of
      BatchNorm/LayerNorm). For LARS the same parameters are excluded from the trust ratio,
      as in BYOL. ``()`` decays everything (the official SimSiam code does).
    * ``lars_form`` (LARS only): ``'byol'`` (default, :func:`byol_lars`: the official BYOL,
      VICReg and Barlow Twins optimizers) or ``'solo_learn'`` (:func:`solo_learn_lars`: the
      CIFAR recipes of solo-learn; weight decay and trust ratio skip the same excluded
      parameters).
    * ``clip_lr`` (default False; needs ``lars_form='solo_learn'``): solo-learn's ``clip_lr``,
      the trust ratio divided by the current rate and capped at 1.
    * ``fixed_lr``: regexes of parameter paths whose rate stays at the peak for the whole run
      (SimSiam's predictor: ``('^predictor/',)``), default ``()``.
    * ``lr_multipliers``: ``((regex, m), ...)``: parameters whose path matches ``regex`` (the
      first matching pair wins) get ``m`` times the rate they would otherwise get, at every
      step, final rate included; default ``()``. Barlow Twins' official per-group rates
      (weights 0.2, biases and BatchNorm parameters 0.0048, both times batch / 256 on the same
      schedule) are ``((r'(bias|scale)$', 0.0048 / 0.2),)``.
    * ``final_weight_decay`` (AdamW only; default None, constant decay): the decay moves from
      ``weight_decay`` to this value by :func:`cosine_schedule` over the run (DINO: 0.04 to
      0.4).
    * ``clip_grad_per_param`` (default 0, off): :func:`clip_by_per_param_norm` of the
      gradients before everything else (DINO: 3.0).
    * ``freeze``: ``((regex, epochs), ...)``: parameters whose path matches stay fixed for
      that many epochs (:func:`freeze_for_steps`; DINO's head's last layer, one epoch).

    ``fixed_lr`` and ``lr_multipliers`` are implemented with ``optax.multi_transform`` over
    the groups they define, each with its own copy of the optimizer (under ``clip_lr`` each
    copy divides by its own group's rate, as solo-learn's per-group ``lr`` does). Every
    pattern must match at least one path of ``params``.

    Args:
        opt_config: The optimizer config described above.
        params: The parameters the optimizer will update (for masks; values unused).
        global_batch: Batch size over all devices and hosts.
        total_steps: Number of optimizer steps of the run.
        warmup_steps: Steps of linear warmup, < ``total_steps``.
        steps_per_epoch: Optimizer steps per epoch, for ``freeze``.

    Returns:
        ``(tx, lr_schedule)``: the transformation and the scheduled (non-fixed) learning rate
        as a function of the step, for logging.

    Raises:
        ValueError: For an unknown optimizer name or config field, a missing or out-of-range
            value (the message names the field), or a pattern matching no parameter.
    """
    cfg = resolve_optimizer_config(opt_config)
    name, base_lr, weight_decay = cfg["name"], cfg["base_lr"], cfg["weight_decay"]
    multipliers = _as_multipliers(cfg["lr_multipliers"])
    if cfg["final_weight_decay"] is not None:
        weight_decay = cosine_schedule(weight_decay, cfg["final_weight_decay"], total_steps)

    lr_schedule = warmup_cosine_lr(
        base_lr,
        global_batch=global_batch,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        final_lr=cfg["final_lr"],
    )
    # Masks are computed once from the params tree, so bad patterns fail here, before
    # compilation. optax.multi_transform hands each group a tree with MaskedNode leaves in
    # place of the other group's params; full-structure bool masks still line up with it.
    decay_mask = _negate(
        path_mask(params, cfg["exclude_from_weight_decay"], name="exclude_from_weight_decay")
    )

    def make(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformation:
        if name == "lars" and cfg["lars_form"] == "solo_learn":
            return solo_learn_lars(
                learning_rate,
                weight_decay=weight_decay,
                momentum=cfg["momentum"],
                eta=cfg["eta"],
                clip_lr=bool(cfg["clip_lr"]),
                adapt_mask=decay_mask,
                nesterov=bool(cfg["nesterov"]),
            )
        if name == "lars":
            return byol_lars(
                learning_rate,
                weight_decay=weight_decay,
                momentum=cfg["momentum"],
                eta=cfg["eta"],
                weight_decay_mask=decay_mask,
                trust_ratio_mask=decay_mask,
                nesterov=bool(cfg["nesterov"]),
            )
        if name == "sgd":
            return sgd(
                learning_rate,
                weight_decay=weight_decay,
                momentum=cfg["momentum"],
                nesterov=bool(cfg["nesterov"]),
                weight_decay_mask=decay_mask,
            )
        return adamw(
            learning_rate,
            weight_decay=weight_decay,
            b1=cfg["b1"],
            b2=cfg["b2"],
            eps=cfg["eps"],
            weight_decay_mask=decay_mask,
        )

    def wrap(tx: optax.GradientTransformation) -> optax.GradientTransformation:
        # DINO's order (main_dino.py): clip, then drop the frozen layers' gradients, then step.
        for i, (pattern, epochs) in enumerate(_as_multipliers(cfg["freeze"], "freeze")):
            mask = path_mask(params, pattern, name=f"freeze[{i}]")
            tx = freeze_for_steps(tx, mask, int(round(epochs * steps_per_epoch)))
        if cfg["clip_grad_per_param"]:
            tx = optax.chain(clip_by_per_param_norm(cfg["clip_grad_per_param"]), tx)
        return tx

    fixed_patterns = _as_patterns(cfg["fixed_lr"], "fixed_lr")
    if not fixed_patterns and not multipliers:
        return wrap(make(lr_schedule)), lr_schedule

    # One group per (fixed or scheduled, multiplier) pair that some parameter falls in.
    fixed = (
        path_mask(params, fixed_patterns, name="fixed_lr")
        if fixed_patterns
        else jax.tree.map(lambda _: False, params)
    )
    factor = _multiplier_tree(params, multipliers)
    labels = jax.tree.map(lambda f, m: f"{'fixed' if f else 'scheduled'}*{m!r}", fixed, factor)
    peak = float(base_lr) * int(global_batch) / 256.0

    def group(label: str) -> optax.GradientTransformation:
        kind, _, m = label.partition("*")
        m = float(m)
        if kind == "fixed":
            return make(peak * m)
        if m == 1.0:
            return make(lr_schedule)
        return make(lambda step: m * lr_schedule(step))

    transforms = {label: group(label) for label in sorted(set(jax.tree.leaves(labels)))}
    return wrap(optax.multi_transform(transforms, labels)), lr_schedule


def _as_multipliers(value: Any, field: str = "lr_multipliers") -> tuple[tuple[str, float], ...]:
    noun = "multiplier" if field == "lr_multipliers" else "epochs"
    pairs = tuple(value or ())
    for pair in pairs:
        ok = (
            isinstance(pair, Sequence)
            and not isinstance(pair, str)
            and len(pair) == 2
            and isinstance(pair[0], str)
            and isinstance(pair[1], numbers.Real)
            and not isinstance(pair[1], bool)
        )
        if not ok:
            raise ValueError(
                f"{field} must be a sequence of (regex, {noun}) pairs, e.g. "
                f"((r'(bias|scale)$', 0.024),); got {value!r}."
            )
        _check_nonnegative(f"{field} number of {pair[0]!r}", pair[1])
        _as_patterns(pair[0], field)
    return tuple((str(p), float(m)) for p, m in pairs)


def _multiplier_tree(params: Any, multipliers: Sequence[tuple[str, float]]) -> Any:
    """The rate multiplier of every leaf: the first matching pair's, else 1."""
    masks = [
        path_mask(params, pattern, name=f"lr_multipliers[{i}]")
        for i, (pattern, _) in enumerate(multipliers)
    ]

    def first(*matched: bool) -> float:
        return next((m for hit, (_, m) in zip(matched, multipliers, strict=True) if hit), 1.0)

    return jax.tree.map(first, *masks) if masks else jax.tree.map(lambda _: 1.0, params)
