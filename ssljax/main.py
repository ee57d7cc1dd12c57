"""Command line: ``python -m ssljax.main --config=configs/byol.py:cifar10 --workdir=DIR``.

Parses flags and calls :func:`ssljax.train.train_and_evaluate`; nothing else lives here.
"""

from ssljax import host_devices

# Before JAX starts its CPU backend (see ssljax.host_devices for why).
_DEVICE_MESSAGE = host_devices.configure_cpu_devices()

import logging as pylogging  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ssljax import distributed, train  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/byol.py:cifar10.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
flags.mark_flags_as_required(["config", "workdir"])
distributed.define_flags()


class _QuietLibraries(pylogging.Filter):
    """Drops INFO records of orbax's internals (dozens of lines per checkpoint).

    They share absl's logger with ssljax's own records, so a filter on the record's source
    path is the narrowest cut; warnings and errors from them still pass.
    """

    def filter(self, record: pylogging.LogRecord) -> bool:
        noisy = "/orbax/" in record.pathname or "/jax/_src/" in record.pathname
        return record.levelno >= pylogging.WARNING or not noisy


def main(argv):
    """Runs one training job."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    logging.info(_DEVICE_MESSAGE)
    # Multi-process runs (TPU pods, SLURM, or explicit flags) join before anything touches
    # the devices; a single process is left as it is.
    distributed.initialize_from_flags()
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def run():
    """Console-script entry point (``ssljax-train``)."""
    app.run(main)


if __name__ == "__main__":
    run()
