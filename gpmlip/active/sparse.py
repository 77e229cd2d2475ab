"""Which atoms of a labelled frame become sparse points (the on-the-fly learner's choice)."""

from __future__ import annotations

import numpy as np
from ase import Atoms

from gpmlip.gp.model import SparseGP
from gpmlip.gp.selection import greedy_variance, normalise


def choose_sparse_atoms(model: SparseGP, atoms: Atoms, std: np.ndarray, threshold: float,
                        max_per_species: int) -> list[int]:
    """Atoms of a labelled frame to add as sparse points.

    Per species, the atoms whose normalised std exceeds ``threshold``, taken greedily (each the
    one least explained by the model's sparse points and the atoms already taken) until
    ``max_per_species`` or until none is left above ``threshold``.
    """
    features = model.descriptor.describe(atoms, gradients=False).features
    chosen = []
    for z in np.unique(atoms.numbers):
        cand = np.flatnonzero((atoms.numbers == z) & (std > threshold))
        cand = cand[np.argsort(-std[cand], kind="stable")]
        if not len(cand):
            continue
        existing = model.sparse_set.features[model.sparse_set.species == z] if model.is_fitted \
            else None
        picked = greedy_variance(normalise(features[cand]), min(max_per_species, len(cand)),
                                 model.zeta, existing=existing, tolerance=threshold ** 2,
                                 warn=False)
        chosen.extend(int(a) for a in cand[picked])
    return sorted(chosen)
