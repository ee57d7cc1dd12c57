"""ssljax's train step against the same step in plain PyTorch, measured in the same run.

The PyTorch step is built from the same ssljax config (``configs/<method>.py:cifar10``, batch
256) and does the same work as ``ssljax.train.make_train_step`` on the same shapes:

* ResNet-18 with the CIFAR stem (3x3/1 convolution, no max-pool), written here in plain
  ``torch.nn`` with torchvision's layer layout (torchvision is not installed); projector and
  predictor MLPs of the config (BYOL: 512-4096-256 and 256-4096-256, ``Linear -> BN1d ->
  ReLU -> Linear``, the config's biases);
* each view through the online network in its own forward (BatchNorm statistics per view, as
  in ssljax and the official codes); BYOL's target branch (a copy of backbone and projector,
  train-mode BatchNorm, no gradient) and its EMA update after the optimizer step; SimSiam's
  ``detach``; VICReg and Barlow Twins as in their official code (d x d covariance /
  cross-correlation);
* the online linear probe on the detached features of view 1 (Adam, lr 1e-3, its own
  optimizer), as ssljax's;
* the config's optimizer in the same form as ssljax's: BYOL's LARS (``g += wd p``; ``g *=
  eta ||p|| / ||g||``; ``v = m v + g``; ``p -= lr v``; biases and BatchNorm parameters excluded
  from decay and trust ratio) for BYOL, VICReg and Barlow Twins; ``torch.optim.SGD`` for
  SimSiam (its predictor at a fixed rate); warm-up + cosine rate and BYOL's tau schedule
  evaluated per step;
* no augmentation on either side: two fixed, pre-normalised float32 views, given to ssljax as a
  ``[B, 2, H, W, 3]`` batch that its step splits (``benchmarks/step.py --augment none``, the
  step built with ``dataclasses.replace(comps, augment_fn=...)``).

Not on the PyTorch side: ssljax's step also guards against non-finite steps (a select over the
whole state) and computes its monitoring metrics on device (projection std and gradient norm
every step, RankMe on logging steps); they are counted against ssljax.

bfloat16: ssljax's ``config.model.dtype='bfloat16'`` (float32 params, bfloat16 compute) against
``torch.autocast('cpu', torch.bfloat16)`` around the forward passes and losses.

Every measurement runs in its own process. PyTorch is measured at its best setting: every pair
runs it at each of ``--torch-settings`` (threads / glibc malloc tuning / channels_last; on a
loaded machine one thread can beat two, whose OpenMP barriers wait on descheduled threads) and
the fastest counts. ``--sweep`` first tries ssljax's settings (one device or one per core, x
malloc tuning) and keeps the fastest. Then ``--repeats`` pairs of the first method at the
first dtype give the headline ratio (the order of the two sides alternates), then one pair per
other (method, dtype). ``--layers`` compares the CPU time of each 3x3 convolution of
ResNet-18 (forward, input gradient, weight gradient), which is where the difference lies.

    python benchmarks/torch_yardstick.py --sweep --methods byol --dtypes float32 --repeats 3
    python benchmarks/torch_yardstick.py --append --repeats 0 --steps 5   # other methods, bf16
    python benchmarks/torch_yardstick.py --layers
    python benchmarks/torch_yardstick.py --summarize     # ratios of the pairs in the JSON
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import statistics
import sys

import _timing
import step as step_bench

STEP_SCRIPT = pathlib.Path(step_bench.__file__).resolve()
METHODS = step_bench.METHODS
DTYPES = step_bench.DTYPES


# ----------------------------------------------------------------------------------------------
# The PyTorch side (child process).
# ----------------------------------------------------------------------------------------------
# Backbone name -> (blocks per stage, block kind, stem, default width), as ssljax.models.BACKBONES.
TORCH_RESNETS = {
    "resnet18": ((2, 2, 2, 2), "basic", "imagenet", 1.0),
    "resnet34": ((3, 4, 6, 3), "basic", "imagenet", 1.0),
    "resnet50": ((3, 4, 6, 3), "bottleneck", "imagenet", 1.0),
    "resnet18_cifar": ((2, 2, 2, 2), "basic", "cifar", 1.0),
    "resnet34_cifar": ((3, 4, 6, 3), "basic", "cifar", 1.0),
    "resnet50_cifar": ((3, 4, 6, 3), "bottleneck", "cifar", 1.0),
    "resnet_tiny": ((1, 1, 1, 1), "basic", "cifar", 0.25),
}

# Initialisations of the heads' Dense layers (ssljax's config.heads.init; 'flax' when the config
# has no such field): see head_init_of.
HEAD_INITS = ("flax", "torch", "haiku")


def head_init_of(config) -> str:
    """The head initialisation of ``config.heads.init`` (``'flax'`` when absent).

    ``'flax'``: LeCun normal (a normal truncated at 2 std, rescaled to std 1/sqrt(fan_in)), zero
    bias; ``'torch'``: ``nn.Linear``'s default, weight and bias U(+-1/sqrt(fan_in)); ``'haiku'``:
    ``hk.Linear``'s, a normal truncated at 2 std of std 1/sqrt(fan_in) without the rescaling,
    zero bias (``ssljax.models.heads.dense_inits``).

    Raises:
      ValueError: for another value.
    """
    init = config.heads.get("init", "flax")
    if init not in HEAD_INITS:
        raise ValueError(f"config.heads.init={init!r} has no PyTorch counterpart; use {HEAD_INITS}")
    return init


def build_torch_modules(config, num_classes: int):
    """ResNet backbone, heads, target copy and probe of ``config``, in plain PyTorch.

    Parameter names mirror ssljax's paths (:func:`flax_path` maps one to the other): the
    backbone has torchvision's ResNet names (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
    ``layer2.0.downsample.0``) so that ``ssljax.export.resnet_to_torchvision`` loads into it,
    and each head has ``dense_{i}`` / ``bn_{i}`` as ssljax's ``MLP``. The backbone follows
    ``config.model.backbone_kwargs`` (``width``: base channels ``round(64 * width)``;
    ``zero_init_residual``). Initialisation as ssljax's: convolutions Kaiming-normal
    (fan_out, torchvision's), BatchNorm scale 1 (0 for the last BN of a residual branch with
    ``zero_init_residual``) and bias 0, head ``Dense`` layers as ``config.heads.init``
    (:func:`head_init_of`).

    Returns:
      ``(online, target, probe)``: ``online`` a ``ModuleDict`` with ``backbone``,
      ``projector`` and (BYOL, SimSiam) ``predictor``; ``target`` its EMA copy without
      predictor for BYOL, else ``None``.
    """
    import copy

    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, inplanes, planes, stride, zero_init):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            if zero_init:
                nn.init.zeros_(self.bn2.weight)
            self.downsample = None
            if stride != 1 or inplanes != planes:
                self.downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                    nn.BatchNorm2d(planes),
                )

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, inplanes, planes, stride, zero_init):
            super().__init__()
            out = planes * 4
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(out)
            if zero_init:
                nn.init.zeros_(self.bn3.weight)
            self.downsample = None
            if stride != 1 or inplanes != out:
                self.downsample = nn.Sequential(
                    nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out)
                )

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = torch.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

    class ResNet(nn.Module):
        def __init__(self, layers, block, stem, zero_init, base):
            super().__init__()
            if stem == "cifar":
                self.conv1 = nn.Conv2d(3, base, 3, 1, 1, bias=False)
                self.maxpool = nn.Identity()
            else:
                self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
                self.maxpool = nn.MaxPool2d(3, 2, 1)
            self.bn1 = nn.BatchNorm2d(base)
            inplanes = base
            for i, n in enumerate(layers):
                blocks = []
                for j in range(n):
                    planes = base * 2**i
                    stride = 2 if i > 0 and j == 0 else 1
                    blocks.append(block(inplanes, planes, stride, zero_init))
                    inplanes = planes * block.expansion
                setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.num_features = inplanes
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

        def forward(self, x):
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    head_init = head_init_of(config)

    class MLP(nn.Module):
        """ssljax.models.MLP: [dense_i -> bn_i -> ReLU] per hidden width, dense_last [-> bn]."""

        def __init__(self, in_dim, hidden, out_dim, use_bias, out_bias, out_bn, out_bn_affine):
            super().__init__()
            self.depth = len(hidden)
            d = in_dim
            for i, h in enumerate(hidden):
                setattr(self, f"dense_{i}", nn.Linear(d, h, bias=use_bias))
                setattr(self, f"bn_{i}", nn.BatchNorm1d(h))
                d = h
            setattr(self, f"dense_{self.depth}", nn.Linear(d, out_dim, bias=out_bias))
            self.out_bn = out_bn
            if out_bn:
                setattr(self, f"bn_{self.depth}", nn.BatchNorm1d(out_dim, affine=out_bn_affine))
            for m in self.modules():
                if isinstance(m, nn.Linear) and head_init != "torch":
                    std = (1.0 / m.in_features) ** 0.5
                    if head_init == "flax":
                        std /= 0.87962566103423978  # the std of a normal truncated at 2 std
                    nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

        def forward(self, x):
            for i in range(self.depth):
                x = torch.relu(getattr(self, f"bn_{i}")(getattr(self, f"dense_{i}")(x)))
            x = getattr(self, f"dense_{self.depth}")(x)
            return getattr(self, f"bn_{self.depth}")(x) if self.out_bn else x

    if config.model.backbone not in TORCH_RESNETS:
        raise ValueError(
            f"no PyTorch backbone for {config.model.backbone!r}; known: {sorted(TORCH_RESNETS)}"
        )
    layers, kind, stem, default_width = TORCH_RESNETS[config.model.backbone]
    kwargs = dict(config.model.backbone_kwargs)
    unknown = sorted(set(kwargs) - {"width", "zero_init_residual"})
    if unknown:
        raise ValueError(f"config.model.backbone_kwargs {unknown} have no PyTorch counterpart")
    base = int(round(64 * float(kwargs.get("width", default_width))))
    zero_init = bool(kwargs.get("zero_init_residual", False))
    block = BasicBlock if kind == "basic" else Bottleneck
    backbone = ResNet(layers, block, stem, zero_init, base)
    h = config.heads
    online = nn.ModuleDict(
        {
            "backbone": backbone,
            "projector": MLP(
                backbone.num_features,
                h.projector_hidden,
                h.projector_dim,
                h.projector_use_bias,
                h.projector_output_use_bias,
                h.projector_output_bn,
                h.projector_output_bn_affine,
            ),
        }
    )
    if config.method in ("byol", "simsiam"):
        online["predictor"] = MLP(
            h.projector_dim,
            h.predictor_hidden,
            h.predictor_dim,
            h.predictor_use_bias,
            h.predictor_output_use_bias,
            False,
            True,
        )
    target = None
    if config.method == "byol":
        target = nn.ModuleDict(
            {
                "backbone": copy.deepcopy(backbone),
                "projector": copy.deepcopy(online["projector"]),
            }
        )
        for p in target.parameters():
            p.requires_grad_(False)
    probe = nn.Linear(backbone.num_features, num_classes)
    return online, target, probe


# torch leaf name -> ssljax (Flax) leaf name, for parameters and BatchNorm statistics.
_LEAVES = {
    "conv": {"weight": "kernel"},
    "bn": {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"},
    "dense": {"weight": "kernel", "bias": "bias"},
}


def flax_path(torch_name: str) -> str:
    """The ssljax path of a parameter or BN statistic of :func:`build_torch_modules`' modules.

    ``backbone.layer2.0.downsample.1.weight`` -> ``backbone/layer2_0/downsample_bn/scale``,
    ``projector.dense_0.weight`` -> ``projector/dense_0/kernel``, ``projector.bn_0.running_var``
    -> ``projector/bn_0/var``: the paths ssljax's weight-decay, LARS and fixed-lr regexes are
    matched against (``ssljax.optim.path_mask``).

    Raises:
      ValueError: for a name with no ssljax counterpart.
    """
    import re

    parts = torch_name.split(".")
    leaf, modules = parts[-1], parts[:-1]
    out = []
    i = 0
    while i < len(modules):
        piece = modules[i]
        if re.fullmatch(r"layer\d+", piece) and i + 1 < len(modules):
            out.append(f"{piece}_{modules[i + 1]}")
            i += 2
            continue
        if piece == "downsample" and i + 1 < len(modules):
            out.append("downsample_conv" if modules[i + 1] == "0" else "downsample_bn")
            i += 2
            continue
        out.append(piece)
        i += 1
    last = out[-1] if out else ""
    kind = (
        "bn"
        if re.fullmatch(r"bn\d*|bn_\d+|downsample_bn", last)
        else "conv"
        if re.fullmatch(r"conv\d+|downsample_conv", last)
        else "dense"
        if re.fullmatch(r"dense_\d+", last)
        else None
    )
    if kind is None or leaf not in _LEAVES[kind]:
        raise ValueError(f"torch parameter {torch_name!r} has no ssljax counterpart")
    return "/".join([*out, _LEAVES[kind][leaf]])


# The methods whose loss torch_loss writes (DINO's multi-crop self-distillation is not here).
TORCH_LOSS_METHODS = ("byol", "simsiam", "vicreg", "barlow_twins")


def torch_loss(method: str, config, online_out, target_out):
    """The method's loss from per-view outputs, as the official PyTorch codes compute it."""
    import torch
    import torch.nn.functional as F

    if method == "byol":

        def byol(p, z):
            return (2 - 2 * (F.normalize(p, dim=-1) * F.normalize(z, dim=-1)).sum(-1)).mean()

        return byol(online_out[0]["prediction"], target_out[1]["projection"]) + byol(
            online_out[1]["prediction"], target_out[0]["projection"]
        )
    if method == "simsiam":
        p1, p2 = online_out[0]["prediction"], online_out[1]["prediction"]
        z1, z2 = (
            online_out[0]["projection"].detach(),
            online_out[1]["projection"].detach(),
        )
        return -0.5 * (F.cosine_similarity(p1, z2).mean() + F.cosine_similarity(p2, z1).mean())
    za, zb = online_out[0]["projection"].float(), online_out[1]["projection"].float()
    n, d = za.shape
    if method == "vicreg":
        mc = config.method_config
        repr_loss = F.mse_loss(za, zb)
        x, y = za - za.mean(0), zb - zb.mean(0)
        std_x = torch.sqrt(x.var(0) + 1e-4)
        std_y = torch.sqrt(y.var(0) + 1e-4)
        std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
        cov_x, cov_y = (x.T @ x) / (n - 1), (y.T @ y) / (n - 1)
        off = ~torch.eye(d, dtype=torch.bool)
        cov_loss = cov_x[off].pow(2).sum() / d + cov_y[off].pow(2).sum() / d
        return mc.sim_coeff * repr_loss + mc.std_coeff * std_loss + mc.cov_coeff * cov_loss
    if method == "barlow_twins":
        bn = lambda z: (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)  # noqa: E731
        c = bn(za).T @ bn(zb) / n
        on_diag = torch.diagonal(c).add(-1).pow(2).sum()
        off_diag = (c - torch.diag(torch.diagonal(c))).pow(2).sum()
        # solo-learn's scale_loss (ssljax's method_config.scale_loss; 1 when absent).
        scale = config.method_config.get("scale_loss", 1.0)
        return scale * (on_diag + config.method_config.lambd * off_diag)
    raise ValueError(f"no PyTorch loss for method {method!r}; written: {TORCH_LOSS_METHODS}")


