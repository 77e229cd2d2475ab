"""Linear-scaling neighbour search with periodic images, for any cell and any ``pbc``.

Every image of every atom that lies within ``cutoff`` of a centre is returned as its own pair,
including images of the centre itself (small cells), so that the local cluster built from the pairs
reproduces the periodic environment exactly.  The search uses a k-d tree over the images that can
reach the cell, so time and memory grow linearly with the number of atoms.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from gpmlip.errors import StructureError


@dataclass(frozen=True)
class PairList:
    """Centre-neighbour pairs in the engine's input form.

    Attributes
    ----------
    centre_species : ndarray of int, shape (n_centres,)
        Atomic number of every centre.
    centre : ndarray of int, shape (n_pairs,)
        Centre index of every pair, in ``[0, n_centres)``.
    vector : ndarray, shape (n_pairs, 3)
        ``r_j - r_i`` in Å (a periodic image is its own pair; the centre itself is never a pair).
    neighbour_species : ndarray of int, shape (n_pairs,)
        Atomic number of every neighbour.
    neighbour : ndarray of int, shape (n_pairs,), optional
        Index of the atom each neighbour is (an image of); passed through for scattering forces.

    The one pair-list type of gpmlip: :func:`neighbour_list` builds it (sorted by centre, then
    distance), LAMMPS's pair style passes its own, and the SOAP engine, the GP's terms and the
    baselines all read it.
    """

    centre_species: np.ndarray
    centre: np.ndarray
    vector: np.ndarray
    neighbour_species: np.ndarray
    neighbour: np.ndarray | None = None

    @property
    def n_centres(self) -> int:
        """Number of centres."""
        return len(self.centre_species)

    @property
    def n_pairs(self) -> int:
        """Number of pairs."""
        return len(self.centre)

    @property
    def distance(self) -> np.ndarray:
        """Pair distances in Å, shape (n_pairs,)."""
        return np.linalg.norm(self.vector, axis=1)

    @property
    def start(self) -> np.ndarray:
        """Pairs of centre ``i`` are ``start[i]:start[i + 1]`` (for a list sorted by centre)."""
        return np.searchsorted(self.centre, np.arange(self.n_centres + 1))


def _full_cell(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Return a non-singular cell: periodic vectors kept, missing ones completed orthogonally."""
    cell = np.array(cell, dtype=float)
    for k in range(3):
        if pbc[k] and np.linalg.norm(cell[k]) < 1e-8:
            raise StructureError(
                f"the structure is periodic along axis {k} but its cell vector {k} is zero; "
                "set a cell (atoms.set_cell) or make that axis non-periodic (atoms.pbc)"
            )
    if not pbc.any():
        return np.eye(3)
    from ase.geometry import complete_cell

    full = complete_cell(cell)
    # Non-periodic axes: any non-degenerate completion works; replace by an orthogonal unit vector
    # when the given vector would make the cell singular.
    if abs(np.linalg.det(full)) < 1e-10:
        raise StructureError(
            "the periodic cell has (nearly) zero volume; check atoms.cell: its periodic vectors "
            "must be linearly independent"
        )
    return full


