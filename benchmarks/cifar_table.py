"""The README's CIFAR-10 table: each method pretrained within a CPU budget, and its baselines.

    python benchmarks/cifar_table.py --root /tmp/ssljax_table          # everything (~2.5 h)
    python benchmarks/cifar_table.py --root /tmp/ssljax_table --rows byol,pixels
    python benchmarks/cifar_table.py --root /tmp/ssljax_table --print  # table of what is done
    python benchmarks/cifar_table.py --table benchmarks/results/cifar_table_epyc.json \
        --plot docs/cifar_table_epyc.png          # the rows' curves side by side (matplotlib)

Rows:

* ``byol``, ``simsiam``, ``vicreg``, ``barlow_twins``, ``dino`` (every registered method):
  ``python -m ssljax.main
  --config=configs/<method>.py:cifar10_cpu`` (ResNet-18, CIFAR stem, width 0.25; the method's
  CIFAR-10 recipe for ``config_schema.CPU_BUDGET_EPOCHS`` epochs), then ``python -m
  ssljax.evaluate`` with the ``knn`` and ``linear`` protocols on the 10,000 test images.
* ``random_target``: BYOL's bootstrap experiment (Grill et al. 2020, sec. 3.1) at the same
  budget -- the target frozen at its random initialisation (tau = 1).
* ``init``: the same network (BYOL's, ``zero_init_residual=False``) at its random
  initialisation, measured the same way. Its parameters are those of step 0 exactly (50 steps
  at learning rate 0 with the probe off); only the BatchNorm running statistics have been
  estimated from those 50 training batches, as evaluation-mode BatchNorm needs them.

Every method row's baseline is its own network at initialisation, calibrated the same way:
``knn_at_init`` is the run's kNN at step 0 after ``train.calibrate_batch_stats`` (BatchNorm
statistics from ``knn.bn_calibration_batches`` = 50 training batches; ``knn_init_calibrated``
says so, False for runs made before it existed, whose step-0 kNN used the initial statistics
of 0 and 1), and ``knn_gain`` is ``knn_top1 - knn_at_init`` for calibrated baselines only.
The collapse monitors: ``proj_std_x_sqrt_d`` of the projections (0 collapsed, 1 healthy) and
``feature_rankme``, RankMe (Garrido et al. 2023) of the backbone features of a training batch
(at most the batch size; a dimensional collapse shows as a fall), each at the end and at its
lowest over the run.
* ``pixels``: the raw pixels in [0, 1] (3,072 dimensions) through the same kNN and linear
  classifier.

A variant of a method row is named ``ROW.TAG`` (``--tag TAG`` with ``--override``): it trains
in its own workdir ``--root/ROW.TAG`` (``--rows byol --tag tau0.9
--override=--config.tau_base=0.9``), and the row records the recipe fields it ran with (batch,
learning rate, weight decay, tau) so the table says what was changed.

Each row runs in its own process and leaves its workdir under ``--root``; a row whose results
exist is not run again (delete its folder to rerun it), and an interrupted run resumes from its
checkpoint. The table goes to stdout and ``--root/table.json`` (and ``--out``); ``--plot PNG``
draws each row's loss and collapse-monitor curves side by side (``ssljax.plot.plot_table``),
from the rows just run or from a finished table's JSON (``--table``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import subprocess
import sys
import tarfile
import time

import _timing
import numpy as np

from ssljax import strict_json
from ssljax.methods import METHODS

REPO = pathlib.Path(__file__).resolve().parents[1]
# One row per registered method (its configs/<method>.py:cifar10_cpu), and BYOL's bootstrap one.
METHOD_ROWS = (*METHODS, "random_target")
ROWS = (*METHOD_ROWS, "init", "pixels")
CLASSES = (
    "airplane automobile bird cat deer dog frog horse ship truck".split()
)  # the standard CIFAR-10 label order


def _run(cmd: list[str], log: pathlib.Path) -> None:
    """Runs ``cmd`` with its output appended to ``log``; raises with the log's tail on failure."""
    print("+", " ".join(cmd), flush=True)
    with open(log, "a", encoding="utf-8") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, check=False)
    if proc.returncode:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); end of {log}:\n{tail}")


