"""The one training loop of ssljax: every method, every dataset, one device or all of them.

``train_and_evaluate(config, workdir)`` is the whole job; ``ssljax.main`` only parses flags.
The sections below follow the order in which a run builds itself: checks, mesh, input, model,
optimizer, state and shardings, the jitted step, checkpoints, and the loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ssljax import (
    augment,
    checkpointing,
    config_schema,
    data,
    diagnostics,
    input_wait,
    knn,
    matmul_precision,
    methods,
    metric_writers,
    optim,
    paths,
    preemption,
    sharding,
    startup_checks,
    strict_json,
    workdir_lock,
)
from ssljax import models as models_lib
from ssljax.eval.features import compute_features, eval_preprocess_from_config, make_feature_fn
from ssljax.models.dtypes import DTYPES
from ssljax.models.siamese import SiameseNetwork
from ssljax.train_state import TrainState

PyTree = Any
# Metrics the step computes on logging steps only (see make_train_step).
LOG_STEP_ONLY = ("feature_rankme",)
# The views the target branch sees: the first two (DINO's global crops; all the views of the
# two-view methods). Further views are multi-crop's local views.
NUM_GLOBAL_VIEWS = 2


# ----------------------------------------------------------------------------------------------
# The static parts of a run: everything the step closes over.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Components:
    """Modules, optimizers and schedules built from a config (nothing here changes in a run)."""

    method: methods.Method
    online_net: SiameseNetwork
    # The method's target branch as behaviour: its state, outputs and update.
    target_policy: methods.TargetPolicy
    probe: nn.Module
    tx: optax.GradientTransformation
    probe_tx: optax.GradientTransformation
    lr_schedule: optax.Schedule
    augment_fn: Callable[[jax.Array, jax.Array], tuple[jax.Array, ...]]
    eval_preprocess: Callable[[jax.Array], jax.Array]
    dataset_info: Any
    total_steps: int
    steps_per_epoch: int
    warmup_steps: int


def build_heads(config: ml_collections.ConfigDict, method: methods.Method, dtype) -> tuple:
    """Returns the projector and (or ``None``) the predictor the config asks for.

    ``heads.projector_type`` picks the projector: ``'mlp'`` (BYOL, SimSiam, VICReg, Barlow
    Twins) or ``'dino'`` (:class:`ssljax.models.DINOHead`).
    """
    h = config.heads
    if h.get("projector_type", "mlp") == "dino":
        projector = models_lib.DINOHead(
            hidden_dims=tuple(h.projector_hidden),
            bottleneck_dim=h.bottleneck_dim,
            output_dim=h.projector_dim,
            norm_last_layer=h.norm_last_layer,
            use_bn=h.get("use_bn", False),
            dtype=dtype,
        )
    else:
        projector = _mlp_projector(h, dtype)
    predictor = None
    if method.has_predictor:
        predictor = models_lib.MLP(
            hidden_dims=tuple(h.predictor_hidden),
            output_dim=h.predictor_dim,
            use_bias=h.predictor_use_bias,
            output_use_bias=h.predictor_output_use_bias,
            init_scheme=h.get("init", "flax"),
            dtype=dtype,
        )
    return projector, predictor


def _mlp_projector(h: ml_collections.ConfigDict, dtype) -> nn.Module:
    return models_lib.MLP(
        hidden_dims=tuple(h.projector_hidden),
        output_dim=h.projector_dim,
        output_bn=h.projector_output_bn,
        output_bn_affine=h.projector_output_bn_affine,
        use_bias=h.projector_use_bias,
        output_use_bias=h.projector_output_use_bias,
        init_scheme=h.get("init", "flax"),
        dtype=dtype,
    )


def view_list(config: ml_collections.ConfigDict) -> tuple[list[Any], list[int]]:
    """The views of a step, in order, and their sizes: two global views, then the local ones.

    Args:
      config: the run's config (``augment`` and ``data.image_size``).

    Returns:
      ``(view_configs, sizes)``: ``[view1, view2] + [local_view] * num_local_views`` and
      ``[image_size] * 2 + [local_image_size] * num_local_views``.
    """
    num_local = int(config.augment.get("num_local_views", 0))
    configs = [config.augment.view1, config.augment.view2] + [config.augment.local_view] * num_local
    sizes = [config.data.image_size] * NUM_GLOBAL_VIEWS + [
        config.augment.get("local_image_size", 0)
    ] * num_local
    return configs, sizes


def build_components(
    config: ml_collections.ConfigDict, dataset_info: Any, *, num_train_examples: int
) -> Components:
    """Builds every static part of a run from ``config``.

    Args:
      config: a validated config.
      dataset_info: ``ssljax.data.DatasetInfo`` of the training set.
      num_train_examples: size of the training split, for epochs -> steps.

    Returns:
      The run's :class:`Components`.
    """
    method = methods.get_method(config.method)
    dtype = DTYPES[config.model.dtype]
    backbone = models_lib.create_backbone(
        config.model.backbone, dtype=dtype, **dict(config.model.backbone_kwargs)
    )
    projector, predictor = build_heads(config, method, dtype)
    online_net = SiameseNetwork(backbone=backbone, projector=projector, predictor=predictor)
    probe = nn.Dense(dataset_info.num_classes, name="probe")

    steps_per_epoch = max(num_train_examples // config.global_batch, 1)
    if config.num_steps > 0:
        total_steps = int(config.num_steps)
    else:
        total_steps = max(int(math.ceil(config.num_epochs * steps_per_epoch)), 1)
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    if warmup_steps >= total_steps:
        # Short (smoke-test) runs: a warm-up as long as the run would never reach the peak.
        logging.warning(
            "config.warmup_epochs=%s is %d steps, not shorter than the run's %d steps; "
            "using a warm-up of %d steps.",
            config.warmup_epochs,
            warmup_steps,
            total_steps,
            total_steps - 1,
        )
        warmup_steps = total_steps - 1

    # The optimizer is built against the shapes of the online params, so their paths can be
    # matched by the weight-decay and fixed-lr masks.
    abstract_params = jax.eval_shape(
        lambda: _init_variables(
            online_net, jax.random.PRNGKey(0), config.data.image_size, dataset_info
        )["params"]
    )
    tx, lr_schedule = optim.build_optimizer(
        config.optimizer,
        abstract_params,
        global_batch=config.global_batch,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        steps_per_epoch=steps_per_epoch,
    )
    probe_tx = optax.adam(config.probe.lr) if config.probe.enabled else optax.set_to_zero()
    # The target branch sees the global views (all of them for the two-view methods).
    target_policy = method.target_policy(
        config, online_net=online_net, total_steps=total_steps, num_views=NUM_GLOBAL_VIEWS
    )

    mean, std = dataset_info.mean, dataset_info.std
    view_configs, view_sizes = view_list(config)
    augment_fn = augment.build_augment(
        view_configs,
        output_size=view_sizes,
        mean=mean,
        std=std,
        crop=not config.data.crop_in_loader,
    )
    eval_preprocess = eval_preprocess_from_config(config, dataset_info)
    return Components(
        method=method,
        online_net=online_net,
        target_policy=target_policy,
        probe=probe,
        tx=tx,
        probe_tx=probe_tx,
        lr_schedule=lr_schedule,
        augment_fn=augment_fn,
        eval_preprocess=eval_preprocess,
        dataset_info=dataset_info,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        warmup_steps=warmup_steps,
    )


def _init_variables(net: SiameseNetwork, rng: jax.Array, image_size: int, dataset_info: Any):
    channels = (dataset_info.image_shape or (image_size, image_size, 3))[-1]
    return _init_compiled(net, rng, image_size, channels)


# Compiled as one program: run eagerly, every initialiser of every layer is dispatched (and
# compiled) on its own, several times slower (ResNet-tiny on a 2-core CPU: 6.5 s against 2.8 s).
@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _init_compiled(net: SiameseNetwork, rng: jax.Array, image_size: int, channels: int):
    # Two examples so that BatchNorm's batch statistics are defined at initialisation.
    dummy = jnp.zeros((2, image_size, image_size, channels), jnp.float32)
    return net.init(rng, dummy, train=True)


# ----------------------------------------------------------------------------------------------
# State.
# ----------------------------------------------------------------------------------------------
def init_state(comps: Components, config: ml_collections.ConfigDict, rng: jax.Array) -> TrainState:
    """Initial train state: online params, the method's state, optimizers, probe.

    Args:
      comps: the run's components.
      config: the run's config.
      rng: PRNG key; split into model init, probe init and the training stream.

    Returns:
      A :class:`TrainState` at step 0.
    """
    init_rng, probe_rng, train_rng = jax.random.split(rng, 3)
    variables = _init_variables(
        comps.online_net, init_rng, config.data.image_size, comps.dataset_info
    )
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    feat_shape = jax.eval_shape(
        lambda p, b: comps.online_net.apply(
            {"params": p, "batch_stats": b},
            jnp.zeros((2, config.data.image_size, config.data.image_size, 3)),
            train=False,
        )["features"],
        params,
        batch_stats,
    )
    probe_params = comps.probe.init(probe_rng, jnp.zeros(feat_shape.shape, jnp.float32))["params"]
    # The policy's entries (an EMA target's copy of the online network) and the method's own
    # (DINO's center), in one dict.
    method_state = {
        **comps.target_policy.init(params, batch_stats),
        **comps.method.init_state(config.heads.projector_dim, dict(config.method_config)),
    }
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=comps.tx.init(params),
        probe_params=probe_params,
        probe_opt_state=comps.probe_tx.init(probe_params),
        method_state=method_state,
        rng=train_rng,
        nonfinite_count=jnp.zeros((), jnp.int32),
        nonfinite_total=jnp.zeros((), jnp.int32),
    )


# ----------------------------------------------------------------------------------------------
# The train step: pure, jitted once, the same for every method.
# ----------------------------------------------------------------------------------------------
def _forward_views(net, params, batch_stats, views):
    """Applies ``net`` in train mode to each view in turn, threading BatchNorm statistics.

    Each view is its own batch for BatchNorm, as in the official implementations, which call
    the network once per view.
    """
    outputs = []
    for view in views:
        out, updates = net.apply(
            {"params": params, "batch_stats": batch_stats},
            view,
            train=True,
            mutable=["batch_stats"],
        )
        batch_stats = updates["batch_stats"]
        outputs.append(out)
    return outputs, batch_stats


def _all_finite(tree: PyTree) -> jax.Array:
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    if not leaves:
        return jnp.ones((), jnp.bool_)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def step_is_finite(loss: jax.Array, grads: PyTree, updated: PyTree) -> jax.Array:
    """Whether a step may be applied: its loss, gradients and *updated* state all finite.

    The update is checked too: finite gradients times a huge learning rate can overflow the
    params (issue 18: ``base_lr=1e30`` gave finite losses and infinite params).
    """
    finite = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(updated)
    # The same flag (exp(0) = 1 > 0.5 > exp(-1)), ending in an op that XLA counts as expensive
    # and so computes once. Ending in a cheap `and`, the whole chain over every leaf's flag was
    # fused into each of the state's selects below: a ResNet-tiny DINO step grew to 145k lines
    # of optimized HLO (44k of them `and`s), against 51k with this, and the ResNet-18 BYOL step
    # compiled in 32 s instead of 11 s on a 2-core CPU, its step time unchanged
    # (benchmarks/results/xeon_2026-12-07/; tests/test_performance.py pins the HLO).
    return jnp.exp(jnp.where(finite, 0.0, -1.0)) > 0.5


def make_train_step(
    comps: Components, config: ml_collections.ConfigDict
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """Returns the pure ``train_step(state, batch) -> (state, metrics)``.

    The step augments every view (on device), runs the online network on each, the target
    branch by the method's policy, the method's loss, the online probe on
    ``stop_gradient(features)``, the optimizer, and the policy's and the method's state updates
    (an EMA target's, DINO's center). It never asks which method it runs. A step whose loss or
    gradients are not finite leaves the state unchanged (but for the counters), decided on
    device with no host round-trip.
    """
    method = comps.method
    policy = comps.target_policy
    method_config = dict(config.method_config)
    probe_enabled = bool(config.probe.enabled)

    def train_step(state: TrainState, batch: Mapping[str, jax.Array]):
        step_rng = jax.random.fold_in(state.rng, state.step)
        views = comps.augment_fn(step_rng, batch["image"])
        labels = batch["label"]

        context = methods.LossContext(state.step, comps.steps_per_epoch, state.method_state)

        def loss_fn(params, probe_params):
            online_out, new_bs = _forward_views(comps.online_net, params, state.batch_stats, views)
            # Under stop_gradient whatever the policy (EMA target, online under stop-gradient,
            # none); the target's forward does not depend on `params`, so it costs no backward.
            target, method_state = policy.outputs(state.method_state, views, online_out)
            ssl_loss, terms = method.loss(online_out, target, method_config, context)
            method_state = method.update_state(method_state, target, method_config)
            # The probe sees features under stop_gradient: it cannot move the backbone.
            feats = jax.lax.stop_gradient(online_out[0]["features"])
            logits = comps.probe.apply({"params": probe_params}, feats)
            probe_loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            total = ssl_loss + (probe_loss if probe_enabled else 0.0)
            return total, (ssl_loss, terms, new_bs, method_state, online_out, logits, probe_loss)

        grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
        (_, aux), (grads, probe_grads) = grad_fn(state.params, state.probe_params)
        ssl_loss, terms, new_bs, method_state, online_out, logits, probe_loss = aux

        updates, new_opt_state = comps.tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        probe_updates, new_probe_opt = comps.probe_tx.update(
            probe_grads, state.probe_opt_state, state.probe_params
        )
        new_probe_params = optax.apply_updates(state.probe_params, probe_updates)

        # After the online update (BYOL's Algorithm 1: the EMA follows the new params).
        new_method_state, policy_metrics = policy.update(method_state, new_params, state.step)

        finite = step_is_finite(
            ssl_loss, grads, (new_params, new_bs, new_probe_params, new_method_state)
        )
        proposed = state.replace(
            step=state.step + 1,
            params=new_params,
            batch_stats=new_bs,
            opt_state=new_opt_state,
            probe_params=new_probe_params,
            probe_opt_state=new_probe_opt,
            method_state=new_method_state,
        )
        # A non-finite step only advances the step and the counters: the params, optimizer
        # state and statistics of the last good step are kept.
        kept = state.replace(step=state.step + 1)
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), proposed, kept)
        new_state = new_state.replace(
            nonfinite_count=jnp.where(finite, 0, state.nonfinite_count + 1),
            nonfinite_total=state.nonfinite_total + jnp.where(finite, 0, 1),
        )

        z = online_out[0]["projection"]
        metrics = {
            "loss": ssl_loss,
            **{f"loss_{k}": v for k, v in terms.items()},
            "lr": comps.lr_schedule(state.step),
            "probe_loss": probe_loss,
            "probe_accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
            # Collapse monitors: ~1/sqrt(d) healthy, 0 collapsed (Chen & He 2021, Fig. 2).
            "proj_std": diagnostics.normalized_std(z),
            "proj_std_x_sqrt_d": diagnostics.normalized_std(z) * jnp.sqrt(z.shape[-1] * 1.0),
            # RankMe needs the whole [B, D] feature matrix (a gather across devices and an
            # SVD), so it is computed on logging steps only; other steps report NaN.
            "feature_rankme": jax.lax.cond(
                ((state.step + 1) % config.log_every_steps == 0)
                | (state.step + 1 == comps.total_steps),
                lambda f: diagnostics.rankme(f),
                lambda f: jnp.full((), jnp.nan, jnp.float32),
                online_out[0]["features"],
            ),
            "grad_norm": optax.tree.norm(grads),
            "step_finite": finite.astype(jnp.float32),
            "nonfinite_total": new_state.nonfinite_total.astype(jnp.float32),
            # Consecutive skipped steps, per step: the limit is checked on every step's value
            # when the metrics are fetched, not only on the state at logging steps.
            "nonfinite_count": new_state.nonfinite_count.astype(jnp.float32),
        }
        metrics.update(policy_metrics)
        return new_state, metrics

    return train_step


def make_train_loader(
    config: ml_collections.ConfigDict,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> data.LoaderIterator:
    """The loader of the training stream, as :func:`main` trains on it.

    One definition, so that everything that must see main's batches (the multi-process test,
    the PyTorch reference's ``--inputs_from_ssljax``) builds the same stream: the train split,
    a fresh global shuffle per epoch from ``config.seed``, last partial batch dropped, repeated
    forever.

    Args:
      config: the run's config (``data``, ``global_batch``, ``seed``).
      process_index: this process (None: ``jax.process_index()``).
      process_count: number of processes (None: ``jax.process_count()``).

    Returns:
      This process's iterator over its share of each global batch.
    """
    return data.make_loader(
        config.data,
        split=config.data.train_split,
        global_batch=config.global_batch,
        seed=config.seed,
        shuffle=True,
        drop_remainder=True,
        process_index=process_index,
        process_count=process_count,
    )


# ----------------------------------------------------------------------------------------------
# Features for the kNN monitor and evaluation.
# ----------------------------------------------------------------------------------------------
def run_knn_monitor(
    config: ml_collections.ConfigDict,
    comps: Components,
    state: TrainState,
    mesh: jax.sharding.Mesh,
    feature_fn,
) -> dict[str, float]:
    """Weighted kNN top-1 on the eval split against the train split (Wu et al. 2018)."""
    start = time.perf_counter()
    loaders = {
        split: data.make_loader(
            config.data,
            split=split,
            global_batch=config.global_batch,
            seed=config.seed,
            shuffle=False,
            drop_remainder=False,
            num_epochs=1,
            crop_mode="center" if config.data.crop_in_loader else None,
        )
        for split in (config.data.train_split, config.data.eval_split)
    }
    train_x, train_y = compute_features(
        feature_fn, state, iter(loaders[config.data.train_split]), mesh
    )
    test_x, test_y = compute_features(
        feature_fn, state, iter(loaders[config.data.eval_split]), mesh
    )
    acc = knn.knn_accuracy(
        train_x,
        train_y,
        test_x,
        test_y,
        k=config.knn.k,
        temperature=config.knn.temperature,
        num_classes=comps.dataset_info.num_classes,
    )
    logging.info("kNN monitor: top-1 %.2f%% in %.1fs", 100 * acc, time.perf_counter() - start)
    return {"knn_top1": acc}


def estimate_batch_stats(
    comps: Components, state: TrainState, images: Iterator[jax.Array], rng: jax.Array
) -> TrainState:
    """``state`` with the online network's BatchNorm statistics re-estimated from ``images``.

    Each batch is augmented into the method's two views and run through the online network in
    training mode, the running averages updated as a training step updates them (momentum 0.9,
    one update per view); the parameters are not touched. After n batches the initial
    statistics weigh 0.9 ** (2 n): these are the statistics n training steps at learning rate 0
    would leave, which evaluation-mode BatchNorm needs before the network at initialisation can
    be measured fairly (with the initial 0/1 statistics it does not normalise at all).

    Args:
      comps: the run's components.
      state: the state whose ``params`` are measured; it is not modified.
      images: batches of uint8 training images ``[B, H, W, C]`` (sharded like a train batch).
      rng: PRNG key of the augmentations (batch i uses ``fold_in(rng, i)``).

    Returns:
      A copy of ``state`` with the new ``batch_stats``.
    """

    @jax.jit
    def update(params, batch_stats, key, batch_images):
        views = comps.augment_fn(key, batch_images)
        _, batch_stats = _forward_views(comps.online_net, params, batch_stats, views)
        return batch_stats

    batch_stats = state.batch_stats
    for i, batch_images in enumerate(images):
        batch_stats = update(state.params, batch_stats, jax.random.fold_in(rng, i), batch_images)
    return state.replace(batch_stats=batch_stats)


def calibrate_batch_stats(
    config: ml_collections.ConfigDict,
    comps: Components,
    state: TrainState,
    mesh: jax.sharding.Mesh,
) -> TrainState:
    """:func:`estimate_batch_stats` on ``config.knn.bn_calibration_batches`` training batches.

    The batches come from a loader of their own (another shuffling seed), so the training
    stream is the same whether or not the baseline is measured; 0 batches returns ``state``.
    """
    num_batches = int(config.knn.get("bn_calibration_batches", 0))
    if num_batches <= 0:
        return state
    loader = data.make_loader(
        config.data,
        split=config.data.train_split,
        global_batch=config.global_batch,
        seed=config.seed + 1,
        shuffle=True,
        drop_remainder=True,
        num_epochs=1,
    )
    in_sharding = sharding.batch_sharding(mesh)

    def batches() -> Iterator[jax.Array]:
        for i, batch in enumerate(loader):
            if i == num_batches:
                return
            yield jax.make_array_from_process_local_data(in_sharding, np.asarray(batch["image"]))

    # A key the training steps never use (they fold in steps 0 .. total_steps - 1).
    rng = jax.random.fold_in(state.rng, comps.total_steps + 1)
    with loader:  # stops the loader's worker processes, if any, when done
        return estimate_batch_stats(comps, state, batches(), rng)


# ----------------------------------------------------------------------------------------------
# The job.
# ----------------------------------------------------------------------------------------------
def _save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def check_workdir(workdir: str) -> None:
    """Fails fast if ``workdir`` cannot be created, written and read back.

    Raises:
      PermissionError: naming the folder and what to do.
    """
    startup_checks.check_writable(workdir, f"--workdir={workdir}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Pretrains ``config.method`` on ``config.data`` into ``workdir``, resuming if possible.

    Args:
      config: the run's config (see ``configs/`` and ``ssljax.config_schema``).
      workdir: where checkpoints, ``config.json``, TensorBoard events and ``metrics.jsonl`` go.

    Returns:
      The last logged scalars (and the final kNN accuracy when measured); ``preempted`` is 1.0
      when the run stopped early on SIGTERM (after writing a checkpoint).

    Raises:
      ValueError: for an invalid config, a split the dataset lacks, a workdir holding a run
        with another config, or a checkpoint that does not fit this config, before anything
        is compiled.
      PermissionError: if the workdir or its checkpoint folder is not writable.
      ssljax.workdir_lock.WorkdirInUseError: if another run holds the workdir.
      FloatingPointError: after ``config.max_consecutive_nonfinite`` non-finite steps in a row,
        or when the run ends on non-finite steps (no final checkpoint or summary then).
      ssljax.checkpointing.CheckpointSaveError: if a checkpoint cannot be written.
    """
    # --- Start-up checks: a typo must cost a second, not a compilation. -----------------------
    workdir = os.path.abspath(paths.expand(workdir))
    paths.expand_config_paths(config)
    config_schema.validate(
        config, num_devices=jax.device_count(), num_processes=jax.process_count()
    )
    check_workdir(workdir)
    checkpoints_dir = os.path.join(workdir, "checkpoints")
    startup_checks.check_writable(checkpoints_dir, f"The checkpoint folder {checkpoints_dir}")
    # One run per workdir: a second one is refused before it reads or writes anything. The
    # signal watcher covers the whole run, so a SIGTERM or Ctrl-C during start-up or
    # compilation stops the loop at its first step (with a checkpoint) instead of killing it.
    lock = (
        workdir_lock.WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    )
    with lock, preemption.PreemptionWatcher():
        logging.info(
            matmul_precision.describe(config.model.matmul_precision, jax.devices()[0].platform)
        )
        # Everything compiled for this run (step, kNN monitor, calibration) at one precision.
        with matmul_precision.applied(config.model.matmul_precision):
            return _train_and_evaluate_locked(config, workdir)


