"""Strict JSON everywhere (issue 20, item 6) and the finished run's summary kept (item 5)."""

import json
import math

import numpy as np
import pytest

from ssljax import metric_writers, strict_json, train


def _strict_load(text: str):
    def reject(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=reject)


def test_non_finite_values_become_null_at_any_depth():
    value = {
        "a": float("nan"),
        "b": [1.5, float("inf"), {"c": -float("inf")}],
        "d": np.float32("nan"),
        "e": np.array([1.0, np.nan]),
        "f": np.int64(3),
        "g": "nan",
    }
    text = strict_json.dumps(value)
    assert _strict_load(text) == {
        "a": None,
        "b": [1.5, None, {"c": None}],
        "d": None,
        "e": [1.0, None],
        "f": 3,
        "g": "nan",
    }


def test_metric_writer_rows_are_strict_json(tmp_path):
    writer = metric_writers.MetricWriter(str(tmp_path))
    writer.write_scalars(3, {"loss": 0.5, "feature_rankme": float("nan"), "x": float("inf")})
    writer.close()
    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert _strict_load(line) == {"step": 3, "loss": 0.5, "feature_rankme": None, "x": None}


def test_summary_after_a_stop_is_strict_json(tmp_path):
    train.write_summary(str(tmp_path), 4, 4, {"loss": 1.0, "feature_rankme": math.nan})
    summary = _strict_load((tmp_path / "summary.json").read_text())
    assert summary == {"step": 4, "loss": 1.0, "feature_rankme": None}


def test_rerun_of_a_finished_job_keeps_its_summary(tmp_path):
    finished = {"knn_top1_init": 0.94, "knn_top1": 0.9533, "loss": 0.26, "wall_time_s": 129.0}
    assert train.write_summary(str(tmp_path), 440, 440, finished)["knn_top1"] == 0.9533
    before = (tmp_path / "summary.json").read_text()
    # A rerun trains no step: 4 fields and a wall time of a millisecond must not replace it.
    kept = train.write_summary(str(tmp_path), 440, 0, {"wall_time_s": 0.001, "knn_top1": 0.9})
    assert kept is None
    assert (tmp_path / "summary.json").read_text() == before


def test_resumed_run_keeps_knn_at_init_and_a_history(tmp_path):
    first = {"knn_top1_init": 0.94, "loss": 2.0, "wall_time_s": 50.0, "preempted": 1.0}
    train.write_summary(str(tmp_path), 200, 200, first)
    second = {"knn_top1": 0.95, "loss": 0.3, "wall_time_s": 70.0, "preempted": 0.0}
    written = train.write_summary(str(tmp_path), 440, 240, second)
    summary = _strict_load((tmp_path / "summary.json").read_text())
    assert summary["step"] == 440 and summary["loss"] == pytest.approx(0.3)
    assert summary["knn_top1_init"] == pytest.approx(0.94)
    assert summary["history"] == [{"step": 200, **first}]
    assert "(94.00% at initialisation, +1.0 points)" in train._summary_line(
        440, 240, written, str(tmp_path)
    )
