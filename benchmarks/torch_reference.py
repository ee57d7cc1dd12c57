"""An independent PyTorch reference of ssljax's pretraining: same config, data and evaluation.

Is ssljax's slow learning of a method at a short budget the method, or a bug in ssljax? This
script trains the same method with the same ssljax config in plain PyTorch, on the same JPEG
copy of CIFAR-10, and evaluates it with the same protocols, so that the two can differ only
where they should: random streams (initial weights, data order, augmentations).

What is shared with ssljax, and what is not:

* the config: ``configs/<method>.py:<preset>`` read with ``ssljax.config_schema.load_config``,
  plus ``--override key=value``: batch, epochs or steps, warm-up, optimizer (name, base lr
  scaled by batch / 256, weight decay, momentum, eta, exclusion and fixed-rate regexes), tau,
  heads, backbone width and zero-init residual, the two views' augmentation parameters, kNN k
  and temperature;
* the modules, losses, optimizers and schedules of ``benchmarks/torch_yardstick.py`` (plain
  ``torch.nn``; their parameters carry ssljax's paths, so ssljax's regexes select the same
  tensors). Their numerics are checked against ``ssljax.train.make_train_step`` from the same
  initial weights by ``tests/test_torch_reference.py``;
* the data: the images of ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` decoded with PIL
  (classes sorted by name give the labels), normalised with the per-channel mean and std of
  the train split computed as ``ssljax.data.image_folder`` computes them;
* the augmentations: torchvision's definitions re-implemented per image on float tensors
  (torchvision is not needed): ``RandomResizedCrop`` (10 tries, central-crop fallback,
  antialiased bilinear resize), horizontal flip, ``ColorJitter`` in a random order applied with
  ``jitter_prob``, grayscale, Gaussian blur (kernel ``2 int(size / 20) + 1``, reflect padding,
  as ssljax), solarisation (x >= 0.5 -> 1 - x); each view with its own parameters from
  ``config.augment.view1/view2`` (``ssljax.augment.VIEW_DEFAULTS`` documents them);
  in a ``DataLoader`` with worker processes, a global reshuffle every epoch, ``drop_last``;
* the evaluation: weighted kNN (cosine similarity, votes ``exp(s / T)``, ``config.knn.k`` and
  ``config.knn.temperature``, ssljax's ``knn.py``) on eval-mode backbone features of the 50,000
  train and 10,000 test images; optionally (``--linear``) the linear protocol of
  ``ssljax.evaluate.eval_config('cifar')`` on the same features.

kNN is measured at initialisation twice: with the network as initialised (BatchNorm running
statistics at mean 0 / variance 1, under which eval-mode BatchNorm does not normalise: ssljax's
``knn_top1_init`` on main), and after ``--calib_batches`` training batches through the network
in train mode without an update (both views; what that many steps at rate 0 would do: ssljax's
``knn.bn_calibration_batches``, which its recipes branch adds). ``knn_top1_init`` in the output
is the one ssljax reports under the same config. The difference between the two is what
BatchNorm alone adds.

``--init_from_ssljax`` starts from the initial weights ``ssljax.main`` draws for the config
with ``config.seed`` = ``--seed`` (``ssljax_initial_state_dict``; loaded over torch's draw, so the
data order and augmentation draws are those of the same ``--seed`` without the flag): a pair of
reference runs with and without it differs in its initial weights only, and a reference run
with it differs from ssljax's run of that seed in the data order and augmentation draws only.
``--inputs_from_ssljax`` (with ``--override data.root=... --override data.data_dir=...`` of the
ssljax run) trains on ssljax's own inputs instead: its loader's batches augmented by its
on-device augmentation with the train step's keys (``benchmarks/ssljax_inputs.py``); with both
flags a reference run differs from ssljax's run of the seed in the train step's implementation
only (``tests/test_torch_reference.py`` checks the losses agree).

Not here: ssljax's online linear probe (it trains on detached features and cannot change the
backbone), the non-finite-step guard (a non-finite loss stops the run), checkpoints.

    python benchmarks/torch_reference.py --config configs/byol.py:cifar10_cpu \\
        --override num_epochs=1.25 --override warmup_epochs=0.125 --seed 0 \\
        --out benchmarks/results/torchref/byol_s0.json
    # a dry run (3 steps, kNN on 2,000 / 400 images):
    python benchmarks/torch_reference.py --config configs/byol.py:cifar10_cpu \\
        --override num_steps=3 --knn_subset 2000 --calib_batches 2 --out /tmp/ref.json
"""

from __future__ import annotations

import os

# Importing ssljax's configs must never initialise a JAX accelerator backend beside PyTorch's.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import ast  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import torch_yardstick as yardstick  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # ssljax.data.image_folder's

# ssljax.evaluate.eval_config('cifar').linear (solo-learn's CIFAR linear evaluation): SGD with
# momentum 0.9, batch 256, lr 0.3 x batch / 256, no weight decay, 100 epochs, lr x 0.1 at
# epochs 60 and 80, PyTorch's nn.Linear initialisation, the last short batch kept. The test
# checks these against ssljax's values, so a change there fails here.
LINEAR_CIFAR = {
    "epochs": 100,
    "batch_size": 256,
    "base_lr": 0.3,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "lr_decay_epochs": (60, 80),
    "lr_decay_factor": 0.1,
}


