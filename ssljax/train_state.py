"""The train state: one explicit pytree holding everything a step reads and writes.

Kept apart from the loop so tests, checkpoints and notebooks can build and inspect it.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax

PyTree = Any


class TrainState(flax.struct.PyTreeNode):
    """Everything that changes during training.

    The static parts (modules, optimizers, schedules) live in the step function's closure.

    Attributes:
      step: number of optimizer steps taken (int32 scalar).
      params: online params ``{'backbone', 'projector'[, 'predictor']}``.
      batch_stats: online BatchNorm running statistics, same structure.
      opt_state: optimizer state of ``params``.
      probe_params: the online linear probe (trained on ``stop_gradient(features)``).
      probe_opt_state: the probe's own optimizer state.
      method_state: the method's own state, a dict its target policy and loss own
        (``ssljax.methods.target_policies``): for an EMA target (BYOL, DINO)
        ``target_params`` ``{'backbone', 'projector'}`` and ``target_batch_stats``; DINO's
        ``center`` besides; empty for SimSiam (its target is the online network) and for
        VICReg and Barlow Twins (no target).
      rng: base PRNG key; step ``k`` uses ``fold_in(rng, k)`` so a resumed run draws the same
        numbers as an uninterrupted one.
      nonfinite_count: consecutive steps skipped because loss or gradients were not finite.
      nonfinite_total: all such steps since the start.
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    probe_params: PyTree
    probe_opt_state: PyTree
    method_state: PyTree
    rng: jax.Array
    nonfinite_count: jax.Array
    nonfinite_total: jax.Array
