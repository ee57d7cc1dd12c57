"""Barlow Twins (Zbontar et al. 2021): presets digits (default), cifar10, imagenet.

Commands:
  python -m ssljax.main --config=configs/barlow_twins.py --workdir=/tmp/bt_digits
  python -m ssljax.main --config=configs/barlow_twins.py:cifar10 --workdir=/tmp/bt_cifar10 \
      --config.data.root=/path/to/cifar10

imagenet: the paper's settings (sec. 4, "Implementation details"): ResNet-50, batch 2048, 1000
epochs, LARS, lr 0.2 * batch / 256 for the weights, weight decay 1.5e-6, 10 warm-up epochs then
cosine to 1/1000 of the peak, lambda = 5e-3, projector 8192-8192-8192 (linear layers, the last
without bias). Deviation: the paper uses lr 0.0048 for biases and BatchNorm parameters; here
they share the weights' schedule (and are excluded from weight decay and LARS adaptation).
cifar10: ResNet-18 (CIFAR stem), batch 256, LARS base lr 0.3, weight decay 1e-4, projector
2048-2048-2048, lambda 0.0051 (solo-learn's scripts/pretrain/cifar/barlow.yaml).
"""

from ssljax import config_schema

PRESETS = ("digits", "cifar10", "cifar10_cpu", "imagenet")


def get_config(arg: str | None = None):
    preset = config_schema.parse_preset(arg, PRESETS)
    c = config_schema.base_config()
    c.method = "barlow_twins"
    config_schema.set_dataset(c, preset)
    # The official code builds torchvision's ResNet with zero_init_residual=True.
    c.model.backbone_kwargs.zero_init_residual = True
    c.method_config.lambd = 5e-3
    c.heads.projector_hidden = (8192, 8192)
    c.heads.projector_dim = 8192
    # Official projector: no biases anywhere (its affine-free BN is part of the loss).
    c.heads.projector_use_bias = False
    c.heads.projector_output_use_bias = False
    c.optimizer.name = "lars"
    if preset == "imagenet":
        c.global_batch = 2048
        c.num_epochs = 1000.0
        c.optimizer.base_lr = 0.2
        c.optimizer.weight_decay = 1.5e-6
        c.optimizer.final_lr = 0.2 * 2048 / 256 * 1e-3
    elif preset in ("cifar10", "cifar10_cpu"):
        c.heads.projector_hidden = (2048, 2048)
        c.heads.projector_dim = 2048
        c.method_config.lambd = 0.0051
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
