"""Tests of ssljax.models: published parameter counts, NumPy reference forwards, BatchNorm
state, bfloat16 compute, global-batch statistics under sharding, and bad input."""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from flax import traverse_util

from ssljax import tree_paths
from ssljax.models import BACKBONES, MLP, PUBLISHED_HEADS, ResNet, ViT, create_backbone, create_head

REPO = pathlib.Path(__file__).resolve().parents[1]
P = jax.sharding.PartitionSpec
BF16_EPS = 2.0**-8  # unit roundoff of bfloat16 (8-bit significand)


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def key(seed: int = 0) -> jax.Array:
    # The "rbg" generator compiles about 3x faster than threefry on CPU; tests need no more.
    return jax.random.key(seed, impl="rbg")


def abstract_variables(module, size: int):
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda: module.init(key(), x, train=False))


@functools.partial(jax.jit, static_argnames="module")
def _init(module, rng, x):
    return module.init(rng, x, train=False)


def init(module, x, seed: int = 0):
    """Jitted init (eager init compiles one random kernel per parameter shape: slow)."""
    return _init(module, key(seed), x)


@functools.partial(jax.jit, static_argnames=("module", "train"))
def run(module, variables, x, train: bool):
    """Jitted apply returning (output, updated batch_stats collection); cached per module."""
    return module.apply(variables, x, train=train, mutable=["batch_stats"])


def flat(tree) -> dict:
    return tree_paths.flatten(tree, sep="/", leaf=np.asarray)


