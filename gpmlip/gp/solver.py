"""Streamed, QR-compressed observation blocks, the DTC solve, variances and the likelihood.

Notation (docs/theory.md §4).  ``K~`` is the kernel at unit signal variance; the sparse points of
species z carry ``sigma_z^2``, collected in the diagonal ``D``.  Observations come in noise groups
``g`` (energies, forces, stresses at the global noise levels ``sigma_g``, plus one group of rows
whose noise is fixed per structure).  Each group's whitened rows ``W^1/2 K~_gm`` are compressed,
block by block, into an upper-triangular ``R_g`` (m x m) and ``z_g = Q_g' W^1/2 y_g`` by QR, so
memory is O(m^2) and ``R_g' R_g = K~_mg W K~_gm`` without ever forming that product (forming it
squares the condition number: the SOAP kernel is close to singular).  With ``K~_mm = L L'`` the
system is the least-squares problem

    [ L' D^-1/2      ]          [ 0           ]
    [ R_g / sigma_g  ] beta  ~  [ z_g / sigma_g ]      (one block per group),

solved by one more QR in O(m^3) for any sigma.  ``beta`` weights the unit-variance kernel
(``epsilon_i = k~(q_i, X) @ beta``, the DTC mean rescaled by ``D``); the local-energy variance is
``v(q) = sigma_z^2 (1 - |L^-1 k~|^2) + |R^-T k~|^2`` with ``R`` the final triangular factor, and

    log p(y) = -1/2 (y'L^-1 y - |Q'rhs|^2) - 1/2 (log|R'R| + sum_m log d_m - log|K~_mm| + log|Lam|)
               - n/2 log(2 pi).

References: J. Quiñonero-Candela and C. E. Rasmussen, JMLR 6, 1939 (2005), section 5 (DTC);
A. P. Bartók and G. Csányi, Int. J. Quantum Chem. 115, 1051 (2015) (GAP's sparse GP).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import LinAlgError, cholesky, solve_triangular

from gpmlip.errors import NumericalError

log = logging.getLogger(__name__)

GROUPS = ("energy", "forces", "stress")
"""Noise groups scaled by the global noise levels; rows with per-structure noise go to "fixed"."""

JITTERS = (0.0, 1e-10, 1e-8, 1e-6, 1e-4)
"""Relative jitters tried, in order, when a matrix will not factorise."""


@dataclass
class GramStats:
    """Sufficient statistics of one noise group, QR-compressed.

    Attributes
    ----------
    r : ndarray, shape (m, m)
        Upper triangular, ``r' r = K~_mg W K~_gm``.
    z : ndarray, shape (m,)
        ``r' z = K~_mg W y``.
    yy : float
        ``y' W y``.
    n : int
        Number of observations (rows).
    log_scale : float
        ``sum log(1/W)`` over rows, for ``log|Lambda|``.
    """

    r: np.ndarray
    z: np.ndarray
    yy: float = 0.0
    n: int = 0
    log_scale: float = 0.0
    _pending: list = field(default_factory=list, repr=False)

    @classmethod
    def empty(cls, m: int) -> GramStats:
        """Statistics of no data, for ``m`` sparse points."""
        return cls(np.zeros((m, m)), np.zeros(m))

    def add(self, rows: np.ndarray, y: np.ndarray, scale: np.ndarray) -> None:
        """Add observations ``y`` (r,) with kernel rows (r, m) and noise-variance scales (r,)."""
        w = 1.0 / np.sqrt(scale)
        self._pending.append(np.hstack([rows * w[:, None], (y * w)[:, None]]))
        self.yy += float(np.dot(y * w, y * w))
        self.n += len(y)
        self.log_scale += float(np.log(scale).sum())
        if sum(len(p) for p in self._pending) >= max(len(self.z), 256):
            self.flush()

    def flush(self) -> None:
        """Fold the buffered rows into ``r`` and ``z`` (one QR of the triangle and the rows:
        LAPACK ``dtpqrt``, which leaves the triangle's zeros alone)."""
        if not self._pending:
            return
        m = len(self.z)
        top = np.zeros((m + 1, m + 1))
        top[:m] = np.hstack([self.r, self.z[:, None]])
        rows = np.vstack(self._pending)
        self._pending = []
        aug = _triangle_qr(top, rows, trapezoidal=0)
        self.r, self.z = np.ascontiguousarray(aug[:m, :m]), aug[:m, m].copy()

    def compact(self) -> tuple[np.ndarray, float, int, float]:
        """``([R z] without its all-zero rows, yy, n, log_scale)``: what :meth:`merge` needs,
        small for a group of fewer observations than columns (what a worker sends back)."""
        self.flush()
        block = np.hstack([self.r, self.z[:, None]])
        return (np.ascontiguousarray(block[np.abs(block).max(axis=1) > 0]), self.yy, self.n,
                self.log_scale)

    def merge(self, other: GramStats | tuple) -> None:
        """Fold in the statistics of other observations of the same columns (a chunk of
        structures computed elsewhere; a :class:`GramStats` or its :meth:`compact` form), so
        that ``R'R`` and ``R'z`` become the sums: a tall-skinny QR step on the two triangular
        factors (:func:`join_triangles`); see :mod:`gpmlip.gp.distributed`."""
        block, yy, n, log_scale = other.compact() if isinstance(other, GramStats) else other
        self.flush()
        m = len(self.z)
        if block.shape[1] != m + 1:
            raise ValueError(f"statistics of {block.shape[1] - 1} columns cannot join {m}")
        if self.n == 0 and not self.r.any() and not self.z.any():
            aug = np.zeros((m + 1, m + 1))       # nothing to join yet: take the block as it is
            aug[:min(len(block), m + 1)] = block[:m + 1]
        else:
            aug = join_triangles([np.hstack([self.r, self.z[:, None]]), block])
        self.r, self.z = np.ascontiguousarray(aug[:m, :m]), aug[:m, m].copy()
        self.yy += yy
        self.n += n
        self.log_scale += log_scale

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Arrays for a model file."""
        self.flush()
        return {f"{prefix}r": self.r, f"{prefix}z": self.z,
                f"{prefix}scalars": np.array([self.yy, self.n, self.log_scale])}

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> GramStats:
        """Inverse of :meth:`to_arrays`."""
        yy, n, log_scale = arrays[f"{prefix}scalars"]
        return cls(np.array(arrays[f"{prefix}r"]), np.array(arrays[f"{prefix}z"]),
                   float(yy), int(n), float(log_scale))


def join_triangles(blocks: list[np.ndarray]) -> np.ndarray:
    """The triangular factor of the stacked upper-trapezoidal ``blocks`` (each (k, n), k <= n):
    ``R`` (n, n) upper triangular with ``R'R = sum_b B_b'B_b``.

    One LAPACK ``dtpqrt`` per block after the first, which uses the blocks' triangular shape:
    about ``2/3 n^3`` flops per join against ``2 k n^2`` more for a dense QR of the whole stack
    (for ``k = n`` blocks 5x fewer); all-zero rows (a block of fewer observations than columns)
    are dropped first.
    """
    n = blocks[0].shape[1]
    top = np.zeros((n, n))
    first = blocks[0]
    top[:len(first)] = first
    top = np.triu(top)
    for block in blocks[1:]:
        block = block[np.abs(block).max(axis=1) > 0] if len(block) else block
        if len(block):
            top = _triangle_qr(top, block, trapezoidal=len(block))
    return top


def _triangle_qr(top: np.ndarray, block: np.ndarray, trapezoidal: int) -> np.ndarray:
    """The upper-triangular factor of ``[top; block]`` (``top`` (n, n) upper triangular) by
    LAPACK ``dtpqrt``; the last ``trapezoidal`` rows of ``block`` are upper trapezoidal (0: a
    dense block)."""
    from scipy.linalg import lapack

    n = top.shape[1]
    out, _, _, info = lapack.dtpqrt(trapezoidal, max(1, min(n, 64)), top,
                                    np.ascontiguousarray(block))
    if info != 0:
        raise NumericalError(f"a QR update of the training statistics failed (LAPACK dtpqrt "
                             f"info {info})")
    return np.triu(out)


def robust_cholesky(matrix: np.ndarray, what: str, advice: str) -> tuple[np.ndarray, float]:
    """Lower Cholesky factor, adding relative jitter to the diagonal only if needed.

    Returns
    -------
    factor : ndarray
        Lower-triangular ``L`` with ``L L' = matrix + jitter * mean(diag) * I``.
    jitter : float
        The relative jitter that was needed (0 when none).
    """
    scale = float(np.mean(np.diag(matrix))) if len(matrix) else 1.0
    if not np.all(np.isfinite(matrix)):
        raise NumericalError(f"{what} contains NaN or inf; {advice}")
    for jitter in JITTERS:
        try:
            factor = cholesky(matrix + jitter * scale * np.eye(len(matrix)), lower=True)
        except LinAlgError:
            continue
        if jitter:
            log.warning("%s needed a relative jitter of %g to factorise; %s", what, jitter,
                        advice)
        return factor, jitter
    raise NumericalError(f"{what} ({len(matrix)}x{len(matrix)}) is not positive definite even "
                         f"with a relative jitter of {JITTERS[-1]:g}: {advice}")


@dataclass
class Hyper:
    """Signal variances per sparse column and noise levels per group.

    Attributes
    ----------
    column_variance : ndarray, shape (m,)
        ``sigma_z^2`` of each sparse point's species.
    noise : dict
        Group name -> noise standard deviation (eV/atom, eV/Å, eV/Å³).
    """

    column_variance: np.ndarray
    noise: dict[str, float] = field(default_factory=dict)


@dataclass
class Posterior:
    """The factorised DTC system and what prediction needs.

    Attributes
    ----------
    beta : ndarray, shape (m,)
        Weights on the unit-variance kernel: ``epsilon_i = k~(q_i, X) @ beta``.
    chol_kmm : ndarray, shape (m, m)
        Lower Cholesky factor of ``K~_mm``.
    r : ndarray, shape (m, m)
        Upper factor with ``r' r = A' = D^-1/2 K~_mm D^-1/2 + sum_g R_g' R_g / sigma_g^2``.
    log_likelihood : float
    column_variance : ndarray, shape (m,), optional
        ``sigma_z^2`` of each sparse point's species; with it, variances use
        :attr:`inverse_factors` (computed once per solve) instead of two triangular solves.
    """

    beta: np.ndarray
    chol_kmm: np.ndarray
    r: np.ndarray
    log_likelihood: float
    column_variance: np.ndarray | None = None
    _matrix: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def inverse_factors(self) -> tuple[np.ndarray, np.ndarray]:
        """``(L^-T, R^-1)`` (m, m) each, computed once per solve: a variance is then
        ``prior - sum_m c_m (rows L^-T)_m^2 + |rows R^-1|^2``, two matrix products and no
        triangular solve per prediction (explicit inverses keep the accuracy of the solves; a
        single quadratic form ``rows M rows'`` would lose ~1e-9 sigma^2 to cancellation)."""
        if self._matrix is None:
            eye = np.eye(len(self.beta))
            l_inv_t = solve_triangular(self.chol_kmm, eye, lower=True, check_finite=False).T
            r_inv = solve_triangular(self.r, eye, check_finite=False)
            self._matrix = (np.ascontiguousarray(l_inv_t), np.ascontiguousarray(r_inv))
        return self._matrix

    def _quadratic(self, prior: np.ndarray, rows: np.ndarray) -> np.ndarray:
        l_inv_t, r_inv = self.inverse_factors
        nystroem = rows @ l_inv_t
        weights = rows @ r_inv
        v = prior - (self.column_variance * nystroem ** 2).sum(axis=1) + (weights ** 2).sum(axis=1)
        return np.clip(v, 0.0, None)

    def variance(self, k: np.ndarray, signal_variance: np.ndarray) -> np.ndarray:
        """Local-energy variances for unit-variance kernel rows ``k`` (n, m), clipped at 0."""
        if k.shape[1] == 0:
            return signal_variance.copy()
        if self.column_variance is not None:
            return self._quadratic(signal_variance, k)
        # a local energy's rows are non-zero only on its own species' columns
        return self.dtc_variance(signal_variance, k, signal_variance[:, None])

    def dtc_variance(self, prior: np.ndarray, rows: np.ndarray,
                     column_variance: np.ndarray) -> np.ndarray:
        """DTC predictive variance of linear observations, clipped at 0.

        ``prior - sum_m sigma_m^2 (L^-1 rows')_m^2 + rows A'^-1 rows'``: the prior variance, minus
        the part the sparse points explain (Nystroem), plus the uncertainty of the weights.

        Parameters
        ----------
        prior : ndarray, shape (n,)
            Prior variance of each observation (signal variances included).
        rows : ndarray, shape (n, m)
            Unit-variance covariance of each observation with the sparse points.
        column_variance : ndarray, shape (m,) or (n, m)
            Signal variance of each sparse point's species (``K~_mm`` is block diagonal by
            species, so the Nystroem term splits by column).
        """
        if rows.shape[1] == 0:
            return np.clip(prior, 0.0, None)
        if (self.column_variance is not None and np.ndim(column_variance) == 1
                and np.array_equal(column_variance, self.column_variance)):
            return self._quadratic(prior, rows)
        nystroem = solve_triangular(self.chol_kmm, rows.T, lower=True, check_finite=False).T
        v = prior - (column_variance * nystroem ** 2).sum(axis=1) + self.weight_variance(rows)
        return np.clip(v, 0.0, None)

    def weight_variance(self, rows: np.ndarray) -> np.ndarray:
        """``rows A'^-1 rows'`` diagonal: the variance from the uncertain weights alone."""
        weights = solve_triangular(self.r, rows.T, trans="T", check_finite=False)
        return (weights ** 2).sum(axis=0)


ADVICE = ("lower n_sparse or pick sparse points with sparse_method='cur' or 'variance' (near-"
          "duplicate sparse points), raise the noise sigmas, or raise the model's jitter")


def _factor(kmm: np.ndarray, stats: dict[str, GramStats], hyper: Hyper):
    """QR of the stacked system: (chol K~_mm, R, Q' rhs)."""
    chol_k, _ = robust_cholesky(kmm, "the sparse kernel matrix K_mm", ADVICE)
    m = len(kmm)
    blocks = [np.hstack([chol_k.T / np.sqrt(hyper.column_variance)[None, :], np.zeros((m, 1))])]
    for name, st in stats.items():
        st.flush()
        inv = 1.0 if name == "fixed" else 1.0 / hyper.noise[name]
        blocks.append(np.hstack([st.r, st.z[:, None]]) * inv)
    aug = join_triangles(blocks)     # the QR of the stack, using its triangular blocks
    r, qtr = aug[:m, :m], aug[:m, m]
    diag = np.abs(np.diag(r))
    if m and (not np.all(np.isfinite(r)) or diag.min() <= 1e-14 * diag.max()):
        raise NumericalError(f"the sparse GP system ({m} sparse points) is singular: {ADVICE}")
    return chol_k, r, qtr


def solve(kmm: np.ndarray, stats: dict[str, GramStats], hyper: Hyper) -> Posterior:
    """Solve the DTC system for the current hyper-parameters.

    Parameters
    ----------
    kmm : ndarray, shape (m, m)
        Unit-variance sparse kernel matrix (zero between species), jitter included.
    stats : dict
        Noise group -> :class:`GramStats`.
    hyper : Hyper
    """
    chol_k, r, qtr = _factor(kmm, stats, hyper)
    beta = solve_triangular(r, qtr, check_finite=False)
    ll = _log_likelihood(stats, hyper, qtr, r, chol_k)
    return Posterior(beta, chol_k, r, ll, np.asarray(hyper.column_variance, dtype=float))


def _log_likelihood(stats, hyper, qtr, r, chol_k) -> float:
    yy = n = log_noise = 0.0
    for name, st in stats.items():
        s2 = 1.0 if name == "fixed" else hyper.noise[name] ** 2
        yy += st.yy / s2
        n += st.n
        log_noise += st.n * np.log(s2) + st.log_scale
    logdet = (2 * np.log(np.abs(np.diag(r))).sum() + np.log(hyper.column_variance).sum()
              - 2 * np.log(np.diag(chol_k)).sum() + log_noise)
    return float(-0.5 * (yy - qtr @ qtr) - 0.5 * logdet - 0.5 * n * np.log(2 * np.pi))


def log_likelihood_and_gradient(kmm: np.ndarray, species: np.ndarray, stats: dict[str, GramStats],
                                hyper: Hyper, variances: dict[int, float]):
    """Log marginal likelihood and its gradient in log-variance coordinates.

    Parameters
    ----------
    kmm : ndarray, shape (m, m)
    species : ndarray of int, shape (m,)
        Species of the sparse columns.
    stats : dict
    hyper : Hyper
        Its ``column_variance`` is ignored: ``variances`` defines it.
    variances : dict
        Species -> ``sigma_z^2``.

    Returns
    -------
    value : float
    gradient : dict
        ``("signal", z)`` -> d/d log sigma_z^2 and ``("noise", g)`` -> d/d log sigma_g^2.
    """
    column = np.array([variances[int(z)] for z in species])
    hyper = Hyper(column, dict(hyper.noise))
    chol_k, r, qtr = _factor(kmm, stats, hyper)
    beta = solve_triangular(r, qtr, check_finite=False)
    r_inv = solve_triangular(r, np.eye(len(r)), check_finite=False)
    value = _log_likelihood(stats, hyper, qtr, r, chol_k)
    grad = {}
    for name, st in stats.items():
        if name == "fixed":
            continue
        inv = hyper.noise[name] ** -2
        residual = st.z - st.r @ beta
        # y'Wy - 2 beta'b + beta'G beta = (yy - |z|^2) + |z - R beta|^2
        fit = st.yy - st.z @ st.z + residual @ residual + np.sum((st.r @ r_inv) ** 2)
        grad[("noise", name)] = 0.5 * inv * fit - 0.5 * st.n
    scaled_chol = chol_k.T / np.sqrt(column)[None, :]         # U with U'U = D^-1/2 K~ D^-1/2
    u_beta = scaled_chol * beta[None, :]
    for z in variances:
        cols = species == z
        quad = np.sum((u_beta[:, cols].sum(axis=1)) ** 2)
        trace = np.sum((scaled_chol[:, cols] @ r_inv[cols, :]) ** 2)
        grad[("signal", int(z))] = 0.5 * (quad + trace) - 0.5 * cols.sum()
    return value, grad
