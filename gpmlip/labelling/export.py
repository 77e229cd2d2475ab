"""Labelled rows of a queue out: Atoms with their labels, and extended XYZ written atomically."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ase import Atoms


def row_frames(rows: Iterable) -> list[Atoms]:
    """ase.db rows as Atoms, labelled ones with a ``SinglePointCalculator``.

    ``info`` holds ``queue_id`` (the row id), ``config_type="queue"`` and ``source`` (if the
    row has one).
    """
    out = []
    for row in rows:
        atoms = row.toatoms()
        atoms.info.update({"queue_id": row.id, "config_type": "queue"})
        if row.get("source"):   # an empty value would not survive extended XYZ
            atoms.info["source"] = row.source
        out.append(atoms)
    return out


def write_extxyz(path: Path, frames: list[Atoms]) -> None:
    """Write ``frames`` to ``path`` via a temporary name in the same directory, then rename."""
    import ase.io

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        ase.io.write(tmp, frames, format="extxyz")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
