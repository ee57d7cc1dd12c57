"""Image augmentations for joint-embedding SSL, as pure, vectorised, jittable JAX.

The pipeline of one view is that of BYOL (Grill et al. 2020, Appendix B, Table 6), itself
SimCLR's (Chen et al. 2020, Appendix A) plus solarisation, with every operation defined as
torchvision defines it for float tensors:

1. random resized crop (torchvision ``RandomResizedCrop.get_params``: up to 10 tries, then
   the central crop), resized to ``output_size`` by antialiased bilinear resampling;
2. horizontal flip with ``flip_prob``;
3. colour jitter with ``jitter_prob``: brightness, contrast, saturation and hue in a random
   order, factors drawn as ``ColorJitter.get_params`` draws them, clipped to [0, 1] after
   each operation;
4. grayscale with ``grayscale_prob`` (ITU-R 601-2 luma, replicated to 3 channels);
5. Gaussian blur with ``blur_prob``, sigma ~ U[blur_sigma], separable, odd kernel of about a
   tenth of the image size (23 at 224, as BYOL);
6. solarisation with ``solarize_prob``: x -> 1 - x where x >= 0.5;
7. normalisation (x - mean) / std with the dataset's mean and std on the [0, 1] scale.

Everything is per example and vmapped over the batch. Random decisions are masks
(``jnp.where``), never data-dependent control flow, so XLA vectorises the batch on any
accelerator. The key of an example is ``fold_in(fold_in(rng, view_index), global_index)``
where the global index is the example's position in the global batch (``jnp.arange(B)``
under ``jit`` on a sharded array), so the output does not depend on how the batch is sharded.

Where the module departs from a reference implementation, on purpose:

* Resize: antialiased bilinear, exactly the PIL / torchvision ``antialias=True`` kernel
  (triangle filter widened by the downscale factor, restricted to the crop, renormalised).
  torchvision's default is ``antialias=True`` for tensors and PIL always antialiases, so this
  matches both. The official BYOL code resizes bicubic without antialiasing
  (``tf.image.resize``, unclamped); VICReg uses torchvision's bicubic.
* Blur: reflect padding (torchvision ``GaussianBlur``, edge pixel not repeated). The official
  BYOL code pads with zeros (``'SAME'`` convolution), which darkens borders; SimCLR/MoCo-style
  PyTorch code blurs with PIL's ``ImageFilter.GaussianBlur`` (box-blur approximation, no
  kernel-size limit).
* Grayscale weights 0.299, 0.587, 0.114 (PIL ``convert('L')``); torchvision and the BYOL code
  use 0.2989 for red, a difference below 1e-4.
* Contrast uses the exact mean of the float grayscale image, as torchvision does for float
  tensors; PIL rounds the grayscale pixels and their mean to integers (a difference of at
  most about 0.5/255 in the blend target).
* Saturation blends with the grayscale image (torchvision), whereas the BYOL code scales S in
  HSV (TensorFlow's ``adjust_saturation``); brightness multiplies (torchvision) whereas the
  BYOL code adds a delta.

Example:
    >>> fn = build_augment(
    ...     cifar_views(), output_size=32, mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.243, 0.261)
    ... )
    >>> images = jnp.zeros((8, 32, 32, 3), jnp.uint8)
    >>> view1, view2 = jax.jit(fn)(jax.random.key(0), images)
    >>> view1.shape, view1.dtype
    ((8, 32, 32, 3), dtype('float32'))
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# The one place that holds default values; presets below override them explicitly.
VIEW_DEFAULTS: dict[str, Any] = {
    "crop_scale": (0.08, 1.0),
    "crop_ratio": (3.0 / 4.0, 4.0 / 3.0),
    "flip_prob": 0.5,
    "jitter_prob": 0.8,
    "brightness": 0.4,
    "contrast": 0.4,
    "saturation": 0.2,
    "hue": 0.1,
    "grayscale_prob": 0.2,
    "blur_prob": 1.0,
    "blur_sigma": (0.1, 2.0),
    "solarize_prob": 0.0,
}

_PROB_KEYS = ("flip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob")
_RANGE_KEYS = ("crop_scale", "crop_ratio", "blur_sigma")
_STRENGTH_KEYS = ("brightness", "contrast", "saturation", "hue")

# ITU-R 601-2 luma, as PIL's convert('L').
GRAY_WEIGHTS = (0.299, 0.587, 0.114)

# torchvision RandomResizedCrop.get_params tries this many boxes before the central crop.
_NUM_CROP_TRIES = 10

# Colour-jitter operation indices, in torchvision's ColorJitter order.
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = 0, 1, 2, 3

# On TPU the default matmul precision rounds operands to bfloat16 (~3 significant digits);
# the resampling matrices are small, so pay for exact float32.
_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------
# Presets: each returns a fresh list of view configs (one dict per view).
# ----------------------------------------------------------------------------------------


def byol_views() -> list[dict[str, Any]]:
    """BYOL's asymmetric views (Grill et al. 2020, Table 6); VICReg and Barlow Twins reuse them.

    View 1: blur p = 1.0, solarise p = 0.0. View 2: blur p = 0.1, solarise p = 0.2.
    Crop scale (0.08, 1), jitter (0.4, 0.4, 0.2, 0.1) with p = 0.8, grayscale p = 0.2.

    Returns:
        A list of two view-config dicts.
    """
    return [
        dict(VIEW_DEFAULTS, blur_prob=1.0, solarize_prob=0.0),
        dict(VIEW_DEFAULTS, blur_prob=0.1, solarize_prob=0.2),
    ]


def simsiam_views() -> list[dict[str, Any]]:
    """SimSiam's symmetric views (Chen & He 2021; MoCo v2 augmentation, ``main_simsiam.py``).

    Crop scale (0.2, 1), jitter (0.4, 0.4, 0.4, 0.1) with p = 0.8, grayscale p = 0.2, blur
    p = 0.5 on both views, no solarisation.

    Returns:
        A list of two identical view-config dicts.
    """
    view = dict(
        VIEW_DEFAULTS, crop_scale=(0.2, 1.0), saturation=0.4, blur_prob=0.5, solarize_prob=0.0
    )
    return [dict(view), dict(view)]


def cifar_views() -> list[dict[str, Any]]:
    """BYOL views as CIFAR reproductions set them: no blur at 32x32, solarise p = 0.0 / 0.2.

    As solo-learn's ``scripts/pretrain/cifar/augmentations/asymmetric.yaml`` (used by its
    CIFAR BYOL config): crop scale (0.08, 1), jitter (0.4, 0.4, 0.2, 0.1) with p = 0.8,
    grayscale p = 0.2, blur p = 0 on both views, solarise p = 0.0 and 0.2.

    Returns:
        A list of two view-config dicts.
    """
    return [
        dict(VIEW_DEFAULTS, blur_prob=0.0, solarize_prob=0.0),
        dict(VIEW_DEFAULTS, blur_prob=0.0, solarize_prob=0.2),
    ]


def dino_local_view() -> dict[str, Any]:
    """DINO's local crop (Caron et al. 2021, sec. 3.1; ``main_dino.py`` DataAugmentationDINO).

    ``local_transfo``: RandomResizedCrop at scale (0.05, 0.4), flip, jitter (0.4, 0.4, 0.2, 0.1)
    with p = 0.8, grayscale p = 0.2, blur p = 0.5, no solarisation; the size is
    ``augment.local_image_size`` (96 px on ImageNet).

    Returns:
        One view-config dict, for ``augment.local_view``.
    """
    return dict(VIEW_DEFAULTS, crop_scale=(0.05, 0.4), blur_prob=0.5, solarize_prob=0.0)


VIEW_PRESETS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "byol": byol_views,
    "vicreg": byol_views,
    "barlow_twins": byol_views,
    "simsiam": simsiam_views,
    "cifar": cifar_views,
}


# ----------------------------------------------------------------------------------------
# Validation (build time).
# ----------------------------------------------------------------------------------------


def _as_dict(config: Any, name: str) -> dict[str, Any]:
    if hasattr(config, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise ValueError(
            f"{name} must be a dict or ConfigDict of view settings, got {type(config).__name__}."
        )
    return dict(config)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} = {value!r} must be a number.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} = {value!r} must be finite.")
    return value


def validate_view_config(config: Any, *, name: str = "view_config") -> dict[str, Any]:
    """Checks one view config and fills in defaults from ``VIEW_DEFAULTS``.

    Args:
        config: dict or ConfigDict with a subset of the keys of ``VIEW_DEFAULTS``.
        name: how to name the config in error messages, e.g. ``"view_configs[1]"``.

    Returns:
        A new dict holding every key of ``VIEW_DEFAULTS``: floats, and (low, high) tuples.

    Raises:
        ValueError: naming the key, for an unknown key, a probability outside [0, 1], an
            inverted or out-of-domain range, or a negative jitter strength.
    """
    config = _as_dict(config, name)
    unknown = sorted(set(config) - set(VIEW_DEFAULTS))
    if unknown:
        raise ValueError(
            f"{name} has unknown key(s) {unknown}; the valid keys are {sorted(VIEW_DEFAULTS)}."
        )
    out = dict(VIEW_DEFAULTS, **config)
    for key in _PROB_KEYS:
        p = _number(out[key], f"{name}['{key}']")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name}['{key}'] = {p} must be a probability in [0, 1].")
        out[key] = p
    for key in _RANGE_KEYS:
        value = out[key]
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
            raise ValueError(f"{name}['{key}'] = {value!r} must be a (low, high) pair.")
        lo = _number(value[0], f"{name}['{key}'][0]")
        hi = _number(value[1], f"{name}['{key}'][1]")
        if lo > hi:
            raise ValueError(
                f"{name}['{key}'] = ({lo}, {hi}) is inverted; give (low, high) with low <= high."
            )
        if lo <= 0.0:
            raise ValueError(f"{name}['{key}'] = ({lo}, {hi}) must be positive.")
        if key == "crop_scale" and hi > 1.0:
            raise ValueError(
                f"{name}['crop_scale'] = ({lo}, {hi}) is a fraction of the image area: "
                "keep it within (0, 1]."
            )
        out[key] = (lo, hi)
    for key in _STRENGTH_KEYS:
        value = _number(out[key], f"{name}['{key}']")
        if value < 0.0:
            raise ValueError(f"{name}['{key}'] = {value} must be >= 0 (0 disables it).")
        if key == "hue" and value > 0.5:
            raise ValueError(f"{name}['hue'] = {value} must be in [0, 0.5] (torchvision's range).")
        out[key] = value
    return out


def _check_output_size(output_size: Any) -> int:
    if isinstance(output_size, bool) or not isinstance(output_size, (int, np.integer)):
        raise ValueError(f"output_size = {output_size!r} must be a positive int (square output).")
    if output_size <= 0:
        raise ValueError(f"output_size = {output_size} must be positive.")
    return int(output_size)


def _check_mean_std(mean: Any, std: Any) -> tuple[np.ndarray, np.ndarray]:
    mean_arr = np.asarray(mean, dtype=np.float32)
    std_arr = np.asarray(std, dtype=np.float32)
    for name, arr in (("mean", mean_arr), ("std", std_arr)):
        if arr.shape != (3,):
            raise ValueError(f"{name} must hold one value per RGB channel, got shape {arr.shape}.")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} = {arr.tolist()} must be finite.")
    if np.any(std_arr <= 0):
        raise ValueError(f"std = {std_arr.tolist()} must be positive.")
    if np.any(mean_arr < 0) or np.any(mean_arr > 1) or np.any(std_arr > 1):
        raise ValueError(
            f"mean = {mean_arr.tolist()}, std = {std_arr.tolist()} must be on the [0, 1] scale "
            "of the augmented images; divide 0-255 statistics by 255."
        )
    return mean_arr, std_arr


def _check_images(images: Any, *, rank: int, what: str) -> jax.Array:
    """Trace-time check of rank, channels and dtype; returns float32 images in [0, 1]."""
    images = jnp.asarray(images)
    if images.ndim != rank:
        raise ValueError(f"images must be {what}, got shape {images.shape}.")
    if images.shape[-1] != 3:
        hint = (
            " For grayscale images repeat the channel, e.g. "
            "jnp.repeat(images, 3, axis=-1), or convert them to RGB in the loader."
            if images.shape[-1] == 1
            else ""
        )
        raise ValueError(
            f"images must have 3 (RGB) channels in the last axis, got {images.shape[-1]} "
            f"(shape {images.shape}).{hint}"
        )
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    if jnp.issubdtype(images.dtype, jnp.floating):
        return images.astype(jnp.float32)
    raise ValueError(
        f"images must be uint8 in [0, 255] or float in [0, 1], got dtype {images.dtype}."
    )


# ----------------------------------------------------------------------------------------
# Per-image operations on float32 [H, W, 3] images in [0, 1] (public, tested one by one).
# ----------------------------------------------------------------------------------------


def _gray(image: jax.Array) -> jax.Array:
    """Luma [H, W, 1]; elementwise (not a matmul) so it stays exact on TPU."""
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b)[..., None]


def to_grayscale(image: jax.Array) -> jax.Array:
    """Luma L = 0.299 R + 0.587 G + 0.114 B replicated to 3 channels (torchvision Grayscale).

    Args:
        image: float [H, W, 3] in [0, 1].

    Returns:
        float [H, W, 3].
    """
    return jnp.broadcast_to(_gray(image), image.shape)


def _blend(image: jax.Array, other: jax.Array, factor: jax.Array) -> jax.Array:
    # torchvision _blend: (factor * img + (1 - factor) * other).clamp(0, 1).
    return jnp.clip(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Blends with black: clip(f * x, 0, 1) (torchvision ``adjust_brightness``).

    Args:
        image: float [H, W, 3] in [0, 1].
        factor: scalar brightness factor f >= 0.

    Returns:
        float [H, W, 3] in [0, 1].
    """
    return _blend(image, 0.0, factor)


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Blends with the mean of the grayscale image: clip(f x + (1 - f) mean(L(x)), 0, 1).

    Args:
        image: float [H, W, 3] in [0, 1].
        factor: scalar contrast factor f >= 0.

    Returns:
        float [H, W, 3] in [0, 1] (torchvision ``adjust_contrast``).
    """
    return _blend(image, jnp.mean(_gray(image)), factor)


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
    """Blends with the grayscale image: clip(f x + (1 - f) L(x), 0, 1).

    Args:
        image: float [H, W, 3] in [0, 1].
        factor: scalar saturation factor f >= 0.

    Returns:
        float [H, W, 3] in [0, 1] (torchvision ``adjust_saturation``).
    """
    return _blend(image, _gray(image), factor)


def adjust_hue(image: jax.Array, delta: jax.Array) -> jax.Array:
    """Rotates hue in HSV: H -> (H + delta) mod 1, S and V unchanged (torchvision ``adjust_hue``).

    H is computed as torchvision's ``_rgb2hsv``. The way back avoids HSV's six-way sector
    select: with chroma C = V S = max - min, channel n in {R: 5, G: 3, B: 1} is
    V - C clip(min(k, 4 - k), 0, 1), k = (n + 6 H) mod 6 (the closed form of the same
    piecewise-linear map, e.g. Wikipedia "HSL and HSV", "HSV to RGB alternative").

    Args:
        image: float [H, W, 3] in [0, 1].
        delta: scalar hue shift in [-0.5, 0.5] (a fraction of the colour circle).

    Returns:
        float [H, W, 3] in [0, 1].
    """
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    maxc = jnp.maximum(jnp.maximum(r, g), b)
    minc = jnp.minimum(jnp.minimum(r, g), b)
    chroma = maxc - minc
    # Grey pixels have no hue; the divisor guard keeps them finite (their H is 0, C is 0).
    inv_chroma = 1.0 / jnp.where(chroma > 0, chroma, 1.0)
    # Which channel is the maximum, ties to R then G as torchvision. Decided by comparing the
    # channels, not by `maxc == r`: XLA may recompute r in another fusion with different FMA
    # contraction, and an exact-equality test then fails for every channel (seen under
    # sharding: the wrong sector, errors near 1). Comparisons only err by rounding, where the
    # two sectors' formulas agree.
    is_r = (r >= g) & (r >= b)
    is_g = ~is_r & (g >= b)
    # 6 H in [-1, 5): torchvision's bc - gc, 2 + rc - bc, 4 + gc - rc, simplified.
    h6 = jnp.where(
        is_r,
        (g - b) * inv_chroma,
        jnp.where(is_g, 2.0 + (b - r) * inv_chroma, 4.0 + (r - g) * inv_chroma),
    )
    h6 = h6 + 6.0 * delta
    # Modulo by floor, not jnp.mod: XLA:CPU lowers rem to a scalar fmod call per element.
    h6 = h6 - 6.0 * jnp.floor(h6 / 6.0)  # [0, 6]
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = n + h6
        k = jnp.where(k >= 6.0, k - 6.0, k)
        channels.append(maxc - chroma * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0))
    return jnp.clip(jnp.stack(channels, axis=-1), 0.0, 1.0)


def solarize(image: jax.Array, threshold: float = 0.5) -> jax.Array:
    """Inverts pixels at or above the threshold: x -> 1 - x where x >= 0.5 (BYOL Table 6).

    Args:
        image: float [..., 3] in [0, 1].
        threshold: inversion threshold (0.5 = PIL's 128 on uint8).

    Returns:
        float, same shape.
    """
    return jnp.where(image >= threshold, 1.0 - image, image)


def blur_radius(image_size: int) -> int:
    """Half-width of the blur kernel: int(size / 10 / 2), so the kernel 2r + 1 is odd.

    As the BYOL code (kernel ~ size / 10; 23 at 224, 3 at 32); 0 (no blur) below 20 pixels.

    Args:
        image_size: side of the (square) augmented image.

    Returns:
        The radius r >= 0.
    """
    return int(image_size / 10.0 / 2.0)


def _blur_matrix(sigma: jax.Array, size: int, radius: int) -> jax.Array:
    """[size, size] matrix of the 1-D Gaussian convolution, reflect padding folded in.

    out[o] = sum_t k(t) x[reflect(o + t)], t = -radius..radius, k(t) = exp(-t^2 / 2 sigma^2) / Z,
    reflect(j) = -j below 0 and 2 (size - 1) - j above size - 1 (edge pixel not repeated).
    Source j lands on column i = reflect(j), so M[o, i] = k(i - o) + [i >= 1] k(-i - o)
    + [i <= size - 2] k(2 (size - 1) - i - o), with k(d) = 0 for |d| > radius
    (radius < size, so a tap is reflected at most once).
    """
    o = jnp.arange(size, dtype=jnp.float32)[:, None]
    i = jnp.arange(size, dtype=jnp.float32)[None, :]

    def k(d):
        return jnp.where(jnp.abs(d) <= radius, jnp.exp(-0.5 * jnp.square(d / sigma)), 0.0)

    t = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    norm = jnp.sum(jnp.exp(-0.5 * jnp.square(t / sigma)))
    m = k(i - o) + jnp.where(i >= 1, k(-i - o), 0.0)
    m = m + jnp.where(i <= size - 2, k(2.0 * (size - 1) - i - o), 0.0)
    return m / norm


def gaussian_blur(image: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
    """Separable Gaussian blur with reflect padding (torchvision ``gaussian_blur``).

    Kernel k(t) = exp(-t^2 / (2 sigma^2)) / sum, t = -radius..radius, applied along H then W.
    Reflect padding mirrors about the edge pixel without repeating it (PyTorch 'reflect',
    NumPy 'reflect', SciPy 'mirror').

    Short kernels (up to 5 taps, e.g. 3 at 32x32) are shifted multiply-adds; longer ones a
    product with a banded matrix that holds the padding. Measured on this project's 2-core CPU
    (vmapped batch): 3 taps at 32x32, shifted adds 2x faster; 7-13 taps at 64-128, the matrix
    1.2-1.5x faster; 23 taps at 224, within 15% of each other either way; a depthwise
    convolution 5x slower than both. The matrix form also runs on a TPU's matrix unit.

    Args:
        image: float [H, W, C].
        sigma: scalar standard deviation in pixels (traced is fine).
        radius: static kernel half-width; must be smaller than H and W.

    Returns:
        float [H, W, C].
    """
    if radius <= 0:
        return image
    height, width = image.shape[0], image.shape[1]
    if radius <= 2:
        t = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
        kernel = jnp.exp(-0.5 * jnp.square(t / sigma))
        kernel = kernel / jnp.sum(kernel)
        padded = jnp.pad(image, ((radius, radius), (0, 0), (0, 0)), mode="reflect")
        out = sum(kernel[i] * padded[i : i + height] for i in range(2 * radius + 1))
        padded = jnp.pad(out, ((0, 0), (radius, radius), (0, 0)), mode="reflect")
        return sum(kernel[i] * padded[:, i : i + width] for i in range(2 * radius + 1))
    blur_h = _blur_matrix(sigma, height, radius)
    blur_w = blur_h if width == height else _blur_matrix(sigma, width, radius)
    out = jnp.einsum("oh,hwc->owc", blur_h, image, precision=_HIGHEST)
    return jnp.einsum("pw,owc->opc", blur_w, out, precision=_HIGHEST)


def _resample_weights(start: jax.Array, length: jax.Array, in_size: int, out_size: int):
    """[out_size, in_size] antialiased bilinear weights for the span [start, start + length).

    PIL's ``ImagingResample`` (and torch's ``_upsample_bilinear2d_aa``): output pixel o has
    centre c = start + (o + 0.5) s in input coordinates, s = length / out_size; input pixel k
    gets weight tri((k + 0.5 - c) / max(s, 1)), tri(u) = max(0, 1 - |u|), only inside the
    span, renormalised to sum 1. Upscaling (s < 1) reduces to half-pixel bilinear with edge
    clamping; downscaling widens the triangle by s, which is the antialiasing.
    """
    start = jnp.asarray(start, jnp.float32)
    length = jnp.asarray(length, jnp.float32)
    scale = length / out_size
    support = jnp.maximum(scale, 1.0)
    centres = start + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale
    pos = jnp.arange(in_size, dtype=jnp.float32) + 0.5
    weights = jnp.maximum(0.0, 1.0 - jnp.abs(pos[None, :] - centres[:, None]) / support)
    inside = (pos > start) & (pos < start + length)
    weights = jnp.where(inside[None, :], weights, 0.0)
    return weights / jnp.sum(weights, axis=1, keepdims=True)


def resized_crop(
    image: jax.Array, box: jax.Array, output_size: int, *, flip: jax.Array | bool = False
) -> jax.Array:
    """Crops ``box`` and resizes it to a square, antialiased bilinear (torchvision resized_crop).

    Implemented as two resampling matrices (out = W_y x W_x^T per channel), which keeps the
    box dynamic under jit and vmap. A horizontal flip is folded in by reversing W_x.

    Args:
        image: float [H, W, C].
        box: int [4] = (top, left, height, width), inside the image; may be traced.
        output_size: static side of the output.
        flip: scalar bool, mirror the output left-right.

    Returns:
        float32 [output_size, output_size, C].
    """
    box = jnp.asarray(box)
    wy = _resample_weights(box[0], box[2], image.shape[0], output_size)
    wx = _resample_weights(box[1], box[3], image.shape[1], output_size)
    wx = jnp.where(flip, wx[::-1], wx)
    out = jnp.einsum("oh,hwc->owc", wy, image, precision=_HIGHEST)
    return jnp.einsum("pw,owc->opc", wx, out, precision=_HIGHEST)


# ----------------------------------------------------------------------------------------
# Random parameters of one view.
# ----------------------------------------------------------------------------------------


def central_crop_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, ...]:
    """The fallback box of torchvision after 10 failed tries: the central crop, ratio clamped.

    Args:
        height: image height.
        width: image width.
        ratio: (low, high) aspect ratio (width / height) bounds.

    Returns:
        (top, left, height, width) as Python ints (``round`` is half-to-even, as torchvision).
    """
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


def _uniform(u: jax.Array, lo: float, hi: float) -> jax.Array:
    return lo + (hi - lo) * u


def _sample_crop_box(u: jax.Array, height: int, width: int, cfg: dict[str, Any]) -> jax.Array:
    """Samples a box by torchvision's ``RandomResizedCrop.get_params``, vectorised over 10 tries.

    Try t draws area fraction s_t ~ U[scale] and log aspect ratio ~ U[log ratio];
    w = round(sqrt(A s_t r_t)), h = round(sqrt(A s_t / r_t)). The first try with
    0 < w <= W and 0 < h <= H wins and its top-left corner is uniform over the valid
    positions; if none does, the central crop. All 10 are drawn and the first valid one picked
    with argmax, which has the same distribution as drawing them one at a time.

    Args:
        u: 2 * 10 + 2 independent U[0, 1) numbers.
        height: image height.
        width: image width.
        cfg: validated view config.
    """
    n = _NUM_CROP_TRIES
    lo_s, hi_s = cfg["crop_scale"]
    lo_r, hi_r = cfg["crop_ratio"]
    target = float(height * width) * _uniform(u[:n], lo_s, hi_s)
    aspect = jnp.exp(_uniform(u[n : 2 * n], math.log(lo_r), math.log(hi_r)))
    # jnp.round rounds half to even, as Python's round in torchvision.
    w = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = jnp.argmax(valid)
    found = jnp.any(valid)
    fb_top, fb_left, fb_h, fb_w = central_crop_box(height, width, cfg["crop_ratio"])
    h = jnp.where(found, h[first], fb_h)
    w = jnp.where(found, w[first], fb_w)
    # Uniform integer in [0, H - h] (torch.randint(0, H - h + 1)).
    top = jnp.floor(u[2 * n] * (height - h + 1)).astype(jnp.int32)
    left = jnp.floor(u[2 * n + 1] * (width - w + 1)).astype(jnp.int32)
    top = jnp.where(found, jnp.minimum(top, height - h), fb_top)
    left = jnp.where(found, jnp.minimum(left, width - w), fb_left)
    return jnp.stack([top, left, h, w]).astype(jnp.int32)


# Layout of the per-example uniform draws (one threefry call per example: cheap to compile
# and to run, and every decision independent of the others).
_U_CROP = slice(0, 2 * _NUM_CROP_TRIES + 2)
_U_COINS = 2 * _NUM_CROP_TRIES + 2  # flip, jitter, grayscale, blur, solarize
_U_FACTORS = _U_COINS + 5  # brightness, contrast, saturation, hue
_U_ORDER = _U_FACTORS + 4  # 4 keys whose argsort is the jitter order
_U_SIGMA = _U_ORDER + 4
_NUM_UNIFORMS = _U_SIGMA + 1


def _sample_one(
    key: jax.Array, cfg: dict[str, Any], height: int, width: int, crop: bool
) -> dict[str, jax.Array]:
    u = jax.random.uniform(key, (_NUM_UNIFORMS,))
    if crop:
        box = _sample_crop_box(u[_U_CROP], height, width, cfg)
    else:
        box = jnp.array([0, 0, height, width], jnp.int32)
    # torchvision's `torch.rand(1) < p`: p = 0 never, p = 1 always.
    coins = u[_U_COINS : _U_COINS + 5] < jnp.array([cfg[k] for k in _PROB_KEYS])
    # ColorJitter.get_params: factors ~ U[max(0, 1 - x), 1 + x], hue ~ U[-h, h].
    strengths = [cfg[k] for k in ("brightness", "contrast", "saturation")]
    lows = jnp.array([max(0.0, 1.0 - x) for x in strengths] + [-cfg["hue"]])
    highs = jnp.array([1.0 + x for x in strengths] + [cfg["hue"]])
    factors = lows + (highs - lows) * u[_U_FACTORS : _U_FACTORS + 4]
    # The argsort of i.i.d. uniforms is a uniformly random permutation (torch.randperm(4)).
    order = jnp.argsort(u[_U_ORDER : _U_ORDER + 4])
    flip, jitter, grayscale, blur, solar = (coins[i] for i in range(5))
    return {
        "crop_box": box,
        "flip": flip,
        "jitter": jitter,
        "jitter_factors": factors.astype(jnp.float32),
        "jitter_order": order.astype(jnp.int32),
        "grayscale": grayscale,
        "blur": blur,
        "blur_sigma": _uniform(u[_U_SIGMA], *cfg["blur_sigma"]),
        "solarize": solar,
    }


def example_keys(rng: jax.Array, batch_size: int) -> jax.Array:
    """Per-example keys fold_in(rng, i), i = 0..B-1 the example's index in the global batch.

    Args:
        rng: a PRNG key (raw uint32 or typed).
        batch_size: global batch size B.

    Returns:
        B keys, one per example.
    """
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, jnp.arange(batch_size))


def sample_view_params(
    rng: jax.Array,
    batch_size: int,
    view_config: Any,
    *,
    image_hw: tuple[int, int],
    crop: bool = True,
) -> dict[str, jax.Array]:
    """Draws every random decision of one view, per example (exposed so tests can count them).

    Args:
        rng: the view's key; example i uses ``fold_in(rng, i)``.
        batch_size: global batch size B.
        view_config: a view config (see ``VIEW_DEFAULTS``).
        image_hw: (H, W) of the input images, static.
        crop: sample crop boxes; if False every box is the whole image.

    Returns:
        Dict of arrays with leading axis B: ``crop_box`` int32 [B, 4] (top, left, height,
        width); ``flip``, ``jitter``, ``grayscale``, ``blur``, ``solarize`` bool [B];
        ``jitter_factors`` float32 [B, 4] (brightness, contrast, saturation factors, hue
        shift); ``jitter_order`` int32 [B, 4], a permutation of (0 brightness, 1 contrast,
        2 saturation, 3 hue) giving the order of application; ``blur_sigma`` float32 [B].
    """
    cfg = validate_view_config(view_config)
    height, width = (int(s) for s in image_hw)
    return _sample_batch(
        rng,
        batch_size=int(batch_size),
        cfg_items=_freeze(cfg),
        height=height,
        width=width,
        crop=bool(crop),
    )


def _freeze(cfg: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Hashable form of a validated config, for jit's static arguments."""
    return tuple(sorted(cfg.items()))


