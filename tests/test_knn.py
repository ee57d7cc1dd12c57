"""Weighted kNN (ssljax.knn) against a brute-force NumPy reference, and on real CIFAR-10 pixels.

The reference is written from Wu et al. 2018, sec. 3.4: rank the train rows by similarity
(cosine, or negative L2 distance) with ties to the lower train index, keep the first k, add
``exp(s / T)`` (or 1) to the vote of each neighbour's class, predict the class with the most
votes (ties to the lower class index).
"""

import pathlib
import time

import numpy as np
import pytest
from PIL import Image

from ssljax import knn

CLASSES = (
    "airplane automobile bird cat deer dog frog horse ship truck"  # CIFAR-10 label order
).split()


def reference_votes(train_x, train_y, test_x, *, k, num_classes, metric, weighted, t=0.07):
    train_x = np.asarray(train_x, np.float64)
    test_x = np.asarray(test_x, np.float64)
    if metric == "cosine":
        train_x = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
        test_x = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
        sim = test_x @ train_x.T
    else:
        sim = -((test_x[:, None, :] - train_x[None, :, :]) ** 2).sum(-1)
    votes = np.zeros((test_x.shape[0], num_classes))
    for q in range(test_x.shape[0]):
        order = np.argsort(-sim[q], kind="stable")[:k]  # ties: lower train index first
        for j in order:
            votes[q, train_y[j]] += np.exp(sim[q, j] / t) if weighted else 1.0
    return votes


def test_weighted_cosine_votes_equal_the_reference():
    rng = np.random.default_rng(0)
    train_x = rng.normal(size=(300, 8)).astype(np.float32)
    train_y = rng.integers(0, 5, 300)
    test_x = rng.normal(size=(40, 8)).astype(np.float32)
    got = knn.knn_votes(train_x, train_y, test_x, ks=(1, 7, 50), num_classes=5, temperature=0.1)
    for k in (1, 7, 50):
        want = reference_votes(
            train_x, train_y, test_x, k=k, num_classes=5, metric="cosine", weighted=True, t=0.1
        )
        np.testing.assert_allclose(got[k], want, rtol=2e-5)
        np.testing.assert_array_equal(got[k].argmax(1), want.argmax(1))


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_l2_majority_vote_equals_the_reference(offset):
    # A large common offset would make 2<t, x> - ||x||^2 cancel badly in float32; distances do
    # not change, and neither may the neighbours.
    rng = np.random.default_rng(1)
    train_x = (rng.normal(size=(400, 6)) + offset).astype(np.float32)
    train_y = rng.integers(0, 4, 400)
    test_x = (rng.normal(size=(60, 6)) + offset).astype(np.float32)
    got = knn.knn_votes(
        train_x, train_y, test_x, ks=(1, 5), num_classes=4, metric="l2", weighted=False
    )
    for k in (1, 5):
        want = reference_votes(
            train_x, train_y, test_x, k=k, num_classes=4, metric="l2", weighted=False
        )
        np.testing.assert_array_equal(got[k], want)


def test_ties_go_to_the_lower_train_index_then_the_lower_class():
    # Three copies of one point with labels 3, 1, 2, then a far point: every query is at the
    # same distance from the three copies.
    train_x = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], np.float32)
    train_y = np.array([3, 1, 2, 0])
    test_x = np.array([[2.0, 0.0]], np.float32)
    for metric in ("cosine", "l2"):
        votes = knn.knn_votes(
            train_x, train_y, test_x, ks=(1, 2), num_classes=4, metric=metric, weighted=False
        )
        # k=1: the first copy (label 3). k=2: labels 3 and 1 tie at one vote; class 1 wins.
        np.testing.assert_array_equal(votes[1][0], [0, 0, 0, 1])
        np.testing.assert_array_equal(votes[2][0], [0, 1, 0, 1])
        assert votes[2][0].argmax() == 1
        want = reference_votes(
            train_x, train_y, test_x, k=2, num_classes=4, metric=metric, weighted=False
        )
        np.testing.assert_array_equal(votes[2], want)


def test_blocked_search_equals_one_block_with_ties_across_blocks():
    # Duplicate rows far apart in index land in different train blocks; the merge must keep the
    # lower index first, as one block does.
    rng = np.random.default_rng(2)
    base = rng.normal(size=(50, 4)).astype(np.float32)
    train_x = np.concatenate([base, base, rng.normal(size=(57, 4)).astype(np.float32)])
    train_y = rng.integers(0, 3, train_x.shape[0])
    test_x = rng.normal(size=(33, 4)).astype(np.float32)
    kwargs = dict(ks=(1, 10, 30), num_classes=3, weighted=False)
    whole = knn.knn_votes(train_x, train_y, test_x, **kwargs)
    blocked = knn.knn_votes(train_x, train_y, test_x, max_block_elements=256 * 40, **kwargs)
    for k in (1, 10, 30):
        np.testing.assert_array_equal(blocked[k], whole[k])
        want = reference_votes(
            train_x, train_y, test_x, k=k, num_classes=3, metric="cosine", weighted=False
        )
        np.testing.assert_array_equal(whole[k], want)


