"""benchmarks/view_stats.py: statistics of two implementations' views, and their agreement."""

import numpy as np
import pytest
import view_stats

IDENTITY_VIEW = {
    "crop_scale": (1.0, 1.0),
    "crop_ratio": (1.0, 1.0),
    "flip_prob": 0.0,
    "jitter_prob": 0.0,
    "brightness": 0.4,
    "contrast": 0.4,
    "saturation": 0.4,
    "hue": 0.1,
    "grayscale_prob": 0.0,
    "blur_prob": 0.0,
    "blur_sigma": (0.1, 2.0),
    "solarize_prob": 0.0,
}


def _normalised(x):
    return (np.asarray(x, np.float64) - np.asarray(view_stats.MEAN)) / np.asarray(view_stats.STD)


def test_statistics_of_known_views():
    grey = np.full((2, 4, 4, 3), 0.25)  # constant grey images in [0, 1]
    stripes = np.zeros((2, 4, 4, 3))
    stripes[:, :, ::2, 0] = 1.0  # red columns on black: saturation 1 there
    s = view_stats.view_statistics(_normalised(grey), _normalised(stripes))
    x = np.concatenate([grey, stripes])
    assert s["pixel_mean"] == pytest.approx(x.mean())
    assert s["pixel_std"] == pytest.approx(x.std())
    assert s["saturation"] == pytest.approx(0.25)  # half the pixels of half the views
    assert s["grey_share"] == pytest.approx(0.5)
    # Horizontal neighbours of the stripes differ by 1 in one channel of three: 1/3 per pair.
    assert s["high_freq"] == pytest.approx(0.5 * (1 / 3))
    same = view_stats.view_statistics(_normalised(stripes), _normalised(stripes))
    assert same["pair_sq_distance"] == 0.0 and same["pair_cosine"] == pytest.approx(1.0)


def test_identity_views_agree_exactly_and_a_planted_difference_shows():
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    table = view_stats.compare([IDENTITY_VIEW, IDENTITY_VIEW], images, repeats=2)
    for name, row in table.items():
        assert abs(row["diff"]) < 1e-5, (name, row)
    # Every view grey on both sides: both count them all.
    grey = {**IDENTITY_VIEW, "grayscale_prob": 1.0}
    table = view_stats.compare([grey, grey], images, repeats=2)
    assert table["grey_share"]["ssljax"] == table["grey_share"]["torch"] == 1.0
    assert table["saturation"]["ssljax"] == pytest.approx(0.0, abs=1e-6)


def test_decision_distributions_agree_and_a_planted_bias_shows(monkeypatch):
    from ssljax import augment

    view = augment.simsiam_views()[0]
    table = view_stats.compare_decisions(view, 4000)
    assert {"p_jitter", "brightness_factor", "hue_position", "blur_sigma", "crop_area"} <= set(
        table
    )
    for name, row in table.items():
        assert abs(row["z"]) < 4.5, (name, row)
    assert table["p_jitter"]["ssljax"] == pytest.approx(0.8, abs=0.03)

    sample = view_stats.torch_reference.ViewTransform.sample
    rng = np.random.default_rng(0)

    def greyer(self, height, width):  # the reference greys 10% more views
        p = sample(self, height, width)
        p["grayscale"] = p["grayscale"] or rng.uniform() < 0.125
        return p

    monkeypatch.setattr(view_stats.torch_reference.ViewTransform, "sample", greyer)
    assert view_stats.compare_decisions(view, 4000)["p_grayscale"]["z"] < -6
