"""Every config file and preset loads and passes the start-up checks; the CPU-budget presets."""

import ast
import pathlib
import re
import shlex

import jax
import numpy as np
import pytest

from ssljax import config_schema, methods, models, tree_paths

REPO = pathlib.Path(__file__).resolve().parents[1]
# Every registered method has configs/<name>.py: a new method needs no edit here.
CONFIGS = tuple(sorted(methods.METHODS))
# Methods with published MLP heads (DINO's projector is a DINOHead, with its own init).
MLP_HEAD_CONFIGS = tuple(m for m in CONFIGS if m in models.PUBLISHED_HEADS)


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


def _none_fields(c, prefix=""):
    """Dotted names of the fields holding None, and whether each can be overridden."""
    found = {}
    for key in c.keys():
        value = c[key]
        if hasattr(value, "keys"):
            found.update(_none_fields(value, f"{prefix}{key}."))
        elif value is None:
            try:  # a plain None field has no typed reference
                found[f"{prefix}{key}"] = c.get_ref(key).get_type() is not type(None)
            except ValueError:
                found[f"{prefix}{key}"] = False
    return found


@pytest.mark.parametrize("name", CONFIGS)
def test_fields_set_to_none_can_be_overridden_from_the_command_line(name):
    """A plain None field is refused by --config.x=y ("NoneType ... not supported")."""
    for preset in _presets(name):
        fields = _none_fields(_load(name, preset))
        assert all(fields.values()), f"{name}:{preset}: use config_dict.placeholder: {fields}"


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
    # Where the recipe has solo-learn's LARS: BYOL's LARS at this budget (apply_cpu_budget).
    "optimizer.lars_form",
    "optimizer.eta",
    "optimizer.clip_lr",
    # DINO: the teacher-temperature warm-up and the frozen last layer keep their share of the run.
    "method_config.warmup_teacher_temp_epochs",
    "optimizer.freeze",
}


@pytest.mark.parametrize("name", CONFIGS)
def test_cpu_budget_keeps_the_cifar10_recipe(name):
    full = tree_paths.flatten(_load(name, "cifar10"))
    cpu = tree_paths.flatten(_load(name, "cifar10_cpu"))
    changed = {k for k in set(full) | set(cpu) if full.get(k) != cpu.get(k)}
    assert changed <= BUDGET_FIELDS, changed - BUDGET_FIELDS
    assert cpu["model.backbone_kwargs.width"] == config_schema.CPU_BUDGET_WIDTH
    assert cpu["num_epochs"] == config_schema.CPU_BUDGET_EPOCHS
    assert cpu["warmup_epochs"] == pytest.approx(config_schema.CPU_BUDGET_EPOCHS / 10)
    assert cpu["knn.at_start"] and cpu["knn.k"] == 200
    if full["optimizer.name"] == "lars":
        # The short run's LARS is BYOL's (solo-learn's diverged or stalled at 1.25 epochs).
        assert (cpu["optimizer.lars_form"], cpu["optimizer.eta"]) == ("byol", 1e-3)
        assert not cpu["optimizer.clip_lr"]
    # Frozen parameters keep their share: DINO's last layer, 1 of 200 epochs -> 0.02 of 4.
    for (pattern, epochs), (cpu_pattern, cpu_epochs) in zip(
        full.get("optimizer.freeze", ()), cpu.get("optimizer.freeze", ()), strict=True
    ):
        assert cpu_pattern == pattern
        assert cpu_epochs / cpu["num_epochs"] == pytest.approx(epochs / full["num_epochs"])


def test_random_target_is_byol_at_the_cpu_budget_with_a_frozen_target():
    cpu = tree_paths.flatten(_load("byol", "cifar10_cpu"))
    frozen = tree_paths.flatten(_load("byol", "random_target"))
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


