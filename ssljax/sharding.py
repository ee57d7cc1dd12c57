"""Meshes and shardings: data parallelism over every device, through ``jit`` alone.

The global batch is sharded along the mesh axis ``data``; the train state is replicated. Under
``jit`` XLA then computes BatchNorm statistics, VICReg's variance/covariance and Barlow Twins'
cross-correlation over the *global* batch (as SyncBN in the papers) and all-reduces gradients:
no ``axis_name``, no ``pmap``, no hand-written collectives.
"""

from __future__ import annotations

import jax
import numpy as np

P = jax.sharding.PartitionSpec
DATA_AXIS = "data"


def make_mesh(devices: list[jax.Device] | None = None) -> jax.sharding.Mesh:
    """Returns a 1-D mesh with axis ``data`` over ``devices`` (default: all global devices)."""
    devices = jax.devices() if devices is None else devices
    return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """Leading (batch) dimension split over ``data``, the rest whole."""
    return jax.sharding.NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """Every device holds the whole array (the train state under pure data parallelism)."""
    return jax.sharding.NamedSharding(mesh, P())
