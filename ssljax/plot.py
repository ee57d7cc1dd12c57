"""Curves of a run as a PNG: ``python -m ssljax.plot --workdir=DIR [--out=PATH]``.

Reads ``DIR/metrics.jsonl`` (the scalars the training loop writes) and draws one panel per
quantity a user watches: the loss (with its terms), the kNN monitor, the online probe's
accuracy, the learning rate with tau, and the two collapse monitors (``proj_std_x_sqrt_d``:
1 healthy, 0 collapsed; ``feature_rankme``: the effective rank of the features). The figure
is written to ``DIR/curves.png`` unless ``--out`` says otherwise.

:func:`plot_table` draws the CIFAR-10 table's rows (``benchmarks/cifar_table.py --plot``):
one column per row, its loss above its collapse monitor.

matplotlib is an optional dependency: ``pip install 'ssljax[plot]'``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ssljax.metric_writers import read_curves

# Panel titles of plot_run, in order (tests and the README refer to them).
RUN_PANELS = (
    "loss",
    "kNN top-1",
    "probe accuracy",
    "learning rate and tau",
    "collapse: proj_std x sqrt(d)",
    "collapse: feature RankMe",
)
INSTALL_HINT = "matplotlib is not installed: pip install 'ssljax[plot]' (or pip install matplotlib)"


def _figure(width: float, height: float):
    """A matplotlib Figure without pyplot (no global state, no GUI backend)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return Figure(figsize=(width, height), layout="constrained")


def _draw(ax, curve: Sequence[tuple[int, float]], label: str, **style: Any) -> bool:
    if not curve:
        return False
    steps, values = zip(*curve, strict=True)
    ax.plot(steps, values, label=label, marker="o" if len(curve) <= 3 else None, **style)
    return True


def _finish(ax, title: str, drew: bool, legend: bool = False) -> None:
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if not drew:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    elif legend:
        ax.legend(fontsize="small")


def plot_run(
    workdir: str | os.PathLike, out: str | os.PathLike | None = None, *, dpi: int = 80
) -> tuple[str, list[str]]:
    """Draws a run's curves from ``workdir/metrics.jsonl`` into a PNG.

    Args:
      workdir: a training run's folder.
      out: the PNG to write (default ``workdir/curves.png``).
      dpi: resolution (80: a 12x6.5-inch figure of about 100 KB).

    Returns:
      The PNG's path and the panels' titles (:data:`RUN_PANELS`).

    Raises:
      FileNotFoundError: if the workdir has no ``metrics.jsonl``.
      ImportError: if matplotlib is not installed (the message says how to install it).
    """
    workdir = os.fspath(workdir)
    metrics = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(metrics):
        raise FileNotFoundError(f"{metrics} does not exist: --workdir must be a training run's.")
    curves = read_curves(metrics)
    fig = _figure(12, 6.5)
    axes = fig.subplots(2, 3).ravel()
    fig.suptitle(f"{workdir} ({max((s for c in curves.values() for s, _ in c), default=0)} steps)")

    ax = axes[0]
    drew = _draw(ax, curves.get("loss", []), "loss", color="black")
    terms = sorted(k for k in curves if k.startswith("loss_"))
    # A method with one loss term logs it twice (loss == loss_byol): draw terms only if several.
    if len(terms) > 1:
        for name in terms:
            _draw(ax, curves[name], name.removeprefix("loss_"), linestyle="--", linewidth=1)
    _finish(ax, RUN_PANELS[0], drew, legend=len(terms) > 1)

    knn = [(s, 100 * v) for s, v in curves.get("knn_top1", [])]
    drew = _draw(axes[1], knn, "kNN top-1", color="tab:green")
    axes[1].set_ylabel("%")
    _finish(axes[1], RUN_PANELS[1], drew)

    probe = [(s, 100 * v) for s, v in curves.get("probe_accuracy", [])]
    drew = _draw(axes[2], probe, "probe", color="tab:purple", linewidth=1)
    axes[2].set_ylabel("% of the training batch")
    _finish(axes[2], RUN_PANELS[2], drew)

    ax = axes[3]
    drew = _draw(ax, curves.get("lr", []), "learning rate", color="tab:blue")
    ax.set_ylabel("learning rate")
    if curves.get("tau"):
        twin = ax.twinx()
        _draw(twin, curves["tau"], "tau", color="tab:orange")
        twin.set_ylabel("tau", color="tab:orange")
    _finish(ax, RUN_PANELS[3], drew)

    drew = _draw(axes[4], curves.get("proj_std_x_sqrt_d", []), "proj_std", color="tab:red")
    axes[4].axhline(1.0, color="gray", linewidth=0.8, linestyle=":")
    _finish(axes[4], RUN_PANELS[4], drew)

    drew = _draw(axes[5], curves.get("feature_rankme", []), "RankMe", color="tab:brown")
    _finish(axes[5], RUN_PANELS[5], drew)

    out = os.fspath(out) if out else os.path.join(workdir, "curves.png")
    fig.savefig(out, dpi=dpi)
    return out, [ax.get_title() for ax in axes]


