"""Datasets and the input pipeline: TFDS sources, our own builders, the grain loader.

Public API::

    info = get_dataset_info(data_config)            # DatasetInfo
    it = make_loader(data_config, split='train', global_batch=256, seed=0, shuffle=True,
                     drop_remainder=True)           # per-process NumPy batches, get/set_state
    batches = device_prefetch(it, NamedSharding(mesh, P('data')))   # global jax.Arrays

Datasets: ``digits`` (in memory, the default), ``image_folder`` and TFDS catalogue names, the
last two prepared with ``python -m ssljax.data.prepare``.
"""

from ssljax.data.device import DevicePrefetcher, device_prefetch
from ssljax.data.info import DEFAULTS, DatasetInfo, get_dataset_info, open_source
from ssljax.data.loader import LoaderIterator, make_loader

__all__ = [
    "DEFAULTS",
    "DatasetInfo",
    "DevicePrefetcher",
    "LoaderIterator",
    "device_prefetch",
    "get_dataset_info",
    "make_loader",
    "open_source",
    "prepare",
]


def __getattr__(name: str):
    """Imports ``prepare`` on first use (PEP 562).

    ``python -m ssljax.data.prepare`` runs that module as ``__main__``; had this package
    imported it already, runpy would warn (a RuntimeWarning on every run of the command).
    """
    if name == "prepare":
        from ssljax.data.prepare import prepare

        # The submodule import bound the name to the module: bind the function instead.
        globals()["prepare"] = prepare
        return prepare
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
