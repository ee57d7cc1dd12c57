"""Barlow Twins (Zbontar et al. 2021): presets digits (default), cifar10, imagenet.

Commands:
  python -m ssljax.main --config=configs/barlow_twins.py --workdir=/tmp/bt_digits
  python -m ssljax.main --config=configs/barlow_twins.py:cifar10 --workdir=/tmp/bt_cifar10 \
      --config.data.root=/path/to/cifar10

imagenet: the paper's settings (sec. 4, "Implementation details"): ResNet-50, batch 2048, 1000
epochs, LARS, lr 0.2 * batch / 256 for the weights, weight decay 1.5e-6, 10 warm-up epochs then
cosine to 1/1000 of the peak, lambda = 0.0051 (the official code's; the paper rounds it to
5e-3), projector 8192-8192-8192 (linear layers without bias); as the official main.py, biases
and BatchNorm parameters at lr 0.0048 (* batch / 256, the weights' schedule scaled by
0.0048 / 0.2) and excluded from weight decay and LARS adaptation.
cifar10: solo-learn's scripts/pretrain/cifar/barlow.yaml: ResNet-18 (CIFAR stem, torchvision's
init without zero-initialised residuals), batch 256, LARS (solo-learn's: eta 0.02, clip_lr,
biases and BN parameters excluded) with base lr 0.3, weight decay 1e-4, projector
2048-2048-2048 with biases and PyTorch's init, lambda 0.0051, the loss scaled by 0.1,
asymmetric.yaml augmentations (no blur, solarise 0.0 / 0.2).
Every value beside its source, and the deviations: configs/RECIPES.md.
"""

from ssljax import config_schema

PRESETS = ("digits", "cifar10", "cifar10_cpu", "imagenet")


def get_config(arg: str | None = None):
    preset = config_schema.parse_preset(arg, PRESETS)
    c = config_schema.base_config()
    # method_config: lambd 5e-3; heads as the official projector (PUBLISHED_HEADS
    # ["barlow_twins"]): 8192-8192-8192 without biases (its affine-free BN is in the loss).
    config_schema.set_method(c, "barlow_twins")
    config_schema.set_dataset(c, preset)
    # The official code builds torchvision's ResNet with zero_init_residual=True.
    c.model.backbone_kwargs.zero_init_residual = True
    c.optimizer.name = "lars"
    if preset != "digits":
        c.heads.init = "torch"  # barlowtwins main.py and solo-learn: nn.Linear's default init
    if preset == "imagenet":
        c.global_batch = 2048
        c.num_epochs = 1000.0
        c.optimizer.base_lr = 0.2
        c.optimizer.weight_decay = 1.5e-6
        c.optimizer.final_lr = 0.2 * 2048 / 256 * 1e-3
        # main.py's --lambd default and the released checkpoint's (the paper rounds to 5e-3).
        c.method_config.lambd = 0.0051
        # main.py: param_groups[1] (p.ndim == 1: biases and BN parameters) at
        # learning_rate_biases 0.0048 against learning_rate_weights 0.2, same schedule.
        c.optimizer.lr_multipliers = ((r"(bias|scale)$", 0.0048 / 0.2),)
    elif preset in ("cifar10", "cifar10_cpu"):
        c.heads.projector_hidden = (2048, 2048)
        c.heads.projector_dim = 2048
        c.method_config.lambd = 0.0051
        c.method_config.scale_loss = 0.1  # barlow.yaml method_kwargs.scale_loss
        c.optimizer.base_lr = 0.3
        c.optimizer.weight_decay = 1e-4
        # solo-learn barlow.yaml `optimizer.kwargs`: clip_lr True, eta 0.02, exclude_bias_n_norm.
        c.optimizer.lars_form = "solo_learn"
        c.optimizer.eta = 0.02
        c.optimizer.clip_lr = True
        # solo/methods/barlow_twins.py: every nn.Linear with bias; solo-learn builds
        # torchvision's resnet18 with its defaults (zero_init_residual=False).
        c.heads.projector_use_bias = True
        c.heads.projector_output_use_bias = True
        c.model.backbone_kwargs.zero_init_residual = False
    else:  # digits
        c.heads.projector_hidden = (256, 256)
        c.heads.projector_dim = 256
        c.optimizer.base_lr = 0.3
        c.optimizer.weight_decay = 1e-4
    if preset == "cifar10_cpu":
        config_schema.apply_cpu_budget(c)
    return c