def plot_table(
    rows: Iterable[Mapping[str, Any]],
    out: str | os.PathLike,
    *,
    title: str = "",
    dpi: int = 80,
) -> list[str]:
    """Draws the loss and collapse-monitor curves of a results table, one column per row.

    Args:
      rows: rows of ``benchmarks/cifar_table.py``'s JSON (``row``, ``method``,
        ``loss_curve`` and ``monitor_curve`` as ``[[step, value], ...]``, ``knn_at_init``,
        ``knn_top1``, ``linear_top1``); rows without curves (raw pixels) are left out.
      out: the PNG to write.
      title: the figure's title (the machine and date, say).
      dpi: resolution.

    Returns:
      The column titles, one per row drawn.

    Raises:
      ValueError: if no row has curves.
      ImportError: if matplotlib is not installed.
    """
    rows = [r for r in rows if r.get("loss_curve")]
    if not rows:
        raise ValueError("No row of the table has a loss_curve to draw.")
    fig = _figure(2.6 * len(rows) + 0.6, 5.2)
    axes = fig.subplots(2, len(rows), squeeze=False)
    if title:
        fig.suptitle(title)
    titles = []
    for col, row in enumerate(rows):
        name = row["row"] if row["row"] == row.get("method") else f"{row['row']} ({row['method']})"
        top, bottom = axes[0][col], axes[1][col]
        _draw(top, [tuple(p) for p in row["loss_curve"]], "loss", color="black")
        top.set_title(name)
        top.grid(alpha=0.3)
        _draw(bottom, [tuple(p) for p in row.get("monitor_curve") or []], "monitor")
        bottom.axhline(1.0, color="gray", linewidth=0.8, linestyle=":")
        bottom.set_ylim(0.0, 1.05)
        bottom.grid(alpha=0.3)
        bottom.set_xlabel("step")
        bottom.set_title(_scores(row), fontsize="small")
        titles.append(name)
    axes[0][0].set_ylabel("loss (the method's own)")
    axes[1][0].set_ylabel("proj_std x sqrt(d)")
    fig.savefig(os.fspath(out), dpi=dpi)
    return titles


def _scores(row: Mapping[str, Any]) -> str:
    parts = []
    if row.get("knn_top1") is not None:
        init = row.get("knn_at_init")
        start = f"{100 * init:.1f} -> " if init is not None else ""
        parts.append(f"kNN {start}{100 * row['knn_top1']:.1f}%")
    if row.get("linear_top1") is not None:
        parts.append(f"linear {100 * row['linear_top1']:.1f}%")
    return ", ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m ssljax.plot",
        description="Writes a PNG of a run's curves (loss, kNN, probe, lr/tau, collapse "
        "monitors) from its metrics.jsonl.",
        epilog="example: python -m ssljax.plot --workdir=/tmp/ssljax_digits",
    )
    parser.add_argument("--workdir", required=True, help="a training run's folder")
    parser.add_argument("--out", help="the PNG to write (default: WORKDIR/curves.png)")
    args = parser.parse_args(argv)
    from ssljax import paths

    try:
        path, _ = plot_run(paths.expand(args.workdir), paths.expand(args.out))
    except (FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
