"""Vision Transformer (Dosovitskiy et al. 2021) as timm's ``VisionTransformer``, in Flax Linen.

Pre-norm blocks ``x + Attn(LN(x))``, ``x + MLP(LN(x))`` (Eq. 2-3 of the paper), a class token,
learned position embeddings, a final LayerNorm, and the class-token feature as output (Eq. 4
without the head). Sizes follow timm/DeiT: Tiny 192 wide with 3 heads, Small 384/6, Base
768/12, all 12 blocks deep with MLP ratio 4, LayerNorm epsilon 1e-6, exact (erf) GELU, biases
in the fused ``qkv`` projection. The parameter count of ViT-S/16 at 224 is timm's 21,665,664
and of ViT-B/16 85,798,656 (without the classification head).

Parameter names mirror timm's ``state_dict`` keys, with ``.`` -> ``/`` and ``blocks.{i}`` ->
``blocks_{i}``: ``patch_embed/proj/{kernel,bias}``, ``cls_token``, ``pos_embed``,
``blocks_{i}/norm1``, ``blocks_{i}/attn/qkv``, ``blocks_{i}/attn/proj``, ``blocks_{i}/norm2``,
``blocks_{i}/mlp/fc1``, ``blocks_{i}/mlp/fc2``, ``norm``; LayerNorm ``scale`` is timm's
``weight``. Dense kernels are ``[in, out]`` (timm ``[out, in]``); the patch kernel is
``[p, p, 3, D]`` (timm ``[D, 3, p, p]``); ``qkv``'s outputs are ordered (q|k|v, head, dim)
as timm's.

Initialisation as timm's default (``weight_init=''``): Linear weights normal with std 0.02
(timm's ``trunc_normal_(std=.02)`` truncates at +-2 absolute, i.e. at 100 std: never),
biases zero, position embedding normal(0.02), class token normal(1e-6), patch projection as
PyTorch's default convolution (uniform +-1/sqrt(fan_in)) with a zero bias.
"""

import math
import numbers
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssljax.models.resnet import check_compute_dtype, prepare_images

LN_EPSILON = 1e-6
DENSE_INIT = nn.initializers.normal(stddev=0.02)
# PyTorch's Conv2d default kaiming_uniform(a=sqrt(5)) is uniform(+-1/sqrt(fan_in)).
PATCH_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# (width, depth, heads) of the published sizes (DeiT / timm).
VIT_SIZES = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
}


