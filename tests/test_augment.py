"""Tests of ssljax.augment against independent references (PIL, colorsys, SciPy, NumPy).

Colour operations are compared with PIL/colorsys on real CIFAR-10 images; the crop sampler
with a NumPy transcription of torchvision's ``RandomResizedCrop.get_params``; the composed,
vectorised pipeline with a sequential per-example composition of the (separately tested)
operations, driven by the exposed random parameters.
"""

import colorsys
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps
from scipy import ndimage

from ssljax import augment

P = jax.sharding.PartitionSpec

PIL_TOL = 2.0 / 255.0  # PIL works on uint8 and truncates/rounds each result.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.247, 0.243, 0.261)
N_MC = 4096


@pytest.fixture(scope="module")
def cifar_u8(cifar10_dir):
    """32 real CIFAR-10 test images (uint8 [32, 32, 32, 3]), spread over the 10 classes."""
    files = sorted((cifar10_dir / "test").glob("*/*.jpg"))[::311][:32]
    assert len(files) == 32
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


def _pil_map(images_u8, fn):
    return np.stack([np.asarray(fn(Image.fromarray(im)), np.float32) / 255.0 for im in images_u8])


def _ours(op, images_u8, *args):
    x = jnp.asarray(images_u8, jnp.float32) / 255.0
    return np.asarray(jax.vmap(lambda im: op(im, *args))(x))


# ------------------------------------------------------------------------------------------
# Single operations vs PIL / colorsys / SciPy.
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [0.6, 1.4])
@pytest.mark.parametrize(
    "op, enhancer",
    [
        (augment.adjust_brightness, ImageEnhance.Brightness),
        (augment.adjust_contrast, ImageEnhance.Contrast),
        (augment.adjust_saturation, ImageEnhance.Color),
    ],
)
def test_blend_ops_match_pil(cifar_u8, op, enhancer, factor):
    ours = _ours(op, cifar_u8, factor)
    ref = _pil_map(cifar_u8, lambda im: enhancer(im).enhance(factor))
    assert np.abs(ours - ref).max() <= PIL_TOL
    # The test must be able to fail: the operation changes the images by much more than TOL.
    assert np.abs(ref - cifar_u8 / 255.0).max() > 10 * PIL_TOL


@pytest.mark.parametrize("delta", [-0.1, 0.037, 0.5])
def test_hue_matches_colorsys(cifar_u8, delta):
    x = cifar_u8[:8].astype(np.float64) / 255.0

    def rotate(r, g, b):
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        return colorsys.hsv_to_rgb((h + delta) % 1.0, s, v)

    ref = np.array([rotate(*px) for px in x.reshape(-1, 3)]).reshape(x.shape)
    ours = _ours(augment.adjust_hue, cifar_u8[:8], delta)
    assert np.abs(ours - ref).max() < 1e-5
    assert np.abs(ref - x).max() > 0.05


def test_hue_zero_is_identity_and_handles_grey(cifar_u8):
    x = jnp.asarray(cifar_u8[:4], jnp.float32) / 255.0
    np.testing.assert_allclose(jax.vmap(augment.adjust_hue, (0, None))(x, 0.0), x, atol=1e-6)
    grey = jnp.full((4, 4, 3), 0.3)
    np.testing.assert_allclose(augment.adjust_hue(grey, 0.25), grey, atol=1e-7)


def test_grayscale_matches_pil(cifar_u8):
    ours = _ours(augment.to_grayscale, cifar_u8)
    ref = _pil_map(cifar_u8, lambda im: im.convert("L").convert("RGB"))
    # PIL rounds L to an integer: at most half a level apart.
    assert np.abs(ours - ref).max() <= 0.5 / 255.0 + 1e-6
    assert np.all(ours[..., 0] == ours[..., 2])