# ----------------------------------------------------------------------------------------------
# Config.
# ----------------------------------------------------------------------------------------------
def parse_value(text: str):
    """``'1.25'`` -> 1.25, ``'(0.2, 1.0)'`` -> tuple, ``'true'`` -> True, else the string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return tuple(value) if isinstance(value, list) else value


class _ConfigDict(dict):
    """The part of ``ml_collections.ConfigDict`` that ssljax's config files use: a dict whose
    items are also attributes. Stands in for it on hosts without ml_collections."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err

    def __setattr__(self, name, value):
        self[name] = value

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, _ConfigDict) else v for k, v in self.items()}


def _ensure_ml_collections() -> None:
    """Installs :class:`_ConfigDict` as ``ml_collections`` where the package is missing (the
    GPU host has no package index), so that ssljax's config files load."""
    try:
        import ml_collections  # noqa: F401
    except ImportError:
        import types

        print("ml_collections is not installed: configs load as plain attribute dicts")
        sys.modules["ml_collections"] = types.SimpleNamespace(ConfigDict=_ConfigDict)


def load_config(spec: str, overrides: list[str]):
    """``configs/<method>.py:<preset>`` with ``key=value`` overrides (dotted keys).

    Raises:
      ValueError: for an override without ``=`` or naming a field the config does not have.
    """
    _ensure_ml_collections()
    from ssljax import config_schema

    config = config_schema.load_config(spec)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--override {item!r}: expected key=value, e.g. num_epochs=1.25")
        node, *parents, leaf = [config, *key.strip().split(".")]
        for p in parents:
            if p not in node:
                raise ValueError(f"--override {item!r}: config has no field {p!r} in {key!r}")
            node = node[p]
        if leaf not in node:
            raise ValueError(f"--override {item!r}: config has no field {key!r}")
        value = parse_value(text)
        if isinstance(node[leaf], float) and isinstance(value, int):
            value = float(value)
        node[leaf] = value
    return config


def schedule_lengths(config, num_train: int) -> tuple[int, int, int]:
    """``(steps_per_epoch, total_steps, warmup_steps)`` as ``ssljax.train.build_components``."""
    steps_per_epoch = max(num_train // config.global_batch, 1)
    if config.num_steps > 0:
        total = int(config.num_steps)
    else:
        total = max(int(math.ceil(config.num_epochs * steps_per_epoch)), 1)
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    return steps_per_epoch, total, min(warmup, total - 1)


def state_dict_from_ssljax(params, batch_stats) -> dict[str, np.ndarray]:
    """ssljax variables of a ``SiameseNetwork`` as the ``state_dict`` of the torch modules.

    The backbone goes through ``ssljax.export.resnet_to_torchvision`` (torchvision's names and
    layouts); the heads map ``{head}/dense_{i}/kernel`` ``[in, out]`` to
    ``{head}.dense_{i}.weight`` ``[out, in]``, BatchNorm ``scale``/``bias``/``mean``/``var`` to
    ``weight``/``bias``/``running_mean``/``running_var`` (see ``torch_yardstick.flax_path``).

    Args:
      params: ``{'backbone', 'projector'[, 'predictor']}`` parameters (arrays of any kind).
      batch_stats: the matching ``batch_stats``.

    Returns:
      ``{torch name: float32 array}``, with ``num_batches_tracked`` 0 for every BatchNorm.
    """
    from ssljax import export

    backbone = export.resnet_to_torchvision(params["backbone"], batch_stats["backbone"])
    out = {f"backbone.{k}": v for k, v in backbone.items()}
    leaves = {"kernel": "weight", "scale": "weight", "bias": "bias"}
    stats = {"mean": "running_mean", "var": "running_var"}
    for collection, names in ((params, leaves), (batch_stats, stats)):
        for head in (h for h in collection if h != "backbone"):
            for layer, tensors in collection[head].items():
                for leaf, value in tensors.items():
                    value = np.asarray(value, np.float32)
                    if leaf == "kernel":
                        value = value.T
                    out[f"{head}.{layer}.{names[leaf]}"] = np.ascontiguousarray(value)
                if collection is batch_stats:
                    out[f"{head}.{layer}.num_batches_tracked"] = np.zeros((), np.int64)
    return out


def ssljax_initial_state_dict(
    config, seed: int, *, image_shape, num_classes: int, num_train_examples: int
) -> dict[str, np.ndarray]:
    """The initial weights ``ssljax.main`` draws for ``config`` and ``seed``, as a ``state_dict``.

    They come from ``ssljax.train.init_state(comps, config, PRNGKey(seed))``, the function
    ``ssljax.main`` runs (jitted there with the state's sharding, which cannot change the
    values: JAX's threefry keys are partitionable, a draw does not depend on its layout). For
    BYOL the target starts as this online backbone and projector, as in ssljax.

    Args:
      config: the run's config.
      seed: ``config.seed`` of the ssljax run to start from.
      image_shape: ``(height, width, channels)`` of the training images.
      num_classes: classes of the dataset (the probe's width, not drawn from the same key).
      num_train_examples: size of the train split (sets the schedule lengths of ``comps``,
        not the weights).

    Returns:
      ``state_dict_from_ssljax`` of the online network's initial variables.
    """
    import types

    import jax

    from ssljax import train

    # init_state reads only these fields of the dataset info (shapes, and mean/std for the
    # augmentation, which the weights do not depend on).
    info = types.SimpleNamespace(
        name="torch_reference",
        num_classes=num_classes,
        split_sizes={config.data.train_split: num_train_examples},
        image_shape=tuple(image_shape),
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        class_names=None,
    )
    comps = train.build_components(config, info, num_train_examples=num_train_examples)
    state = jax.device_get(train.init_state(comps, config, jax.random.PRNGKey(seed)))
    return state_dict_from_ssljax(state.params, state.batch_stats)


def ssljax_initial_state_dict_of(spec: str, overrides: list[str], seed: int, **kwargs):
    """:func:`ssljax_initial_state_dict` of the config ``load_config(spec, overrides)``."""
    return ssljax_initial_state_dict(load_config(spec, overrides), seed, **kwargs)


# ----------------------------------------------------------------------------------------------
# Data: the JPEG folders, decoded once into memory.
# ----------------------------------------------------------------------------------------------
def unpack_archive(archive: pathlib.Path) -> pathlib.Path:
    """Unpacks ``archive`` once into ``$SSLJAX_CACHE`` (tests/conftest.py's scheme and folder).

    Returns:
      The folder holding ``train/`` and ``test/``.
    """
    import shutil
    import tarfile
    import tempfile

    stat = archive.stat()
    cache = pathlib.Path(os.environ.get("SSLJAX_CACHE", "~/.cache/ssljax")).expanduser()
    out = cache / f"cifar10-jpg-{stat.st_size}-{int(stat.st_mtime)}"
    if not (out / ".complete").exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(dir=cache))
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        (out / ".complete").touch()
    for candidate in [out, *out.iterdir()]:
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    raise ValueError(f"{archive} does not unpack to train/ and test/ folders")


