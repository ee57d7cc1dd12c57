"""VICReg: Variance-Invariance-Covariance Regularization (Bardes et al., 2022).

No target branch: both views go through the same network and both receive gradient. The loss
is ``sim_coeff * s + std_coeff * v + cov_coeff * c`` (eq. 6), see :func:`ssljax.losses.vicreg_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from ssljax import losses
from ssljax.methods import base, target_policies


def vicreg_method_loss(
    online: Sequence[base.ViewOutputs],
    target: Sequence[base.ViewOutputs] | None,
    method_config: Any = None,
    context: base.LossContext | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """VICReg loss on the two expander outputs (Bardes et al. 2022, eq. 6).

    Args:
      online: per-view outputs with a ``'projection'`` entry (the expander output).
      target: must be ``None`` (VICReg has no target branch).
      method_config: ``sim_coeff``, ``std_coeff``, ``cov_coeff`` (paper: 25, 25, 1).
      context: unused (the loss keeps no state).

    Returns:
      The loss and its three unweighted terms.
    """
    del context
    if target is not None or len(online) != 2:
        raise ValueError("VICReg takes two views and no target branch.")
    cfg = dict(method_config or {})
    loss, terms = losses.vicreg_loss(
        online[0]["projection"],
        online[1]["projection"],
        sim_coeff=cfg.get("sim_coeff", 25.0),
        std_coeff=cfg.get("std_coeff", 25.0),
        cov_coeff=cfg.get("cov_coeff", 1.0),
    )
    return loss, dict(terms)


VICREG = base.Method(
    name="vicreg",
    target_policy=target_policies.NoTarget.from_config,
    has_predictor=False,
    loss=vicreg_method_loss,
    # Bardes et al. 2022, sec. 4.1: expander of three 8192-wide layers.
    default_heads={"projector": ((8192, 8192), 8192)},
)
