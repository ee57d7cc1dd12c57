"""Where training scalars go: TensorBoard event files, a JSON-lines file, and the console.

TensorBoard's own event-file writer needs no TensorFlow (DESIGN.md, "Logging"). Only process 0
writes (the caller decides); every writer flushes on each write so a killed job loses nothing
it has reported.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from ssljax import strict_json


class MetricWriter:
    """Writes scalars to ``<logdir>/events.out.tfevents.*`` and ``<logdir>/metrics.jsonl``.

    Args:
      logdir: the folder for both files (created if missing).
      jsonl_name: file name of the JSON-lines copy.
      resume_step: the step a run resumes from. Rows written after it by the interrupted run
        (steps that are trained again now) are dropped from the JSON-lines file, and
        TensorBoard is told to discard them (a ``SessionLog.START`` event, the standard restart
        marker), so the history equals an uninterrupted run's. ``None`` keeps everything.
    """

    def __init__(
        self, logdir: str, jsonl_name: str = "metrics.jsonl", *, resume_step: int | None = None
    ):
        os.makedirs(logdir, exist_ok=True)
        path = os.path.join(logdir, jsonl_name)
        if resume_step is not None:
            truncate_jsonl(path, resume_step)
        self._events = EventFileWriter(logdir)
        if resume_step is not None:
            # TensorBoard purges every earlier event of step >= this one when it reads it.
            self._events.add_event(
                event_pb2.Event(
                    wall_time=time.time(),
                    step=resume_step + 1,
                    session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
                )
            )
            self._events.flush()
        self._jsonl = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Writes one row of scalars at ``step`` to both files.

        Args:
          step: the global training step.
          scalars: name -> value; values are converted to Python floats.
        """
        values = {k: float(v) for k, v in scalars.items()}
        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in values.items()]
        )
        self._events.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
        self._events.flush()
        # NaN/inf are written as null so the file stays strict JSON.
        self._jsonl.write(strict_json.dumps({"step": step, **values}) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        """Flushes and closes both files."""
        self._events.close()
        self._jsonl.close()


def truncate_jsonl(path: str, last_step: int) -> int:
    """Drops the rows of ``path`` whose ``step`` is after ``last_step``; returns how many.

    The file is replaced atomically (a kill during the rewrite leaves the old one). A torn last
    line (a kill during a write) is dropped too.
    """
    if not os.path.exists(path):
        return 0
    kept, dropped = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                dropped += 1
                continue
            if row.get("step", 0) <= last_step:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return dropped


class ProgressBar:
    """A one-line console progress report with images/s and ETA.

    On a terminal the line is redrawn in place; otherwise (log files, CI) one line is printed
    per update so the log stays readable.

    Args:
      total_steps: the step the run ends at.
      start_step: the step the run starts (or resumes) from.
      images_per_step: global batch size, to convert steps/s to images/s.
      stream: where to write (default stderr).
    """

    def __init__(self, total_steps: int, start_step: int, images_per_step: int, stream=None):
        self.total_steps = total_steps
        self.images_per_step = images_per_step
        self.stream = stream or sys.stderr
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_step = start_step
        self._last_time = time.perf_counter()

    def update(
        self, step: int, scalars: Mapping[str, float], input_share: float | None = None
    ) -> float:
        """Reports progress at ``step``; returns the images/s since the previous update.

        ``input_share``, when given, is shown as ``input N%``: the share of wall time the loop
        waited for its next batch (an idle accelerator).
        """
        now = time.perf_counter()
        steps = max(step - self._last_step, 0)
        elapsed = max(now - self._last_time, 1e-9)
        images_per_sec = steps * self.images_per_step / elapsed
        eta = (self.total_steps - step) * elapsed / steps if steps else float("nan")
        self._last_step, self._last_time = step, now
        shown = " ".join(f"{k}={float(v):.4g}" for k, v in scalars.items())
        line = (
            f"step {step}/{self.total_steps} ({100.0 * step / self.total_steps:5.1f}%) "
            f"{images_per_sec:8.1f} img/s ETA {_format_seconds(eta)} "
            + ("" if input_share is None else f"input {100 * input_share:.0f}% ")
            + shown
        )
        if self._tty:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        return images_per_sec

    def close(self) -> None:
        """Ends the in-place line on a terminal."""
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()


def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def read_curves(path: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Reads a metrics JSON-lines file into ``{name: [(step, value), ...]}`` sorted by step.

    Non-finite values (``null``, or the strings ``"nan"`` of older files) are left out. A
    resumed run repeats the steps after its last checkpoint; the later value of a step wins.

    Args:
      path: a ``metrics.jsonl`` file.

    Returns:
      The curves by scalar name.
    """
    by_name: dict[str, dict[int, float]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            step = int(row.pop("step"))
            for name, value in row.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    by_name.setdefault(name, {})[step] = float(value)
    return {name: sorted(points.items()) for name, points in by_name.items()}