def find_data_root(data_root: str | None, archive: str | None, config) -> pathlib.Path:
    """The image folder: ``--data_root``, else ``config.data.root``, else ``--archive`` unpacked.

    Raises:
      FileNotFoundError: when none of them holds ``train/`` and ``test/``; says what to pass.
    """
    for candidate in (data_root, config.data.get("root")):
        if candidate and (pathlib.Path(candidate) / "train").is_dir():
            return pathlib.Path(candidate)
    if data_root:
        raise FileNotFoundError(f"--data_root={data_root} holds no train/ folder")
    path = pathlib.Path(archive) if archive else DEFAULT_ARCHIVE
    if path.is_file():
        return unpack_archive(path)
    raise FileNotFoundError(
        f"No CIFAR-10 image folder: config.data.root={config.data.get('root')!r} is not one and "
        f"the archive {path} does not exist. Pass --data_root=DIR (holding train/<class>/*.jpg "
        "and test/<class>/*.jpg) or --archive=cifar10-jpg.tar.gz."
    )


def _decode(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def load_split(root: pathlib.Path, split: str, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Every image of ``root/split/<class>/`` as uint8 ``[N, H, W, 3]`` and int64 labels.

    Files are sorted by class folder then name (ssljax's ``image_folder.scan`` order); labels
    are the indices of the sorted class folders.
    """
    import multiprocessing

    classes = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(
            p for p in (root / split / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
        )
        paths += [str(p) for p in files]
        labels += [label] * len(files)
    if not paths:
        raise FileNotFoundError(f"{root / split} holds no images")
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            images = pool.map(_decode, paths, chunksize=512)
    else:
        images = [_decode(p) for p in paths]
    return np.stack(images), np.asarray(labels, np.int64)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the [0, 1] scale over every pixel (as ssljax's prepare)."""
    x = images.reshape(-1, images.shape[-1])
    sums = x.sum(0, dtype=np.float64)
    squares = np.einsum("nc,nc->c", x, x, dtype=np.float64)
    mean = sums / x.shape[0]
    std = np.sqrt(np.maximum(squares / x.shape[0] - mean**2, 0.0))
    return tuple(float(m) / 255 for m in mean), tuple(float(s) / 255 for s in std)


# ----------------------------------------------------------------------------------------------
# Augmentation: torchvision's transforms, per image, on float CHW tensors in [0, 1].
# ----------------------------------------------------------------------------------------------
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # PIL's convert('L'), as ssljax (torchvision: 0.2989)


def _gray(x):
    return (GRAY_WEIGHTS[0] * x[0] + GRAY_WEIGHTS[1] * x[1] + GRAY_WEIGHTS[2] * x[2])[None]


def _blend(x, other, factor: float):
    return (factor * x + (1.0 - factor) * other).clamp(0.0, 1.0)


def adjust_hue(x, delta: float):
    """torchvision's ``adjust_hue`` for float tensors (``_rgb2hsv``, shift, ``_hsv2rgb``)."""
    import torch

    r, g, b = x.unbind(0)
    maxc, minc = x.max(0).values, x.min(0).values
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_div, (maxc - g) / cr_div, (maxc - b) / cr_div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    h = (h + delta) % 1.0
    v = maxc
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    sectors = torch.stack(
        [torch.stack(c) for c in ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))]
    )  # [3 channels, 6 sectors, H, W]
    return sectors.gather(1, i[None, None].expand(3, 1, *i.shape)).squeeze(1)


def gaussian_blur(x, sigma: float, radius: int):
    """Separable Gaussian blur, kernel ``2 radius + 1``, reflect padding (torchvision's)."""
    import torch
    import torch.nn.functional as F

    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    y = F.pad(x[None], (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return y[0]


def crop_box(height: int, width: int, scale, ratio) -> tuple[int, int, int, int]:
    """torchvision ``RandomResizedCrop.get_params``: (top, left, h, w)."""
    import torch

    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,)).item())
            left = int(torch.randint(0, width - w + 1, size=(1,)).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class ViewTransform:
    """One view of ssljax's pipeline (``ssljax.augment``), torchvision's way, on one image.

    Crop (+ resize to ``output_size``), flip, colour jitter (random order, with
    ``jitter_prob``), grayscale, blur, solarise, normalise; each random decision from the
    torch RNG of the calling process (each DataLoader worker has its own seed).
    """

    def __init__(self, view, output_size: int, mean, std):
        import torch

        self.cfg = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in view.items()}
        self.size = int(output_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.radius = int(self.size / 10.0 / 2.0)  # ssljax.augment.blur_radius

    def __call__(self, x):
        """``x``: float ``[3, H, W]`` in [0, 1]; returns the normalised view."""
        return self.apply(x, self.sample(x.shape[1], x.shape[2]))

    def sample(self, height: int, width: int) -> dict:
        """The view's random decisions, drawn from the torch RNG in torchvision's order.

        Factors are drawn only when the jitter applies and sigma only when the blur does, as
        ``RandomApply`` draws them; no image operation draws, so drawing everything first leaves
        the stream (and so every earlier result of this script) unchanged.

        Returns:
          ``crop_box`` (top, left, h, w); ``flip``, ``jitter``, ``grayscale``, ``blur``,
          ``solarize`` (bools); ``jitter_factors`` (brightness, contrast, saturation, hue) and
          ``jitter_order`` (a permutation of 0..3) when ``jitter``; ``blur_sigma`` when ``blur``.
        """
        import torch

        c = self.cfg
        p = {"crop_box": crop_box(height, width, c["crop_scale"], c["crop_ratio"])}
        p["flip"] = torch.rand(1).item() < c["flip_prob"]
        p["jitter"] = torch.rand(1).item() < c["jitter_prob"]
        if p["jitter"]:
            p["jitter_factors"] = [
                torch.empty(1).uniform_(max(0.0, 1 - s), 1 + s).item()
                for s in (c["brightness"], c["contrast"], c["saturation"])
            ] + [torch.empty(1).uniform_(-c["hue"], c["hue"]).item()]
            p["jitter_order"] = torch.randperm(4).tolist()
        p["grayscale"] = torch.rand(1).item() < c["grayscale_prob"]
        p["blur"] = self.radius > 0 and torch.rand(1).item() < c["blur_prob"]
        if p["blur"]:
            p["blur_sigma"] = torch.empty(1).uniform_(*c["blur_sigma"]).item()
        p["solarize"] = torch.rand(1).item() < c["solarize_prob"]
        return p

    def apply(self, x, p: dict):
        """The view of ``x`` (float ``[3, H, W]`` in [0, 1]) for decisions ``p`` (:meth:`sample`).

        Crop (+ resize), flip, colour jitter, grayscale, blur, solarise, normalise: the order of
        ``ssljax.augment.apply_view``, so that ssljax's own decisions can be replayed here.
        """
        import torch

        top, left, h, w = (int(v) for v in p["crop_box"])
        x = self.resize(x[:, top : top + h, left : left + w])
        if p["flip"]:
            x = x.flip(-1)
        if p["jitter"]:
            x = self.color_jitter(x, p["jitter_factors"], p["jitter_order"])
        if p["grayscale"]:
            x = _gray(x).expand(3, -1, -1)
        if p["blur"]:
            x = gaussian_blur(x, float(p["blur_sigma"]), self.radius)
        if p["solarize"]:
            x = torch.where(x >= 0.5, 1.0 - x, x)
        return (x - self.mean) / self.std

    def resize(self, x):
        """Antialiased bilinear resize to ``output_size`` (torchvision's, PIL's kernel)."""
        import torch.nn.functional as F

        if tuple(x.shape[1:]) == (self.size, self.size):
            return x
        size = (self.size, self.size)
        return F.interpolate(x[None], size, mode="bilinear", antialias=True)[0].clamp(0.0, 1.0)

    def color_jitter(self, x, factors, order):
        """torchvision ``ColorJitter.forward`` for given ``get_params`` (factors, op order).

        Args:
          x: float ``[3, H, W]`` in [0, 1].
          factors: brightness, contrast and saturation factors and the hue shift.
          order: the four operations' order (0 brightness, 1 contrast, 2 saturation, 3 hue).
        """
        c = self.cfg
        for op in order:
            op = int(op)
            if op == 0 and c["brightness"] > 0:
                x = _blend(x, 0.0, factors[0])
            elif op == 1 and c["contrast"] > 0:
                x = _blend(x, _gray(x).mean(), factors[1])
            elif op == 2 and c["saturation"] > 0:
                x = _blend(x, _gray(x), factors[2])
            elif op == 3 and c["hue"] > 0:
                x = adjust_hue(x, factors[3])
        return x


class TwoViewDataset:
    """``(view1, view2, label)`` of image ``i`` (a map-style ``torch.utils.data`` dataset)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transforms):
        self.images, self.labels, self.transforms = images, labels, transforms

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        import torch

        x = torch.from_numpy(self.images[i]).permute(2, 0, 1).float().div_(255.0)
        return (*(t(x) for t in self.transforms), int(self.labels[i]))


def make_loader(dataset, batch: int, *, workers: int, seed: int, pin: bool):
    """A shuffling ``DataLoader`` (a new permutation every epoch, ``drop_last``), seeded."""
    import torch

    generator = torch.Generator()
    generator.manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        generator=generator,
        persistent_workers=workers > 0,
        pin_memory=pin,
        prefetch_factor=4 if workers > 0 else None,
    )


def endless(loader):
    """Batches of ``loader``, epoch after epoch."""
    while True:
        yield from loader


# ----------------------------------------------------------------------------------------------
# Training.
# ----------------------------------------------------------------------------------------------
def normalized_std_x_sqrt_d(z):
    """ssljax's ``proj_std_x_sqrt_d``: mean over dims of the batch std of l2-normalised rows,
    times sqrt(d) (about 1 when healthy, 0 when collapsed; ssljax.diagnostics.normalized_std)."""
    import torch.nn.functional as F

    zn = F.normalize(z.float(), dim=1, eps=1e-12)
    return zn.std(0, unbiased=False).mean() * math.sqrt(z.shape[1])


class Trainer:
    """The train step of ``ssljax.train.make_train_step``, in PyTorch.

    Per step ``k`` (0-based): the target branch (BYOL) forwards each view in train mode under
    ``no_grad``; the online network forwards each view (BatchNorm statistics per view, running
    averages updated once per view); the method's loss; gradients; the optimizer at ``lr(k)``;
    then the EMA ``xi <- tau(k) xi + (1 - tau(k)) theta`` of the updated online backbone and
    projector (parameters only: the target's BatchNorm statistics come from its own forward).
    """

    def __init__(self, config, online, target, *, total_steps: int, warmup_steps: int, autocast):
        self.config, self.online, self.target = config, online, target
        self.total, self.warmup = total_steps, warmup_steps
        self.optimizer = yardstick.ConfigOptimizer(config, online)
        self.autocast = autocast  # a context-manager factory
        if target is not None:
            on = dict(online.named_parameters())
            self.ema_pairs = [(p, on[n]) for n, p in target.named_parameters()]

    def lr(self, k: int) -> float:
        """``ssljax.optim.warmup_cosine_lr`` at step ``k``."""
        return yardstick.warmup_cosine(
            k, self.optimizer.peak, self.warmup, self.total, self.config.optimizer.final_lr
        )

    def tau(self, k: int) -> float:
        """``ssljax.optim.byol_tau_schedule`` at step ``k``."""
        progress = math.cos(math.pi * min(k, self.total) / self.total)
        return 1.0 - (1.0 - self.config.tau_base) * (progress + 1.0) / 2.0

    forward = staticmethod(yardstick.forward)

    def loss_and_grads(self, views):
        """Forward passes, loss and ``.grad`` of every online parameter; returns (loss, outputs)."""
        import torch

        with self.autocast():
            target_out = None
            if self.target is not None:
                with torch.no_grad():
                    target_out = [self.forward(self.target, v) for v in views]
            online_out = [self.forward(self.online, v) for v in views]
            loss = yardstick.torch_loss(self.config.method, self.config, online_out, target_out)
        for p in self.online.parameters():
            p.grad = None
        loss.backward()
        return loss.detach(), online_out

    def optimizer_step(self, k: int) -> None:
        """The online update at ``lr(k)``."""
        self.optimizer.step(self.lr(k))

    def ema_update(self, k: int) -> None:
        """BYOL's target update at ``tau(k)`` (nothing for the other methods)."""
        import torch

        if self.target is None:
            return
        with torch.no_grad():
            t, o = zip(*self.ema_pairs, strict=True)
            torch._foreach_lerp_(list(t), list(o), 1.0 - self.tau(k))

    def step(self, views, k: int):
        """One full step; returns ``(loss, proj_std_x_sqrt_d)`` as tensors (no host sync)."""
        loss, out = self.loss_and_grads(views)
        self.optimizer_step(k)
        self.ema_update(k)
        return loss, normalized_std_x_sqrt_d(out[0]["projection"].detach())


# ----------------------------------------------------------------------------------------------
# Evaluation: features, kNN, linear.
# ----------------------------------------------------------------------------------------------
def extract_features(backbone, images: np.ndarray, mean, std, device, fmt, batch: int = 1000):
    """Eval-mode backbone features of uint8 images ``[N, H, W, 3]`` (normalised only)."""
    import torch

    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    was_training = backbone.training
    backbone.eval()
    feats = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i : i + batch]).to(device).permute(0, 3, 1, 2).float()
            x = ((x / 255.0 - m) / s).contiguous(memory_format=fmt)
            feats.append(backbone(x).float())
    backbone.train(was_training)
    return torch.cat(feats)