def unpack_cifar(root: pathlib.Path, shared_data: pathlib.Path) -> pathlib.Path:
    """Returns the CIFAR-10 image folder, unpacked from ``cifar10-jpg.tar.gz`` the first time."""
    folder = root / "cifar10"
    if (folder / "test").is_dir() and (folder / "train").is_dir():
        return folder
    archive = shared_data / "cifar10-jpg.tar.gz"
    if not archive.is_file():
        raise SystemExit(
            f"{archive} not found: point --shared-data (or SSLJAX_TEST_DATA) at the folder "
            "holding cifar10-jpg.tar.gz (../shared/data beside the repository)."
        )
    tmp = root / "cifar10.partial"
    tmp.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
    tmp.rename(folder)
    return folder


def prepare(root: pathlib.Path, cifar: pathlib.Path) -> None:
    """Prepares the image folder into ``root/tfds`` once (about 15 s)."""
    if (root / "tfds" / "image_folder").is_dir():
        return
    root.mkdir(parents=True, exist_ok=True)
    _run(
        [
            sys.executable,
            "-m",
            "ssljax.data.prepare",
            "--dataset=image_folder",
            f"--root={cifar}",
            f"--data_dir={root / 'tfds'}",
        ],
        root / "prepare_log.txt",
    )


def split_row(row: str) -> tuple[str, str]:
    """Splits a row name ``ROW`` or ``ROW.TAG`` into the base row and its tag ("" if none).

    Raises:
      SystemExit: if the base row is unknown, or a tag is given to a row that trains nothing.
    """
    base, _, tag = row.partition(".")
    if base not in ROWS:
        raise SystemExit(f"unknown row {row!r}; valid: {list(ROWS)}, or ROW.TAG for a variant")
    if tag and base not in METHOD_ROWS:
        raise SystemExit(f"row {row!r}: only {list(METHOD_ROWS)} take a variant tag")
    return base, tag


def train_and_eval(row: str, args, cifar: pathlib.Path) -> dict:
    """Pretrains one row (if not done), runs the kNN and linear protocols, returns its results."""
    base, _ = split_row(row)
    workdir = args.root / row
    log = workdir / "log.txt"
    if row == "init":
        config = "configs/byol.py:cifar10_cpu"
        extra = [
            "--config.optimizer.base_lr=0.0",
            "--config.num_steps=50",
            "--config.probe.enabled=False",
            "--config.knn.at_end=False",
        ]
    elif base == "random_target":
        config, extra = "configs/byol.py:random_target", []
    else:
        config, extra = f"configs/{base}.py:cifar10_cpu", []
    data = [f"--config.data.root={cifar}", f"--config.data.data_dir={args.root / 'tfds'}"]
    train_cmd = [sys.executable, "-m", "ssljax.main", f"--config={config}", f"--workdir={workdir}"]
    train_cmd += data + extra + list(args.override)
    eval_cmds = {
        protocol: [
            sys.executable,
            "-m",
            "ssljax.evaluate",
            f"--workdir={workdir}",
            f"--protocol={protocol}",
            f"--data_dir={args.root / 'tfds'}",
        ]
        for protocol in ("knn", "linear")
    }
    if args.dry_run:
        # The row's config with every override must resolve (a typo fails here, in seconds,
        # not after hours of the rows before it); then the commands are printed, not run.
        proc = subprocess.run(
            [*train_cmd, "--print_config"], cwd=REPO, capture_output=True, text=True, check=False
        )
        if proc.returncode:
            raise SystemExit(f"row {row}: its config does not resolve:\n{proc.stderr[-2000:]}")
        for cmd in (train_cmd, *eval_cmds.values()):
            print("would run:", shlex.join(cmd), flush=True)
        return {}
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "summary.json").exists():
        _run(train_cmd, log)
    for protocol, cmd in eval_cmds.items():
        if not (workdir / f"eval_{protocol}.json").exists():
            _run(cmd, log)
    return summarize_run(row, workdir)