def _train_and_evaluate_locked(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The body of :func:`train_and_evaluate`, run while holding the workdir's lock."""
    # Before restoring anything: a workdir of another run must not be resumed (and a model
    # whose shapes differ must not be mistaken for a damaged checkpoint).
    checkpointing.check_config_matches(config, workdir)
    is_main = jax.process_index() == 0

    # --- Mesh: the global batch split over every device of every process. ---------------------
    mesh = sharding.make_mesh(fsdp=config.fsdp)
    data_sharding = sharding.batch_sharding(mesh)
    repl = sharding.replicated(mesh)
    logging.info(
        "Devices: %d (%s) in %d process(es), mesh %s; global batch %d.",
        jax.device_count(),
        jax.devices()[0].platform,
        jax.process_count(),
        dict(mesh.shape),
        config.global_batch,
    )

    # --- Input and model (the dataset must be prepared: get_dataset_info says how if not). ----
    info = data.get_dataset_info(config.data)
    startup_checks.check_splits(config, info)
    num_train = info.split_sizes[config.data.train_split]
    startup_checks.check_batch_fits(config, num_train)
    comps = build_components(config, info, num_train_examples=num_train)
    logging.info(
        "%s on %s: %d train examples, %d steps/epoch, %d steps (%d warm-up).",
        config.method,
        info.name,
        num_train,
        comps.steps_per_epoch,
        comps.total_steps,
        comps.warmup_steps,
    )

    # --- State, created directly with its sharding so no host copy is made. -------------------
    # A raw uint32 key: checkpointable as a plain array and selectable with jnp.where.
    rng = jax.random.PRNGKey(config.seed)
    state_shapes = jax.eval_shape(functools.partial(init_state, comps, config), rng)
    # Shardings inferred for the whole state, EMA target included, so the target is laid out
    # like the params it follows (replicated under pure data parallelism).
    state_sharding = sharding.infer_state_sharding(mesh, state_shapes)
    ckpt = checkpointing.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        keep=config.checkpoint.keep,
        async_save=config.checkpoint.async_save,
    )
    # Resume order: (1) the newest readable checkpoint in the workdir, (2) config.init_from,
    # (3) random initialisation.
    restored = ckpt.restore_latest(state_shapes, state_sharding)
    if restored is not None:
        state, loader_state = restored
        logging.info("Resumed from step %d of %s.", int(state.step), workdir)
    else:
        loader_state = None
        init = jax.jit(functools.partial(init_state, comps, config), out_shardings=state_sharding)
        if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
            logging.warning(
                "%s holds metrics of an earlier run but no usable checkpoint: THIS RUN STARTS "
                "FROM STEP 0 (metrics.jsonl is cut back to match).",
                workdir,
            )
        state = init(rng)
        if config.init_from:
            state = checkpointing.load_params_from(config.init_from, state, state_sharding)
    start_step = int(state.step)

    train_loader = make_train_loader(config)
    if loader_state is not None:
        train_loader.set_state(loader_state)
    logging.info(
        "Input: %d loader worker process(es) (%s).",
        train_loader.num_workers,
        train_loader.workers_reason,
    )
    batches = data.device_prefetch(train_loader, data_sharding, size=2)

    # --- The step: compiled once, state donated so its buffers are reused in place. -----------
    train_step = jax.jit(
        make_train_step(comps, config),
        in_shardings=(state_sharding, data_sharding),
        out_shardings=(state_sharding, repl),
        donate_argnums=(0,),
    )
    feature_fn = make_feature_fn(comps)
    # Only now has start-up succeeded: a config.json left by a failed start would refuse the
    # corrected rerun.
    if is_main and restored is None:
        _save_config(config, workdir)

    # --- Loop. ----------------------------------------------------------------------------------
    # Rows after the resumed checkpoint (written before a kill) are dropped: they are replayed.
    writer = (
        metric_writers.MetricWriter(workdir, resume_step=start_step if restored else -1)
        if is_main
        else None
    )
    progress = (
        metric_writers.ProgressBar(comps.total_steps, start_step, config.global_batch)
        if is_main
        else None
    )
    knn_every = (
        int(round(config.knn.every_epochs * comps.steps_per_epoch))
        if config.knn.every_epochs > 0
        else 0
    )
    last: dict[str, float] = {}
    if config.knn.at_start and start_step == 0:
        # On a large dataset this pass and the compilation below take minutes: say so.
        logging.info("kNN at initialisation: %s images...", f"{_knn_images(config, info):,}")
        # The baseline is the initialisation with BatchNorm statistics from training batches,
        # measured on a copy: training starts from `state` whether or not this runs.
        calibrated = calibrate_batch_stats(config, comps, state, mesh)
        res = run_knn_monitor(config, comps, calibrated, mesh, feature_fn)
        del calibrated
        last["knn_top1_init"] = res["knn_top1"]
        res["knn_init_bn_calibration_batches"] = float(config.knn.get("bn_calibration_batches", 0))
        if writer:
            writer.write_scalars(0, res)
    if start_step < comps.total_steps:
        logging.info("Compiling the train step (the first progress line follows)...")
    pending: list[tuple[int, dict[str, jax.Array]]] = []
    preempted = False
    # Input-wait accounting (the share of wall time spent waiting for the next batch); it also
    # keeps the host at most input_wait.MAX_STEPS_AHEAD steps ahead of the device.
    meter = input_wait.InputWaitMeter()
    t0 = time.perf_counter()
    try:
        with preemption.PreemptionWatcher() as watcher:
            for step in range(start_step + 1, comps.total_steps + 1):
                state, metrics = train_step(state, meter.next(batches))
                meter.dispatched(metrics["loss"])
                if step == start_step + 1:
                    meter.reset()  # the first step compiled: not the input's time
                # Metrics stay on device and are fetched every log_every_steps, so the host
                # never waits for a step to finish in between.
                pending.append((step, metrics))
                stop = watcher.should_stop(step)
                save_now = step % config.checkpoint.every_steps == 0 and step != comps.total_steps
                # Also before each checkpoint: every step's non-finite count is checked before
                # a state is saved, and metrics.jsonl holds every step up to the checkpoint.
                if (
                    step % config.log_every_steps == 0
                    or step == comps.total_steps
                    or stop
                    or save_now
                ):
                    fetched = jax.device_get(pending)
                    share = meter.share()
                    pending = []
                    last.update(_flush_metrics(fetched, writer, progress, step, share))
                    meter.warn_if_starved(share, step, train_loader.num_workers)
                    check_nonfinite_counts(
                        fetched, config.max_consecutive_nonfinite, _newest_checkpoint(ckpt)
                    )
                if stop:
                    preempted = True
                    logging.warning("Stopping at step %d on request; checkpointing.", step)
                    break
                if save_now:
                    ckpt.save(step, state, batches.state_of_last_consumed())
                if knn_every and step % knn_every == 0 and step != comps.total_steps:
                    res = run_knn_monitor(config, comps, state, mesh, feature_fn)
                    if writer:
                        writer.write_scalars(step, res)
    finally:
        if progress:
            progress.close()
        batches.close()
        # An exception or a second Ctrl-C must not abandon a checkpoint being written.
        _wait_for_pending_saves(ckpt)
    ended_nonfinite = int(state.nonfinite_count)
    if ended_nonfinite and not preempted:
        ckpt.close()
        raise FloatingPointError(
            f"The run ended with {ended_nonfinite} consecutive non-finite step(s) (steps "
            f"{int(state.step) - ended_nonfinite + 1}-{int(state.step)} were skipped); no "
            f"final checkpoint or summary was written. Newest checkpoint: "
            f"{_newest_checkpoint(ckpt)}. Lower optimizer.base_lr or check the data."
        )
    # Final (or preemption) checkpoint; wait() makes it complete before the process exits.
    if int(state.step) > start_step:
        ckpt.save(int(state.step), state, batches.state_of_last_consumed(), force=True)
    ckpt.wait()
    elapsed = time.perf_counter() - t0
    done = int(state.step) - start_step
    last["wall_time_s"] = elapsed
    last["preempted"] = float(preempted)
    if done:
        last["images_per_sec_overall"] = done * config.global_batch / elapsed
    if config.knn.at_end and not preempted:
        res = run_knn_monitor(config, comps, state, mesh, feature_fn)
        last.update(res)
        if writer:
            writer.write_scalars(int(state.step), res)
    if writer:
        writer.close()
        summary = write_summary(workdir, int(state.step), done, last)
        if summary is not None:
            logging.info(_summary_line(int(state.step), done, summary, workdir))
        else:
            logging.info(
                "Already finished at step %d: nothing trained; %s kept.",
                int(state.step),
                os.path.join(workdir, "summary.json"),
            )
    ckpt.close()
    return last