def warmup_cosine(step: int, peak: float, warmup: int, total: int, final: float = 0.0) -> float:
    """ssljax.optim.warmup_cosine_lr, in Python (see its docstring)."""
    if step < warmup:
        return peak * step / max(warmup, 1)
    progress = min(step - warmup, total - warmup) / (total - warmup)
    return final + (peak - final) * 0.5 * (1 + math.cos(math.pi * progress))


class ByolLars:
    """BYOL's LARS (ssljax.optim.byol_lars): decay, trust ratio, momentum, then the rate.

    Per tensor ``p`` with gradient ``g``: where ``adapt`` (ssljax: not excluded from weight
    decay), ``g += wd p`` and ``g *= eta ||p|| / ||g||`` (1 when a norm is 0); then
    ``v = m v + g`` and ``p -= lr v`` (``lr (g + m v)`` with Nesterov), ``lr`` the rate of
    the tensor's group (:meth:`step`'s ``rates``).
    """

    def __init__(
        self, entries, *, weight_decay: float, momentum: float, eta: float, nesterov: bool = False
    ):
        import torch

        # entries: (param, adapt, group) triples; `group` indexes step()'s rates.
        self.entries = [(p, adapt, group, torch.zeros_like(p)) for p, adapt, group in entries]
        self.weight_decay, self.momentum, self.eta = weight_decay, momentum, eta
        self.nesterov = nesterov

    def direction(self, p, g, adapt: bool, lr: float):
        """The gradient after weight decay and the trust ratio (before momentum)."""
        import torch

        if not adapt:
            return g
        g = g.add(p, alpha=self.weight_decay)
        p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
        return g * torch.where((p_norm > 0) & (g_norm > 0), self.eta * p_norm / g_norm, 1.0)

    def step(self, rates) -> None:
        """One update; ``rates[group]`` is the learning rate of each group at this step."""
        import torch

        with torch.no_grad():
            for p, adapt, group, v in self.entries:
                lr = rates[group]
                g = self.direction(p, p.grad, adapt, lr)
                v.mul_(self.momentum).add_(g)
                update = g.add(v, alpha=self.momentum) if self.nesterov else v
                p.add_(update, alpha=-lr)


