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


def label_key(energy, forces, stress) -> str:
    """``sha256:`` hash of a label's numbers (float64 bytes; a missing part hashes as empty)."""
    if stress is not None and np.shape(stress) == (3, 3):
        from ase.stress import full_3x3_to_voigt_6_stress
        stress = full_3x3_to_voigt_6_stress(np.asarray(stress, dtype=np.float64))
    h = hashlib.sha256()
    for part in (energy, forces, stress):
        h.update(b"|")
        if part is not None:
            h.update(np.ascontiguousarray(part, dtype=np.float64).tobytes())
    return "sha256:" + h.hexdigest()


def labels_key(atoms: Atoms) -> str:
    """:func:`label_key` of the energy, forces and stress on ``atoms``'s calculator."""
    results = {} if atoms.calc is None else atoms.calc.results
    return label_key(results.get("energy"), results.get("forces"), results.get("stress"))


def row_problem(row, labeller: Labeller | None) -> str | None:
    """Why an ase.db queue row no longer holds what was written to it (None: intact).

    The structure is checked against the row's ``content_key`` (when the queue's labeller is
    known, since the key includes it) and a done row's labels against its ``label_key``.
    """
    atoms = row.toatoms()
    if labeller is not None and row.get("content_key") != content_key(atoms, labeller):
        return "its structure no longer matches its content key"
    if row.get("state") == "done" and row.get("label_key") is not None:
        if row.label_key != labels_key(atoms):
            return "its labels no longer match the checksum written with them"
    return None


def text_ok(value: str) -> bool:
    """Whether ase.db accepts ``value`` as a text key-value (it refuses number-like text)."""
    for kind in (int, float):
        try:
            kind(value)
            return False
        except ValueError:
            pass
    return value.lower() not in ("true", "false")
