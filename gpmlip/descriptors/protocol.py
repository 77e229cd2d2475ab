"""What the GP layer needs of a descriptor: the :class:`Descriptor` protocol.

:class:`gpmlip.SOAP` is the implementation gpmlip ships; any object with these members can stand
in for it in :class:`gpmlip.SparseGP` (check a new one with :mod:`gpmlip.testing`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from ase import Atoms

from gpmlip.descriptors.neighbours import PairList
from gpmlip.descriptors.environments import Environments


@runtime_checkable
class Descriptor(Protocol):
    """A per-atom descriptor with a pair-list path and its back-propagation.

    Attributes
    ----------
    species : sequence of int
        Atomic numbers it describes (sorted).
    n_features : int
        Length of one atom's descriptor vector.
    neighbour_cutoff : float
        Distance (Å) beyond which a neighbour changes nothing.
    n_jobs : int
        Worker processes for the descriptors and Jacobians of many atoms.
    """

    species: tuple[int, ...] | list[int]
    n_jobs: int

    @property
    def n_features(self) -> int: ...

    @property
    def neighbour_cutoff(self) -> float: ...

    def describe(self, atoms: Atoms, gradients: bool = False) -> Environments:
        """Descriptors of every atom, shape (n_atoms, n_features), and with ``gradients`` their
        Jacobians with respect to positions and strain."""
        ...

    def pair_list(self, atoms: Atoms) -> PairList:
        """Every neighbour pair within :attr:`neighbour_cutoff` (periodic images included)."""
        ...

    def features(self, pairs: PairList) -> np.ndarray:
        """Descriptor of every centre of a pair list, shape (n_centres, n_features)."""
        ...

    def backward(self, pairs: PairList, grad: np.ndarray) -> np.ndarray:
        """``dE/dr_ij`` per pair, shape (n_pairs, 3), given ``grad = dE/dq`` per centre
        (n_centres, n_features): forces without the Jacobian."""
        ...

    def to_dict(self) -> dict:
        """JSON-ready settings from which the descriptor can be rebuilt."""
        ...
