"""Ziegler-Biersack-Littmark universal screened nuclear repulsion, switched off smoothly.

The pair energy and its switching function are those of LAMMPS's ``pair_style zbl inner outer``
(ZBL, *The Stopping and Range of Ions in Solids*, Pergamon 1985; the switch is
``pair_style lj/gromacs``'s): with ``a = 0.46850 / (Z_i^0.23 + Z_j^0.23)`` and ``x = r / a``,

    E_zbl(r) = (Z_i Z_j e^2 / 4 pi eps0) / r * phi(x),
    phi(x)   = 0.18175 e^{-3.19980 x} + 0.50986 e^{-0.94229 x}
               + 0.28022 e^{-0.40290 x} + 0.02817 e^{-0.20162 x},

and, with ``t = r - inner`` and ``tc = outer - inner``,

    E(r) = E_zbl(r) + C + [r > inner] (A t^3 / 3 + B t^4 / 4)   for r < outer, else 0,
    A = (-3 E'(rc) + tc E''(rc)) / tc^2,  B = (2 E'(rc) - tc E''(rc)) / tc^3,
    C = -E(rc) + tc E'(rc) / 2 - tc^2 E''(rc) / 12,

so that energy, force and curvature go to zero at ``outer``.  Unlike LAMMPS (one pair of radii
for all types), the radii may differ per species pair.
"""

from __future__ import annotations

from itertools import combinations_with_replacement

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from gpmlip.baselines.base import Baseline, BaselineResult
from gpmlip.descriptors.neighbours import neighbour_list
from gpmlip.errors import SettingsError

COULOMB = 14.399645
"""e^2 / (4 pi eps0) in eV Å: LAMMPS's ``qqr2e`` in metal units."""
SCREEN_A0 = 0.46850
SCREEN_POWER = 0.23
PHI_C = np.array([0.18175, 0.50986, 0.28022, 0.02817])
PHI_D = np.array([3.19980, 0.94229, 0.40290, 0.20162])


def zbl_energy(r, zi, zj, order: int = 0):
    """Unswitched ZBL pair energy (``order`` 0), or its first or second derivative, eV (/Å^k)."""
    r = np.asarray(r, dtype=float)
    a = SCREEN_A0 / (zi ** SCREEN_POWER + zj ** SCREEN_POWER)
    k = COULOMB * zi * zj
    d = PHI_D / a
    ex = PHI_C * np.exp(-np.multiply.outer(r, d))          # (..., 4)
    phi, dphi, d2phi = ex.sum(-1), -(ex * d).sum(-1), (ex * d * d).sum(-1)
    if order == 0:
        return k * phi / r
    if order == 1:
        return k * (dphi / r - phi / r ** 2)
    return k * (d2phi / r - 2 * dphi / r ** 2 + 2 * phi / r ** 3)


def _pair_key(key) -> tuple[int, int]:
    """"Cu-Au", ("Cu", "Au") or (29, 79) -> sorted atomic numbers."""
    parts = key.split("-") if isinstance(key, str) else list(key)
    if len(parts) != 2:
        raise SettingsError(f"zbl pairs: {key!r} is not a species pair; write it as \"Cu-Au\"")
    out = []
    for p in parts:
        z = atomic_numbers.get(p.strip()) if isinstance(p, str) else int(p)
        if z is None or not 0 < z < len(chemical_symbols):
            raise SettingsError(f"zbl pairs: {p!r} in {key!r} is not an element symbol")
        out.append(z)
    return tuple(sorted(out))


def _check_radii(inner, outer, where: str) -> tuple[float, float]:
    try:
        inner, outer = float(inner), float(outer)
    except (TypeError, ValueError):
        raise SettingsError(f"zbl {where}: inner and outer must be numbers (Å)") from None
    if not (np.isfinite(inner) and np.isfinite(outer) and 0 < inner < outer):
        raise SettingsError(f"zbl {where}: inner={inner}, outer={outer}; need 0 < inner < outer "
                            "(the switch starts at inner and ends at the cutoff outer, in Å)")
    return inner, outer