class SoloLearnLars(ByolLars):
    """solo-learn's LARS (``ssljax.optim.solo_learn_lars``, its CIFAR recipes).

    Where ``adapt`` and both norms are positive: ``r = eta ||p|| / (||g|| + wd ||p|| +
    1e-8)``, with ``clip_lr`` ``r = min(r / lr, 1)`` (1 at ``lr = 0``; ``lr`` the tensor's
    group rate), and ``g <- r (g + wd p)``; elsewhere ``g`` unchanged, without weight decay.
    Then momentum and the rate as :class:`ByolLars`.
    """

    EPS = 1e-8  # solo/utils/lars.py's default, which no CIFAR yaml overrides

    def __init__(self, entries, *, clip_lr: bool, **kwargs):
        super().__init__(entries, **kwargs)
        self.clip_lr = clip_lr

    def direction(self, p, g, adapt: bool, lr: float):
        import torch

        if not adapt:
            return g
        p_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
        ratio = self.eta * p_norm / (g_norm + self.weight_decay * p_norm + self.EPS)
        if self.clip_lr:
            ratio = torch.clamp(ratio / lr, max=1.0) if lr > 0 else torch.ones_like(ratio)
        adapted = ratio * g.add(p, alpha=self.weight_decay)
        return torch.where((p_norm > 0) & (g_norm > 0), adapted, g)


