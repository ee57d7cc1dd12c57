"""Collects the equal-budget runs of ``benchmarks/gpu_session.sh`` into one table and JSON.

    python benchmarks/collect_fidelity.py WORKDIR/fid --out fidelity.json [--plot curves.png]

``WORKDIR/fid`` holds ssljax workdirs named ``ssljax.<method>.s<seed>`` (and variant rows
``<kind>.<name>.s<seed>``, e.g. ``frozen.byol.s0``), each with ``summary.json``,
``metrics.jsonl`` and, once ``python -m ssljax.evaluate --protocol=linear`` ran,
``eval_linear.json``; and the PyTorch reference's results ``torch.<method>.s<seed>.json`` (or
``torch<anything>.<method>.s<seed>.json``: a reference run started from ssljax's initial
weights, ``--init_from_ssljax``, is the group ``torch:ssljax_init`` whatever its name, and one
also on ssljax's inputs, ``--inputs_from_ssljax``, the group ``torch:ssljax_init+inputs``; one
with another CPU thread count than the group's others, a rounding-only control, gets
``@<n>thread(s)`` appended). Each
row: kNN top-1 at initialisation (the run's own step-0 monitor, and the BN-calibrated one when
recorded) and at the end, the gain, the linear probe, the collapse monitor's lowest and last
value, images/s, and the loss and monitor curves; then per (implementation, method) the means
over seeds with the seed spread, and the ssljax - reference difference of the means; and the
per-seed (paired) differences between groups that ran the same seeds, with their spread.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
from typing import Any

from ssljax.metric_writers import read_curves

CURVES = ("loss", "proj_std", "proj_std_x_sqrt_d", "feature_rankme", "input_wait_share")
MONITOR = "proj_std_x_sqrt_d"  # 1 healthy, 0 collapsed (ssljax.diagnostics.normalized_std)


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
    metrics = workdir / "metrics.jsonl"
    # ssljax's one reader of metrics.jsonl (a resumed run's repeated steps: the later wins).
    curves = read_curves(metrics) if metrics.exists() else {}
    row["curves"] = {k: [[s, round(v, 5)] for s, v in curves[k]] for k in CURVES if k in curves}
    linear = workdir / "eval_linear.json"
    if linear.exists():
        row["linear_top1"] = _finite(json.loads(linear.read_text()).get("linear_top1"))
    _add_monitor(row, [v for _, v in row["curves"].get(MONITOR, [])])
    return row


def _add_monitor(row: dict[str, Any], values: list) -> None:
    """The collapse monitor's lowest and last logged value, where it was logged."""
    values = [v for v in (_finite(x) for x in values) if v is not None]
    if values:
        row["monitor_min"], row["monitor_end"] = min(values), values[-1]


def torch_row(path: pathlib.Path) -> dict[str, Any]:
    """One PyTorch-reference run, from the JSON it wrote."""
    r = json.loads(path.read_text())
    _, name, seed = path.stem.rsplit(".", 2)
    # A reference started from ssljax's initial weights (--init_from_ssljax), or also trained
    # on ssljax's inputs (--inputs_from_ssljax), is a group of its own.
    taken = [
        part
        for part, field in (("init", "initial_weights"), ("inputs", "inputs"))
        if r.get(field, "torch") == "ssljax"
    ]
    impl = "torch:ssljax_" + "+".join(taken) if taken else "torch"
    row = {"impl": impl, "method": name, "seed": int(seed.lstrip("s"))}
    for key, value in r.items():
        if key in row:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            row[key] = _finite(value)
        elif key in ("curve", "curves"):
            row[key] = value
    curve = r.get("curve") or {}
    _add_monitor(row, curve.get(MONITOR, []) if isinstance(curve, dict) else [])
    return row


def split_by_threads(rows: list[dict[str, Any]]) -> None:
    """Gives reference runs with an unusual CPU thread count a group of their own, in place.

    The same run with another ``--threads`` differs from it in float32 rounding alone (other
    reduction partitions), which makes it a control, not a repeat: within each
    (implementation, method) whose reference runs used several thread counts, the most common
    count (the larger on a tie) keeps the group's name and the others become
    ``<impl>@<n>thread(s)``.
    """
    counts: dict[tuple[str, str], dict[int, int]] = {}
    for r in rows:
        if r["impl"].startswith("torch") and r.get("threads"):
            c = counts.setdefault((r["impl"], r["method"]), {})
            c[r["threads"]] = c.get(r["threads"], 0) + 1
    usual = {g: max(c, key=lambda n: (c[n], n)) for g, c in counts.items() if len(c) > 1}
    for r in rows:
        n = r.get("threads")
        if (r["impl"], r["method"]) in usual and n != usual[r["impl"], r["method"]]:
            r["impl"] += f"@{int(n)}thread" + ("s" if n != 1 else "")


