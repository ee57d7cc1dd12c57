"""Export a pretrained backbone: torchvision-compatible safetensors, or Flax msgpack.

``python -m ssljax.export --workdir=DIR --format=torch`` writes ``DIR/export/backbone.safetensors``
whose keys and layouts are torchvision's ResNet ``state_dict`` without the classifier, so::

    model = torchvision.models.resnet50()
    missing, unexpected = model.load_state_dict(
        safetensors.torch.load_file(path), strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected

(the check SimSiam's ``main_lincls.py`` makes), or, strictly, into a torchvision ResNet whose
``fc`` was replaced by ``torch.nn.Identity()``. Backbones with the CIFAR stem (``*_cifar``,
``resnet_tiny``) load into a torchvision ResNet after ``model.conv1 = nn.Conv2d(3, C, 3, 1, 1,
bias=False)`` and ``model.maxpool = nn.Identity()`` (padding 1 as SimSiam's CIFAR code; solo-learn
uses padding 2, a different network). ``--format=flax`` writes ``backbone.msgpack``
(``flax.serialization``) holding ``{'params', 'batch_stats'}`` of the backbone, read back with
:func:`load_flax`.

The exported network is the *online* backbone (the one the papers evaluate), with its running
BatchNorm statistics, from the newest checkpoint of the run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ssljax import tree_paths

FORMATS = ("torch", "flax")
FILE_NAMES = {"torch": "backbone.safetensors", "flax": "backbone.msgpack"}

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


def resnet_to_torchvision(
    params: Mapping[str, Any], batch_stats: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """Maps a ssljax ResNet's variables to torchvision's ``state_dict`` names and layouts.

    Args:
      params: the backbone's ``params`` (``conv1``, ``bn1``, ``layer{i}_{j}``, ...).
      batch_stats: the backbone's ``batch_stats``.

    Returns:
      ``{torchvision key: array}``: convolution kernels transposed from Flax's
      ``[kh, kw, in, out]`` to PyTorch's ``[out, in, kh, kw]``, float32; BatchNorm
      ``weight``/``bias``/``running_mean``/``running_var`` float32 and ``num_batches_tracked``
      int64 0 (torchvision reads it only with ``momentum=None``).

    Raises:
      ValueError: on a leaf that has no torchvision counterpart (not a ResNet), or a BatchNorm
        whose parameters and statistics do not pair up.
    """
    out: dict[str, np.ndarray] = {}
    bn_modules: set[str] = set()
    stat_modules: dict[str, set[str]] = {}
    for path, value in tree_paths.flatten(params, sep="/", leaf=np.asarray).items():
        module, _, leaf = path.rpartition("/")
        name = _torch_module_name(module)
        if (
            leaf == "kernel"
            and value.ndim == 4
            and re.search(r"(^|/)(conv\d|downsample_conv)$", module)
        ):
            out[f"{name}.weight"] = np.ascontiguousarray(value.transpose(3, 2, 0, 1), np.float32)
        elif leaf in _BN_PARAMS and re.search(r"(^|/)(bn\d|downsample_bn)$", module):
            out[f"{name}.{_BN_PARAMS[leaf]}"] = np.asarray(value, np.float32)
            bn_modules.add(name)
        else:
            raise ValueError(
                f"Parameter {path!r} (shape {value.shape}) has no torchvision ResNet counterpart; "
                "the torch export supports ssljax ResNet backbones only (use --format=flax for "
                "others)."
            )
    for path, value in tree_paths.flatten(batch_stats, sep="/", leaf=np.asarray).items():
        module, _, leaf = path.rpartition("/")
        if leaf not in _BN_STATS:
            raise ValueError(f"Unexpected BatchNorm statistic {path!r}; expected 'mean' or 'var'.")
        name = _torch_module_name(module)
        out[f"{name}.{_BN_STATS[leaf]}"] = np.asarray(value, np.float32)
        stat_modules.setdefault(name, set()).add(leaf)
    complete = {n for n in bn_modules if stat_modules.get(n) == set(_BN_STATS)}
    incomplete = sorted((bn_modules | set(stat_modules)) - complete)
    if incomplete:
        raise ValueError(
            f"BatchNorm layers {incomplete} lack parameters or running statistics; pass the "
            "backbone's 'params' and 'batch_stats' together."
        )
    for name in bn_modules:
        out[f"{name}.num_batches_tracked"] = np.zeros((), np.int64)
    return out


def check_finite(params: Mapping[str, Any], batch_stats: Mapping[str, Any]) -> None:
    """Refuses to export weights holding NaN or infinity (a diverged or damaged run).

    Raises:
      ValueError: naming the arrays.
    """
    flat = {
        **tree_paths.flatten(params, sep="/", prefix="params/"),
        **tree_paths.flatten(batch_stats, sep="/", prefix="batch_stats/"),
    }
    bad = sorted(k for k, v in flat.items() if not np.isfinite(np.asarray(v)).all())
    if bad:
        raise ValueError(
            f"Refusing to export: NaN or infinity in {len(bad)} array(s) ({', '.join(bad[:5])}). "
            "Export an earlier checkpoint of the run, or retrain."
        )


def export_torch(
    params: Mapping[str, Any],
    batch_stats: Mapping[str, Any],
    path: str,
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Writes the backbone as torchvision-compatible safetensors.

    Args:
      params: the backbone's ``params``.
      batch_stats: the backbone's ``batch_stats``.
      path: the output file.
      metadata: extra string metadata for the safetensors header (``format: pt`` is always set,
        as ``transformers`` and ``timm`` expect).

    Returns:
      ``path``.

    Raises:
      ValueError: if the variables are not those of an ssljax ResNet, or hold NaN or infinity.
    """
    from safetensors.numpy import save

    check_finite(params, batch_stats)
    tensors = resnet_to_torchvision(params, batch_stats)
    header = {"format": "pt", **{str(k): str(v) for k, v in (metadata or {}).items()}}
    # Serialised here and written with open(), not save_file (which creates the file 0600):
    # the file gets the umask's mode, as the msgpack export does.
    blob = save(tensors, metadata=header)
    with open(path, "wb") as f:
        f.write(blob)
    return path