# --------------------------------------------------------------------------------------------
# NumPy references, float64, written from the papers / torchvision and timm semantics.
# --------------------------------------------------------------------------------------------
def np_conv(x, w, stride, pad, b=None):
    """Cross-correlation as torch.nn.Conv2d: x [B,H,W,C], w [kh,kw,C,O], symmetric zero pad."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = w.shape[:2]
    ho = (x.shape[1] - kh) // stride + 1
    wo = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, w.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            patch = x[
                :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride
            ]
            out += patch @ w[i, j]
    return out if b is None else out + b


def np_maxpool_3x3_s2_p1(x):
    x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    ho = (x.shape[1] - 3) // 2 + 1
    wo = (x.shape[2] - 3) // 2 + 1
    windows = [
        x[:, i : i + 2 * (ho - 1) + 1 : 2, j : j + 2 * (wo - 1) + 1 : 2]
        for i in range(3)
        for j in range(3)
    ]
    return np.max(np.stack(windows), axis=0)


def np_batchnorm(x, p, stats, name, running, eps=1e-5):
    """BN over all axes but the last; train: batch stats (biased var), recorded in `stats`."""
    axes = tuple(range(x.ndim - 1))
    if running is None:
        mean, var = x.mean(axes), x.var(axes)
        stats[name] = (mean, var)
    else:
        mean, var = running[name + "/mean"], running[name + "/var"]
    y = (x - mean) / np.sqrt(var + eps)
    if name + "/scale" in p:
        y = y * p[name + "/scale"] + p[name + "/bias"]
    return y


def relu(x):
    return np.maximum(x, 0.0)


def np_resnet(p, x, *, block, stem, stage_sizes, running=None):
    """torchvision ResNet forward (v1.5 Bottleneck), returning pooled features and BN stats."""
    p = {k: v.astype(np.float64) for k, v in p.items()}
    stats = {}
    bn = functools.partial(np_batchnorm, p=p, stats=stats, running=running)
    if stem == "imagenet":
        x = relu(bn(np_conv(x, p["conv1/kernel"], 2, 3), name="bn1"))
        x = np_maxpool_3x3_s2_p1(x)
    else:
        x = relu(bn(np_conv(x, p["conv1/kernel"], 1, 1), name="bn1"))
    planes = p["conv1/kernel"].shape[-1]
    expansion = 1 if block == "basic" else 4
    for i, n in enumerate(stage_sizes):
        for j in range(n):
            name, stride = f"layer{i + 1}_{j}", (2 if i > 0 and j == 0 else 1)
            w = lambda k, name=name: p[f"{name}/{k}/kernel"]  # noqa: E731
            if block == "basic":
                y = relu(bn(np_conv(x, w("conv1"), stride, 1), name=f"{name}/bn1"))
                y = bn(np_conv(y, w("conv2"), 1, 1), name=f"{name}/bn2")
            else:
                y = relu(bn(np_conv(x, w("conv1"), 1, 0), name=f"{name}/bn1"))
                y = relu(bn(np_conv(y, w("conv2"), stride, 1), name=f"{name}/bn2"))
                y = bn(np_conv(y, w("conv3"), 1, 0), name=f"{name}/bn3")
            out_channels = planes * 2**i * expansion
            if stride != 1 or x.shape[-1] != out_channels:  # torchvision's downsample rule
                x = bn(np_conv(x, w("downsample_conv"), stride, 0), name=f"{name}/downsample_bn")
            x = relu(y + x)
    return x.mean(axis=(1, 2)), stats


def np_layer_norm(x, p, name, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p[name + "/scale"] + p[name + "/bias"]


def np_vit(p, images, *, patch, heads, depth):
    """ViT (Dosovitskiy et al. Eq. 1-4) with timm's layout: patches row-major, qkv (3, h, d)."""
    p = {k: v.astype(np.float64) for k, v in p.items()}
    b, h, w, c = images.shape
    # Eq. 1: flatten each patch in (row, col, channel) order and project.
    x = images.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, (h // patch) * (w // patch), patch * patch * c)
    kernel = p["patch_embed/proj/kernel"].reshape(patch * patch * c, -1)
    x = x @ kernel + p["patch_embed/proj/bias"]
    d = x.shape[-1]
    cls = np.broadcast_to(p["cls_token"], (b, 1, d))
    x = np.concatenate([cls, x], axis=1) + p["pos_embed"]
    hd = d // heads
    for i in range(depth):
        pre = f"blocks_{i}"
        y = np_layer_norm(x, p, f"{pre}/norm1")
        qkv = y @ p[f"{pre}/attn/qkv/kernel"] + p[f"{pre}/attn/qkv/bias"]
        qkv = qkv.reshape(b, -1, 3, heads, hd).transpose(2, 0, 3, 1, 4)  # timm's permute
        q, k, v = qkv
        a = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
        a = np.exp(a - a.max(-1, keepdims=True))
        a = a / a.sum(-1, keepdims=True)
        y = (a @ v).transpose(0, 2, 1, 3).reshape(b, -1, d)
        x = x + y @ p[f"{pre}/attn/proj/kernel"] + p[f"{pre}/attn/proj/bias"]
        y = np_layer_norm(x, p, f"{pre}/norm2")
        y = y @ p[f"{pre}/mlp/fc1/kernel"] + p[f"{pre}/mlp/fc1/bias"]
        y = 0.5 * y * (1.0 + scipy.special.erf(y / np.sqrt(2.0)))  # exact GELU
        x = x + y @ p[f"{pre}/mlp/fc2/kernel"] + p[f"{pre}/mlp/fc2/bias"]
    return np_layer_norm(x, p, "norm")[:, 0]


# --------------------------------------------------------------------------------------------
# Parameter counts of the reference implementations (trainable parameters only).
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,size,expected",
    [
        ("resnet50", 224, 23_508_032),  # torchvision resnet50: 25,557,032 - fc 2,049,000
        ("resnet18", 224, 11_176_512),  # torchvision resnet18: 11,689,512 - fc 513,000
        ("resnet34", 224, 21_284_672),  # torchvision resnet34: 21,797,672 - fc 513,000
        ("vit_tiny_16", 224, 5_524_416),  # timm vit_tiny_patch16_224: 5,717,416 - head 193,000
        ("vit_small_16", 224, 21_665_664),  # timm vit_small_patch16_224 without head
        ("vit_base_16", 224, 85_798_656),  # timm vit_base_patch16_224 without head
    ],
)
def test_published_parameter_counts(name, size, expected):
    variables = abstract_variables(create_backbone(name), size)
    assert count(variables["params"]) == expected
    for leaf in jax.tree_util.tree_leaves(variables):
        assert leaf.dtype == jnp.float32


