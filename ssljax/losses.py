"""Losses of SSL without negative pairs: BYOL, SimSiam, VICReg, Barlow Twins, DINO.

Pure functions of ``[batch, dim]`` arrays: no Flax, no state, jittable, differentiable. Every
input may have any float dtype; it is upcast to float32 (float64 stays float64) before any
reduction, and the result is a float32 scalar. Shapes are checked at trace time, so bad input
raises ``ValueError`` when the function is traced, never a NaN at run time.

Statistics over the batch (VICReg's variance and covariance, Barlow Twins' standardisation and
cross-correlation) are over the *whole* batch the function sees. Under ``jax.jit`` with the batch
sharded over a mesh that is the global batch: XLA inserts the collectives, no ``axis_name`` needed.

The cosine losses are one direction of a pair of views, with a stop-gradient on the second
argument; the methods symmetrise by calling them again with the views swapped (BYOL sums the two
directions, SimSiam averages them). VICReg and Barlow Twins are symmetric in their two arguments
(swapping them transposes Barlow Twins' cross-correlation, which leaves its loss unchanged) and
are called once per pair. DINO's cross-entropy is over every pair of a teacher (global) view and
another student view, against a center the method keeps (``ssljax.methods.dino``).

Matrix products use ``precision=jax.lax.Precision.HIGHEST`` by default: on TPU the default
float32 matmul rounds its operands to bfloat16, which would break the float32 promise above and,
in the Gram form below, lose the off-diagonal sums to cancellation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "barlow_twins_loss",
    "byol_loss",
    "dino_center_update",
    "dino_loss",
    "simsiam_loss",
    "vicreg_loss",
]

# Smallest norm an embedding is divided by in the cosine losses. BYOL's official code (Haiku,
# `utils/helpers.py: l2_normalize`) computes x * rsqrt(max(||x||^2, 1e-12)), i.e. clamps the norm at
# 1e-6; SimSiam's official code uses torch's `nn.CosineSimilarity(dim=1)`, whose eps=1e-8 clamps
# each norm at 1e-8. Clamping the squared norm with `maximum` gives a finite gradient (zero through
# the norm, 1/min_norm through x) for an all-zero row, where x / ||x|| would give NaN.
_BYOL_MIN_NORM = 1e-6
_SIMSIAM_MIN_NORM = 1e-8

_HIGHEST = jax.lax.Precision.HIGHEST


def _as_float_matrix(x: jax.Array, name: str, *, min_batch: int) -> jax.Array:
    """Checks that ``x`` is a float ``[batch, dim]`` array and upcasts it for the reductions.

    Args:
      x: The argument to check.
      name: Its parameter name, for the error message.
      min_batch: The smallest batch size the loss is defined for.

    Returns:
      ``x`` as a jax array of dtype ``promote_types(x.dtype, float32)``.

    Raises:
      ValueError: If ``x`` is not rank 2, is not floating point, has an empty dimension or a batch
        smaller than ``min_batch``.
    """
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(
            f"`{name}` must have rank 2, [batch, dim], but has shape {x.shape}; "
            "flatten the feature axes (and any view/device axes into the batch) first."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"`{name}` must have a floating-point dtype, got {x.dtype}; cast it first."
        )
    if x.shape[1] < 1:
        raise ValueError(f"`{name}` has shape {x.shape}: the embedding dimension must be >= 1.")
    if x.shape[0] < min_batch:
        if min_batch > 1:
            raise ValueError(
                f"`{name}` has a batch of {x.shape[0]}, but the loss needs statistics over the "
                f"batch (a standard deviation is undefined for fewer than {min_batch} examples); "
                "pass the global batch, of at least 2 examples."
            )
        raise ValueError(f"`{name}` has an empty batch, shape {x.shape}.")
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _check_pair(
    a: jax.Array, b: jax.Array, names: tuple[str, str], *, min_batch: int
) -> tuple[jax.Array, jax.Array]:
    """Validates two embeddings of the same ``[batch, dim]`` shape; see `_as_float_matrix`."""
    a32 = _as_float_matrix(a, names[0], min_batch=min_batch)
    b32 = _as_float_matrix(b, names[1], min_batch=min_batch)
    if a32.shape != b32.shape:
        raise ValueError(
            f"`{names[0]}` and `{names[1]}` must have the same shape [batch, dim], got "
            f"{a32.shape} and {b32.shape}; pass the two views' outputs for the same examples."
        )
    return a32, b32


def _l2_normalize(x: jax.Array, min_norm: float) -> jax.Array:
    """Returns x / max(||x||, min_norm) along the last axis, with finite gradients at 0."""
    square_norm = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(square_norm, min_norm**2))


def _cosine(x: jax.Array, y: jax.Array, min_norm: float) -> jax.Array:
    """Row-wise cosine similarity [batch] of two [batch, dim] arrays."""
    return jnp.sum(_l2_normalize(x, min_norm) * _l2_normalize(y, min_norm), axis=-1)


def _use_gram(gram: bool | None, *, gram_cost: int, covariance_cost: int) -> bool:
    """Resolves the ``gram`` keyword: None picks the form with fewer multiply-adds."""
    if gram is None:
        return gram_cost < covariance_cost
    return bool(gram)


def _squared_off_diagonal_sum_self(
    x: jax.Array, column_sq_sums: jax.Array, *, gram: bool, precision: jax.lax.Precision
) -> jax.Array:
    """sum_{i != j} [X^T X]_ij^2 for X [n, d], from the cheaper of X^T X and X X^T.

    Args:
      x: X, [n, d].
      column_sq_sums: sum_b X_bi^2 [d], the diagonal of X^T X, which the caller already has.
      gram: True for the n x n Gram form (O(n^2 d)), False for the d x d form (O(n d^2)).
      precision: Matmul precision.

    Returns:
      The scalar sum of squared off-diagonal entries of X^T X.
    """
    if gram:
        # ||X^T X||_F^2 = tr((X^T X)^2) = tr((X X^T)^2) = ||X X^T||_F^2; the diagonal of X^T X is
        # `column_sq_sums`, so the off-diagonal part is the difference of the two.
        g = jnp.matmul(x, x.T, precision=precision)
        return jnp.sum(jnp.square(g)) - jnp.sum(jnp.square(column_sq_sums))
    c = jnp.matmul(x.T, x, precision=precision)
    # Zero the diagonal rather than subtract it: exact, no cancellation.
    off = c - jnp.diag(jnp.diagonal(c))
    return jnp.sum(jnp.square(off))


def byol_loss(online_pred: jax.Array, target_proj: jax.Array) -> jax.Array:
    r"""BYOL's regression loss, ``mean_b (2 - 2 cos(q_b, z'_b))`` (Grill et al. 2020, eq. 2).

    Eq. 2 of the paper: for the online prediction q and the target projection z', both
    l2-normalised, ||q/||q|| - z'/||z'|| ||^2 = 2 - 2 <q, z'> / (||q|| ||z'||). This function
    returns its mean over the batch. ``jax.lax.stop_gradient`` is applied to ``target_proj``: the
    target branch gets no gradient even when its params are not separate. The symmetrised
    L^BYOL = L + L~ of the paper (Sec. 3.1) is the caller's business, as in the official code::

        loss = byol_loss(q1, z2_target) + byol_loss(q2, z1_target)

    Norms are clamped at 1e-6 as in the official code (``x * rsqrt(max(||x||^2, 1e-12))``), so an
    all-zero row gives a finite loss and gradient. The official code computes the squared
    distance of the normalised vectors; this is the same number whenever both norms exceed 1e-6.

    Args:
      online_pred: The online network's prediction q, [batch, dim], any float dtype.
      target_proj: The target network's projection z' of the *other* view, same shape.

    Returns:
      The float32 scalar loss, in [0, 4].

    Raises:
      ValueError: If an argument is not a float rank-2 array, the shapes differ or the batch is
        empty.

    Example:
      >>> import jax.numpy as jnp
      >>> q = jnp.array([[1.0, 0.0], [0.0, 3.0]])
      >>> z = jnp.array([[2.0, 0.0], [1.0, 0.0]])
      >>> float(byol_loss(q, z))  # cosines 1 and 0: (0 + 2) / 2
      1.0

    References:
      Grill et al., "Bootstrap your own latent: A new approach to self-supervised learning",
      NeurIPS 2020, https://arxiv.org/abs/2006.07733 (eq. 2 and Sec. 3.1).
    """
    q, z = _check_pair(online_pred, target_proj, ("online_pred", "target_proj"), min_batch=1)
    z = jax.lax.stop_gradient(z)
    return jnp.mean(2.0 - 2.0 * _cosine(q, z, _BYOL_MIN_NORM)).astype(jnp.float32)


def simsiam_loss(p: jax.Array, z: jax.Array) -> jax.Array:
    r"""SimSiam's negative cosine similarity, ``-mean_b cos(p_b, stopgrad(z_b))`` (Chen & He 2021).

    Eq. 1 of the paper, D(p1, z2) = -<p1 / ||p1||, z2 / ||z2||>, averaged over the batch, with
    the stop-gradient of eq. 3 applied to ``z`` inside this function. The symmetrised loss of
    eqs. 2-3 averages the two directions, as the official code does::

        loss = 0.5 * simsiam_loss(p1, z2) + 0.5 * simsiam_loss(p2, z1)

    Norms are clamped at 1e-8, as torch's ``nn.CosineSimilarity(dim=1)`` (eps=1e-8) in the
    official code clamps each norm, so an all-zero row gives a finite loss and gradient.

    Args:
      p: The predictor output of one view, [batch, dim], any float dtype.
      z: The projector output of the other view, same shape; receives no gradient.

    Returns:
      The float32 scalar loss, in [-1, 1].

    Raises:
      ValueError: If an argument is not a float rank-2 array, the shapes differ or the batch is
        empty.

    Example:
      >>> import jax.numpy as jnp
      >>> p = jnp.array([[1.0, 1.0], [0.0, 2.0]])
      >>> z = jnp.array([[3.0, 3.0], [1.0, 0.0]])
      >>> round(float(simsiam_loss(p, z)), 6)  # cosines 1 and 0
      -0.5

    References:
      Chen & He, "Exploring simple Siamese representation learning", CVPR 2021,
      https://arxiv.org/abs/2011.10566 (eqs. 1-3).
    """
    p32, z32 = _check_pair(p, z, ("p", "z"), min_batch=1)
    z32 = jax.lax.stop_gradient(z32)
    return (-jnp.mean(_cosine(p32, z32, _SIMSIAM_MIN_NORM))).astype(jnp.float32)


def vicreg_loss(
    z_a: jax.Array,
    z_b: jax.Array,
    *,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
    gram: bool | None = None,
    precision: jax.lax.Precision = _HIGHEST,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    r"""VICReg: invariance, variance and covariance terms (Bardes et al. 2022, eqs. 1-6).

    With n the batch, d the dimension, Var the unbiased variance over the batch:

    * invariance s = mean_{b,j} (z_a[b,j] - z_b[b,j])^2. Eq. 5 sums over j; the official code
      (``F.mse_loss``) averages over j too, and its coefficients are tuned for that; so is this.
    * variance v(Z) = (1/d) sum_j max(0, gamma - sqrt(Var(Z_j) + eps)) (eqs. 1-2), and
      variance = (v(Z_a) + v(Z_b)) / 2. Eq. 6 writes mu [v(Z) + v(Z')]; the official code halves
      each branch (``mean(relu(1 - std_x)) / 2 + mean(relu(1 - std_y)) / 2``) and so does this.
    * covariance c(Z) = (1/d) sum_{i != j} C(Z)_ij^2 with C(Z) = (Z - mean)^T (Z - mean) / (n - 1)
      (eqs. 3-4), and covariance = c(Z_a) + c(Z_b), as in eq. 6 and the official code.

    total = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance (eq. 6).

    The covariance sum costs O(n d^2) as written; ||X^T X||_F^2 = ||X X^T||_F^2 gives it in
    O(n^2 d) from the n x n Gram matrix, whose off-diagonal part is its Frobenius norm minus the
    (cheap) squared column sums. ``gram=None`` takes the Gram form when n < d. The Gram form is a
    difference of two sums, so its float32 rounding error scales with sum_j Var(Z_j)^2 / d rather
    than with the covariance term itself: negligible for training, visible (and possibly
    slightly negative) when the columns are almost exactly decorrelated.

    Args:
      z_a: Expander output of one view, [batch, dim], any float dtype.
      z_b: Expander output of the other view, same shape. Both receive gradient.
      sim_coeff: lambda, the invariance weight (25 in the paper).
      std_coeff: mu, the variance weight (25 in the paper).
      cov_coeff: nu, the covariance weight (1 in the paper).
      gamma: Target standard deviation of every dimension (1 in the paper).
      eps: Added to the variance before the square root (1e-4 in the paper and code); it also
        keeps the gradient finite for a collapsed (constant) dimension.
      gram: Form of the covariance sum: True for the n x n Gram matrix, False for the d x d
        covariance, None to choose from the static shapes. The value is the same.
      precision: Precision of the matrix products.

    Returns:
      ``(total, terms)``: the float32 total loss and a dict of the *unweighted* float32 terms
      ``{"invariance", "variance", "covariance"}``.

    Raises:
      ValueError: If an argument is not a float rank-2 array, the shapes differ, or the batch has
        fewer than 2 examples (the variance is undefined).

    Example:
      >>> import jax.numpy as jnp
      >>> z = jnp.ones((4, 3))  # collapsed: every std is 0, so every hinge is 1 - sqrt(1e-4)
      >>> total, terms = vicreg_loss(z, z)
      >>> round(float(terms["variance"]), 6), float(terms["covariance"]), round(float(total), 4)
      (0.99, 0.0, 24.75)

    References:
      Bardes, Ponce & LeCun, "VICReg: Variance-invariance-covariance regularization for
      self-supervised learning", ICLR 2022, https://arxiv.org/abs/2105.04906 (eqs. 1-6,
      Algorithm 1); official code facebookresearch/vicreg, ``main_vicreg.py``.
    """
    za, zb = _check_pair(z_a, z_b, ("z_a", "z_b"), min_batch=2)
    n, d = za.shape
    use_gram = _use_gram(gram, gram_cost=n * n * d, covariance_cost=n * d * d)

    invariance = jnp.mean(jnp.square(za - zb))

    def variance_and_covariance(z: jax.Array) -> tuple[jax.Array, jax.Array]:
        # Scaling the centred batch by 1/sqrt(n - 1) makes X^T X the covariance matrix itself
        # and keeps the squared entries away from float32 overflow for large batches.
        x = (z - jnp.mean(z, axis=0)) / jnp.sqrt(n - 1.0)
        var = jnp.sum(jnp.square(x), axis=0)  # unbiased Var(Z_j) = diag C(Z)
        v = jnp.mean(jax.nn.relu(gamma - jnp.sqrt(var + eps)))
        c = _squared_off_diagonal_sum_self(x, var, gram=use_gram, precision=precision) / d
        return v, c

    v_a, c_a = variance_and_covariance(za)
    v_b, c_b = variance_and_covariance(zb)
    variance = 0.5 * (v_a + v_b)
    covariance = c_a + c_b
    total = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    terms = {"invariance": invariance, "variance": variance, "covariance": covariance}
    return total.astype(jnp.float32), {k: t.astype(jnp.float32) for k, t in terms.items()}


def barlow_twins_loss(
    z_a: jax.Array,
    z_b: jax.Array,
    *,
    lambd: float = 5e-3,
    eps: float = 1e-5,
    gram: bool | None = None,
    precision: jax.lax.Precision = _HIGHEST,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    r"""Barlow Twins' redundancy-reduction loss (Zbontar et al. 2021, eq. 1).

    Each dimension is standardised over the batch, as the official code's
    ``nn.BatchNorm1d(dim, affine=False)`` does in training mode: A = (z_a - mean) /
    sqrt(biased var + eps), likewise B. The cross-correlation is C = A^T B / n (eq. 2 up to eps),
    and

        L = sum_i (1 - C_ii)^2 + lambd * sum_i sum_{j != i} C_ij^2        (eq. 1).

    C_ii = sum_b A_bi B_bi / n costs O(n d). The off-diagonal sum costs O(n d^2) from C; with
    ||A^T B||_F^2 = tr(A A^T B B^T) = sum((A A^T) * (B B^T)) it costs O(2 n^2 d) from the two
    n x n Gram matrices. ``gram=None`` takes the form with fewer multiply-adds (Gram when 2n < d).
    The Gram form is a difference of two sums, so its float32 rounding error scales with
    sum_i C_ii^2 ~ d rather than with the off-diagonal sum itself.

    Args:
      z_a: Projector output of one view, [batch, dim], any float dtype.
      z_b: Projector output of the other view, same shape. Both receive gradient.
      lambd: Weight of the off-diagonal (redundancy-reduction) term; 5e-3 in the paper (the
        official code's default is 0.0051).
      eps: BatchNorm's epsilon in the standardisation (torch's default, 1e-5, as in the code).
      gram: Form of the off-diagonal sum: True for the n x n Gram matrices, False for the d x d
        cross-correlation, None to choose from the static shapes. The value is the same.
      precision: Precision of the matrix products.

    Returns:
      ``(total, terms)``: the float32 total loss and a dict of the *unweighted* float32 terms
      ``{"on_diagonal", "off_diagonal"}``; total = on_diagonal + lambd * off_diagonal.

    Raises:
      ValueError: If an argument is not a float rank-2 array, the shapes differ, or the batch has
        fewer than 2 examples (the standardisation is undefined).

    Example:
      >>> import jax.numpy as jnp
      >>> z = jnp.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
      >>> total, terms = barlow_twins_loss(z, z, eps=0.0)  # C = identity
      >>> float(terms["on_diagonal"]), float(terms["off_diagonal"]), float(total)
      (0.0, 0.0, 0.0)

    References:
      Zbontar, Jing, Misra, LeCun & Deny, "Barlow Twins: Self-supervised learning via redundancy
      reduction", ICML 2021, https://arxiv.org/abs/2103.03230 (eqs. 1-2, Algorithm 1); official
      code facebookresearch/barlowtwins, ``main.py``.
    """
    za, zb = _check_pair(z_a, z_b, ("z_a", "z_b"), min_batch=2)
    n, d = za.shape
    use_gram = _use_gram(gram, gram_cost=2 * n * n * d, covariance_cost=n * d * d)

    def standardise(z: jax.Array) -> jax.Array:
        centred = z - jnp.mean(z, axis=0)
        var = jnp.mean(jnp.square(centred), axis=0)  # biased, as BatchNorm's batch statistics
        # The extra 1/sqrt(n) per side makes A^T B the cross-correlation C without a division.
        return centred * jax.lax.rsqrt(var + eps) / jnp.sqrt(float(n))

    a = standardise(za)
    b = standardise(zb)
    c_diag = jnp.sum(a * b, axis=0)
    on_diagonal = jnp.sum(jnp.square(1.0 - c_diag))
    if use_gram:
        gram_a = jnp.matmul(a, a.T, precision=precision)
        gram_b = jnp.matmul(b, b.T, precision=precision)
        off_diagonal = jnp.sum(gram_a * gram_b) - jnp.sum(jnp.square(c_diag))
    else:
        c = jnp.matmul(a.T, b, precision=precision)
        off_diagonal = jnp.sum(jnp.square(c - jnp.diag(jnp.diagonal(c))))
    total = on_diagonal + lambd * off_diagonal
    terms = {"on_diagonal": on_diagonal, "off_diagonal": off_diagonal}
    return total.astype(jnp.float32), {k: t.astype(jnp.float32) for k, t in terms.items()}


def dino_loss(
    student: list[jax.Array] | tuple[jax.Array, ...],
    teacher: list[jax.Array] | tuple[jax.Array, ...],
    center: jax.Array,
    *,
    student_temp: float,
    teacher_temp: jax.typing.ArrayLike,
) -> jax.Array:
    r"""DINO's cross-entropy between sharpened, centred teacher and student distributions.

    Caron et al. 2021, eq. 1-3 and Algorithm 1: with ``P_s(x) = softmax(g_s(x) / tau_s)`` and
    ``P_t(x) = softmax((g_t(x) - c) / tau_t)``,

        L = 1 / |pairs| * sum_{i in global} sum_{v != i} mean_batch H(P_t(x_i), P_s(x_v)),
        H(a, b) = -sum_k a_k log b_k,

    over every pair of a teacher (global) view i and a *different* student view v (global or
    local): the official ``DINOLoss.forward`` skips ``v == iq`` and divides by the number of
    terms. The teacher distributions carry no gradient.

    Args:
      student: the student's head outputs, one ``[B, K]`` array per view, the global views
        first in the teacher's order.
      teacher: the teacher's head outputs of the global views, one ``[B, K]`` array each.
      center: ``[K]`` or ``[1, K]``, the center c (:func:`dino_center_update`).
      student_temp: tau_s (0.1 in the paper).
      teacher_temp: tau_t at this step (0.04 -> 0.07 warm-up in the paper); may be traced.

    Returns:
      The float32 scalar loss.

    Raises:
      ValueError: for fewer than two views, shapes that differ, or a center of another width.
    """
    if len(teacher) < 1 or len(student) < 2 or len(student) < len(teacher):
        raise ValueError(
            f"DINO needs teacher outputs of the global views and student outputs of at least "
            f"those views: got {len(teacher)} teacher and {len(student)} student views."
        )
    s = [_as_float_matrix(x, f"student[{v}]", min_batch=1) for v, x in enumerate(student)]
    t = [_as_float_matrix(x, f"teacher[{i}]", min_batch=1) for i, x in enumerate(teacher)]
    shapes = {x.shape for x in s + t}
    if len(shapes) != 1:
        raise ValueError(f"DINO: every view's output must have one shape, got {sorted(shapes)}.")
    width = next(iter(shapes))[1]
    c = jnp.asarray(center, jnp.float32).reshape(-1)
    if c.shape != (width,):
        raise ValueError(f"DINO: center has shape {jnp.shape(center)}, outputs have width {width}.")
    log_p_s = [jax.nn.log_softmax(x / student_temp, axis=-1) for x in s]
    p_t = [jax.lax.stop_gradient(jax.nn.softmax((x - c) / teacher_temp, axis=-1)) for x in t]
    terms = [
        jnp.mean(-jnp.sum(q * log_p_s[v], axis=-1))
        for i, q in enumerate(p_t)
        for v in range(len(log_p_s))
        if v != i
    ]
    return (sum(terms) / len(terms)).astype(jnp.float32)


def dino_center_update(
    center: jax.Array,
    teacher: list[jax.Array] | tuple[jax.Array, ...],
    momentum: float,
) -> jax.Array:
    r"""DINO's center after a step: an EMA of the teacher outputs' batch mean.

    Caron et al. 2021, eq. 4: ``c <- m c + (1 - m) * mean over the batch of g_t(x)``, the mean
    over every global view of every example of the *global* batch (``update_center``
    all-reduces; under ``jit`` with a sharded batch the mean is global by itself).

    Args:
      center: ``[K]`` or ``[1, K]``, the current center.
      teacher: the teacher outputs of the global views, ``[B, K]`` each.
      momentum: m (0.9 in the paper).

    Returns:
      The new center, float32, the shape of ``center``.
    """
    rows = jnp.concatenate([jnp.asarray(x, jnp.float32) for x in teacher], axis=0)
    batch_center = jnp.mean(jax.lax.stop_gradient(rows), axis=0)
    new = momentum * jnp.asarray(center, jnp.float32).reshape(-1) + (1.0 - momentum) * batch_center
    return new.reshape(jnp.shape(center))
