"""Weighted k-nearest-neighbour classification of embeddings (Wu et al. 2018, sec. 3.4).

Used as the kNN monitor during pretraining and by ``ssljax.evaluate --protocol=knn``. Cosine
similarity on L2-normalised features; the top-k neighbours vote with weight ``exp(s / T)``
(the weighting of Wu et al. 2018, eq. 6 / InstDisc, used by most SSL codebases with k = 200,
T = 0.07). ``l2`` mode with ``weighted=False`` gives the plain majority-vote L2 kNN.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnames=("k", "num_classes", "metric", "weighted"))
def _knn_chunk(train_x, train_y, test_x, temperature, *, k, num_classes, metric, weighted):
    if metric == "cosine":
        sim = test_x @ train_x.T
    else:  # negative squared L2 distance, without the per-query constant ||test||^2
        sim = 2.0 * test_x @ train_x.T - jnp.sum(train_x**2, axis=-1)[None, :]
    top_sim, top_idx = jax.lax.top_k(sim, k)
    top_labels = train_y[top_idx]  # [q, k]
    if weighted:
        weights = jnp.exp(top_sim / temperature)
    else:
        weights = jnp.ones_like(top_sim)
    votes = jnp.sum(jax.nn.one_hot(top_labels, num_classes) * weights[..., None], axis=1)
    return votes  # [q, num_classes]


def knn_predict(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    *,
    k: int = 200,
    temperature: float = 0.07,
    num_classes: int,
    metric: str = "cosine",
    weighted: bool = True,
    chunk_size: int = 1024,
) -> np.ndarray:
    """Class votes ``[n_test, num_classes]`` of a weighted kNN classifier.

    Args:
      train_x: train features ``[n_train, d]``.
      train_y: integer labels ``[n_train]``.
      test_x: query features ``[n_test, d]``.
      k: neighbours; must not exceed ``n_train``.
      temperature: ``T`` of the vote weights ``exp(sim / T)`` (cosine metric).
      num_classes: number of classes.
      metric: ``"cosine"`` (features are L2-normalised here) or ``"l2"``.
      weighted: weight votes by ``exp(sim / T)``; else one vote per neighbour.
      chunk_size: queries per jitted chunk (bounds memory at ``chunk_size * n_train``).

    Returns:
      The votes per class, as float32 NumPy.

    Raises:
      ValueError: on inconsistent shapes, unknown metric, or ``k`` out of range.
    """
    if metric not in ("cosine", "l2"):
        raise ValueError(f"metric must be 'cosine' or 'l2', got {metric!r}.")
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train_x {train_x.shape} and test_x {test_x.shape} must be [n, d] alike.")
    if train_y.shape != (train_x.shape[0],):
        raise ValueError(f"train_y {train_y.shape} must be [{train_x.shape[0]}].")
    if not 1 <= k <= train_x.shape[0]:
        raise ValueError(f"k={k} must lie in [1, n_train={train_x.shape[0]}].")
    train_x = jnp.asarray(train_x, jnp.float32)
    test_x = np.asarray(test_x, np.float32)
    if metric == "cosine":
        train_x = train_x / jnp.maximum(jnp.linalg.norm(train_x, axis=-1, keepdims=True), 1e-12)
        test_x = test_x / np.maximum(np.linalg.norm(test_x, axis=-1, keepdims=True), 1e-12)
    train_y = jnp.asarray(train_y, jnp.int32)
    out = []
    for i in range(0, test_x.shape[0], chunk_size):
        out.append(
            np.asarray(
                _knn_chunk(
                    train_x,
                    train_y,
                    jnp.asarray(test_x[i : i + chunk_size]),
                    temperature,
                    k=k,
                    num_classes=num_classes,
                    metric=metric,
                    weighted=weighted,
                )
            )
        )
    return np.concatenate(out)


def knn_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    k: int = 200,
    temperature: float = 0.07,
    num_classes: int,
    metric: str = "cosine",
    weighted: bool = True,
) -> float:
    """Top-1 accuracy of :func:`knn_predict` on ``(test_x, test_y)``; ``k`` is capped at n_train."""
    k = min(k, train_x.shape[0])
    votes = knn_predict(
        train_x,
        train_y,
        test_x,
        k=k,
        temperature=temperature,
        num_classes=num_classes,
        metric=metric,
        weighted=weighted,
    )
    return float(np.mean(np.argmax(votes, axis=-1) == np.asarray(test_y)))