def _knn_images(config: ml_collections.ConfigDict, info: Any) -> int:
    """Images one kNN pass embeds: the train split and the eval split."""
    splits = (config.data.train_split, config.data.eval_split)
    return sum(info.split_sizes.get(split, 0) for split in splits)


def write_summary(
    workdir: str, step: int, done: int, last: dict[str, float]
) -> dict[str, Any] | None:
    """Writes ``workdir/summary.json`` unless this run trained nothing; strict JSON.

    A rerun of a finished job trains no step: the finished run's summary (its kNN at
    initialisation, loss, images/s) is left as it is. A resumed run's summary keeps the fields
    only its earlier part measured (the kNN at initialisation) and lists the earlier summaries
    under ``history``.

    Args:
      workdir: the run's folder.
      step: the step the run ended at.
      done: steps trained by this process.
      last: this run's scalars.

    Returns:
      The summary written, or None if an existing summary was kept.
    """
    path = os.path.join(workdir, "summary.json")
    previous: dict[str, Any] = {}
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                previous = json.load(f)
        except (OSError, ValueError):
            previous = {}
    if previous and not done:
        return None
    summary = {"step": step, **last}
    if previous:
        history = previous.pop("history", [])
        # Measured once per run, at step 0: the baseline the final kNN is compared with.
        if "knn_top1_init" in previous:
            summary.setdefault("knn_top1_init", previous["knn_top1_init"])
        summary["history"] = [*history, previous]
    if "knn_top1_init" not in summary:
        # A run killed before its first summary: the baseline is in metrics.jsonl's step-0 row.
        at_init = _knn_at_initialisation(workdir)
        if at_init is not None:
            summary["knn_top1_init"] = at_init
    strict_json.write(path, summary)
    return summary