def summarize_run(row: str, workdir: pathlib.Path) -> dict:
    """The table's fields of a finished row, read from its workdir."""
    summary = json.loads((workdir / "summary.json").read_text())
    config = json.loads((workdir / "config.json").read_text())
    knn = json.loads((workdir / "eval_knn.json").read_text())
    linear = json.loads((workdir / "eval_linear.json").read_text())
    curve = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in curve if "loss" in r]
    rankme_rows = [r for r in curve if r.get("feature_rankme") is not None]
    calibrated = any(r.get("knn_init_bn_calibration_batches", 0) > 0 for r in curve)
    knn_top1, knn_init = _result(knn, "knn_top1_k200"), summary.get("knn_top1_init")
    return {
        "row": row,
        "method": config["method"],
        "epochs": config["num_epochs"] if config["num_steps"] <= 0 else None,
        # Recorded because --override can change them (warm-up is a tenth of the run in the
        # presets; the rest is the method's CIFAR-10 recipe unless the row is a variant).
        "warmup_epochs": config["warmup_epochs"],
        "global_batch": config["global_batch"],
        "optimizer": config["optimizer"]["name"],
        "base_lr": config["optimizer"]["base_lr"],
        "weight_decay": config["optimizer"]["weight_decay"],
        **({"tau_base": config["tau_base"]} if config["method"] in ("byol", "dino") else {}),
        "steps": summary["step"],
        "wall_time_min": round(summary.get("wall_time_s", 0.0) / 60, 1),
        "images_per_s": round(summary.get("images_per_sec_overall", 0.0), 1),
        "knn_at_init": knn_init,
        "knn_init_calibrated": calibrated,
        "knn_top1": knn_top1,
        "knn_gain": (
            knn_top1 - knn_init if calibrated and None not in (knn_top1, knn_init) else None
        ),
        "linear_top1": _result(linear, "linear_top1"),
        "final_loss": summary.get("loss"),
        "proj_std_x_sqrt_d": summary.get("proj_std_x_sqrt_d"),
        "min_proj_std_x_sqrt_d": min(
            (r["proj_std_x_sqrt_d"] for r in train_rows if "proj_std_x_sqrt_d" in r),
            default=None,
        ),
        "feature_rankme": rankme_rows[-1]["feature_rankme"] if rankme_rows else None,
        "min_feature_rankme": min((r["feature_rankme"] for r in rankme_rows), default=None),
        "loss_curve": _subsample([(r["step"], round(r["loss"], 4)) for r in train_rows]),
        # The collapse monitor over the run: 0 is a collapsed projection, 1 a healthy one.
        "monitor_curve": _subsample(
            [
                (r["step"], round(r["proj_std_x_sqrt_d"], 3))
                for r in train_rows
                if "proj_std_x_sqrt_d" in r
            ]
        ),
        "rankme_curve": _subsample(
            [(r["step"], round(r["feature_rankme"], 2)) for r in rankme_rows]
        ),
    }