# Each preset's values beside the source it cites (configs/RECIPES.md has the full table).
# solo-learn = vturrisi/solo-learn scripts/pretrain/cifar/<method>.yaml (+ augmentations/*.yaml,
# solo/methods/<method>.py); the ImageNet presets follow each paper and its official code.
SOLO_LEARN_LARS = {
    "optimizer.name": "lars",
    "optimizer.lars_form": "solo_learn",
    "optimizer.eta": 0.02,  # optimizer.kwargs.eta
    "optimizer.clip_lr": True,  # optimizer.kwargs.clip_lr
    # exclude_bias_n_norm: 1-D tensors (biases, BN) skip weight decay and adaptation.
    "optimizer.exclude_from_weight_decay": (r"bias$", r"scale$"),
    "optimizer.momentum": 0.9,  # solo-learn's LARS default in its pretrain args
    "global_batch": 256,  # optimizer.batch_size on one device: lr * 256 / 256
    "warmup_epochs": 10.0,  # scheduler warmup_cosine, warmup_epochs default 10
    "num_epochs": 1000.0,  # max_epochs
    "heads.init": "torch",
    "model.backbone_kwargs.zero_init_residual": False,  # torchvision resnet18 defaults
}
ASYMMETRIC_CIFAR_VIEWS = {  # solo-learn augmentations/asymmetric.yaml
    **{f"augment.view{i}.crop_scale": (0.08, 1.0) for i in (1, 2)},
    **{f"augment.view{i}.saturation": 0.2 for i in (1, 2)},
    **{f"augment.view{i}.blur_prob": 0.0 for i in (1, 2)},
    "augment.view1.solarize_prob": 0.0,
    "augment.view2.solarize_prob": 0.2,
}
SIMSIAM_VIEWS = {  # facebookresearch/simsiam main_simsiam.py (MoCo v2's augmentation)
    **{f"augment.view{i}.crop_scale": (0.2, 1.0) for i in (1, 2)},
    **{f"augment.view{i}.brightness": 0.4 for i in (1, 2)},
    **{f"augment.view{i}.saturation": 0.4 for i in (1, 2)},
    **{f"augment.view{i}.hue": 0.1 for i in (1, 2)},
    **{f"augment.view{i}.blur_prob": 0.5 for i in (1, 2)},
    **{f"augment.view{i}.solarize_prob": 0.0 for i in (1, 2)},
}
BYOL_TABLE6_VIEWS = {  # Grill et al. 2020, Table 6 (also VICReg's and Barlow Twins' code)
    **{f"augment.view{i}.crop_scale": (0.08, 1.0) for i in (1, 2)},
    **{f"augment.view{i}.saturation": 0.2 for i in (1, 2)},
    "augment.view1.blur_prob": 1.0,
    "augment.view2.blur_prob": 0.1,
    "augment.view1.solarize_prob": 0.0,
    "augment.view2.solarize_prob": 0.2,
}
CITED = {
    ("byol", "cifar10"): {
        **SOLO_LEARN_LARS,
        **ASYMMETRIC_CIFAR_VIEWS,
        "optimizer.base_lr": 1.0,
        "optimizer.weight_decay": 1e-5,
        "tau_base": 0.99,  # momentum.base_tau (final_tau 1.0)
        "heads.projector_hidden": (4096,),
        "heads.projector_dim": 256,
        "heads.predictor_hidden": (4096,),
        "heads.projector_use_bias": True,  # solo/methods/byol.py: nn.Linear defaults
        "heads.projector_output_use_bias": True,
        "heads.predictor_use_bias": True,
        "heads.predictor_output_use_bias": True,
    },
    ("byol", "imagenet"): {
        **BYOL_TABLE6_VIEWS,
        "global_batch": 4096,
        "num_epochs": 1000.0,
        "warmup_epochs": 10.0,
        "optimizer.name": "lars",
        "optimizer.lars_form": "byol",
        "optimizer.clip_lr": False,
        "optimizer.eta": 1e-3,
        "optimizer.base_lr": 0.2,
        "optimizer.weight_decay": 1.5e-6,
        "optimizer.lr_multipliers": (),
        "tau_base": 0.996,
        "heads.init": "haiku",  # byol/utils/networks.py MLP: hk.Linear defaults
        "heads.projector_output_use_bias": False,
        "model.backbone_kwargs.zero_init_residual": True,  # Haiku BlockV1 batchnorm_2
    },
    ("simsiam", "cifar10"): {
        **SIMSIAM_VIEWS,
        # Chen & He 2021, Appendix D.
        "global_batch": 512,
        "num_epochs": 800.0,
        "optimizer.name": "sgd",
        "optimizer.base_lr": 0.03,
        "optimizer.weight_decay": 5e-4,
        "optimizer.momentum": 0.9,
        "heads.projector_hidden": (2048,),
        "heads.projector_dim": 2048,
        "heads.predictor_hidden": (512,),
        # The official code otherwise.
        "warmup_epochs": 0.0,
        "optimizer.fixed_lr": ("^predictor/",),
        "optimizer.exclude_from_weight_decay": (),
        "heads.init": "torch",
        "model.backbone_kwargs.zero_init_residual": True,
    },
    ("simsiam", "imagenet"): {
        **SIMSIAM_VIEWS,
        "global_batch": 512,
        "num_epochs": 100.0,
        "warmup_epochs": 0.0,
        "optimizer.name": "sgd",
        "optimizer.base_lr": 0.05,
        "optimizer.weight_decay": 1e-4,
        "optimizer.fixed_lr": ("^predictor/",),
        "optimizer.exclude_from_weight_decay": (),
        "heads.projector_hidden": (2048, 2048),
        "heads.projector_output_bn_affine": False,
        "heads.predictor_hidden": (512,),
        "heads.init": "torch",
        "model.backbone_kwargs.zero_init_residual": True,
    },
    ("vicreg", "cifar10"): {
        **SOLO_LEARN_LARS,
        # vicreg.yaml `augmentations`: one pipeline, num_crops 2.
        **{f"augment.view{i}.crop_scale": (0.2, 1.0) for i in (1, 2)},
        **{f"augment.view{i}.saturation": 0.2 for i in (1, 2)},
        **{f"augment.view{i}.blur_prob": 0.0 for i in (1, 2)},
        **{f"augment.view{i}.solarize_prob": 0.1 for i in (1, 2)},
        "optimizer.base_lr": 0.3,
        "optimizer.weight_decay": 1e-4,
        "heads.projector_hidden": (2048, 2048),
        "heads.projector_dim": 2048,
        "heads.projector_use_bias": True,
        "heads.projector_output_use_bias": True,
        "method_config.sim_coeff": 25.0,
        "method_config.std_coeff": 25.0,
        "method_config.cov_coeff": 1.0,
    },
    ("vicreg", "imagenet"): {
        **BYOL_TABLE6_VIEWS,
        "global_batch": 2048,
        "num_epochs": 1000.0,
        "warmup_epochs": 10.0,
        "optimizer.lars_form": "byol",
        "optimizer.eta": 1e-3,
        "optimizer.base_lr": 0.2,
        "optimizer.weight_decay": 1e-6,
        "optimizer.final_lr": 0.2 * 2048 / 256 * 1e-3,
        "heads.projector_hidden": (8192, 8192),
        "heads.projector_output_use_bias": False,
        "heads.init": "torch",
        "model.backbone_kwargs.zero_init_residual": True,
    },
    ("barlow_twins", "cifar10"): {
        **SOLO_LEARN_LARS,
        **ASYMMETRIC_CIFAR_VIEWS,
        "optimizer.base_lr": 0.3,
        "optimizer.weight_decay": 1e-4,
        "heads.projector_hidden": (2048, 2048),
        "heads.projector_dim": 2048,
        "heads.projector_use_bias": True,
        "heads.projector_output_use_bias": True,
        "method_config.lambd": 0.0051,  # solo/methods/barlow_twins.py default lamb
        "method_config.scale_loss": 0.1,  # barlow.yaml method_kwargs.scale_loss
    },
    ("barlow_twins", "imagenet"): {
        **BYOL_TABLE6_VIEWS,
        "global_batch": 2048,
        "num_epochs": 1000.0,
        "warmup_epochs": 10.0,
        "optimizer.lars_form": "byol",
        "optimizer.base_lr": 0.2,  # learning_rate_weights
        "optimizer.weight_decay": 1.5e-6,
        "optimizer.final_lr": 0.2 * 2048 / 256 * 1e-3,
        # learning_rate_biases 0.0048 for p.ndim == 1 (biases, BN), the same schedule.
        "optimizer.lr_multipliers": ((r"(bias|scale)$", 0.0048 / 0.2),),
        "heads.projector_hidden": (8192, 8192),
        "heads.projector_use_bias": False,
        "heads.projector_output_use_bias": False,
        "heads.init": "torch",
        "method_config.lambd": 0.0051,  # main.py --lambd, the released checkpoint's
        "model.backbone_kwargs.zero_init_residual": True,
    },
}


