"""Timing, memory and subprocess plumbing shared by step.py, peak_flops.py and torch_yardstick.py.

Every measured configuration runs in a fresh child process, for three reasons: XLA reads the
CPU device count only once, when its backend starts; the peak resident memory of a process
(``VmHWM``) only ever grows, so a per-configuration peak needs its own process; and glibc reads
its ``MALLOC_*`` tuning variables at start-up. The parent builds the child's environment
(:func:`child_env`), runs it (:func:`run_child`) and reads back one JSON line that the child
printed with :func:`emit_result`.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
DEVICE_FLAG = "--xla_force_host_platform_device_count"
RESULT_PREFIX = "BENCHMARK_RESULT "

# glibc malloc tuned not to return memory to the kernel: no mmap'd chunks (every large buffer
# would otherwise be a fresh mmap, page-faulted in again at each step) and no heap trimming.
# 'tuned' sets it through the environment of the child (read by glibc at start-up); 'mallopt'
# sets the same two parameters from inside the process with mallopt(3), as a library could
# without asking the user to change the environment (see :func:`apply_mallopt`).
MALLOC_SETTINGS: dict[str, dict[str, str]] = {
    "default": {},
    "tuned": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"},
    "mallopt": {},
}
# <malloc.h> parameter numbers of mallopt(3).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def apply_mallopt() -> bool:
    """Sets glibc's ``M_MMAP_MAX=0`` and ``M_TRIM_THRESHOLD=1e11`` in this process.

    The in-process equivalent of ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000``.

    Returns:
      True if both calls succeeded (False off glibc).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1
        return bool(libc.mallopt(_M_TRIM_THRESHOLD, 100_000_000_000) == 1 and ok)
    except (OSError, AttributeError):
        return False


def accelerator_present() -> bool:
    """Whether this host has an NVIDIA GPU or a TPU device file (no framework imported)."""
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/accel0", "/dev/vfio/0"))


def child_env(*, devices: int | None, malloc: str = "default") -> dict[str, str]:
    """The environment of a child process: its XLA CPU device count and malloc setting.

    Args:
      devices: XLA CPU devices to create (``None``: leave ``XLA_FLAGS`` without a count, i.e.
        XLA's single CPU device, unless the caller's environment already sets one).
      malloc: a key of :data:`MALLOC_SETTINGS`.

    Returns:
      A copy of ``os.environ`` with ``XLA_FLAGS``, ``JAX_PLATFORMS`` and the malloc variables
      set (and any inherited malloc variables removed when ``malloc`` is ``'default'``).

    Raises:
      ValueError: for an unknown ``malloc`` setting.
    """
    if malloc not in MALLOC_SETTINGS:
        raise ValueError(f"malloc must be one of {sorted(MALLOC_SETTINGS)}, got {malloc!r}.")
    env = dict(os.environ)
    for key in MALLOC_SETTINGS["tuned"]:
        env.pop(key, None)
    env.update(MALLOC_SETTINGS[malloc])
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_FLAG)]
    if devices is not None:
        flags.append(f"{DEVICE_FLAG}={devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    # On a CPU host, CPU only (no probing for absent TPU/GPU plugins); on an accelerator host
    # JAX picks the accelerator (set JAX_PLATFORMS=cpu to measure its CPU instead).
    if not accelerator_present():
        env.setdefault("JAX_PLATFORMS", "cpu")
    # The children print one result line; Python's buffering must not hold it back.
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_child(
    script: str | os.PathLike,
    spec: dict[str, Any],
    *,
    devices: int | None,
    malloc: str = "default",
    timeout: float = 3600.0,
) -> dict[str, Any]:
    """Runs ``python <script> --child '<spec as JSON>'`` and returns the dict it emitted.

    Args:
      script: the benchmark script; it must call :func:`emit_result` once in child mode.
      spec: what to measure, passed as JSON.
      devices: XLA CPU devices of the child (see :func:`child_env`).
      malloc: malloc setting of the child.
      timeout: seconds before the child is killed.

    Returns:
      The child's result, or ``{'error': ...}`` with the tail of its stderr if it failed.
    """
    cmd = [sys.executable, str(script), "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(
            cmd,
            env=child_env(devices=devices, malloc=malloc),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
    return {**spec, "error": f"exit code {proc.returncode}: {tail}"}


def emit_result(result: dict[str, Any]) -> None:
    """Prints the child's result as the one line :func:`run_child` looks for."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (``VmHWM``; ``ru_maxrss`` as a fallback)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_calls(
    fn: Callable[[], Any],
    *,
    steps: int,
    warmup: int,
    cpu_times: list[float] | None = None,
) -> list[float]:
    """Wall time of each of ``steps`` calls of ``fn`` after ``warmup`` untimed calls.

    ``fn`` must itself wait for its result (``jax.block_until_ready``), so that each time is
    the whole step and not its dispatch.

    Args:
      fn: the step.
      steps: timed calls.
      warmup: untimed calls first.
      cpu_times: if given, receives the CPU time (all threads of this process, user + system)
        of each timed call: the work done, which other processes on a shared machine change
        far less than the wall time.

    Returns:
      The wall time of each timed call, in seconds.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        if cpu_times is not None:
            cpu_times.append(time.process_time() - cpu_start)
    return times


def summarize(
    times: Sequence[float], batch: int, cpu_times: Sequence[float] = ()
) -> dict[str, float]:
    """Median, min and max step time (s), images/s at the median, and median CPU s per step."""
    median = statistics.median(times)
    out = {
        "steps_timed": len(times),
        "median_step_s": round(median, 4),
        "min_step_s": round(min(times), 4),
        "max_step_s": round(max(times), 4),
        "images_per_s": round(batch / median, 2),
    }
    if cpu_times:
        out["median_cpu_s_per_step"] = round(statistics.median(cpu_times), 3)
    return out


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` as a fallback)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def vector_extensions() -> list[str]:
    """The CPU's widest vector and matrix extensions (XLA:CPU's speed depends on them).

    The reference machines of this project differ by a factor of about 3 in convolution
    throughput between an AVX-512 (with AVX512-BF16) Xeon and an AVX2-only EPYC.
    """
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in flags]
    except OSError:
        pass
    return []


def machine_info() -> dict[str, Any]:
    """Date, host, CPU, core count and load average, for the ``meta`` of a results file."""
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "vector_extensions": vector_extensions(),
        "cpu_count": os.cpu_count(),
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
    }


def load_average() -> float:
    """The 1-minute load average (other processes competing for the cores)."""
    return round(os.getloadavg()[0], 2)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Prints ``rows`` as a fixed-width table of ``columns`` (missing values blank)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def write_results(
    path: str | os.PathLike,
    meta: dict[str, Any],
    results: list[dict[str, Any]],
    *,
    key: Sequence[str] | None = None,
) -> None:
    """Writes ``{'meta', 'results'}`` JSON, merging with an existing file by ``key``.

    With ``key``, results already in the file whose key fields differ from every new result's
    are kept (a subset run updates its rows and leaves the others), and each keeps its own
    ``date`` and ``loadavg``; without ``key`` the file is replaced.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = list(results)
    if key and path.exists():
        try:
            old = json.loads(path.read_text())["results"]
        except (ValueError, KeyError):
            old = []
        new_keys = {tuple(r.get(k) for k in key) for r in results}
        merged = [r for r in old if tuple(r.get(k) for k in key) not in new_keys] + merged
    path.write_text(json.dumps({"meta": meta, "results": merged}, indent=2) + "\n")
