"""Multi-process start-up: one ``jax.distributed.initialize`` call, checked before and after.

JAX's own runtime does the distribution: every process calls :func:`initialize` before anything
touches a device; process 0 hosts the coordination service, the others connect to it; then
``jax.devices()`` lists every device of every process and one ``jit`` over a mesh of them runs
the same program everywhere (see ``ssljax.sharding``). Each process loads only its own rows of
the global batch (``ssljax.data.make_loader`` with ``process_index``/``process_count``).

Where the settings come from, in this order:

1. Explicit arguments (the ``--coordinator_address``, ``--num_processes``, ``--process_id``
   flags; ``JAX_COORDINATOR_ADDRESS`` is read as JAX does). All three given: used as they are.
2. The cluster JAX detects itself (``jax._src.clusters``): SLURM (``srun``), Cloud TPU VMs and
   GKE TPU pods, Open MPI, Kubernetes. Explicit values that contradict the cluster are errors:
   a job whose processes disagree on who is who would train silently wrong.
3. Nothing: one process, no initialisation.

What is checked, so that a bad launch fails at start-up and says what to change:

* arguments (``process_id`` in range, ``host:port``, all three given without a cluster);
* a process count that contradicts the cluster or the coordinator (``jax.process_count()``);
* processes with different numbers of local devices (the mesh and the per-process batch
  assume the same count everywhere);
* a coordinator that cannot be reached: non-coordinator processes first wait for its TCP port
  and raise ``TimeoutError`` naming the address; if the processes then fail to all register
  within ``timeout_s`` (e.g. fewer started than ``num_processes``), JAX's runtime would abort
  the process from C++ with a bare ``DEADLINE_EXCEEDED``, so a watchdog prints what to change
  first and ends the process with exit status :data:`TIMEOUT_EXIT_CODE`.

Two pitfalls handled here rather than left to the user:

* SLURM with one process per node (``--ntasks-per-node=1``): JAX's SLURM detection assumes one
  process per GPU and would make each process see only GPU ``SLURM_LOCALID`` = 0 (jax-ml/jax
  #16788); here a process that is alone on its node keeps every GPU of the node.
* CPU collectives: multi-process CPU runs (tests, laptops) need a cross-process collective
  library; ``gloo`` is selected unless the user chose one (JAX 0.10 defaults to it too).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import jax

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300
# Exit status of a process whose peers did not all join in time (the watchdog's exit).
TIMEOUT_EXIT_CODE = 75  # EX_TEMPFAIL: the launch may succeed when retried
# JAX's own registration deadline is set this much later than ours, so that the watchdog's
# message comes first and JAX's abort never happens.
_JAX_DEADLINE_MARGIN_S = 20
_PROBE_INTERVAL_S = 0.25
_TPU_CLUSTERS = ("tpu", "gcetpu", "gketpu")


@dataclasses.dataclass(frozen=True)
class ProcessSetup:
    """How this process joined the job.

    Attributes:
      process_id: this process's index (``jax.process_index()``).
      num_processes: number of processes in the job (``jax.process_count()``).
      coordinator_address: ``host:port`` of the coordination service, or None (one process).
      source: where the settings came from: ``'single'``, ``'explicit'`` or the JAX cluster
        name (``'slurm'``, ``'gcetpu'``, ``'gketpu'``, ``'ompi'``, ``'k8s'``, ...).
      local_device_ids: devices this process was restricted to, or None (all it sees).
    """

    process_id: int
    num_processes: int
    coordinator_address: str | None
    source: str
    local_device_ids: tuple[int, ...] | None = None

    def describe(self) -> str:
        """One line for the log."""
        if self.num_processes == 1 and self.coordinator_address is None:
            return "Single process (no jax.distributed initialisation)."
        ids = f", local devices {list(self.local_device_ids)}" if self.local_device_ids else ""
        return (
            f"Process {self.process_id} of {self.num_processes} (settings from "
            f"{self.source}), coordinator {self.coordinator_address}{ids}."
        )


# ----------------------------------------------------------------------------------------------
# Argument checks (pure: nothing here touches JAX's backends).
# ----------------------------------------------------------------------------------------------
def parse_address(address: str) -> tuple[str, int]:
    """Splits ``host:port`` (``[v6]:port`` for IPv6 literals).

    Raises:
      ValueError: naming ``coordinator_address`` when there is no valid port.
    """
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"coordinator_address={address!r} must be 'host:port' with a port in 1..65535, "
            "e.g. --coordinator_address=10.0.0.1:1234 (the host of process 0)."
        )
    return host.strip("[]"), int(port)


def _check_int(name: str, value: Any, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}.")
    return int(value)


def _check_local_device_ids(ids: int | Sequence[int] | str | None) -> tuple[int, ...] | None:
    if ids is None or (isinstance(ids, (list, tuple)) and not ids):
        return None
    if isinstance(ids, str):
        ids = [s for s in ids.split(",") if s.strip()]
    if isinstance(ids, int):
        ids = [ids]
    try:
        out = tuple(int(i) for i in ids)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"local_device_ids={ids!r} must be device numbers, e.g. --local_device_ids=0,1."
        ) from e
    if any(i < 0 for i in out) or len(set(out)) != len(out):
        raise ValueError(f"local_device_ids={list(out)} must be distinct and >= 0.")
    return out


# ----------------------------------------------------------------------------------------------
# Cluster detection: JAX's own environment classes.
# ----------------------------------------------------------------------------------------------
def _cluster_env() -> Any | None:
    """JAX's ClusterEnv class for the environment this process runs in, or None."""
    try:
        from jax._src import clusters
    except ImportError:  # pragma: no cover - a JAX without the module: let JAX detect
        return None
    for env in clusters.ClusterEnv._cluster_types:
        if getattr(env, "opt_in_only_method", False):
            continue
        try:
            if env.is_env_present():
                return env
        except Exception as e:  # noqa: BLE001 - a broken probe must not hide the others
            logger.debug("Cluster probe %s failed: %s", env.__name__, e)
    return None