def _dense(features: int, dtype: Any, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        kernel_init=DENSE_INIT,
        bias_init=nn.initializers.zeros,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


def _layer_norm(dtype: Any, name: str) -> nn.LayerNorm:
    # Flax computes the LayerNorm statistics in float32 whatever `dtype`.
    return nn.LayerNorm(epsilon=LN_EPSILON, dtype=dtype, param_dtype=jnp.float32, name=name)


class PatchEmbed(nn.Module):
    """Non-overlapping ``p x p`` patches linearly embedded (timm's ``PatchEmbed``, Eq. 1).

    Attributes:
      width: Embedding width D.
      patch_size: Patch side p.
      dtype: Compute dtype.
    """

    width: int
    patch_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Maps ``[B, H, W, 3]`` images to ``[B, (H/p)(W/p), D]`` patch tokens."""
        p = self.patch_size
        x = nn.Conv(
            self.width,
            (p, p),
            strides=(p, p),
            padding="VALID",
            kernel_init=PATCH_INIT,
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name="proj",
        )(x)
        # Row-major over (rows, columns), as timm's flatten(2) of [B, D, h, w].
        return x.reshape(x.shape[0], -1, self.width)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (timm's ``Attention``).

    Attributes:
      num_heads: Number of heads; the width must be divisible by it.
      dtype: Compute dtype; the softmax is computed in float32.
    """

    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies softmax(q k^T / sqrt(d_head)) v over the tokens of ``x`` ``[B, N, D]``."""
        batch, tokens, width = x.shape
        head_dim = width // self.num_heads
        qkv = _dense(3 * width, self.dtype, "qkv")(x)
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * head_dim**-0.5
        # Softmax in float32: exp of bfloat16 logits loses the small attention weights.
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, tokens, width)
        return _dense(width, self.dtype, "proj")(out)


class Mlp(nn.Module):
    """Transformer MLP ``fc2(GELU(fc1(x)))`` with exact (erf) GELU as PyTorch's ``nn.GELU``.

    Attributes:
      hidden_dim: Width of the hidden layer (``mlp_ratio * width``).
      dtype: Compute dtype.
    """

    hidden_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the MLP to ``x`` ``[B, N, D]``."""
        y = _dense(self.hidden_dim, self.dtype, "fc1")(x)
        # Flax's default GELU is the tanh approximation; timm uses the exact one.
        y = nn.gelu(y, approximate=False)
        return _dense(x.shape[-1], self.dtype, "fc2")(y)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    Attributes:
      num_heads: Attention heads.
      mlp_ratio: MLP hidden width over the model width.
      dtype: Compute dtype.
    """

    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the block to ``x`` ``[B, N, D]``."""
        x = x + Attention(self.num_heads, self.dtype, name="attn")(
            _layer_norm(self.dtype, "norm1")(x)
        )
        hidden = int(x.shape[-1] * self.mlp_ratio)
        return x + Mlp(hidden, self.dtype, name="mlp")(_layer_norm(self.dtype, "norm2")(x))


def _resize_pos_embed(pos_embed: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """``[1, 1 + g*g, D]`` (square grid g) -> ``[1, 1 + gh*gw, D]``, class entry kept."""
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(
            f"ViT: cannot interpolate a position embedding of {patches.shape[1]} patches (not a "
            "square grid)."
        )
    grid_embed = patches.reshape(side, side, -1)
    # No antialiasing, as torch's F.interpolate(mode="bicubic").
    resized = jax.image.resize(
        grid_embed, (*grid, grid_embed.shape[-1]), method="bicubic", antialias=False
    )
    return jnp.concatenate([cls, resized.reshape(1, grid[0] * grid[1], -1)], axis=1)


class ViT(nn.Module):
    """Vision Transformer backbone returning the final-normed class-token feature.

    The position embedding has one entry per patch of the image size seen at ``init`` (plus
    the class token); applying the parameters to another image size raises ValueError, unless
    ``interpolate_pos_embed`` is set: then the patch grid of the embedding is resized by
    bicubic interpolation to the image's grid, as DINO's ``interpolate_pos_encoding`` does for
    multi-crop's local views (official ``vision_transformer.py``; torch's bicubic kernel uses
    a = -0.75, ``jax.image.resize``'s the Keys a = -0.5, a small difference of smoothness).

    Attributes:
      width: Token width D (192 Tiny, 384 Small, 768 Base).
      depth: Number of blocks (12 for all published sizes).
      num_heads: Attention heads (3, 6, 12); ``width`` must be divisible by it.
      patch_size: Side of the square patches; must divide the image height and width.
      mlp_ratio: MLP hidden width over ``width`` (4).
      interpolate_pos_embed: accept other image sizes than the one seen at ``init`` by
        resizing the position embedding (multi-crop).
      dtype: Compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32, LayerNorm
        statistics and the softmax are computed in float32 and the feature is float32.
    """

    width: int
    depth: int
    num_heads: int
    patch_size: int = 16
    mlp_ratio: float = 4.0
    interpolate_pos_embed: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        # Validate configuration when the module is built, before any tracing.
        for field in ("width", "depth", "num_heads", "patch_size"):
            value = getattr(self, field)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ViT: `{field}` must be a positive integer; got {value!r}.")
        if self.width % self.num_heads:
            raise ValueError(
                f"ViT: `width` ({self.width}) must be divisible by `num_heads` ({self.num_heads})."
            )
        if not self.mlp_ratio > 0:
            raise ValueError(f"ViT: `mlp_ratio` must be > 0; got {self.mlp_ratio!r}.")
        check_compute_dtype(self.dtype, model="ViT")
        super().__post_init__()

    @property
    def num_features(self) -> int:
        """Width of the returned feature (the model width)."""
        return self.width

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        """Computes the class-token feature.

        Args:
          images: ``[B, H, W, C]`` normalised float images, ``C`` in (1, 3) (one channel is
            replicated to three); ``patch_size`` must divide ``H`` and ``W``.
          train: Unused (no dropout, stochastic depth or BatchNorm); kept for the common
            backbone interface.

        Returns:
          ``[B, width]`` float32 features.

        Raises:
          ValueError: On images that are not 4-D float with 1 or 3 channels, whose size the
            patch size does not divide, or whose patch grid differs from the one the
            position embedding was initialised for.
        """
        del train  # This ViT has no dropout, stochastic depth or BatchNorm.
        x = prepare_images(images, self.dtype, model="ViT")
        batch, height, width_px, _ = x.shape
        p = self.patch_size
        if height % p or width_px % p:
            raise ValueError(
                f"ViT: `patch_size` {p} must divide the image height and width; got images of "
                f"{height}x{width_px}. Resize or crop to a multiple of {p}, or pick another patch "
                "size."
            )
        num_tokens = (height // p) * (width_px // p) + 1
        stored = num_tokens
        if self.has_variable("params", "pos_embed"):
            stored = self.get_variable("params", "pos_embed").shape[1]
            if stored != num_tokens and not self.interpolate_pos_embed:
                raise ValueError(
                    f"ViT: the position embedding was initialised for {stored - 1} patches but "
                    f"{height}x{width_px} images with patch size {p} give {num_tokens - 1}. Apply "
                    "the parameters to images of the size used at init."
                )

        x = PatchEmbed(self.width, p, self.dtype, name="patch_embed")(x)
        cls_token = self.param(
            "cls_token", nn.initializers.normal(stddev=1e-6), (1, 1, self.width), jnp.float32
        )
        pos_embed = self.param(
            "pos_embed",
            nn.initializers.normal(stddev=0.02),
            (1, stored, self.width),
            jnp.float32,
        )
        if stored != num_tokens:
            pos_embed = _resize_pos_embed(pos_embed, (height // p, width_px // p))
        cls = jnp.broadcast_to(cls_token, (batch, 1, self.width)).astype(self.dtype)
        x = jnp.concatenate([cls, x], axis=1) + pos_embed.astype(self.dtype)
        for i in range(self.depth):
            x = Block(self.num_heads, self.mlp_ratio, self.dtype, name=f"blocks_{i}")(x)
        x = _layer_norm(self.dtype, "norm")(x)
        return x[:, 0].astype(jnp.float32)
