"""The one flattener of configs and variable trees."""

import ml_collections
import numpy as np
from flax.core import frozen_dict

from ssljax import tree_paths


def test_flattens_dicts_configdicts_and_frozendicts_alike():
    nested = {"a": {"b": 1, "c": {"d": (2, 3)}}, "e": "x", "empty": {}}
    want = {"a.b": 1, "a.c.d": (2, 3), "e": "x"}
    assert tree_paths.flatten(nested) == want
    assert tree_paths.flatten(ml_collections.ConfigDict(nested)) == want
    assert tree_paths.flatten(frozen_dict.freeze(nested)) == want


def test_separator_prefix_and_leaf_function():
    params = {"conv": {"kernel": [1.0, 2.0]}, "bn": {"scale": [3.0]}}
    flat = tree_paths.flatten(params, sep="/", prefix="params/", leaf=np.asarray)
    assert sorted(flat) == ["params/bn/scale", "params/conv/kernel"]
    assert isinstance(flat["params/conv/kernel"], np.ndarray)
    np.testing.assert_array_equal(flat["params/conv/kernel"], [1.0, 2.0])


def test_sequences_are_leaves_not_descended():
    assert tree_paths.flatten({"a": [{"b": 1}]}) == {"a": [{"b": 1}]}