def knn_top1(train_x, train_y, test_x, test_y, *, k: int, temperature: float, num_classes: int):
    """Weighted kNN top-1 (Wu et al. 2018): cosine similarity, the ``k`` nearest train rows
    vote for their class with weight ``exp(s / T)`` (ssljax.knn.knn_accuracies)."""
    import torch
    import torch.nn.functional as F

    train_x, test_x = F.normalize(train_x, dim=1), F.normalize(test_x, dim=1)
    k = min(k, len(train_x))
    correct = 0
    chunk = max(1, 2**26 // len(train_x))
    for i in range(0, len(test_x), chunk):
        sim = test_x[i : i + chunk] @ train_x.T
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(top_sim), num_classes, device=sim.device)
        votes.scatter_add_(1, train_y[top_idx], torch.exp(top_sim / temperature))
        correct += int((votes.argmax(1) == test_y[i : i + chunk]).sum())
    return correct / len(test_x)


def calibrated_backbone(backbone, batches, num_batches: int, device, fmt):
    """A copy of ``backbone`` after ``num_batches`` training batches in train mode, no update.

    Both views of each batch go through it, so its BatchNorm running statistics move from
    their initial 0 / 1 as that many steps at learning rate 0 would move them (momentum 0.1 in
    PyTorch's convention, Flax's 0.9): ``ssljax.train.calibrate_batch_stats``.
    """
    import torch

    net = copy.deepcopy(backbone).train()
    with torch.no_grad():
        for _ in range(num_batches):
            v1, v2, _ = next(batches)
            for v in (v1, v2):
                net(v.to(device, non_blocking=True).contiguous(memory_format=fmt))
    return net.eval()


