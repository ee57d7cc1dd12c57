"""Representation diagnostics: collapse monitors usable inside the jitted step and at evaluation.

All functions are pure JAX on an embedding matrix ``[n, d]``, reduce in float32, and check their
input shapes at trace time. ``ssljax.evaluate`` re-exports them and reports them on the test
split; ``ssljax.train`` logs :func:`normalized_std` and :func:`rankme` every step.

References:
  Chen & He 2021, "Exploring Simple Siamese Representation Learning", sec. 4.1 and Fig. 2.
  Garrido et al. 2023, "RankMe: Assessing the Downstream Performance of Pretrained
  Self-Supervised Representations by Their Rank", eq. 1.
  Wang & Isola 2020, "Understanding Contrastive Representation Learning through Alignment and
  Uniformity on the Hypersphere", eqs. 4 and 5 (and the PyTorch code in their Fig. 5).
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


def per_dimension_std(z: jax.Array) -> jax.Array:
    """Std over the batch of each dimension of the L2-normalised rows of ``z``.

    Chen & He 2021, sec. 4.1: with ``z' = z / ||z||_2`` this is ``std_i(z'_{i, j})`` for each
    ``j``; it is about ``1 / sqrt(d)`` per dimension when the outputs spread over the sphere
    and 0 when they collapse to one vector. The std is the population one (divisor ``n``).

    Args:
      z: embeddings ``[n, d]``.

    Returns:
      ``[d]`` float32.

    Raises:
      ValueError: if ``z`` is not ``[n >= 2, d]``.
    """
    z = l2_normalize(_check_matrix(z, "z"))
    return jnp.std(z, axis=0)


def normalized_std(z: jax.Array) -> jax.Array:
    """Mean over dimensions of :func:`per_dimension_std` (the curve of Chen & He 2021, Fig. 2).

    For healthy outputs this is about ``1 / sqrt(d)``; it goes to 0 when every output collapses
    to the same vector.

    Args:
      z: embeddings ``[n, d]``.

    Returns:
      A float32 scalar.

    Raises:
      ValueError: if ``z`` is not ``[n >= 2, d]``.
    """
    return jnp.mean(per_dimension_std(z))


def rankme(z: jax.Array, eps: float = 1e-7) -> jax.Array:
    """Effective rank RankMe (Garrido et al. 2023, eq. 1) of the embeddings ``z``.

    ``exp(-sum_k p_k log p_k)`` with ``p_k = sigma_k / ||sigma||_1 + eps`` over the singular
    values ``sigma`` of ``z`` (not centred, as in the paper). It is close to ``min(n, d)`` for an
    isotropic sample with ``n >> d`` (a finite sample's singular values spread by the
    Marchenko-Pastur law, so e.g. ``n = 4 d`` gives about ``0.97 d``) and close to ``k`` for a
    rank-``k`` sample.

    The singular values come from an SVD of ``z`` itself, not from the eigenvalues of the Gram
    matrix: in float32 the Gram route turns the zero singular values of a rank-deficient sample
    into ``sqrt(float32 eps) * sigma_max`` and overstates the rank (5.16 for a rank-5
    ``[2048, 256]`` sample, against 4.99 from the SVD and from float64).

    Args:
      z: embeddings ``[n, d]``.
      eps: the paper's epsilon, which keeps ``log`` finite for zero singular values.

    Returns:
      A float32 scalar in ``[1, min(n, d)]`` (up to eps).

    Raises:
      ValueError: if ``z`` is not ``[n >= 2, d]``.
    """
    z = _check_matrix(z, "z")
    sigma = jnp.linalg.svd(z, compute_uv=False)
    p = sigma / jnp.maximum(jnp.sum(sigma), 1e-30) + eps
    return jnp.exp(-jnp.sum(p * jnp.log(p)))


def alignment(z_a: jax.Array, z_b: jax.Array, alpha: float = 2.0) -> jax.Array:
    """Alignment of positive pairs, ``E ||f(x) - f(y)||_2^alpha`` on L2-normalised embeddings.

    Wang & Isola 2020, eq. 4 (``L_align``; their code ``(x - y).norm(dim=1).pow(alpha).mean()``);
    row ``i`` of ``z_a`` and of ``z_b`` are two views of the same example. Lower is better: 0
    when both views map to the same point, 4 (``alpha = 2``) when they are antipodal.

    Args:
      z_a: embeddings of the first views ``[n, d]``.
      z_b: embeddings of the second views ``[n, d]``.
      alpha: the exponent (the paper's default 2).

    Returns:
      A float32 scalar.

    Raises:
      ValueError: if the inputs are not ``[n >= 2, d]`` of the same shape, or ``alpha <= 0``.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}.")
    a = l2_normalize(_check_matrix(z_a, "z_a"))
    b = l2_normalize(_check_matrix(z_b, "z_b"))
    if a.shape != b.shape:
        raise ValueError(f"z_a {a.shape} and z_b {b.shape} must have the same shape.")
    sq = jnp.sum((a - b) ** 2, axis=-1)
    # ||.||^alpha as (||.||^2)^(alpha/2): for alpha = 2 no square root, whose gradient at 0 is
    # not finite.
    return jnp.mean(sq if alpha == 2.0 else sq ** (alpha / 2.0))


def uniformity(z: jax.Array, t: float = 2.0) -> jax.Array:
    """Uniformity ``log E exp(-t ||f(x) - f(y)||^2)`` over distinct pairs of normalised rows.

    Wang & Isola 2020, eq. 5 (``L_uniform``; their code
    ``torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()``, the mean over the ``n(n-1)/2``
    unordered pairs, equal to the mean over the ``n(n-1)`` ordered ones used here). Lower is more
    uniform; 0 for a collapsed sample. The log-mean-exp is computed stably.

    Args:
      z: embeddings ``[n, d]``; the cost is an ``[n, n]`` matrix, so subsample large sets.
      t: the paper's ``t`` (default 2).

    Returns:
      A float32 scalar ``<= 0``.

    Raises:
      ValueError: if ``z`` is not ``[n >= 2, d]`` or ``t <= 0``.
    """
    if t <= 0:
        raise ValueError(f"t must be > 0, got {t}.")
    z = l2_normalize(_check_matrix(z, "z"))
    n = z.shape[0]
    gram = jnp.matmul(z, z.T, precision=jax.lax.Precision.HIGHEST)
    sq = jnp.clip(2.0 - 2.0 * gram, 0.0, None)  # ||a - b||^2 for unit vectors
    off = ~jnp.eye(n, dtype=bool)
    vals = jnp.where(off, -t * sq, -jnp.inf)
    return jax.nn.logsumexp(vals) - jnp.log(n * (n - 1.0))