def _knn_at_initialisation(workdir: str) -> float | None:
    """The kNN accuracy logged at step 0 in ``workdir/metrics.jsonl``, if there is one."""
    try:
        curve = metric_writers.read_curves(os.path.join(workdir, "metrics.jsonl"))["knn_top1"]
    except (OSError, ValueError, KeyError):
        return None  # no such row: the summary goes without the baseline, as before
    return curve[0][1] if curve[0][0] == 0 else None


def _summary_line(step: int, done: int, last: dict[str, float], workdir: str) -> str:
    """The run's outcome in one log line: steps, wall time, throughput, kNN against init."""
    parts = [f"Finished at step {step} ({done} this run) in {last['wall_time_s']:.0f} s"]
    if "images_per_sec_overall" in last:
        parts.append(f"{last['images_per_sec_overall']:.0f} img/s overall")
    if "knn_top1" in last:
        knn_text = f"kNN top-1 {last['knn_top1']:.2%}"
        if "knn_top1_init" in last:
            gain = 100 * (last["knn_top1"] - last["knn_top1_init"])
            knn_text += f" ({last['knn_top1_init']:.2%} at initialisation, {gain:+.1f} points)"
        parts.append(knn_text)
    return "; ".join(parts) + f". Summary: {os.path.join(workdir, 'summary.json')}"


