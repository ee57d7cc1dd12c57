"""Backbones (ResNet, ViT) and heads (projector/predictor MLPs), and the name registry.

Every backbone is a Flax Linen module with ``__call__(images [B, H, W, C] float, train: bool)
-> features [B, D] float32`` and a ``num_features`` property (D). ``create_backbone`` builds
one from its registry name, e.g. ``create_backbone('resnet50', dtype=jnp.bfloat16)``;
``backbone_from_config(config.model)`` builds the one a run's config names.

Registry (``BACKBONES``):

==================  ===============================================================  ====
name                network                                                          D
==================  ===============================================================  ====
resnet18/34/50      torchvision ResNet, ImageNet stem (7x7/2 conv, 3x3/2 max-pool)   512/512/2048
resnet*_cifar       same, CIFAR stem (3x3/1 conv, no max-pool) for 32x32 images       512/512/2048
resnet_tiny         BasicBlock [1, 1, 1, 1], width 0.25, CIFAR stem: CPU tests/demos   128
vit_{tiny,small,base}_{16,8}  ViT-Ti/S/B with 16x16 (224 px) or 8x8 (96 px) patches  192/384/768
vit_{tiny,small}_4  ViT-Ti/S with 4x4 patches, for 32x32 images                      192/384
==================  ===============================================================  ====

The published networks keep torchvision's/timm's defaults (``zero_init_residual=False``);
methods whose official code sets it (SimSiam, Barlow Twins, VICReg) pass
``zero_init_residual=True`` as an override. Any module attribute can be overridden, e.g.
``create_backbone('resnet18_cifar', width=0.5)`` or ``create_backbone('vit_tiny_4', depth=2)``.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ssljax.models.dtypes import DTYPES
from ssljax.models.heads import (
    MLP,
    PUBLISHED_HEADS,
    DINOHead,
    WeightNormDense,
    create_head,
    head_config_fields,
)
from ssljax.models.resnet import BasicBlock, Bottleneck, ResNet
from ssljax.models.vit import VIT_SIZES, ViT

__all__ = [
    "BACKBONES",
    "DTYPES",
    "MLP",
    "PUBLISHED_HEADS",
    "BasicBlock",
    "DINOHead",
    "Bottleneck",
    "ResNet",
    "ViT",
    "WeightNormDense",
    "backbone_from_config",
    "create_backbone",
    "create_head",
    "head_config_fields",
]


def _resnet(stage_sizes: tuple[int, ...], block: str, **kwargs: Any) -> Callable[..., ResNet]:
    return functools.partial(ResNet, stage_sizes=stage_sizes, block=block, **kwargs)


def _vit(size: str, patch_size: int) -> Callable[..., ViT]:
    width, depth, num_heads = VIT_SIZES[size]
    return functools.partial(
        ViT, width=width, depth=depth, num_heads=num_heads, patch_size=patch_size
    )


_RESNET_LAYOUTS = {
    "resnet18": ((2, 2, 2, 2), "basic"),
    "resnet34": ((3, 4, 6, 3), "basic"),
    "resnet50": ((3, 4, 6, 3), "bottleneck"),
}

# name -> factory taking the module's attributes as keyword overrides (functools.partial, so
# `BACKBONES[name].keywords` shows the configuration).
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    **{name: _resnet(*layout, stem="imagenet") for name, layout in _RESNET_LAYOUTS.items()},
    **{f"{name}_cifar": _resnet(*layout, stem="cifar") for name, layout in _RESNET_LAYOUTS.items()},
    "resnet_tiny": _resnet((1, 1, 1, 1), "basic", stem="cifar", width=0.25),
    **{
        f"vit_{size}_{patch}": _vit(size, patch)
        for patch in (16, 8)
        for size in ("tiny", "small", "base")
    },
    "vit_tiny_4": _vit("tiny", 4),
    "vit_small_4": _vit("small", 4),
}


def create_backbone(name: str, *, dtype: Any = jnp.float32, **overrides: Any) -> nn.Module:
    """Builds a registered backbone.

    Args:
      name: A key of ``BACKBONES``, e.g. ``'resnet50'``, ``'resnet18_cifar'``,
        ``'vit_small_16'``.
      dtype: Compute dtype (``jnp.bfloat16`` on accelerators); parameters and BatchNorm
        statistics are float32 and the features float32 whatever it is.
      **overrides: Module attributes replacing the registered ones, e.g. ``width=0.5``,
        ``zero_init_residual=True``, ``depth=2``, ``patch_size=8``.

    Returns:
      The Flax module; ``module.num_features`` is the feature width.

    Raises:
      ValueError: On an unknown name (the message lists the known ones), an override that is
        not an attribute of the module, or an invalid attribute value.
    """
    if name not in BACKBONES:
        raise ValueError(
            f"Unknown backbone `name` {name!r}; known: {', '.join(sorted(BACKBONES))}."
        )
    factory = BACKBONES[name]
    module_cls = factory.func if isinstance(factory, functools.partial) else factory
    allowed = {f.name for f in dataclasses.fields(module_cls)} - {"parent", "name", "dtype"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(
            f"Backbone {name!r} has no attribute(s) {unknown} to override; "
            f"allowed: {sorted(allowed)}."
        )
    return factory(dtype=dtype, **overrides)


def backbone_from_config(model_config: Any) -> nn.Module:
    """The backbone a run's ``config.model`` names, in its compute dtype.

    The same module training builds inside its Siamese network, so the backbone's params of a
    checkpoint (``params/backbone``) apply to it. Every backbone replicates one-channel images
    to three channels, so its parameter shapes do not depend on the dataset.

    Args:
      model_config: ``config.model``: ``backbone`` (a :data:`BACKBONES` name), ``dtype`` (a
        :data:`DTYPES` name) and ``backbone_kwargs`` (module attribute overrides).

    Returns:
      The Flax backbone module.

    Raises:
      ValueError: for an unknown dtype, backbone name or override.
    """
    if model_config.dtype not in DTYPES:
        raise ValueError(
            f"config.model.dtype={model_config.dtype!r} is not one of {sorted(DTYPES)}."
        )
    return create_backbone(
        model_config.backbone,
        dtype=DTYPES[model_config.dtype],
        **dict(model_config.backbone_kwargs),
    )
