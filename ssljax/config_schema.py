"""The fields every ssljax config has, their defaults, and the start-up checks on them.

Each file in ``configs/`` starts from :func:`base_config` and sets its method and preset; the
training loop calls :func:`validate` before building anything, so a typo or an impossible value
fails in the first second with a message that names the field, not after compilation.
"""

from __future__ import annotations

import math

import ml_collections

from ssljax import augment, matmul_precision, optim, tree_paths
from ssljax.models import heads


def view_config(**overrides) -> ml_collections.ConfigDict:
    """One view's augmentation settings: ``ssljax.augment.VIEW_DEFAULTS`` with ``overrides``.

    Raises:
      ValueError: for an unknown key or an invalid value (``augment.validate_view_config``).
    """
    return ml_collections.ConfigDict(augment.validate_view_config(overrides, name="view_config"))


def base_config() -> ml_collections.ConfigDict:
    """Returns a config with every field ssljax reads, at neutral defaults."""
    c = ml_collections.ConfigDict()
    c.method = "byol"
    # Method-specific loss settings (VICReg: sim/std/cov coefficients; Barlow Twins: lambd).
    c.method_config = ml_collections.ConfigDict()
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.backbone = "resnet18_cifar"
    c.model.backbone_kwargs = ml_collections.ConfigDict()  # e.g. width=0.5
    # Compute dtype; params, BatchNorm statistics and losses stay float32.
    c.model.dtype = "float32"
    # Precision of float32 matrix products and convolutions (ssljax.matmul_precision):
    # "default" is JAX's (TF32 on NVIDIA GPUs since Ampere, bfloat16 passes on TPU); "float32"
    # computes them in full float32, as a strict float32 reference does.
    c.model.matmul_precision = "default"

    # The published heads of the default method (BYOL's: 4096-256 projector and predictor,
    # hidden layers with bias, output without, as its Haiku MLP); each config file sets its
    # own method's from the same source, ssljax.models.heads.PUBLISHED_HEADS.
    c.heads = ml_collections.ConfigDict(heads.head_config_fields(c.method))
    # Initialisation of the heads' Dense layers: 'flax' (LeCun normal, zero bias), 'torch'
    # (PyTorch's nn.Linear: U(+-1/sqrt(fan_in)) for kernel and bias) or 'haiku' (hk.Linear:
    # normal truncated at 2 std, std 1/sqrt(fan_in), zero bias); see ssljax.models.heads.
    c.heads.init = "flax"

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"
    c.data.data_dir = "~/ssljax_data"
    c.data.root = ""  # source folder for image_folder datasets
    c.data.train_split = "train"
    c.data.eval_split = "test"
    # Loader worker processes; -1 = automatic (ssljax.data.workers: from the host's cores on
    # GPU/TPU, 0 on a CPU backend and for in-memory datasets).
    c.data.num_workers = -1
    c.data.image_size = 32
    c.data.crop_in_loader = False

    c.augment = ml_collections.ConfigDict()
    # BYOL's asymmetric views (Grill et al. 2020, Table 6), as ssljax.augment.byol_views.
    c.augment.view1, c.augment.view2 = (view_config(**v) for v in augment.byol_views())
    # Multi-crop (Caron et al. 2020, SwAV; DINO): this many local views after the two global
    # ones, each a crop of `local_view`'s settings at local_image_size pixels. The target branch
    # sees the global views only. 0 = the two-view methods' two views.
    c.augment.num_local_views = 0
    c.augment.local_image_size = 0
    c.augment.local_view = view_config(**augment.dino_local_view())

    c.global_batch = 256
    # Devices on the mesh's second axis, over which large parameters (and their optimizer and
    # EMA copies) are sharded, FSDP-style; 1 = pure data parallelism. The batch is split over
    # every device either way.
    c.fsdp = 1
    c.num_epochs = 100.0
    c.num_steps = -1  # > 0 overrides num_epochs
    c.warmup_epochs = 10.0

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "lars"
    c.optimizer.base_lr = 0.2
    c.optimizer.weight_decay = 1.5e-6
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.eta = 1e-3
    # LARS: 'byol' (the official BYOL/VICReg/Barlow Twins optimizer) or 'solo_learn' (solo-learn's
    # CIFAR recipes); clip_lr is solo-learn's LARC-style clipping (ssljax.optim.solo_learn_lars).
    c.optimizer.lars_form = "byol"
    c.optimizer.clip_lr = False
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.final_lr = 0.0
    c.optimizer.exclude_from_weight_decay = (r"bias$", r"scale$")
    c.optimizer.fixed_lr = ()
    # ((regex, multiplier), ...): per-group rates as multiples of the schedule (Barlow Twins'
    # biases and BatchNorm parameters); see ssljax.optim.build_optimizer.
    c.optimizer.lr_multipliers = ()
    # ((regex, epochs), ...): parameters held fixed for that many epochs (DINO's last layer;
    # a frozen-kernel baseline: (("^backbone/.*kernel$", 1e9),)); see ssljax.optim.
    c.optimizer.freeze = ()

    # EMA of the target network (BYOL): tau from tau_base to 1 by cosine. Ignored by methods
    # without an EMA target.
    c.tau_base = 0.996

    # The online linear probe on stop_gradient(features) (BYOL's online classifier).
    c.probe = ml_collections.ConfigDict()
    c.probe.enabled = True
    c.probe.lr = 1e-3  # Adam; its own optimizer, never touching the backbone

    c.knn = ml_collections.ConfigDict()
    c.knn.every_epochs = 10.0  # <= 0 disables the monitor during training
    c.knn.k = 200
    c.knn.temperature = 0.07
    c.knn.at_end = True
    # Also measure the randomly initialised network, the baseline pretraining must beat.
    c.knn.at_start = False
    # ... after estimating its BatchNorm statistics from this many training batches (as many
    # steps at learning rate 0 would; ssljax.train.calibrate_batch_stats); 0 keeps the initial
    # statistics of 0 and 1, under which evaluation-mode BatchNorm does not normalise.
    c.knn.bn_calibration_batches = 50

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 1000
    c.checkpoint.keep = 3
    c.checkpoint.async_save = True

    c.log_every_steps = 50
    # Steps whose loss or gradient is not finite leave the state unchanged; this many in a row
    # stop the run.
    c.max_consecutive_nonfinite = 10
    # Where to start from when the workdir has no checkpoint ('' = random initialisation).
    c.init_from = ""
    # Resume a workdir even though its config.json differs in fields that change the run.
    c.allow_config_change = False
    return c


