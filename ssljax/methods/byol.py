"""BYOL: Bootstrap Your Own Latent (Grill et al., 2020).

The online network (backbone -> projector -> predictor) predicts the target network's
projection of the *other* view; the target is an EMA of the online backbone and projector.
The loss is symmetrised as in the paper (eq. 2 and the text below it): the sum of
``2 - 2 cos(q_theta(v), stop_grad(z'_xi(v')))`` and the same with the views swapped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from ssljax import losses
from ssljax.methods import base, target_policies


def byol_method_loss(
    online: Sequence[base.ViewOutputs],
    target: Sequence[base.ViewOutputs] | None,
    method_config: Any = None,
    context: base.LossContext | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Symmetrised BYOL loss: L = l(q_1, z'_2) + l(q_2, z'_1) (Grill et al. 2020, eq. 2).

    Args:
      online: per-view online outputs with a ``'prediction'`` entry.
      target: per-view target outputs with a ``'projection'`` entry.
      method_config: unused.
      context: unused (the loss keeps no state).

    Returns:
      The loss and ``{'byol': loss}``.
    """
    del method_config, context
    if target is None or len(online) != 2 or len(target) != 2:
        raise ValueError("BYOL needs two views and target outputs for both.")
    loss = losses.byol_loss(online[0]["prediction"], target[1]["projection"]) + losses.byol_loss(
        online[1]["prediction"], target[0]["projection"]
    )
    return loss, {"byol": loss}


BYOL = base.Method(
    name="byol",
    target_policy=target_policies.EMA.from_config,
    has_predictor=True,
    loss=byol_method_loss,
)
