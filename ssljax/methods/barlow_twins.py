"""Barlow Twins: Self-Supervised Learning via Redundancy Reduction (Zbontar et al., 2021).

No target branch; the loss drives the cross-correlation of the two views' standardised
projections towards the identity (eq. 1), see :func:`ssljax.losses.barlow_twins_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from ssljax import losses
from ssljax.methods import base, target_policies

# lambd: the off-diagonal weight at the paper's 5e-3 (ssljax.losses.barlow_twins_loss's
# default); scale_loss: a constant factor on the loss, 1 as the official main.py.
DEFAULTS = {**base.keyword_defaults(losses.barlow_twins_loss, ("lambd",)), "scale_loss": 1.0}


def barlow_twins_method_loss(
    online: Sequence[base.ViewOutputs],
    target: Sequence[base.ViewOutputs] | None,
    method_config: Any = None,
    context: base.LossContext | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Barlow Twins loss on the two projector outputs (Zbontar et al. 2021, eq. 1).

    Args:
      online: per-view outputs with a ``'projection'`` entry.
      target: must be ``None``.
      method_config: ``lambd`` (paper: 5e-3) and ``scale_loss`` (default 1: the official
        code's current main.py has none; solo-learn's CIFAR barlow.yaml uses 0.1), a constant
        factor on the whole loss (and so on every gradient), as solo-learn's
        ``barlow_loss_func`` applies it.
      context: unused (the loss keeps no state).

    Returns:
      The scaled loss and its unscaled on- and off-diagonal terms.
    """
    del context
    if target is not None or len(online) != 2:
        raise ValueError("Barlow Twins takes two views and no target branch.")
    cfg = base.resolve_method_config("barlow_twins", DEFAULTS, method_config)
    loss, terms = losses.barlow_twins_loss(
        online[0]["projection"], online[1]["projection"], lambd=cfg["lambd"]
    )
    return loss * cfg["scale_loss"], dict(terms)


BARLOW_TWINS = base.Method(
    name="barlow_twins",
    target_policy=target_policies.NoTarget.from_config,
    has_predictor=False,
    loss=barlow_twins_method_loss,
    config_defaults=DEFAULTS,
)