def test_resnet18_cifar_with_10_way_classifier_count():
    backbone = create_backbone("resnet18_cifar")
    variables = abstract_variables(backbone, 32)
    classifier = backbone.num_features * 10 + 10
    assert count(variables["params"]) + classifier == 11_173_962
    # Running statistics are not parameters: 2 per channel of each of the 20 BatchNorms.
    assert count(variables["batch_stats"]) == 2 * 4800


def test_published_head_parameter_counts():
    """Counts from the official PyTorch/Haiku code (trainable parameters, input 2048 / 256)."""
    bn = lambda d: 2 * d  # noqa: E731  (affine BatchNorm: weight + bias)
    expected = {
        ("byol", "projector", 2048): 2048 * 4096 + 4096 + bn(4096) + 4096 * 256,
        ("byol", "predictor", 256): 256 * 4096 + 4096 + bn(4096) + 4096 * 256,
        # fc of the projector: bias frozen (requires_grad=False), last BN affine=False.
        ("simsiam", "projector", 2048): 3 * 2048 * 2048 + 2 * bn(2048),
        ("simsiam", "predictor", 2048): 2048 * 512 + bn(512) + 512 * 2048 + 2048,
        ("vicreg", "projector", 2048): 2048 * 8192
        + 8192 * 8192
        + 2 * (8192 + bn(8192))
        + 8192 * 8192,
        ("barlow_twins", "projector", 2048): 2048 * 8192 + 2 * 8192 * 8192 + 2 * bn(8192),
    }
    assert set(expected) == {(m, r, d) for (m, r, d) in expected if r in PUBLISHED_HEADS[m]}
    assert sum(len(v) for v in PUBLISHED_HEADS.values()) == len(expected)
    for (method, role, d_in), n in expected.items():
        head = create_head(method, role)
        variables = jax.eval_shape(
            lambda h=head, d=d_in: h.init(key(), jnp.zeros((2, d)), train=False)
        )
        assert count(variables["params"]) == n, (method, role)


# --------------------------------------------------------------------------------------------
# Output shapes of every registry entry (abstract evaluation: no compute).
# --------------------------------------------------------------------------------------------
EXPECTED_FEATURES = {
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet18_cifar": 512,
    "resnet34_cifar": 512,
    "resnet50_cifar": 2048,
    "resnet_tiny": 128,
    "vit_tiny_16": 192,
    "vit_small_16": 384,
    "vit_base_16": 768,
    "vit_tiny_8": 192,
    "vit_small_8": 384,
    "vit_base_8": 768,
    "vit_tiny_4": 192,
    "vit_small_4": 384,
}


def test_registry_is_the_documented_one():
    assert set(BACKBONES) == set(EXPECTED_FEATURES)


@pytest.mark.parametrize("name", sorted(EXPECTED_FEATURES))
def test_output_shapes(name):
    module = create_backbone(name)
    assert module.num_features == EXPECTED_FEATURES[name]
    for size in (32, 96, 224):
        x = jnp.zeros((2, size, size, 3), jnp.float32)
        # One abstract trace: the output of the init call (train=True: batch statistics).
        out, _ = jax.eval_shape(lambda x=x: module.init_with_output(key(), x, train=True))
        assert out.shape == (2, EXPECTED_FEATURES[name]) and out.dtype == jnp.float32, (name, size)


