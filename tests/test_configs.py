"""Every config file and preset loads and passes the start-up checks; the CPU-budget presets."""

import pathlib

import jax
import numpy as np
import pytest

from ssljax import config_schema, models

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ("byol", "simsiam", "vicreg", "barlow_twins")


def _load(name: str, preset: str):
    return config_schema.load_config(f"{REPO / 'configs' / name}.py:{preset}")


def _presets(name: str) -> tuple[str, ...]:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"cfg_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PRESETS


@pytest.mark.parametrize("name", CONFIGS)
def test_every_preset_loads_and_validates(name):
    presets = _presets(name)
    assert {"digits", "cifar10", "cifar10_cpu", "imagenet"} <= set(presets)
    for preset in presets:
        c = _load(name, preset)
        assert c.method == name
        config_schema.validate(c, num_devices=8)
    with pytest.raises(ValueError, match="valid: .*cifar10_cpu"):
        _load(name, "cifar100")


def _flat(c) -> dict:
    out = {}

    def walk(d, prefix):
        for k, v in d.items():
            if hasattr(v, "items"):
                walk(v, f"{prefix}{k}.")
            else:
                out[prefix + k] = v

    walk(c.to_dict(), "")
    return out


# The fields apply_cpu_budget changes; every other field must be the cifar10 recipe's.
BUDGET_FIELDS = {
    "model.backbone_kwargs.width",
    "num_epochs",
    "warmup_epochs",
    "knn.every_epochs",
    "knn.at_start",
    "knn.at_end",
    "log_every_steps",
    "checkpoint.every_steps",
}


@pytest.mark.parametrize("name", CONFIGS)
def test_cpu_budget_keeps_the_cifar10_recipe(name):
    full, cpu = _flat(_load(name, "cifar10")), _flat(_load(name, "cifar10_cpu"))
    changed = {k for k in set(full) | set(cpu) if full.get(k) != cpu.get(k)}
    assert changed <= BUDGET_FIELDS, changed - BUDGET_FIELDS
    assert cpu["model.backbone_kwargs.width"] == config_schema.CPU_BUDGET_WIDTH
    assert cpu["num_epochs"] == config_schema.CPU_BUDGET_EPOCHS
    assert cpu["warmup_epochs"] == pytest.approx(config_schema.CPU_BUDGET_EPOCHS / 10)
    assert cpu["knn.at_start"] and cpu["knn.k"] == 200


def test_random_target_is_byol_at_the_cpu_budget_with_a_frozen_target():
    cpu, frozen = _flat(_load("byol", "cifar10_cpu")), _flat(_load("byol", "random_target"))
    changed = {k for k in cpu if cpu[k] != frozen[k]}
    assert changed == {"tau_base"}
    assert frozen["tau_base"] == 1.0 and cpu["tau_base"] == 0.99


def test_cpu_budget_backbone_is_a_quarter_width_resnet18():
    c = _load("byol", "cifar10_cpu")
    backbone = models.create_backbone(c.model.backbone, **c.model.backbone_kwargs)
    x = np.zeros((1, 32, 32, 3), np.float32)
    variables = jax.eval_shape(lambda: backbone.init(jax.random.key(0), x, train=False))
    count = sum(np.prod(p.shape) for p in jax.tree.leaves(variables["params"]))
    # ResNet-18 (CIFAR stem) has 11,168,832 backbone parameters at width 1; at width 0.25 every
    # conv has 1/16 of them and the BatchNorms 1/4: 16 base channels, 128 features.
    assert backbone.num_features == 128
    assert count == 700_176, count