# Jitted so that eager callers compile once per configuration instead of once per primitive;
# inside an outer jit the nested jit is simply inlined.
@functools.partial(jax.jit, static_argnames=("batch_size", "cfg_items", "height", "width", "crop"))
def _sample_batch(rng, *, batch_size, cfg_items, height, width, crop):
    cfg = dict(cfg_items)
    keys = example_keys(rng, batch_size)
    return jax.vmap(lambda k: _sample_one(k, cfg, height, width, crop))(keys)


# ----------------------------------------------------------------------------------------
# Applying one view.
# ----------------------------------------------------------------------------------------


def _jitter_blend_round(image: jax.Array, op: jax.Array, factors: jax.Array) -> jax.Array:
    """Brightness, contrast or saturation, picked by ``op``: all three blend x with a target."""
    gray = _gray(image)
    target = jnp.where(op == _BRIGHTNESS, 0.0, jnp.where(op == _CONTRAST, jnp.mean(gray), gray))
    return _blend(image, target, factors[op])


def _color_jitter_hue_once(image, factors, order, cfg):
    """Colour jitter in the order ``order``, computing the costly hue rotation once.

    Three of the four operations are blends (cheap); hue is the HSV round trip. With p the
    position of hue in ``order``, apply the blends at positions < p, then hue, then the blends
    at positions > p: 6 masked blend rounds and 1 hue instead of 4 rounds of all 4 operations.
    Measured on this project's 2-core CPU (``benchmarks/augment.py``, two BYOL views, whole
    pipeline, jitter p = 1): 41 ms vs 338 ms for ``lax.switch`` at 32x32 batch 512, 0.34 s vs
    1.6 s at 224x224 batch 64. Both give the same result (tested).
    """
    hue_pos = jnp.argmax(order == _HUE)
    x = image
    for t in range(3):
        x = jnp.where(t < hue_pos, _jitter_blend_round(x, order[t], factors), x)
    if cfg["hue"] > 0:
        x = adjust_hue(x, factors[_HUE])
    for t in range(1, 4):
        x = jnp.where(t > hue_pos, _jitter_blend_round(x, order[t], factors), x)
    return x


