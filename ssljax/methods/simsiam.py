"""SimSiam: Exploring Simple Siamese Representation Learning (Chen & He, 2021).

The target branch is the online network itself under ``stop_gradient`` (no EMA copy is kept:
the EMA with tau = 0). Loss (eq. 2): L = D(p_1, z_2) / 2 + D(p_2, z_1) / 2 with
D(p, z) = -cos(p, stop_grad(z)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from ssljax import losses
from ssljax.methods import base, target_policies


def simsiam_method_loss(
    online: Sequence[base.ViewOutputs],
    target: Sequence[base.ViewOutputs] | None,
    method_config: Any = None,
    context: base.LossContext | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Symmetrised SimSiam loss (Chen & He 2021, eq. 2).

    Args:
      online: per-view online outputs with a ``'prediction'`` entry.
      target: per-view online projections under ``stop_gradient``.
      method_config: unused.
      context: unused (the loss keeps no state).

    Returns:
      The loss and ``{'simsiam': loss}``.
    """
    del method_config, context
    if target is None or len(online) != 2 or len(target) != 2:
        raise ValueError("SimSiam needs two views and (stop-gradient) target outputs for both.")
    loss = 0.5 * losses.simsiam_loss(
        online[0]["prediction"], target[1]["projection"]
    ) + 0.5 * losses.simsiam_loss(online[1]["prediction"], target[0]["projection"])
    return loss, {"simsiam": loss}


SIMSIAM = base.Method(
    name="simsiam",
    target_policy=target_policies.StopGradient.from_config,
    has_predictor=True,
    loss=simsiam_method_loss,
)