def _matching(patterns, paths: list[str], field: str) -> list[bool]:
    """``re.search`` of any pattern in each path; a pattern matching nothing is an error.

    As ``ssljax.optim.path_mask``, so a typo in a config fails here too.
    """
    import re

    if isinstance(patterns, str):
        patterns = (patterns,)
    compiled = [re.compile(p) for p in patterns]
    unmatched = [c.pattern for c in compiled if not any(c.search(q) for q in paths)]
    if unmatched:
        raise ValueError(f"config.optimizer.{field}: {unmatched} match no parameter path")
    return [any(c.search(q) for c in compiled) for q in paths]


class ConfigOptimizer:
    """``ssljax.optim.build_optimizer``'s optimizer for the online PyTorch modules.

    ``config.optimizer.name``: ``lars`` (:class:`ByolLars`, or :class:`SoloLearnLars` with
    ``lars_form='solo_learn'`` and its ``clip_lr``), ``sgd`` (``torch.optim.SGD``:
    ``g += wd p; v = m v + g; p -= lr v``, the same ordering as ssljax's) or ``adamw``
    (``torch.optim.AdamW``, decoupled decay times the rate, as ``optax.adamw``). ssljax's
    regexes are matched against each parameter's ssljax path (:func:`flax_path`):
    ``exclude_from_weight_decay`` (no decay, and for LARS no trust ratio), ``fixed_lr`` (the
    rate stays at the peak ``base_lr * batch / 256``) and ``lr_multipliers`` (``(regex, m)``
    pairs, the first match wins: ``m`` times the rate the parameter would otherwise get).
    Fields a config lacks take ssljax's defaults. ``step(lr)`` takes the scheduled rate.
    """

    def __init__(self, config, online):
        import torch

        opt = config.optimizer
        self.name = opt.name
        self.peak = opt.base_lr * config.global_batch / 256
        named = [(n, p) for n, p in online.named_parameters() if p.requires_grad]
        paths = [flax_path(n) for n, _ in named]
        excluded = _matching(
            opt.get("exclude_from_weight_decay", (r"bias$", r"scale$")),
            paths,
            "exclude_from_weight_decay",
        )
        fixed = (
            _matching(opt.fixed_lr, paths, "fixed_lr")
            if opt.get("fixed_lr")
            else [False] * len(paths)
        )
        pairs = tuple(opt.get("lr_multipliers", ()) or ())
        hits = [_matching(q, paths, f"lr_multipliers[{i}]") for i, (q, _) in enumerate(pairs)]
        multiplier = [
            next((float(m) for hit, (_, m) in zip(row, pairs, strict=True) if hit), 1.0)
            for row in (zip(*hits, strict=True) if hits else [()] * len(paths))
        ]
        # A group per (fixed, multiplier): its rate is m * (peak if fixed else lr).
        self.groups = sorted({(fx, m) for fx, m in zip(fixed, multiplier, strict=True)})
        group_of = [self.groups.index((fx, m)) for fx, m in zip(fixed, multiplier, strict=True)]
        self.paths = dict(zip(paths, (p for _, p in named), strict=True))
        wd = float(opt.get("weight_decay", 0.0))
        if self.name == "lars":
            entries = [
                (p, not ex, g) for (_, p), ex, g in zip(named, excluded, group_of, strict=True)
            ]
            common = dict(
                weight_decay=wd,
                momentum=opt.get("momentum", 0.9),
                eta=opt.get("eta", 1e-3),
                nesterov=bool(opt.get("nesterov", False)),
            )
            form = opt.get("lars_form", "byol")
            if form == "byol":
                if opt.get("clip_lr", False):
                    raise ValueError("clip_lr needs optimizer.lars_form='solo_learn'")
                self.impl = ByolLars(entries, **common)
            elif form == "solo_learn":
                self.impl = SoloLearnLars(
                    entries, clip_lr=bool(opt.get("clip_lr", False)), **common
                )
            else:
                raise ValueError(f"config.optimizer.lars_form={form!r}: use 'byol' or 'solo_learn'")
            return
        param_groups: dict[tuple[bool, int], dict] = {}
        for (_, p), ex, g in zip(named, excluded, group_of, strict=True):
            group = param_groups.setdefault(
                (ex, g), {"params": [], "weight_decay": 0.0 if ex else wd, "rate_group": g}
            )
            group["params"].append(p)
        if self.name == "sgd":
            self.impl = torch.optim.SGD(
                list(param_groups.values()),
                lr=self.peak,
                momentum=opt.get("momentum", 0.9),
                nesterov=bool(opt.get("nesterov", False)),
            )
        elif self.name == "adamw":
            self.impl = torch.optim.AdamW(
                list(param_groups.values()),
                lr=self.peak,
                betas=(opt.get("b1", 0.9), opt.get("b2", 0.999)),
                eps=opt.get("eps", 1e-8),
            )
        else:
            raise ValueError(f"config.optimizer.name={self.name!r} has no PyTorch counterpart")

    def rates(self, lr: float) -> list[float]:
        """The rate of each group when the schedule is at ``lr``."""
        return [m * (self.peak if fx else lr) for fx, m in self.groups]

    def step(self, lr: float) -> None:
        """One update at the scheduled rate ``lr`` (see the class docstring for the groups)."""
        rates = self.rates(lr)
        if isinstance(self.impl, ByolLars):
            self.impl.step(rates)
            return
        for group in self.impl.param_groups:
            group["lr"] = rates[group["rate_group"]]
        self.impl.step()