def _color_jitter_switch(image, factors, order, cfg):
    """Colour jitter by ``lax.switch`` on the op of each of the 4 rounds (benchmark baseline).

    Under vmap the switch becomes a select over all four branches, so each round computes all
    four operations.
    """
    del cfg
    branches = [
        lambda x, f: adjust_brightness(x, f[_BRIGHTNESS]),
        lambda x, f: adjust_contrast(x, f[_CONTRAST]),
        lambda x, f: adjust_saturation(x, f[_SATURATION]),
        lambda x, f: adjust_hue(x, f[_HUE]),
    ]
    x = image
    for t in range(4):
        x = jax.lax.switch(order[t], branches, x, factors)
    return x


_JITTER_IMPLS = {"hue_once": _color_jitter_hue_once, "switch": _color_jitter_switch}


def _augment_one(image, params, cfg, output_size, mean, std, jitter_impl):
    """One view of one example; every random choice is a mask, so vmap vectorises it."""
    height, width = image.shape[0], image.shape[1]
    if (height, width) == (output_size, output_size) and not cfg["_crop"]:
        x = jnp.where(params["flip"], image[:, ::-1], image)
    else:
        x = resized_crop(image, params["crop_box"], output_size, flip=params["flip"])
    if cfg["jitter_prob"] > 0:
        jittered = _JITTER_IMPLS[jitter_impl](
            x, params["jitter_factors"], params["jitter_order"], cfg
        )
        x = jnp.where(params["jitter"], jittered, x)
    if cfg["grayscale_prob"] > 0:
        x = jnp.where(params["grayscale"], to_grayscale(x), x)
    radius = blur_radius(output_size)
    if cfg["blur_prob"] > 0 and radius > 0:
        x = jnp.where(params["blur"], gaussian_blur(x, params["blur_sigma"], radius), x)
    if cfg["solarize_prob"] > 0:
        x = jnp.where(params["solarize"], solarize(x), x)
    return (x - mean) / std


