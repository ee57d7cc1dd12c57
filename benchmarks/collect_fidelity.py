"""Collects the equal-budget runs of ``benchmarks/gpu_session.sh`` into one table and JSON.

    python benchmarks/collect_fidelity.py WORKDIR/fid --out fidelity.json

``WORKDIR/fid`` holds ssljax workdirs named ``ssljax.<method>.s<seed>`` (and variant rows
``variant.<name>.s<seed>``), each with ``summary.json`` and ``metrics.jsonl``, and the PyTorch
reference's results ``torch.<method>.s<seed>.json``. Each row: kNN top-1 at initialisation (the
run's own step-0 monitor, and the BN-calibrated one when recorded) and at the end, the gain,
the loss and collapse-monitor curves, images/s; then per (implementation, method) the mean over
seeds and the ssljax - reference difference.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
from typing import Any

CURVES = ("loss", "proj_std", "feature_rankme", "input_wait_share")


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def ssljax_row(workdir: pathlib.Path) -> dict[str, Any]:
    """One ssljax run: its summary and the curves of its metrics."""
    kind, name, seed = workdir.name.rsplit(".", 2)[0], *workdir.name.rsplit(".", 2)[1:]
    row: dict[str, Any] = {
        "impl": "ssljax" if kind == "ssljax" else f"ssljax:{kind}",
        "method": name,
        "seed": int(seed.lstrip("s")),
    }
    summary = workdir / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        for key in (
            "step",
            "knn_top1",
            "knn_top1_init",
            "knn_top1_init_calibrated",
            "images_per_sec_overall",
            "wall_time_s",
            "loss",
        ):
            if key in s:
                row[key] = _finite(s[key])
    curves: dict[str, list] = {k: [] for k in CURVES}
    metrics = workdir / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            r = json.loads(line)
            for k in CURVES:
                if _finite(r.get(k)) is not None:
                    curves[k].append([r["step"], round(float(r[k]), 5)])
    row["curves"] = {k: v for k, v in curves.items() if v}
    return row


def torch_row(path: pathlib.Path) -> dict[str, Any]:
    """One PyTorch-reference run, from the JSON it wrote."""
    r = json.loads(path.read_text())
    _, name, seed = path.stem.rsplit(".", 2)
    row = {"impl": "torch", "method": name, "seed": int(seed.lstrip("s"))}
    for key, value in r.items():
        if key in row:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            row[key] = _finite(value)
        elif key in ("curve", "curves"):
            row[key] = value
    return row


def _gain(row: dict[str, Any]) -> float | None:
    end = row.get("knn_top1")
    init = row.get("knn_top1_init_calibrated") or row.get("knn_top1_init")
    return None if end is None or init is None else end - init


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fid_dir")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    fid = pathlib.Path(args.fid_dir)
    rows = [ssljax_row(d) for d in sorted(fid.iterdir()) if d.is_dir()]
    rows += [torch_row(p) for p in sorted(fid.glob("torch.*.json"))]
    print(
        f"{'impl':<22}{'method':<14}{'seed':>5}{'kNN init':>10}{'kNN end':>10}{'gain':>8}"
        f"{'img/s':>9}"
    )
    for r in rows:

        def pct(x):
            return "" if x is None else f"{100 * x:.2f}"

        init = r.get("knn_top1_init_calibrated") or r.get("knn_top1_init")
        ips = r.get("images_per_sec_overall") or r.get("images_per_sec")
        print(
            f"{r['impl']:<22}{r['method']:<14}{r['seed']:>5}{pct(init):>10}"
            f"{pct(r.get('knn_top1')):>10}{pct(_gain(r)):>8}"
            f"{'' if ips is None else f'{ips:.0f}':>9}"
        )
    groups: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if r.get("knn_top1") is not None:
            groups.setdefault((r["impl"], r["method"]), []).append(r["knn_top1"])
    means = {k: statistics.mean(v) for k, v in groups.items()}
    print("\nmean kNN over seeds (ssljax - torch):")
    for (impl, method), mean in sorted(means.items()):
        ref = means.get(("torch", method))
        diff = "" if impl == "torch" or ref is None else f"  diff {100 * (mean - ref):+.2f}"
        print(
            f"  {impl:<22}{method:<14}{100 * mean:6.2f}% over {len(groups[(impl, method)])}"
            f" seed(s){diff}"
        )
    pathlib.Path(args.out).write_text(json.dumps({"rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
