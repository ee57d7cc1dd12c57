"""Projector and predictor MLPs with each method's published sizes.

Every head is the same module: for each hidden width, ``Dense -> BatchNorm -> ReLU``; then a
final ``Dense``, optionally followed by a BatchNorm (SimSiam's projector ends with a BN without
affine parameters). Parameters are named ``dense_{i}`` and ``bn_{i}``, ``i`` counting layers
from 0, so the output layer of a 2-layer head is ``dense_1`` (and ``bn_1``).

``PUBLISHED_HEADS`` holds the ImageNet/ResNet-50 configurations of the official code, read
from it line by line (biases included, since they count as parameters and get weight decay):

* BYOL, ``deepmind-research/byol/utils/networks.py`` ``MLP``: ``Linear(with_bias=True) -> BN
  -> ReLU -> Linear(with_bias=False)``, 4096-256 for both projector and predictor.
* SimSiam, ``facebookresearch/simsiam/simsiam/builder.py``: projector ``Linear(bias=False) ->
  BN -> ReLU`` twice, then the encoder's ``fc`` and ``BatchNorm1d(affine=False)``; that ``fc``
  keeps a bias but with ``requires_grad=False`` ("not use bias as followed by BN"), and a BN
  without affine parameters cancels any constant, so it is a bias-free layer here. Its hidden
  width is the backbone's feature width (``prev_dim``: 2048 for ResNet-50, the paper's
  2048-2048-2048). Predictor ``Linear(bias=False) -> BN -> ReLU -> Linear(bias=True)``,
  2048-512-2048.
* VICReg, ``facebookresearch/vicreg/main_vicreg.py`` ``Projector`` (the paper's "expander"):
  ``Linear -> BN -> ReLU`` twice (with bias), then ``Linear(bias=False)``, 8192-8192-8192.
* Barlow Twins, ``facebookresearch/barlowtwins/main.py``: ``Linear(bias=False) -> BN -> ReLU``
  twice, then ``Linear(bias=False)``, 8192-8192-8192. Its ``BatchNorm1d(affine=False)`` on
  each view's projection is part of the loss (the cross-correlation of standardised
  embeddings), not of the projector.

Initialisation of the Dense layers (``MLP.init_scheme``, the config's ``heads.init``), fan_in being
the layer's input width:

* ``'flax'``: Flax's default, LeCun normal (truncated at 2 std and rescaled so that the std is
  1/sqrt(fan_in)), zero bias.
* ``'torch'``: PyTorch's ``nn.Linear.reset_parameters``: the weight
  ``kaiming_uniform_(a=sqrt(5))``, i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (std
  1/sqrt(3 fan_in)), and the bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)). The official SimSiam,
  VICReg and Barlow Twins codes and solo-learn build their heads from ``nn.Linear`` with it.
* ``'haiku'``: ``hk.Linear``'s default, ``TruncatedNormal(stddev=1/sqrt(fan_in))``: a normal
  truncated at 2 std *without* the rescaling (std 0.88/sqrt(fan_in)), zero bias. The official
  BYOL's ``MLP`` (byol/utils/networks.py) uses it.

A BatchNorm follows every hidden Dense, so under a scale-invariant optimizer (LARS) only the
last layer's scale matters; under SGD (SimSiam) the relative step size ||lr g|| / ||w|| of
every layer depends on it (the weights are 1.7x larger with 'flax' than with 'torch').
"""

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssljax.models.resnet import BN_EPSILON, BN_MOMENTUM, check_compute_dtype

# The values of `MLP.init_scheme` (module docstring).
HEAD_INITS = ("flax", "torch", "haiku")


def _uniform(bound: float) -> nn.initializers.Initializer:
    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def dense_inits(scheme: str, fan_in: int) -> dict[str, nn.initializers.Initializer]:
    """The ``kernel_init`` and ``bias_init`` of a Dense layer under an init scheme.

    Args:
      scheme: A key of ``HEAD_INITS``.
      fan_in: The layer's input width.

    Returns:
      ``{'kernel_init': ..., 'bias_init': ...}`` for ``nn.Dense``.

    Raises:
      ValueError: On an unknown scheme.
    """
    bound = 1.0 / math.sqrt(fan_in)
    if scheme == "flax":
        return {"kernel_init": nn.initializers.lecun_normal(), "bias_init": nn.initializers.zeros}
    if scheme == "torch":
        # kaiming_uniform_(a=sqrt(5)): gain sqrt(2 / (1 + 5)), bound gain * sqrt(3 / fan_in).
        return {"kernel_init": _uniform(bound), "bias_init": _uniform(bound)}
    if scheme == "haiku":
        return {
            "kernel_init": nn.initializers.truncated_normal(stddev=bound, lower=-2.0, upper=2.0),
            "bias_init": nn.initializers.zeros,
        }
    raise ValueError(f"Unknown head init {scheme!r}; known: {HEAD_INITS}.")