# --------------------------------------------------------------------------------------------
# Values against the NumPy references.
# --------------------------------------------------------------------------------------------
def random_variables(module, x, rng: np.random.Generator, extra_scale: dict[str, float]):
    """Variables of `module` drawn in NumPy (no init compile): kernels with variance 1/fan_in,
    BN/LN scale 1 + N(0, s^2), biases and the leaves in `extra_scale` N(0, s^2)."""
    shapes = jax.eval_shape(lambda: module.init(key(), x, train=False))
    out = {}
    for path, leaf in traverse_util.flatten_dict(shapes).items():
        name, shape = path[-1], leaf.shape
        if path[0] == "batch_stats":
            value = np.zeros(shape) if name == "mean" else np.ones(shape)
        elif name == "kernel":
            value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
        else:
            value = (name == "scale") + extra_scale.get(name, 0.2) * rng.standard_normal(shape)
        out[path] = jnp.asarray(value, jnp.float32)
    return traverse_util.unflatten_dict(out)


@pytest.mark.parametrize(
    "block,stem,stage_sizes,width,size",
    [
        ("basic", "imagenet", (2, 1, 1, 1), 0.25, 32),
        ("bottleneck", "cifar", (1, 2, 1, 1), 0.125, 16),
    ],
)
def test_resnet_matches_numpy_reference(block, stem, stage_sizes, width, size):
    model = ResNet(stage_sizes=stage_sizes, block=block, width=width, stem=stem)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, size, size, 3)).astype(np.float32)
    variables = random_variables(model, x, rng, {})
    feats, updates = run(model, variables, jnp.asarray(x), True)
    p = flat(variables["params"])
    ref, stats = np_resnet(p, x.astype(np.float64), block=block, stem=stem, stage_sizes=stage_sizes)
    np.testing.assert_allclose(feats, ref, rtol=2e-4, atol=2e-4)
    # Running averages: momentum 0.9 from the initial (mean 0, var 1), biased batch variance.
    new_stats = flat(updates["batch_stats"])
    assert {k.rsplit("/", 1)[0] for k in new_stats} == set(stats)
    for name, (mean, var) in stats.items():
        np.testing.assert_allclose(new_stats[name + "/mean"], 0.1 * mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(new_stats[name + "/var"], 0.9 + 0.1 * var, rtol=1e-4, atol=1e-5)
    # Eval mode normalises with those running averages.
    x2 = rng.standard_normal((4, size, size, 3)).astype(np.float32)
    feats_eval = run(model, {"params": variables["params"], **updates}, jnp.asarray(x2), False)[0]
    running = {k: v.astype(np.float64) for k, v in new_stats.items()}
    ref_eval, _ = np_resnet(
        p, x2.astype(np.float64), block=block, stem=stem, stage_sizes=stage_sizes, running=running
    )
    np.testing.assert_allclose(feats_eval, ref_eval, rtol=2e-4, atol=2e-4)


def test_vit_matches_numpy_reference():
    model = ViT(width=32, depth=2, num_heads=4, patch_size=4)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 16, 8, 3)).astype(np.float32)  # non-square: row-major order
    variables = random_variables(model, x, rng, {"cls_token": 1.0, "pos_embed": 1.0})
    feats = run(model, variables, jnp.asarray(x), True)[0]
    ref = np_vit(flat(variables["params"]), x.astype(np.float64), patch=4, heads=4, depth=2)
    np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-4)


def np_mlp(p, x, hidden, output_bn, output_affine):
    p = {k: v.astype(np.float64) for k, v in p.items()}
    stats = {}
    for i in range(len(hidden) + 1):
        x = x @ p[f"dense_{i}/kernel"] + p.get(f"dense_{i}/bias", 0.0)
        if i < len(hidden):
            x = relu(np_batchnorm(x, p, stats, f"bn_{i}", None))
        elif output_bn:
            x = np_batchnorm(x, p if output_affine else {}, stats, f"bn_{i}", None)
    return x, stats


