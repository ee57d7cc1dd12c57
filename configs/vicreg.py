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
cifar10: ResNet-18 (CIFAR stem), batch 256, LARS base lr 0.3, weight decay 1e-4, expander
2048-2048-2048 (solo-learn's scripts/pretrain/cifar/vicreg.yaml).
"""

from ssljax import config_schema

PRESETS = ("digits", "cifar10", "cifar10_cpu", "imagenet")


def get_config(arg: str | None = None):
    preset = config_schema.parse_preset(arg, PRESETS)
    c = config_schema.base_config()
    c.method = "vicreg"
    config_schema.set_dataset(c, preset)
    # The official code builds torchvision's ResNet with zero_init_residual=True.
    c.model.backbone_kwargs.zero_init_residual = True
    c.method_config.sim_coeff = 25.0
    c.method_config.std_coeff = 25.0
    c.method_config.cov_coeff = 1.0
    c.heads.projector_hidden = (8192, 8192)
    c.heads.projector_dim = 8192
    # Official Projector(): hidden Linears with bias, the last without.
    c.heads.projector_use_bias = True
    c.heads.projector_output_use_bias = False
    c.optimizer.name = "lars"
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
    else:  # digits
        c.heads.projector_hidden = (256, 256)
        c.heads.projector_dim = 256
        c.optimizer.base_lr = 0.3
        c.optimizer.weight_decay = 1e-4
    if preset == "cifar10_cpu":
        config_schema.apply_cpu_budget(c)
    return c