def test_solarize_matches_pil(cifar_u8):
    ours = _ours(augment.solarize, cifar_u8)
    ref = _pil_map(cifar_u8, lambda im: ImageOps.solarize(im, threshold=128))
    np.testing.assert_allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize(
    "sigma, width, radius", [(0.4, 32, 3), (1.7, 32, 3), (1.1, 20, 5), (0.9, 32, 1), (2.0, 20, 2)]
)
def test_blur_matches_scipy(cifar_u8, sigma, width, radius):
    images = np.ascontiguousarray(cifar_u8[:8, :, :width])
    x = images.astype(np.float64) / 255.0
    # SciPy's 'mirror' is PyTorch's/NumPy's 'reflect' (edge pixel not repeated).
    ref = ndimage.gaussian_filter1d(x, sigma, axis=1, mode="mirror", radius=radius)
    ref = ndimage.gaussian_filter1d(ref, sigma, axis=2, mode="mirror", radius=radius)
    ours = _ours(augment.gaussian_blur, images, sigma, radius)
    assert np.abs(ours - ref).max() < 1e-5
    assert np.abs(ref - x).max() > 0.05


def test_blur_kernel_size_follows_byol():
    # BYOL: kernel = size / 10, made odd: 23 at 224, 3 at 32, 9 at 96.
    assert [2 * augment.blur_radius(s) + 1 for s in (224, 32, 96, 19)] == [23, 3, 9, 1]


@pytest.mark.parametrize(
    "box, size",
    [((3, 5, 17, 20), 32), ((0, 0, 32, 32), 16), ((4, 2, 25, 13), 24), ((7, 9, 11, 23), 8)],
)
def test_resized_crop_matches_pil(cifar_u8, box, size):
    top, left, h, w = box
    ref = _pil_map(
        cifar_u8[:8],
        lambda im: im.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR),
    )
    ours = _ours(lambda im: augment.resized_crop(im, jnp.array(box), size), cifar_u8[:8])
    assert np.abs(ours - ref).max() <= PIL_TOL
    flipped = _ours(
        lambda im: augment.resized_crop(im, jnp.array(box), size, flip=True), cifar_u8[:8]
    )
    np.testing.assert_allclose(flipped, ours[:, :, ::-1], atol=1e-6)


# ------------------------------------------------------------------------------------------
# Random parameters: crop boxes and probabilities.
# ------------------------------------------------------------------------------------------