def _fail(field: str, message: str) -> None:
    raise ValueError(f"config.{field}: {message}")


def _check_finite_numbers(config: ml_collections.ConfigDict) -> None:
    """Refuses NaN or infinity in any numeric field (or tuple of numbers), naming the field."""
    for name, value in tree_paths.flatten(config).items():
        values = value if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                _fail(name, f"must be a finite number, got {value}.")


def validate(
    config: ml_collections.ConfigDict, *, num_devices: int, num_processes: int = 1
) -> None:
    """Checks every value that can be checked before anything is built or compiled.

    Args:
      config: the full config.
      num_devices: devices the global batch is sharded over.
      num_processes: JAX processes each loading its own share of the batch.

    Raises:
      ValueError: naming the first invalid field and what to change.
    """
    from ssljax import methods  # late import: configs import this module
    from ssljax.methods import base as method_base

    # First: NaN passes every comparison below (nan < 0 is False) and fails much later.
    _check_finite_numbers(config)
    method = methods.get_method(config.method)
    try:
        method_base.resolve_method_config(method.name, method.config_defaults, config.method_config)
    except ValueError as err:
        _fail("method_config", str(err))
    if config.seed < 0:
        _fail("seed", f"must be >= 0 (a PRNG seed), got {config.seed}.")
    if config.global_batch <= 0:
        _fail("global_batch", f"must be positive, got {config.global_batch}.")
    if config.global_batch % num_devices:
        _fail(
            "global_batch",
            f"{config.global_batch} is not divisible by the {num_devices} devices; "
            f"use a multiple of {num_devices}.",
        )
    if config.global_batch % num_processes:
        _fail(
            "global_batch",
            f"{config.global_batch} is not divisible by the {num_processes} processes.",
        )
    if config.fsdp < 1 or num_devices % config.fsdp:
        _fail("fsdp", f"{config.fsdp} must be >= 1 and divide the {num_devices} devices.")
    if config.num_steps <= 0 and config.num_epochs <= 0:
        _fail("num_epochs", "set num_epochs > 0 or num_steps > 0.")
    if config.warmup_epochs < 0:
        _fail("warmup_epochs", f"must be >= 0, got {config.warmup_epochs}.")
    # The optimizer's and the EMA's own checks (ssljax.optim owns their values), run here so
    # that a bad value fails at start-up, before data is read or anything is compiled.
    try:
        optim.resolve_optimizer_config(config.optimizer)
    except ValueError as err:
        _fail("optimizer", str(err))
    try:
        optim.check_tau_base(config.tau_base)
    except ValueError as err:
        raise ValueError(f"config.{err}") from None  # "config.tau_base must be in [0, 1]..."
    if config.model.dtype not in ("float32", "bfloat16", "float16"):
        _fail("model.dtype", f"must be float32, bfloat16 or float16, got {config.model.dtype!r}.")
    if config.model.matmul_precision not in matmul_precision.MATMUL_PRECISIONS:
        _fail(
            "model.matmul_precision",
            f"must be one of {', '.join(matmul_precision.MATMUL_PRECISIONS)}, got "
            f"{config.model.matmul_precision!r}.",
        )
    if config.data.num_workers < -1:
        _fail(
            "data.num_workers",
            f"must be >= 0 (loader processes) or -1 (automatic), got {config.data.num_workers}.",
        )
    if config.data.image_size <= 0:
        _fail("data.image_size", f"must be positive, got {config.data.image_size}.")
    num_local = config.augment.get("num_local_views", 0)
    if num_local < 0:
        _fail("augment.num_local_views", f"must be >= 0, got {num_local}.")
    if num_local and config.augment.local_image_size <= 0:
        _fail(
            "augment.local_image_size",
            f"must be positive with {num_local} local views, got "
            f"{config.augment.local_image_size}.",
        )
    if num_local and config.data.crop_in_loader:
        # The loader crops every view of an example at one size and one scale range.
        _fail(
            "augment.num_local_views",
            "local views need their crops on device (data.crop_in_loader=False, images of a "
            "fixed size); the loader's crops are all global views.",
        )
    if config.knn.k <= 0:
        _fail("knn.k", f"must be positive, got {config.knn.k}.")
    if config.knn.temperature <= 0:
        _fail("knn.temperature", f"must be positive, got {config.knn.temperature}.")
    if config.log_every_steps <= 0:
        _fail("log_every_steps", f"must be positive, got {config.log_every_steps}.")
    if config.checkpoint.every_steps <= 0:
        _fail("checkpoint.every_steps", f"must be positive, got {config.checkpoint.every_steps}.")
    if config.checkpoint.keep <= 0:
        _fail("checkpoint.keep", f"must be positive, got {config.checkpoint.keep}.")
    if config.max_consecutive_nonfinite <= 0:
        _fail("max_consecutive_nonfinite", "must be positive.")
    if config.probe.lr < 0:
        _fail("probe.lr", f"must be >= 0, got {config.probe.lr}.")