def detect_cluster() -> str | None:
    """Name of the cluster environment JAX would auto-detect (``'slurm'``, ...), or None."""
    env = _cluster_env()
    return getattr(env, "name", None) or (env.__name__ if env is not None else None)


def _slurm_one_process_per_node() -> bool:
    """True when this SLURM step runs one task per node (then it drives all the node's GPUs)."""
    try:
        tasks = int(os.environ["SLURM_NTASKS"])
        nodes = int(os.environ.get("SLURM_STEP_NUM_NODES", os.environ.get("SLURM_NNODES", "0")))
    except (KeyError, ValueError):
        return False
    per_node = os.environ.get("SLURM_NTASKS_PER_NODE", "")
    if per_node.isdigit():
        return int(per_node) == 1
    return nodes > 0 and tasks == nodes


def _resolve(
    coordinator_address: str | None,
    num_processes: int | None,
    process_id: int | None,
    local_device_ids: tuple[int, ...] | None,
    timeout_s: int,
) -> ProcessSetup:
    """Combines explicit settings with the detected cluster; raises on contradictions."""
    complete = all(v is not None for v in (coordinator_address, num_processes, process_id))
    # All three given: the user launches the processes; a surrounding allocation (say a
    # one-task srun that starts them) must not override or contradict that.
    env = None if complete and num_processes > 1 else _cluster_env()
    if env is None:
        alone = num_processes == 1 or (num_processes is None and coordinator_address is None)
        if alone and process_id in (None, 0):
            return ProcessSetup(0, 1, None, "single", local_device_ids)
        if num_processes == 1:
            raise ValueError(
                f"process_id={process_id} needs num_processes > {process_id}, not 1: pass "
                "--num_processes=<number of processes>."
            )
        missing = [
            f"--{name}"
            for name, value in (
                ("coordinator_address", coordinator_address),
                ("num_processes", num_processes),
                ("process_id", process_id),
            )
            if value is None
        ]
        if missing:
            raise ValueError(
                f"Multi-process run outside a detected cluster (SLURM, TPU pod, ...) needs "
                f"--coordinator_address, --num_processes and --process_id; missing: "
                f"{', '.join(missing)}. Process 0 hosts the coordinator, e.g. "
                "--coordinator_address=<host of process 0>:1234 --num_processes=2 "
                "--process_id=0 (then 1 on the second process)."
            )
        source = "explicit"
    else:
        name = getattr(env, "name", env.__name__)
        cluster_n = int(env.get_process_count())
        cluster_id = int(env.get_process_id())
        for flag, given, found in (
            ("num_processes", num_processes, cluster_n),
            ("process_id", process_id, cluster_id),
        ):
            if given is not None and given != found:
                raise ValueError(
                    f"--{flag}={given} contradicts the {name} cluster, which runs this "
                    f"process as {flag}={found}: drop --{flag} (it is detected) or launch "
                    f"{'that many processes' if flag == 'num_processes' else 'it so'}."
                )
        num_processes, process_id, source = cluster_n, cluster_id, name
        if num_processes == 1:
            return ProcessSetup(0, 1, None, name, local_device_ids)
        if coordinator_address is None:
            port = os.environ.get("JAX_COORDINATOR_PORT")
            coordinator_address = env.get_coordinator_address(
                timeout_secs=timeout_s, override_coordinator_port=port
            )
        if local_device_ids is None and name not in _TPU_CLUSTERS:
            local_id = env.get_local_process_id()
            # JAX's rule is one process per GPU, driving GPU SLURM_LOCALID; a process alone on
            # its node must keep all the node's GPUs instead (jax-ml/jax#16788).
            if local_id is not None and not (name == "slurm" and _slurm_one_process_per_node()):
                local_device_ids = (int(local_id),)
    assert num_processes is not None and process_id is not None
    if not 0 <= process_id < num_processes:
        raise ValueError(
            f"process_id={process_id} must lie in [0, num_processes={num_processes}); number "
            f"the processes 0..{num_processes - 1}."
        )
    parse_address(coordinator_address)
    return ProcessSetup(process_id, num_processes, coordinator_address, source, local_device_ids)


