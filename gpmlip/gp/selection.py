"""Choosing sparse (inducing) environments among the training environments of one species."""

from __future__ import annotations

import logging

import numpy as np
from scipy.linalg import solve_triangular

from gpmlip.gp.kernels import normalise
from gpmlip.errors import DataError, SettingsError

log = logging.getLogger(__name__)

METHODS = ("cur", "kmeans", "kmeans++", "random", "variance")


def distinct_rows(features: np.ndarray, decimals: int = 10) -> np.ndarray:
    """Indices of the first occurrence of every distinct (normalised) descriptor row.

    Identical environments (every atom of a perfect crystal) would make the sparse kernel matrix
    singular, so they are never chosen twice.
    """
    rounded = np.round(normalise(features), decimals)
    _, first = np.unique(rounded, axis=0, return_index=True)
    return np.sort(first)


def select(features: np.ndarray, n_select: int, method: str = "cur", *, zeta: int = 4,
           seed: int | None = 0, existing: np.ndarray | None = None,
           label: str = "") -> np.ndarray:
    """Pick ``n_select`` rows of ``features`` as sparse points.

    Parameters
    ----------
    features : ndarray, shape (n, n_features)
        Candidate environments (one species).
    n_select : int
        How many to pick.  More than ``n`` is an error; more than the number of *distinct*
        environments picks every distinct one, with a warning.
    method : {"cur", "kmeans", "kmeans++", "random", "variance"}
        ``"cur"``: sampling by statistical leverage of the descriptor matrix (as GAP's CUR);
        ``"kmeans"``: k-means clustering (scikit-learn, Lloyd from a k-means++ start) of the
        normalised descriptors, each cluster represented by its member nearest the centre
        (typical environments rather than spread-out ones);
        ``"kmeans++"``: k-means++ seeding (scikit-learn) on the normalised descriptors;
        ``"random"``: uniform; ``"variance"``: greedy, each pick the candidate with the highest
        prior variance left once the sparse points chosen so far (and ``existing``) are known
        (a pivoted Cholesky of the kernel).
    zeta : int
        Kernel exponent (``"variance"`` only).
    seed : int or None
        Random seed for the randomised methods.
    existing : ndarray, shape (k, n_features), optional
        Sparse points already in the model (``"variance"`` conditions on them).
    label : str
        Species name for messages.

    Returns
    -------
    ndarray of int
        Indices into ``features``, in the order picked.
    """
    if method not in METHODS:
        raise SettingsError(f"sparse_method={method!r}: choose one of {METHODS}")
    n = len(features)
    if n_select < 0 or int(n_select) != n_select:
        raise SettingsError(f"n_sparse={n_select} for {label}: use a non-negative integer")
    if n_select > n:
        raise DataError(f"asked for {n_select} sparse points of {label} but the training data "
                        f"has only {n} {label} environments: lower n_sparse (e.g. "
                        f"n_sparse={{'{label}': {n}}}) or add structures")
    if n_select == 0:
        return np.zeros(0, dtype=np.int64)
    distinct = distinct_rows(features)
    if n_select > len(distinct):
        log.warning("%s: %d sparse points requested but only %d distinct environments; "
                    "using all %d", label, n_select, len(distinct), len(distinct))
        n_select = len(distinct)
    x = normalise(features[distinct])
    rng = np.random.default_rng(seed)
    if n_select == len(distinct) and method != "variance":
        picked = np.arange(len(distinct))
    elif method == "random":
        picked = rng.choice(len(x), n_select, replace=False)
    elif method == "cur":
        picked = _cur(x, n_select, rng)
    elif method == "kmeans++":
        from sklearn.cluster import kmeans_plusplus
        _, picked = kmeans_plusplus(x, n_select, random_state=seed)
    elif method == "kmeans":
        picked = _kmeans_medoids(x, n_select, seed)
    else:
        picked = greedy_variance(x, n_select, zeta, existing=existing)
    return distinct[np.asarray(picked, dtype=np.int64)]


