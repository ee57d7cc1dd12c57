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

# sim_coeff, std_coeff, cov_coeff: lambda, mu, nu of eq. 6 at the paper's 25, 25, 1, as
# ssljax.losses.vicreg_loss's defaults.
DEFAULTS = base.keyword_defaults(losses.vicreg_loss, ("sim_coeff", "std_coeff", "cov_coeff"))


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
    cfg = base.resolve_method_config("vicreg", DEFAULTS, method_config)
    loss, terms = losses.vicreg_loss(online[0]["projection"], online[1]["projection"], **cfg)
    return loss, dict(terms)


VICREG = base.Method(
    name="vicreg",
    target_policy=target_policies.NoTarget.from_config,
    has_predictor=False,
    loss=vicreg_method_loss,
    config_defaults=DEFAULTS,
)
