"""The method interface: what one SSL method contributes to the single training loop.

A method is three things (DESIGN.md, "The three methods, as one family"):

* its heads: a projector and, for the asymmetric methods, a predictor;
* its target policy: ``"ema"`` (a separate target copy of backbone and projector updated as an
  exponential moving average, BYOL), ``"stop_gradient"`` (the online network itself under
  ``jax.lax.stop_gradient``, SimSiam) or ``"none"`` (both branches receive gradient, VICReg and
  Barlow Twins);
* its loss, computed from the online outputs of every view and, where the policy has one, the
  target outputs of every view.

Everything else -- augmentation, forward passes, the optimizer, the EMA, sharding, logging -- is
the training loop's, and is the same for every method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jax

TargetPolicy = Literal["ema", "stop_gradient", "none"]
TARGET_POLICIES: tuple[str, ...] = ("ema", "stop_gradient", "none")

# Outputs of one forward pass of one view: 'features' (backbone), 'projection', and
# 'prediction' when the method has a predictor.
ViewOutputs = Mapping[str, jax.Array]
# (total loss, {name: scalar}) -- the dict holds each term for logging.
LossFn = Callable[
    [Sequence[ViewOutputs], Sequence[ViewOutputs] | None, Any],
    tuple[jax.Array, dict[str, jax.Array]],
]


@dataclasses.dataclass(frozen=True)
class Method:
    """A self-supervised method as the training loop sees it.

    Attributes:
      name: registry name, e.g. ``"byol"``.
      target: the target policy (see module docstring).
      has_predictor: whether the online branch ends in a predictor MLP.
      loss: ``loss(online, target, method_config) -> (loss, terms)``. ``online`` holds one
        :data:`ViewOutputs` per view; ``target`` likewise for ``"ema"`` and
        ``"stop_gradient"`` (already under ``stop_gradient``), ``None`` for ``"none"``.
      default_heads: the published head sizes, used by the configs' ``imagenet`` presets.
    """

    name: str
    target: TargetPolicy
    has_predictor: bool
    loss: LossFn
    default_heads: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.target not in TARGET_POLICIES:
            raise ValueError(f"Method {self.name!r}: target must be one of {TARGET_POLICIES}.")
