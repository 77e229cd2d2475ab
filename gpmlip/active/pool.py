"""Batch selection from a pool of candidate structures: uncertain *and* diverse.

Scoring a candidate by the model's uncertainty alone (``top-k``) picks near-duplicates: ten
frames of the same excursion all look equally new.  :func:`select_batch` with
``method="greedy"`` conditions on every pick before the next: the picked structure's environments
are added to the kernel basis (as if they were sparse points pinned by data), the remaining
candidates' uncertainties drop where they resemble the pick, and the next pick is the most
uncertain structure that is left.  Uncertainty is the model's
:attr:`~gpmlip.gp.prediction.Prediction.local_std_normalised` ``u_i``, the quantity the on-the-fly
learner and the gate threshold: the projected-process residual ``1 - k_i K^-1 k_i'`` plus the
uncertainty of the weights, over ``sigma_z^2``, square-rooted.  Conditioning on a pick shrinks
each candidate's residual (``K`` the unit-variance kernel of the sparse points plus the picks so
far) and its weight term by the same fraction.  A structure scores its largest ``u_i`` or, with
``score="rms"``, the root-mean-square over its atoms (``"sum"``: the root of their sum).  ``"topk"`` (no conditioning) and ``"random"`` are
the baselines; MLIP-2's maxvol (D-optimality on the model's basis) is the peer reference.

Once a redundant pool is explained (frames of an MD run a few fs apart), the conditioned scores
fall to ~0 and stop telling frames apart; two rules keep the batch diverse then: a copy of a pick
(same structure fingerprint up to ``duplicate``, blind to translations and atom order) is taken
only when nothing else is left, and near-tied scores go to the candidate farthest from the picks
in fingerprint space.

The conditioning is done with one pivoted-Cholesky basis per species, so a batch of ``b`` picks
costs ``O(n_candidate_atoms * (m + b k))`` with ``k`` environments added per pick.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms

from gpmlip.errors import SettingsError
from gpmlip.gp.model import SparseGP
from gpmlip.gp.selection import PivotedCholesky, normalise
from gpmlip.species import check_known

log = logging.getLogger(__name__)

METHODS = ("greedy", "topk", "random")
SCORES = ("max", "rms", "sum")


@dataclass
class BatchSelection:
    """What :func:`select_batch` chose and why.

    Attributes
    ----------
    indices : list of int
        Positions in the candidate list, in the order picked.
    scores : list of float
        Each pick's largest normalised std at the moment it was picked (after conditioning on
        the earlier picks for ``"greedy"``).
    initial_scores : ndarray, shape (n_candidates,)
        Every candidate's largest normalised std under the model alone.
    method : str
    added_atoms : list of list of int
        For ``"greedy"``: the atoms of each pick that were added to the basis (good sparse
        points when the pick is labelled).
    """

    indices: list[int]
    scores: list[float]
    initial_scores: np.ndarray
    method: str
    added_atoms: list[list[int]] = field(default_factory=list)


class _Basis:
    """The shared pivoted Cholesky basis (:class:`~gpmlip.gp.selection.PivotedCholesky`) of one
    species' candidates, with the model's weight term kept beside it."""

    def __init__(self, sparse: np.ndarray, candidates: np.ndarray, zeta: int,
                 variance: np.ndarray) -> None:
        self.cholesky = PivotedCholesky(candidates, zeta, existing=sparse)
        self.residual = np.clip(self.cholesky.residual, 0.0, 1.0)
        self.initial_residual = self.residual.copy()
        self.variance = variance        # the model's u^2 (residual plus weight term)
        self.weight_term = np.clip(variance - self.residual, 0.0, None)

    def normalised_variance(self) -> np.ndarray:
        """Each candidate's ``u^2`` now: the model's before any pick; after picks the residual
        plus the weight term shrunk by the fraction the residual kept."""
        ratio = np.divide(self.residual, self.initial_residual,
                          out=np.ones_like(self.residual), where=self.initial_residual > 0)
        v = self.residual + self.weight_term * ratio
        unchanged = self.residual == self.initial_residual
        v[unchanged] = self.variance[unchanged]       # exactly the model's where no pick acted
        return np.clip(v, 0.0, 1.0)

    def add(self, rows: np.ndarray, floor: float, cap: int) -> list[int]:
        """Pivot on candidate ``rows`` (most uncertain first) until each has ``u^2 <= floor``."""
        added: list[int] = []
        rows = [r for r in rows if self.residual[r] > 1e-12]     # a sparse point cannot pivot
        while rows and len(added) < cap:
            v = self.normalised_variance()
            best = max(rows, key=lambda r: v[r])
            if v[best] <= floor:
                break
            self.cholesky.pivot(best)
            self.residual = np.clip(self.cholesky.residual, 0.0, 1.0)
            added.append(best)
            rows.remove(best)
        return added


def fingerprints(features: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """One unit vector per structure: the mean of its atoms' normalised descriptors."""
    out = np.zeros((n, features.shape[1]))
    np.add.at(out, owner, features)
    return normalise(out)


def diverse_argmax(scores: np.ndarray, distance: np.ndarray, duplicate: float,
                   ties: float = 1e-3) -> int:
    """The highest score among non-copies (``distance > duplicate``); among near-ties, the one
    farthest from the picks.  Candidates already picked carry ``-inf`` scores."""
    if duplicate <= 0:
        return int(np.argmax(scores))
    open_ = np.isfinite(scores)
    fresh = open_ & (distance > duplicate)
    allowed = fresh if fresh.any() else open_
    best = scores[allowed].max()
    tied = allowed & (scores >= best - ties * abs(best))
    return int(np.flatnonzero(tied)[np.argmax(distance[tied])])