DINO_PAPER = {  # Caron et al. 2021, sec. 3.1 and App. A; facebookresearch/dino main_dino.py
    "method_config.student_temp": 0.1,
    "method_config.teacher_temp": 0.07,
    "method_config.warmup_teacher_temp": 0.04,
    "method_config.center_momentum": 0.9,
    "tau_base": 0.996,  # momentum_teacher, to 1 by cosine
    "heads.projector_type": "dino",
    "heads.bottleneck_dim": 256,
    "heads.norm_last_layer": True,
    "optimizer.clip_grad_per_param": 3.0,  # --clip_grad
    "optimizer.freeze": ((r"^projector/last_layer/", 1.0),),  # --freeze_last_layer 1
    "optimizer.final_lr": 1e-6,  # --min_lr
    **{f"augment.view{i}.crop_scale": (0.4, 1.0) for i in (1, 2)},  # global_crops_scale
    "augment.local_view.crop_scale": (0.05, 0.4),  # local_crops_scale
    "augment.view1.blur_prob": 1.0,  # DataAugmentationDINO: global 1 blur, global 2 blur 0.1
    "augment.view2.blur_prob": 0.1,  # and solarise 0.2, local blur 0.5
    "augment.view2.solarize_prob": 0.2,
    "augment.local_view.blur_prob": 0.5,
}
CITED[("dino", "imagenet")] = {
    **DINO_PAPER,
    "model.backbone": "vit_small_16",
    "global_batch": 1024,
    "num_epochs": 100.0,
    "warmup_epochs": 10.0,
    "method_config.warmup_teacher_temp_epochs": 30,
    "optimizer.name": "adamw",
    "optimizer.base_lr": 0.0005,  # lr * batch / 256
    "optimizer.weight_decay": 0.04,
    "optimizer.final_weight_decay": 0.4,  # --weight_decay_end
    "heads.projector_hidden": (2048, 2048),
    "heads.projector_dim": 65536,
    "augment.num_local_views": 10,
    "data.image_size": 224,
    "augment.local_image_size": 96,
}


