"""The evaluation job: features once, then a protocol, diagnostics, and the results written.

:func:`evaluate_run` restores a run's backbone (:mod:`ssljax.eval.restore`), computes or reads
its features (:mod:`ssljax.eval.features`), runs one of :data:`PROTOCOLS` (the linear classifier
of :mod:`ssljax.eval.linear` or the kNN of :mod:`ssljax.eval.knn`) and the representation
diagnostics of :mod:`ssljax.diagnostics`, and writes ``DIR/eval_<protocol>.json`` and
TensorBoard scalars in ``DIR/eval``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ssljax import data, matmul_precision, metric_writers, paths, sharding, strict_json
from ssljax.diagnostics import alignment, normalized_std, rankme, uniformity
from ssljax.eval import config as config_lib
from ssljax.eval import features, knn, linear, restore

PROTOCOLS = ("linear", "knn")


def representation_diagnostics(
    run: restore.Run, test_x: np.ndarray, ecfg: ml_collections.ConfigDict
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
    loader = features.eval_loader(
        config, config.data.eval_split, batch, crop_mode="random", shuffle=True
    )
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
      eval_preset: one of :data:`ssljax.eval.config.EVAL_PRESETS`; default the run's preset
        (:func:`ssljax.eval.config.default_preset`).
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
    if eval_preset is not None and eval_preset not in config_lib.EVAL_PRESETS:
        raise ValueError(
            f"--eval_preset={eval_preset!r} does not exist; valid: {list(config_lib.EVAL_PRESETS)}."
        )
    if data_dir:
        if config is None:
            path = os.path.join(os.path.abspath(paths.expand(workdir)), "config.json")
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    config = ml_collections.ConfigDict(json.load(f))
        if config is not None:
            config.data.data_dir = paths.expand(data_dir)
    run = restore.load_run(workdir, config)
    ecfg = config_lib.resolve_eval_config(run.config, eval_preset, eval_overrides)
    mesh = sharding.make_mesh()
    info = data.get_dataset_info(run.config.data)

    # The features at the precision the run trained with (runs older than the setting: JAX's).
    precision = run.config.model.get("matmul_precision", "default")
    start = time.perf_counter()
    with matmul_precision.applied(precision):
        train_feats = features.compute_split_features(run, run.config.data.train_split, ecfg, mesh)
        train_seconds = time.perf_counter() - start
        test_feats = features.compute_split_features(run, run.config.data.eval_split, ecfg, mesh)
    feature_seconds = time.perf_counter() - start
    results: dict[str, Any] = {
        "matmul_precision": precision,
        "num_train": int(train_feats[0].shape[0]),
        "num_test": int(test_feats[0].shape[0]),
        "feature_dim": int(train_feats[0].shape[1]),
        "feature_seconds": feature_seconds,
        "feature_seconds_train": train_seconds,
    }
    if protocol == "linear":
        results.update(
            linear.linear_protocol(
                train_feats, test_feats, num_classes=info.num_classes, config=ecfg.linear
            )
        )
    else:
        results.update(
            knn.knn_protocol(
                train_feats,
                test_feats,
                num_classes=info.num_classes,
                ks=tuple(ecfg.knn.ks),
                temperature=ecfg.knn.temperature,
            )
        )
        results["training_log_knn"] = knn.training_knn_note(run.config.knn, ecfg.knn)
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
            record["note"] = linear.DEVIATION_NOTE
        strict_json.write(os.path.join(run.workdir, f"eval_{protocol}.json"), record)
        writer = metric_writers.MetricWriter(os.path.join(run.workdir, "eval"))
        scalars = {k: v for k, v in results.items() if isinstance(v, (int, float))}
        writer.write_scalars(run.step, {f"eval_{protocol}/{k}": v for k, v in scalars.items()})
        writer.close()
    return results
