"""JSON that strict parsers accept: non-finite floats are written as ``null``.

Python's ``json`` writes ``NaN`` and ``Infinity``, which JSON does not have (RFC 8259), so
``jq``, browsers and most other languages' parsers reject the file. Every JSON file and line
ssljax writes goes through this module.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np


def finite_or_none(value: Any) -> Any:
    """Returns ``value`` with every non-finite float (at any depth) replaced by ``None``.

    Numpy scalars and arrays become Python numbers and lists, so the result is plain JSON.
    """
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if isinstance(value, np.ndarray):
        return finite_or_none(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`finite_or_none` of ``value``; ``NaN`` can never be written."""
    return json.dumps(finite_or_none(value), allow_nan=False, **kwargs)


def write(path: str | os.PathLike, value: Any, *, indent: int | None = 2) -> None:
    """Writes ``value`` as strict JSON to ``path`` (with a final newline)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(dumps(value, indent=indent) + "\n")
