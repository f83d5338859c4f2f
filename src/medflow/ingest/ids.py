"""Ids read from data (CSV cells, file and folder names, DICOM tags) that later name files.

An id becomes a path component of per-item outputs (CAM PNGs, per-case files): one like ``../../x`` would
write outside its folder. Every ingest, of training and of prediction inputs, passes ids through ``check_id``.
"""

from __future__ import annotations

import os
import re

# Letters, digits, dot, dash, underscore; not starting with a dot (no "..", no hidden files), at most 128.
SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


def id_problem(value: object, what: str = "id") -> str | None:
    """Why ``value`` cannot name a file (``None`` when it can)."""
    text = str(value)
    if SAFE_ID.fullmatch(text):
        return None
    shown = text if len(text) <= 60 else text[:57] + "..."
    return (
        f"{what} {shown!r} cannot name an output file: use letters, digits, '.', '-', '_' "
        "(no path separators, not starting with '.', at most 128 characters)"
    )


def check_id(value: object, source: str | os.PathLike, what: str = "id") -> str:
    """``str(value)`` if it is a safe id, else ``InputError(source, ...)`` naming the file it came from."""
    from medflow.errors import InputError

    problem = id_problem(value, what)
    if problem:
        raise InputError(source, problem)
    return str(value)