def apply_view(
    images: jax.Array,
    params: dict[str, jax.Array],
    view_config: Any,
    *,
    output_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop: bool = True,
    jitter_impl: str = "hue_once",
) -> jax.Array:
    """Applies one view's sampled parameters to a batch (the deterministic half of a view).

    Order: resized crop (with flip folded in), colour jitter, grayscale, blur, solarise,
    normalise, as BYOL Table 6 and torchvision's Compose. Operations whose probability is 0
    in the config are not computed at all.

    Args:
        images: float32 [B, H, W, 3] in [0, 1].
        params: output of ``sample_view_params`` for the same B and (H, W).
        view_config: the view config the params were drawn with.
        output_size: side of the output.
        mean: per-channel mean on the [0, 1] scale.
        std: per-channel std on the [0, 1] scale.
        crop: False if the images are already cropped (the boxes are then the whole image and
            the images are only resized if their size differs from ``output_size``).
        jitter_impl: ``"hue_once"`` (default, faster) or ``"switch"``; identical results.

    Returns:
        float32 [B, output_size, output_size, 3], normalised.
    """
    cfg = dict(validate_view_config(view_config), _crop=bool(crop))
    output_size = _check_output_size(output_size)
    mean_arr, std_arr = _check_mean_std(mean, std)
    if jitter_impl not in _JITTER_IMPLS:
        raise ValueError(f"jitter_impl = {jitter_impl!r} must be one of {sorted(_JITTER_IMPLS)}.")
    return _apply_batch(
        images,
        params,
        cfg_items=_freeze(cfg),
        output_size=output_size,
        mean=tuple(mean_arr.tolist()),
        std=tuple(std_arr.tolist()),
        jitter_impl=jitter_impl,
    )


