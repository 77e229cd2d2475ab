"""A smooth many-body stand-in with :class:`gpmlip.SparseGP`'s pair-list interface.

It lets the LAMMPS plugin, its tests and its benchmark run before (and independently of) a
fitted model.  Per-atom energy, with a smooth cosine cutoff ``fc``:

    E_i = -sqrt( sum_j a(Z_i, Z_j) exp(-2 (r_ij - r0)) fc(r_ij) )

which is not pairwise (the square root couples all neighbours of i).  :class:`ToyCalculator`
evaluates the same model through ASE's neighbour list, as the reference LAMMPS is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.neighborlist import neighbor_list


@dataclass
class PairResult:
    """The result of ``pair_energies``: per-atom energies, pair gradients, optional std."""

    energies: np.ndarray
    dE_dr: np.ndarray
    std: np.ndarray | None = None


class ToyModel:
    """Stand-in model; ``species`` atomic numbers, cutoff in Angstrom."""

    def __init__(self, species=(29, 79), cutoff: float = 5.0, r0: float = 2.5) -> None:
        self.species = tuple(species)
        self.pair_cutoff = float(cutoff)
        self.r0 = r0
        n = max(self.species) + 1
        # a symmetric, species-dependent prefactor so two-species cells test the type mapping
        self.a = np.ones((n, n))
        for p, zi in enumerate(self.species):
            for q, zj in enumerate(self.species):
                self.a[zi, zj] = 1.0 + 0.3 * p + 0.3 * q + 0.2 * p * q

    def pair_energies(self, centre_numbers, i, j, r_ij, neighbour_numbers, *, std=False):
        """Per-atom energies and dE/dr_ij for a pair list (see gpmlip.SparseGP.pair_energies)."""
        centre_numbers = np.asarray(centre_numbers)
        i = np.asarray(i)
        r_ij = np.asarray(r_ij, dtype=np.float64).reshape(-1, 3)
        n = len(centre_numbers)
        r = np.linalg.norm(r_ij, axis=1)
        rc = self.pair_cutoff
        inside = r < rc
        fc = np.where(inside, 0.5 * (np.cos(np.pi * np.minimum(r, rc) / rc) + 1.0), 0.0)
        dfc = np.where(inside, -0.5 * np.pi / rc * np.sin(np.pi * np.minimum(r, rc) / rc), 0.0)
        a = self.a[centre_numbers[i], np.asarray(neighbour_numbers)]
        g = np.exp(-2.0 * (r - self.r0))
        rho = np.bincount(i, weights=a * g * fc, minlength=n)
        root = np.sqrt(rho)
        energies = -root
        # dE_i/drho_i = -1 / (2 sqrt(rho_i)); drho/dr = a (g' fc + g fc')
        de_drho = np.where(root > 0, -0.5 / np.where(root > 0, root, 1.0), 0.0)
        drho_dr = a * g * (-2.0 * fc + dfc)
        scale = de_drho[i] * drho_dr / np.where(r > 0, r, 1.0)
        d = scale[:, None] * r_ij
        s = np.tanh(rho / 20.0) if std else None    # a bounded per-atom "uncertainty" in [0, 1)
        return PairResult(energies, d, s)


def make() -> ToyModel:
    """Factory for ``pair_style gpmlip python:gpmlip.lammps.toy:make``."""
    return ToyModel()


class ToyCalculator(Calculator):
    """ASE calculator of any pair-list model, through ASE's own neighbour list (the reference)."""

    implemented_properties = ["energy", "energies", "free_energy", "forces", "stress"]

    def __init__(self, model=None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = model or ToyModel()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        a = self.atoms
        i, j, d = neighbor_list("ijD", a, self.model.pair_cutoff)
        z = a.numbers.astype(np.int64)
        res = self.model.pair_energies(z, i, j, d, z[j])
        forces = np.zeros((len(a), 3))
        np.add.at(forces, i, res.dE_dr)
        np.subtract.at(forces, j, res.dE_dr)
        self.results["energies"] = res.energies
        self.results["energy"] = self.results["free_energy"] = float(res.energies.sum())
        self.results["forces"] = forces
        if a.cell.rank == 3:
            virial = -np.einsum("pa,pb->ab", d, res.dE_dr)
            stress = -virial / a.get_volume()
            self.results["stress"] = stress.flat[[0, 4, 8, 5, 2, 1]]
