"""Features of a frozen backbone: extraction over a whole split, and their cache.

:func:`compute_features` is the one pass over a loader that both the training loop's kNN
monitor (:func:`make_feature_fn` on the train state) and evaluation
(:func:`backbone_feature_fn` on a restored backbone) use: evaluation preprocessing, running
BatchNorm statistics, every example of the split exactly once, on every process.
:func:`compute_split_features` adds the cache in ``DIR/eval/`` that evaluation keeps between
protocols.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from ssljax import augment, data, sharding
from ssljax.models.siamese import SiameseNetwork

if TYPE_CHECKING:  # only for annotations: restore imports this module
    from ssljax.eval.restore import Run

FeatureFn = Callable[[Any, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How a run turns its loader's images into network inputs.

    Attributes:
      eval_preprocess: ``fn(uint8 images) -> float32 [B, S, S, 3]``: centre crop, resize,
        normalisation (:func:`ssljax.augment.preprocess_eval`).
      augment_fn: ``fn(rng, images) -> views``: the run's two training augmentations.
      dataset_info: the dataset's ``ssljax.data.DatasetInfo``.
    """

    eval_preprocess: Callable[[jax.Array], jax.Array]
    augment_fn: Callable[..., tuple[jax.Array, ...]]
    dataset_info: Any


def preprocessing_from_config(
    config: ml_collections.ConfigDict, dataset_info: Any
) -> Preprocessing:
    """The evaluation preprocessing and the augmentations of a run, as training builds them.

    Args:
      config: the run's config (``data`` and ``augment``).
      dataset_info: ``ssljax.data.DatasetInfo`` of the run's dataset (its mean and std).

    Returns:
      The :class:`Preprocessing`.

    Raises:
      ValueError: for invalid augmentation settings.
    """
    mean, std = dataset_info.mean, dataset_info.std
    augment_fn = augment.build_augment(
        [config.augment.view1, config.augment.view2],
        output_size=config.data.image_size,
        mean=mean,
        std=std,
        crop=not config.data.crop_in_loader,
    )
    return Preprocessing(
        eval_preprocess=eval_preprocess_from_config(config, dataset_info),
        augment_fn=augment_fn,
        dataset_info=dataset_info,
    )


def eval_preprocess_from_config(
    config: ml_collections.ConfigDict, dataset_info: Any
) -> Callable[[jax.Array], jax.Array]:
    """The run's evaluation preprocessing: centre crop, resize, normalisation.

    One definition for training's kNN monitor and for evaluation.

    Args:
      config: the run's config (``data.image_size``).
      dataset_info: ``ssljax.data.DatasetInfo`` of the run's dataset (its mean and std).

    Returns:
      ``fn(uint8 images) -> float32 [B, S, S, 3]`` (:func:`ssljax.augment.preprocess_eval`).
    """
    return functools.partial(
        augment.preprocess_eval,
        output_size=config.data.image_size,
        mean=dataset_info.mean,
        std=dataset_info.std,
    )


class _FeatureComponents(Protocol):
    """What :func:`make_feature_fn` needs of training's ``Components``."""

    online_net: SiameseNetwork
    eval_preprocess: Callable[[jax.Array], jax.Array]


def make_feature_fn(comps: _FeatureComponents) -> FeatureFn:
    """Returns ``features(state, uint8_images) -> [B, D]``: eval preprocessing, eval-mode BN.

    Args:
      comps: the training run's components (``online_net`` and ``eval_preprocess``).

    Returns:
      The function, taking the train state (its ``params`` and ``batch_stats``).
    """

    def features(state: Any, images: jax.Array) -> jax.Array:
        x = comps.eval_preprocess(images)
        return comps.online_net.apply(
            {"params": state.params, "batch_stats": state.batch_stats},
            x,
            method=SiameseNetwork.features,
        )

    return features


def backbone_feature_fn(
    backbone: nn.Module, preprocess: Callable[[jax.Array], jax.Array]
) -> FeatureFn:
    """Returns ``features(variables, uint8_images) -> [B, D]`` of a backbone alone.

    Args:
      backbone: the Flax backbone.
      preprocess: the evaluation preprocessing.

    Returns:
      The function, taking the backbone's ``{'params', 'batch_stats'}``; BatchNorm uses the
      running statistics.
    """

    def features(variables: Any, images: jax.Array) -> jax.Array:
        return backbone.apply(variables, preprocess(images), train=False)

    return features


