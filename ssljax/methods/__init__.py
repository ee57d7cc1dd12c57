"""The registry of self-supervised methods: ``METHODS[name]`` is a :class:`Method`."""

from ssljax.methods.barlow_twins import BARLOW_TWINS
from ssljax.methods.base import LossContext, Method, ViewOutputs
from ssljax.methods.byol import BYOL
from ssljax.methods.dino import DINO
from ssljax.methods.simsiam import SIMSIAM
from ssljax.methods.target_policies import EMA, NoTarget, StopGradient, TargetPolicy
from ssljax.methods.vicreg import VICREG

METHODS: dict[str, Method] = {m.name: m for m in (BYOL, SIMSIAM, VICREG, BARLOW_TWINS, DINO)}


def get_method(name: str) -> Method:
    """Returns the registered method called ``name``.

    Raises:
      ValueError: if no method has that name; the message lists the valid ones.
    """
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r} (config.method). Valid: {sorted(METHODS)}.")
    return METHODS[name]


__all__ = [
    "EMA",
    "METHODS",
    "LossContext",
    "Method",
    "NoTarget",
    "StopGradient",
    "TargetPolicy",
    "ViewOutputs",
    "get_method",
]
