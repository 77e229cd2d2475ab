"""A smooth many-body stand-in with :class:`gpmlip.SparseGP`'s pair-list interface (a test double).

It lets the LAMMPS plugin, its tests and its benchmark run before (and independently of) a
fitted model.  Per-atom energy of the second-moment tight-binding form (Cleri & Rosato, Phys.
Rev. B 48, 22 (1993); Cu-like parameters), with a cutoff ``fc`` that switches smoothly from 1 to 0
over the last Angstrom and a species-pair factor ``a``:

    E_i = sum_j A a_ij exp(-p (r_ij/r0 - 1)) fc(r_ij) - sqrt( sum_j xi^2 a_ij exp(-2q (r_ij/r0 - 1)) fc(r_ij) )

which is not pairwise (the square root couples all neighbours of i) and has a stable fcc
lattice near a = 3.6 Angstrom, so NVT and NPT runs behave like a metal.  :class:`ToyCalculator`
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

    A, p, xi, q, r0, width = 0.0855, 10.96, 1.224, 2.278, 2.556, 1.0

    def __init__(self, species=(29, 79), cutoff: float = 5.0) -> None:
        self.species = tuple(species)
        self.pair_cutoff = float(cutoff)
        n = max(self.species) + 1
        # a symmetric, species-dependent factor so two-species cells test the type mapping
        self.a = np.ones((n, n))
        for u, zi in enumerate(self.species):
            for v, zj in enumerate(self.species):
                self.a[zi, zj] = 1.0 + 0.1 * (u + v) + 0.05 * u * v

    def _cutoff(self, r):
        rc, w = self.pair_cutoff, self.width
        t = np.clip((r - (rc - w)) / w, 0.0, 1.0)
        fc = 0.5 * (1.0 + np.cos(np.pi * t))
        dfc = np.where((t > 0) & (t < 1), -0.5 * np.pi / w * np.sin(np.pi * t), 0.0)
        return fc, dfc

    def pair_energies(self, centre_numbers, i, j, r_ij, neighbour_numbers, *, std=False):
        """Per-atom energies and dE/dr_ij for a pair list (see gpmlip.SparseGP.pair_energies)."""
        centre_numbers = np.asarray(centre_numbers)
        i = np.asarray(i)
        r_ij = np.asarray(r_ij, dtype=np.float64).reshape(-1, 3)
        n = len(centre_numbers)
        r = np.linalg.norm(r_ij, axis=1)
        fc, dfc = self._cutoff(r)
        a = self.a[centre_numbers[i], np.asarray(neighbour_numbers)]
        rep = self.A * a * np.exp(-self.p * (r / self.r0 - 1.0))
        band = self.xi ** 2 * a * np.exp(-2.0 * self.q * (r / self.r0 - 1.0))
        rho = np.bincount(i, weights=band * fc, minlength=n)
        root = np.sqrt(rho)
        energies = np.bincount(i, weights=rep * fc, minlength=n) - root
        de_drho = np.where(root > 0, -0.5 / np.where(root > 0, root, 1.0), 0.0)
        de_dr = (rep * (-self.p / self.r0 * fc + dfc)
                 + de_drho[i] * band * (-2.0 * self.q / self.r0 * fc + dfc))
        d = (de_dr / np.where(r > 0, r, 1.0))[:, None] * r_ij
        s = np.tanh(rho / 20.0) if std else None    # a bounded per-atom "uncertainty" in [0, 1)
        return PairResult(energies, d, s)


def make() -> ToyModel:
    """Factory for ``pair_style gpmlip python:lammps_toy:make`` (with this directory on
    ``PYTHONPATH``)."""
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
