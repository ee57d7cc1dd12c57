"""ResNet-18/34/50 (He et al. 2016) laid out exactly as torchvision's, in Flax Linen.

The layer order, shapes, paddings and strides are torchvision's ``resnet18/34/50`` (v1.5: in a
Bottleneck the stride sits on the 3x3 convolution), so that parameter counts equal the
published ones and weights can be exported to ``torchvision.models.resnet*`` by renaming and
transposing. The classifier (``fc``) is not part of the backbone: ``__call__`` returns the
globally average-pooled feature, 512 wide for BasicBlock networks and 2048 for Bottleneck
ones (times the ``width`` multiplier).

Parameter names and their torchvision counterparts (a later export maps them mechanically):

=====================================  ===============================================
Flax path (``params`` / ``batch_stats``)  torchvision ``state_dict`` key
=====================================  ===============================================
``conv1/kernel``                       ``conv1.weight``   (transpose HWIO -> OIHW)
``bn1/{scale,bias}``                   ``bn1.{weight,bias}``
``bn1/{mean,var}`` (batch_stats)       ``bn1.{running_mean,running_var}``
``layer{i}_{j}/conv{k}/kernel``        ``layer{i}.{j}.conv{k}.weight``
``layer{i}_{j}/bn{k}/...``             ``layer{i}.{j}.bn{k}....``
``layer{i}_{j}/downsample_conv/kernel``  ``layer{i}.{j}.downsample.0.weight``
``layer{i}_{j}/downsample_bn/...``     ``layer{i}.{j}.downsample.1....``
=====================================  ===============================================

Convolution kernels are ``[kh, kw, in, out]`` in Flax and ``[out, in, kh, kw]`` in PyTorch.
torchvision's ``num_batches_tracked`` has no counterpart (it only matters with
``momentum=None``). One numerical difference remains: PyTorch updates ``running_var`` with the
*unbiased* batch variance (factor n/(n-1)), Flax with the biased one that it also normalises
with; at the batch sizes of pretraining (n = per-replica batch x H x W) the two differ by less
than 1e-3 relative, and only in eval mode.

BatchNorm follows the common ssljax convention: momentum 0.9 and epsilon 1e-5 (PyTorch's
``momentum=0.1, eps=1e-5`` in Flax terms), float32 parameters and statistics whatever the
compute dtype, and no ``axis_name``: under ``jit`` with the batch sharded over a mesh, XLA
computes the statistics over the global batch, which is the SyncBN of the papers.
"""

from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

# torchvision: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"), i.e. a plain
# (untruncated) normal with variance 2 / (out_channels * kh * kw).
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# Channel counts the stems accept. One-channel (grayscale) images are replicated to three
# channels, so every backbone keeps torchvision's 3-channel stem and its weights stay
# interchangeable with torchvision's whatever the dataset.
ACCEPTED_CHANNELS = (1, 3)


def prepare_images(images: jax.Array, dtype: Any, *, model: str) -> jax.Array:
    """Checks the input contract shared by every backbone and casts to the compute dtype.

    Args:
      images: ``[B, H, W, C]`` floating point images, already normalised; ``C`` is 1 or 3.
      dtype: The compute dtype to cast to.
      model: The model's name, for error messages.

    Returns:
      ``[B, H, W, 3]`` images in ``dtype`` (one-channel images replicated to three channels).

    Raises:
      ValueError: If ``images`` is not 4-D, not floating point, or has a channel count other
        than 1 or 3.
    """
    if images.ndim != 4:
        raise ValueError(
            f"{model}: `images` must be [batch, height, width, channels]; got shape "
            f"{tuple(images.shape)}. Add a batch axis for a single image."
        )
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(
            f"{model}: `images` must be floating point (normalised); got dtype {images.dtype}. "
            "Convert and normalise them first, e.g. with ssljax.augment.preprocess_eval."
        )
    channels = images.shape[-1]
    if channels not in ACCEPTED_CHANNELS:
        raise ValueError(
            f"{model}: `images` must have 1 (grayscale) or 3 (RGB) channels in the last axis; "
            f"got shape {tuple(images.shape)}. Images must be channels-last (NHWC)."
        )
    images = images.astype(dtype)
    if channels == 1:
        images = jnp.broadcast_to(images, (*images.shape[:-1], 3))
    return images