def linear_protocol(train, test, *, num_classes: int, device, seed: int, epochs: int) -> dict:
    """ssljax's ``cifar`` linear protocol (:data:`LINEAR_CIFAR`) on fixed features."""
    import torch
    import torch.nn.functional as F

    cfg = LINEAR_CIFAR
    (xtr, ytr), (xte, yte) = train, test
    torch.manual_seed(seed)
    clf = torch.nn.Linear(xtr.shape[1], num_classes).to(device)  # PyTorch's default init
    batch = min(cfg["batch_size"], len(xtr))
    lr0 = cfg["base_lr"] * batch / 256
    opt = torch.optim.SGD(
        clf.parameters(), lr=lr0, momentum=cfg["momentum"], weight_decay=cfg["weight_decay"]
    )
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    start = time.perf_counter()
    losses = []
    for epoch in range(epochs):
        decays = sum(epoch >= m for m in cfg["lr_decay_epochs"])
        for group in opt.param_groups:
            group["lr"] = lr0 * cfg["lr_decay_factor"] ** decays
        perm = torch.randperm(len(xtr), generator=generator).to(device)
        total = torch.zeros((), device=device)
        for i in range(0, len(xtr), batch):  # the last, short batch is kept
            idx = perm[i : i + batch]
            loss = F.cross_entropy(clf(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        losses.append(float(total) / len(xtr))
    with torch.no_grad():
        top1 = float((clf(xte).argmax(1) == yte).float().mean())
        train_top1 = float((clf(xtr).argmax(1) == ytr).float().mean())
    return {
        "linear_top1": top1,
        "linear_train_top1": train_top1,
        "linear_final_loss": losses[-1],
        "linear_epochs": epochs,
        "linear_seconds": round(time.perf_counter() - start, 1),
    }


# ----------------------------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------------------------
def setup_device(args):
    """The torch device, memory format and autocast factory of ``--device``/``--precision``."""
    import contextlib
    import functools

    import torch

    name = args.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device=cuda but torch.cuda.is_available() is False")
    device = torch.device(name)
    if name == "cuda":
        torch.backends.cudnn.benchmark = True
        tf32 = args.precision == "tf32"
        # float32 means float32: no TF32 in convolutions (cuDNN's default) or matmuls.
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        fmt = torch.channels_last
    else:
        # The yardstick's fastest CPU setting: glibc malloc tuned, channels_last, all cores.
        import _timing

        _timing.apply_mallopt()
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
        fmt = torch.channels_last
    if args.precision == "bf16":
        autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext
    return device, fmt, autocast


def sync(device) -> None:
    """Waits for queued CUDA work, so that a clock read after it measures it."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run(args) -> dict:
    """Trains, evaluates, writes ``--out``; returns the result dict."""
    import torch

    t_start = time.perf_counter()
    config = load_config(args.config, args.override)
    if config.data.image_size != 32 or config.data.get("crop_in_loader", False):
        raise SystemExit("this reference covers 32-pixel image folders (the CIFAR presets)")
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device, fmt, autocast = setup_device(args)
    workers = args.num_workers if args.num_workers >= 0 else max((os.cpu_count() or 2) - 1, 0)

    root = find_data_root(args.data_root, args.archive, config)
    train_images, train_labels = load_split(root, config.data.train_split, workers + 1)
    test_images, test_labels = load_split(root, config.data.eval_split, workers + 1)
    mean, std = channel_stats(train_images)
    num_classes = int(train_labels.max()) + 1
    print(
        f"data {root}: {len(train_images)} train / {len(test_images)} test images, "
        f"mean {np.round(mean, 4).tolist()} std {np.round(std, 4).tolist()} "
        f"({time.perf_counter() - t_start:.1f} s)",
        flush=True,
    )
    steps_per_epoch, total, warmup = schedule_lengths(config, len(train_images))

    online, target, _ = yardstick.build_torch_modules(config, num_classes)
    if args.init_from_ssljax:
        # Loaded over the modules drawn above, so torch's random stream (data order,
        # augmentations) is the one this seed gives without the flag: a pair of runs with and
        # without it differs in its initial weights only.
        t0 = time.perf_counter()
        # In a spawned process: JAX's runtime threads must not exist in this one when the
        # DataLoader forks its workers.
        import concurrent.futures
        import multiprocessing

        with concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            state = pool.submit(
                ssljax_initial_state_dict_of,
                args.config,
                args.override,
                args.seed,
                image_shape=train_images.shape[1:],
                num_classes=num_classes,
                num_train_examples=len(train_images),
            ).result()
        tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
        online.load_state_dict(tensors)  # strict: every tensor of the online network, once
        if target is not None:
            target.load_state_dict(
                {k: v for k, v in tensors.items() if not k.startswith("predictor.")}
            )
        print(
            f"initial weights: ssljax's for seed {args.seed} ({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
    online.to(device, memory_format=fmt).train()
    if target is not None:
        target.to(device, memory_format=fmt).train()
    trainer = Trainer(
        config, online, target, total_steps=total, warmup_steps=warmup, autocast=autocast
    )
    views = [ViewTransform(v, 32, mean, std) for v in (config.augment.view1, config.augment.view2)]
    dataset = TwoViewDataset(train_images, train_labels, views)
    pin = device.type == "cuda"
    if args.inputs_from_ssljax:
        batches = None  # ssljax's, created after the calibration loader's workers (below)
    else:
        batches = endless(
            make_loader(dataset, config.global_batch, workers=workers, seed=args.seed, pin=pin)
        )

    # kNN sets: all images, or a fixed random subset for dry runs.
    knn_train, knn_test = (train_images, train_labels), (test_images, test_labels)
    if args.knn_subset:
        pick = np.random.default_rng(0)
        i = np.sort(pick.permutation(len(train_images))[: args.knn_subset])
        j = np.sort(pick.permutation(len(test_images))[: max(args.knn_subset // 5, 1)])
        knn_train, knn_test = (train_images[i], train_labels[i]), (test_images[j], test_labels[j])
    ytr = torch.from_numpy(knn_train[1]).to(device)
    yte = torch.from_numpy(knn_test[1]).to(device)

    def features(backbone):
        return (
            extract_features(backbone, knn_train[0], mean, std, device, fmt),
            extract_features(backbone, knn_test[0], mean, std, device, fmt),
        )

    def knn(feats) -> float:
        return knn_top1(
            feats[0],
            ytr,
            feats[1],
            yte,
            k=config.knn.k,
            temperature=config.knn.temperature,
            num_classes=num_classes,
        )

    result: dict = {
        "script": "benchmarks/torch_reference.py",
        "method": config.method,
        "config": args.config,
        "overrides": args.override,
        "seed": args.seed,
        "initial_weights": "ssljax" if args.init_from_ssljax else "torch",
        "inputs": "ssljax" if args.inputs_from_ssljax else "torch",
        "device": str(device)
        + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
        "torch": torch.__version__,
        "precision": args.precision,
        "threads": torch.get_num_threads(),
        "num_workers": workers,
        "global_batch": config.global_batch,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total,
        "warmup_steps": warmup,
        "epochs": round(total / steps_per_epoch, 4),
        "peak_lr": trainer.optimizer.peak,
        "params": sum(p.numel() for p in online.parameters()),
        "data_mean": mean,
        "data_std": std,
        "knn_train_size": len(knn_train[0]),
        "knn_test_size": len(knn_test[0]),
        "knn_k": int(min(config.knn.k, len(knn_train[0]))),
        "knn_temperature": config.knn.temperature,
    }
    if not args.skip_knn_init:
        # ssljax's knn.bn_calibration_batches (recipes branch; 0 there means the raw figure is
        # ssljax's knn_top1_init); both figures are measured here whatever it says.
        config_calib = int(config.knn.get("bn_calibration_batches", 0))
        calib = args.calib_batches if args.calib_batches >= 0 else (config_calib or 50)
        t0 = time.perf_counter()
        raw = knn(features(online["backbone"]))
        # Its own loader and seed, so the training stream is the same with or without it.
        calib_loader = make_loader(
            dataset, config.global_batch, workers=workers, seed=args.seed + 1, pin=pin
        )
        calib_batches = endless(calib_loader)
        calibrated = knn(
            features(calibrated_backbone(online["backbone"], calib_batches, calib, device, fmt))
        )
        del calib_batches, calib_loader  # ends its worker processes
        result.update(
            knn_top1_init_bn_as_initialised=raw,
            knn_top1_init_bn_calibrated=calibrated,
            knn_init_bn_calibration_batches=calib,
            # The figure ssljax's knn_top1_init holds under this config.
            knn_top1_init=calibrated if config_calib > 0 else raw,
        )
        print(
            f"kNN at initialisation: {100 * raw:.2f}% (BN statistics as initialised), "
            f"{100 * calibrated:.2f}% (BN statistics from {calib} training batches) in "
            f"{time.perf_counter() - t0:.1f} s",
            flush=True,
        )

    log_every = args.log_every or config.log_every_steps
    print(
        f"{config.method}: {total} steps ({result['epochs']} epochs of {steps_per_epoch}), "
        f"warm-up {warmup}, batch {config.global_batch}, peak lr {trainer.optimizer.peak:g}, "
        f"{result['params']:,} parameters, {device}, {workers} loader workers",
        flush=True,
    )
    curve = {"step": [], "loss": [], "proj_std_x_sqrt_d": [], "lr": [], "tau": []}
    pending = []
    if args.inputs_from_ssljax:
        import ssljax_inputs

        t0 = time.perf_counter()
        config.seed = args.seed
        batches = ssljax_inputs.SsljaxInputs(config)
        if (batches.num_train, batches.steps_per_epoch) != (len(train_images), steps_per_epoch):
            raise SystemExit(
                f"ssljax's dataset ({batches.num_train} train examples, "
                f"{batches.steps_per_epoch} steps/epoch) is not --data_root's "
                f"({len(train_images)}, {steps_per_epoch}): pass the ssljax run's data.root and "
                "data.data_dir with --override"
            )
        print(
            f"inputs: ssljax's loader and augmentation for seed {args.seed} "
            f"({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
    # The first batch is fetched before the clock starts: starting the loader's worker
    # processes is not training time.
    first = next(batches)
    sync(device)
    t_train = time.perf_counter()
    t_log, images_since = t_train, 0
    for k in range(total):
        v1, v2, _ = first if k == 0 else next(batches)
        v1 = v1.to(device, non_blocking=True).contiguous(memory_format=fmt)
        v2 = v2.to(device, non_blocking=True).contiguous(memory_format=fmt)
        loss, proj_std = trainer.step((v1, v2), k)
        pending.append((k + 1, loss, proj_std, trainer.lr(k), trainer.tau(k)))
        images_since += config.global_batch
        if (k + 1) % log_every == 0 or k + 1 == total:
            sync(device)
            now = time.perf_counter()
            for step, lo, ps, lr, tau in pending:
                curve["step"].append(step)
                curve["loss"].append(float(lo))
                curve["proj_std_x_sqrt_d"].append(float(ps))
                curve["lr"].append(lr)
                curve["tau"].append(tau if target is not None else None)
            pending = []
            if not math.isfinite(curve["loss"][-1]):
                raise FloatingPointError(f"non-finite loss at step {k + 1}; stopping")
            print(
                f"step {k + 1}/{total} (epoch {(k + 1) / steps_per_epoch:.2f}): loss "
                f"{curve['loss'][-1]:.4f}, proj_std_x_sqrt_d {curve['proj_std_x_sqrt_d'][-1]:.3f},"
                f" lr {curve['lr'][-1]:.4g}, {images_since / (now - t_log):.0f} img/s",
                flush=True,
            )
            t_log, images_since = now, 0
    sync(device)
    train_s = time.perf_counter() - t_train
    result.update(
        steps=total,
        train_seconds=round(train_s, 1),
        images_per_sec=round(total * config.global_batch / train_s, 1),
        curve=curve,
    )
    print(f"trained in {train_s:.1f} s ({result['images_per_sec']:.0f} img/s)", flush=True)

    t0 = time.perf_counter()
    feats = features(online["backbone"])
    result["knn_top1"] = knn(feats)
    print(
        f"kNN at the end: {100 * result['knn_top1']:.2f}% ({time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    if "knn_top1_init" in result:
        result["knn_gain_over_init"] = result["knn_top1"] - result["knn_top1_init"]
        result["knn_gain_over_init_bn_as_initialised"] = (
            result["knn_top1"] - result["knn_top1_init_bn_as_initialised"]
        )
        result["knn_gain_over_init_bn_calibrated"] = (
            result["knn_top1"] - result["knn_top1_init_bn_calibrated"]
        )
    if args.linear:
        lin = linear_protocol(
            (feats[0], ytr),
            (feats[1], yte),
            num_classes=num_classes,
            device=device,
            seed=args.seed,
            epochs=args.linear_epochs or LINEAR_CIFAR["epochs"],
        )
        result.update(lin)
        print(
            f"linear top-1 {100 * lin['linear_top1']:.2f}% (train "
            f"{100 * lin['linear_train_top1']:.2f}%, {lin['linear_epochs']} epochs, "
            f"{lin['linear_seconds']} s)",
            flush=True,
        )
    result["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    if args.out:
        out = pathlib.Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out}", flush=True)
    return result


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="configs/<method>.py:<preset>")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="key=value on the config, repeatable (e.g. num_epochs=1.25)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--precision",
        default="float32",
        choices=("float32", "tf32", "bf16"),
        help="CUDA: tf32 allows TF32 matmuls/convolutions; bf16 autocasts the forward passes",
    )
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    parser.add_argument(
        "--num_workers", type=int, default=-1, help="DataLoader workers (-1: cores - 1)"
    )
    parser.add_argument("--data_root", help="folder with train/<class>/*.jpg and test/...")
    parser.add_argument("--archive", help=f"cifar10-jpg.tar.gz (default {DEFAULT_ARCHIVE})")
    parser.add_argument(
        "--knn_subset",
        type=int,
        default=0,
        help="kNN on this many train images and a fifth as many test images (0: all)",
    )
    parser.add_argument(
        "--calib_batches",
        type=int,
        default=-1,
        help="training batches for the BN-calibrated kNN at initialisation "
        "(-1: config.knn.bn_calibration_batches, or 50 when the config has none or 0)",
    )
    parser.add_argument(
        "--init_from_ssljax",
        action="store_true",
        help="start from the initial weights ssljax.main draws for this config with "
        "config.seed=SEED; data order and augmentations stay those of torch's --seed",
    )
    parser.add_argument(
        "--inputs_from_ssljax",
        action="store_true",
        help="train on the views ssljax.main trains on for config.seed=SEED (its loader and "
        "augmentation, benchmarks/ssljax_inputs.py); pass the ssljax run's data.root and "
        "data.data_dir with --override",
    )
    parser.add_argument("--skip_knn_init", action="store_true")
    parser.add_argument("--linear", action="store_true", help="also run the linear protocol")
    parser.add_argument("--linear_epochs", type=int, default=0, help="0: the preset's 100")
    parser.add_argument("--log_every", type=int, default=0, help="0: config.log_every_steps")
    parser.add_argument("--out", help="result JSON")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
