"""Keys of the labelling queue: a structure's content hash, a labeller's identity, safe text.

A row's ``content_key`` decides what counts as the same work: the exact structure and the
labeller's name and settings.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
from ase import Atoms

from gpmlip.labelling.labellers import Labeller


def labeller_key(labeller: Labeller) -> dict:
    """The part of a labeller that decides its numbers: name and settings (not the timeout)."""
    return {"name": labeller.name, "settings": labeller.settings}


def content_key(atoms: Atoms, labeller: Labeller) -> str:
    """``sha256:`` hash of the exact structure and the labeller's name and settings.

    The structure enters as the bytes of its atomic numbers (int64), positions and cell
    (float64) and pbc, so two structures share a key only if they are bit-for-bit equal.
    """
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(atoms.positions, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(atoms.cell.array, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(atoms.pbc, dtype=bool).tobytes())
    h.update(json.dumps(labeller_key(labeller), sort_keys=True, separators=(",", ":"),
                        default=str).encode())
    return "sha256:" + h.hexdigest()


def text_ok(value: str) -> bool:
    """Whether ase.db accepts ``value`` as a text key-value (it refuses number-like text)."""
    for kind in (int, float):
        try:
            kind(value)
            return False
        except ValueError:
            pass
    return value.lower() not in ("true", "false")