def _np_rrc_boxes(rng, n, height, width, scale, ratio):
    """torchvision RandomResizedCrop.get_params, transcribed one sample at a time."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    boxes = np.empty((n, 4), np.int64)
    for k in range(n):
        for _ in range(10):
            target = area * rng.uniform(scale[0], scale[1])
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                boxes[k] = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w
                break
        else:
            in_ratio = width / height
            if in_ratio < min(ratio):
                w, h = width, int(round(width / min(ratio)))
            elif in_ratio > max(ratio):
                h, w = height, int(round(height * max(ratio)))
            else:
                w, h = width, height
            boxes[k] = (height - h) // 2, (width - w) // 2, h, w
    return boxes


def _within_4se(a, b):
    """Means of two independent samples agree within 4 standard errors."""
    se = math.sqrt(a.var() / a.size + b.var() / b.size)
    return abs(a.mean() - b.mean()) <= 4 * se, (a.mean(), b.mean(), se)


@pytest.mark.parametrize("hw, scale", [((32, 32), (0.08, 1.0)), ((24, 40), (0.2, 0.9))])
def test_crop_boxes_bounds_and_distribution(hw, scale):
    height, width = hw
    ratio = (3 / 4, 4 / 3)
    cfg = dict(crop_scale=scale, crop_ratio=ratio)
    p = augment.sample_view_params(jax.random.key(0), N_MC, cfg, image_hw=hw)
    top, left, h, w = np.asarray(p["crop_box"], np.float64).T
    assert np.all((h >= 1) & (w >= 1) & (top >= 0) & (left >= 0))
    assert np.all((top + h <= height) & (left + w <= width))
    # Rounding-aware bounds: w = round(sqrt(A s r)), h = round(sqrt(A s / r)) for some
    # s in scale and r in ratio, unless the box is torchvision's central fallback.
    area = height * width
    ok = (
        ((w + 0.5) * (h + 0.5) >= area * scale[0])
        & ((w - 0.5) * (h - 0.5) <= area * scale[1])
        & ((w + 0.5) / (h - 0.5) >= ratio[0])
        & ((w - 0.5) / (h + 0.5) <= ratio[1])
    )
    fallback = np.all(
        np.stack([top, left, h, w], 1) == augment.central_crop_box(height, width, ratio), 1
    )
    assert np.all(ok | fallback)
    # Monte Carlo against the NumPy transcription of torchvision's rule.
    ref = _np_rrc_boxes(np.random.default_rng(0), 40_000, height, width, scale, ratio)
    stats = {
        "area": (h * w / area, ref[:, 2] * ref[:, 3] / area),
        "log_ratio": (np.log(w / h), np.log(ref[:, 3] / ref[:, 2])),
        "height": (h, ref[:, 2].astype(np.float64)),
        "top_rel": ((top + 0.5) / (height - h + 1), (ref[:, 0] + 0.5) / (height - ref[:, 2] + 1)),
    }
    for name, (ours, theirs) in stats.items():
        agree, detail = _within_4se(ours, theirs)
        assert agree, (name, detail)


def test_crop_falls_back_to_central_crop():
    # A 8x256 strip admits no box with ratio <= 4/3 and scale >= 0.08: always the fallback,
    # the central crop of ratio clamped to 4/3 (h = 8, w = round(10.67) = 11).
    p = augment.sample_view_params(jax.random.key(1), 64, {}, image_hw=(8, 256))
    np.testing.assert_array_equal(p["crop_box"], np.tile([0, 122, 8, 11], (64, 1)))
    assert augment.central_crop_box(8, 256, (3 / 4, 4 / 3)) == (0, 122, 8, 11)
    assert augment.central_crop_box(256, 8, (3 / 4, 4 / 3)) == (122, 0, 11, 8)


def _assert_rate(flags, p, what):
    rate = float(np.mean(flags))
    se = math.sqrt(p * (1 - p) / flags.size)
    assert abs(rate - p) <= 4 * se, (what, rate, p, se)


@pytest.mark.parametrize("view", [0, 1])
def test_probabilities_and_jitter_factors(view):
    cfg = augment.byol_views()[view]
    p = augment.sample_view_params(jax.random.key(7), N_MC, cfg, image_hw=(32, 32))
    p = jax.tree.map(np.asarray, p)
    for key in ("flip", "jitter", "grayscale", "blur", "solarize"):
        _assert_rate(p[key], cfg[f"{key}_prob"], key)
    # Factors ~ U[1 - x, 1 + x] (hue ~ U[-h, h]): range and mean within 4 standard errors.
    f = p["jitter_factors"]
    for i, name in enumerate(("brightness", "contrast", "saturation", "hue")):
        x = cfg[name]
        lo, hi = (-x, x) if name == "hue" else (max(0.0, 1 - x), 1 + x)
        assert f[:, i].min() >= lo and f[:, i].max() <= hi
        se = (hi - lo) / math.sqrt(12 * N_MC)
        assert abs(f[:, i].mean() - (lo + hi) / 2) <= 4 * se, name
    lo, hi = cfg["blur_sigma"]
    assert p["blur_sigma"].min() >= lo and p["blur_sigma"].max() <= hi
    # Orders are permutations; each op is equally likely at each position.
    np.testing.assert_array_equal(np.sort(p["jitter_order"], 1), np.tile(np.arange(4), (N_MC, 1)))
    for t in range(4):
        for op in range(4):
            _assert_rate(p["jitter_order"][:, t] == op, 0.25, f"order[{t}] == {op}")


def test_views_and_examples_get_independent_keys():
    fn = augment.build_augment(augment.byol_views(), output_size=32, mean=MEAN, std=STD)
    images = jnp.zeros((N_MC, 8, 8, 3), jnp.uint8)
    _, (p1, p2) = jax.eval_shape(
        functools.partial(fn, return_params=True), jax.random.key(0), images
    )
    assert p1["flip"].shape == (N_MC,)
    # Same key derivation as fn: view v uses fold_in(rng, v).
    rng = jax.random.key(3)
    q1, q2 = (
        augment.sample_view_params(jax.random.fold_in(rng, v), N_MC, c, image_hw=(8, 8))
        for v, c in enumerate(augment.byol_views())
    )
    _assert_rate(np.asarray(q1["flip"] == q2["flip"]), 0.5, "flip agreement between views")
    _assert_rate(np.asarray(q1["flip"][1:] == q1["flip"][:-1]), 0.5, "flip agreement neighbours")


# ------------------------------------------------------------------------------------------
# The composed pipeline.
# ------------------------------------------------------------------------------------------

MIXED = dict(
    flip_prob=0.5,
    jitter_prob=0.5,
    grayscale_prob=0.5,
    blur_prob=0.5,
    solarize_prob=0.5,
    brightness=0.8,
    contrast=0.8,
    saturation=0.8,
    hue=0.2,
)


@pytest.fixture(scope="module")
def mixed_fn():
    fn = augment.build_augment(
        [MIXED, dict(MIXED, crop_scale=(0.3, 0.6))], output_size=24, mean=MEAN, std=STD
    )
    return jax.jit(functools.partial(fn, return_params=True))


def _sequential_reference(image_u8, p, output_size):
    """One example, one view: the documented order, with plain Python control flow."""
    x = jnp.asarray(image_u8, jnp.float32) / 255.0
    x = augment.resized_crop(x, p["crop_box"], output_size)
    if p["flip"]:
        x = x[:, ::-1]
    if p["jitter"]:
        ops = [
            augment.adjust_brightness,
            augment.adjust_contrast,
            augment.adjust_saturation,
            augment.adjust_hue,
        ]
        for op in p["jitter_order"]:
            x = ops[op](x, p["jitter_factors"][op])
    if p["grayscale"]:
        x = augment.to_grayscale(x)
    if p["blur"]:
        x = augment.gaussian_blur(x, p["blur_sigma"], augment.blur_radius(output_size))
    if p["solarize"]:
        x = augment.solarize(x)
    return (np.asarray(x) - np.array(MEAN)) / np.array(STD)


def test_pipeline_matches_sequential_composition(cifar_u8, mixed_fn):
    views, params = mixed_fn(jax.random.key(11), cifar_u8)
    for view, p in zip(views, params, strict=True):
        p = jax.tree.map(np.asarray, p)
        assert 0 < p["jitter"].sum() < len(cifar_u8)
        assert len({tuple(o) for o in p["jitter_order"][p["jitter"]]}) > 3
        for i in range(len(cifar_u8)):
            ref = _sequential_reference(cifar_u8[i], jax.tree.map(lambda a, i=i: a[i], p), 24)
            np.testing.assert_allclose(view[i], ref, atol=2e-5, err_msg=f"example {i}")


def test_switch_jitter_equals_hue_once(cifar_u8):
    cfg = dict(MIXED, jitter_prob=1.0)
    x = jnp.asarray(cifar_u8[:16], jnp.float32) / 255.0
    p = augment.sample_view_params(jax.random.key(5), 16, cfg, image_hw=(32, 32))
    a, b = (
        augment.apply_view(x, p, cfg, output_size=32, mean=MEAN, std=STD, jitter_impl=impl)
        for impl in ("hue_once", "switch")
    )
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_determinism_dtype_shape_range(cifar_u8, mixed_fn):
    (v1, v2), _ = mixed_fn(jax.random.key(0), cifar_u8)
    (w1, _), _ = mixed_fn(jax.random.key(0), cifar_u8)
    (u1, _), _ = mixed_fn(jax.random.key(1), cifar_u8)
    np.testing.assert_array_equal(v1, w1)
    assert not np.allclose(v1, u1)
    assert not np.allclose(v1, v2)
    for v in (v1, v2):
        assert v.dtype == jnp.float32 and v.shape == (32, 24, 24, 3)
        pixels = np.asarray(v) * np.array(STD) + np.array(MEAN)
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    # Float input in [0, 1] gives the same views as uint8.
    (f1, f2), _ = mixed_fn(jax.random.key(0), jnp.asarray(cifar_u8, jnp.float32) / 255.0)
    np.testing.assert_allclose(f1, v1, atol=1e-5)
    np.testing.assert_allclose(f2, v2, atol=1e-5)


def test_sharded_equals_unsharded(cifar_u8):
    # View 2 always jitters: the composition of jitter ops is where fusion differences bite.
    views = [augment.byol_views()[1], dict(augment.byol_views()[0], jitter_prob=1.0)]
    fn = augment.build_augment(views, output_size=32, mean=MEAN, std=STD)
    fn = jax.jit(functools.partial(fn, return_params=True))
    rng = jax.random.key(4)
    images = jnp.asarray(cifar_u8[:16])
    expected, expected_params = fn(rng, images)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    assert mesh.size == 8
    sharded = jax.device_put(images, jax.sharding.NamedSharding(mesh, P("data")))
    got, got_params = fn(rng, sharded)
    assert len(got[0].sharding.device_set) == 8
    # Every random decision is identical; pixels agree to float32 reassociation (XLA fuses
    # the per-device programs differently), a few 1e-7 on the [0, 1] scale.
    jax.tree.map(np.testing.assert_array_equal, got_params, expected_params)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_constant_images_stay_finite(mixed_fn):
    # Uniform images: contrast's and saturation's blend targets equal the image, and hue has
    # zero chroma (0/0 guarded). 32 examples so the compiled mixed_fn is reused.
    levels = np.array([0, 255, 128, 77, 1, 254, 200, 30], np.uint8)
    images = np.broadcast_to(np.repeat(levels, 4)[:, None, None, None], (32, 32, 32, 3))
    views, params = mixed_fn(jax.random.key(0), images)
    assert np.asarray(params[0]["jitter"]).any()
    for view in views:
        assert np.all(np.isfinite(view))
        pixels = np.asarray(view) * np.array(STD) + np.array(MEAN)
        # Only brightness (and solarise) change a grey level; the image stays uniform.
        np.testing.assert_allclose(pixels, pixels[:, :1, :1, :1] + 0 * pixels, atol=1e-5)
    grey = jnp.full((8, 8, 3), 0.3)
    for op in (augment.adjust_contrast, augment.adjust_saturation, augment.adjust_hue):
        np.testing.assert_allclose(op(grey, 0.4), grey, atol=1e-6)
    black = jnp.zeros((8, 8, 3))
    for op in (
        augment.adjust_contrast,
        augment.adjust_saturation,
        augment.adjust_hue,
        augment.adjust_brightness,
    ):
        assert np.all(op(black, 1.3) == 0.0)


def test_crop_false_uses_loader_crops(cifar_u8):
    cfg = dict(flip_prob=0.5, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)
    fn = augment.build_augment([cfg, cfg], output_size=32, mean=MEAN, std=STD, crop=False)
    images = np.stack([cifar_u8[:8], cifar_u8[8:16]], axis=1)  # [B, V, S, S, 3]
    views, params = fn(jax.random.key(2), images, return_params=True)
    for v in range(2):
        flip = np.asarray(params[v]["flip"])
        assert 0 < flip.sum() < 8
        x = images[:, v] / 255.0
        expected = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        np.testing.assert_allclose(views[v], (expected - MEAN) / np.array(STD), atol=1e-5)
    # Loader crops of another size are resized to output_size.
    fn16 = augment.build_augment([cfg, cfg], output_size=16, mean=MEAN, std=STD, crop=False)
    assert fn16(jax.random.key(2), images)[0].shape == (8, 16, 16, 3)


def test_preprocess_eval(cifar_u8):
    x = augment.preprocess_eval(cifar_u8[:4], output_size=32, mean=MEAN, std=STD)
    np.testing.assert_allclose(x, (cifar_u8[:4] / 255.0 - MEAN) / np.array(STD), atol=1e-6)
    big = np.asarray(
        [np.asarray(Image.fromarray(im).resize((48, 40), Image.NEAREST)) for im in cifar_u8[:4]]
    )
    out = augment.preprocess_eval(big, output_size=24, mean=MEAN, std=STD)
    side = round(40 * 0.875)  # 35: central crop of the shorter side
    top, left = (40 - side) // 2, (48 - side) // 2
    ref = _pil_map(
        big,
        lambda im: im.crop((left, top, left + side, top + side)).resize((24, 24), Image.BILINEAR),
    )
    pixels = np.asarray(out) * np.array(STD) + np.array(MEAN)
    assert np.abs(pixels - ref).max() <= PIL_TOL


# ------------------------------------------------------------------------------------------
# Presets and bad input.
# ------------------------------------------------------------------------------------------


def test_presets():
    b1, b2 = augment.byol_views()
    assert (b1["blur_prob"], b1["solarize_prob"], b2["blur_prob"], b2["solarize_prob"]) == (
        1.0,
        0.0,
        0.1,
        0.2,
    )
    s1, s2 = augment.simsiam_views()
    assert s1 == s2 and s1["blur_prob"] == 0.5 and s1["solarize_prob"] == 0.0
    assert s1["crop_scale"] == (0.2, 1.0) and s1["saturation"] == 0.4
    c1, c2 = augment.cifar_views()
    assert c1["blur_prob"] == c2["blur_prob"] == 0.0
    assert (c1["solarize_prob"], c2["solarize_prob"]) == (0.0, 0.2)
    for name, preset in augment.VIEW_PRESETS.items():
        views = preset()
        assert len(views) == 2, name
        for v in views:
            assert augment.validate_view_config(v) == v
    b1["blur_prob"] = 0.0  # presets hand out fresh dicts
    assert augment.byol_views()[0]["blur_prob"] == 1.0


def test_config_dict_accepted():
    ml_collections = pytest.importorskip("ml_collections")
    cfg = ml_collections.ConfigDict(augment.byol_views()[1])
    assert augment.validate_view_config(cfg) == augment.byol_views()[1]
    frozen = ml_collections.FrozenConfigDict(cfg)
    assert augment.validate_view_config(frozen)["solarize_prob"] == 0.2


@pytest.mark.parametrize(
    "bad, key",
    [
        ({"blur_prob": 1.5}, "blur_prob"),
        ({"flip_prob": -0.1}, "flip_prob"),
        ({"solarize_prob": float("nan")}, "solarize_prob"),
        ({"crop_scale": (0.9, 0.1)}, "crop_scale"),
        ({"crop_scale": (0.1, 1.5)}, "crop_scale"),
        ({"crop_ratio": (4 / 3, 3 / 4)}, "crop_ratio"),
        ({"blur_sigma": (2.0, 0.1)}, "blur_sigma"),
        ({"blur_sigma": 1.0}, "blur_sigma"),
        ({"hue": 0.7}, "hue"),
        ({"brightness": -0.4}, "brightness"),
        ({"solarise_prob": 0.2}, "solarise_prob"),
    ],
)
def test_bad_configs_raise_at_build(bad, key):
    with pytest.raises(ValueError, match=key):
        augment.build_augment([{}, bad], output_size=32, mean=MEAN, std=STD)


def test_bad_build_arguments_raise():
    with pytest.raises(ValueError, match="list of view configs"):
        augment.build_augment(augment.byol_views()[0], output_size=32, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="output_size"):
        augment.build_augment([{}], output_size=0, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="255"):
        augment.build_augment([{}], output_size=32, mean=(125.3, 123.0, 113.9), std=(63.0,) * 3)
    with pytest.raises(ValueError, match="std"):
        augment.build_augment([{}], output_size=32, mean=MEAN, std=(0.2, 0.0, 0.2))


@pytest.mark.parametrize(
    "shape, dtype, crop, match",
    [
        ((32, 32, 3), jnp.uint8, True, "batch, height, width, 3"),
        ((4, 32, 32, 1), jnp.uint8, True, "jnp.repeat"),
        ((4, 32, 32, 4), jnp.float32, True, "3 \\(RGB\\) channels"),
        ((4, 32, 32, 3), jnp.int32, True, "dtype"),
        ((4, 32, 32, 3), jnp.uint8, False, "crop=False"),
        ((4, 3, 32, 32, 3), jnp.uint8, False, "2 view configs"),
    ],
)
def test_bad_images_raise_at_trace(shape, dtype, crop, match):
    fn = augment.build_augment(augment.byol_views(), output_size=32, mean=MEAN, std=STD, crop=crop)
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(fn, jax.random.key(0), jax.ShapeDtypeStruct(shape, dtype))
