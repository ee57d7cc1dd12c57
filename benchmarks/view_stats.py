"""Do ssljax's views and the PyTorch reference's views follow the same distribution?

    python benchmarks/view_stats.py --config configs/simsiam.py:cifar10_cpu --root CIFAR_FOLDER
    python benchmarks/view_stats.py ... --zero jitter_prob,grayscale_prob,blur_prob  # crops only

The equal-budget comparison (issue 23) wants the two implementations to differ only in their
random streams. ``tests/test_torch_reference.py`` checks each operation of the two pipelines
against the other on fixed parameters; this script checks the composition and the random
draws: the same ``--images`` training images go through ``ssljax.augment.build_augment`` (the
train step's on-device pipeline) and through ``benchmarks/torch_reference.ViewTransform`` (the
reference's DataLoader pipeline), two views each, ``--repeats`` times with fresh randomness;
statistics of the views are averaged per repeat and compared: the mean over repeats on each
side, its spread, the difference and the difference in standard errors (z). A mechanism that
differs (a probability, a factor range, an order, a clip) moves a statistic by many standard
errors; the random streams alone leave |z| at about 1.

Statistics (views mapped back to [0, 1]): pixel mean and std; per-image std; saturation
(max - min over channels); the share of grey views; high-frequency energy (squared differences
of neighbouring pixels: blur and upsampling lower it); and between the two views of an image,
the mean squared distance and the cosine similarity of the normalised views (how different
the pair the loss sees is).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import random
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch_reference  # noqa: E402 -- the reference's pipeline, beside this script

# Both sides normalise with the same constants; the statistics are taken after undoing it.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def _z(diff: float, se: float) -> float:
    """``diff`` in standard errors; NaN where ``se`` is unknown (one repeat)."""
    if math.isnan(se):
        return float("nan")
    return diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))


def view_statistics(v1: np.ndarray, v2: np.ndarray) -> dict[str, float]:
    """Statistics of two batches of normalised views ``[N, S, S, 3]`` of the same N images.

    Args:
      v1: first views, normalised with ``MEAN``/``STD``.
      v2: second views of the same images, in the same order.

    Returns:
      ``{name: value}``, each averaged over the images (see the module docstring).
    """
    n = len(v1)
    a, b = v1.reshape(n, -1), v2.reshape(n, -1)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    x = np.concatenate([v1, v2]) * np.asarray(STD) + np.asarray(MEAN)
    sat = x.max(-1) - x.min(-1)
    high_freq = (np.diff(x, axis=1) ** 2).mean(axis=(1, 2, 3)) + (np.diff(x, axis=2) ** 2).mean(
        axis=(1, 2, 3)
    )
    return {
        "pixel_mean": float(x.mean()),
        "pixel_std": float(x.std()),
        "image_std": float(x.std(axis=(1, 2, 3)).mean()),
        "saturation": float(sat.mean()),
        "grey_share": float((sat.max(axis=(1, 2)) < 1e-3).mean()),
        "high_freq": float(high_freq.mean()),
        "pair_sq_distance": float(((v1 - v2) ** 2).mean()),
        "pair_cosine": float(cos.mean()),
    }


def ssljax_views(views: list[dict], images: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    """Two views of every image through ``ssljax.augment.build_augment`` (jitted)."""
    import jax

    from ssljax import augment

    size = images.shape[1]
    fn = jax.jit(augment.build_augment(views, output_size=size, mean=MEAN, std=STD))
    return tuple(np.asarray(v) for v in fn(jax.random.PRNGKey(seed), images))


def torch_views(views: list[dict], images: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    """Two views of every image through the reference's ``ViewTransform``, one image at a time."""
    import torch

    torch.manual_seed(seed)
    transforms = [torch_reference.ViewTransform(v, images.shape[1], MEAN, STD) for v in views]
    out: list[list[np.ndarray]] = [[] for _ in transforms]
    for image in images:
        x = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
        for views_of, t in zip(out, transforms, strict=True):
            views_of.append(t(x).permute(1, 2, 0).numpy())
    return tuple(np.stack(v) for v in out)


