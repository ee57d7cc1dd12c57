"""Command line: ``python -m ssljax.main --config=configs/byol.py:cifar10 --workdir=DIR``.

Parses flags and calls :func:`ssljax.train.train_and_evaluate`; nothing else lives here.
"""

from ssljax import host_devices

# Before JAX starts its CPU backend (see ssljax.host_devices for why).
_DEVICE_MESSAGE = host_devices.configure_cpu_devices()

import logging as pylogging  # noqa: E402
import sys  # noqa: E402

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


def _parse_flags(argv: list[str]) -> list[str]:
    """Parses the flags as absl does; an override of a field the config lacks is one line.

    ml_collections raises a bare ``AttributeError: "'name'"`` with a traceback for
    ``--config.name=...`` when the config has no such field.
    """
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as err:
        key = str(err).strip("\"'")
        bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.") and key in a]
        flag = bad[0] if bad else f"--config...{key}"
        config_file = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
        print(
            f"error: {flag}: the config {config_file} has no field {key!r}; check the spelling "
            "(the fields are listed in ssljax/config_schema.py).",
            file=sys.stderr,
        )
        sys.exit(2)


def run():
    """Console-script entry point (``ssljax-train``)."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