def _to_numpy(tree: Any) -> Any:
    import jax

    return jax.tree.map(np.asarray, tree)


def export_flax(params: Mapping[str, Any], batch_stats: Mapping[str, Any], path: str) -> str:
    """Writes ``{'params', 'batch_stats'}`` of the backbone as Flax msgpack; returns ``path``."""
    from flax import serialization

    check_finite(params, batch_stats)
    blob = serialization.msgpack_serialize(
        {"params": _to_numpy(params), "batch_stats": _to_numpy(batch_stats)}
    )
    with open(path, "wb") as f:
        f.write(blob)
    return path


def load_flax(path: str) -> dict[str, Any]:
    """Reads a file written by :func:`export_flax`.

    Returns:
      ``{'params', 'batch_stats'}`` as nested dicts of NumPy arrays, ready for
      ``backbone.apply(variables, images, train=False)``.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: if the file does not hold ``params`` and ``batch_stats``.
    """
    from flax import serialization

    if not os.path.isfile(path):
        raise FileNotFoundError(f"No exported Flax backbone at {path}.")
    with open(path, "rb") as f:
        variables = serialization.msgpack_restore(f.read())
    if not isinstance(variables, dict) or set(variables) != {"params", "batch_stats"}:
        found = sorted(variables) if isinstance(variables, dict) else type(variables).__name__
        raise ValueError(f"{path} does not hold {{'params', 'batch_stats'}}; found {found}.")
    return variables


def export_from_workdir(workdir: str, fmt: str, out_dir: str | None = None) -> str:
    """Exports the online backbone of the newest checkpoint in ``workdir``.

    Args:
      workdir: a training run's folder (with ``config.json`` and ``checkpoints/``).
      fmt: ``"torch"`` or ``"flax"``.
      out_dir: output folder (default ``workdir/export``).

    Returns:
      The written file's path.

    Raises:
      ValueError: for an unknown format, or ``torch`` for a backbone that is not a ResNet.
      FileNotFoundError: if the workdir has no run or no checkpoint.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format={fmt!r} does not exist; valid formats: {list(FORMATS)}.")
    from ssljax import paths
    from ssljax.eval import restore
    from ssljax.models import ResNet

    # The backbone alone: the dataset need not be prepared on the exporting machine.
    run = restore.load_run(workdir, with_data=False)
    if fmt == "torch" and not isinstance(run.backbone, ResNet):
        raise ValueError(
            f"--format=torch exports ResNet backbones only; this run's backbone is "
            f"{run.config.model.backbone!r} ({type(run.backbone).__name__}). Use --format=flax."
        )
    out_dir = paths.expand(out_dir) or os.path.join(run.workdir, "export")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, FILE_NAMES[fmt])
    if fmt == "torch":
        metadata = {
            "source": "ssljax",
            "method": str(run.config.method),
            "backbone": str(run.config.model.backbone),
            "backbone_kwargs": str(dict(run.config.model.backbone_kwargs)),
            "step": str(run.step),
        }
        return export_torch(run.params, run.batch_stats, path, metadata=metadata)
    return export_flax(run.params, run.batch_stats, path)


def main(argv: Any) -> None:  # pragma: no cover - thin CLI
    """``python -m ssljax.export --workdir=DIR --format=torch|flax``."""
    from absl import flags

    from ssljax import cli, log_filters

    del argv
    f = flags.FLAGS
    log_filters.quiet_libraries()
    with cli.user_errors_exit_2(verbose=f.verbosity >= 1):
        if not f.workdir:
            cli.fail("--workdir is required: a training run's folder (--help for examples).")
        path = export_from_workdir(f.workdir, f.format, f.out_dir)
    print(f"Wrote {path}")


EXPORT_USAGE = """usage: python -m ssljax.export --workdir=DIR [--format=torch|flax] [--out_dir=DIR]

Writes the online backbone of a run's newest checkpoint: torch = safetensors with torchvision's
ResNet names (DIR/export/backbone.safetensors), flax = msgpack (DIR/export/backbone.msgpack).
Examples:
  python -m ssljax.export --workdir=/tmp/ssljax_digits --format=torch
  python -m ssljax.export --workdir=~/runs/byol --format=flax --out_dir=~/weights
"""

if __name__ == "__main__":  # pragma: no cover
    import sys

    from absl import app, flags

    from ssljax import cli

    # A string, not an enum flag: the function's error names the valid formats and the value.
    flags.DEFINE_string("workdir", None, "A training run's workdir.")
    flags.DEFINE_string("format", "torch", f"Export format, one of {list(FORMATS)}.")
    flags.DEFINE_string("out_dir", None, "Output folder (default: WORKDIR/export).")
    cli.absl_help(EXPORT_USAGE, sys.argv)
    app.run(main, flags_parser=cli.parse_flags_or_fail)