def compute_features(
    feature_fn: FeatureFn,
    variables: Any,
    batches: Iterator[Mapping[str, np.ndarray]],
    mesh: jax.sharding.Mesh,
) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of every example in ``batches`` (one pass), on every process.

    Each process contributes its rows of each global batch; the features come back replicated
    (rows ordered by process), and labels and the loader's padding masks are gathered the same
    way, so every process gets the whole split, each example exactly once. A local batch is
    padded to a multiple of the local device count (the loader already pads a short last batch
    to full size and marks real rows in ``'mask'``).

    Args:
      feature_fn: ``fn(variables, images) -> [B, D]``.
      variables: its first argument (the train state, or a backbone's variables).
      batches: the loader's batches, ``{'image', 'label'[, 'mask']}`` of this process.
      mesh: the device mesh; the batch is sharded over its ``data`` axis.

    Returns:
      ``(features [n, D], labels [n])`` as NumPy arrays.
    """
    from jax.experimental import multihost_utils

    n_local_dev = jax.local_device_count()
    in_sharding = sharding.batch_sharding(mesh)
    fn = jax.jit(feature_fn, out_shardings=sharding.replicated(mesh))
    feats, labels = [], []
    for batch in batches:
        images = np.asarray(batch["image"])
        n = images.shape[0]
        keep = np.asarray(batch.get("mask", np.ones(n, bool)), bool)
        label = np.asarray(batch["label"])
        pad = (-n) % n_local_dev
        if pad:
            images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
            keep = np.concatenate([keep, np.zeros(pad, bool)])
            label = np.concatenate([label, np.full(pad, -1, label.dtype)])
        x = jax.make_array_from_process_local_data(in_sharding, images)
        out = np.asarray(fn(variables, x))
        if jax.process_count() > 1:
            keep = np.asarray(multihost_utils.process_allgather(keep, tiled=True))
            label = np.asarray(multihost_utils.process_allgather(label, tiled=True))
        feats.append(out[keep])
        labels.append(label[keep])
    return np.concatenate(feats), np.concatenate(labels)


def eval_loader(
    config: ml_collections.ConfigDict,
    split: str,
    batch: int,
    *,
    crop_mode: str,
    shuffle: bool = False,
) -> Any:
    """One pass over ``split``, every example once (the last batch padded and masked).

    Args:
      config: the run's config.
      split: the split's name.
      batch: the global batch size.
      crop_mode: ``'center'`` (features) or ``'random'`` (augmented views); only used when the
        loader crops (``config.data.crop_in_loader``).
      shuffle: shuffle the examples (the diagnostics' random subset).

    Returns:
      The loader (an iterable of batches).
    """
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


def backbone_desc(config: ml_collections.ConfigDict) -> str:
    """The backbone's name and overrides, as error messages and the cache key show them."""
    return f"{config.model.backbone!r} with {dict(config.model.backbone_kwargs)}"


def compute_split_features(
    run: Run, split: str, ecfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> tuple[np.ndarray, np.ndarray]:
    """Features ``[n, D]`` and labels of every example of ``split``, from the cache if present.

    The cache file ``DIR/eval/features_step<step>_<split>.npz`` records the dataset, image size
    and backbone it was computed with, and is recomputed when any differs.

    Args:
      run: the restored run (loaded with its data).
      split: the split's name.
      ecfg: the evaluation config (``cache_features``, ``feature_batch``).
      mesh: the device mesh.

    Returns:
      ``(features, labels)`` as NumPy arrays.
    """
    config = run.config
    key = {
        "step": run.step,
        "split": split,
        "data": str(config.data.name),
        "image_size": int(config.data.image_size),
        "backbone": backbone_desc(config),
    }
    path = os.path.join(run.workdir, "eval", f"features_step{run.step}_{split}.npz")
    if ecfg.cache_features and os.path.isfile(path):
        with np.load(path) as f:
            if json.loads(str(f["key"])) == key:
                logging.info("Features of %s read from %s.", split, path)
                return f["x"], f["y"]
    batch = int(ecfg.feature_batch or config.global_batch)
    loader = eval_loader(config, split, batch, crop_mode="center")
    x, y = compute_features(
        backbone_feature_fn(run.backbone, run.components.eval_preprocess),
        run.variables,
        iter(loader),
        mesh,
    )
    if ecfg.cache_features and jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Written aside and renamed: a crash mid-write must not leave a cache that reads.
        tmp = path + ".tmp.npz"
        np.savez(tmp, x=x, y=y, key=json.dumps(key))
        os.replace(tmp, path)
    return x, y
