"""The online/target network of every method: backbone -> projector [-> predictor].

One module class serves both branches: the target network of BYOL is the same class built
without a predictor, applied to ``target_params`` (a copy of the online backbone and projector
params). Parameter paths are therefore ``backbone/...``, ``projector/...``, ``predictor/...``
in both trees, which is what ``optax.incremental_update`` needs to pair them.
"""

from __future__ import annotations

import flax.linen as nn
import jax


class SiameseNetwork(nn.Module):
    """Backbone, projector and optional predictor.

    Attributes:
      backbone: maps images ``[B, H, W, C]`` to features ``[B, D]``.
      projector: MLP head on the features.
      predictor: MLP head on the projection (``None`` for the target branch and for methods
        without one).
    """

    backbone: nn.Module
    projector: nn.Module
    predictor: nn.Module | None = None

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> dict[str, jax.Array]:
        """Returns ``{'features', 'projection'[, 'prediction']}``, all float32."""
        features = self.backbone(images, train=train)
        projection = self.projector(features, train=train)
        out = {"features": features, "projection": projection}
        if self.predictor is not None:
            out["prediction"] = self.predictor(projection, train=train)
        return out

    def features(self, images: jax.Array) -> jax.Array:
        """Backbone features in evaluation mode (running BatchNorm statistics)."""
        return self.backbone(images, train=False)