@pytest.mark.parametrize("name, preset", sorted(CITED))
def test_preset_values_are_those_of_the_cited_source(name, preset):
    got = tree_paths.flatten(_load(name, preset))
    mismatched = {k: (got.get(k, "<missing>"), v) for k, v in CITED[name, preset].items()}
    mismatched = {k: gv for k, gv in mismatched.items() if gv[0] != gv[1]}
    assert not mismatched, mismatched


def test_barlow_twins_cifar10_scales_the_loss():
    from ssljax.methods import barlow_twins

    rng = np.random.default_rng(0)
    z = [{"projection": rng.normal(size=(16, 8)).astype(np.float32)} for _ in range(2)]
    cfg = _load("barlow_twins", "cifar10").method_config
    scaled, terms = barlow_twins.barlow_twins_method_loss(z, None, cfg)
    plain, plain_terms = barlow_twins.barlow_twins_method_loss(z, None, {"lambd": cfg.lambd})
    np.testing.assert_allclose(scaled, 0.1 * plain, rtol=1e-6)
    assert {k: float(v) for k, v in terms.items()} == {k: float(v) for k, v in plain_terms.items()}


@pytest.mark.parametrize("name", MLP_HEAD_CONFIGS)
def test_heads_get_the_presets_init_scheme(name):
    from ssljax import methods, train

    for preset in ("digits", "cifar10", "imagenet"):
        c = _load(name, preset)
        projector, predictor = train.build_heads(c, methods.get_method(name), np.float32)
        assert projector.init_scheme == c.heads.init, preset
        if predictor is not None:
            assert predictor.init_scheme == c.heads.init, preset


