"""config.model.matmul_precision: validated, applied to what the run compiles, and logged."""

import json

import jax
import jax.numpy as jnp
import pytest

from ssljax import checkpointing, config_schema, matmul_precision


def _lowered_text(value: str) -> str:
    """StableHLO of a convolution followed by a matrix product, traced under ``value``."""

    def f(x, k, w):
        y = jax.lax.conv_general_dilated(
            x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return y.reshape(y.shape[0], -1) @ w

    args = (jnp.ones((2, 4, 4, 3)), jnp.ones((3, 3, 3, 5)), jnp.ones((80, 7)))
    with matmul_precision.applied(value):
        return jax.jit(f).lower(*args).as_text()


def test_float32_makes_every_product_highest_precision():
    text = _lowered_text("float32")
    # Both the convolution and the dot carry the precision XLA must honour.
    assert text.count("HIGHEST") >= 2, text


def test_default_leaves_jax_choice_and_nothing_leaks_out_of_the_block():
    assert "HIGHEST" not in _lowered_text("default")
    _lowered_text("float32")
    assert jax.config.jax_default_matmul_precision is None
    assert "HIGHEST" not in _lowered_text("default")


def test_tensorfloat32_and_bfloat16_are_passed_on():
    assert "HIGH>" in _lowered_text("tensorfloat32") or "HIGH," in _lowered_text("tensorfloat32")
    assert "HIGHEST" not in _lowered_text("bfloat16")


def test_unknown_value_is_refused_with_the_allowed_ones():
    with pytest.raises(ValueError, match="float32"):
        matmul_precision.check("fp32")
    c = config_schema.load_config("configs/byol.py:digits")
    c.model.matmul_precision = "fp32"
    with pytest.raises(ValueError, match=r"config\.model\.matmul_precision: must be one of"):
        config_schema.validate(c, num_devices=1, num_processes=1)


@pytest.mark.parametrize(
    "value, platform, expected",
    [
        ("default", "gpu", "TF32"),
        ("default", "cpu", "JAX's default (float32"),
        ("float32", "gpu", "float32 (model.matmul_precision)"),
    ],
)
def test_the_log_line_says_what_it_means_here(value, platform, expected):
    assert expected in matmul_precision.describe(value, platform)


def test_a_run_saved_before_the_field_existed_still_resumes():
    """A config.json written before model.matmul_precision existed: no difference at its default."""
    current = json.loads(config_schema.load_config("configs/byol.py:digits").to_json_best_effort())
    saved = json.loads(json.dumps(current))
    del saved["model"]["matmul_precision"]
    assert checkpointing.config_differences(saved, current) == {}
    current["model"]["matmul_precision"] = "float32"
    assert checkpointing.config_differences(saved, current) == {
        "model.matmul_precision": ("<absent>", "float32")
    }