def compare(views: list[dict], images: np.ndarray, repeats: int) -> dict[str, dict[str, float]]:
    """Per statistic: each side's mean and spread over ``repeats``, the difference and its z.

    Args:
      views: the two view configs (dicts of ``ssljax.augment`` view fields).
      images: uint8 ``[N, S, S, 3]``.
      repeats: independent draws per side (seeds 0..repeats-1 on each side's own generator).

    Returns:
      ``{statistic: {"ssljax", "ssljax_sd", "torch", "torch_sd", "diff", "z"}}``.
    """
    runs: dict[str, list[dict[str, float]]] = {"ssljax": [], "torch": []}
    for r in range(repeats):
        runs["ssljax"].append(view_statistics(*ssljax_views(views, images, r)))
        runs["torch"].append(view_statistics(*torch_views(views, images, r)))
        print(f"repeat {r + 1}/{repeats} done", file=sys.stderr)
    table = {}
    for name in runs["ssljax"][0]:
        s = np.array([d[name] for d in runs["ssljax"]])
        t = np.array([d[name] for d in runs["torch"]])
        se = math.sqrt((s.var(ddof=1) + t.var(ddof=1)) / repeats) if repeats > 1 else math.nan
        diff = float(s.mean() - t.mean())
        table[name] = {
            "ssljax": float(s.mean()),
            "ssljax_sd": float(s.std(ddof=1)) if repeats > 1 else float("nan"),
            "torch": float(t.mean()),
            "torch_sd": float(t.std(ddof=1)) if repeats > 1 else float("nan"),
            "diff": diff,
            "z": _z(diff, se),
        }
    return table


