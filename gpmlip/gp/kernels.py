"""Kernels on per-atom descriptors: values, diagonal and the gradient with respect to the descriptor.

Knows nothing about ASE or structures: inputs are descriptor rows and their species.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gpmlip.descriptors.environments import unit_rows
from gpmlip.errors import SettingsError
from gpmlip.species import check_known


def normalise(q: np.ndarray) -> np.ndarray:
    """Rows divided by their norm (see :func:`unit_rows`)."""
    return unit_rows(q)[0]


@dataclass
class NormalizedDotProduct:
    """``k(q, x) = delta(z_q, z_x) sigma_z^2 (q_hat . x_hat)^zeta``, the SOAP kernel of GAP.

    Parameters
    ----------
    zeta : int
        Exponent (GAP uses 4; 2 is cheaper and smoother).
    signal_variance : dict
        Atomic number -> sigma_z^2 in eV^2.  Different species never correlate.

    References
    ----------
    A. P. Bartók, R. Kondor, G. Csányi, Phys. Rev. B 87, 184115 (2013), eq. (33).
    """

    zeta: int = 4
    signal_variance: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if int(self.zeta) != self.zeta or self.zeta < 1:
            raise SettingsError(f"zeta={self.zeta}: use a positive integer (2 or 4 are usual)")
        for z, v in self.signal_variance.items():
            if not np.isfinite(v) or v <= 0:
                raise SettingsError(f"signal variance {v} for Z={z}: use a positive number")

    def _variance(self, species: np.ndarray) -> np.ndarray:
        try:
            return np.array([self.signal_variance[int(z)] for z in species], dtype=float)
        except KeyError:   # the one check names the species (this is on the prediction path)
            check_known(species, self.signal_variance, what="the atoms",
                        owner="the kernel (no signal variance)",
                        remedy="the model was not built for this species")
            raise

    def __call__(self, q: np.ndarray, zq: np.ndarray, x: np.ndarray, zx: np.ndarray) -> np.ndarray:
        """Kernel matrix, shape (len(q), len(x)).

        Parameters
        ----------
        q : ndarray, shape (n, n_features)
        zq : ndarray of int, shape (n,)
        x : ndarray, shape (m, n_features)
        zx : ndarray of int, shape (m,)
        """
        qh, _ = unit_rows(q)
        xh, _ = unit_rows(x)
        same = zq[:, None] == zx[None, :]
        return same * self._variance(zq)[:, None] * (qh @ xh.T) ** self.zeta

    def diag(self, q: np.ndarray, zq: np.ndarray) -> np.ndarray:
        """``k(q_i, q_i) = sigma_{z_i}^2``, shape (n,)."""
        return self._variance(zq)

    def gradient_terms(self, q: np.ndarray, zq: np.ndarray, x: np.ndarray, zx: np.ndarray):
        """Pieces of ``dk/dq``: ``q_hat`` (n, F), ``|q|`` (n, 1), ``x_hat`` (m, F), the cosines
        ``c`` (n, m, not masked by species) and ``delta(z) sigma^2 zeta c^(zeta-1)`` (n, m)."""
        qh, qn = unit_rows(q)
        xh, _ = unit_rows(x)
        c = qh @ xh.T
        same = zq[:, None] == zx[None, :]
        return qh, qn, xh, c, same * self._variance(zq)[:, None] * self.zeta * c ** (self.zeta - 1)

    def gradient(self, q: np.ndarray, zq: np.ndarray, x: np.ndarray, zx: np.ndarray) -> np.ndarray:
        """``d k(q_i, x_m) / d q_i``, shape (n, m, n_features).

        With c = q_hat . x_hat: ``dk/dq = sigma^2 zeta c^(zeta-1) (x_hat - c q_hat) / |q|``.
        """
        qh, qn, xh, c, pref = self.gradient_terms(q, zq, x, zx)
        return pref[:, :, None] * (xh[None, :, :] - c[:, :, None] * qh[:, None, :]) / qn[:, :, None]

    def gradient_dot(self, q: np.ndarray, zq: np.ndarray, x: np.ndarray, zx: np.ndarray,
                     weights: np.ndarray) -> np.ndarray:
        """``sum_m weights_m d k(q_i, x_m) / d q_i``, shape (n, n_features), without the
        (n, m, n_features) intermediate: what forces from fitted weights need."""
        self._variance(zq)   # every row's species must be known, as in gradient()
        return self.local_terms(q, zq, unit_rows(x)[0], zx, weights)[1]

    def local_terms(self, q: np.ndarray, zq: np.ndarray, x_hat: np.ndarray, zx: np.ndarray,
                    weights: np.ndarray, *, gradient: bool = True, rows: bool = False):
        """What prediction needs, per species block and with the cosines formed once.

        Parameters
        ----------
        q : ndarray, shape (n, F)
            Descriptors (any length).
        zq : ndarray of int, shape (n,)
        x_hat : ndarray, shape (m, F)
            Sparse descriptors, already of unit length.
        zx : ndarray of int, shape (m,)
        weights : ndarray, shape (m,)
        gradient, rows : bool
            Also return ``sum_m w_m dk_im/dq_i`` (n, F) and the kernel rows (n, m).

        Returns
        -------
        values : ndarray, shape (n,)
            ``sum_m w_m k(q_i, x_m)``.
        grad : ndarray, shape (n, F) or None
        k : ndarray, shape (n, m) or None
        """
        n = len(zq)
        values = np.zeros(n)
        grad = np.zeros_like(q) if gradient else None
        k_all = np.zeros((n, len(zx))) if rows else None
        zeta = int(self.zeta)
        for z in np.unique(zq):
            i = np.flatnonzero(zq == z)
            m = np.flatnonzero(zx == z)
            if len(m) == 0:
                continue
            var = self._variance(np.array([z]))[0]
            qh, qn = unit_rows(q[i])
            xh = x_hat[m]
            c = qh @ xh.T
            c_pow = np.ones_like(c) if zeta == 1 else c.copy()
            for _ in range(zeta - 2):
                c_pow *= c                                   # c^(zeta - 1)
            w = weights[m]
            k = c_pow * c
            values[i] = var * (k @ w)
            if rows:
                k_all[np.ix_(i, m)] = var * k
            if gradient:
                g = (var * zeta) * c_pow * w[None, :]
                grad[i] = (g @ xh - (g * c).sum(axis=1, keepdims=True) * qh) / qn
        return values, grad, k_all

    def to_dict(self) -> dict:
        """JSON-ready settings."""
        return {"type": "NormalizedDotProduct", "zeta": int(self.zeta),
                "signal_variance": {str(z): float(v) for z, v in self.signal_variance.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> NormalizedDotProduct:
        """Inverse of :meth:`to_dict`."""
        if data.get("type") != "NormalizedDotProduct":
            raise SettingsError(f"kernel type {data.get('type')!r} is not NormalizedDotProduct")
        return cls(zeta=int(data["zeta"]),
                   signal_variance={int(z): float(v) for z, v in data["signal_variance"].items()})