@pytest.mark.parametrize(
    "kwargs,expected_params",
    [
        # BYOL layout: hidden bias, no output bias.
        (
            {"hidden_dims": (8,), "output_dim": 5, "use_bias": True, "output_use_bias": False},
            {"dense_0/kernel", "dense_0/bias", "bn_0/scale", "bn_0/bias", "dense_1/kernel"},
        ),
        # SimSiam projector layout: no biases, last BN without affine parameters.
        (
            {
                "hidden_dims": (8, 7),
                "output_dim": 5,
                "use_bias": False,
                "output_bn": True,
                "output_bn_affine": False,
            },
            {
                "dense_0/kernel",
                "bn_0/scale",
                "bn_0/bias",
                "dense_1/kernel",
                "bn_1/scale",
                "bn_1/bias",
                "dense_2/kernel",
            },
        ),
    ],
)
def test_mlp_matches_numpy_reference(kwargs, expected_params):
    head = MLP(**kwargs)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    variables = random_variables(head, x, rng, {})
    assert set(flat(variables["params"])) == expected_params
    out, updates = run(head, variables, jnp.asarray(x), True)
    output_bn = (kwargs.get("output_bn", False), kwargs.get("output_bn_affine", True))
    ref, stats = np_mlp(
        flat(variables["params"]), x.astype(np.float64), kwargs["hidden_dims"], *output_bn
    )
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    assert out.dtype == jnp.float32 and out.shape == (6, 5)
    new_stats = flat(updates["batch_stats"])
    assert {k.rsplit("/", 1)[0] for k in new_stats} == set(stats)
    for name, (mean, var) in stats.items():
        np.testing.assert_allclose(new_stats[name + "/mean"], 0.1 * mean, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(new_stats[name + "/var"], 0.9 + 0.1 * var, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Initialisation (real init: the tests above use NumPy-drawn parameters).
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_resnet():
    """resnet_tiny (BasicBlock [1, 1, 1, 1], width 0.25), its init, a batch of 8 16x16 images."""
    model = create_backbone("resnet_tiny")
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 16, 16, 3)), jnp.float32)
    return model, init(model, x, seed=1), x


@pytest.fixture(scope="module")
def tiny_vit():
    """vit_tiny_4 with 2 blocks, its init, a batch of 8 16x16 images."""
    model = create_backbone("vit_tiny_4", depth=2)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 16, 16, 3)), jnp.float32)
    return model, init(model, x, seed=1), x


def test_resnet_initialisation_matches_torchvision(tiny_resnet):
    _, variables, _ = tiny_resnet
    p = flat(variables["params"])
    # kaiming_normal_(mode='fan_out', nonlinearity='relu'): std sqrt(2 / (out * kh * kw)).
    w = p["layer4_0/conv2/kernel"]  # [3, 3, 128, 128]: 147,456 samples, std error 0.2%
    assert abs(w.std() / np.sqrt(2.0 / (128 * 9)) - 1.0) < 0.01
    assert abs(w.mean()) < 1e-3
    assert np.abs(w).max() > 4 * w.std()  # untruncated normal
    for k, v in p.items():
        if k.endswith("scale"):
            assert np.all(v == 1), k
        elif k.endswith("bias"):
            assert np.all(v == 0), k
    for k, v in flat(variables["batch_stats"]).items():
        assert np.all(v == (1.0 if k.endswith("var") else 0.0)), k


@pytest.mark.parametrize("block,last_bn", [("basic", "bn2"), ("bottleneck", "bn3")])
def test_zero_init_residual(block, last_bn):
    model = ResNet(stage_sizes=(1, 1, 1, 1), block=block, width=0.0625, zero_init_residual=True)
    p = flat(init(model, jnp.zeros((1, 8, 8, 3)))["params"])
    scales = {k: v for k, v in p.items() if k.endswith("/scale")}
    zeroed = {k for k, v in scales.items() if np.all(v == 0)}
    assert zeroed == {f"layer{i}_0/{last_bn}/scale" for i in range(1, 5)}
    assert all(np.all(scales[k] == 1) for k in set(scales) - zeroed)


