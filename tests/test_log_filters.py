"""Quiet default logs (issue 20, item 7): the libraries' INFO internals are dropped."""

import logging

from ssljax import log_filters


def _record(pathname: str, level: int, message: str = "m") -> logging.LogRecord:
    return logging.LogRecord("absl", level, pathname, 1, message, None, None)


def test_library_info_is_dropped_and_warnings_kept():
    quiet = log_filters.QuietLibraries()
    site = "/venv/lib/python3.11/site-packages"
    for source in (
        f"{site}/orbax/checkpoint/checkpoint_manager.py",
        f"{site}/jax/_src/xla_bridge.py",  # "Unable to initialize backend 'tpu'"
        f"{site}/tensorflow_datasets/core/dataset_info.py",
        f"{site}/grain/_src/python/data_loader.py",
    ):
        assert not quiet.filter(_record(source, logging.INFO)), source
        assert quiet.filter(_record(source, logging.WARNING)), source
    assert quiet.filter(_record("/work/ssljax/ssljax/train.py", logging.INFO))