def _kmeans_medoids(x: np.ndarray, n_select: int, seed: int | None) -> np.ndarray:
    """Per k-means cluster, the member nearest its centre (clusters are disjoint, so the picks
    are distinct)."""
    from sklearn.cluster import KMeans
    km = KMeans(n_clusters=n_select, init="k-means++", n_init=1, max_iter=100,
                random_state=seed).fit(x)
    picked = []
    for k, centre in enumerate(km.cluster_centers_):
        members = np.flatnonzero(km.labels_ == k)
        if len(members):
            picked.append(members[np.argmin(((x[members] - centre) ** 2).sum(axis=1))])
    if len(picked) < n_select:   # an empty cluster (rare): fill with the worst-represented rows
        taken = np.zeros(len(x), dtype=bool)
        taken[picked] = True
        spare = np.flatnonzero(~taken)
        far = np.argsort(-km.transform(x[spare]).min(axis=1))
        picked.extend(spare[far[:n_select - len(picked)]])
    return np.array(picked, dtype=np.int64)


def _cur(x: np.ndarray, n_select: int, rng: np.random.Generator) -> np.ndarray:
    """Leverage-score sampling without replacement (Mahoney & Drineas, PNAS 106, 697 (2009))."""
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    rank = int((s > s[0] * 1e-10).sum())
    k = min(n_select, rank)
    leverage = (u[:, :k] ** 2).sum(axis=1) + 1e-12
    return rng.choice(len(x), n_select, replace=False, p=leverage / leverage.sum())


JITTER = 1e-8
"""Diagonal jitter of the existing points' unit kernel when a basis is conditioned on them (the
model's default ``jitter``)."""


class PivotedCholesky:
    """An incremental pivoted Cholesky basis of the unit-variance kernel ``(x_hat . x_hat')^zeta``
    over fixed candidates: what greedy sparse selection and pool selection both pivot on.

    Parameters
    ----------
    x : ndarray, shape (n, n_features)
        Normalised candidate descriptors.
    zeta : int
    existing : ndarray, shape (k, n_features), optional
        Points already known (e.g. the model's sparse points of the species): the basis starts
        conditioned on them.

    Attributes
    ----------
    residual : ndarray, shape (n,)
        Each candidate's prior variance left once the basis is known (1 before any point).
    """

    def __init__(self, x: np.ndarray, zeta: int, *, existing: np.ndarray | None = None) -> None:
        self.x, self.zeta = x, zeta
        self.residual = np.ones(len(x))
        self._basis = np.zeros((16, len(x)))      # rows: basis columns, grown by doubling
        self._k = 0
        if existing is not None and len(existing):
            e = normalise(existing)
            chol = np.linalg.cholesky((e @ e.T) ** zeta + JITTER * np.eye(len(e)))
            proj = solve_triangular(chol, (e @ x.T) ** zeta, lower=True)    # (k, n)
            self._basis = np.vstack([proj, np.zeros((16, len(x)))])
            self._k = len(proj)
            self.residual -= (proj ** 2).sum(axis=0)

    def pivot(self, p: int) -> None:
        """Add candidate ``p`` to the basis (its residual must be positive)."""
        basis = self._basis[:self._k]
        column = ((self.x @ self.x[p]) ** self.zeta - basis.T @ basis[:, p])
        column /= np.sqrt(self.residual[p])
        if self._k == len(self._basis):
            self._basis = np.vstack([self._basis, np.zeros_like(self._basis)])
        self._basis[self._k] = column
        self._k += 1
        self.residual = self.residual - column ** 2


def greedy_variance(x: np.ndarray, n_select: int, zeta: int, *,
                    existing: np.ndarray | None = None, tolerance: float = 1e-10,
                    warn: bool = True) -> np.ndarray:
    """Pivoted Cholesky of the unit-variance kernel ``(x_hat . x_hat')^zeta``.

    Each step picks the candidate whose prior variance, conditioned on the points picked so far
    and on ``existing``, is largest.  Stops early when every candidate's remaining variance is
    at most ``tolerance`` (with a warning if ``warn``).

    Parameters
    ----------
    x : ndarray, shape (n, n_features)
        Normalised candidate descriptors.
    """
    basis = PivotedCholesky(x, zeta, existing=existing)
    picked: list[int] = []
    for t in range(n_select):
        residual = basis.residual.copy()
        residual[picked] = -np.inf
        p = int(np.argmax(residual))
        if residual[p] <= tolerance:
            if warn:
                log.warning("only %d of %d sparse points add information (the rest are "
                            "explained to %.0e by those chosen)", t, n_select, tolerance)
            break
        basis.pivot(p)
        picked.append(p)
    return np.array(picked, dtype=np.int64)
