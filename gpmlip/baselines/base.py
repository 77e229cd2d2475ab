"""What a baseline is: a physical model evaluated beside the GP, never learnt.

A model with a baseline learns the residual ``label - baseline`` and predicts ``GP + baseline``;
the baseline adds no variance (the uncertainty stays the local model's).  A baseline is stored in
a model file as data, its :meth:`Baseline.to_dict` (a ``name`` and its settings), and rebuilt by
:func:`gpmlip.baselines.make_baseline` on load.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from gpmlip.data.frames import Frame

CACHE_SIZE = 4096
"""Structures whose baseline results are kept (by content key): refits recompute no baseline."""


@dataclass(frozen=True)
class BaselineResult:
    """Energy (eV), forces (n_atoms, 3) eV/Å, stress (3, 3) eV/Å³ or None, per-atom energies."""

    energy: float
    forces: np.ndarray
    stress: np.ndarray | None
    energies: np.ndarray


class Baseline:
    """Base class of baselines.

    Subclasses set :attr:`name`, implement :meth:`compute` and :meth:`settings`; a pair potential
    also sets :attr:`cutoff` and implements :meth:`pair_terms`, so that the model adds it on its
    pair list (and therefore in LAMMPS too).
    """

    name: str = "baseline"
    cutoff: float | None = None
    """Range of a pair baseline in Å (None: not a pair potential, evaluated on whole structures)."""

    def __init__(self) -> None:
        self._cache: OrderedDict[str, BaselineResult] = OrderedDict()

    def settings(self) -> dict:
        """The keyword arguments that rebuild this baseline (JSON-serialisable)."""
        return {}

    def to_dict(self) -> dict:
        """``{"name": ..., **settings}``: what a model file stores."""
        return {"name": self.name, **self.settings()}

    def check_species(self, species) -> None:
        """Raise :class:`~gpmlip.errors.SettingsError` if the baseline cannot serve ``species``."""

    def compute(self, atoms: Atoms) -> BaselineResult:
        """Energy, forces, stress (periodic cells) and per-atom energies of one structure."""
        raise NotImplementedError

    def pair_terms(self, centre_species, centre, vector, neighbour_species):
        """Per-centre energies and ``dE/dr_ij`` per pair of a full pair list (pair baselines)."""
        raise NotImplementedError(f"baseline {self.name!r} is not a pair potential")

    def __call__(self, atoms: Atoms, key: str | None = None) -> BaselineResult:
        """:meth:`compute`, cached by ``key`` (a structure's content key) when given."""
        if key is None:
            return self.compute(atoms)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = self.compute(atoms)
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return hit

    def residual(self, frame: Frame) -> Frame:
        """``frame`` with the baseline subtracted from each label it has (a copy)."""
        if not frame.has_labels:
            return frame
        b = self(frame.atoms, frame.content_key)
        return replace(frame,
                       energy=None if frame.energy is None else frame.energy - b.energy,
                       forces=None if frame.forces is None else frame.forces - b.forces,
                       stress=None if frame.stress is None else frame.stress - _stress(b, frame))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"


def add_to_prediction(result, b: BaselineResult) -> None:
    """Add a whole-structure baseline's energy, per-atom energies, forces and stress to a
    :class:`gpmlip.Prediction` (in place; absent forces or stress stay absent)."""
    result.energy += b.energy
    result.energies = result.energies + b.energies
    if result.forces is not None:
        result.forces = result.forces + b.forces
    if result.stress is not None and b.stress is not None:
        result.stress = result.stress + b.stress


def _stress(b: BaselineResult, frame: Frame) -> np.ndarray:
    if b.stress is None:
        from gpmlip.errors import DataError

        raise DataError(f"frame {frame.index} of {frame.source or 'the data'} has a stress label "
                        "but the baseline gives no stress for it (no periodic cell with a "
                        "volume?); drop the stress label or give the cell")
    return b.stress


class BaselineCalculator(Calculator):
    """A baseline alone as an ASE calculator (e.g. ``SumCalculator([EMT(), ...])`` for a truth).

    Parameters
    ----------
    baseline : Baseline
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, baseline: Baseline, **kwargs) -> None:
        super().__init__(**kwargs)
        self.baseline = baseline

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        """Fill ``self.results`` from :meth:`Baseline.compute`."""
        super().calculate(atoms, properties, system_changes)
        b = self.baseline.compute(self.atoms)
        self.results = {"energy": b.energy, "free_energy": b.energy, "energies": b.energies,
                        "forces": b.forces}
        if b.stress is not None:
            self.results["stress"] = full_3x3_to_voigt_6_stress(b.stress)