@pytest.mark.parametrize("name", MLP_HEAD_CONFIGS)
def test_imagenet_heads_are_the_published_heads(name):
    from ssljax import train

    c = _load(name, "imagenet")
    published = models.head_config_fields(name)
    assert {k: c.heads[k] for k in published} == published
    built = train.build_heads(c, methods.get_method(name), np.float32)
    attributes = ("hidden_dims", "output_dim", "use_bias", "output_use_bias", "output_bn")
    for role, module in zip(("projector", "predictor"), built, strict=True):
        if module is None:
            assert role not in models.PUBLISHED_HEADS[name]
            continue
        reference = models.create_head(name, role)
        assert {a: getattr(module, a) for a in attributes} == {
            a: getattr(reference, a) for a in attributes
        }, role


def test_method_settings_default_to_the_papers_values():
    # VICReg eq. 6 (lambda = mu = 25, nu = 1); Barlow Twins sec. 4 (lambda = 5e-3); DINO
    # sec. 3.1 / main_dino.py; BYOL and SimSiam have none.
    assert {name: dict(m.config_defaults) for name, m in methods.METHODS.items()} == {
        "byol": {},
        "simsiam": {},
        "vicreg": {"sim_coeff": 25.0, "std_coeff": 25.0, "cov_coeff": 1.0},
        "barlow_twins": {"lambd": 5e-3, "scale_loss": 1.0},
        "dino": {
            "student_temp": 0.1,
            "teacher_temp": 0.07,
            "warmup_teacher_temp": 0.04,
            "warmup_teacher_temp_epochs": 30,
            "center_momentum": 0.9,
        },
    }


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_starts_from_its_methods_settings(name):
    defaults = methods.get_method(name).config_defaults
    for preset in _presets(name):
        assert set(_load(name, preset).method_config) == set(defaults), preset


@pytest.mark.parametrize("name", CONFIGS)
def test_a_misspelt_method_config_field_is_refused_at_start_up(name):
    c = _load(name, "digits")
    c.method_config.not_a_field = 1.0
    with pytest.raises(ValueError, match=r"config\.method_config: .*not_a_field.*valid"):
        config_schema.validate(c, num_devices=1)


def _short_budget_recipes() -> list[tuple[str, str]]:
    """(method, overrides) of configs/RECIPES.md's short-budget recipes, as a user pastes them.

    The table rows ``| BYOL | `--config...` |`` and the DINO candidate's
    ``configs/dino.py:cifar10_cpu` with `--config...``.
    """
    text = (REPO / "configs" / "RECIPES.md").read_text()
    section = text.split("## Short-budget recipes", 1)[1].split("\n## ", 1)[0]
    names = {m.replace("_", " ").lower(): m for m in CONFIGS}
    recipes = [
        (names[name.lower()], overrides)
        for name, overrides in re.findall(
            r"^\| (\w[\w ]*) \| `(--config\.[^`]*)` \|", section, re.M
        )
    ]
    recipes += re.findall(r"`configs/(\w+)\.py:cifar10_cpu` with `(--config\.[^`]*)`", section)
    return recipes


def test_recipes_md_lists_the_short_budget_recipes():
    # The parser below must keep finding them: a reworded table would silently test nothing.
    assert {m for m, _ in _short_budget_recipes()} == {"byol", "simsiam", "dino"}


@pytest.mark.parametrize("method,overrides", _short_budget_recipes())
def test_short_budget_recipes_apply_as_pasted(method, overrides):
    # The overrides go through the same absl flag parser as `python -m ssljax.main`: a renamed
    # field or a value of the wrong type fails here, not in a user's 30-minute run.
    from absl import flags
    from ml_collections import config_flags

    argv = shlex.split(overrides)
    command = ["main", f"--config={REPO / 'configs' / method}.py:cifar10_cpu", *argv]
    flag_values = flags.FlagValues()
    # sys_argv: the override flags are declared from the command line the flag is defined with.
    config_flags.DEFINE_config_file("config", None, flag_values=flag_values, sys_argv=command)
    flag_values(command)
    config = flag_values.config
    config_schema.validate(config, num_devices=2)
    for arg in argv:
        key, value = arg.removeprefix("--config.").split("=", 1)
        got = config
        for part in key.split("."):
            got = got[part]
        try:
            expected = ast.literal_eval(value)
        except ValueError:  # a bare word: a string field (e.g. optimizer.name=adamw)
            expected = value
        assert got == expected, (key, got, value)