# ----------------------------------------------------------------------------------------------
# Reaching the coordinator.
# ----------------------------------------------------------------------------------------------
def wait_for_coordinator(address: str, timeout_s: float, *, process_id: int) -> None:
    """Waits until something accepts TCP connections at ``address`` (the coordinator).

    Processes may start in any order, so connection refusals are retried until the deadline.

    Raises:
      TimeoutError: nothing listened at ``address`` within ``timeout_s``, with what to check.
    """
    host, port = parse_address(address)
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            with socket.create_connection((host, port), timeout=min(remaining, 2.0)):
                return
        except OSError as e:
            last_error = e
        time.sleep(min(_PROBE_INTERVAL_S, max(deadline - time.monotonic(), 0)))
    raise TimeoutError(
        f"Process {process_id} could not reach the coordinator at {address} within "
        f"{timeout_s:g} s ({type(last_error).__name__}: {last_error}). Check that process 0 is "
        f"running with the same --coordinator_address, that {host} is process 0's host and "
        f"port {port} is open between the hosts, or raise --distributed_timeout_s if process "
        "0 starts later."
    )


def _check_port_free(address: str) -> None:
    """Raises if process 0 cannot host the coordinator at ``address`` (port already taken)."""
    _, port = parse_address(address)
    # JAX binds [::]:port (all interfaces); try the same family first, then IPv4.
    for family, bind_host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((bind_host, port))
            return
        except OSError as e:
            if e.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
                raise ValueError(
                    f"coordinator_address={address!r}: port {port} is already in use on this "
                    "host, so process 0 cannot host the coordinator there. Pick a free port, or "
                    "check that only one process has --process_id=0."
                ) from e
        finally:
            sock.close()


class _Watchdog:
    """Ends the process with a clear message if start-up is not done by the deadline.

    JAX's coordination client aborts the process from C++ when registration times out, so no
    Python exception can be raised from the waiting thread; printing the cause and exiting
    from a timer thread is the only way to replace that abort with a message.
    """

    def __init__(self, timeout_s: float, message: str):
        self._timer = threading.Timer(timeout_s, self._fire, args=(message,))
        self._timer.daemon = True

    @staticmethod
    def _fire(message: str) -> None:
        logger.error(message)
        print(f"ssljax.distributed: {message}", file=sys.stderr, flush=True)
        os._exit(TIMEOUT_EXIT_CODE)

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._timer.cancel()