def compare_decisions(view: dict, count: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """The random decisions of one view, ``count`` draws per side, compared statistic by statistic.

    ssljax's come from ``build_augment(..., return_params=True)``, the reference's from
    ``ViewTransform.sample`` (the draws its ``__call__`` makes). Given equal decisions the two
    build the same view (``test_whole_view_replays_ssljax_decisions`` in
    ``tests/test_torch_reference.py``), so these distributions are all that may differ.

    Args:
      view: a view config (dict of ``ssljax.augment`` view fields).
      count: draws per side.
      seed: of both sides' generators.

    Returns:
      ``{statistic: {"ssljax", "torch", "diff", "z"}}``: the coins' rates, the jitter factors'
      and blur sigma's means where applied, each operation's mean position in the jitter order,
      and the crop's area share, height and corner.
    """
    import jax
    import torch

    from ssljax import augment

    fn = augment.build_augment([view], output_size=32, mean=MEAN, std=STD)
    blank = np.zeros((count, 32, 32, 3), np.uint8)
    _, params = jax.jit(lambda r, x: fn(r, x, return_params=True))(jax.random.PRNGKey(seed), blank)
    ours = {k: np.asarray(a) for k, a in params[0].items()}
    torch.manual_seed(seed)
    transform = torch_reference.ViewTransform(view, 32, MEAN, STD)
    draws = [transform.sample(32, 32) for _ in range(count)]
    theirs = {k: np.asarray([d[k] for d in draws]) for k in ("flip", "jitter", "grayscale", "blur")}
    theirs["crop_box"] = np.asarray([d["crop_box"] for d in draws])
    factors = np.asarray([d["jitter_factors"] for d in draws if d["jitter"]]).reshape(-1, 4)
    order = np.asarray([d["jitter_order"] for d in draws if d["jitter"]]).reshape(-1, 4)
    sigma = np.asarray([d["blur_sigma"] for d in draws if d["blur"]])
    jit, blur = ours["jitter"], ours["blur"] & (transform.radius > 0)
    pairs = {f"p_{k}": (ours[k], theirs[k]) for k in ("flip", "jitter", "grayscale", "blur")}
    for i, name in enumerate(("brightness", "contrast", "saturation", "hue")):
        pairs[f"{name}_factor"] = (ours["jitter_factors"][jit][:, i], factors[:, i])
        pairs[f"{name}_position"] = (
            np.argmax(ours["jitter_order"][jit] == i, axis=1),
            np.argmax(order == i, axis=1),
        )
    pairs["blur_sigma"] = (ours["blur_sigma"][blur], sigma)
    box, tbox = ours["crop_box"], theirs["crop_box"]
    pairs["crop_area"] = (box[:, 2] * box[:, 3] / 1024, tbox[:, 2] * tbox[:, 3] / 1024)
    pairs["crop_height"] = (box[:, 2], tbox[:, 2])
    pairs["crop_top"] = (box[:, 0], tbox[:, 0])
    pairs["crop_left"] = (box[:, 1], tbox[:, 1])
    table = {}
    for name, (a, b) in pairs.items():
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if not (len(a) and len(b)):
            continue  # an operation this view never applies
        se = math.sqrt(a.var() / len(a) + b.var() / len(b))
        diff = float(a.mean() - b.mean())
        table[name] = {
            "ssljax": float(a.mean()), "torch": float(b.mean()), "diff": diff, "z": _z(diff, se)
        }  # fmt: skip
    return table


def load_images(root: pathlib.Path, count: int, seed: int = 0) -> np.ndarray:
    """``count`` training images of an image folder (``root/train/<class>/*.jpg``), shuffled.

    Raises:
      SystemExit: ``root/train`` holds no JPEG or PNG image.
    """
    from PIL import Image

    files = sorted(p for ext in ("*.jpg", "*.jpeg", "*.png") for p in (root / "train").rglob(ext))
    if not files:
        sys.exit(f"no images under {root / 'train'}: give --root the CIFAR-10 image folder")
    random.Random(seed).shuffle(files)
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files[:count]])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/simsiam.py:cifar10_cpu")
    parser.add_argument("--root", required=True, help="image folder with train/<class>/*.jpg")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument(
        "--zero", default="", help="view fields set to 0 on both sides, e.g. jitter_prob,blur_prob"
    )
    parser.add_argument(
        "--decisions", type=int, default=40000, help="draws per side of the decision table"
    )
    parser.add_argument("--out", default=None, help="JSON of the tables")
    args = parser.parse_args(argv)

    config = torch_reference.load_config(args.config, [])
    views = [
        v.to_dict() if hasattr(v, "to_dict") else dict(v)
        for v in (config.augment.view1, config.augment.view2)
    ]
    for field in filter(None, args.zero.split(",")):
        for view in views:
            if field not in view:
                sys.exit(f"--zero {field}: not a view field ({', '.join(sorted(view))})")
            view[field] = 0.0
    decisions = compare_decisions(views[0], args.decisions) if args.decisions else {}
    if decisions:
        print(f"decisions of view 1, {args.decisions} draws per side")
        print(f"{'statistic':20s} {'ssljax':>9s} {'reference':>9s} {'diff':>9s} {'z':>6s}")
        for name, row in decisions.items():
            print(
                f"{name:20s} {row['ssljax']:9.4f} {row['torch']:9.4f} "
                f"{row['diff']:+9.4f} {row['z']:+6.1f}"
            )
    images = load_images(pathlib.Path(args.root), args.images)
    table = compare(views, images, args.repeats)
    print(
        f"{args.config}, {len(images)} images, {args.repeats} repeats, zeroed: {args.zero or '-'}"
    )
    print(f"{'statistic':18s} {'ssljax':>16s} {'reference':>16s} {'diff':>9s} {'z':>6s}")
    for name, row in table.items():
        print(
            f"{name:18s} {row['ssljax']:9.4f} ±{row['ssljax_sd']:.4f} "
            f"{row['torch']:9.4f} ±{row['torch_sd']:.4f} {row['diff']:+9.4f} {row['z']:+6.1f}"
        )
    if args.out:
        result = {"config": args.config, "images": len(images), "repeats": args.repeats,
                  "zero": args.zero, "views": views, "table": table,
                  "decision_draws": args.decisions, "decisions": decisions}  # fmt: skip
        pathlib.Path(args.out).write_text(json.dumps(result, indent=2, default=list))


if __name__ == "__main__":
    main()
