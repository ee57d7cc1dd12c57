"""TFDS datasets read with random access from ArrayRecord files, without TensorFlow.

Catalogue datasets (``cifar10``, ``imagenet2012``, ...) and the datasets our own builders write
(``image_folder``) are both TFDS datasets on disk: ``<data_dir>/<name>/[<config>/]<version>/``
holding ``dataset_info.json``, ``features.json`` and ``*.array_record-*`` files. Reading them
needs ``tensorflow_datasets`` and ``array_record`` only: ``tfds.data_source`` deserialises the
records with NumPy. The image feature is read *undecoded* (``tfds.decode.SkipDecoding``) so that
the loader's worker processes decode it (PIL, always converted to RGB: ImageNet holds a few
grayscale and CMYK JPEGs).

Preparing a catalogue dataset (``tfds`` ``download_and_prepare``) is another matter: most TFDS
builders encode images with TensorFlow, which ssljax does not depend on. ``prepare_catalogue``
therefore tries, and when TensorFlow is what is missing says to install ``ssljax[prepare]``.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

logger = logging.getLogger(__name__)

# Per-channel statistics on the [0, 1] scale used by the official implementations for the
# catalogue datasets (torchvision's ImageNet constants; CIFAR statistics of the training sets).
# Datasets not listed fall back to the ImageNet values, with a warning.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KNOWN_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": (IMAGENET_MEAN, IMAGENET_STD),
    "imagenet2012_subset": (IMAGENET_MEAN, IMAGENET_STD),
    "imagenet_v2": (IMAGENET_MEAN, IMAGENET_STD),
    "imagenette": (IMAGENET_MEAN, IMAGENET_STD),
    "imagewang": (IMAGENET_MEAN, IMAGENET_STD),
}


def prepare_command(name: str, data_dir: str | os.PathLike, root: str | None = None) -> str:
    """Returns the shell command that prepares dataset ``name`` into ``data_dir``."""
    cmd = f"python -m ssljax.data.prepare --dataset={name} --data_dir={data_dir}"
    if root is not None:
        cmd += f" --root={root}"
    return cmd


def decode_rgb(payload: bytes | np.ndarray) -> Image.Image:
    """Decodes encoded image bytes (or wraps a uint8 array) as an RGB PIL image.

    Args:
      payload: JPEG/PNG/... bytes, or a uint8 array [H, W, 3] or [H, W].

    Returns:
      A fully loaded PIL image in mode ``RGB``.
    """
    if isinstance(payload, np.ndarray):
        image = Image.fromarray(payload)
    else:
        image = Image.open(io.BytesIO(payload))
        image.load()
    # Grayscale, palette, RGBA or CMYK files become 3-channel RGB (alpha is dropped).
    return image if image.mode == "RGB" else image.convert("RGB")


def _catalogue_builder(name: str, data_dir: str | os.PathLike) -> Any:
    """Returns the TFDS builder of a catalogue dataset, or raises ValueError."""
    try:
        return tfds.builder(name, data_dir=os.fspath(data_dir))
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(
            f"data.name={name!r} is neither 'digits', 'image_folder' nor a dataset that TFDS "
            f"knows (see the TFDS catalogue for names such as 'cifar10' or 'imagenet2012')."
        ) from e


def open_catalogue_builder(name: str, data_dir: str | os.PathLike | None) -> Any:
    """Returns the TFDS builder of a prepared catalogue dataset.

    Args:
      name: a TFDS name, optionally with config and version (``imagenette/320px-v2:1.0.0``).
      data_dir: the folder the dataset was prepared into.

    Returns:
      The builder, whose ``info`` describes the prepared files.

    Raises:
      ValueError: the name is unknown, the dataset is not prepared in ``data_dir``, or it is
        prepared in a format without random access (TFRecord).
    """
    if data_dir is None:
        raise ValueError(
            f"data.data_dir is not set: dataset {name!r} must be prepared into a folder first: "
            f"{prepare_command(name, 'DIR')}"
        )
    builder = _catalogue_builder(name, data_dir)
    if not builder.is_prepared():
        raise ValueError(
            f"Dataset {name!r} is not prepared in data.data_dir={os.fspath(data_dir)!r}. "
            f"Prepare it with: {prepare_command(name, data_dir)}  "
            "(most TFDS builders need TensorFlow to prepare: pip install 'ssljax[prepare]'; "
            "training needs no TensorFlow)."
        )
    file_format = builder.info.file_format
    if file_format is not None and file_format != tfds.core.FileFormat.ARRAY_RECORD:
        raise ValueError(
            f"Dataset {name!r} in {builder.data_dir} was prepared as {file_format.value}, "
            "which has no random access. Prepare it again as ArrayRecord into another "
            f"data_dir: {prepare_command(name, 'NEW_DIR')}"
        )
    return builder


def catalogue_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Returns the per-channel (mean, std) on the [0, 1] scale for a catalogue dataset."""
    base = name.split("/")[0].split(":")[0]
    if base in KNOWN_STATS:
        return KNOWN_STATS[base]
    logger.warning(
        "No channel statistics known for dataset %r: normalising with ImageNet's "
        "mean %s and std %s.",
        name,
        IMAGENET_MEAN,
        IMAGENET_STD,
    )
    return IMAGENET_MEAN, IMAGENET_STD