def _use_cpu_collectives() -> None:
    """Selects gloo for cross-process collectives on CPU unless the user chose already."""
    try:
        current = jax.config.jax_cpu_collectives_implementation
    except AttributeError:  # pragma: no cover - option renamed in a later JAX
        logger.warning("This JAX has no jax_cpu_collectives_implementation option.")
        return
    if current in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


# ----------------------------------------------------------------------------------------------
# After initialisation.
# ----------------------------------------------------------------------------------------------
def check_devices(setup: ProcessSetup) -> dict[int, int]:
    """Checks the devices every process sees against ``setup`` (starts JAX's backend).

    Args:
      setup: what :func:`initialize` asked for.

    Returns:
      ``{process index: number of local devices}``.

    Raises:
      ValueError: the coordinator counts another number of processes than this one was given,
        or the processes have different numbers of devices.
    """
    counts = collections.Counter(d.process_index for d in jax.devices())
    if jax.process_count() != setup.num_processes:
        raise ValueError(
            f"This process was started with num_processes={setup.num_processes}, but the "
            f"coordinator at {setup.coordinator_address} counts {jax.process_count()} "
            f"processes: pass the same --num_processes to every process (the number of "
            "processes actually launched)."
        )
    if len(set(counts.values())) > 1:
        per_process = ", ".join(f"process {p}: {n}" for p, n in sorted(counts.items()))
        raise ValueError(
            f"The processes see different numbers of devices ({per_process}); the mesh and the "
            "per-process share of the batch need the same number on every process. Give each "
            "process the same --local_device_ids count (GPUs), the same XLA_FLAGS "
            "--xla_force_host_platform_device_count (CPU), or one process per host (TPU)."
        )
    return dict(counts)


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: int | Sequence[int] | str | None = None,
    timeout_s: int = DEFAULT_TIMEOUT_S,
) -> ProcessSetup:
    """Joins this process to a multi-process JAX job (or does nothing for a single process).

    Call it before anything touches a device (``jax.devices()``, any computation).

    Args:
      coordinator_address: ``host:port`` of process 0, where the coordination service runs;
        default ``$JAX_COORDINATOR_ADDRESS``, else from the detected cluster.
      num_processes: processes in the job; default from the cluster, else 1.
      process_id: this process, 0..num_processes-1; default from the cluster.
      local_device_ids: restrict this process to these local GPUs (one process per GPU); the
        default follows the cluster (SLURM: GPU ``SLURM_LOCALID`` with one task per GPU, all
        the node's GPUs with one task per node); ``$JAX_LOCAL_DEVICE_IDS`` is read too.
      timeout_s: how long to wait for the coordinator and for every process to join.

    Returns:
      The :class:`ProcessSetup`; also when JAX was initialised already (then nothing is done).

    Raises:
      ValueError: invalid or contradictory settings, a port already taken, a process count
        that the coordinator does not confirm, or processes with different device counts.
      TimeoutError: the coordinator could not be reached within ``timeout_s``.
      RuntimeError: JAX's backend was started before this call.

    On a timeout *after* the coordinator was reached (e.g. fewer processes started than
    ``num_processes``), the process prints what to change and exits with status
    :data:`TIMEOUT_EXIT_CODE` (JAX would otherwise abort it).
    """
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
        raise ValueError(f"timeout_s={timeout_s!r} must be a positive number of seconds.")
    num_processes = _check_int("num_processes", num_processes, 1)
    process_id = _check_int("process_id", process_id, 0)
    if local_device_ids is None and os.environ.get("JAX_LOCAL_DEVICE_IDS"):
        local_device_ids = os.environ["JAX_LOCAL_DEVICE_IDS"]
    ids = _check_local_device_ids(local_device_ids)
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    if coordinator_address is not None:
        parse_address(coordinator_address)

    if jax.distributed.is_initialized():
        from jax._src import distributed as jax_distributed

        state = jax_distributed.global_state  # the only record of the settings used
        return ProcessSetup(
            int(state.process_id),
            int(state.num_processes),
            state.coordinator_address,
            "already initialised",
            ids,
        )

    setup = _resolve(coordinator_address, num_processes, process_id, ids, int(timeout_s))
    if setup.coordinator_address is None:
        if ids is not None:
            # One process restricted to some GPUs: the same JAX options initialize() sets.
            visible = ",".join(str(i) for i in ids)
            jax.config.update("jax_cuda_visible_devices", visible)
            jax.config.update("jax_rocm_visible_devices", visible)
        # One process is the usual case and nothing to report at the default verbosity.
        logger.debug(setup.describe())
        return setup

    address = setup.coordinator_address
    if setup.process_id == 0:
        _check_port_free(address)
    else:
        wait_for_coordinator(address, timeout_s, process_id=setup.process_id)
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise RuntimeError(
            "ssljax.distributed.initialize() must run before anything touches a device "
            "(jax.devices(), a computation, a device_put): call it first in main()."
        )
    _use_cpu_collectives()
    message = (
        f"process {setup.process_id}: the {setup.num_processes} processes did not all join "
        f"the coordinator at {address} within {timeout_s:g} s. Start exactly "
        f"{setup.num_processes} processes (ids 0..{setup.num_processes - 1}) with the same "
        "--coordinator_address and --num_processes, or set --num_processes to the number "
        "actually started; raise --distributed_timeout_s if some start late."
    )
    with _Watchdog(timeout_s, message):
        jax.distributed.initialize(
            coordinator_address=address,
            num_processes=setup.num_processes,
            process_id=setup.process_id,
            local_device_ids=list(setup.local_device_ids) if setup.local_device_ids else None,
            # Everything is resolved above (including SLURM's one-process-per-node case).
            cluster_detection_method="deactivate",
            initialization_timeout=int(timeout_s) + _JAX_DEADLINE_MARGIN_S,
        )
        # Starting the backend exchanges the device topology with every process: still part
        # of joining, still under the watchdog.
        counts = check_devices(setup)
    logger.info(
        "%s %d devices (%d per process, platform %s).",
        setup.describe(),
        sum(counts.values()),
        counts[setup.process_id],
        jax.devices()[0].platform,
    )
    return setup