def _subsample(points: list, count: int = 10) -> list:
    """About ``count`` evenly spaced points of a curve, always including its last point."""
    picked = points[:: max(1, len(points) // count)]
    if points and picked[-1] != points[-1]:
        picked.append(points[-1])
    return picked


def _result(record: dict, key: str):
    return record.get(key)


def load_pixels(cifar: pathlib.Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Flattened pixels in [0, 1] and labels of one split, classes in the standard order."""
    from PIL import Image

    xs, ys = [], []
    for label, name in enumerate(CLASSES):
        for path in sorted((cifar / split / name).iterdir()):
            with Image.open(path) as im:
                xs.append(np.asarray(im.convert("RGB"), np.uint8).reshape(-1))
            ys.append(label)
    return np.stack(xs).astype(np.float32) / 255.0, np.asarray(ys)


def pixels_row(args, cifar: pathlib.Path) -> dict:
    """kNN (k = 200, cosine, T = 0.07) and the linear protocol on raw pixels."""
    out = args.root / "pixels" / "results.json"
    if out.exists():
        return json.loads(out.read_text())
    from ssljax import evaluate

    start = time.perf_counter()
    train = load_pixels(cifar, "train")
    test = load_pixels(cifar, "test")
    knn = evaluate.knn_protocol(train, test, num_classes=10, ks=(200,))
    linear = evaluate.linear_protocol(train, test, num_classes=10)
    result = {
        "row": "pixels",
        "method": "raw pixels",
        "knn_top1": knn["knn_top1_k200"],
        "linear_top1": linear["linear_top1"],
        "wall_time_min": round((time.perf_counter() - start) / 60, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    strict_json.write(out, result)
    return result


COLUMNS = (
    ("row", "{}"),
    ("epochs", "{}"),
    ("wall_time_min", "{}"),
    ("images_per_s", "{}"),
    ("knn_at_init", "{:.2%}"),
    ("knn_top1", "{:.2%}"),
    ("knn_gain", "{:+.2%}"),
    ("linear_top1", "{:.2%}"),
    ("final_loss", "{:.3f}"),
    ("min_proj_std_x_sqrt_d", "{:.2f}"),
    ("feature_rankme", "{:.1f}"),
    ("min_feature_rankme", "{:.1f}"),
)


def print_table(rows: list[dict]) -> None:
    """Prints the rows as a Markdown table (missing fields blank)."""
    print("| " + " | ".join(name for name, _ in COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for r in rows:
        cells = [fmt.format(r[k]) if r.get(k) is not None else "" for k, fmt in COLUMNS]
        print("| " + " | ".join(cells) + " |")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=pathlib.Path, help="workdirs and table (required to run)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"subset of {','.join(ROWS)}")
    parser.add_argument(
        "--shared-data",
        type=pathlib.Path,
        default=pathlib.Path(os.environ.get("SSLJAX_TEST_DATA", REPO.parent / "shared" / "data")),
    )
    parser.add_argument(
        "--override", action="append", default=[], help="extra --config.x=y for every run"
    )
    parser.add_argument(
        "--tag", default="", help="run the method rows as variants ROW.TAG (with --override)"
    )
    parser.add_argument("--print", action="store_true", help="only print the finished rows")
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="check that every row's config resolves with the overrides and print the commands "
        "that would run; train nothing",
    )
    parser.add_argument("--out", type=pathlib.Path, help="also write the table JSON here")
    parser.add_argument("--plot", type=pathlib.Path, help="draw the rows' curves into this PNG")
    parser.add_argument(
        "--table", type=pathlib.Path, help="a finished table's JSON: only --plot (and print) it"
    )
    args = parser.parse_args(argv)
    if args.root is None and args.table is None:
        parser.error("--root is required (or --table with --plot to draw a finished table)")
    return args


def plot_rows(rows: list[dict], meta: dict, path: pathlib.Path) -> None:
    """Draws the rows' curves side by side into ``path`` and says where."""
    from ssljax import plot

    cpu = meta.get("cpu", "")
    title = f"CIFAR-10 at the CPU budget ({meta.get('cpu_count', '?')}-core {cpu}, "
    title += f"{str(meta.get('date', ''))[:10]}): loss above, collapse monitor below"
    plot.plot_table(rows, path, title=title)
    print(f"Wrote {path}")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.table is not None:
        table = json.loads(args.table.read_text())
        print_table(table["rows"])
        if args.plot:
            plot_rows(table["rows"], table["meta"], args.plot)
        return
    rows = [r for r in args.rows.split(",") if r]
    if args.tag:
        if "/" in args.tag:
            raise SystemExit(f"--tag {args.tag!r}: no '/' (it names a workdir)")
        rows = [f"{r}.{args.tag}" for r in rows]
    for row in rows:
        split_row(row)
    args.root = args.root.expanduser().resolve()
    if args.dry_run:
        for row in rows:
            if row == "pixels":
                print("would compute: raw-pixel kNN and linear protocol (no training)")
            else:
                train_and_eval(row, args, args.root / "cifar10")
        print(f"dry run: the {len(rows)} row(s) resolve; nothing was trained or written.")
        return
    args.root.mkdir(parents=True, exist_ok=True)
    results = []
    cifar = None if args.print else unpack_cifar(args.root, args.shared_data)
    if cifar is not None:
        prepare(args.root, cifar)
    for row in rows:
        if args.print:
            try:
                done = (
                    json.loads((args.root / "pixels" / "results.json").read_text())
                    if row == "pixels"
                    else summarize_run(row, args.root / row)
                )
            except FileNotFoundError:
                continue
        else:
            done = pixels_row(args, cifar) if row == "pixels" else train_and_eval(row, args, cifar)
        results.append(done)
        print_table(results)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    meta = {**_timing.machine_info(), "commit": commit, "argv": sys.argv}
    table = {"meta": meta, "rows": results}
    for path in filter(None, (args.root / "table.json", args.out)):
        strict_json.write(path, table)
    print()
    print_table(results)
    if args.plot:
        plot_rows(results, meta, args.plot)


if __name__ == "__main__":
    main()