def check_compute_dtype(dtype: Any, *, model: str) -> None:
    """Raises ValueError unless ``dtype`` is a floating point compute dtype."""
    try:
        ok = jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(
            f"{model}: `dtype` must be a floating point dtype such as jnp.float32 or "
            f"jnp.bfloat16; got {dtype!r}."
        )


def _conv(dtype: Any, features: int, kernel: int, stride: int, name: str) -> nn.Conv:
    """A bias-free convolution with torchvision's padding and initialisation."""
    # Explicit symmetric padding = PyTorch's `padding=kernel // 2`. 'SAME' would pad (2, 3)
    # for a stride-2 7x7 on even sizes and shift every feature map by one pixel.
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=CONV_INIT,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


def _bn(dtype: Any, train: bool, name: str, zero_scale: bool = False) -> nn.BatchNorm:
    """BatchNorm with PyTorch's momentum and epsilon, float32 params and statistics."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
        name=name,
    )


class BasicBlock(nn.Module):
    """torchvision ``BasicBlock``: 3x3 conv-BN-ReLU, 3x3 conv-BN, add shortcut, ReLU.

    Attributes:
      planes: Output channels.
      stride: Stride of the first 3x3 convolution (and of the projection shortcut).
      zero_init_residual: Initialise ``bn2``'s scale to zero, so the block starts as identity.
      dtype: Compute dtype.
    """

    expansion: ClassVar[int] = 1

    planes: int
    stride: int = 1
    zero_init_residual: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Applies the block to ``x`` ``[B, H, W, C]``."""
        shortcut = x
        y = _conv(self.dtype, self.planes, 3, self.stride, "conv1")(x)
        y = nn.relu(_bn(self.dtype, train, "bn1")(y))
        y = _conv(self.dtype, self.planes, 3, 1, "conv2")(y)
        y = _bn(self.dtype, train, "bn2", zero_scale=self.zero_init_residual)(y)
        if self.stride != 1 or x.shape[-1] != self.planes * self.expansion:
            shortcut = _conv(
                self.dtype, self.planes * self.expansion, 1, self.stride, "downsample_conv"
            )(x)
            shortcut = _bn(self.dtype, train, "downsample_bn")(shortcut)
        return nn.relu(y + shortcut)