def _flush_metrics(fetched, writer, progress, step: int, input_share: float) -> dict[str, float]:
    """Reports the (fetched) metrics of the steps since the last flush.

    ``input_share`` is the share of wall time the loop waited for input since the last flush;
    it is logged as ``input_wait_share`` and shown on the progress line.
    """
    for s, m in fetched:
        if writer:
            # Metrics computed on logging steps only are NaN elsewhere: leave them out.
            writer.write_scalars(
                s, {k: v for k, v in m.items() if k not in LOG_STEP_ONLY or not np.isnan(v)}
            )
    last = {k: float(v) for k, v in fetched[-1][1].items()}
    last["input_wait_share"] = input_share
    if progress:
        shown = {k: last[k] for k in ("loss", "probe_accuracy") if k in last}
        ips = progress.update(step, shown, input_share=input_share)
        last["images_per_sec"] = ips
        if writer:
            writer.write_scalars(step, {"images_per_sec": ips, "input_wait_share": input_share})
    return last


def _newest_checkpoint(ckpt: checkpointing.Checkpointer) -> str:
    step = ckpt.latest_step()
    where = f"in {ckpt.directory}"
    return f"step {step} {where}" if step is not None else f"none {where}"


def _wait_for_pending_saves(ckpt: checkpointing.Checkpointer) -> None:
    """Waits for asynchronous saves; a failure is logged, not raised (see the caller)."""
    try:
        ckpt.wait()
    except Exception as err:  # noqa: BLE001 -- must not hide the exception being handled
        logging.error("%s", err)


