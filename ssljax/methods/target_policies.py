"""Target policies: how a method's target branch is computed, stored and updated.

A policy is behaviour, not a name: it owns its part of ``TrainState.method_state``, computes
the target outputs the loss compares the online outputs with, and updates its state after the
optimizer step. The training loop calls the same three methods for every policy:

* :class:`EMA`: a separate target (teacher) network, an exponential moving average of the
  online backbone and projector, ``xi <- tau * xi + (1 - tau) * theta`` with tau raised from
  ``tau_base`` to 1 by a cosine (BYOL, Grill et al. 2020, sec. 3.2; DINO's teacher, Caron et
  al. 2021, sec. 3.1). Its state is ``{'target_params', 'target_batch_stats'}``.
* :class:`StopGradient`: the online network itself under ``stop_gradient``, no copy kept
  (SimSiam, Chen & He 2021: "EMA with tau = 0"). No state.
* :class:`NoTarget`: no target branch; both branches receive gradient (VICReg, Barlow Twins).
  No state.

Every method of :class:`TargetPolicy` sees the whole ``method_state`` dict and returns it with
only its own keys changed, so a method may keep state of its own beside the policy's (DINO's
center, ``ssljax.methods.dino``).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import optax

from ssljax import optim

PyTree = Any
MethodState = dict[str, PyTree]
ViewOutputs = Mapping[str, jax.Array]

# Parameter subtrees of the online network the target branch does not have (BYOL's
# predictor: the target network is backbone + projector only).
ONLINE_ONLY = ("predictor",)


def _without(tree: Mapping[str, PyTree], keys: Sequence[str]) -> dict[str, PyTree]:
    return {k: v for k, v in tree.items() if k not in keys}


class TargetPolicy(abc.ABC):
    """The interface the training loop uses, the same for every method."""

    @abc.abstractmethod
    def init(self, params: PyTree, batch_stats: PyTree) -> MethodState:
        """The policy's initial state from the initial online params and BN statistics.

        Args:
          params: online params ``{'backbone', 'projector'[, 'predictor']}``.
          batch_stats: online BatchNorm statistics, same structure.

        Returns:
          A dict of the policy's state entries (empty when it keeps none).
        """

    @abc.abstractmethod
    def outputs(
        self,
        state: MethodState,
        views: Sequence[jax.Array],
        online: Sequence[ViewOutputs],
    ) -> tuple[list[dict[str, jax.Array]] | None, MethodState]:
        """The target outputs of this step, under ``stop_gradient``.

        Called inside the differentiated loss function; whatever it returns carries no
        gradient to the online params.

        Args:
          state: the whole ``method_state`` before this step.
          views: the augmented views, in order (global views first).
          online: the online network's outputs of every view (this step's params).

        Returns:
          ``(target, state)``: one outputs dict per view the target branch sees (``None``
          for :class:`NoTarget`), and ``state`` with whatever the forward pass changes
          (the target's BatchNorm statistics).
        """

    @abc.abstractmethod
    def update(
        self, state: MethodState, new_params: PyTree, step: jax.Array
    ) -> tuple[MethodState, dict[str, jax.Array]]:
        """The policy's update after the optimizer step.

        Args:
          state: the whole ``method_state``.
          new_params: the online params after this step's update.
          step: the step just taken (0-based), as the schedules count it.

        Returns:
          ``(state, metrics)``: the new state and the scalars to log (EMA: ``tau``).
        """


@dataclasses.dataclass(frozen=True)
class EMA(TargetPolicy):
    """Target network = exponential moving average of the online backbone and projector.

    Attributes:
      net: the target network (the online network's modules without the predictor).
      tau_schedule: tau as a function of the step (``optim.byol_tau_schedule``).
      num_views: how many leading views the target sees; ``None`` = all. DINO's teacher sees
        only the global views (Caron et al. 2021, sec. 3.1: "only the global views are passed
        through the teacher").
    """

    net: nn.Module
    tau_schedule: optax.Schedule
    num_views: int | None = None

    @classmethod
    def from_config(
        cls,
        config: ml_collections.ConfigDict,
        *,
        online_net: nn.Module,
        total_steps: int,
        num_views: int | None = None,
    ) -> EMA:
        """The EMA of ``online_net`` with tau from ``config.tau_base`` to 1 over the run.

        Args:
          config: the run's config; ``tau_base`` is read.
          online_net: the online ``SiameseNetwork``; the target is it without a predictor.
          total_steps: the run's optimizer steps (the cosine ends there).
          num_views: see the class attributes.

        Returns:
          The policy.
        """
        return cls(
            net=online_net.clone(predictor=None),
            tau_schedule=optim.byol_tau_schedule(config.tau_base, total_steps),
            num_views=num_views,
        )

    def init(self, params: PyTree, batch_stats: PyTree) -> MethodState:
        """Copies the online backbone and projector (and their statistics)."""
        # The target starts as an exact copy of the online network (Grill et al. 2020,
        # Algorithm 1: xi <- theta; Caron et al. 2021, main_dino.py: teacher <- student).
        return {
            "target_params": _without(params, ONLINE_ONLY),
            "target_batch_stats": _without(batch_stats, ONLINE_ONLY),
        }

    def outputs(self, state, views, online):
        """The target network on the first ``num_views`` views, under stop_gradient."""
        del online
        seen = views if self.num_views is None else views[: self.num_views]
        batch_stats = state["target_batch_stats"]
        outs = []
        # Each view is its own batch for BatchNorm, as in the online branch.
        for view in seen:
            out, updates = self.net.apply(
                {"params": state["target_params"], "batch_stats": batch_stats},
                view,
                train=True,
                mutable=["batch_stats"],
            )
            batch_stats = updates["batch_stats"]
            outs.append(out)
        # The params are separate, so no gradient could flow; stop_gradient states the intent
        # (Grill et al. 2020, eq. 2's sg(.)).
        return jax.lax.stop_gradient(outs), {**state, "target_batch_stats": batch_stats}

    def update(self, state, new_params, step):
        """Moves the target towards the new online params by the scheduled tau; logs tau."""
        tau = self.tau_schedule(step)
        # xi <- tau * xi + (1 - tau) * theta, after the online update (Algorithm 1).
        target = optim.update_target(_without(new_params, ONLINE_ONLY), state["target_params"], tau)
        return {**state, "target_params": target}, {"tau": tau}


@dataclasses.dataclass(frozen=True)
class _Stateless(TargetPolicy):
    """A policy with no state of its own and nothing to update: only its outputs differ."""

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, **unused: Any) -> _Stateless:
        """The policy; it reads nothing from the config."""
        del config, unused
        return cls()

    def init(self, params, batch_stats):
        """No state: whatever target there is, is the online network."""
        del params, batch_stats
        return {}

    def update(self, state, new_params, step):
        """Nothing to update."""
        del new_params, step
        return state, {}


@dataclasses.dataclass(frozen=True)
class StopGradient(_Stateless):
    """The target is the online network itself, without gradient (SimSiam)."""

    def outputs(self, state, views, online):
        """The online outputs of every view under stop_gradient."""
        del views
        return [jax.lax.stop_gradient(dict(o)) for o in online], state


@dataclasses.dataclass(frozen=True)
class NoTarget(_Stateless):
    """No target branch: the loss sees only the online outputs (VICReg, Barlow Twins)."""

    def outputs(self, state, views, online):
        """No target outputs (``None``)."""
        del views, online
        return None, state