class Bottleneck(nn.Module):
    """torchvision ``Bottleneck`` (ResNet v1.5): 1x1, 3x3 (strided), 1x1 x4, add, ReLU.

    Attributes:
      planes: Bottleneck width; the block outputs ``4 * planes`` channels.
      stride: Stride of the 3x3 convolution (v1.5) and of the projection shortcut.
      zero_init_residual: Initialise ``bn3``'s scale to zero, so the block starts as identity.
      dtype: Compute dtype.
    """

    expansion: ClassVar[int] = 4

    planes: int
    stride: int = 1
    zero_init_residual: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Applies the block to ``x`` ``[B, H, W, C]``."""
        shortcut = x
        y = _conv(self.dtype, self.planes, 1, 1, "conv1")(x)
        y = nn.relu(_bn(self.dtype, train, "bn1")(y))
        y = _conv(self.dtype, self.planes, 3, self.stride, "conv2")(y)
        y = nn.relu(_bn(self.dtype, train, "bn2")(y))
        y = _conv(self.dtype, self.planes * self.expansion, 1, 1, "conv3")(y)
        y = _bn(self.dtype, train, "bn3", zero_scale=self.zero_init_residual)(y)
        if self.stride != 1 or x.shape[-1] != self.planes * self.expansion:
            shortcut = _conv(
                self.dtype, self.planes * self.expansion, 1, self.stride, "downsample_conv"
            )(x)
            shortcut = _bn(self.dtype, train, "downsample_bn")(shortcut)
        return nn.relu(y + shortcut)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}
STEMS = ("imagenet", "cifar")


class ResNet(nn.Module):
    """ResNet backbone without classifier, returning the average-pooled feature.

    Stems: ``'imagenet'`` is torchvision's 7x7/2 convolution (padding 3), BN, ReLU and a 3x3/2
    max-pool (padding 1); ``'cifar'`` is the 3x3/1 convolution (padding 1), BN and ReLU with no
    max-pool used for 32x32 images by SimSiam, solo-learn and others.

    Attributes:
      stage_sizes: Blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18, ``(3, 4, 6, 3)`` for
        ResNet-34/50. Stage ``i`` (1-based) has ``base * 2**(i-1)`` planes and stride 2 except
        the first.
      block: ``'basic'`` (ResNet-18/34) or ``'bottleneck'`` (ResNet-50 and deeper).
      width: Multiplier of the base 64 channels (``base = round(64 * width)``); 1.0 is the
        published network, smaller values give cheap CPU networks.
      stem: ``'imagenet'`` or ``'cifar'``.
      zero_init_residual: Zero-initialise the last BN scale of every residual block
        (torchvision's ``zero_init_residual``; SimSiam, Barlow Twins and VICReg set it).
      dtype: Compute dtype (e.g. ``jnp.bfloat16``); parameters and BN statistics stay float32
        and the returned features are float32.
    """

    stage_sizes: Sequence[int]
    block: str = "basic"
    width: float = 1.0
    stem: str = "imagenet"
    zero_init_residual: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        # Validate configuration when the module is built, before any tracing.
        if self.block not in BLOCKS:
            raise ValueError(
                f"ResNet: `block` must be one of {sorted(BLOCKS)}; got {self.block!r}."
            )
        if self.stem not in STEMS:
            raise ValueError(f"ResNet: `stem` must be one of {list(STEMS)}; got {self.stem!r}.")
        sizes = tuple(self.stage_sizes)
        if len(sizes) != 4 or any(int(n) != n or n < 1 for n in sizes):
            raise ValueError(
                "ResNet: `stage_sizes` must be four positive integers (torchvision's layer1..4), "
                f"e.g. (2, 2, 2, 2); got {self.stage_sizes!r}."
            )
        # A tuple keeps the module hashable (jit static arguments) when a config passes a list.
        object.__setattr__(self, "stage_sizes", tuple(int(n) for n in sizes))
        if not self.width > 0 or round(64 * self.width) < 1:
            raise ValueError(
                f"ResNet: `width` must be > 0 with round(64 * width) >= 1; got {self.width!r}."
            )
        check_compute_dtype(self.dtype, model="ResNet")
        super().__post_init__()

    @property
    def base_channels(self) -> int:
        """Channels of the stem and of ``layer1``'s planes (64 at width 1)."""
        return int(round(64 * self.width))

    @property
    def num_features(self) -> int:
        """Width of the returned feature (512 for ResNet-18/34, 2048 for ResNet-50)."""
        return self.base_channels * 8 * BLOCKS[self.block].expansion

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        """Computes pooled features.

        Args:
          images: ``[B, H, W, C]`` normalised float images, ``C`` in (1, 3); one-channel images
            are replicated to three channels.
          train: Use batch statistics in BatchNorm and update the running averages (the
            ``batch_stats`` collection must then be mutable); else use the running averages.

        Returns:
          ``[B, num_features]`` float32 features.

        Raises:
          ValueError: On images that are not 4-D float with 1 or 3 channels.
        """
        x = prepare_images(images, self.dtype, model="ResNet")
        base = self.base_channels
        if self.stem == "imagenet":
            x = _conv(self.dtype, base, 7, 2, "conv1")(x)
            x = nn.relu(_bn(self.dtype, train, "bn1")(x))
            # torchvision MaxPool2d(3, 2, padding=1) pads with -inf, as does Flax's max_pool.
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            x = _conv(self.dtype, base, 3, 1, "conv1")(x)
            x = nn.relu(_bn(self.dtype, train, "bn1")(x))
        block_cls = BLOCKS[self.block]
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                x = block_cls(
                    planes=base * 2**i,
                    stride=2 if i > 0 and j == 0 else 1,
                    zero_init_residual=self.zero_init_residual,
                    dtype=self.dtype,
                    name=f"layer{i + 1}_{j}",
                )(x, train)
        # Pool in float32: the feature feeds the heads and the online probe.
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