def check_nonfinite_counts(fetched, limit: int, latest_checkpoint: str) -> None:
    """Stops the run once ``limit`` steps in a row were skipped as non-finite.

    Args:
      fetched: ``[(step, metrics)]`` fetched from the device; every step's ``nonfinite_count``
        (consecutive skipped steps up to it) is checked, not only the last one's.
      limit: ``config.max_consecutive_nonfinite``.
      latest_checkpoint: where the newest checkpoint is, for the message.

    Raises:
      FloatingPointError: naming the step the limit was reached at.
    """
    for step, metrics in fetched:
        bad = int(metrics.get("nonfinite_count", 0))
        if bad >= limit:
            raise FloatingPointError(
                f"{bad} consecutive steps with a non-finite loss, gradient or update, ending at "
                f"step {step} (each was skipped: the state is that of step {step - bad}). Newest "
                f"checkpoint (its values are finite, but the run may have been diverging "
                f"before): {latest_checkpoint}. Lower optimizer.base_lr, check the data, or "
                "raise config.max_consecutive_nonfinite."
            )
    if fetched:
        step, metrics = fetched[-1]
        bad = int(metrics.get("nonfinite_count", 0))
        if bad:
            logging.warning("Step %d: %d consecutive non-finite step(s) skipped.", step, bad)