def parse_preset(arg: str | None, presets: tuple[str, ...], default: str = "digits") -> str:
    """Returns the preset named by a config argument (``f.py:cifar10`` -> ``"cifar10"``).

    Raises:
      ValueError: for an unknown preset, listing the valid ones.
    """
    preset = arg or default
    if preset not in presets:
        raise ValueError(f"Unknown preset {preset!r}; valid: {list(presets)}.")
    return preset


def set_method(c: ml_collections.ConfigDict, name: str) -> None:
    """Makes ``c`` a config of method ``name`` at the method's published settings.

    Sets ``c.method``; ``c.method_config`` to the method's ``config_defaults`` (the paper's
    coefficients and temperatures, written once in the method's module); and the heads to
    ``ssljax.models.heads.PUBLISHED_HEADS[name]`` where the method has an MLP head there. A
    config file then changes only what its preset deviates in.

    Raises:
      ValueError: for an unknown method (listing the valid ones).
    """
    from ssljax import methods  # late import: configs import this module

    method = methods.get_method(name)
    c.method = name
    c.method_config = ml_collections.ConfigDict(dict(method.config_defaults))
    if name in heads.PUBLISHED_HEADS:
        c.heads.update(heads.head_config_fields(name))


def set_dataset(c: ml_collections.ConfigDict, preset: str) -> None:
    """Sets data, backbone, batch and evaluation settings shared by every method's preset.

    * ``digits``: the embedded default -- scikit-learn's 1,797 8x8 digits, a small ResNet at
      16x16, a couple of minutes on a 2-core CPU, nothing downloaded.
    * ``cifar10``: CIFAR-10 from the shared JPEG folders (``image_folder``), ResNet-18 with the
      CIFAR stem, batch 256, as the published CIFAR reproductions (solo-learn).
    * ``imagenet``: ``imagenet2012`` from TFDS, ResNet-50, 224 pixels, crops in the loader.
    """
    if preset in ("digits",):
        c.data.name = "digits"
        c.data.image_size = 16
        c.model.backbone = "resnet_tiny"
        c.global_batch = 128
        c.num_epochs = 40.0
        c.warmup_epochs = 2.0
        c.knn.every_epochs = 10.0
        c.knn.k = 20
        c.knn.at_start = True
        c.log_every_steps = 10
        c.checkpoint.every_steps = 100
        for view in (c.augment.view1, c.augment.view2):
            # Digits are not natural images: no hue shifts, no flips (a flipped 2 is no 2),
            # no blur at 16 pixels, and crops that keep most of the digit.
            view.flip_prob = 0.0
            view.hue = 0.0
            view.blur_prob = 0.0
            view.crop_scale = (0.5, 1.0)
    elif preset.startswith("cifar10"):
        c.data.name = "image_folder"
        c.data.root = "../shared/data/cifar10"  # cifar10-jpg.tar.gz unpacked here
        c.data.data_dir = "~/ssljax_data"
        c.data.image_size = 32
        c.model.backbone = "resnet18_cifar"
        c.global_batch = 256
        c.num_epochs = 1000.0
        c.warmup_epochs = 10.0
        c.knn.every_epochs = 50.0
        c.knn.k = 200
        c.log_every_steps = 50
        c.checkpoint.every_steps = 1000
        for view in (c.augment.view1, c.augment.view2):
            # solo-learn's asymmetric.yaml (its BYOL and Barlow Twins CIFAR recipes): no blur.
            # Methods whose CIFAR recipe blurs (SimSiam) set it back in their config.
            view.blur_prob = 0.0
    elif preset == "imagenet":
        c.data.name = "imagenet2012"
        c.data.data_dir = "~/tensorflow_datasets"
        c.data.train_split = "train"
        c.data.eval_split = "validation"
        c.data.image_size = 224
        c.data.crop_in_loader = True
        c.model.backbone = "resnet50"
        c.model.dtype = "bfloat16"
        c.knn.every_epochs = 0.0
        c.knn.at_end = False
        c.log_every_steps = 100
        c.checkpoint.every_steps = 5000
    else:
        raise ValueError(f"Unknown dataset preset {preset!r}.")