def check_features(builder: Any, image_key: str, label_key: str) -> None:
    """Raises ValueError unless the dataset has an RGB image feature and a class label."""
    features = builder.info.features
    keys = sorted(features.keys())
    if image_key not in features or not isinstance(features[image_key], tfds.features.Image):
        raise ValueError(
            f"data.image_key={image_key!r} is not an image feature of {builder.name} "
            f"(features: {keys}); set data.image_key."
        )
    if label_key not in features or not isinstance(features[label_key], tfds.features.ClassLabel):
        raise ValueError(
            f"data.label_key={label_key!r} is not a class-label feature of {builder.name} "
            f"(features: {keys}); set data.label_key."
        )


def check_split(builder: Any, split: str) -> None:
    """Raises ValueError if ``split`` names no split of the builder (``train[:10%]`` is fine)."""
    names = sorted(builder.info.splits.keys())
    try:
        builder.info.splits[split]
    except (KeyError, ValueError) as e:
        raise ValueError(
            f"split={split!r} is not a split of {builder.name} in {builder.data_dir}; "
            f"its splits are {names} (slices such as 'train[:90%]' are accepted)."
        ) from e


class TfdsSource:
    """Random-access examples of one split of a prepared TFDS dataset.

    The TFDS data source is opened lazily, so that the object pickles small and each grain
    worker process opens its own file handles.

    Args:
      split: the split (TFDS split syntax, e.g. ``train`` or ``train[:90%]``).
      builder_dir: the dataset's version folder (for datasets of our own builders); or
      name: a catalogue name read with ``tfds.data_source(name, data_dir=...)``.
      data_dir: the data folder (with ``name``).
      image_key: the image feature.
      label_key: the class-label feature.
    """

    def __init__(
        self,
        *,
        split: str,
        builder_dir: str | None = None,
        name: str | None = None,
        data_dir: str | None = None,
        image_key: str = "image",
        label_key: str = "label",
    ):
        if (builder_dir is None) == (name is None):
            raise ValueError("TfdsSource needs exactly one of builder_dir and name.")
        self.split = split
        self.builder_dir = builder_dir
        self.name = name
        self.data_dir = data_dir
        self.image_key = image_key
        self.label_key = label_key
        self._source = None
        self._len = len(self._data_source())

    def _data_source(self) -> Any:
        if self._source is None:
            decoders = {self.image_key: tfds.decode.SkipDecoding()}
            if self.builder_dir is not None:
                builder = tfds.builder_from_directory(self.builder_dir)
                self._source = builder.as_data_source(split=self.split, decoders=decoders)
            else:
                self._source = tfds.data_source(
                    self.name,
                    split=self.split,
                    data_dir=self.data_dir,
                    download=False,
                    decoders=decoders,
                )
        return self._source

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_source"] = None
        return state

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        where = self.builder_dir or f"{self.name} in {self.data_dir}"
        return f"TfdsSource({where}, split={self.split!r})"

    def read(self, indices: Sequence[int]) -> list[tuple[bytes, int]]:
        """Returns the (encoded image bytes, label) of the examples at ``indices``."""
        records = self._data_source().__getitems__([int(i) for i in indices])
        return [(r[self.image_key], int(r[self.label_key])) for r in records]


def prepare_catalogue(
    name: str, data_dir: str | os.PathLike, *, manual_dir: str | None = None
) -> str:
    """Downloads and prepares a TFDS catalogue dataset as ArrayRecord.

    Args:
      name: the TFDS name.
      data_dir: where to write it.
      manual_dir: folder holding manually downloaded archives (ImageNet's tar files).

    Returns:
      The folder of the prepared dataset.

    Raises:
      ValueError: unknown name, or the builder needs TensorFlow and it is not installed.
    """
    builder = tfds.builder(name, data_dir=os.fspath(data_dir), file_format="array_record")
    if builder.is_prepared():
        logger.info("%s is already prepared in %s", name, builder.data_dir)
        return os.fspath(builder.data_dir)
    config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    try:
        builder.download_and_prepare(download_config=config)
    except ImportError as e:
        if "tensorflow" not in str(e).lower():
            raise
        raise ValueError(
            f"The TFDS builder of {name!r} needs TensorFlow to prepare the dataset (it encodes "
            "the images with it). Install the extra: pip install 'ssljax[prepare]', then run "
            f"again: {prepare_command(name, data_dir)}. Training reads the result without "
            "TensorFlow."
        ) from e
    return os.fspath(builder.data_dir)
