"""Nested mappings as flat ``{path: leaf}`` dicts: the one flattener of configs and variables.

Configs (``ConfigDict`` or their JSON), Flax variable trees (``dict``/``FrozenDict``) and
checkpoint metadata are all nested string-keyed mappings; comparing, exporting or listing them
wants one flat dict keyed by the joined path, e.g. ``'optimizer.base_lr'`` or
``'params/backbone/conv_init/kernel'``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def is_nested(value: Any) -> bool:
    """Whether ``value`` is a mapping to descend into (``Mapping`` or ``ConfigDict``)."""
    # ml_collections.ConfigDict is not a collections.abc.Mapping; it has items() all the same.
    return isinstance(value, Mapping) or type(value).__name__ in ("ConfigDict", "FrozenConfigDict")


def flatten(
    tree: Any,
    sep: str = ".",
    prefix: str = "",
    leaf: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """Flattens nested mappings into ``{'a<sep>b<sep>c': leaf}``, in the mappings' order.

    Args:
      tree: a nested mapping (``dict``, ``FrozenDict``, ``ConfigDict``).
      sep: joins the keys of one path.
      prefix: prepended to every path as it is (include a trailing ``sep`` if one is wanted).
      leaf: applied to every leaf value (e.g. ``np.asarray``); identity when ``None``.

    Returns:
      The flat dict; an empty nested mapping contributes no entry.
    """
    out: dict[str, Any] = {}

    def walk(node: Any, path: str) -> None:
        for key, value in node.items():
            name = f"{path}{key}"
            if is_nested(value):
                walk(value, name + sep)
            else:
                out[name] = value if leaf is None else leaf(value)

    walk(tree, prefix)
    return out