def test_accuracy_caps_k_at_the_train_size():
    train_x = np.eye(3, dtype=np.float32)
    acc = knn.knn_accuracies(
        train_x, np.arange(3), train_x, np.arange(3), ks=(1, 200), num_classes=3
    )
    assert acc[1] == 1.0 and set(acc) == {1, 200}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(metric="l2", weighted=True), "weighted=False"),
        (dict(metric="manhattan"), "metric"),
        (dict(ks=(0,)), "k=0"),
        (dict(ks=(11,)), "k=11"),
        (dict(temperature=0.0), "temperature"),
        (dict(num_classes=2), "outside"),
    ],
)
def test_bad_input_raises_naming_the_argument(kwargs, match):
    rng = np.random.default_rng(3)
    args = dict(ks=(1,), num_classes=3, temperature=0.07, metric="cosine", weighted=True)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        knn.knn_votes(rng.normal(size=(10, 4)), np.arange(10) % 3, rng.normal(size=(2, 4)), **args)
    with pytest.raises(ValueError, match="same d"):
        knn.knn_votes(np.zeros((10, 4)), np.zeros(10, int), np.zeros((2, 5)), num_classes=3)


# ----------------------------------------------------------------------------------------------
# Real CIFAR-10 raw pixels.
# ----------------------------------------------------------------------------------------------
def load_cifar_pixels(root: pathlib.Path, split: str, per_class: int | None = None):
    """Flattened uint8 pixels and labels, classes in the standard order, files sorted."""
    xs, ys = [], []
    for label, name in enumerate(CLASSES):
        files = sorted((root / split / name).iterdir())[:per_class]
        for path in files:
            with Image.open(path) as im:
                xs.append(np.asarray(im.convert("RGB"), np.uint8).reshape(-1))
            ys.append(label)
    return np.stack(xs), np.asarray(ys)


def reference_predictions(train_x, train_y, test_x, *, k, metric, weighted, t=0.07):
    """Vectorised float64 brute force of :func:`reference_votes` (same tie rules)."""
    train_x = np.asarray(train_x, np.float64)
    test_x = np.asarray(test_x, np.float64)
    if metric == "cosine":
        train_x /= np.linalg.norm(train_x, axis=1, keepdims=True)
        test_x /= np.linalg.norm(test_x, axis=1, keepdims=True)
        sim = test_x @ train_x.T
    else:
        sim = 2 * test_x @ train_x.T - (train_x**2).sum(1)[None]  # -dist^2 + ||t||^2, exact
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    weights = np.exp(np.take_along_axis(sim, order, 1) / t) if weighted else np.ones(order.shape)
    votes = np.zeros((test_x.shape[0], 10))
    np.add.at(votes, (np.arange(test_x.shape[0])[:, None], train_y[order]), weights)
    return votes.argmax(1)


def test_cifar10_pixel_knn_subset_matches_numpy_brute_force(cifar10_dir):
    # 500 train and 100 test images per class (files in sorted order), pixels in [0, 1].
    train_x, train_y = load_cifar_pixels(cifar10_dir, "train", 500)
    test_x, test_y = load_cifar_pixels(cifar10_dir, "test", 100)
    train_x, test_x = train_x / 255.0, test_x / 255.0
    for metric, k, weighted in (("l2", 1, False), ("cosine", 200, True)):
        got = knn.knn_votes(
            train_x, train_y, test_x, ks=(k,), num_classes=10, metric=metric, weighted=weighted
        )[k].argmax(1)
        want = reference_predictions(
            train_x, train_y, test_x, k=k, metric=metric, weighted=weighted
        )
        # float32 against float64: at most a near-tie or two may flip among 1,000 queries.
        assert np.mean(got == want) >= 0.998, (metric, np.mean(got == want))
        assert abs(np.mean(got == test_y) - np.mean(want == test_y)) <= 0.002
        assert np.mean(got == test_y) > 0.2  # well above the 10% of chance


@pytest.mark.slow
def test_cifar10_pixel_knn_full_gives_the_known_figures(cifar10_dir):
    """50,000 train / 10,000 test, flattened pixels in [0, 1].

    L2 1-NN: 35.30% (the data README's 35.3%); cosine-weighted k=200, T=0.07 on the raw
    (uncentred) pixels: 31.18%. Both figures measured with a float64 NumPy brute force.
    """
    start = time.perf_counter()
    train_x, train_y = load_cifar_pixels(cifar10_dir, "train")
    test_x, test_y = load_cifar_pixels(cifar10_dir, "test")
    assert train_x.shape == (50000, 3072) and test_x.shape == (10000, 3072)
    print(f"loaded 60,000 JPEGs in {time.perf_counter() - start:.1f} s")
    train_x, test_x = train_x / 255.0, test_x / 255.0
    l2 = knn.knn_accuracy(
        train_x, train_y, test_x, test_y, k=1, num_classes=10, metric="l2", weighted=False
    )
    cos = knn.knn_accuracy(
        train_x, train_y, test_x, test_y, k=200, temperature=0.07, num_classes=10
    )
    assert abs(l2 - 0.3530) <= 0.0015, l2
    assert abs(cos - 0.3118) <= 0.0015, cos
