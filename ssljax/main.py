"""Command line: ``python -m ssljax.main --config=configs/byol.py:cifar10 --workdir=DIR``.

Parses flags and calls :func:`ssljax.train.train_and_evaluate`; nothing else lives here.
"""

from ssljax import host_devices

# Before JAX starts its CPU backend (see ssljax.host_devices for why).
_DEVICE_MESSAGE = host_devices.configure_cpu_devices()

import sys  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ssljax import cli, distributed, log_filters, paths, train  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/byol.py:cifar10.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False, "Print the resolved config (overrides applied) and exit."
)
distributed.define_flags()


def main(argv):
    """Runs one training job."""
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}; flags are written --name=value.")
    if _CONFIG.value is None:
        cli.fail("--config is required, e.g. --config=configs/byol.py (--help lists them).")
    config = paths.expand_config_paths(_CONFIG.value)
    if _PRINT_CONFIG.value:
        print(config)
        return
    if not _WORKDIR.value:
        cli.fail("--workdir is required, e.g. --workdir=/tmp/ssljax_run.")
    log_filters.quiet_libraries()
    logging.debug(_DEVICE_MESSAGE)
    with cli.user_errors_exit_2(verbose=logging.get_verbosity() >= 1):
        # Multi-process runs (TPU pods, SLURM, or explicit flags) join before anything
        # touches the devices; a single process is left as it is.
        distributed.initialize_from_flags()
        train.train_and_evaluate(config, paths.expand(_WORKDIR.value))


def run():
    """Console-script entry point (``ssljax-train``)."""
    if cli.wants_help(sys.argv) or "--helpfull" in sys.argv:
        print(cli.train_help())
        if "--helpfull" in sys.argv:
            print("\nEvery flag:\n" + flags.FLAGS.get_help())
        sys.exit(0)
    cli.check_config_spec(cli.config_spec_from_argv(sys.argv))
    app.run(main, flags_parser=cli.parse_flags_or_fail)


if __name__ == "__main__":
    run()
