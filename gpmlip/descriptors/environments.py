"""The result of describing a structure: per-atom features and their sparse Jacobians."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase.data import chemical_symbols

from gpmlip.errors import SettingsError


def unit_rows(q: np.ndarray, remedy: str = "increase r_cut") -> tuple[np.ndarray, np.ndarray]:
    """Descriptor rows divided by their norm, and the norms (shape (n, 1)): the normalised
    descriptor of the dot-product kernel and of a stacked descriptor's parts.

    A zero row (an atom with nothing in the cutoff, not even its own density) is an error: the
    normalised kernel is undefined; ``remedy`` says what to do about it.
    """
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if (norm == 0).any():
        raise SettingsError("a descriptor vector is zero: the atom has no neighbours at all "
                            f"and the normalised kernel is undefined; {remedy}")
    return q / norm, norm


@dataclass
class Environments:
    """Per-atom descriptors of one structure and, optionally, their exact derivatives.

    Attributes
    ----------
    features : ndarray, shape (n_atoms, n_features)
        Descriptor vector q_i of every atom, in atom order.
    species : ndarray of int, shape (n_atoms,)
        Atomic number of every row of ``features``.
    pair_centre, pair_atom : ndarray of int, shape (n_pairs,)
        Sparse Jacobian index: pair p holds ``d q_{pair_centre[p]} / d r_{pair_atom[p]}``.  Every
        (centre, atom) combination appears once: periodic images of an atom are already summed onto
        the real atom, and the centre's derivative with respect to its own position is included.
        Sorted by centre.
    jacobian : ndarray, shape (n_pairs, 3, n_features)
        ``jacobian[p, a, :] = d q_i / d r_{j,a}`` for ``(i, j) = (pair_centre[p], pair_atom[p])``.
    strain_jacobian : ndarray, shape (n_atoms, 3, 3, n_features)
        Derivative of each q_i under a homogeneous strain of cell and positions,
        ``r -> (1 + eps) r``: ``strain_jacobian[i, a, b, :] = d q_i / d eps_ab
        = sum_k (r_k - r_i)_b d q_i / d r_{k,a}``, summed over every image k in i's cutoff sphere.
        This is what the virial and stress need.
    """

    features: np.ndarray
    species: np.ndarray
    pair_centre: np.ndarray | None = None
    pair_atom: np.ndarray | None = None
    jacobian: np.ndarray | None = None
    strain_jacobian: np.ndarray | None = None

    @property
    def n_atoms(self) -> int:
        """Number of atoms (rows)."""
        return len(self.features)

    @property
    def symbols(self) -> list[str]:
        """Chemical symbols of the rows."""
        return [chemical_symbols[z] for z in self.species]

    @property
    def has_gradients(self) -> bool:
        """Whether the Jacobians were computed."""
        return self.jacobian is not None

    def _need_gradients(self) -> None:
        if not self.has_gradients:
            raise ValueError("these environments have no Jacobian: describe(atoms, gradients=True)")

    def position_vjp(self, grad: np.ndarray) -> np.ndarray:
        """Contract per-atom gradients dE/dq_i with the Jacobian: ``sum_i grad_i . dq_i/dr_j``.

        Parameters
        ----------
        grad : ndarray, shape (n_atoms, n_features)
            Gradient of a scalar (e.g. the energy) with respect to each atom's descriptor.

        Returns
        -------
        ndarray, shape (n_atoms, 3)
            Gradient of that scalar with respect to the positions (forces are its negative).
        """
        self._need_gradients()
        per_pair = np.einsum("paf,pf->pa", self.jacobian, grad[self.pair_centre])
        return np.stack(
            [np.bincount(self.pair_atom, per_pair[:, a], minlength=self.n_atoms) for a in range(3)],
            axis=1,
        )

    def strain_vjp(self, grad: np.ndarray) -> np.ndarray:
        """Derivative of a scalar under homogeneous strain, ``sum_i grad_i . dq_i/deps``, shape (3, 3).

        Divided by the cell volume this is the stress in ASE's sign convention.
        """
        self._need_gradients()
        return np.einsum("iabf,if->ab", self.strain_jacobian, grad)

    def dense_jacobian(self) -> np.ndarray:
        """The full Jacobian ``d q_i / d r_j``, shape (n_atoms, n_atoms, 3, n_features).

        Memory grows as N²: for tests and small systems only.
        """
        self._need_gradients()
        n, f = self.features.shape
        dense = np.zeros((n, n, 3, f))
        dense[self.pair_centre, self.pair_atom] = self.jacobian
        return dense

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays, in bytes."""
        arrays = (self.features, self.species, self.pair_centre, self.pair_atom, self.jacobian,
                  self.strain_jacobian)
        return int(sum(a.nbytes for a in arrays if a is not None))
