"""Evaluation protocols on a frozen pretrained backbone, and representation diagnostics.

``python -m ssljax.evaluate --workdir=DIR --protocol=linear|knn`` loads the newest checkpoint
of a run, computes the backbone's features once (evaluation preprocessing, running BatchNorm
statistics), and then

* ``linear``: trains a linear classifier on the cached train features and reports top-1 and
  top-5 on the evaluation split. Without augmentation the features need computing only once,
  so the classifier trains in seconds. (Deviation from the ImageNet protocols of BYOL and
  SimSiam, which train on random crops and flips for 80-100 epochs: state it when comparing.)
* ``knn``: weighted kNN (Wu et al. 2018) for several ``k``.

Results go to ``DIR/eval_<protocol>.json`` and to TensorBoard in ``DIR/eval``.

The diagnostics of :mod:`ssljax.diagnostics` (normalised std, RankMe, alignment, uniformity)
are re-exported here.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ssljax import checkpointing, data, knn, metric_writers, sharding, train
from ssljax.diagnostics import alignment, normalized_std, rankme, uniformity

__all__ = [
    "alignment",
    "normalized_std",
    "rankme",
    "uniformity",
    "load_run",
    "train_linear_classifier",
    "linear_protocol",
    "knn_protocol",
]
PROTOCOLS = ("linear", "knn")


# ----------------------------------------------------------------------------------------------
# Loading a run.
# ----------------------------------------------------------------------------------------------
def load_run(workdir: str, config: ml_collections.ConfigDict | None = None):
    """Restores the newest checkpoint of a training run.

    Args:
      workdir: the run's folder (``config.json`` and ``checkpoints/``).
      config: the evaluation config; default the run's own ``config.json``.

    Returns:
      ``(state, config)``.

    Raises:
      FileNotFoundError: if ``workdir`` has no config or no checkpoint.
      ValueError: if the checkpoint's model does not match ``config``'s, naming both.
    """
    workdir = os.path.abspath(os.path.expanduser(workdir))
    config_path = os.path.join(workdir, "config.json")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isfile(config_path):
        found = (
            sorted(os.listdir(workdir)) if os.path.isdir(workdir) else "nothing (no such folder)"
        )
        raise FileNotFoundError(
            f"{workdir} holds no config.json of a training run; found: {found}."
        )
    with open(config_path, encoding="utf-8") as f:
        saved = ml_collections.ConfigDict(json.load(f))
    config = config or saved
    info = data.get_dataset_info(config.data)
    comps = train.build_components(
        config, info, num_train_examples=info.split_sizes[config.data.train_split]
    )
    ckpt = checkpointing.Checkpointer(ckpt_dir, async_save=False)
    steps = ckpt._manager.all_steps()  # noqa: SLF001 -- for the message only
    if not steps:
        raise FileNotFoundError(f"{ckpt_dir} holds no checkpoint (found: {os.listdir(ckpt_dir)}).")
    abstract = jax.eval_shape(
        functools.partial(train.init_state, comps, config), jax.random.PRNGKey(0)
    )
    mesh = sharding.make_mesh()
    shardings = jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
    try:
        restored = ckpt.restore(max(steps), abstract, shardings)
    except Exception as err:
        raise ValueError(
            f"The checkpoint at step {max(steps)} in {ckpt_dir} does not match the evaluation "
            f"config's model (backbone {config.model.backbone!r}, "
            f"kwargs {dict(config.model.backbone_kwargs)}, heads {dict(config.heads)}); "
            f"the run was trained with backbone {saved.model.backbone!r}, kwargs "
            f"{dict(saved.model.backbone_kwargs)}. Restore error: {err}"
        ) from err
    finally:
        ckpt.close()
    return restored[0], config


def _features(config, state, split: str, mesh) -> tuple[np.ndarray, np.ndarray]:
    info = data.get_dataset_info(config.data)
    comps = train.build_components(
        config, info, num_train_examples=info.split_sizes[config.data.train_split]
    )
    loader = data.make_loader(
        config.data,
        split=split,
        global_batch=config.global_batch,
        seed=config.seed,
        shuffle=False,
        drop_remainder=False,
        num_epochs=1,
        crop_mode="center" if config.data.crop_in_loader else None,
    )
    return train.compute_features(train.make_feature_fn(comps), state, iter(loader), mesh)


# ----------------------------------------------------------------------------------------------
# Linear classifier on cached features.
# ----------------------------------------------------------------------------------------------
def train_linear_classifier(
    train_x: np.ndarray,
    train_y: np.ndarray,
    *,
    num_classes: int,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    standardize: bool = True,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Trains ``softmax(x W + b)`` with SGD + momentum and cosine decay on fixed features.

    The CIFAR linear protocol of the SSL reproductions (SGD, 100 epochs, cosine). Features are
    standardised with the train set's mean and std (as a BatchNorm without affine before the
    classifier, which SimSiam's linear evaluation also uses).

    Args:
      train_x: ``[n, d]`` features.
      train_y: ``[n]`` integer labels.
      num_classes: number of classes.
      epochs: passes over the data.
      batch_size: minibatch size.
      lr: peak learning rate (cosine-decayed to 0).
      momentum: SGD momentum.
      weight_decay: L2 penalty on ``W``.
      standardize: standardise features first.
      seed: shuffling and init seed.

    Returns:
      ``{'w', 'b', 'mean', 'std'}`` as NumPy arrays.
    """
    x = np.asarray(train_x, np.float32)
    y = np.asarray(train_y, np.int32)
    n, d = x.shape
    mean = x.mean(0) if standardize else np.zeros(d, np.float32)
    std = x.std(0) + 1e-6 if standardize else np.ones(d, np.float32)
    x = (x - mean) / std
    steps_per_epoch = max(n // batch_size, 1)
    total = epochs * steps_per_epoch
    tx = optax.chain(
        optax.add_decayed_weights(weight_decay, mask={"w": True, "b": False}),
        optax.sgd(optax.cosine_decay_schedule(lr, total), momentum=momentum),
    )
    params = {"w": jnp.zeros((d, num_classes)), "b": jnp.zeros((num_classes,))}
    opt_state = tx.init(params)
    xs, ys = jnp.asarray(x), jnp.asarray(y)

    def loss_fn(p, xb, yb):
        logits = xb @ p["w"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def epoch(carry, perm):
        def step(carry, idx):
            p, s = carry
            g = jax.grad(loss_fn)(p, xs[idx], ys[idx])
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        idx = perm[: steps_per_epoch * batch_size].reshape(steps_per_epoch, -1)
        carry, _ = jax.lax.scan(step, carry, idx)
        return carry

    rng = np.random.default_rng(seed)
    carry = (params, opt_state)
    for _ in range(epochs):
        carry = epoch(carry, jnp.asarray(rng.permutation(n)))
    params = carry[0]
    return {"w": np.asarray(params["w"]), "b": np.asarray(params["b"]), "mean": mean, "std": std}


def classifier_accuracy(
    clf: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray
) -> dict[str, float]:
    """Top-1 and top-5 accuracy of a classifier from :func:`train_linear_classifier`."""
    logits = ((np.asarray(x, np.float32) - clf["mean"]) / clf["std"]) @ clf["w"] + clf["b"]
    order = np.argsort(-logits, axis=1)
    y = np.asarray(y)
    top1 = float(np.mean(order[:, 0] == y))
    top5 = float(np.mean(np.any(order[:, : min(5, logits.shape[1])] == y[:, None], axis=1)))
    return {"top1": top1, "top5": top5}


# ----------------------------------------------------------------------------------------------
# Protocols.
# ----------------------------------------------------------------------------------------------
def linear_protocol(train_feats, test_feats, *, num_classes: int, **kwargs) -> dict[str, float]:
    """Linear classification of cached features: trains on ``train_feats``, tests on ``test_feats``.

    Args:
      train_feats: ``(x, y)`` of the train split.
      test_feats: ``(x, y)`` of the evaluation split.
      num_classes: number of classes.
      **kwargs: passed to :func:`train_linear_classifier`.

    Returns:
      ``{'linear_top1', 'linear_top5', 'linear_train_seconds'}``.
    """
    start = time.perf_counter()
    clf = train_linear_classifier(*train_feats, num_classes=num_classes, **kwargs)
    seconds = time.perf_counter() - start
    acc = classifier_accuracy(clf, *test_feats)
    return {"linear_top1": acc["top1"], "linear_top5": acc["top5"], "linear_train_seconds": seconds}


def knn_protocol(
    train_feats, test_feats, *, num_classes: int, ks=(1, 20, 200), temperature: float = 0.07
) -> dict[str, float]:
    """Cosine-weighted kNN top-1 for each ``k`` in ``ks``."""
    return {
        f"knn_top1_k{k}": knn.knn_accuracy(
            train_feats[0],
            train_feats[1],
            test_feats[0],
            test_feats[1],
            k=k,
            temperature=temperature,
            num_classes=num_classes,
        )
        for k in ks
    }


def evaluate_run(workdir: str, protocol: str, **protocol_kwargs) -> dict[str, float]:
    """Runs ``protocol`` on the newest checkpoint of ``workdir`` and writes the results.

    Returns:
      The results, also written to ``workdir/eval_<protocol>.json`` and TensorBoard.

    Raises:
      ValueError: for an unknown protocol.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol={protocol!r} does not exist; valid: {list(PROTOCOLS)}.")
    state, config = load_run(workdir)
    mesh = sharding.make_mesh()
    start = time.perf_counter()
    train_feats = _features(config, state, config.data.train_split, mesh)
    test_feats = _features(config, state, config.data.eval_split, mesh)
    feature_seconds = time.perf_counter() - start
    info = data.get_dataset_info(config.data)
    if protocol == "linear":
        results = linear_protocol(
            train_feats, test_feats, num_classes=info.num_classes, **protocol_kwargs
        )
    else:
        results = knn_protocol(
            train_feats, test_feats, num_classes=info.num_classes, **protocol_kwargs
        )
    results["feature_seconds"] = feature_seconds
    results["rankme"] = float(rankme(jnp.asarray(test_feats[0])))
    results["normalized_std"] = float(normalized_std(jnp.asarray(test_feats[0])))
    step = int(state.step)
    with open(os.path.join(workdir, f"eval_{protocol}.json"), "w", encoding="utf-8") as f:
        json.dump({"step": step, **results}, f, indent=2)
    writer = metric_writers.MetricWriter(os.path.join(workdir, "eval"))
    writer.write_scalars(step, {f"eval/{k}": v for k, v in results.items()})
    writer.close()
    return results


def _main(argv: Any) -> None:  # pragma: no cover - thin CLI
    from absl import flags

    del argv
    results = evaluate_run(flags.FLAGS.workdir, flags.FLAGS.protocol)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":  # pragma: no cover
    from absl import app, flags

    from ssljax import host_devices

    host_devices.configure_cpu_devices()
    flags.DEFINE_string("workdir", None, "A training run's workdir.")
    flags.DEFINE_string("protocol", "linear", f"One of {PROTOCOLS}.")
    flags.mark_flag_as_required("workdir")
    app.run(_main)
