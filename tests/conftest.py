"""Shared test structures: small, deterministic, covering every kind of cell."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule

import gpmlip

CU_SETTINGS = dict(species=["Cu"], r_cut=5.0, n_max=8, l_max=6, sigma=0.5)
MULTI_SETTINGS = dict(species=["H", "C", "O", "Al", "Si"], r_cut=3.5, n_max=4, l_max=3, sigma=0.5)


def cu_bulk(repeat: int = 2, seed: int = 1) -> Atoms:
    """Rattled cubic fcc Cu, 4 * repeat**3 atoms."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    atoms.rattle(0.05, seed=seed)
    return atoms


def cu_single() -> Atoms:
    """A 1-atom primitive fcc cell: every neighbour is an image of the atom itself."""
    return bulk("Cu", "fcc", a=3.61)


def cu_slab() -> Atoms:
    """A rattled Cu(111) slab, periodic in-plane, vacuum along z."""
    atoms = fcc111("Cu", (2, 2, 3), vacuum=6.0)
    atoms.rattle(0.05, seed=2)
    return atoms


def ethanol() -> Atoms:
    """An isolated molecule, no cell, no periodicity."""
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.02, seed=3)
    return atoms


def triclinic_three_species() -> Atoms:
    """A rattled 3-species triclinic cell much smaller than the cutoff sphere."""
    cell = np.array([[3.1, 0.0, 0.0], [0.9, 3.3, 0.0], [0.7, 0.6, 3.6]])
    frac = np.array([[0.0, 0.0, 0.0], [0.5, 0.45, 0.5], [0.2, 0.7, 0.25]])
    atoms = Atoms("AlSiO", scaled_positions=frac, cell=cell, pbc=True)
    atoms.rattle(0.05, seed=4)
    return atoms


SYSTEMS = {
    "cu_bulk": (cu_bulk, CU_SETTINGS),
    "cu_single": (cu_single, CU_SETTINGS),
    "cu_slab": (cu_slab, CU_SETTINGS),
    "molecule": (ethanol, MULTI_SETTINGS),
    "triclinic": (triclinic_three_species, MULTI_SETTINGS),
}


WEIGHTINGS = {"smooth": "smooth", "hard": None}
"""The default smooth cutoff and dscribe's unweighted density (hard cutoff at r_cut + padding)."""


@pytest.fixture(params=[(name, w) for name in sorted(SYSTEMS) for w in WEIGHTINGS],
                ids=lambda p: f"{p[0]}-{p[1]}")
def system(request):
    """(name, atoms, gpmlip.SOAP, settings) for each kind of cell, smooth and hard cutoff;
    ``settings`` include the weighting as dscribe takes it."""
    name, w = request.param
    build, settings = SYSTEMS[name]
    soap = gpmlip.SOAP(**settings, weighting=WEIGHTINGS[w])
    return name, build(), soap, {**settings, "weighting": soap.settings.weighting_dict}


SMALL_CU = dict(species=["Cu"], r_cut=4.0, n_max=4, l_max=3, sigma=0.5)
SMALL_MULTI = dict(species=["Cu", "Au"], r_cut=4.0, n_max=3, l_max=2, sigma=0.5)


def emt_frames(n: int, seed: int, *, repeat: int = 2, rattle: float = 0.1, strain: float = 0.01,
               alloy: bool = False, labels=("energy", "forces", "stress")):
    """Rattled, strained fcc Cu (or CuAu) cells labelled with EMT, labels on a SinglePointCalculator."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.7 if alloy else 3.61, cubic=True).repeat(repeat)
        if alloy:
            atoms.numbers[rng.permutation(len(atoms))[: len(atoms) // 2]] = 79
        eps = strain * rng.standard_normal((3, 3))
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True)
        atoms.positions += rattle * rng.standard_normal(atoms.positions.shape)
        atoms.calc = EMT()
        values = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
                  "stress": atoms.get_stress()}
        atoms.calc = SinglePointCalculator(atoms, **{k: values[k] for k in labels})
        out.append(atoms)
    return out


def finite_difference_gradient(f, x: np.ndarray, h: float = 1e-2) -> np.ndarray:
    """Gradient of the scalar ``f`` at ``x`` by the fourth-order central stencil.

    The step is chosen for objectives of order 1e2-1e3 whose values carry round-off of ~1e-8
    (Cholesky factors of ill-conditioned kernels). Measured on the log-likelihood of
    ``test_twobody``'s model: the largest deviation from the analytic gradient is 6e-6 at
    h = 1e-2 (truncation, ~h^4), 3e-5 at 1e-3 and 2e-4 at 3e-4 (round-off, ~1/h), while a
    two-point difference at h = 1e-5 was off by 1.3e-3 and failed a correct gradient.
    """
    x = np.asarray(x, dtype=float)
    grad = np.empty_like(x)
    for i in range(len(x)):
        e = np.zeros_like(x)
        e[i] = h
        grad[i] = (8 * (f(x + e) - f(x - e)) - (f(x + 2 * e) - f(x - 2 * e))) / (12 * h)
    return grad