def _gain(row: dict[str, Any]) -> float | None:
    end = row.get("knn_top1")
    init = row.get("knn_top1_init_calibrated") or row.get("knn_top1_init")
    return None if end is None or init is None else end - init


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (implementation, method) with a final kNN: the means over seeds and the spread.

    Returns:
      One dict per group: ``impl``, ``method``, ``seeds``, ``knn`` (mean), ``knn_spread``
      (max - min over seeds), ``gain`` and ``linear`` (means, None where missing; the linear
      probe's seeds in ``linear_seeds``) and, for
      every implementation but the reference, ``knn_diff``: its mean minus the reference's
      (``torch``) for the same method, None without one.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("knn_top1") is not None:
            groups.setdefault((r["impl"], r["method"]), []).append(r)
    out = []
    for (impl, method), members in sorted(groups.items()):
        knn = [r["knn_top1"] for r in members]
        out.append(
            {
                "impl": impl,
                "method": method,
                "seeds": sorted(r["seed"] for r in members),
                "knn": statistics.mean(knn),
                "knn_spread": max(knn) - min(knn),
                "gain": _mean([_gain(r) for r in members]),
                "linear": _mean([r.get("linear_top1") for r in members]),
                "linear_seeds": sorted(r["seed"] for r in members if r.get("linear_top1")),
            }
        )
    reference = {g["method"]: g["knn"] for g in out if g["impl"] == "torch"}
    for g in out:
        if g["impl"] != "torch":
            ref = reference.get(g["method"])
            g["knn_diff"] = None if ref is None else g["knn"] - ref
    return out


def _smoothed(curve: list, window: int) -> tuple[list, list]:
    """Steps and the running mean over the last ``window`` logged values (both sides alike)."""
    steps, values = [], []
    for i in range(len(curve)):
        part = [v for _, v in curve[max(0, i - window + 1) : i + 1]]
        steps.append(curve[i][0])
        values.append(sum(part) / len(part))
    return steps, values


def _curve(row: dict[str, Any], key: str) -> list:
    """``[[step, value], ...]`` of ``key`` for either implementation's row."""
    if row["impl"] == "torch":
        c = row.get("curve") or {}
        pairs = zip(c.get("step", []), c.get(key, []), strict=False)
        return [[s, v] for s, v in pairs if _finite(v) is not None]
    return row.get("curves", {}).get(key, [])


def plot(rows: list[dict[str, Any]], out: str, *, title: str = "", window: int = 20) -> None:
    """One column per method: loss (top) and collapse monitor (bottom) of every run.

    ssljax's runs are solid lines, the reference's dashed, one colour per seed; each curve is
    a running mean over ``window`` logged steps.
    """
    from matplotlib.figure import Figure

    methods = sorted({r["method"] for r in rows if _curve(r, "loss")})
    if not methods:
        raise SystemExit("no run has a loss curve to plot")
    fig = Figure(figsize=(3.2 * len(methods) + 0.6, 5.6), layout="constrained")
    axes = fig.subplots(2, len(methods), squeeze=False)
    if title:
        fig.suptitle(title)
    for col, method in enumerate(methods):
        for r in rows:
            if r["method"] != method or r["impl"] not in ("ssljax", "torch"):
                continue
            style = {"linestyle": "-" if r["impl"] == "ssljax" else "--", "linewidth": 1.0}
            style["color"] = f"C{r['seed']}"
            label = f"{r['impl']} s{r['seed']}"
            for ax, key in ((axes[0][col], "loss"), (axes[1][col], MONITOR)):
                curve = _curve(r, key)
                if curve:
                    ax.plot(*_smoothed(curve, window), label=label, **style)
        axes[0][col].set_title(method)
        axes[1][col].set_ylim(0.0, 1.05)
        axes[1][col].set_xlabel("step")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
        axes[0][col].legend(fontsize="small")
    axes[0][0].set_ylabel(f"loss (running mean of {window})")
    axes[1][0].set_ylabel("proj_std x sqrt(d)")
    fig.savefig(out, dpi=80)


def _paired_stats(diffs: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation and paired t (mean / (sd / sqrt(n))) of ``diffs``."""
    n = len(diffs)
    mean = statistics.mean(diffs)
    sd = statistics.stdev(diffs) if n > 1 else None
    # No t where the differences are all equal (to rounding): it would be 0 / 0 or huge.
    t = mean / (sd / math.sqrt(n)) if sd is not None and sd > 1e-9 else None
    return {"mean": mean, "sd": sd, "t": t, "n": n}


def _impl_order(impl: str) -> tuple[int, str]:
    # ssljax's groups first, the references started from other weights next, the plain
    # reference last: every pair is then "first - second" in that order.
    return (2 if impl == "torch" else 1 if impl.startswith("torch") else 0, impl)


def paired(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-seed differences between two groups of the same method run on the same seeds.

    A seed fixes what the two runs share (ssljax's initial weights for ``ssljax`` and
    ``torch:ssljax_init``, its inputs too with ``torch:ssljax_init+inputs``; the reference's
    data order and augmentation draws for ``torch`` and ``torch:ssljax_init``), so the
    difference of a pair removes what they share from the comparison, and the spread of the
    per-seed differences is what is left.

    Returns:
      For each method and each two groups ``a``, ``b`` (``b`` a reference group, ``a`` before
      it: ssljax's, then references from other initial weights, then ``torch``) with common
      seeds: ``method``, ``a``, ``b``, ``seeds`` and, for ``knn`` (end), ``init`` and ``gain``,
      the per-seed differences ``a - b`` (``*_diffs``) with their ``mean``, ``sd`` and paired
      ``t`` (None with a single seed).
    """
    by_group: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for r in rows:
        if r.get("knn_top1") is not None:
            by_group.setdefault((r["method"], r["impl"]), {})[r["seed"]] = r
    out = []
    methods = sorted({m for m, _ in by_group})
    for method in methods:
        impls = sorted((i for m, i in by_group if m == method), key=_impl_order)
        for ia, a in enumerate(impls):
            for b in impls[ia + 1 :]:
                if not b.startswith("torch"):
                    continue
                ra, rb = by_group[method, a], by_group[method, b]
                seeds = sorted(set(ra) & set(rb))
                if not seeds:
                    continue
                entry: dict[str, Any] = {"method": method, "a": a, "b": b, "seeds": seeds}
                for key, get in (
                    ("knn", lambda r: r.get("knn_top1")),
                    ("init", lambda r: r.get("knn_top1_init_calibrated") or r.get("knn_top1_init")),
                    ("gain", _gain),
                ):
                    pairs = [(get(ra[s]), get(rb[s])) for s in seeds]
                    diffs = [x - y for x, y in pairs if x is not None and y is not None]
                    if diffs:
                        entry[f"{key}_diffs"] = diffs
                        entry[key] = _paired_stats(diffs)
                out.append(entry)
    return out


def _fmt_paired(stats: dict[str, Any] | None) -> str:
    if stats is None:
        return "-"
    sd = "" if stats["sd"] is None else f" sd {100 * stats['sd']:.2f}"
    t = "" if stats["t"] is None else f" t {stats['t']:+.1f} ({stats['n'] - 1} df)"
    return f"{100 * stats['mean']:+.2f}{sd}{t}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fid_dir")
    parser.add_argument("--out", required=True)
    parser.add_argument("--plot", help="also draw the loss and monitor curves to this PNG")
    parser.add_argument("--title", default="", help="the plot's title")
    args = parser.parse_args(argv)
    fid = pathlib.Path(args.fid_dir)
    rows = [ssljax_row(d) for d in sorted(fid.iterdir()) if d.is_dir()]
    rows += [torch_row(p) for p in sorted(fid.glob("torch*.json"))]
    split_by_threads(rows)
    rows.sort(key=lambda r: (r["method"], _impl_order(r["impl"]), r["seed"]))
    w = max([14] + [len(r["method"]) + 2 for r in rows])  # the method column fits its names
    wi = max([16] + [len(r["impl"]) + 2 for r in rows])
    print(
        f"{'impl':<{wi}}{'method':<{w}}{'seed':>5}{'kNN init':>10}{'kNN end':>10}{'gain':>8}"
        f"{'linear':>9}{'monitor min/end':>17}{'img/s':>7}"
    )
    for r in rows:
        init = r.get("knn_top1_init_calibrated") or r.get("knn_top1_init")
        ips = r.get("images_per_sec_overall") or r.get("images_per_sec")
        monitor = f"{r['monitor_min']:.2f} / {r['monitor_end']:.2f}" if "monitor_min" in r else ""
        print(
            f"{r['impl']:<{wi}}{r['method']:<{w}}{r['seed']:>5}{_pct(init):>10}"
            f"{_pct(r.get('knn_top1')):>10}{_pct(_gain(r)):>8}{_pct(r.get('linear_top1')):>9}"
            f"{monitor:>17}{'' if ips is None else f'{ips:.0f}':>7}"
        )
    summary = summarize(rows)
    print("\nmeans over seeds (spread: max - min over seeds; diff: ssljax - torch means):")
    for g in summary:
        diff = "" if g.get("knn_diff") is None else f"  kNN diff {100 * g['knn_diff']:+.2f}"
        linear = (
            ""
            if g.get("linear") is None
            else f", linear {_pct(g['linear'])}% (seeds {g['linear_seeds']})"
        )
        print(
            f"  {g['impl']:<{wi}}{g['method']:<{w}}kNN {_pct(g['knn'])}% "
            f"(spread {_pct(g['knn_spread'])}, gain {_pct(g['gain'])}){linear}"
            f" over seeds {g['seeds']}{diff}"
        )
    pairs = paired(rows)
    if pairs:
        print("\nper-seed differences a - b on the seeds both ran (mean, sd, paired t):")
        for p in pairs:
            print(
                f"  {p['method']}: {p['a']} - {p['b']} over seeds {p['seeds']}: kNN end "
                f"{_fmt_paired(p.get('knn'))}; at init {_fmt_paired(p.get('init'))}; gain "
                f"{_fmt_paired(p.get('gain'))}"
            )
    pathlib.Path(args.out).write_text(
        json.dumps({"rows": rows, "means": summary, "paired": pairs}, indent=1) + "\n"
    )
    if args.plot:
        plot(rows, args.plot, title=args.title)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
