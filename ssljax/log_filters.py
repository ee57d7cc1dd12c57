"""Keeps the libraries' INFO internals out of ssljax's console output.

orbax (dozens of lines per checkpoint), JAX (``Unable to initialize backend 'tpu'`` on every
host without a TPU), TFDS (dataset-info loading) and grain log through the same root logger as
ssljax, so a filter on the record's source path is the narrowest cut. Their warnings and errors
still pass, and ``--verbosity=1`` lets everything through.
"""

from __future__ import annotations

import logging

# Source folders whose INFO records are internals, not news for the user.
NOISY_SOURCES = ("/orbax/", "/jax/_src/", "/tensorflow_datasets/", "/grain/", "/jaxlib/")


class QuietLibraries(logging.Filter):
    """Drops records below WARNING that come from :data:`NOISY_SOURCES`."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Returns False for an INFO (or DEBUG) record of a noisy library."""
        if record.levelno >= logging.WARNING:
            return True
        return not any(source in record.pathname for source in NOISY_SOURCES)


def quiet_libraries() -> None:
    """Installs :class:`QuietLibraries` on absl's handler, unless ``--verbosity`` >= 1."""
    from absl import logging as absl_logging

    if absl_logging.get_verbosity() >= 1:
        return
    handler = absl_logging.get_absl_handler()
    if not any(isinstance(f, QuietLibraries) for f in handler.filters):
        handler.addFilter(QuietLibraries())
