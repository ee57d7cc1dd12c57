"""scikit-learn's handwritten digits: the embedded default dataset, built in memory.

``sklearn.datasets.load_digits`` ships 1,797 real 8x8 grayscale digits (values 0..16) inside the
scikit-learn package, so this dataset needs no network and no prepare step. For the networks the
images become uint8 RGB 32x32:

* values are scaled to 0..255 (``round(v * 255 / 16)``);
* upscaled 8 -> 32 with PIL's bilinear filter (half-pixel centres, edges clamped): smoother than
  nearest-neighbour blocks, which matters once the random-resized crop resamples them again;
* the gray channel is repeated three times.

The test split holds 30 examples of each class (300), chosen by a fixed permutation
(``np.random.default_rng(0)``) within each class; the other 1,497 are the train split. Both splits
keep the original order of ``load_digits``. Channel statistics come from the train split.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from PIL import Image

NAME = "digits"
IMAGE_SIZE = 32
TEST_PER_CLASS = 30
SPLIT_SEED = 0
CLASS_NAMES = tuple(str(d) for d in range(10))


def upscale(images8: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Scales 8x8 digits (0..16) to uint8 RGB images of ``size`` x ``size``.

    Args:
      images8: float array [N, 8, 8] with values in [0, 16].
      size: output side.

    Returns:
      uint8 array [N, size, size, 3].
    """
    gray = np.round(np.asarray(images8, np.float64) * (255.0 / 16.0)).astype(np.uint8)
    out = np.empty((gray.shape[0], size, size), np.uint8)
    for i, img in enumerate(gray):
        out[i] = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
    return np.repeat(out[..., None], 3, axis=-1)


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Returns the sorted indices of the train and test splits (30 per class in test)."""
    rng = np.random.default_rng(SPLIT_SEED)
    test = []
    for c in range(len(CLASS_NAMES)):
        members = np.flatnonzero(labels == c)
        test.append(rng.permutation(members)[:TEST_PER_CLASS])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return {"train": train, "test": test}


@functools.lru_cache(maxsize=1)
def load_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Returns {split: (uint8 images [n, 32, 32, 3], int32 labels [n])}, built once."""
    # Imported here: scikit-learn takes about a second to import and only this dataset needs it.
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = upscale(digits.images)
    labels = digits.target.astype(np.int32)
    return {split: (images[idx], labels[idx]) for split, idx in split_indices(labels).items()}


def channel_stats() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Returns the per-channel (mean, std) of the train split on the [0, 1] scale."""
    images, _ = load_arrays()["train"]
    x = images.astype(np.float64) / 255.0
    mean = x.mean(axis=(0, 1, 2))
    std = x.std(axis=(0, 1, 2))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


class DigitsSource:
    """Random access to one split of the digits, held in memory.

    Args:
      split: ``train`` or ``test``.
    """

    def __init__(self, split: str):
        splits = load_arrays()
        if split not in splits:
            raise ValueError(
                f"split={split!r} is not a split of digits; use one of {sorted(splits)}."
            )
        self.split = split
        self.images, self.labels = splits[split]

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"DigitsSource(split={self.split!r})"

    def read(self, indices: Sequence[int]) -> list[tuple[np.ndarray, int]]:
        """Returns the (uint8 image [32, 32, 3], label) of the examples at ``indices``."""
        return [(self.images[i], int(self.labels[i])) for i in indices]