class ZBL(Baseline):
    """ZBL screened nuclear repulsion with LAMMPS's switch between ``inner`` and ``outer``.

    Parameters
    ----------
    inner, outer : float
        Where the switch begins and the cutoff (Å), for every species pair not in ``pairs``.
        Choose ``outer`` below the nearest-neighbour distances the training data sample, so that
        the GP learns the residual where it has data and ZBL only acts where it has none.
    pairs : dict, optional
        Per species pair radii: ``{"Cu-Au": [inner, outer], ...}``.
    """

    name = "zbl"

    def __init__(self, inner: float = 1.0, outer: float = 2.0, *,
                 pairs: dict | None = None) -> None:
        super().__init__()
        self.inner, self.outer = _check_radii(inner, outer, "")
        self.pairs = {}
        for key, radii in (pairs or {}).items():
            try:
                r_in, r_out = radii
            except (TypeError, ValueError):
                raise SettingsError(f"zbl pairs[{key!r}] = {radii!r}: give [inner, outer] "
                                    "in Å") from None
            self.pairs[_pair_key(key)] = _check_radii(r_in, r_out, f"pairs[{key!r}]")
        self.cutoff = max([self.outer] + [o for _, o in self.pairs.values()])
        self._switch: dict[tuple[int, int], tuple] = {}

    def settings(self) -> dict:
        return {"inner": self.inner, "outer": self.outer,
                "pairs": {f"{chemical_symbols[a]}-{chemical_symbols[b]}": list(r)
                          for (a, b), r in sorted(self.pairs.items())}}

    def check_species(self, species) -> None:
        known = set(int(z) for z in species)
        for a, b in self.pairs:
            if a not in known or b not in known:
                raise SettingsError(
                    f"zbl pairs: {chemical_symbols[a]}-{chemical_symbols[b]} names a species "
                    f"the model does not have ({', '.join(chemical_symbols[z] for z in sorted(known))})"
                    "; remove it or add the species to the descriptor")

    def radii(self, zi: int, zj: int) -> tuple[float, float]:
        """(inner, outer) of a species pair."""
        return self.pairs.get(tuple(sorted((int(zi), int(zj)))), (self.inner, self.outer))

    def _coefficients(self, zi: int, zj: int) -> tuple:
        key = tuple(sorted((int(zi), int(zj))))
        if key not in self._switch:
            inner, outer = self.radii(*key)
            tc = outer - inner
            e, d1, d2 = (zbl_energy(outer, *key, order=k) for k in range(3))
            a = (-3 * d1 + tc * d2) / tc ** 2
            b = (2 * d1 - tc * d2) / tc ** 3
            c = -e + tc * d1 / 2 - tc ** 2 * d2 / 12
            self._switch[key] = (inner, outer, a, b, c)
        return self._switch[key]

    def pair(self, r, zi: int, zj: int) -> tuple[np.ndarray, np.ndarray]:
        """Switched pair energy E(r) and dE/dr for one species pair (zero beyond ``outer``)."""
        r = np.asarray(r, dtype=float)
        inner, outer, a, b, c = self._coefficients(zi, zj)
        inside = r < outer
        rr = np.where(inside, r, outer)
        t = np.clip(rr - inner, 0.0, None)
        e = zbl_energy(rr, zi, zj) + c + t ** 3 * (a / 3 + b * t / 4)
        de = zbl_energy(rr, zi, zj, order=1) + t ** 2 * (a + b * t)
        return np.where(inside, e, 0.0), np.where(inside, de, 0.0)

    def pair_terms(self, centre_species, centre, vector, neighbour_species):
        """Half of every pair's energy on its centre; ``dE/dr_ij`` (n_pairs, 3).

        The pair list must be full (each pair in both directions), as the model's and LAMMPS's
        are.
        """
        centre_species = np.asarray(centre_species)
        energies = np.zeros(len(centre_species))
        d_e = np.zeros((len(centre), 3))
        if not len(centre):
            return energies, d_e
        r = np.linalg.norm(vector, axis=1)
        zi, zj = centre_species[centre], np.asarray(neighbour_species)
        lo, hi = np.minimum(zi, zj), np.maximum(zi, zj)
        near = r < self.cutoff
        for a, b in {(int(x), int(y)) for x, y in zip(lo[near], hi[near])}:
            sel = np.flatnonzero(near & (lo == a) & (hi == b))
            e, de = self.pair(r[sel], a, b)
            np.add.at(energies, centre[sel], 0.5 * e)
            d_e[sel] = (0.5 * de / r[sel])[:, None] * vector[sel]
        return energies, d_e

    def compute(self, atoms: Atoms) -> BaselineResult:
        pairs = neighbour_list(atoms, self.cutoff)
        i, j, vec = pairs.centre, pairs.neighbour, pairs.vector
        energies, d_e = self.pair_terms(pairs.centre_species, i, vec, pairs.neighbour_species)
        forces = np.zeros((len(atoms), 3))
        np.add.at(forces, i, d_e)
        np.add.at(forces, j, -d_e)
        stress = None
        if atoms.pbc.all() and abs(atoms.cell.volume) > 1e-8:
            s = np.einsum("pa,pb->ab", d_e, vec) / abs(atoms.cell.volume)
            stress = 0.5 * (s + s.T)
        return BaselineResult(float(energies.sum()), forces, stress, energies)

    def lammps_lines(self, species: list[str]) -> tuple[list[str], list[str]]:
        """``pair_style`` sub-styles and ``pair_coeff`` lines of LAMMPS's native zbl for this
        baseline, for types numbered in the order of ``species`` (one zbl sub-style per
        distinct pair of radii; LAMMPS's zbl has global radii)."""
        z = [atomic_numbers[s] for s in species]
        groups: dict[tuple[float, float], list[tuple[int, int]]] = {}
        for ti, tj in combinations_with_replacement(range(len(z)), 2):
            groups.setdefault(self.radii(z[ti], z[tj]), []).append((ti, tj))
        styles, coeffs = [], []
        for k, (radii, type_pairs) in enumerate(sorted(groups.items())):
            styles.append(f"zbl {radii[0]:g} {radii[1]:g}")
            name = "zbl" if len(groups) == 1 else f"zbl {k + 1}"
            coeffs += [f"pair_coeff {ti + 1} {tj + 1} {name} {z[ti]} {z[tj]}"
                       for ti, tj in type_pairs]
        return styles, coeffs
