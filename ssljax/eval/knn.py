"""The kNN protocol: weighted k-nearest-neighbour top-1 (Wu et al. 2018) of frozen features.

A thin protocol over :mod:`ssljax.knn`, the classifier the training loop's kNN monitor uses, so
that the monitor's number and the evaluation's number of the same ``k`` are the same
computation (:func:`training_knn_note` says which of the results that is).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ssljax import knn


def knn_protocol(
    train_feats: tuple[np.ndarray, np.ndarray],
    test_feats: tuple[np.ndarray, np.ndarray],
    *,
    num_classes: int,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
) -> dict[str, float]:
    """Cosine-weighted kNN top-1 (Wu et al. 2018) for each ``k`` in ``ks``.

    Each test example takes the ``k`` train examples of highest cosine similarity ``s``; each
    votes for its label with weight ``exp(s / temperature)`` (eq. 6 of the paper).

    Args:
      train_feats: ``(x [n, d], y [n])`` of the train split (the memory bank).
      test_feats: ``(x [m, d], y [m])`` of the evaluation split.
      num_classes: number of classes.
      ks: the neighbour counts to report.
      temperature: the vote temperature ``T``.

    Returns:
      ``{'knn_top1_k<k>': accuracy, ..., 'knn_seconds'}``.
    """
    start = time.perf_counter()
    accs = knn.knn_accuracies(
        train_feats[0],
        train_feats[1],
        test_feats[0],
        test_feats[1],
        ks=tuple(int(k) for k in ks),
        temperature=temperature,
        num_classes=num_classes,
    )
    out = {f"knn_top1_k{k}": v for k, v in accs.items()}
    out["knn_seconds"] = time.perf_counter() - start
    return out


def training_knn_note(train_knn: Any, eval_knn: Any) -> str:
    """Says which of the evaluation's k values the training log's "kNN top-1" is.

    Args:
      train_knn: the run's ``config.knn`` (``k``, ``temperature``).
      eval_knn: the evaluation config's ``knn`` (``ks``, ``temperature``).

    Returns:
      One sentence naming the matching result key, or saying that none matches.
    """
    k, t = int(train_knn.k), float(train_knn.temperature)
    ks = [int(x) for x in eval_knn.ks]
    if k in ks and math.isclose(t, float(eval_knn.temperature)):
        return (
            f"knn_top1_k{k} is the training log's kNN top-1 (config.knn.k={k}, temperature {t:g})."
        )
    return (
        f"The training log's kNN top-1 uses k={k}, temperature {t:g}; none of these results "
        f"does (ks={ks}, temperature {float(eval_knn.temperature):g}): add "
        "--eval_override=knn.ks=" + ",".join(str(x) for x in sorted({*ks, k})) + "."
    )
