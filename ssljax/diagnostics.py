"""Representation diagnostics: collapse monitors usable inside the jitted step and at evaluation.

All functions are pure JAX on an embedding matrix ``[n, d]`` and reduce in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _check_matrix(x: jax.Array, name: str) -> jax.Array:
    if x.ndim != 2:
        raise ValueError(f"{name} must be [batch, dim], got shape {x.shape}.")
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows for batch statistics, got {x.shape[0]}.")
    return x.astype(jnp.float32)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Rows scaled to unit L2 norm: ``x / max(||x||, eps)`` (``torch.nn.functional.normalize``)."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def normalized_std(z: jax.Array) -> jax.Array:
    """Mean over dimensions of the per-dimension std of the L2-normalised rows of ``z``.

    Chen & He 2021, sec. 4.1 / Fig. 2: for healthy outputs this is about ``1 / sqrt(d)``; it
    goes to 0 when every output collapses to the same vector.

    Args:
      z: embeddings ``[n, d]``.

    Returns:
      A float32 scalar.
    """
    z = l2_normalize(_check_matrix(z, "z"))
    return jnp.mean(jnp.std(z, axis=0))


def rankme(z: jax.Array, eps: float = 1e-7) -> jax.Array:
    """Effective rank RankMe (Garrido et al. 2023, eq. 1) of the embeddings ``z``.

    ``exp(-sum_k p_k log p_k)`` with ``p_k = sigma_k / ||sigma||_1 + eps`` over the singular
    values ``sigma`` of ``z`` (not centred, as in the paper). It is close to ``min(n, d)`` for
    an isotropic sample and to ``k`` for a rank-``k`` sample.

    Args:
      z: embeddings ``[n, d]``.
      eps: the paper's epsilon, which keeps ``log`` finite for zero singular values.

    Returns:
      A float32 scalar in ``[1, min(n, d)]`` (up to eps).
    """
    z = _check_matrix(z, "z")
    # Singular values from the smaller Gram matrix: sigma_k^2 are its eigenvalues. This is
    # cheaper than an SVD of [n, d] when one side is small, and runs well on accelerators.
    gram = z @ z.T if z.shape[0] <= z.shape[1] else z.T @ z
    eig = jnp.clip(jnp.linalg.eigvalsh(gram), 0.0, None)
    sigma = jnp.sqrt(eig)
    p = sigma / jnp.maximum(jnp.sum(sigma), 1e-30) + eps
    return jnp.exp(-jnp.sum(p * jnp.log(p)))


def alignment(z_a: jax.Array, z_b: jax.Array, alpha: float = 2.0) -> jax.Array:
    """Alignment of positive pairs, ``E ||f(x) - f(y)||_2^alpha`` on normalised embeddings.

    Wang & Isola 2020, eq. 4 (``L_align``); lower is better.
    """
    a = l2_normalize(_check_matrix(z_a, "z_a"))
    b = l2_normalize(_check_matrix(z_b, "z_b"))
    if a.shape != b.shape:
        raise ValueError(f"z_a {a.shape} and z_b {b.shape} must have the same shape.")
    return jnp.mean(jnp.linalg.norm(a - b, axis=-1) ** alpha)


def uniformity(z: jax.Array, t: float = 2.0) -> jax.Array:
    """Uniformity ``log E exp(-t ||f(x) - f(y)||^2)`` over distinct pairs of normalised rows.

    Wang & Isola 2020, eq. 5 (``L_uniform``); lower is more uniform.
    """
    z = l2_normalize(_check_matrix(z, "z"))
    n = z.shape[0]
    sq = jnp.clip(2.0 - 2.0 * z @ z.T, 0.0, None)  # ||a - b||^2 for unit vectors
    off = ~jnp.eye(n, dtype=bool)
    # log-mean-exp over the n(n-1) off-diagonal pairs, computed stably.
    vals = jnp.where(off, -t * sq, -jnp.inf)
    return jax.nn.logsumexp(vals) - jnp.log(n * (n - 1.0))
