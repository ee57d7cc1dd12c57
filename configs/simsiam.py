"""SimSiam (Chen & He 2021): presets digits (default), cifar10, imagenet.

Commands:
  python -m ssljax.main --config=configs/simsiam.py --workdir=/tmp/simsiam_digits
  python -m ssljax.main --config=configs/simsiam.py:cifar10 --workdir=/tmp/simsiam_cifar10 \
      --config.data.root=/path/to/cifar10

imagenet: the paper's settings (sec. 4, "Implementation details"): ResNet-50, batch 512, 100
epochs, SGD momentum 0.9, lr = 0.05 * batch / 256 with cosine decay and no warm-up, weight
decay 1e-4, the predictor's lr fixed (sec. 4.2, Table 1), projector 3 x 2048 with BN on every
layer (the output BN without affine parameters, linear layers without bias), predictor
2048-512-2048, nn.Linear's init; augmentations of main_simsiam.py (MoCo v2's): crop scale
(0.2, 1), jitter 0.4/0.4/0.4/0.1 with p 0.8, grayscale 0.2, blur p 0.5 on both views.
cifar10: the paper's CIFAR-10 experiment (Appendix D): ResNet-18 variant, batch 512, SGD
lr = 0.03 * batch / 256, weight decay 5e-4, momentum 0.9, 800 epochs, projector of 2 layers of
2048 (the output BN without affine), predictor 2048-512-2048; everything else as the official
code (zero-initialised residuals, nn.Linear's init, the fixed predictor rate) and its
augmentations (main_simsiam.py: crop 0.2, jitter 0.4/0.4/0.4/0.1, blur p 0.5 on both views).
Every value beside its source, and the deviations: configs/RECIPES.md.
"""

from ssljax import augment, config_schema

PRESETS = ("digits", "cifar10", "cifar10_cpu", "imagenet")


def get_config(arg: str | None = None):
    preset = config_schema.parse_preset(arg, PRESETS)
    c = config_schema.base_config()
    # Heads as the official builder.py (PUBLISHED_HEADS["simsiam"]): projector of three
    # 2048-wide Linears without bias and an affine-free output BN; predictor 2048-512-2048,
    # hidden without bias, output with.
    config_schema.set_method(c, "simsiam")
    config_schema.set_dataset(c, preset)
    # The official code builds torchvision's ResNet with zero_init_residual=True.
    c.model.backbone_kwargs.zero_init_residual = True
    c.optimizer.name = "sgd"
    c.optimizer.momentum = 0.9
    # The predictor keeps a constant learning rate (Chen & He 2021, Table 1 / sec. 4.2).
    c.optimizer.fixed_lr = ("^predictor/",)
    c.optimizer.exclude_from_weight_decay = ()  # the official code decays every parameter
    c.warmup_epochs = 0.0
    if preset != "digits":
        c.heads.init = "torch"  # builder.py: nn.Linear's default init
    if preset == "digits":
        for view in (c.augment.view1, c.augment.view2):
            view.solarize_prob = 0.0
    else:
        # main_simsiam.py (MoCo v2's augmentation), the same for both crops.
        views = augment.simsiam_views()
        c.augment.view1, c.augment.view2 = (config_schema.view_config(**v) for v in views)
    if preset == "imagenet":
        c.global_batch = 512
        c.num_epochs = 100.0
        c.optimizer.base_lr = 0.05
        c.optimizer.weight_decay = 1e-4
    elif preset in ("cifar10", "cifar10_cpu"):
        c.heads.projector_hidden = (2048,)
        c.global_batch = 512
        c.num_epochs = 800.0
        c.optimizer.base_lr = 0.03
        c.optimizer.weight_decay = 5e-4
    else:  # digits
        c.heads.projector_hidden = (256,)
        c.heads.projector_dim = 256
        c.heads.predictor_hidden = (64,)
        c.heads.predictor_dim = 256
        c.optimizer.base_lr = 0.05
        c.optimizer.weight_decay = 5e-4
    if preset == "cifar10_cpu":
        config_schema.apply_cpu_budget(c)
    return c
