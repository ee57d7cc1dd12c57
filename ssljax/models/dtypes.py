"""Compute dtypes by the names configs use (``config.model.dtype``).

Shared by training, which builds the whole Siamese network, and evaluation, which builds the
backbone alone: both must compute in the dtype the run was trained with.
"""

import jax.numpy as jnp

# Parameters and BatchNorm statistics stay float32 whatever the compute dtype (DESIGN.md).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
