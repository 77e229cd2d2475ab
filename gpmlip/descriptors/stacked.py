"""Several descriptors of the same atoms side by side: SOAP at two cutoffs, say.

Each part is normalised to unit length and scaled by ``sqrt(weight_b)`` before the parts are
joined, so the normalised dot-product kernel of the joined vector sees the weighted mean of the
parts' cosines, ``c = sum_b w_b c_b / sum_b w_b``, raised to ``zeta``.  With ``zeta = 1`` that is
exactly the sum of the parts' kernels; with ``zeta > 1`` it also holds the products of the parts'
cosines (a short-range environment *and* a long-range one).  A short cutoff resolves the first
shells finely; a long one carries the medium range.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms

from gpmlip.descriptors.neighbours import PairList
from gpmlip.descriptors.environments import Environments, unit_rows
from gpmlip.descriptors.soap import SOAP, environments_from_pairs
from gpmlip.errors import SettingsError

PART_REMEDY = "give the part whose cutoff holds nothing a larger r_cut"


class Stacked:
    """Descriptors joined part by part, each of unit length times ``sqrt(weight)``.

    Parameters
    ----------
    parts : sequence of SOAP
        Two or more descriptors of the same species (any cutoffs and bases).
    weights : sequence of float, optional
        Relative weight of each part in the kernel's cosine (default: equal).
    n_jobs : int, optional
        Worker processes for training frames (default: the first part's).

    Notes
    -----
    The pair list is the one of the part that reaches furthest; every part skips the pairs
    beyond its own cutoff.  Jacobians chain through the normalisation,
    ``d(q / |q|) = (I - q_hat q_hat') dq / |q|``.
    """

    def __init__(self, parts: Sequence[SOAP], weights: Sequence[float] | None = None, *,
                 n_jobs: int | None = None) -> None:
        self.parts = list(parts)
        if len(self.parts) < 2:
            raise SettingsError("Stacked needs two or more descriptors; use the descriptor "
                                "itself for one")
        species = {tuple(p.species) for p in self.parts}
        if len(species) != 1:
            raise SettingsError("the stacked descriptors know different species "
                                f"{sorted(species)}; build every part with the same species")
        weights = [1.0] * len(self.parts) if weights is None else [float(w) for w in weights]
        if len(weights) != len(self.parts) or not all(np.isfinite(w) and w > 0 for w in weights):
            raise SettingsError(f"weights {weights}: give one positive number per part "
                                f"({len(self.parts)} parts)")
        self.weights = weights
        self._scale = np.sqrt(np.array(weights) / sum(weights))
        self.n_jobs = int(self.parts[0].n_jobs if n_jobs is None else n_jobs)
        if self.n_jobs < 1:
            raise SettingsError(f"n_jobs={n_jobs}: use 1 or more worker processes")
        self._widths = [p.n_features for p in self.parts]
        self._bounds = np.concatenate([[0], np.cumsum(self._widths)])
        self._outer = max(range(len(self.parts)), key=lambda b: self.parts[b].neighbour_cutoff)
        self._cache: tuple[PairList, list[np.ndarray], list[np.ndarray]] | None = None

    # -- settings ------------------------------------------------------------------------------
    @property
    def species(self) -> tuple[int, ...]:
        """Atomic numbers the descriptor knows, sorted."""
        return tuple(self.parts[0].species)

    @property
    def n_features(self) -> int:
        """Length of one atom's joined vector."""
        return int(self._bounds[-1])

    @property
    def neighbour_cutoff(self) -> float:
        """The largest of the parts' neighbour cutoffs (Å)."""
        return self.parts[self._outer].neighbour_cutoff

    @property
    def smooth(self) -> bool:
        """Whether every part is smooth through its cutoff."""
        return all(getattr(p, "smooth", False) for p in self.parts)

    def to_dict(self) -> dict:
        """JSON-ready settings, the inverse of :meth:`from_dict`."""
        return {"type": "Stacked", "parts": [p.to_dict() for p in self.parts],
                "weights": list(self.weights)}

    @classmethod
    def from_dict(cls, data: dict, *, n_jobs: int = 1) -> Stacked:
        """Rebuild from :meth:`to_dict` output (the parts are SOAP settings)."""
        if data.get("type") != "Stacked":
            raise SettingsError("descriptor settings are not for Stacked")
        return cls([SOAP.from_dict(part, n_jobs=n_jobs) for part in data["parts"]],
                   data.get("weights"), n_jobs=n_jobs)

    def __repr__(self) -> str:
        return f"Stacked({self.parts!r}, weights={self.weights})"

    # -- the engine path -----------------------------------------------------------------------
    def check_structure(self, atoms: Atoms) -> None:
        """Raise a :class:`~gpmlip.errors.StructureError` if ``atoms`` cannot be described."""
        self.parts[self._outer].check_structure(atoms)

    def pair_list(self, atoms: Atoms) -> PairList:
        """Every neighbour within the largest part's cutoff (see :meth:`SOAP.pair_list`)."""
        return self.parts[self._outer].pair_list(atoms)

    def _raw(self, pairs: PairList) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Unit rows and norms of every part (cached for the last pair list: MD asks for the
        features and then back-propagates through the same list)."""
        if self._cache is not None and self._cache[0] is pairs:
            return self._cache[1], self._cache[2]
        units, norms = [], []
        for part in self.parts:
            u, n = unit_rows(part.features(pairs), PART_REMEDY)
            units.append(u)
            norms.append(n)
        self._cache = (pairs, units, norms)
        return units, norms

    def features(self, pairs: PairList) -> np.ndarray:
        """Joined descriptor of every centre, shape (n_centres, n_features)."""
        units, _ = self._raw(pairs)
        return np.concatenate([s * u for s, u in zip(self._scale, units)], axis=1)

    def backward(self, pairs: PairList, grad: np.ndarray) -> np.ndarray:
        """``dE/dr_ij`` for every pair given ``grad = dE/dq`` of the joined vector per centre."""
        grad = np.asarray(grad, dtype=float)
        if grad.shape != (pairs.n_centres, self.n_features):
            raise ValueError(f"grad has shape {grad.shape}; expected "
                             f"({pairs.n_centres}, {self.n_features})")
        units, norms = self._raw(pairs)
        out = np.zeros((pairs.n_pairs, 3))
        for b, part in enumerate(self.parts):
            g = grad[:, self._bounds[b]:self._bounds[b + 1]]
            raw = self._scale[b] * (g - np.einsum("if,if->i", g, units[b])[:, None] * units[b])
            out += part.backward(pairs, raw / norms[b])
        return out

    def describe(self, atoms: Atoms, gradients: bool = False, **_) -> Environments:
        """Describe every atom (see :meth:`SOAP.describe`)."""
        pairs = self.pair_list(atoms)
        if not gradients:
            return Environments(features=self.features(pairs), species=atoms.numbers.copy())
        feats, jacs = [], []
        centre = np.asarray(pairs.centre, dtype=np.int64)
        for s, part in zip(self._scale, self.parts):
            q, jac = part.engine.jacobian(pairs)
            u, n = unit_rows(q, PART_REMEDY)
            uc = u[centre]
            jac -= np.einsum("paf,pf->pa", jac, uc)[:, :, None] * uc[:, None, :]
            jac *= (s / n[centre])[:, :, None]
            feats.append(s * u)
            jacs.append(jac)
        return environments_from_pairs(np.concatenate(feats, axis=1), pairs,
                                       np.concatenate(jacs, axis=2))

    def close(self) -> None:
        """Shut down the parts' worker pools."""
        for part in self.parts:
            part.close()
