"""The shared comparison rule of the sharding tests must itself catch what it claims to."""

import numpy as np
import pytest
from param_compare import assert_params_close, gradient_is_zero_analytically

NAMES = [
    "params/predictor/dense_0/bias",
    "params/predictor/dense_0/kernel",
    "params/predictor/bn_0/scale",
    "params/predictor/dense_1/bias",  # the output layer: no bn_1, so a real gradient
    "params/backbone/conv_init/kernel",
]


def test_only_biases_that_feed_a_batchnorm_are_exempt():
    exempt = [n for n in NAMES if gradient_is_zero_analytically(n, NAMES)]
    assert exempt == ["params/predictor/dense_0/bias"]


def _tree(rng):
    return {n: rng.normal(size=(4, 3)) for n in NAMES}


def test_rounding_noise_passes_and_real_differences_fail():
    rng = np.random.default_rng(0)
    ref = _tree(rng)
    # 1e-6 relative noise everywhere, and a BN-fed bias of 1e-9 against 3e-9: passes.
    noisy = {k: v * (1 + 1e-6 * rng.normal(size=v.shape)) for k, v in ref.items()}
    ref["params/predictor/dense_0/bias"] = np.full((4, 3), 1e-9)
    noisy["params/predictor/dense_0/bias"] = np.full((4, 3), -3e-9)
    assert_params_close(noisy, ref)
    # 1e-3 of a kernel's norm is a real difference.
    bad = dict(noisy)
    bad["params/backbone/conv_init/kernel"] = ref["params/backbone/conv_init/kernel"] * 1.001
    with pytest.raises(AssertionError, match="conv_init/kernel"):
        assert_params_close(bad, ref)
    # The output layer's bias has a gradient: a small absolute difference is not excused.
    bad = dict(noisy)
    bad["params/predictor/dense_1/bias"] = ref["params/predictor/dense_1/bias"] + 1e-3
    with pytest.raises(AssertionError, match="dense_1/bias"):
        assert_params_close(bad, ref)
    # A BN-fed bias that moved for real (beyond rounding) fails too.
    bad = dict(noisy)
    bad["params/predictor/dense_0/bias"] = np.full((4, 3), 1e-3)
    with pytest.raises(AssertionError, match="dense_0/bias"):
        assert_params_close(bad, ref)
