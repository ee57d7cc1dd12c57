"""Weighted k-nearest-neighbour classification of embeddings (Wu et al. 2018, sec. 3.4).

Used as the kNN monitor during pretraining and by ``ssljax.evaluate --protocol=knn``.

* ``metric="cosine"`` (default): cosine similarity ``s`` on L2-normalised features; each of the
  ``k`` nearest neighbours votes for its class with weight ``exp(s / T)`` (Wu et al. 2018,
  eq. 6, the weighting of InstDisc's and MoCo's kNN monitors, used by most SSL codebases with
  ``k = 200, T = 0.07``), or with weight 1 when ``weighted=False``.
* ``metric="l2"``: Euclidean distance, one vote per neighbour (the classic majority-vote kNN;
  distance weighting is not defined for it here).

Ties are broken deterministically: among neighbours at equal similarity the one with the lower
train index ranks first (``jax.lax.top_k`` is stable), and a tie between class votes goes to
the lower class index (``argmax``).

Memory stays bounded for any data size: queries and train rows are processed in blocks of at
most ``max_block_elements`` similarities, and the top ``k`` of each train block is merged into
a running top ``k``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

METRICS = ("cosine", "l2")
# Similarities held at once (2**27 float32 = 512 MiB).
MAX_BLOCK_ELEMENTS = 2**27


@functools.partial(jax.jit, static_argnames=("k", "metric"))
def _block_top_k(train_x, train_sq, test_x, *, k, metric):
    """Top-``k`` similarities and indices (into this block) of each query against a block."""
    dots = jnp.matmul(test_x, train_x.T, precision=jax.lax.Precision.HIGHEST)
    if metric == "cosine":
        sim = dots
    else:
        # -||t - x||^2 without the per-query constant ||t||^2, which does not change the order.
        sim = 2.0 * dots - train_sq[None, :]
    return jax.lax.top_k(sim, min(k, sim.shape[1]))


@functools.partial(jax.jit, static_argnames=("k",))
def _merge_top_k(sim_a, idx_a, sim_b, idx_b, *, k):
    """Top-``k`` of two candidate lists; on equal similarity ``a`` (earlier rows) comes first."""
    sim = jnp.concatenate([sim_a, sim_b], axis=1)
    idx = jnp.concatenate([idx_a, idx_b], axis=1)
    top_sim, pos = jax.lax.top_k(sim, k)
    return top_sim, jnp.take_along_axis(idx, pos, axis=1)


@functools.partial(jax.jit, static_argnames=("k", "num_classes", "weighted"))
def _votes(top_sim, top_labels, temperature, *, k, num_classes, weighted):
    """Class votes ``[q, num_classes]`` of the first ``k`` neighbours (sorted by similarity)."""
    sim, labels = top_sim[:, :k], top_labels[:, :k]
    weights = jnp.exp(sim / temperature) if weighted else jnp.ones_like(sim)
    rows = jnp.broadcast_to(jnp.arange(sim.shape[0])[:, None], sim.shape)
    # A scatter-add instead of one_hot(labels) * weights: [q, k, C] would not fit for
    # ImageNet (k = 200, C = 1000).
    return jnp.zeros((sim.shape[0], num_classes), jnp.float32).at[rows, labels].add(weights)


def _check_inputs(train_x, train_y, test_x, ks, temperature, num_classes, metric, weighted):
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}.")
    if metric == "l2" and weighted:
        raise ValueError(
            "metric='l2' takes weighted=False (majority vote); the exp(s / T) weights are "
            "defined for cosine similarity."
        )
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(
            f"train_x {train_x.shape} and test_x {test_x.shape} must be [n, d] with the same d."
        )
    if train_y.shape != (train_x.shape[0],):
        raise ValueError(f"train_y {train_y.shape} must be [{train_x.shape[0]}] (one per row).")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    if train_y.size and (train_y.min() < 0 or train_y.max() >= num_classes):
        raise ValueError(
            f"train_y holds labels in [{train_y.min()}, {train_y.max()}], outside "
            f"[0, num_classes={num_classes})."
        )
    for k in ks:
        if not 1 <= k <= train_x.shape[0]:
            raise ValueError(f"k={k} must lie in [1, n_train={train_x.shape[0]}].")
    if weighted and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")


def knn_votes(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    *,
    ks: tuple[int, ...] = (200,),
    temperature: float = 0.07,
    num_classes: int,
    metric: str = "cosine",
    weighted: bool = True,
    max_block_elements: int = MAX_BLOCK_ELEMENTS,
) -> dict[int, np.ndarray]:
    """Class votes ``[n_test, num_classes]`` of a (weighted) kNN classifier for each ``k``.

    The neighbours are searched once for ``max(ks)``; each smaller ``k`` uses the first ``k`` of
    them.

    Args:
      train_x: train features ``[n_train, d]``.
      train_y: integer labels ``[n_train]`` in ``[0, num_classes)``.
      test_x: query features ``[n_test, d]``.
      ks: numbers of neighbours, each in ``[1, n_train]``.
      temperature: ``T`` of the vote weights ``exp(s / T)``.
      num_classes: number of classes.
      metric: ``"cosine"`` (features are L2-normalised here) or ``"l2"``.
      weighted: weight votes by ``exp(s / T)`` (cosine only); else one vote per neighbour.
      max_block_elements: similarities computed at once (bounds memory).

    Returns:
      ``{k: votes}``, votes as float32 NumPy ``[n_test, num_classes]``.

    Raises:
      ValueError: on inconsistent shapes, labels out of range, an unknown metric, weighted L2,
        a non-positive temperature or ``k`` out of range.
    """
    train_x = np.asarray(train_x, np.float32)
    test_x = np.asarray(test_x, np.float32)
    train_y = np.asarray(train_y)
    ks = tuple(int(k) for k in ks)
    _check_inputs(train_x, train_y, test_x, ks, temperature, num_classes, metric, weighted)
    if metric == "cosine":
        train_x = train_x / np.maximum(np.linalg.norm(train_x, axis=-1, keepdims=True), 1e-12)
        test_x = test_x / np.maximum(np.linalg.norm(test_x, axis=-1, keepdims=True), 1e-12)
    else:
        # Distances do not change under a common shift; centring on the train mean keeps
        # 2<t, x> - ||x||^2 small, so float32 cancellation does not reorder near neighbours.
        mean = train_x.mean(axis=0, dtype=np.float64).astype(np.float32)
        train_x, test_x = train_x - mean, test_x - mean
    train_sq = np.sum(np.square(train_x, dtype=np.float64), axis=-1).astype(np.float32)
    k_max = max(ks)
    n_train, n_test = train_x.shape[0], test_x.shape[0]
    train_block = int(min(n_train, max(k_max, max_block_elements // 256)))
    query_block = int(max(1, min(n_test, max_block_elements // train_block)))
    labels_dev = jnp.asarray(train_y, jnp.int32)
    train_blocks = [
        (start, jnp.asarray(train_x[start : start + train_block]),
         jnp.asarray(train_sq[start : start + train_block]))
        for start in range(0, n_train, train_block)
    ]  # fmt: skip
    out: dict[int, list[np.ndarray]] = {k: [] for k in ks}
    for q0 in range(0, n_test, query_block):
        queries = jnp.asarray(test_x[q0 : q0 + query_block])
        best_sim = best_idx = None
        for start, block_x, block_sq in train_blocks:
            sim, idx = _block_top_k(block_x, block_sq, queries, k=k_max, metric=metric)
            idx = idx + start
            if best_sim is None:
                best_sim, best_idx = sim, idx
            else:
                best_sim, best_idx = _merge_top_k(best_sim, best_idx, sim, idx, k=k_max)
        top_labels = labels_dev[best_idx]
        for k in ks:
            votes = _votes(
                best_sim,
                top_labels,
                jnp.float32(temperature),
                k=k,
                num_classes=num_classes,
                weighted=weighted,
            )
            out[k].append(np.asarray(votes))
    return {k: np.concatenate(v) for k, v in out.items()}


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
) -> np.ndarray:
    """Class votes ``[n_test, num_classes]`` for one ``k`` (see :func:`knn_votes`)."""
    return knn_votes(
        train_x,
        train_y,
        test_x,
        ks=(k,),
        temperature=temperature,
        num_classes=num_classes,
        metric=metric,
        weighted=weighted,
    )[k]


def knn_accuracies(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    ks: tuple[int, ...] = (200,),
    temperature: float = 0.07,
    num_classes: int,
    metric: str = "cosine",
    weighted: bool = True,
) -> dict[int, float]:
    """Top-1 accuracy on ``(test_x, test_y)`` for each ``k`` (capped at ``n_train``).

    Returns:
      ``{k: accuracy}`` (keys as given, before capping).

    Raises:
      ValueError: as :func:`knn_votes`, or if ``test_y`` is not ``[n_test]``.
    """
    test_y = np.asarray(test_y)
    if test_y.shape != (np.shape(test_x)[0],):
        raise ValueError(f"test_y {test_y.shape} must be [{np.shape(test_x)[0]}].")
    n_train = np.shape(train_x)[0]
    capped = {k: min(int(k), n_train) for k in ks}
    votes = knn_votes(
        train_x,
        train_y,
        test_x,
        ks=tuple(sorted(set(capped.values()))),
        temperature=temperature,
        num_classes=num_classes,
        metric=metric,
        weighted=weighted,
    )
    return {k: float(np.mean(np.argmax(votes[c], axis=-1) == test_y)) for k, c in capped.items()}


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
    """Top-1 accuracy of the kNN classifier for one ``k`` (capped at ``n_train``)."""
    return knn_accuracies(
        train_x,
        train_y,
        test_x,
        test_y,
        ks=(k,),
        temperature=temperature,
        num_classes=num_classes,
        metric=metric,
        weighted=weighted,
    )[k]