@functools.partial(
    jax.jit, static_argnames=("cfg_items", "output_size", "mean", "std", "jitter_impl")
)
def _apply_batch(images, params, *, cfg_items, output_size, mean, std, jitter_impl):
    cfg = dict(cfg_items)
    mean_arr = jnp.asarray(mean, jnp.float32)
    std_arr = jnp.asarray(std, jnp.float32)
    fn = lambda x, p: _augment_one(x, p, cfg, output_size, mean_arr, std_arr, jitter_impl)  # noqa: E731
    return jax.vmap(fn)(images, params)


def build_augment(
    view_configs: Sequence[Any],
    *,
    output_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    crop: bool = True,
) -> Callable[..., Any]:
    """Builds the multi-view augmentation ``fn(rng, images) -> tuple of views``, for use in jit.

    Every setting is validated here, at build time; the image shape is checked when ``fn`` is
    traced. View v of example i uses the key ``fold_in(fold_in(rng, v), i)`` with i the index
    in the global batch, so a batch sharded over devices gives the same result as unsharded,
    and adding views (multi-crop's local views after the two global ones; Caron et al. 2020,
    2021) leaves the keys, and so the values, of the earlier views unchanged.

    Args:
        view_configs: one view config per view (dicts or ConfigDicts; see ``VIEW_DEFAULTS``
            and the presets ``byol_views``, ``simsiam_views``, ``cifar_views``).
        output_size: side of the square output views: one size for every view, or one per
            view (multi-crop: e.g. ``[224, 224] + [96] * 10``).
        mean: per-channel dataset mean on the [0, 1] scale.
        std: per-channel dataset std on the [0, 1] scale.
        crop: True: ``images`` is [B, H, W, 3] and each view takes its own random resized
            crop. False: ``images`` is [B, V, S, S, 3], already cropped per view by the loader
            (resized to ``output_size`` if S differs).

    Returns:
        ``fn(rng, images, *, return_params=False)``: images uint8 in [0, 255] or float in
        [0, 1] (float images are not rescaled: 0-255 floats must be divided by 255 first);
        returns a tuple of V float32 [B, S_v, S_v, 3] views (S_v the view's output size), and with
        ``return_params=True`` also a tuple of the per-view parameter dicts
        (``sample_view_params``). ``return_params`` is a Python bool: to jit with it, close
        over it (``jax.jit(functools.partial(fn, return_params=True))``).

    Raises:
        ValueError: for an invalid view config, output size or mean/std (at build time), or
            images of the wrong rank, channel count, dtype or view count (at trace time).
    """
    if isinstance(view_configs, Mapping) or hasattr(view_configs, "to_dict"):
        raise ValueError(
            "view_configs must be a list of view configs (one per view), e.g. byol_views(); "
            "got a single config."
        )
    views = [validate_view_config(c, name=f"view_configs[{i}]") for i, c in enumerate(view_configs)]
    if not views:
        raise ValueError("view_configs is empty; give one config per view, e.g. byol_views().")
    num_views = len(views)
    if isinstance(output_size, Sequence) and not isinstance(output_size, str):
        if len(output_size) != num_views:
            raise ValueError(
                f"output_size gives {len(output_size)} sizes for {num_views} view configs; give "
                "one size, or one per view."
            )
        sizes = [_check_output_size(s) for s in output_size]
    else:
        sizes = [_check_output_size(output_size)] * num_views
    mean_arr, std_arr = _check_mean_std(mean, std)

    def augment(rng: jax.Array, images: jax.Array, *, return_params: bool = False):
        if crop:
            x = _check_images(images, rank=4, what="[batch, height, width, 3]")
        else:
            x = _check_images(
                images, rank=5, what=f"[batch, {num_views} views, size, size, 3] (crop=False)"
            )
            if x.shape[1] != num_views:
                raise ValueError(
                    f"images hold {x.shape[1]} views per example (axis 1) but {num_views} view "
                    f"configs were given (shape {x.shape})."
                )
        batch = x.shape[0]
        outs, all_params = [], []
        for v, (cfg, size) in enumerate(zip(views, sizes, strict=True)):
            src = x if crop else x[:, v]
            params = sample_view_params(
                jax.random.fold_in(rng, v), batch, cfg, image_hw=src.shape[1:3], crop=crop
            )
            outs.append(
                apply_view(
                    src, params, cfg, output_size=size, mean=mean_arr, std=std_arr, crop=crop
                )
            )
            all_params.append(params)
        if return_params:
            return tuple(outs), tuple(all_params)
        return tuple(outs)

    return augment