def wrap(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Wrap positions into the cell along periodic axes.

    Returns
    -------
    full_cell : ndarray, shape (3, 3)
        The cell, completed to be non-singular along non-periodic axes.
    frac : ndarray, shape (n_atoms, 3)
        Fractional coordinates, in [0, 1) along periodic axes.
    wrapped : ndarray, shape (n_atoms, 3)
        Cartesian wrapped positions.
    """
    pbc = np.asarray(pbc, dtype=bool)
    full = _full_cell(cell, pbc)
    frac = np.linalg.solve(full.T, np.asarray(positions, dtype=float).T).T
    frac[:, pbc] -= np.floor(frac[:, pbc])
    return full, frac, frac @ full


def _search(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float,
    numbers: np.ndarray | None = None,
) -> PairList:
    """Find every (image of an) atom within ``cutoff`` of each atom.

    Parameters
    ----------
    positions : ndarray, shape (n_atoms, 3)
        Cartesian positions in Å (need not be wrapped into the cell).
    cell : ndarray, shape (3, 3)
        Cell vectors as rows; only the periodic ones are used.
    pbc : array of bool, shape (3,)
        Periodicity along each cell vector.
    cutoff : float
        Search radius in Å.
    numbers : array of int, shape (n_atoms,), optional
        Atomic numbers (the pair list's species; 0 without them).

    Returns
    -------
    PairList
        All pairs with distance ``< cutoff``, excluding an atom's zero-shift self pair, sorted
        by centre, then distance.  Coincident atoms are not checked: :func:`neighbour_list` is
        the checked search.
    """
    pbc = np.asarray(pbc, dtype=bool)
    n_atoms = len(positions)
    full, frac, wrapped = wrap(positions, cell, pbc)

    # Perpendicular heights of the cell give how many images can reach the cutoff sphere.
    volume = abs(np.linalg.det(full))
    heights = np.array(
        [volume / np.linalg.norm(np.cross(full[(k + 1) % 3], full[(k + 2) % 3])) for k in range(3)]
    )
    reach = np.where(pbc, cutoff / heights, 0.0)
    n_rep = np.where(pbc, np.ceil(reach).astype(int), 0)

    image_pos, image_atom, image_zero = [], [], []
    for shift in itertools.product(*(range(-n, n + 1) for n in n_rep)):
        shift = np.array(shift, dtype=float)
        f = frac + shift
        keep = np.all((f >= -reach) & (f < 1.0 + reach), axis=1) | ~pbc.any()
        if not keep.any():
            continue
        idx = np.nonzero(keep)[0]
        image_pos.append(f[idx] @ full)
        image_atom.append(idx)
        image_zero.append(np.full(len(idx), not shift.any()))
    img_pos = np.concatenate(image_pos)
    img_atom = np.concatenate(image_atom)
    img_zero = np.concatenate(image_zero)

    pairs = cKDTree(wrapped).sparse_distance_matrix(
        cKDTree(img_pos), cutoff, output_type="ndarray"
    )
    i = pairs["i"].astype(np.int64)
    k = pairs["j"].astype(np.int64)
    not_self = ~(img_zero[k] & (img_atom[k] == i))
    # sparse_distance_matrix drops exact zero distances (its sparse format cannot store them);
    # coincident atoms are rejected by the caller before we get here.
    i, k = i[not_self], k[not_self]
    vec = img_pos[k] - wrapped[i]
    order = np.lexsort((np.linalg.norm(vec, axis=1), i))
    i, k, vec = i[order], k[order], vec[order]
    numbers = np.zeros(n_atoms, dtype=np.int64) if numbers is None else \
        np.asarray(numbers, dtype=np.int64)
    neighbour = img_atom[k]
    return PairList(centre_species=numbers, centre=i, vector=vec,
                    neighbour_species=numbers[neighbour], neighbour=neighbour)


def neighbour_list(atoms, cutoff: float) -> PairList:
    """Every neighbour of every atom of ``atoms`` (periodic images included) within ``cutoff``:
    the one neighbour search of gpmlip (descriptors, the two-body term, baselines, the model
    builder's cutoff choice).

    Raises a :class:`~gpmlip.errors.StructureError` for overlapping atoms (closer than
    :data:`MIN_DISTANCE`) or a degenerate periodic cell.
    """
    if has_coincident_atoms(atoms.positions, atoms.cell.array, atoms.pbc):
        raise StructureError("atoms overlap: two atoms sit on the same position; check the "
                             "positions")
    pairs = _search(atoms.positions, atoms.cell.array, atoms.pbc, cutoff, atoms.numbers)
    check_separation(pairs.centre, pairs.neighbour, pairs.vector)
    return pairs


MIN_DISTANCE = 0.1
"""Atoms closer than this (Å) are rejected as overlapping."""


def check_separation(centre: np.ndarray, neighbour: np.ndarray, vector: np.ndarray) -> None:
    """Raise :class:`~gpmlip.errors.StructureError` for a pair vector that is not finite or
    shorter than :data:`MIN_DISTANCE` (overlapping atoms or periodic images)."""
    if not len(vector):
        return
    if not np.isfinite(vector).all():
        raise StructureError("a pair vector holds NaN or infinite values: the positions are not "
                             "finite (a diverged MD step?)")
    d2 = np.einsum("pa,pa->p", vector, vector)
    k = int(np.argmin(d2))
    if d2[k] < MIN_DISTANCE ** 2:
        raise StructureError(
            f"atoms overlap: centre {int(centre[k])} and neighbour {int(neighbour[k])} (or its "
            f"periodic image) are {np.sqrt(d2[k]):.3g} Å apart, closer than {MIN_DISTANCE} Å; "
            "check the positions and the cell")


def has_coincident_atoms(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> bool:
    """Whether two atoms sit on the same (wrapped) position; the pair search drops exact zero
    distances, so this is checked apart."""
    _, _, wrapped = wrap(positions, cell, pbc)
    if len(wrapped) < 2:
        return False
    d, _ = cKDTree(wrapped).query(wrapped, k=2)
    return bool((d[:, 1] == 0.0).any())