def select_batch(model: SparseGP, candidates: Sequence[Atoms], n_select: int, *,
                 method: str = "greedy", explained: float = 0.1, atoms_per_pick: int = 64,
                 seed: int | None = 0,
                 features: Sequence[np.ndarray] | None = None,
                 score: str = "max", duplicate: float = 1e-12) -> BatchSelection:
    """Choose ``n_select`` structures to label from ``candidates``.

    Parameters
    ----------
    model : gpmlip.SparseGP
        A fitted model (its descriptor, kernel exponent and sparse points are used).
    candidates : sequence of ase.Atoms
        The pool: an MD trajectory, a rattled set, rows of a database.
    n_select : int
        Batch size (at most the pool size).
    method : {"greedy", "topk", "random"}
        ``"greedy"``: conditioned, uncertain and diverse (see the module docstring);
        ``"topk"``: the ``n_select`` highest scores; ``"random"``: uniform.
    explained : float
        A greedy pick's environments are added to the basis (most uncertain first, pivoted so
        near-duplicates within the pick count once) until each of its atoms' std is below
        ``explained`` times the pick's score: labelling it would pin them.
    atoms_per_pick : int
        At most this many environments per pick and species.
    seed : int, optional
        For ``"random"``.
    score : {"max", "rms", "sum"}
        A structure's score: its largest atomic normalised std (the on-the-fly trigger), the
        root-mean-square over its atoms (how much of it is new, not only its most novel atom),
        or the root of the sum of ``u_i^2`` over its atoms (the total new variance a label
        would pin: a larger structure with as much novelty per atom counts more).
    duplicate : float
        For ``"greedy"``: a candidate whose fingerprint (the mean of its atoms' normalised
        descriptors, blind to translations and atom order) has cosine distance ``<= duplicate``
        to a pick's is a copy of it (frames of an MD run 4 fs apart are 1e-9 to 1e-7 apart) and
        is only taken when nothing else is left; among candidates whose scores tie with the best
        (within 0.1 %, e.g. all explained to ~0 in a redundant pool) the one farthest from the
        picks in fingerprint space is taken.  ``0`` disables both.
    features : sequence of ndarray, optional
        The candidates' descriptors (``model.descriptor.describe(atoms).features``), if already
        computed: a pool scored in every round of a loop need not be described again.

    Returns
    -------
    BatchSelection
    """
    if method not in METHODS:
        raise SettingsError(f"method={method!r}: choose one of {METHODS}")
    if score not in SCORES:
        raise SettingsError(f"score={score!r}: choose one of {SCORES}")
    candidates = list(candidates)
    if not 0 < n_select <= len(candidates):
        raise SettingsError(f"n_select={n_select}: choose 1 to {len(candidates)} (the pool size)")
    model.check_fitted()
    known = set(model.sparse_set.species.tolist())
    given, rows, species, owner = features, [], [], []
    if given is not None and len(given) != len(candidates):
        raise SettingsError(f"features: {len(given)} arrays for {len(candidates)} candidates")
    for k, atoms in enumerate(candidates):
        check_known(atoms.numbers, known, what=f"candidate {k}",
                    owner="the model (no sparse points)", remedy="label such a structure first")
        q = model.descriptor.describe(atoms).features if given is None else given[k]
        rows.append(normalise(q))
        species.append(atoms.numbers)
        owner.append(np.full(len(atoms), k))
    features, species, owner = (np.vstack(rows), np.concatenate(species),
                                np.concatenate(owner))
    bases = {}
    for z in np.unique(species):
        rows = np.flatnonzero(species == z)
        sparse = model.sparse_set.features[model.sparse_set.columns(int(z))]
        u = model.local_std_normalised(features[rows], species[rows])
        bases[int(z)] = (rows, _Basis(sparse, features[rows], model.zeta, u ** 2))

    def scores() -> np.ndarray:
        v = np.zeros(len(species))
        for rows, basis in bases.values():
            v[rows] = basis.normalised_variance()
        out = np.zeros(len(candidates))
        if score == "max":
            np.maximum.at(out, owner, np.sqrt(v))
        else:
            np.add.at(out, owner, v)
            if score == "rms":
                out /= np.bincount(owner, minlength=len(candidates))
            out = np.sqrt(out)
        return out

    initial = scores()
    if method == "random":
        picks = list(np.random.default_rng(seed).choice(len(candidates), n_select, replace=False))
        return BatchSelection([int(p) for p in picks], [float(initial[p]) for p in picks],
                              initial, method)
    if method == "topk":
        picks = np.argsort(-initial, kind="stable")[:n_select]
        return BatchSelection([int(p) for p in picks], [float(initial[p]) for p in picks],
                              initial, method)
    picks, picked_scores, added_atoms = [], [], []
    current = initial.copy()
    prints = fingerprints(features, owner, len(candidates))
    distance = np.full(len(candidates), 2.0)            # cosine distance to the nearest pick
    for _ in range(n_select):
        current[picks] = -np.inf
        p = diverse_argmax(current, distance, duplicate)
        picks.append(p)
        picked_scores.append(float(current[p]))
        added = []
        for rows, basis in bases.values():
            mine = np.flatnonzero(owner[rows] == p)
            got = basis.add(mine, (explained * picked_scores[-1]) ** 2, atoms_per_pick)
            first_atom = np.flatnonzero(owner == p)[0]
            added += [int(rows[g] - first_atom) for g in got]
        added_atoms.append(added)
        distance = np.minimum(distance, 1.0 - prints @ prints[p])
        current = scores()
    log.info("greedy batch of %d: scores %.3g -> %.3g", n_select, picked_scores[0],
             picked_scores[-1])
    return BatchSelection(picks, picked_scores, initial, method, added_atoms)
