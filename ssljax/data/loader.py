"""The input pipeline: grain, a global shuffle per epoch, process shards, exact resumption.

Order. The examples of epoch ``e`` are visited in the order
``np.random.default_rng([seed, e, _PERM_TAG]).permutation(N)`` (``arange(N)`` without shuffle),
a fresh global shuffle every epoch. Global step ``t`` of epoch ``e = t // steps_per_epoch`` covers
positions ``[s * G, (s + 1) * G)`` of that order (``s = t % steps_per_epoch``, ``G`` the global
batch) and JAX process ``p`` of ``P`` reads only its slice ``[s * G + p * G / P, ...)`` of them.
So every batch is a pure function of (seed, step): the global batches do not depend on the number
of processes or of worker processes, and the iterator state is a step count, identical on every
process. (grain's ``IndexSampler`` instead gives each process a fixed contiguous shard shuffled
within itself, which is not a global shuffle.)

Batches. ``steps_per_epoch = N // G`` with ``drop_remainder`` (training: fixed shapes), else
``ceil(N / G)`` and the last batch is padded to full size: then every batch also has ``'mask'``
(False on padding, where label and index are -1 and the image is zeros), so that shapes never
change and evaluation can ignore the padding.

Cropping. With ``crop_in_loader`` (variable-size images such as ImageNet), each view of each
example gets a random-resized crop in the worker (torchvision's rule: up to 10 draws of area
fraction ~ U(scale) and log aspect ratio ~ U(log ratio), else the central crop clipped to the
ratio range; bilinear, antialiased resize to ``image_size``) drawn from
``np.random.default_rng([seed, epoch, index, _CROP_TAG])``: reproducible whatever the sharding.
The evaluation transform resizes the shorter side to ``round(image_size / 0.875)`` and takes the
central ``image_size`` square (the standard ImageNet protocol: 224 from 256).

Work. A grain ``MapDataset`` over step numbers maps each step to its whole per-process batch
(read, decode, crop, stack); ``mp_prefetch`` spreads the steps over ``num_workers`` processes
(step ``k`` to worker ``k % num_workers``, consumed in order). With ``num_workers=0`` batches are
built in the calling thread (``device_prefetch`` then overlaps them with the train step);
``num_workers=-1`` picks the count from the host (``ssljax.data.workers``) and logs it.
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Any

import grain
import numpy as np
from PIL import Image

from ssljax.data import info as info_lib
from ssljax.data import tfds_source
from ssljax.data import workers as workers_lib

logger = logging.getLogger(__name__)

# Tags that keep the shuffle and crop random streams apart: numpy's SeedSequence pads short
# entropy with zeros, so [seed, epoch] and [seed, epoch, 0] would otherwise collide.
_PERM_TAG = 0x5045524D
_CROP_TAG = 0x43524F50
EVAL_CROP_FRACTION = 0.875
_STATE_VERSION = 1
_KEYS = ("image", "label", "index", "mask")


def random_resized_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[int, int, int, int]:
    """Samples a crop box by torchvision's ``RandomResizedCrop.get_params`` rule.

    Args:
      rng: the random generator.
      height: image height.
      width: image width.
      scale: range of the crop area as a fraction of the image area.
      ratio: range of the crop aspect ratio (width / height), sampled log-uniformly.

    Returns:
      (top, left, crop height, crop width).
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback: the whole image, clipped to the aspect-ratio range, centred.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def crop_resize(image: Image.Image, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crops ``box`` = (top, left, h, w) and resizes it to size x size (bilinear, antialiased).

    Crop first, then resize, as torchvision does: PIL's ``resize(box=...)`` would let the
    filter reach pixels outside the box.
    """
    top, left, h, w = box
    return np.asarray(
        image.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)
    )


def center_crop(image: Image.Image, size: int) -> np.ndarray:
    """Resizes the shorter side to ``round(size / 0.875)`` and crops the central size x size."""
    width, height = image.size
    short = int(round(size / EVAL_CROP_FRACTION))
    # torchvision's Resize(int): the longer side is truncated, not rounded.
    if width <= height:
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    image = image.resize((new_w, new_h), Image.BILINEAR)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)))


def epoch_order(seed: int, epoch: int, num_examples: int, shuffle: bool) -> np.ndarray | None:
    """Returns the example order of an epoch (None means 0, 1, 2, ... without shuffle)."""
    if not shuffle:
        return None
    return np.random.default_rng([seed, epoch, _PERM_TAG]).permutation(num_examples)


def crop_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """Returns the generator of the crops of example ``index`` in ``epoch``."""
    return np.random.default_rng([seed, epoch, index, _CROP_TAG])


class BatchReader:
    """Builds the per-process batch of a global step (runs in grain's worker processes).

    Args:
      source: the split's ExampleSource.
      global_batch: examples per global step.
      process_index: this process.
      process_count: number of processes.
      seed: shuffle / crop seed.
      shuffle: shuffle each epoch.
      drop_remainder: drop the last partial global batch of each epoch (else pad it).
      mode: 'array' (images as stored, fixed shape), 'random' (random-resized crops per view)
        or 'center' (evaluation crop).
      image_shape: expected (H, W, 3) in 'array' mode.
      image_size: crop side in the crop modes.
      num_views: crops per example in 'random' mode.
      crop_scale: random-resized-crop area range.
      crop_ratio: random-resized-crop aspect-ratio range.
    """

    def __init__(
        self,
        source: info_lib.ExampleSource,
        *,
        global_batch: int,
        process_index: int,
        process_count: int,
        seed: int,
        shuffle: bool,
        drop_remainder: bool,
        mode: str,
        image_shape: tuple[int, ...] | None,
        image_size: int,
        num_views: int,
        crop_scale: tuple[float, float],
        crop_ratio: tuple[float, float],
    ):
        self.source = source
        self.num_examples = len(source)
        self.global_batch = global_batch
        self.local_batch = global_batch // process_count
        self.process_index = process_index
        self.seed = seed
        self.shuffle = shuffle
        self.drop_remainder = drop_remainder
        self.mode = mode
        self.image_shape = tuple(image_shape) if image_shape is not None else None
        self.image_size = image_size
        self.num_views = num_views
        self.crop_scale = tuple(crop_scale)
        self.crop_ratio = tuple(crop_ratio)
        if drop_remainder:
            self.steps_per_epoch = self.num_examples // global_batch
        else:
            self.steps_per_epoch = -(-self.num_examples // global_batch)
        self._order_epoch = -1
        self._order: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_order_epoch"], state["_order"] = -1, None
        return state

    def example_indices(self, step: int) -> tuple[int, np.ndarray]:
        """Returns (epoch, example index per row of this process's batch; -1 for padding)."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._order_epoch:
            self._order = epoch_order(self.seed, epoch, self.num_examples, self.shuffle)
            self._order_epoch = epoch
        start = pos * self.global_batch + self.process_index * self.local_batch
        positions = np.arange(start, start + self.local_batch)
        valid = positions < self.num_examples
        clipped = np.minimum(positions, self.num_examples - 1)
        ids = clipped if self._order is None else self._order[clipped]
        return epoch, np.where(valid, ids, -1).astype(np.int64)

    def _image_shape_out(self) -> tuple[int, ...]:
        s = self.image_size
        if self.mode == "random":
            return (self.num_views, s, s, 3)
        if self.mode == "center":
            return (s, s, 3)
        return self.image_shape  # type: ignore[return-value]

    def _decode(self, payload: Any, index: int) -> Image.Image:
        try:
            return tfds_source.decode_rgb(payload)
        except Exception as e:
            # Name the example here rather than let PIL's error surface bare from a worker.
            raise ValueError(
                f"Example {index} of {self.source!r} cannot be decoded ({type(e).__name__}: "
                f"{e}); the dataset files are damaged: prepare the dataset again."
            ) from e

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        """Returns this process's batch of global step ``step``."""
        epoch, ids = self.example_indices(int(step))
        b = self.local_batch
        images = np.zeros((b, *self._image_shape_out()), np.uint8)
        labels = np.full((b,), -1, np.int32)
        valid = np.flatnonzero(ids >= 0)
        records = self.source.read(ids[valid])
        for row, (payload, label) in zip(valid, records, strict=True):
            index = int(ids[row])
            labels[row] = label
            if self.mode == "array" and isinstance(payload, np.ndarray):
                image = payload
            else:
                image = self._decode(payload, index)
            if self.mode == "array":
                array = np.asarray(image)
                if array.shape != self.image_shape:
                    raise ValueError(
                        f"Example {index} of {self.source!r} has shape {array.shape}, not "
                        f"{self.image_shape} like the others; images of different sizes need "
                        "data.crop_in_loader=True."
                    )
                images[row] = array
            elif self.mode == "center":
                images[row] = center_crop(image, self.image_size)
            else:
                rng = crop_rng(self.seed, epoch, index)
                for v in range(self.num_views):
                    box = random_resized_crop_box(
                        rng, image.height, image.width, self.crop_scale, self.crop_ratio
                    )
                    images[row, v] = crop_resize(image, box, self.image_size)
        batch = {"image": images, "label": labels, "index": ids}
        if not self.drop_remainder:
            batch["mask"] = ids >= 0
        return batch


def _ensure_absl_flags_parsed() -> None:
    """Marks absl flags parsed (to defaults) if nobody has: grain's workers read them."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class LoaderIterator:
    """Iterator over per-process batches with a checkpointable state.

    ``get_state()`` returns a JSON-serialisable dict: the number of batches this iterator has
    returned, plus what must match on restore (dataset, split, size, global batch, seed, ...).
    It is the same on every process. ``set_state(state)`` makes the next batch the one that
    followed when the state was taken; the worker count and the number of processes may differ.
    """

    def __init__(
        self,
        reader: BatchReader,
        *,
        num_epochs: int | None,
        num_workers: int,
        fingerprint: dict[str, Any],
    ):
        self._reader = reader
        self._num_workers = num_workers
        # Why this many workers (``data.num_workers`` as configured, or the automatic choice).
        self.workers_reason = "as configured"
        self._fingerprint = fingerprint
        self._total_steps = None if num_epochs is None else num_epochs * reader.steps_per_epoch
        self._step = 0
        self._iterator: Any = None

    @property
    def num_workers(self) -> int:
        """Loader worker processes (0: batches are built in the calling thread)."""
        return self._num_workers

    @property
    def steps_per_epoch(self) -> int:
        """Global steps (batches) per epoch."""
        return self._reader.steps_per_epoch

    @property
    def local_batch_size(self) -> int:
        """Examples per batch on this process."""
        return self._reader.local_batch

    @property
    def num_examples(self) -> int:
        """Examples in the split."""
        return self._reader.num_examples

    @property
    def step(self) -> int:
        """Batches returned so far (the step the next batch belongs to)."""
        return self._step

    def _start(self) -> None:
        stop = sys.maxsize if self._total_steps is None else self._total_steps
        ds = grain.MapDataset.range(self._step, stop).map(self._reader)
        # Each element is a whole batch: no thread prefetch inside a process (it would hold
        # hundreds of batches); parallelism comes from the worker processes.
        ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
        if self._num_workers > 0:
            _ensure_absl_flags_parsed()
            ds = ds.mp_prefetch(
                grain.MultiprocessingOptions(
                    num_workers=self._num_workers, per_worker_buffer_size=2
                )
            )
        self._iterator = iter(ds)

    def __iter__(self) -> LoaderIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._total_steps is not None and self._step >= self._total_steps:
            raise StopIteration
        if self._iterator is None:
            self._start()
        if self._step % self._reader.steps_per_epoch == 0:
            logger.debug(
                "%s/%s: epoch %d begins (step %d)",
                self._fingerprint["dataset"],
                self._fingerprint["split"],
                self._step // self._reader.steps_per_epoch,
                self._step,
            )
        batch = next(self._iterator)
        self._step += 1
        # Worker outputs arrive in shared memory (grain's SharedMemoryArray, freed when garbage
        # collected); hand out ordinary arrays in a fixed key order instead.
        return {key: np.array(batch[key]) for key in _KEYS if key in batch}

    def get_state(self) -> dict[str, Any]:
        """Returns the state to checkpoint (JSON-serialisable)."""
        return {"version": _STATE_VERSION, "step": self._step, **self._fingerprint}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores a state from ``get_state``.

        Args:
          state: the dict (or its JSON bytes/str).

        Raises:
          ValueError: the state was taken from a loader with different data or order.
        """
        if isinstance(state, (bytes, str)):
            import json

            state = json.loads(state)
        mismatched = {
            k: (state.get(k), v) for k, v in self._fingerprint.items() if state.get(k) != v
        }
        if mismatched:
            raise ValueError(
                "The loader state was saved by a loader with different settings "
                f"(field: (saved, current)): {mismatched}; rebuild the loader as it was."
            )
        self.close()
        self._step = int(state["step"])

    def close(self) -> None:
        """Stops the worker processes (a later ``next`` starts them again)."""
        if self._iterator is not None:
            close = getattr(self._iterator, "close", None)
            if close is not None:
                close()
            self._iterator = None

    def __enter__(self) -> LoaderIterator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _check_range(name: str, value: Any, upper: float | None) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not 0.0 < lo <= hi or (upper is not None and hi > upper):
        bound = f" <= {upper}" if upper is not None else ""
        raise ValueError(f"data.{name}={tuple(value)} must satisfy 0 < low <= high{bound}.")
    return lo, hi


def make_loader(
    data_config: Any,
    *,
    split: str,
    global_batch: int,
    seed: int,
    shuffle: bool,
    drop_remainder: bool,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    num_views: int = 2,
    crop_mode: str | None = None,
) -> LoaderIterator:
    """Builds this process's iterator over batches of a split (see the module docstring).

    Args:
      data_config: the data config (``ssljax.data.info`` lists its fields).
      split: the split to read.
      global_batch: examples per step over all processes (divisible by process_count).
      seed: non-negative seed of the shuffle and of the loader's crops.
      shuffle: a fresh global shuffle each epoch.
      drop_remainder: drop each epoch's last partial global batch (training); else pad it and
        add ``'mask'``.
      num_epochs: stop after this many epochs; None repeats forever.
      process_index: this JAX process (default ``jax.process_index()``).
      process_count: number of processes (default ``jax.process_count()``).
      num_views: random crops per example (only with ``crop_in_loader``).
      crop_mode: with ``crop_in_loader``, 'random' (views) or 'center' (evaluation); default
        'random' for ``data.train_split`` and 'center' for other splits.

    Returns:
      A LoaderIterator yielding {'image': uint8 [b, H, W, 3] (or [b, V, S, S, 3] for random
      crops, [b, S, S, 3] for the centre crop), 'label': int32 [b], 'index': int64 [b]} (plus
      'mask': bool [b] without drop_remainder), b = global_batch / process_count.

    Raises:
      ValueError: bad arguments, unknown or unprepared dataset, or variable-size images without
        ``crop_in_loader``.
    """
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index={process_index} must lie in [0, process_count={process_count})."
        )
    if global_batch < 1 or global_batch % process_count:
        raise ValueError(
            f"global_batch={global_batch} must be a positive multiple of "
            f"process_count={process_count}."
        )
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer.")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs={num_epochs} must be None (forever) or >= 1.")
    if num_views < 1:
        raise ValueError(f"num_views={num_views} must be >= 1.")
    requested_workers = int(info_lib.config_value(data_config, "num_workers"))
    if requested_workers < workers_lib.AUTO:
        raise ValueError(f"data.num_workers={requested_workers} must be >= 0, or -1 for automatic.")
    image_size = int(info_lib.config_value(data_config, "image_size"))
    if image_size < 1:
        raise ValueError(f"data.image_size={image_size} must be >= 1.")
    crop_scale = _check_range("crop_scale", info_lib.config_value(data_config, "crop_scale"), 1.0)
    crop_ratio = _check_range("crop_ratio", info_lib.config_value(data_config, "crop_ratio"), None)

    dataset_info = info_lib.get_dataset_info(data_config)
    crop_in_loader = bool(info_lib.config_value(data_config, "crop_in_loader"))
    if crop_mode is not None and crop_mode not in ("random", "center"):
        raise ValueError(f"crop_mode={crop_mode!r} must be None, 'random' or 'center'.")
    if not crop_in_loader:
        if crop_mode is not None:
            raise ValueError(f"crop_mode={crop_mode!r} needs data.crop_in_loader=True.")
        if dataset_info.image_shape is None:
            raise ValueError(
                f"The images of {dataset_info.name} differ in size, so they cannot be batched "
                "as stored: set data.crop_in_loader=True (random-resized crops in the loader)."
            )
        mode = "array"
    elif crop_mode is not None:
        mode = crop_mode
    else:
        mode = "random" if split == info_lib.config_value(data_config, "train_split") else "center"

    source = info_lib.open_source(data_config, split)
    num_examples = len(source)
    if requested_workers == workers_lib.AUTO:
        import jax

        num_workers, workers_reason = workers_lib.resolve_num_workers(
            requested_workers, dataset=dataset_info.name, platform=jax.devices()[0].platform
        )
    else:
        num_workers, workers_reason = requested_workers, "as configured"
    if drop_remainder and num_examples < global_batch:
        raise ValueError(
            f"global_batch={global_batch} exceeds the {num_examples} examples of split "
            f"{split!r}: with drop_remainder=True no batch would be produced."
        )
    reader = BatchReader(
        source,
        global_batch=global_batch,
        process_index=process_index,
        process_count=process_count,
        seed=int(seed),
        shuffle=shuffle,
        drop_remainder=drop_remainder,
        mode=mode,
        image_shape=dataset_info.image_shape,
        image_size=image_size,
        num_views=num_views,
        crop_scale=crop_scale,
        crop_ratio=crop_ratio,
    )
    fingerprint = {
        "dataset": dataset_info.name,
        "split": split,
        "num_examples": num_examples,
        "global_batch": global_batch,
        "seed": int(seed),
        "shuffle": bool(shuffle),
        "drop_remainder": bool(drop_remainder),
        "mode": mode,
        "image_size": image_size if mode != "array" else None,
        "num_views": num_views if mode == "random" else None,
        "crop_scale": list(crop_scale) if mode == "random" else None,
        "crop_ratio": list(crop_ratio) if mode == "random" else None,
    }
    dropped = num_examples - reader.steps_per_epoch * global_batch if drop_remainder else 0
    logger.debug(
        "%s/%s: %d examples, global batch %d (%d per process x %d processes) -> %d steps per "
        "epoch (%s), %s, mode %s, %d worker processes (data.num_workers %s)",
        dataset_info.name,
        split,
        num_examples,
        global_batch,
        reader.local_batch,
        process_count,
        reader.steps_per_epoch,
        f"{dropped} examples dropped per epoch" if drop_remainder else "last batch padded",
        "shuffled each epoch" if shuffle else "in order",
        mode,
        num_workers,
        workers_reason,
    )
    loader = LoaderIterator(
        reader, num_epochs=num_epochs, num_workers=num_workers, fingerprint=fingerprint
    )
    loader.workers_reason = workers_reason
    return loader