def preprocess_eval(
    images: jax.Array,
    *,
    output_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    crop_fraction: float = 0.875,
) -> jax.Array:
    """Deterministic evaluation preprocessing: central crop, resize, normalise.

    Images already ``output_size`` square are only normalised (CIFAR). Otherwise the central
    square of side round(min(H, W) * crop_fraction) is resized to ``output_size`` with the
    same antialiased bilinear kernel as training; with the default 0.875 this is the usual
    ImageNet "resize 256, centre crop 224" up to where the resampling happens.

    Args:
        images: uint8 [B, H, W, 3] in [0, 255] or float in [0, 1].
        output_size: side of the output.
        mean: per-channel mean on the [0, 1] scale.
        std: per-channel std on the [0, 1] scale.
        crop_fraction: side of the central crop relative to the shorter image side.

    Returns:
        float32 [B, output_size, output_size, 3], normalised.

    Raises:
        ValueError: for bad sizes, statistics or images.
    """
    output_size = _check_output_size(output_size)
    mean_arr, std_arr = _check_mean_std(mean, std)
    if not 0.0 < float(crop_fraction) <= 1.0:
        raise ValueError(f"crop_fraction = {crop_fraction} must be in (0, 1].")
    x = _check_images(images, rank=4, what="[batch, height, width, 3]")
    height, width = x.shape[1], x.shape[2]
    if (height, width) != (output_size, output_size):
        side = max(1, int(round(min(height, width) * float(crop_fraction))))
        box = jnp.array([(height - side) // 2, (width - side) // 2, side, side], jnp.int32)
        x = jax.vmap(lambda im: resized_crop(im, box, output_size))(x)
    return (x - jnp.asarray(mean_arr)) / jnp.asarray(std_arr)
