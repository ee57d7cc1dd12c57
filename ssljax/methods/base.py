"""The method interface: what one SSL method contributes to the single training loop.

A method is (DESIGN.md, "The three methods, as one family", which DINO now joins):

* its heads: a projector and, for the asymmetric methods, a predictor;
* its target policy (``ssljax.methods.target_policies``): an object that owns the target
  branch -- its state, its outputs and its update -- built from the config by the method's
  ``target_policy`` factory (``EMA.from_config`` for BYOL and DINO, ``StopGradient`` for
  SimSiam, ``NoTarget`` for VICReg and Barlow Twins);
* its loss, computed from the online outputs of every view and, where the policy has one, the
  target outputs;
* optionally, state of its own that the loss reads and each step updates (DINO's center),
  kept beside the policy's in ``TrainState.method_state``.

Everything else -- augmentation, forward passes, the optimizer, sharding, logging -- is the
training loop's, and is the same for every method: the loop never asks which method it runs.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax

from ssljax.methods import target_policies

PyTree = Any
MethodState = target_policies.MethodState

# Outputs of one forward pass of one view: 'features' (backbone), 'projection', and
# 'prediction' when the method has a predictor.
ViewOutputs = Mapping[str, jax.Array]


class LossContext(NamedTuple):
    """What a loss may read besides the outputs: where training is, and the method's state.

    Attributes:
      step: the optimizer step being taken (0-based int32 scalar; traced under ``jit``).
      steps_per_epoch: optimizer steps per epoch (static), for schedules given in epochs.
      state: ``TrainState.method_state`` before this step (DINO reads its center here).
    """

    step: jax.Array
    steps_per_epoch: int
    state: MethodState


# (online, target, method_config, context) -> (total loss, {name: scalar}); the dict holds each
# term for logging. ``context`` may be None when a loss is called outside the loop (tests).
LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
PolicyFactory = Callable[..., target_policies.TargetPolicy]


def keyword_defaults(fn: Callable[..., Any], names: Sequence[str]) -> dict[str, Any]:
    """The default values of ``fn``'s keyword parameters ``names``, read from its signature.

    A method whose settings are its loss's keyword arguments takes their defaults from the
    loss function, so the paper's values are written once, where the equation is.
    """
    parameters = inspect.signature(fn).parameters
    return {name: parameters[name].default for name in names}


def resolve_method_config(
    name: str, defaults: Mapping[str, Any], method_config: Any
) -> dict[str, Any]:
    """``defaults`` updated with a config's ``method_config``, refusing fields not in defaults.

    Args:
      name: the method's name, for the message.
      defaults: the method's :attr:`Method.config_defaults`.
      method_config: the config's ``method_config`` (a mapping or ``None``).

    Returns:
      Every field of ``defaults``, at the config's value where it sets one.

    Raises:
      ValueError: naming an unknown field and listing the valid ones (a typo in
        ``--config.method_config.x`` would otherwise train at the default silently).
    """
    given = dict(method_config or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        valid = sorted(defaults) or "none"
        raise ValueError(f"{name}: unknown method_config field(s) {unknown}; valid: {valid}.")
    return {**defaults, **given}


def no_state(projection_dim: int, method_config: Any) -> MethodState:
    """The default ``init_state``: the method keeps no state of its own."""
    del projection_dim, method_config
    return {}


def keep_state(
    state: MethodState, target: Sequence[ViewOutputs] | None, method_config: Any
) -> MethodState:
    """The default ``update_state``: nothing to update."""
    del target, method_config
    return state


@dataclasses.dataclass(frozen=True)
class Method:
    """A self-supervised method as the training loop sees it.

    Attributes:
      name: registry name, e.g. ``"byol"``.
      target_policy: ``factory(config, *, online_net, total_steps, num_views) -> TargetPolicy``,
        e.g. ``target_policies.EMA.from_config``; ``num_views`` is how many (global) views the
        target branch is given.
      has_predictor: whether the online branch ends in a predictor MLP.
      loss: ``loss(online, target, method_config, context=None) -> (loss, terms)``. ``online``
        holds one :data:`ViewOutputs` per view; ``target`` what the policy's ``outputs``
        returns (already under ``stop_gradient``; ``None`` for ``NoTarget``); ``context`` a
        :class:`LossContext`.
      config_defaults: the method's ``method_config`` fields at the paper's values (the one
        source of them: configs start from it, the loss fills what a config leaves out and
        refuses fields not in it); empty for methods without settings.
      init_state: ``init_state(projection_dim, method_config) -> dict``: the method's own
        entries of ``method_state`` (DINO: the center); default none.
      update_state: ``update_state(state, target, method_config) -> state``, called once per
        step after the loss with this step's target outputs (DINO: the center's EMA); default
        identity.
    """

    name: str
    target_policy: PolicyFactory
    has_predictor: bool
    loss: LossFn
    config_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    init_state: Callable[[int, Any], MethodState] = no_state
    update_state: Callable[[MethodState, Any, Any], MethodState] = keep_state

    def __post_init__(self):
        if not callable(self.target_policy):
            raise ValueError(
                f"Method {self.name!r}: target_policy must be a factory returning a "
                f"target_policies.TargetPolicy, e.g. EMA.from_config; got {self.target_policy!r}."
            )
