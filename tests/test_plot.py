"""python -m ssljax.plot and the CIFAR table's curves (issue 20, "Plots")."""

import json
import pathlib
import struct
import subprocess
import sys

import pytest

pytest.importorskip(
    "matplotlib", reason="matplotlib is an optional extra: pip install 'ssljax[plot]'"
)

from ssljax import metric_writers, plot  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path: pathlib.Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _write_metrics(workdir: pathlib.Path) -> None:
    rows = [{"step": 0, "knn_top1": 0.5}]
    for step in range(1, 21):
        rows.append(
            {
                "step": step,
                "loss": 4.0 / step,
                "loss_byol": 4.0 / step,
                "lr": 0.1 * step,
                "tau": 0.99 + 0.0005 * step,
                "probe_accuracy": 0.05 * step,
                "proj_std_x_sqrt_d": 0.8,
                "feature_rankme": 30.0 if step % 10 == 0 else None,  # null between logging steps
            }
        )
    rows.append({"step": 20, "knn_top1": 0.7})
    rows.append({"step": 5, "loss": "nan"})  # a string NaN of an older file: left out
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_read_curves_skips_non_finite_and_sorts(tmp_path):
    _write_metrics(tmp_path)
    curves = metric_writers.read_curves(tmp_path / "metrics.jsonl")
    assert curves["knn_top1"] == [(0, 0.5), (20, 0.7)]
    assert curves["feature_rankme"] == [(10, 30.0), (20, 30.0)]
    assert curves["loss"][4] == (5, pytest.approx(0.8))
    assert len(curves["loss"]) == 20


def test_run_plot_is_a_png_with_every_panel(tmp_path):
    _write_metrics(tmp_path / "run")
    path, titles = plot.plot_run(tmp_path / "run")
    assert path == str(tmp_path / "run" / "curves.png")
    assert titles == list(plot.RUN_PANELS)
    assert titles == [
        "loss",
        "kNN top-1",
        "probe accuracy",
        "learning rate and tau",
        "collapse: proj_std x sqrt(d)",
        "collapse: feature RankMe",
    ]
    assert _png_size(pathlib.Path(path)) == (960, 520)  # 12 x 6.5 inches at 80 dpi
    assert 10_000 < pathlib.Path(path).stat().st_size < 200_000


def test_cli_writes_the_png_and_fails_in_one_line(tmp_path):
    _write_metrics(tmp_path / "run")
    out = tmp_path / "c.png"
    proc = subprocess.run(
        [sys.executable, "-m", "ssljax.plot", f"--workdir={tmp_path / 'run'}", f"--out={out}"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"Wrote {out}"
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    proc = subprocess.run(
        [sys.executable, "-m", "ssljax.plot", f"--workdir={tmp_path / 'none'}"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'none' / 'metrics.jsonl'} does not exist: --workdir must be a "
        "training run's."
    ]


def test_table_plot_of_the_committed_results(tmp_path):
    table = json.loads((REPO / "benchmarks/results/cifar_table_epyc.json").read_text())
    titles = plot.plot_table(table["rows"], tmp_path / "t.png", title="t")
    assert titles == ["vicreg", "barlow_twins", "random_target (byol)", "byol", "simsiam"]
    width, height = _png_size(tmp_path / "t.png")
    assert (width, height) == (int(80 * (2.6 * 5 + 0.6)), int(80 * 5.2))
    with pytest.raises(ValueError, match="loss_curve"):
        plot.plot_table([{"row": "pixels", "knn_top1": 0.3}], tmp_path / "u.png")


def test_readme_shows_the_committed_table_picture():
    png = REPO / "docs" / "cifar_table_epyc.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert png.stat().st_size < 200_000
    assert "(docs/cifar_table_epyc.png)" in (REPO / "README.md").read_text()
