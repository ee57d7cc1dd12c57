"""How many loader worker processes a run gets when ``data.num_workers = -1`` (auto).

Why automatic: on an accelerator the train step of a CIFAR ResNet-18 consumes ~12,000 images/s
(one NVIDIA H200), and decoding JPEGs in one Python thread gives ~5,000; the preset run with
0 workers kept that GPU 23-54% busy, 12 workers kept it 96-100% busy. Nobody should have to
know that to get the speed.

The rule:

* in-memory datasets (``digits``) have nothing to decode: 0;
* on a CPU backend every core already runs the train step (XLA:CPU uses them all), so worker
  processes would only take cores from it: 0 (the device-prefetch thread decodes, overlapped
  with the step);
* on GPU/TPU: the cores this process may use (its CPU affinity, divided among the processes
  of this host) minus one for the training process itself, at least 1 and at most
  ``MAX_WORKERS``.

Processes per host come from the launcher's variables (``SLURM_NTASKS_PER_NODE``,
``LOCAL_WORLD_SIZE``, ``OMPI_COMM_WORLD_LOCAL_SIZE``), else 1; a job that runs several
processes per host without them should set ``data.num_workers`` explicitly.
"""

from __future__ import annotations

import os

AUTO = -1
# Beyond this the loader's own bookkeeping and the host's memory bandwidth dominate; 12 workers
# already fed an H200 at 12,800 images/s of CIFAR-10.
MAX_WORKERS = 32
IN_MEMORY_DATASETS = ("digits",)
_LOCAL_PROCESS_VARS = ("SLURM_NTASKS_PER_NODE", "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def local_process_count(environ: dict[str, str] | None = None) -> int:
    """Processes of this job on this host, from the launcher's environment (default 1)."""
    environ = os.environ if environ is None else environ
    for var in _LOCAL_PROCESS_VARS:
        value = environ.get(var, "")
        # SLURM writes e.g. "4(x2)" for heterogeneous allocations: the leading number counts.
        digits = value.split("(")[0].strip()
        if digits.isdigit() and int(digits) > 0:
            return int(digits)
    return 1


def resolve_num_workers(
    requested: int,
    *,
    dataset: str,
    platform: str,
    cores: int | None = None,
    local_processes: int | None = None,
) -> tuple[int, str]:
    """Returns the worker-process count for ``data.num_workers`` and why.

    Args:
      requested: ``data.num_workers``: ``>= 0`` is used as given, ``-1`` means automatic.
      dataset: The dataset's name (in-memory datasets get no workers).
      platform: The JAX backend, ``'cpu'``, ``'gpu'`` (or ``'cuda'``/``'rocm'``) or ``'tpu'``.
      cores: CPU cores available to this host's processes (default: this process's affinity).
      local_processes: Processes of the job on this host (default: from the environment).

    Returns:
      ``(num_workers, reason)``, the reason a short phrase for the log.

    Raises:
      ValueError: If ``requested`` is below -1.
    """
    if requested < AUTO:
        raise ValueError(
            f"data.num_workers={requested} must be >= 0 (that many loader processes) or -1 "
            "(automatic: from the host's cores)."
        )
    if requested >= 0:
        return requested, "as configured"
    if dataset in IN_MEMORY_DATASETS:
        return 0, f"auto: {dataset} is held in memory, nothing to decode"
    if platform == "cpu":
        return 0, "auto: on a CPU backend the train step uses every core"
    cores = available_cores() if cores is None else cores
    local_processes = local_process_count() if local_processes is None else local_processes
    per_process = max(cores // max(local_processes, 1), 1)
    workers = min(max(per_process - 1, 1), MAX_WORKERS)
    return workers, (
        f"auto: {cores} cores / {local_processes} process(es) on this host, one kept for the "
        f"training process, {platform} backend"
    )