def test_byol_imagenet_preset_zero_inits_the_last_bn_of_every_bottleneck():
    """Haiku's BlockV1 (the official BYOL's ResNet-50): batchnorm_2 has scale_init=jnp.zeros."""
    from ssljax import config_schema

    c = config_schema.load_config(str(REPO / "configs" / "byol.py") + ":imagenet")
    # The preset's ResNet-50 with one block per stage at 1/16 width: same blocks, cheap init.
    kwargs = {**c.model.backbone_kwargs.to_dict(), "width": 0.0625, "stage_sizes": (1, 1, 1, 1)}
    model = create_backbone(c.model.backbone, **kwargs)
    assert model.block == "bottleneck"
    p = flat(init(model, jnp.zeros((1, 32, 32, 3)))["params"])
    zeroed = {k for k, v in p.items() if k.endswith("/scale") and np.all(v == 0)}
    assert zeroed == {f"layer{i}_0/bn3/scale" for i in range(1, 5)}


TRUNCNORM_STD = scipy.stats.truncnorm(-2.0, 2.0).std()  # 0.8796: a unit normal cut at +-2


@pytest.mark.parametrize("scheme", ["flax", "torch", "haiku"])
def test_head_init_statistics(scheme):
    """Every Dense of a head follows its scheme, with fan_in the layer's own input width."""
    d_in, hidden = 256, 1024
    head = MLP(hidden_dims=(hidden,), output_dim=512, output_use_bias=True, init_scheme=scheme)
    p = flat(init(head, jnp.zeros((2, d_in)))["params"])
    for layer, fan_in in (("dense_0", d_in), ("dense_1", hidden)):
        w = p[f"{layer}/kernel"].astype(np.float64).ravel()
        b = p[f"{layer}/bias"].astype(np.float64)
        bound = 1.0 / np.sqrt(fan_in)
        sample = w[:: max(1, w.size // 20000)] / bound
        if scheme == "torch":
            # nn.Linear.reset_parameters: kaiming_uniform_(a=sqrt(5)) = U(-1/sqrt(fan_in), +),
            # the bias U(-1/sqrt(fan_in), +) too.
            want_std, dist = bound / np.sqrt(3.0), scipy.stats.uniform(-1.0, 2.0)
            assert np.abs(b).max() <= bound and abs(b.std() / want_std - 1) < 0.1, layer
        elif scheme == "haiku":
            # hk.Linear: TruncatedNormal(stddev=1/sqrt(fan_in)), cut at 2 std, not rescaled.
            want_std, dist = TRUNCNORM_STD * bound, scipy.stats.truncnorm(-2.0, 2.0)
            assert np.all(b == 0), layer
        else:
            # Flax lecun_normal: truncated at 2 std and rescaled to std 1/sqrt(fan_in).
            want_std = bound
            dist = scipy.stats.truncnorm(-2.0, 2.0, scale=1.0 / TRUNCNORM_STD)
            assert np.all(b == 0), layer
        assert abs(w.std() / want_std - 1) < 0.01, (layer, w.std(), want_std)
        assert abs(w.mean()) < 0.01 * bound, layer
        assert scipy.stats.kstest(sample, dist.cdf).pvalue > 1e-4, layer


def test_vit_initialisation_matches_timm(tiny_vit):
    _, variables, _ = tiny_vit
    p = flat(variables["params"])
    assert p["pos_embed"].shape == (1, 17, 192)
    assert abs(p["pos_embed"].std() / 0.02 - 1) < 0.05  # 3,264 samples: std error 1.2%
    assert abs(p["blocks_0/attn/qkv/kernel"].std() / 0.02 - 1) < 0.01
    assert p["cls_token"].std() < 2e-6
    assert np.all(p["blocks_0/norm1/scale"] == 1) and np.all(p["blocks_0/attn/qkv/bias"] == 0)
    bound = 1 / np.sqrt(4 * 4 * 3)  # PyTorch Conv2d default: uniform(+-1/sqrt(fan_in))
    kernel = p["patch_embed/proj/kernel"]
    assert kernel.max() <= bound and kernel.min() >= -bound and kernel.max() > 0.95 * bound


# --------------------------------------------------------------------------------------------
# BatchNorm state, grayscale input, bfloat16.
# --------------------------------------------------------------------------------------------
def test_batchnorm_train_updates_stats_eval_does_not(tiny_resnet):
    model, variables, x = tiny_resnet
    train_out, train_updates = run(model, variables, x, True)
    eval_out, eval_updates = run(model, variables, x, False)
    before = flat(variables["batch_stats"])
    after_train = flat(train_updates["batch_stats"])
    after_eval = flat(eval_updates["batch_stats"])
    assert all(not np.allclose(after_train[k], before[k]) for k in before)
    assert all(np.array_equal(after_eval[k], before[k]) for k in before)
    # Eval mode is per-example (running statistics); train mode depends on the whole batch.
    half = x.shape[0] // 2
    swapped = jnp.concatenate([x[:half], x[half:][::-1]])  # same first half, other rest
    np.testing.assert_allclose(run(model, variables, swapped, False)[0][:half], eval_out[:half])
    swapped = jnp.concatenate([x[:half], -x[half:]])  # same first half, other batch statistics
    assert not np.allclose(run(model, variables, swapped, True)[0][:half], train_out[:half])


def test_grayscale_images_are_replicated_to_rgb(tiny_resnet):
    model, variables, x = tiny_resnet
    rgb = jnp.repeat(x[..., :1], 3, axis=-1)
    np.testing.assert_array_equal(
        run(model, variables, x[..., :1], False)[0], run(model, variables, rgb, False)[0]
    )


def relative_error(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@pytest.mark.parametrize("network", ["tiny_resnet", "tiny_vit"])
def test_bfloat16_compute(network, request):
    """bfloat16 compute: float32 params and stats, float32 features close to float32 compute.

    Each layer rounds its inputs and outputs to bfloat16 (relative error <= u = 2^-8); BatchNorm
    and LayerNorm keep activations at unit scale, so the errors of the ~10 layers add up at
    most linearly and in practice as a random walk. The bound, 16 u (6%) relative L2 error,
    holds for linear accumulation over 10 layers with margin; the lower bound (> u / 4)
    proves the computation did run in bfloat16.
    """
    model32, variables, x = request.getfixturevalue(network)
    model16 = model32.clone(dtype=jnp.bfloat16)
    for leaf in jax.tree_util.tree_leaves(
        jax.eval_shape(lambda: model16.init(key(), x, train=False))
    ):
        assert leaf.dtype == jnp.float32
    for train in (True, False):
        f32, s32 = run(model32, variables, x, train)
        f16, s16 = run(model16, variables, x, train)
        assert f16.dtype == jnp.float32
        err = relative_error(f16, f32)
        assert BF16_EPS / 4 < err < 16 * BF16_EPS, (train, err)
        for a, b in zip(
            jax.tree_util.tree_leaves(s16), jax.tree_util.tree_leaves(s32), strict=True
        ):
            assert a.dtype == jnp.float32
            if train:
                assert relative_error(a, b) < 16 * BF16_EPS


# --------------------------------------------------------------------------------------------
# Global-batch statistics under sharding.
# --------------------------------------------------------------------------------------------
def test_sharded_batch_equals_single_device(tiny_resnet):
    assert len(jax.devices()) == 8, "conftest.py should provide 8 simulated CPU devices"
    backbone, bb_vars, x8 = tiny_resnet
    head = MLP(hidden_dims=(32,), output_dim=16)
    x = jnp.concatenate([x8, -x8[:, ::-1]])  # 16 images: 2 per device
    head_vars = random_variables(head, np.zeros((2, 128), np.float32), np.random.default_rng(0), {})

    def forward(bb_vars, head_vars, x):
        feats, bb_new = backbone.apply(bb_vars, x, train=True, mutable=["batch_stats"])
        proj, head_new = head.apply(head_vars, feats, train=True, mutable=["batch_stats"])
        return feats, proj, bb_new, head_new

    forward = jax.jit(forward)
    single = forward(bb_vars, head_vars, x)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    x_sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, P("data")))
    sharded = forward(bb_vars, head_vars, x_sharded)
    assert sharded[0].sharding.spec == P("data")
    # float32 sums in another order: differences of a few ulp, amplified by the head's BN.
    for a, b in zip(
        jax.tree_util.tree_leaves(sharded), jax.tree_util.tree_leaves(single), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)
    # Control: one device's shard alone gives different statistics (by far more than the
    # tolerance), so the equality above is that of global-batch BatchNorm.
    local = forward(bb_vars, head_vars, x[:2])
    for name in ("bn1", "layer4_0"):
        a = flat(local[2]["batch_stats"][name])
        b = flat(single[2]["batch_stats"][name])
        assert max(np.abs(a[k] - b[k]).max() for k in a) > 1e-2


# --------------------------------------------------------------------------------------------
# Bad input.
# --------------------------------------------------------------------------------------------
def test_unknown_backbone_lists_known_names():
    with pytest.raises(ValueError, match="resnet50.*vit_small_16|vit_small_16.*resnet50") as info:
        create_backbone("resnet51")
    assert "resnet51" in str(info.value)


def test_unknown_override_is_rejected():
    with pytest.raises(ValueError, match="widht"):
        create_backbone("resnet18", widht=0.5)
    with pytest.raises(ValueError, match="stem"):
        create_backbone("resnet18", stem="tiny")
    with pytest.raises(ValueError, match="block"):
        create_backbone("resnet18", block="wide")
    with pytest.raises(ValueError, match="width"):
        create_backbone("resnet18", width=0.0)
    with pytest.raises(ValueError, match="num_heads"):
        create_backbone("vit_small_16", num_heads=5)
    with pytest.raises(ValueError, match="dtype"):
        create_backbone("resnet18", dtype=jnp.int32)


@pytest.mark.parametrize("name", ["resnet_tiny", "vit_tiny_16"])
@pytest.mark.parametrize(
    "shape,dtype,match",
    [
        ((2, 32, 32, 2), jnp.float32, "channels"),
        ((2, 32, 32, 4), jnp.float32, "channels"),
        ((2, 3, 32, 32), jnp.float32, "channels"),  # NCHW by mistake
        ((32, 32, 3), jnp.float32, "batch"),
        ((2, 32, 32, 3), jnp.uint8, "floating point"),
    ],
)
def test_bad_images_raise_before_compute(name, shape, dtype, match):
    module = create_backbone(name, depth=1) if name.startswith("vit") else create_backbone(name)
    images = jax.ShapeDtypeStruct(shape, dtype)
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(lambda x: module.init(key(), x, train=False), images)


def test_patch_size_must_divide_image():
    module = create_backbone("vit_small_16", depth=1)
    with pytest.raises(ValueError, match="patch_size"):
        jax.eval_shape(lambda: module.init(key(), jnp.zeros((1, 100, 96, 3)), train=False))


def test_vit_position_embedding_size_is_checked():
    module = create_backbone("vit_tiny_16", depth=1)
    variables = jax.eval_shape(lambda: module.init(key(), jnp.zeros((1, 32, 32, 3)), train=False))
    with pytest.raises(ValueError, match="position embedding"):
        jax.eval_shape(lambda v: module.apply(v, jnp.zeros((1, 64, 64, 3)), train=False), variables)


def test_bad_heads():
    with pytest.raises(ValueError, match="hidden_dims"):
        MLP(hidden_dims=(0,), output_dim=4)
    head = MLP(hidden_dims=(4,), output_dim=4)
    with pytest.raises(ValueError, match="features"):
        jax.eval_shape(lambda: head.init(key(), jnp.zeros((2, 3, 4)), train=False))
    with pytest.raises(ValueError, match="simclr"):
        create_head("simclr", "projector")
    with pytest.raises(ValueError, match="predictor"):
        create_head("vicreg", "predictor")
    with pytest.raises(ValueError, match="hiden_dims"):
        create_head("byol", "projector", hiden_dims=(8,))
    assert create_head("byol", "projector", hidden_dims=(8,)).hidden_dims == (8,)
