"""Labelled frames: one structure with whichever of energy, forces and stress it has."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress

DEFAULT_CONFIG_TYPE = "default"

SIGMA_KEYS = ("energy_sigma", "force_sigma", "virial_sigma")
"""Per-structure noise overrides, read from ``atoms.info`` (GAP's extended-XYZ convention)."""


@dataclass
class Frame:
    """One labelled structure.

    Attributes
    ----------
    atoms : ase.Atoms
        The structure (no calculator attached; ``info`` kept).
    energy : float or None
        Total energy in eV.
    forces : ndarray, shape (n_atoms, 3), or None
        Forces in eV/Å.
    stress : ndarray, shape (3, 3), or None
        Stress in eV/Å³, ASE's sign convention (``stress = (1/V) dE/d(strain)``; a compressed cell
        has negative stress).  Read from a virial ``W`` as ``-W / V``.
    config_type : str
        Group label (e.g. GAP's ``config_type``), used for noise overrides, stratified splits and
        error tables.
    energy_sigma, force_sigma, virial_sigma : float or None
        Per-structure noise overrides (eV/atom, eV/Å, eV/atom), as in GAP's extended XYZ.
    index : int
        Position of the frame in its source (for error messages).
    source : str
        Where the frame came from.
    """

    atoms: Atoms
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    config_type: str = DEFAULT_CONFIG_TYPE
    energy_sigma: float | None = None
    force_sigma: float | None = None
    virial_sigma: float | None = None
    index: int = 0
    source: str = ""
    _key: str | None = field(default=None, repr=False, compare=False)

    @property
    def n_atoms(self) -> int:
        """Number of atoms."""
        return len(self.atoms)

    @property
    def has_labels(self) -> bool:
        """Whether the frame has at least one of energy, forces, stress."""
        return any(x is not None for x in (self.energy, self.forces, self.stress))

    @property
    def content_key(self) -> str:
        """Hash of numbers, positions, cell and pbc (rounded to 1e-6 Å): equal for duplicates."""
        if self._key is None:
            a = self.atoms
            h = hashlib.sha256()
            h.update(a.numbers.astype(np.int64).tobytes())
            h.update(np.round(a.positions, 6).astype(np.float64).tobytes())
            h.update(np.round(a.cell.array, 6).astype(np.float64).tobytes())
            h.update(np.asarray(a.pbc, dtype=np.int8).tobytes())
            self._key = h.hexdigest()
        return self._key

    def to_atoms(self) -> Atoms:
        """A copy of the structure with its labels on a ``SinglePointCalculator``."""
        atoms = self.atoms.copy()
        results = {}
        if self.energy is not None:
            results["energy"] = self.energy
        if self.forces is not None:
            results["forces"] = self.forces.copy()
        if self.stress is not None:
            results["stress"] = full_3x3_to_voigt_6_stress(self.stress)
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info["config_type"] = self.config_type
        for key in SIGMA_KEYS:
            value = getattr(self, key)
            if value is not None:
                atoms.info[key] = value
        return atoms


def as_stress_3x3(value, name: str = "stress") -> np.ndarray:
    """Accept a stress or virial given as 3x3, 9 values (row-major) or 6 Voigt values (ASE order
    xx yy zz yz xz xy) and return a 3x3 array.  Raises ``ValueError`` naming ``name`` on any
    other shape."""
    arr = np.asarray(value, dtype=float)
    if arr.shape == (3, 3):
        return arr.copy()
    if arr.size == 9:
        return arr.reshape(3, 3).copy()
    if arr.size == 6:
        return voigt_6_to_full_3x3_stress(arr.reshape(6))
    raise ValueError(f"{name} has shape {arr.shape}; expected 3x3, 9 or 6 (Voigt) values")