# The CPU budget of the ``cifar10_cpu`` presets (the README's CIFAR-10 table): ResNet-18 with
# the CIFAR stem at a quarter of its width (16 base channels, 0.70 M parameters instead of
# 11.2 M, about 1/16 of the FLOPs), trained for this many epochs: BYOL's step runs at about
# 125 images/s on the 2-core reference CPU, so 4 epochs (200,000 images) take about 27 minutes.
CPU_BUDGET_WIDTH = 0.25
CPU_BUDGET_EPOCHS = 4.0


def apply_cpu_budget(c: ml_collections.ConfigDict) -> None:
    """Shrinks a ``cifar10`` preset to the ``cifar10_cpu`` budget of a 2-core CPU.

    Keeps the method's CIFAR-10 recipe (heads, learning rate, augmentations) and changes the
    backbone's width and the length of the schedule: warm-up is a tenth of the run (the recipes'
    10 of 1000 epochs would leave no warm-up at all), DINO's teacher-temperature warm-up keeps
    its share of the run (at least an epoch), so do frozen parameters (DINO's last layer), the
    kNN monitor runs at initialisation and at the end (each pass embeds 60,000 images),
    checkpoints every 200 steps.

    One deviation of the recipe itself, for this budget only: where the recipe uses solo-learn's
    LARS (eta 0.02 with ``clip_lr``), the short run uses BYOL's LARS (eta 1e-3, no clipping;
    ``optim.byol_lars``). Measured at 1.25 epochs on an H200 (2026-12-04): with solo-learn's LARS
    VICReg's loss became non-finite by step 20 in ssljax *and* in the PyTorch reference
    (``benchmarks/torch_reference.py``), whose warm-up here is 24 steps instead of the recipe's
    1,950, and BYOL ended at the kNN of its initialisation (+0.7 points), against +6.0 with
    BYOL's LARS. configs/RECIPES.md states it.
    """
    if "warmup_teacher_temp_epochs" in c.method_config:
        # DINO's teacher-temperature warm-up keeps its share of the run (at least one epoch:
        # the schedule is per epoch).
        share = c.method_config.warmup_teacher_temp_epochs / c.num_epochs
        c.method_config.warmup_teacher_temp_epochs = max(1, round(share * CPU_BUDGET_EPOCHS))
    # Frozen parameters (DINO's last layer, 1 of the recipe's 200 epochs) keep their share of
    # the run too: one whole epoch would freeze a quarter of the budget.
    if c.optimizer.get("freeze"):
        c.optimizer.freeze = tuple(
            (pattern, epochs * CPU_BUDGET_EPOCHS / c.num_epochs)
            for pattern, epochs in c.optimizer.freeze
        )
    c.model.backbone_kwargs.width = CPU_BUDGET_WIDTH
    c.num_epochs = CPU_BUDGET_EPOCHS
    c.warmup_epochs = CPU_BUDGET_EPOCHS / 10
    c.knn.every_epochs = 0.0
    c.knn.at_start = True
    c.knn.at_end = True
    c.log_every_steps = 20
    c.checkpoint.every_steps = 200
    if c.optimizer.name == "lars" and c.optimizer.get("lars_form", "byol") == "solo_learn":
        c.optimizer.lars_form = "byol"
        c.optimizer.eta = 1e-3
        c.optimizer.clip_lr = False


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads ``path/to/config.py[:arg]`` as ``--config`` does (for tests and notebooks).

    Args:
      spec: a config file path, optionally followed by ``:`` and the preset argument.

    Returns:
      ``get_config(arg)`` of that file.

    Raises:
      FileNotFoundError: if the file does not exist.
    """
    import importlib.util
    import os

    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file {path!r} not found.")
    module_spec = importlib.util.spec_from_file_location(f"ssljax_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)
