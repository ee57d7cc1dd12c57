"""Wall time of a linear evaluation of a ResNet-18 (CIFAR stem) on the CIFAR-10 folder.

The ``python -m ssljax.evaluate --protocol=linear`` path, timed in its parts: preparing the
image folder (``python -m ssljax.data.prepare --dataset=image_folder``, once per machine),
restoring the checkpoint, extracting the features of the 50,000 train and 10,000 test images
(evaluation preprocessing, eval-mode BatchNorm, the batch sharded over the CPU devices), and
training the linear classifier on the cached features with the ``cifar`` preset (SGD, 100
epochs, batch 256; 19,600 steps), first with its compilation and then once more compiled.

The network is the BYOL ``cifar10`` config's ResNet-18 at its random initialisation (or after
``--train_steps`` steps of BYOL): the timing does not depend on the weights. The machine is
shared; the load average at start and end is recorded with the figures.

    python benchmarks/linear_eval.py
    python benchmarks/linear_eval.py --root /path/to/unpacked/cifar10 --out /tmp/linear.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import platform
import tarfile
import tempfile
import time

from ssljax import host_devices

REPO = pathlib.Path(__file__).resolve().parent.parent


def _parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--archive", default=str(REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz")
    )
    parser.add_argument("--root", default="", help="unpacked CIFAR-10 folder (else unpack)")
    parser.add_argument("--data_dir", default="", help="prepared dataset folder (else temporary)")
    parser.add_argument("--workdir", default="", help="run folder (else temporary)")
    parser.add_argument("--train_steps", type=int, default=0, help="BYOL steps before evaluating")
    parser.add_argument("--feature_batch", type=int, default=0, help="0: the config's 256")
    parser.add_argument(
        "--out", default=str(REPO / "benchmarks" / "results" / "linear_eval.json"), help="JSON"
    )
    return parser.parse_args()


def _find_root(folder: pathlib.Path) -> pathlib.Path:
    for candidate in [folder, *folder.iterdir()]:
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    raise SystemExit(f"{folder} holds no train/ and test/ folders.")


def _make_run(config, workdir: str) -> None:
    """A workdir holding config.json and a step-0 checkpoint of the randomly initialised state."""
    import jax

    from ssljax import checkpointing, data, train

    info = data.get_dataset_info(config.data)
    comps = train.build_components(config, info, num_train_examples=info.split_sizes["train"])
    state = jax.jit(functools.partial(train.init_state, comps, config))(jax.random.PRNGKey(0))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    ckpt.save(0, state, None)
    ckpt.close()


def main() -> None:
    args = _parse_args()
    host_devices.configure_cpu_devices()
    import jax

    from ssljax import config_schema, data, evaluate, sharding, train

    report = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "jax_devices": jax.device_count(),
            "load_avg_at_start": list(os.getloadavg()),
        }
    }
    tmp = tempfile.TemporaryDirectory()
    start = time.perf_counter()
    if args.root:
        root = pathlib.Path(args.root)
    else:
        with tarfile.open(args.archive) as tar:
            tar.extractall(tmp.name, filter="data")
        root = _find_root(pathlib.Path(tmp.name))
    data_dir = args.data_dir or os.path.join(tmp.name, "prepared")
    report["unpack_s"] = time.perf_counter() - start

    config = config_schema.load_config(str(REPO / "configs" / "byol.py") + ":cifar10")
    config.data.root = str(root)
    config.data.data_dir = data_dir
    start = time.perf_counter()
    try:
        data.get_dataset_info(config.data)
        report["prepare_s"] = 0.0  # already prepared
    except (ValueError, FileNotFoundError):
        data.prepare("image_folder", data_dir, root=str(root))
        report["prepare_s"] = time.perf_counter() - start

    workdir = args.workdir or os.path.join(tmp.name, "run")
    start = time.perf_counter()
    if args.train_steps > 0:
        config.num_steps = args.train_steps
        config.warmup_epochs = 0.0
        config.knn.at_end = config.knn.at_start = False
        train.train_and_evaluate(config, workdir)
    else:
        _make_run(config, workdir)
    report["make_run_s"] = time.perf_counter() - start

    overrides = ["diagnostics.enabled=False", "cache_features=False"]
    if args.feature_batch:
        overrides.append(f"feature_batch={args.feature_batch}")
    start = time.perf_counter()
    run = evaluate.load_run(workdir)
    ecfg = evaluate.resolve_eval_config(run.config, "cifar", overrides)
    report["restore_s"] = time.perf_counter() - start
    mesh = sharding.make_mesh()
    times = {}
    start = time.perf_counter()
    train_feats = evaluate.compute_split_features(run, "train", ecfg, mesh)
    times["features_train_s"] = time.perf_counter() - start
    start = time.perf_counter()
    test_feats = evaluate.compute_split_features(run, "test", ecfg, mesh)
    times["features_test_s"] = time.perf_counter() - start
    n_images = train_feats[0].shape[0] + test_feats[0].shape[0]
    times["features_images_per_s"] = n_images / (
        times["features_train_s"] + times["features_test_s"]
    )
    first = evaluate.linear_protocol(train_feats, test_feats, num_classes=10, config=ecfg.linear)
    second = evaluate.linear_protocol(train_feats, test_feats, num_classes=10, config=ecfg.linear)
    times["classifier_with_compile_s"] = first["linear_seconds"]
    times["classifier_compiled_s"] = second["linear_seconds"]
    report.update(
        {
            "network": f"{run.config.model.backbone} {dict(run.config.model.backbone_kwargs)}",
            "step": run.step,
            "num_train": int(train_feats[0].shape[0]),
            "num_test": int(test_feats[0].shape[0]),
            "feature_dim": int(train_feats[0].shape[1]),
            "feature_batch": int(ecfg.feature_batch or run.config.global_batch),
            "eval_linear": dict(
                ecfg.linear.to_dict(), lr_decay_epochs=list(ecfg.linear.lr_decay_epochs)
            ),
            "times": times,
            "linear_top1": first["linear_top1"],
            "linear_top5": first["linear_top5"],
            "load_avg_at_end": list(os.getloadavg()),
        }
    )
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out).write_text(text + "\n")
    tmp.cleanup()


if __name__ == "__main__":
    main()
