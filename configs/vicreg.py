"""VICReg (Bardes et al. 2022): presets digits (default), cifar10, imagenet.

Commands:
  python -m ssljax.main --config=configs/vicreg.py --workdir=/tmp/vicreg_digits
  python -m ssljax.main --config=configs/vicreg.py:cifar10 --workdir=/tmp/vicreg_cifar10 \
      --config.data.root=/path/to/cifar10

imagenet: the paper's settings (sec. 4.1 and Appendix C.1): ResNet-50, batch 2048, 1000 epochs,
LARS with base lr 0.2 (lr = 0.2 * batch / 256), weight decay 1e-6, eta 1e-3, 10 warm-up epochs
then cosine to 0.001 of the peak (official code), expander 8192-8192-8192,
loss coefficients lambda = mu = 25, nu = 1, augmentations as BYOL's (blur 1.0 / 0.1, solarise
0.0 / 0.2).
cifar10: solo-learn's scripts/pretrain/cifar/vicreg.yaml: ResNet-18 (CIFAR stem, torchvision's
init without zero-initialised residuals), batch 256, LARS (solo-learn's: eta 0.02, clip_lr,
biases and BN parameters excluded) with base lr 0.3, weight decay 1e-4, expander
2048-2048-2048 with biases and PyTorch's init, symmetric augmentations (crop 0.2, no blur,
solarise 0.1 on both views).
Every value beside its source, and the deviations: configs/RECIPES.md.
"""

from ssljax import config_schema

PRESETS = ("digits", "cifar10", "cifar10_cpu", "imagenet")


def get_config(arg: str | None = None):
    preset = config_schema.parse_preset(arg, PRESETS)
    c = config_schema.base_config()
    # method_config: sim/std/cov coefficients 25, 25, 1 (eq. 6); heads as the official
    # Projector() (PUBLISHED_HEADS["vicreg"]): 8192-8192-8192, hidden Linears with bias.
    config_schema.set_method(c, "vicreg")
    config_schema.set_dataset(c, preset)
    # The official code builds torchvision's ResNet with zero_init_residual=True.
    c.model.backbone_kwargs.zero_init_residual = True
    c.optimizer.name = "lars"
    if preset != "digits":
        c.heads.init = "torch"  # main_vicreg.py and solo-learn: nn.Linear's default init
    if preset == "imagenet":
        c.global_batch = 2048
        c.num_epochs = 1000.0
        c.optimizer.base_lr = 0.2
        c.optimizer.weight_decay = 1e-6
        c.optimizer.final_lr = 0.2 * 2048 / 256 * 1e-3
    elif preset in ("cifar10", "cifar10_cpu"):
        c.heads.projector_hidden = (2048, 2048)
        c.heads.projector_dim = 2048
        c.optimizer.base_lr = 0.3
        c.optimizer.weight_decay = 1e-4
        # solo-learn vicreg.yaml `optimizer.kwargs`: clip_lr True, eta 0.02, exclude_bias_n_norm.
        c.optimizer.lars_form = "solo_learn"
        c.optimizer.eta = 0.02
        c.optimizer.clip_lr = True
        # solo/methods/vicreg.py: every nn.Linear with bias; solo-learn builds torchvision's
        # resnet18 with its defaults (zero_init_residual=False).
        c.heads.projector_output_use_bias = True
        c.model.backbone_kwargs.zero_init_residual = False
        # vicreg.yaml `augmentations`: one pipeline for both crops (num_crops 2).
        for view in (c.augment.view1, c.augment.view2):
            view.crop_scale = (0.2, 1.0)
            view.blur_prob = 0.0
            view.solarize_prob = 0.1
    else:  # digits
        c.heads.projector_hidden = (256, 256)
        c.heads.projector_dim = 256
        c.optimizer.base_lr = 0.3
        c.optimizer.weight_decay = 1e-4
    if preset == "cifar10_cpu":
        config_schema.apply_cpu_budget(c)
    return c
