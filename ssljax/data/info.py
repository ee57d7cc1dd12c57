"""What a dataset is (classes, splits, image shape, channel statistics) and where to read it.

The data config (``ml_collections.ConfigDict`` or a plain dict) selects one of three kinds:

* ``name='digits'``: scikit-learn's digits, built in memory (the default; nothing to prepare);
* ``name='image_folder'``: a folder ``root/<split>/<class>/*`` prepared into ``data_dir``;
* any other name: a TFDS catalogue dataset prepared as ArrayRecord into ``data_dir``.

Fields read here and by the loader, with their defaults: ``name='digits'``, ``data_dir=None``,
``root=None``, ``train_split='train'``, ``eval_split='test'``, ``num_workers=0``,
``image_size=32``, ``crop_in_loader=False``, ``crop_scale=(0.08, 1.0)``,
``crop_ratio=(3/4, 4/3)``, ``image_key='image'``, ``label_key='label'``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Protocol

from ssljax import paths
from ssljax.data import digits, image_folder, tfds_source

DEFAULTS: dict[str, Any] = {
    "name": "digits",
    "data_dir": None,
    "root": None,
    "train_split": "train",
    "eval_split": "test",
    "num_workers": 0,
    "image_size": 32,
    "crop_in_loader": False,
    "crop_scale": (0.08, 1.0),
    "crop_ratio": (3.0 / 4.0, 4.0 / 3.0),
    "image_key": "image",
    "label_key": "label",
}


def config_value(data_config: Any, key: str) -> Any:
    """Returns ``data_config[key]``, or its default when the field is absent or None."""
    if key not in DEFAULTS:
        raise KeyError(key)
    value = data_config.get(key, None) if hasattr(data_config, "get") else None
    if value is None:
        return DEFAULTS[key]
    if key in ("data_dir", "root"):
        return paths.expand(value)
    return value


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """A dataset's description, enough to build models and normalise images.

    Attributes:
      name: the dataset name of the config.
      num_classes: number of classes (labels are 0 .. num_classes - 1).
      split_sizes: {split name: number of examples}.
      image_shape: (H, W, 3) if every image has that shape, else None (then the loader must
        crop: ``crop_in_loader=True``).
      mean: per-channel mean of RGB pixel values on the [0, 1] scale (value / 255).
      std: per-channel standard deviation on the same scale.
      class_names: the names of labels 0, 1, ...
    """

    name: str
    num_classes: int
    split_sizes: dict[str, int]
    image_shape: tuple[int, int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: tuple[str, ...]


class ExampleSource(Protocol):
    """Random access to the examples of one split (what the loader reads)."""

    def __len__(self) -> int:
        """Returns the number of examples."""

    def read(self, indices: Any) -> list[tuple[Any, int]]:
        """Returns (encoded bytes or uint8 array [H, W, 3], label) per index."""


def _tfds_info(name: str, builder: Any, image_key: str, label_key: str, mean, std) -> DatasetInfo:
    features = builder.info.features
    labels = features[label_key]
    shape = tuple(features[image_key].shape)
    return DatasetInfo(
        name=name,
        num_classes=int(labels.num_classes),
        split_sizes={k: int(v.num_examples) for k, v in builder.info.splits.items()},
        image_shape=shape if all(d is not None for d in shape) else None,  # type: ignore[arg-type]
        mean=tuple(float(m) for m in mean),  # type: ignore[arg-type]
        std=tuple(float(s) for s in std),  # type: ignore[arg-type]
        class_names=tuple(labels.names),
    )


def get_dataset_info(data_config: Any) -> DatasetInfo:
    """Describes the dataset a data config names.

    Args:
      data_config: ConfigDict or dict with at least ``name`` (see the module docstring).

    Returns:
      The DatasetInfo.

    Raises:
      ValueError: the dataset is unknown or not prepared (the message names the command that
        prepares it).
    """
    name = config_value(data_config, "name")
    if name == digits.NAME:
        mean, std = digits.channel_stats()
        sizes = {k: len(v[1]) for k, v in digits.load_arrays().items()}
        return DatasetInfo(
            name=name,
            num_classes=len(digits.CLASS_NAMES),
            split_sizes=sizes,
            image_shape=(digits.IMAGE_SIZE, digits.IMAGE_SIZE, 3),
            mean=mean,  # type: ignore[arg-type]
            std=std,  # type: ignore[arg-type]
            class_names=digits.CLASS_NAMES,
        )
    data_dir = config_value(data_config, "data_dir")
    if name == image_folder.NAME:
        builder = image_folder.open_builder(data_dir, config_value(data_config, "root"))
        meta = builder.info.metadata
        info = _tfds_info(name, builder, "image", "label", meta["mean"], meta["std"])
        shape = meta["image_shape"]
        return dataclasses.replace(info, image_shape=tuple(shape) if shape else None)
    image_key = config_value(data_config, "image_key")
    label_key = config_value(data_config, "label_key")
    builder = tfds_source.open_catalogue_builder(name, data_dir)
    tfds_source.check_features(builder, image_key, label_key)
    mean, std = tfds_source.catalogue_stats(name)
    return _tfds_info(name, builder, image_key, label_key, mean, std)


def open_source(data_config: Any, split: str) -> ExampleSource:
    """Opens one split of the configured dataset for random access.

    Args:
      data_config: the data config.
      split: the split name (TFDS slicing syntax accepted for TFDS-backed datasets).

    Returns:
      An ExampleSource (picklable: it is sent to the loader's worker processes).

    Raises:
      ValueError: unknown dataset or split, or dataset not prepared.
    """
    name = config_value(data_config, "name")
    if name == digits.NAME:
        return digits.DigitsSource(split)
    data_dir = config_value(data_config, "data_dir")
    if name == image_folder.NAME:
        builder = image_folder.open_builder(data_dir, config_value(data_config, "root"))
        tfds_source.check_split(builder, split)
        return tfds_source.TfdsSource(split=split, builder_dir=os.fspath(builder.data_dir))
    image_key = config_value(data_config, "image_key")
    label_key = config_value(data_config, "label_key")
    builder = tfds_source.open_catalogue_builder(name, data_dir)
    tfds_source.check_features(builder, image_key, label_key)
    tfds_source.check_split(builder, split)
    return tfds_source.TfdsSource(
        split=split, name=name, data_dir=data_dir, image_key=image_key, label_key=label_key
    )