def forward(net, x) -> dict:
    """``{'features', 'projection'[, 'prediction']}`` of the modules, as ssljax's
    ``SiameseNetwork`` returns them."""
    feats = net["backbone"](x)
    out = {"features": feats, "projection": net["projector"](feats)}
    if "predictor" in net:
        out["prediction"] = net["predictor"](out["projection"])
    return out


def torch_device(choice: str = "auto"):
    """``torch.device('cuda')`` when asked or available (``auto``), else the CPU."""
    import torch

    if choice not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {choice!r}")
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def torch_child(spec: dict) -> dict:
    """Times the PyTorch step of ``spec`` (runs in its own process)."""
    import time

    import torch

    default_threads = torch.get_num_threads()
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(0)
    # The GPU when there is one (as JAX picks it); spec["device"] = "cpu" forces the CPU.
    device = torch_device(spec.get("device", "auto"))
    if device.type == "cuda":
        # cuDNN picks its fastest algorithm per shape once (the shapes never change here).
        torch.backends.cudnn.benchmark = True
    config = step_bench.build_config(
        spec["method"], spec["model"], "float32", batch=spec.get("batch")
    )
    num_classes = step_bench.MODELS[spec["model"]][3]
    online, target, probe = build_torch_modules(config, num_classes)
    channels_last = spec["format"] == "channels_last"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    online.to(device=device, memory_format=fmt)
    probe.to(device=device)
    if target is not None:
        target.to(device=device, memory_format=fmt)

    host = step_bench.make_batch(spec["model"], config.global_batch, augment="none")
    # [B, 2, H, W, C] -> two [B, C, H, W] views, as the data loader would hand them over.
    views = [
        torch.from_numpy(host["image"][:, v])
        .permute(0, 3, 1, 2)
        .contiguous(memory_format=fmt)
        .to(device)
        for v in range(2)
    ]
    labels = torch.from_numpy(host["label"]).long().to(device)

    # The optimizer: same rules, masks and fixed-rate groups as ssljax's config.
    opt_cfg = config.optimizer
    optimizer = ConfigOptimizer(config, online)
    peak = optimizer.peak
    # As build_components: 50,000 training images (the synthetic dataset's split size).
    total = config.num_steps
    warmup = min(int(round(config.warmup_epochs * (50_000 // config.global_batch))), total - 1)
    probe_opt = torch.optim.Adam(probe.parameters(), lr=config.probe.lr)
    autocast = spec["dtype"] == "bfloat16"
    step_count = [0]

    def losses_of(views, labels):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            target_out = None
            if target is not None:
                with torch.no_grad():
                    target_out = [forward(target, v) for v in views]
            online_out = [forward(online, v) for v in views]
            loss = torch_loss(config.method, config, online_out, target_out)
            logits = probe(online_out[0]["features"].detach().float())
            probe_loss = torch.nn.functional.cross_entropy(logits, labels)
        return loss, probe_loss

    # torch.compile of the forward passes and losses (the backward is compiled with them by
    # AOTAutograd); the optimizer and EMA stay eager, as in the eager variant.
    compute = torch.compile(losses_of, mode=spec["compile"]) if spec.get("compile") else losses_of

    def one_step():
        k = step_count[0]
        lr = warmup_cosine(k, peak, warmup, total, opt_cfg.final_lr)
        loss, probe_loss = compute(views, labels)
        for p in online.parameters():
            p.grad = None
        probe_opt.zero_grad(set_to_none=True)
        (loss + probe_loss).backward()
        optimizer.step(lr)
        probe_opt.step()
        if target is not None:
            tau = 1 - (1 - config.tau_base) * (math.cos(math.pi * min(k, total) / total) + 1) / 2
            with torch.no_grad():
                on = [p for n, p in online.named_parameters() if not n.startswith("predictor.")]
                torch._foreach_lerp_(list(target.parameters()), on, 1 - tau)
        step_count[0] += 1
        # float() waits for the device: each timed step includes its GPU work.
        return float(loss.detach())

    load_before = _timing.load_average()
    start = time.perf_counter()
    losses = []
    online.train()
    if target is not None:
        target.train()
    # The first step compiles (torch.compile) and autotunes (cudnn.benchmark): timed apart.
    first = time.perf_counter()
    losses.append(one_step())
    first_step_s = time.perf_counter() - first
    cpu_times: list[float] = []
    times = _timing.time_calls(
        lambda: losses.append(one_step()),
        steps=spec["steps"],
        warmup=spec["warmup"],
        cpu_times=cpu_times,
    )
    return {
        **spec,
        "side": "pytorch",
        "torch": torch.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "first_step_s": round(first_step_s, 2),
        "torch_default_threads": default_threads,
        "torch_threads": torch.get_num_threads(),
        "batch": config.global_batch,
        "total_s": round(time.perf_counter() - start, 1),
        **_timing.summarize(times, config.global_batch, cpu_times),
        "step_times_s": [round(t, 4) for t in times],
        "peak_rss_mb": round(_timing.peak_rss_mb(), 1),
        "loss_finite": all(math.isfinite(v) for v in losses),
        "loadavg_start": load_before,
        "loadavg_end": _timing.load_average(),
        "date": _timing.machine_info()["date"],
    }


# ----------------------------------------------------------------------------------------------
# Where the difference comes from: each 3x3 convolution of ResNet-18 (CIFAR), both libraries.
# ----------------------------------------------------------------------------------------------
# (spatial size, in channels, out channels, stride) of ResNet-18's 3x3 convolutions at 32x32.
CONV_LAYERS = (
    (32, 64, 64, 1),
    (32, 64, 128, 2),
    (16, 128, 128, 1),
    (8, 256, 256, 1),
    (4, 512, 512, 1),
)


def layers_child(spec: dict) -> dict:
    """CPU time of forward, input-gradient and weight-gradient of each of :data:`CONV_LAYERS`.

    CPU time (all threads, best of ``repeats``) rather than wall time: it is the work each
    library's kernels do, which other processes on a shared machine change much less. PyTorch
    runs on ``spec['threads']`` threads, JAX on its default thread pool.
    """
    import time

    import numpy as np

    batch, repeats = spec["batch"], spec["repeats"]

    def cpu_ms(fn) -> float:
        fn()
        best = float("inf")
        for _ in range(repeats):
            start = time.process_time()
            fn()
            best = min(best, time.process_time() - start)
        return round(best * 1e3, 2)

    rng = np.random.default_rng(0)
    rows = []
    for hw, cin, cout, stride in CONV_LAYERS:
        x = rng.standard_normal((batch, hw, hw, cin), dtype=np.float32)
        w = rng.standard_normal((3, 3, cin, cout), dtype=np.float32) * 0.05
        g = rng.standard_normal((batch, hw // stride, hw // stride, cout), dtype=np.float32)
        if spec["library"] == "jax":
            import jax

            def conv(x, w, stride=stride):
                return jax.lax.conv_general_dilated(
                    x,
                    w,
                    (stride, stride),
                    ((1, 1), (1, 1)),
                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                )

            xj, wj, gj = jax.numpy.asarray(x), jax.numpy.asarray(w), jax.numpy.asarray(g)
            fwd = jax.jit(conv)
            dx = jax.jit(lambda x, w, g, conv=conv: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
            dw = jax.jit(lambda x, w, g, conv=conv: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
            times = [
                cpu_ms(lambda f=f, a=a: jax.block_until_ready(f(*a)))
                for f, a in ((fwd, (xj, wj)), (dx, (xj, wj, gj)), (dw, (xj, wj, gj)))
            ]
        else:
            import torch

            torch.set_num_threads(spec["threads"])
            xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
            wt = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous()
            gt = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous()

            def backward(mask, xt=xt, wt=wt, gt=gt, stride=stride):
                return torch.ops.aten.convolution_backward(
                    gt, xt, wt, None, [stride] * 2, [1, 1], [1, 1], False, [0, 0], 1, mask
                )

            with torch.no_grad():
                times = [
                    cpu_ms(
                        lambda x=xt, w=wt, s=stride: torch.nn.functional.conv2d(
                            x, w, stride=s, padding=1
                        )
                    ),
                    cpu_ms(lambda: backward([True, False, False])),
                    cpu_ms(lambda: backward([False, True, False])),
                ]
        flops = 2 * batch * (hw // stride) ** 2 * cin * cout * 9
        rows.append(
            {
                "layer": f"{hw}x{hw} {cin}->{cout} /{stride}",
                "fwd_cpu_ms": times[0],
                "dx_cpu_ms": times[1],
                "dw_cpu_ms": times[2],
                "gflop_per_cpu_s": [round(flops / t / 1e6, 1) for t in times],
            }
        )
    return {**spec, "layers": rows, "loadavg": _timing.load_average()}


def run_layers(args) -> list[dict]:
    """Runs :func:`layers_child` for JAX and PyTorch and prints the side-by-side table."""
    out = {}
    for library in ("jax", "pytorch"):
        spec = {"mode": "layers", "library": library, "batch": 32, "repeats": 5, "threads": 1}
        res = _timing.run_child(__file__, spec, devices=1, malloc="default")
        if "error" in res:
            raise SystemExit(res["error"])
        out[library] = res["layers"]
    table = []
    for j, t in zip(out["jax"], out["pytorch"], strict=True):
        row = {"layer": j["layer"]}
        for part in ("fwd", "dx", "dw"):
            row[f"{part} jax/torch"] = round(j[f"{part}_cpu_ms"] / t[f"{part}_cpu_ms"], 2)
            row[f"{part} jax ms"] = j[f"{part}_cpu_ms"]
            row[f"{part} torch ms"] = t[f"{part}_cpu_ms"]
        table.append(row)
    print("CPU ms per 3x3 convolution at batch 32 (JAX default threads, PyTorch 1 thread):")
    _timing.print_table(table, list(table[0]))
    return table


# ----------------------------------------------------------------------------------------------
# Parent: settings sweep, interleaved pairs, ratios.
# ----------------------------------------------------------------------------------------------
def run_torch(  # noqa: PLR0913
    method,
    dtype,
    args,
    *,
    malloc,
    format,  # noqa: A002
    threads,
    steps,
    warmup,
    phase,
    compile_mode="",
):
    spec = {
        "method": method,
        "model": args.model,
        "dtype": dtype,
        "malloc": malloc,
        "format": format,
        "threads": threads,
        "steps": steps,
        "warmup": warmup,
        "compile": compile_mode,
    }
    if args.batch:
        spec["batch"] = args.batch
    row = _timing.run_child(__file__, spec, devices=None, malloc=malloc)
    row.update(side="pytorch", phase=phase)
    return row


def run_jax(method, dtype, args, *, devices, malloc, steps, warmup, phase):
    spec = {
        "method": method,
        "model": args.model,
        "dtype": dtype,
        "devices": devices,
        "augment": "none",
        "malloc": malloc,
        "variant": "train.make_train_step",
        "steps": steps,
        "warmup": warmup,
    }
    if args.batch:
        spec["batch"] = args.batch
    row = _timing.run_child(STEP_SCRIPT, spec, devices=devices, malloc=malloc)
    row.update(side="ssljax", phase=phase)
    return row


def _show(row: dict) -> None:
    cols = (
        "side",
        "phase",
        "method",
        "dtype",
        "devices",
        "threads",
        "malloc",
        "format",
    )
    cols = (*cols, "median_step_s")
    _timing.print_table([row], (*cols, "images_per_s", "peak_rss_mb", "loadavg_end"))
    if "error" in row:
        print(row["error"], file=sys.stderr)


def _fastest(rows: list[dict], fields: tuple[str, ...]) -> dict:
    ok = [r for r in rows if "error" not in r]
    if not ok:
        raise SystemExit("every sweep run failed; see the errors above")
    best = max(ok, key=lambda r: r["images_per_s"])
    return {f: best.get(f) for f in fields}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="first one: headline")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="first one: headline")
    parser.add_argument(
        "--model",
        default="resnet18_cifar",
        choices=("resnet18_cifar", "resnet50", "resnet_tiny"),
    )
    parser.add_argument(
        "--batch", type=int, default=0, help="global batch (0: the model's, 256 / 32 / 16)"
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="pairs for the headline ratio")
    parser.add_argument(
        "--sweep", action="store_true", help="try ssljax's settings first, keep fastest"
    )
    parser.add_argument("--sweep-steps", type=int, default=5)
    parser.add_argument(
        "--torch-settings",
        default="1/default/contiguous,2/tuned/contiguous,2/tuned/channels_last",
        help="PyTorch settings threads/malloc/format tried in every pair; the fastest counts",
    )
    parser.add_argument(
        "--torch-compile",
        default="",
        help="also time the PyTorch step under torch.compile with this mode (e.g. "
        "max-autotune-no-cudagraphs, default); its first step (compilation) is reported apart",
    )
    parser.add_argument("--jax-devices", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--jax-malloc", default="tuned", choices=sorted(_timing.MALLOC_SETTINGS))
    parser.add_argument("--out", default=str(_timing.RESULTS_DIR / "torch_yardstick.json"))
    parser.add_argument(
        "--layers",
        action="store_true",
        help="only compare the CPU time of ResNet-18's 3x3 convolutions (fwd, dx, dw)",
    )
    parser.add_argument(
        "--append", action="store_true", help="add to --out's results instead of replacing them"
    )
    parser.add_argument(
        "--summarize",
        action="store_true",
        help="only recompute the ratios of --out's pairs",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        child = layers_child if spec.get("mode") == "layers" else torch_child
        _timing.emit_result(child(spec))
        return
    if args.layers:
        table = run_layers(args)
        path = pathlib.Path(args.out)
        data = json.loads(path.read_text()) if path.exists() else {"meta": {}, "results": []}
        data["meta"]["conv_layers_cpu_ms"] = {"date": _timing.machine_info()["date"], "rows": table}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")
        return
    if args.summarize:
        data = json.loads(pathlib.Path(args.out).read_text())
        data["meta"]["ratios"] = pair_ratios(data["results"])
        pathlib.Path(args.out).write_text(json.dumps(data, indent=2) + "\n")
        _timing.print_table(data["meta"]["ratios"], RATIO_COLUMNS)
        return
    methods = [m for m in args.methods.split(",") if m]
    dtypes = [d for d in args.dtypes.split(",") if d]
    rows: list[dict] = []
    meta = {
        **_timing.machine_info(),
        "script": "benchmarks/torch_yardstick.py",
        "argv": sys.argv,
    }
    earlier: list[dict] = []
    if args.append and pathlib.Path(args.out).exists():
        earlier = json.loads(pathlib.Path(args.out).read_text())["results"]

    run = meta["date"]  # tags this invocation's rows: pairs never mix two runs

    def record(row):
        row = {**row, "run": run}
        rows.append(row)
        _show(row)
        _timing.write_results(args.out, meta, earlier + rows)

    torch_settings = parse_torch_settings(args.torch_settings)
    jax_cfg = {"devices": args.jax_devices, "malloc": args.jax_malloc}
    head_method, head_dtype = methods[0], dtypes[0]
    if args.sweep:
        # ssljax's settings: one device or one per core, malloc as is or tuned.
        sweep = dict(steps=args.sweep_steps, warmup=1, phase="sweep")
        jax_rows = []
        for malloc in ("default", "tuned"):
            for devices in sorted({1, os.cpu_count() or 1}):
                row = run_jax(
                    head_method, head_dtype, args, devices=devices, malloc=malloc, **sweep
                )
                jax_rows.append(row)
                record(row)
        jax_cfg = _fastest(jax_rows, ("devices", "malloc"))
        print(f"fastest ssljax setting: {jax_cfg}")
    meta.update(torch_settings=torch_settings, jax_setting=jax_cfg)

    common = dict(steps=args.steps, warmup=args.warmup)
    pairs = [(head_method, head_dtype, "headline", r) for r in range(args.repeats)]
    pairs += [
        (m, d, "other", 0) for m in methods for d in dtypes if (m, d) != (head_method, head_dtype)
    ]
    for method, dtype, phase, r in pairs:
        # Alternate which side goes first, so a change of load hits both alike.
        for side in ("ssljax", "pytorch") if r % 2 == 0 else ("pytorch", "ssljax"):
            if side == "ssljax":
                record(
                    {**run_jax(method, dtype, args, **jax_cfg, phase=phase, **common), "repeat": r}
                )
                continue
            for setting in torch_settings:
                row = run_torch(method, dtype, args, **setting, phase=phase, **common)
                record({**row, "repeat": r})
            if args.torch_compile:
                # torch.compile at the last setting (on a GPU: the one setting that matters).
                row = run_torch(
                    method,
                    dtype,
                    args,
                    **torch_settings[-1],
                    phase=phase,
                    compile_mode=args.torch_compile,
                    **common,
                )
                record({**row, "repeat": r})
        for compiled in (False, True) if args.torch_compile else (False,):
            for ratio in pair_ratios(rows, compiled=compiled):
                if (ratio["method"], ratio["dtype"]) == (method, dtype):
                    what = "torch.compile" if compiled else "PyTorch"
                    print(f"ratio ssljax/{what} {method} {dtype}: {ratio['ratios']}")
    meta["ratios"] = pair_ratios(earlier + rows)
    if args.torch_compile:
        meta["ratios_vs_torch_compile"] = pair_ratios(earlier + rows, compiled=True)
    _timing.write_results(args.out, meta, earlier + rows)
    print()
    _timing.print_table(meta["ratios"], RATIO_COLUMNS)
    print(f"\nwrote {args.out}")


def parse_torch_settings(text: str) -> list[dict]:
    """``'1/default/contiguous,2/tuned/channels_last'`` -> a list of PyTorch settings.

    Each item is ``threads/malloc/format`` with malloc a key of ``_timing.MALLOC_SETTINGS``
    and format ``contiguous`` or ``channels_last``.
    """
    settings = []
    for item in (i for i in text.split(",") if i):
        threads, malloc, fmt = item.split("/")
        if malloc not in _timing.MALLOC_SETTINGS or fmt not in ("contiguous", "channels_last"):
            raise SystemExit(f"bad --torch-settings item {item!r}: threads/malloc/format")
        settings.append({"threads": int(threads), "malloc": malloc, "format": fmt})
    return settings


RATIO_COLUMNS = (
    "method",
    "dtype",
    "median_ratio",
    "ratios",
    "ssljax_img_s",
    "pytorch_img_s",
)


def pair_ratios(rows: list[dict], compiled: bool = False) -> list[dict]:
    """ssljax/PyTorch images/s of each measured pair, grouped by (method, dtype).

    ``compiled`` compares with the ``torch.compile`` rows instead of the eager ones.

    A pair is the rows of one (run, phase, method, dtype, repeat) outside the sweep, measured
    back to back: ssljax's, and PyTorch's at each of its settings, of which the fastest counts
    (PyTorch at its best setting). A row measured again later replaces the earlier one.
    """
    pairs: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if r.get("phase") == "sweep" or "error" in r or "images_per_s" not in r:
            continue
        if r["side"] == "pytorch" and bool(r.get("compile")) != compiled:
            continue
        key = (r.get("run"), r["method"], r["dtype"], r.get("phase"), r.get("repeat", 0))
        sides = pairs.setdefault(key, {})
        if r["side"] == "ssljax":
            sides["ssljax"] = r
        else:
            setting = (r.get("threads"), r.get("malloc"), r.get("format"))
            sides.setdefault("pytorch_by_setting", {})[setting] = r
    for sides in pairs.values():
        if "pytorch_by_setting" in sides:
            by_setting = sides.pop("pytorch_by_setting")
            sides["pytorch"] = max(by_setting.values(), key=lambda r: r["images_per_s"])
    grouped: dict[tuple[str, str], list[tuple[float, float]]] = {}
    best_settings: dict[tuple[str, str], list[str]] = {}
    for (_, method, dtype, _, _), sides in pairs.items():
        if len(sides) == 2:
            t = sides["pytorch"]
            best_settings.setdefault((method, dtype), []).append(
                f"{t.get('threads')}/{t.get('malloc')}/{t.get('format')}"
            )
            jax_ips, torch_ips = (
                sides["ssljax"]["images_per_s"],
                sides["pytorch"]["images_per_s"],
            )
            grouped.setdefault((method, dtype), []).append((jax_ips, torch_ips))
    return [
        {
            "method": m,
            "dtype": d,
            "ratios": [round(j / t, 3) for j, t in v],
            "median_ratio": round(statistics.median(j / t for j, t in v), 3),
            "ssljax_img_s": [j for j, _ in v],
            "pytorch_img_s": [t for _, t in v],
            "pytorch_best_settings": best_settings[(m, d)],
        }
        for (m, d), v in grouped.items()
    ]


if __name__ == "__main__":
    main()