class MLP(nn.Module):
    """``[Dense -> BN -> ReLU] * len(hidden_dims) -> Dense [-> BN]``.

    BatchNorm: momentum 0.9, epsilon 1e-5 (PyTorch's defaults), float32 parameters and
    statistics, no ``axis_name``: under ``jit`` with the batch sharded over a mesh the
    statistics are those of the global batch (the papers' SyncBN).

    Attributes:
      hidden_dims: Widths of the hidden layers, e.g. ``(4096,)`` for BYOL.
      output_dim: Width of the output layer.
      output_bn: Apply BatchNorm to the output (SimSiam's projector).
      output_bn_affine: Give the output BatchNorm learned scale and bias (SimSiam: False).
      use_bias: Bias in the hidden Dense layers.
      output_use_bias: Bias in the output Dense layer; ``None`` means ``use_bias``.
      init_scheme: Initialisation of the Dense layers, one of ``HEAD_INITS`` (module docstring).
      dtype: Compute dtype; parameters and BN statistics are float32, the output is float32.
    """

    hidden_dims: Sequence[int]
    output_dim: int
    output_bn: bool = False
    output_bn_affine: bool = True
    use_bias: bool = True
    output_use_bias: bool | None = None
    init_scheme: str = "flax"
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        # Validate configuration when the module is built, before any tracing.
        dims = (*tuple(self.hidden_dims), self.output_dim)
        if any(not isinstance(d, numbers.Integral) or isinstance(d, bool) or d < 1 for d in dims):
            raise ValueError(
                "MLP: `hidden_dims` and `output_dim` must be positive integers; got "
                f"hidden_dims={self.hidden_dims!r}, output_dim={self.output_dim!r}."
            )
        check_compute_dtype(self.dtype, model="MLP")
        if self.init_scheme not in HEAD_INITS:
            raise ValueError(
                f"MLP: `init_scheme` must be one of {HEAD_INITS}; got {self.init_scheme!r}."
            )
        # A tuple keeps the module hashable (jit static arguments) when a config passes a list.
        object.__setattr__(self, "hidden_dims", tuple(int(d) for d in self.hidden_dims))
        super().__post_init__()

    def _bn(self, train: bool, name: str, affine: bool = True) -> nn.BatchNorm:
        return nn.BatchNorm(
            use_running_average=not train,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            use_scale=affine,
            use_bias=affine,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name=name,
        )

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Applies the head.

        Args:
          x: ``[B, D_in]`` float features.
          train: Use batch statistics in BatchNorm and update the running averages (the
            ``batch_stats`` collection must then be mutable).

        Returns:
          ``[B, output_dim]`` float32 outputs.

        Raises:
          ValueError: If ``x`` is not a 2-D floating point array.
        """
        if x.ndim != 2 or not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(
                f"MLP: `x` must be a [batch, features] float array; got shape {tuple(x.shape)} "
                f"and dtype {x.dtype}. Flatten or pool the features first."
            )
        y = x.astype(self.dtype)
        for i, dim in enumerate(self.hidden_dims):
            y = nn.Dense(
                dim,
                use_bias=self.use_bias,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                name=f"dense_{i}",
                **dense_inits(self.init_scheme, y.shape[-1]),
            )(y)
            y = nn.relu(self._bn(train, f"bn_{i}")(y))
        last = len(self.hidden_dims)
        output_use_bias = self.use_bias if self.output_use_bias is None else self.output_use_bias
        y = nn.Dense(
            self.output_dim,
            use_bias=output_use_bias,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            name=f"dense_{last}",
            **dense_inits(self.init_scheme, y.shape[-1]),
        )(y)
        if self.output_bn:
            y = self._bn(train, f"bn_{last}", affine=self.output_bn_affine)(y)
        return y.astype(jnp.float32)


class WeightNormDense(nn.Module):
    """A bias-free Dense layer under weight normalisation (Salimans & Kingma 2016).

    ``y = x @ (g * v / ||v||)`` with the norm of each output unit's column of ``v``, as PyTorch's
    ``nn.utils.weight_norm(nn.Linear(..., bias=False))`` (norm over every dimension but the
    output one). With ``learn_scale=False`` there is no ``g``: it stays 1, every output unit a
    unit vector (DINO's ``norm_last_layer=True``, ``weight_g.requires_grad = False``).

    Attributes:
      features: the output width.
      learn_scale: whether ``g`` (one per output unit, initialised to 1) is a parameter.
      dtype: compute dtype; the parameters are float32.
    """

    features: int
    learn_scale: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the layer to ``[B, D_in]`` inputs; returns ``[B, features]``."""
        # PyTorch's nn.Linear default init for v (the official head builds this layer after
        # its trunc_normal init pass); the scale of v cancels in the forward pass anyway.
        v = self.param(
            "kernel",
            dense_inits("torch", x.shape[-1])["kernel_init"],
            (x.shape[-1], self.features),
            jnp.float32,
        )
        w = v / jnp.linalg.norm(v, axis=0, keepdims=True)
        if self.learn_scale:
            w = w * self.param("g", nn.initializers.ones, (self.features,), jnp.float32)
        return jnp.dot(x.astype(self.dtype), w.astype(self.dtype))


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al. 2021, sec. 3.1 and App. "Projection head").

    ``[Dense [-> BN] -> GELU] * len(hidden_dims) -> Dense(bottleneck_dim) -> l2-normalise ->
    WeightNormDense(output_dim)``, BatchNorm only with ``use_bn`` (the official
    ``--use_bn_in_head``, default off): for ViT-S 384 -> 2048 -> 2048 -> 256 -> 65536. The
    Dense layers are initialised as the official ``DINOHead._init_weights``: weights truncated
    normal with std 0.02, biases 0. Parameters: ``dense_{i}`` (``bn_{i}``), ``last_layer/kernel``
    and, without ``norm_last_layer``, ``last_layer/g``.

    Attributes:
      hidden_dims: widths of the hidden layers (the paper: ``(2048, 2048)``, nlayers = 3).
      bottleneck_dim: width before the l2-normalisation (256).
      output_dim: K, the number of prototypes (65536).
      norm_last_layer: keep the last layer's columns unit vectors (no learned ``g``); the
        paper's default, "more stable" (main_dino.py's help text).
      use_bn: BatchNorm after each hidden Dense (``bn_{i}``; global-batch statistics, as
        ``MLP``'s).
      dtype: compute dtype; parameters float32, output float32.
    """

    hidden_dims: Sequence[int]
    bottleneck_dim: int
    output_dim: int
    norm_last_layer: bool = True
    use_bn: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Applies the head to ``[B, D]`` features (``train``: BatchNorm mode, with ``use_bn``)."""
        init = {
            "kernel_init": nn.initializers.truncated_normal(stddev=0.02, lower=-2.0, upper=2.0),
            "bias_init": nn.initializers.zeros,
        }
        y = x.astype(self.dtype)
        dims = (*tuple(self.hidden_dims), self.bottleneck_dim)
        for i, dim in enumerate(dims):
            y = nn.Dense(dim, dtype=self.dtype, param_dtype=jnp.float32, name=f"dense_{i}", **init)(
                y
            )
            if i < len(dims) - 1:
                if self.use_bn:
                    y = nn.BatchNorm(
                        use_running_average=not train,
                        momentum=BN_MOMENTUM,
                        epsilon=BN_EPSILON,
                        dtype=self.dtype,
                        param_dtype=jnp.float32,
                        name=f"bn_{i}",
                    )(y)
                # torch.nn.GELU: the exact (erf) form, not the tanh approximation.
                y = nn.gelu(y, approximate=False)
        # F.normalize(x, dim=-1, p=2): x / max(||x||, 1e-12), in float32.
        y = y.astype(jnp.float32)
        y = y / jnp.maximum(jnp.linalg.norm(y, axis=-1, keepdims=True), 1e-12)
        y = WeightNormDense(
            self.output_dim,
            learn_scale=not self.norm_last_layer,
            dtype=self.dtype,
            name="last_layer",
        )(y)
        return y.astype(jnp.float32)


# MLP keyword arguments of each method's heads, ImageNet/ResNet-50 sizes (see module docstring).
PUBLISHED_HEADS: dict[str, dict[str, dict[str, Any]]] = {
    "byol": {
        "projector": {
            "hidden_dims": (4096,),
            "output_dim": 256,
            "use_bias": True,
            "output_use_bias": False,
        },
        "predictor": {
            "hidden_dims": (4096,),
            "output_dim": 256,
            "use_bias": True,
            "output_use_bias": False,
        },
    },
    "simsiam": {
        "projector": {
            "hidden_dims": (2048, 2048),
            "output_dim": 2048,
            "use_bias": False,
            "output_use_bias": False,
            "output_bn": True,
            "output_bn_affine": False,
        },
        "predictor": {
            "hidden_dims": (512,),
            "output_dim": 2048,
            "use_bias": False,
            "output_use_bias": True,
        },
    },
    "vicreg": {
        "projector": {
            "hidden_dims": (8192, 8192),
            "output_dim": 8192,
            "use_bias": True,
            "output_use_bias": False,
        },
    },
    "barlow_twins": {
        "projector": {
            "hidden_dims": (8192, 8192),
            "output_dim": 8192,
            "use_bias": False,
            "output_use_bias": False,
        },
    },
}


# config.heads field suffix of each MLP attribute a config may set, per role.
_HEAD_FIELDS = {
    "projector": {
        "hidden_dims": "hidden",
        "output_dim": "dim",
        "use_bias": "use_bias",
        "output_use_bias": "output_use_bias",
        "output_bn": "output_bn",
        "output_bn_affine": "output_bn_affine",
    },
    "predictor": {
        "hidden_dims": "hidden",
        "output_dim": "dim",
        "use_bias": "use_bias",
        "output_use_bias": "output_use_bias",
    },
}


def head_config_fields(method: str) -> dict[str, Any]:
    """A method's published heads as ``config.heads`` fields (the configs' one source of them).

    Every field of a role the method has is set: an attribute ``PUBLISHED_HEADS`` leaves out
    takes the ``MLP`` default (e.g. no output BatchNorm), so a config that starts from another
    method's heads cannot keep one of its settings by accident.

    Args:
      method: A key of ``PUBLISHED_HEADS``.

    Returns:
      ``{'projector_hidden': (4096,), 'projector_dim': 256, ...}``; ``*_hidden`` as tuples.

    Raises:
      ValueError: On an unknown method.
    """
    if method not in PUBLISHED_HEADS:
        raise ValueError(f"Unknown `method` {method!r}; known: {sorted(PUBLISHED_HEADS)}.")
    defaults = {f.name: f.default for f in dataclasses.fields(MLP)}
    fields: dict[str, Any] = {}
    for role, published in PUBLISHED_HEADS[method].items():
        for attribute, suffix in _HEAD_FIELDS[role].items():
            value = published.get(attribute, defaults[attribute])
            fields[f"{role}_{suffix}"] = tuple(value) if attribute == "hidden_dims" else value
    return fields


def create_head(method: str, role: str, *, dtype: Any = jnp.float32, **overrides: Any) -> MLP:
    """Builds a method's published projector or predictor, with optional overrides.

    Args:
      method: A key of ``PUBLISHED_HEADS`` (``'byol'``, ``'simsiam'``, ``'vicreg'``,
        ``'barlow_twins'``).
      role: ``'projector'`` or ``'predictor'`` (BYOL and SimSiam only).
      dtype: Compute dtype.
      **overrides: MLP attributes replacing the published ones, e.g. ``hidden_dims=(512,)``.

    Returns:
      The ``MLP`` module.

    Raises:
      ValueError: On an unknown method, role or override name.
    """
    if method not in PUBLISHED_HEADS:
        raise ValueError(f"Unknown `method` {method!r}; known: {sorted(PUBLISHED_HEADS)}.")
    if role not in PUBLISHED_HEADS[method]:
        raise ValueError(
            f"`role` {role!r} is not a head of {method!r}; "
            f"it has {sorted(PUBLISHED_HEADS[method])}."
        )
    allowed = set(PUBLISHED_HEADS["simsiam"]["projector"]) | {
        "hidden_dims",
        "output_dim",
        "init_scheme",
    }
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"Unknown MLP override(s) {unknown}; allowed: {sorted(allowed)}.")
    return MLP(**{**PUBLISHED_HEADS[method][role], **overrides}, dtype=dtype)
