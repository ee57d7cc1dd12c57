"""Expansion of ``~`` and environment variables in every path a user gives ssljax.

bash expands ``~`` only at the start of a word, so ``--root=~/data`` reaches Python with the
``~`` intact; left alone it becomes a folder literally named ``~`` (which a later ``rm -rf ~``
would mistake for the home folder). Every command-line path flag and every path field of a
config goes through :func:`expand` here, so the rule lives in one place.
"""

from __future__ import annotations

import os
from typing import Any

# The config fields that hold paths (dotted names; a missing field is skipped).
CONFIG_PATH_FIELDS = ("data.root", "data.data_dir", "data.manual_dir", "init_from")


def expand(path: str | os.PathLike | None) -> str | None:
    """Returns ``path`` with ``~``, ``~user``, ``$VAR`` and ``${VAR}`` expanded.

    Args:
      path: a path as the user typed it; ``None`` and ``''`` are returned unchanged.

    Returns:
      The expanded path (not made absolute: relative paths stay relative to the cwd).
    """
    if path is None:
        return None
    text = os.fspath(path)
    if not text:
        return text
    return os.path.expanduser(os.path.expandvars(text))


def expand_config_paths(config: Any) -> Any:
    """Expands the path fields of a config (:data:`CONFIG_PATH_FIELDS`) in place.

    Args:
      config: an ``ml_collections.ConfigDict`` (locked or not) or a nested dict.

    Returns:
      The same ``config``, for chaining.
    """
    for dotted in CONFIG_PATH_FIELDS:
        *parents, leaf = dotted.split(".")
        node = config
        for name in parents:
            node = node.get(name) if hasattr(node, "get") else None
            if node is None:
                break
        if node is None or not hasattr(node, "get"):
            continue
        value = node.get(leaf)
        if isinstance(value, (str, os.PathLike)) and value:
            node[leaf] = expand(value)
    return config
