"""Export a pretrained backbone: torchvision-compatible safetensors, or Flax msgpack.

``python -m ssljax.export --workdir=DIR --format=torch`` writes ``DIR/export/backbone.safetensors``
whose keys and layouts are torchvision's ResNet ``state_dict`` without the classifier, so

    model = torchvision.models.resnet50()
    model.load_state_dict(safetensors.torch.load_file(path), strict=False)  # only fc.* missing

takes it. ``--format=flax`` writes ``backbone.msgpack`` (``flax.serialization``) holding
``{'params', 'batch_stats'}`` of the backbone.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

FORMATS = ("torch", "flax")

# Flax BatchNorm leaf -> torchvision BatchNorm2d state_dict suffix.
_BN_PARAMS = {"scale": "weight", "bias": "bias"}
_BN_STATS = {"mean": "running_mean", "var": "running_var"}


def _torch_module_name(flax_module: str) -> str:
    """``layer2_0/downsample_conv`` -> ``layer2.0.downsample.0`` (see ssljax.models.resnet)."""
    parts = []
    for piece in flax_module.split("/"):
        m = re.fullmatch(r"layer(\d+)_(\d+)", piece)
        if m:
            parts.extend([f"layer{m.group(1)}", m.group(2)])
        elif piece == "downsample_conv":
            parts.extend(["downsample", "0"])
        elif piece == "downsample_bn":
            parts.extend(["downsample", "1"])
        else:
            parts.append(piece)
    return ".".join(parts)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else k
        if isinstance(v, Mapping):
            out.update(_flatten(v, path))
        else:
            out[path] = np.asarray(v)
    return out


def resnet_to_torchvision(
    params: Mapping[str, Any], batch_stats: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """Maps a ssljax ResNet's variables to torchvision's ``state_dict`` names and layouts.

    Args:
      params: the backbone's ``params`` (``conv1``, ``bn1``, ``layer{i}_{j}``, ...).
      batch_stats: the backbone's ``batch_stats``.

    Returns:
      ``{torchvision key: float32 array}``; convolution kernels transposed from Flax's
      ``[kh, kw, in, out]`` to PyTorch's ``[out, in, kh, kw]``; ``num_batches_tracked`` set to 0.

    Raises:
      ValueError: on a leaf that has no torchvision counterpart (not a ResNet).
    """
    out: dict[str, np.ndarray] = {}
    bn_modules = set()
    for path, value in _flatten(params).items():
        module, _, leaf = path.rpartition("/")
        name = _torch_module_name(module)
        if leaf == "kernel" and value.ndim == 4:
            out[f"{name}.weight"] = np.ascontiguousarray(value.transpose(3, 2, 0, 1), np.float32)
        elif leaf in _BN_PARAMS:
            out[f"{name}.{_BN_PARAMS[leaf]}"] = value.astype(np.float32)
            bn_modules.add(name)
        else:
            raise ValueError(
                f"Parameter {path!r} has no torchvision ResNet counterpart; the torch export "
                "supports ResNet backbones only (use --format=flax for others)."
            )
    for path, value in _flatten(batch_stats).items():
        module, _, leaf = path.rpartition("/")
        if leaf not in _BN_STATS:
            raise ValueError(f"Unexpected BatchNorm statistic {path!r}.")
        name = _torch_module_name(module)
        out[f"{name}.{_BN_STATS[leaf]}"] = value.astype(np.float32)
    for name in bn_modules:
        out[f"{name}.num_batches_tracked"] = np.zeros((), np.int64)
    return out


def export_torch(params, batch_stats, path: str) -> str:
    """Writes the backbone as torchvision-compatible safetensors; returns the path."""
    from safetensors.numpy import save_file

    save_file(resnet_to_torchvision(params, batch_stats), path)
    return path


def export_flax(params, batch_stats, path: str) -> str:
    """Writes ``{'params', 'batch_stats'}`` of the backbone as Flax msgpack; returns the path."""
    from flax import serialization

    blob = serialization.msgpack_serialize(
        {"params": _to_numpy(params), "batch_stats": _to_numpy(batch_stats)}
    )
    with open(path, "wb") as f:
        f.write(blob)
    return path


def _to_numpy(tree):
    import jax

    return jax.tree.map(np.asarray, tree)


def export_from_workdir(workdir: str, fmt: str, out_dir: str | None = None) -> str:
    """Exports the backbone of the newest checkpoint in ``workdir``.

    Args:
      workdir: a training run's folder (with ``config.json`` and ``checkpoints/``).
      fmt: ``"torch"`` or ``"flax"``.
      out_dir: output folder (default ``workdir/export``).

    Returns:
      The written file's path.

    Raises:
      ValueError: for an unknown format.
      FileNotFoundError: if the workdir has no checkpoint.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format={fmt!r} does not exist; valid formats: {list(FORMATS)}.")
    from ssljax import evaluate

    state, _ = evaluate.load_run(workdir)
    params = state.params["backbone"]
    stats = state.batch_stats.get("backbone", {})
    out_dir = out_dir or os.path.join(workdir, "export")
    os.makedirs(out_dir, exist_ok=True)
    if fmt == "torch":
        return export_torch(params, stats, os.path.join(out_dir, "backbone.safetensors"))
    return export_flax(params, stats, os.path.join(out_dir, "backbone.msgpack"))


def main(argv):  # pragma: no cover - thin CLI
    """``python -m ssljax.export --workdir=DIR --format=torch|flax``."""
    from absl import flags

    del argv
    path = export_from_workdir(flags.FLAGS.workdir, flags.FLAGS.format, flags.FLAGS.out_dir)
    print(f"Wrote {path}")


if __name__ == "__main__":  # pragma: no cover
    from absl import app, flags

    flags.DEFINE_string("workdir", None, "A training run's workdir.")
    flags.DEFINE_enum("format", "torch", list(FORMATS), "Export format.")
    flags.DEFINE_string("out_dir", None, "Output folder (default: WORKDIR/export).")
    flags.mark_flag_as_required("workdir")
    app.run(main)
