"""Export: torchvision-layout safetensors loaded strictly by a plain-PyTorch ResNet, and Flax
msgpack round trips.

torchvision itself is not installable here, so the test writes its ResNet with torchvision's
module names and layouts (``conv1``, ``bn1``, ``layer1..4`` of ``BasicBlock``/``Bottleneck`` with
``conv1/bn1/conv2/bn2[/conv3/bn3]`` and ``downsample = Sequential(conv, bn)``, ResNet v1.5 with
the stride on the 3x3 convolution), without ``fc``, and compares eval-mode features with the
Flax model's on the same images.
"""

import functools
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssljax import export
from ssljax.models import ResNet, create_backbone

torch = pytest.importorskip("torch")
nn = torch.nn
safetensors_torch = pytest.importorskip("safetensors.torch")


# ----------------------------------------------------------------------------------------------
# torchvision's ResNet, written out (no classifier).
# ----------------------------------------------------------------------------------------------
def conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * 4)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class TorchResNet(nn.Module):
    """torchvision.models.ResNet without ``fc``; ``stem='cifar'``: 3x3/1 conv, no max-pool."""

    def __init__(self, block, layers, base=64, stem="imagenet"):
        super().__init__()
        self.inplanes = base
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, base, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(3, base, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, base, layers[0])
        self.layer2 = self._make_layer(block, base * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, base * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, base * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


# ----------------------------------------------------------------------------------------------
# Flax networks with non-trivial parameters and statistics.
# ----------------------------------------------------------------------------------------------
def trained_looking_variables(model, size, seed):
    """He-scaled kernels, random BN affine parameters, and running statistics after three
    train-mode forwards (one compiled function; the init itself is not compiled)."""
    shapes = jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3))
    )
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = jax.tree_util.keystr(path)
        if "kernel" in name:  # [kh, kw, in, out]
            return rng.normal(size=s.shape) * np.sqrt(2.0 / np.prod(s.shape[:3]))
        return (1.0 if "scale" in name else 0.0) + 0.2 * rng.normal(size=s.shape)

    params = jax.tree_util.tree_map_with_path(draw, shapes["params"])
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    stats = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["batch_stats"])
    stats = jax.tree_util.tree_map_with_path(
        lambda p, a: a + 1.0 if "var" in jax.tree_util.keystr(p) else a, stats
    )

    @jax.jit
    def train_forward(stats, x):
        _, upd = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        return upd["batch_stats"]

    for _ in range(3):
        stats = train_forward(stats, 1.5 * rng.normal(size=(8, size, size, 3)) + 0.3)
    return params, stats


