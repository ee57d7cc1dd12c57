"""Evaluation protocols on a frozen pretrained backbone, and representation diagnostics.

``python -m ssljax.evaluate --workdir=DIR --protocol=linear|knn [--eval_preset=P]
[--eval_override=linear.epochs=50 ...]`` restores the online backbone of the newest checkpoint
of a run, computes its features once (evaluation preprocessing, running BatchNorm statistics;
cached in ``DIR/eval/`` when ``cache_features``), and then

* ``linear``: trains a linear classifier on the cached train features with the optimizer,
  schedule and epochs of an evaluation preset (:func:`eval_config`) and reports top-1 and
  top-5 on the evaluation split;
* ``knn``: weighted kNN (Wu et al. 2018) for several ``k``.

It also reports representation diagnostics of the evaluation split: RankMe, the mean
per-dimension std of the normalised features, alignment of two augmented views and
uniformity (:mod:`ssljax.diagnostics`, re-exported here). Results go to
``DIR/eval_<protocol>.json`` and to TensorBoard (and ``metrics.jsonl``) in ``DIR/eval``.

Stated deviation from the papers' ImageNet protocols: BYOL and SimSiam train the linear
classifier on random-resized crops and flips of the training images (centre crop at test time).
Here the classifier trains on the features of the centre crop, computed once, so that it trains
in seconds; expect a difference of the order of a point of top-1 in either direction. The CIFAR
recipes of solo-learn also augment during linear training; the same deviation applies.

This module is the command line; the work is done in the package :mod:`ssljax.eval`
(``config``: presets and overrides; ``restore``: the backbone of a checkpoint; ``features``:
feature extraction and cache; ``linear`` and ``knn``: the protocols; ``protocols``: the job),
whose public names are re-exported here. Evaluation never imports :mod:`ssljax.train`.
"""

from __future__ import annotations

from typing import Any

from ssljax import paths, strict_json
from ssljax.diagnostics import (
    alignment,
    normalized_std,
    per_dimension_std,
    rankme,
    uniformity,
)
from ssljax.eval.config import (
    EVAL_PRESETS,
    INITS,
    OPTIMIZERS,
    SCHEDULES,
    apply_overrides,
    default_preset,
    eval_config,
    linear_eval_config,
    resolve_eval_config,
    validate_eval_config,
)
from ssljax.eval.features import compute_split_features
from ssljax.eval.knn import knn_protocol, training_knn_note
from ssljax.eval.linear import (
    DEVIATION_NOTE,
    classifier_accuracy,
    linear_protocol,
    train_linear_classifier,
)
from ssljax.eval.protocols import PROTOCOLS, evaluate_run, representation_diagnostics
from ssljax.eval.restore import Run, load_run

EVALUATE_USAGE = """usage: python -m ssljax.evaluate --workdir=DIR [--protocol=knn|linear] [flags]

Evaluates the newest checkpoint of a training run on its frozen features and writes
DIR/eval_<protocol>.json. Examples:
  python -m ssljax.evaluate --workdir=/tmp/ssljax_digits --protocol=knn
  python -m ssljax.evaluate --workdir=/tmp/byol_cifar10 --protocol=linear \\
      --eval_override=linear.epochs=50 --data_dir=~/ssljax_data
"""

__all__ = [
    "DEVIATION_NOTE",
    "EVAL_PRESETS",
    "INITS",
    "OPTIMIZERS",
    "PROTOCOLS",
    "SCHEDULES",
    "Run",
    "alignment",
    "apply_overrides",
    "classifier_accuracy",
    "compute_split_features",
    "default_preset",
    "eval_config",
    "evaluate_run",
    "knn_protocol",
    "linear_eval_config",
    "linear_protocol",
    "load_run",
    "normalized_std",
    "per_dimension_std",
    "rankme",
    "representation_diagnostics",
    "resolve_eval_config",
    "train_linear_classifier",
    "training_knn_note",
    "uniformity",
    "validate_eval_config",
]


def _main(argv: Any) -> None:  # pragma: no cover - thin CLI
    from absl import flags

    from ssljax import cli, config_schema, log_filters

    del argv
    f = flags.FLAGS
    log_filters.quiet_libraries()
    with cli.user_errors_exit_2(verbose=f.verbosity >= 1):
        if not f.workdir:
            cli.fail("--workdir is required: a training run's folder (--help for examples).")
        config = config_schema.load_config(paths.expand(f.config)) if f.config else None
        results = evaluate_run(
            f.workdir,
            f.protocol,
            eval_preset=f.eval_preset,
            eval_overrides=f.eval_override or (),
            config=config,
            data_dir=f.data_dir,
        )
    print(strict_json.dumps(results, indent=2))


if __name__ == "__main__":  # pragma: no cover
    import sys

    from absl import app, flags

    from ssljax import cli, host_devices

    host_devices.configure_cpu_devices()
    flags.DEFINE_string("workdir", None, "A training run's workdir.")
    flags.DEFINE_string("protocol", "linear", f"One of {list(PROTOCOLS)}.")
    flags.DEFINE_string(
        "eval_preset", None, f"One of {list(EVAL_PRESETS)}; default: chosen from the run."
    )
    flags.DEFINE_multi_string(
        "eval_override", [], "key.path=value changes to the eval config, e.g. linear.epochs=50."
    )
    flags.DEFINE_string(
        "config", None, "A config file[:preset] to evaluate with (default: the run's)."
    )
    flags.DEFINE_string("data_dir", None, "Where the prepared dataset lives, if it moved.")
    cli.absl_help(EVALUATE_USAGE, sys.argv)
    app.run(_main, flags_parser=cli.parse_flags_or_fail)