# ----------------------------------------------------------------------------------------------
# Command-line flags (for ssljax.main).
# ----------------------------------------------------------------------------------------------
def define_flags(flag_values: Any = None) -> None:
    """Defines the multi-process flags on ``flag_values`` (default absl's global FLAGS).

    They are ``--coordinator_address``, ``--num_processes``, ``--process_id``,
    ``--local_device_ids`` and ``--distributed_timeout_s``.
    """
    from absl import flags

    fv = flags.FLAGS if flag_values is None else flag_values
    flags.DEFINE_string(
        "coordinator_address",
        None,
        "host:port of process 0 for multi-process runs; not needed under SLURM (srun) or on "
        "TPU pods, where it is detected.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "num_processes", None, "Number of processes (default: detected, else 1).", flag_values=fv
    )
    flags.DEFINE_integer(
        "process_id", None, "This process, 0..num_processes-1 (default: detected).", flag_values=fv
    )
    flags.DEFINE_list(
        "local_device_ids",
        None,
        "GPUs this process drives, e.g. 0,1 (default: one GPU per process under SLURM with a "
        "task per GPU, else all).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "distributed_timeout_s",
        DEFAULT_TIMEOUT_S,
        "Seconds to wait for the coordinator and for every process to join.",
        flag_values=fv,
    )


def initialize_from_flags(flag_values: Any = None) -> ProcessSetup:
    """Calls :func:`initialize` with the flags of :func:`define_flags`."""
    from absl import flags

    fv = flags.FLAGS if flag_values is None else flag_values
    return initialize(
        coordinator_address=fv.coordinator_address,
        num_processes=fv.num_processes,
        process_id=fv.process_id,
        local_device_ids=fv.local_device_ids,
        timeout_s=fv.distributed_timeout_s,
    )