NETWORKS = {
    # name: (Flax module, torch module factory, image size)
    "resnet18_cifar_w0.125": (
        lambda: create_backbone("resnet18_cifar", width=0.125),
        lambda: TorchResNet(BasicBlock, [2, 2, 2, 2], base=8, stem="cifar"),
        16,
    ),
    "bottleneck_imagenet_stem": (
        lambda: ResNet(stage_sizes=(1, 1, 1, 1), block="bottleneck", width=0.125, stem="imagenet"),
        lambda: TorchResNet(Bottleneck, [1, 1, 1, 1], base=8, stem="imagenet"),
        32,
    ),
}


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_torch_export_loads_strictly_and_gives_the_same_features(name, tmp_path):
    flax_factory, torch_factory, size = NETWORKS[name]
    model = flax_factory()
    params, stats = trained_looking_variables(model, size, seed=len(name))
    # Running statistics must be non-trivial, or a swapped mean/var would go unnoticed.
    assert float(jnp.abs(stats["bn1"]["mean"]).max()) > 0.05
    path = export.export_torch(params, stats, str(tmp_path / "b.safetensors"), {"step": "3"})

    net = torch_factory()
    state_dict = safetensors_torch.load_file(path)
    result = net.load_state_dict(state_dict, strict=True)  # raises on any missing/extra key
    assert not result.missing_keys and not result.unexpected_keys
    assert set(state_dict) == set(net.state_dict())
    net.eval()

    images = np.random.default_rng(0).normal(size=(5, size, size, 3)).astype(np.float32)
    apply = jax.jit(functools.partial(model.apply, train=False))
    want = np.asarray(apply({"params": params, "batch_stats": stats}, images))
    with torch.no_grad():
        got = net(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    assert got.shape == want.shape == (5, model.num_features)
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_safetensors_layouts_and_metadata(tmp_path):
    model = create_backbone("resnet18_cifar", width=0.125)
    variables = jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3))
    )
    params = jax.tree.map(
        lambda s: np.random.default_rng(0).normal(size=s.shape).astype(np.float32),
        variables["params"],
    )
    stats = jax.tree.map(lambda s: np.ones(s.shape), variables["batch_stats"])
    sd = export.resnet_to_torchvision(params, stats)
    # Flax HWIO -> PyTorch OIHW; element [o, i, h, w] = kernel[h, w, i, o].
    kernel = params["layer2_0"]["downsample_conv"]["kernel"]
    np.testing.assert_array_equal(sd["layer2.0.downsample.0.weight"], kernel.transpose(3, 2, 0, 1))
    assert sd["layer2.0.downsample.1.running_var"].dtype == np.float32
    assert sd["bn1.num_batches_tracked"].dtype == np.int64
    from safetensors import safe_open

    old_umask = os.umask(0o022)
    try:
        path = export.export_torch(params, stats, str(tmp_path / "b.safetensors"), {"step": 7})
        flax_path = export.export_flax(params, stats, str(tmp_path / "b.msgpack"))
    finally:
        os.umask(old_umask)
    with safe_open(path, "np") as f:
        assert f.metadata() == {"format": "pt", "step": "7"}
    # The umask's mode, as the msgpack file (safetensors' save_file would make it 0600).
    assert oct(os.stat(path).st_mode & 0o777) == oct(os.stat(flax_path).st_mode & 0o777) == "0o644"


def test_torch_export_refuses_what_is_not_a_resnet():
    vit = create_backbone("vit_tiny_4", depth=1)
    variables = jax.eval_shape(
        functools.partial(vit.init, train=False), jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3))
    )
    params = jax.tree.map(lambda s: np.zeros(s.shape), variables["params"])
    with pytest.raises(ValueError, match="no torchvision ResNet counterpart.*--format=flax"):
        export.resnet_to_torchvision(params, {})
    resnet = create_backbone("resnet_tiny")
    variables = jax.eval_shape(
        functools.partial(resnet.init, train=False), jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3))
    )
    params = jax.tree.map(lambda s: np.zeros(s.shape), variables["params"])
    with pytest.raises(ValueError, match="lack parameters or running statistics"):
        export.resnet_to_torchvision(params, {})


def test_flax_msgpack_round_trips(tmp_path):
    model = create_backbone("resnet_tiny")
    shapes = jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3))
    )
    rng = np.random.default_rng(1)
    variables = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
    path = export.export_flax(variables["params"], variables["batch_stats"], str(tmp_path / "b"))
    loaded = export.load_flax(path)
    assert jax.tree.structure(loaded) == jax.tree.structure(dict(variables))
    jax.tree.map(np.testing.assert_array_equal, loaded, dict(variables))
    (tmp_path / "bad").write_bytes(flax.serialization.msgpack_serialize({"params": {}}))
    with pytest.raises(ValueError, match=r"does not hold.*found \['params'\]"):
        export.load_flax(str(tmp_path / "bad"))
    with pytest.raises(FileNotFoundError, match="No exported Flax backbone"):
        export.load_flax(str(tmp_path / "missing"))


def test_unknown_format_fails_before_reading_anything(tmp_path):
    with pytest.raises(
        ValueError, match=r"--format='onnx' does not exist; valid formats: \['torch'"
    ):
        export.export_from_workdir(str(tmp_path / "nowhere"), "onnx")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export.export_from_workdir(str(tmp_path / "nowhere"), "torch")
