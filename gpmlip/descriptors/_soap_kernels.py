"""Compiled kernels of the SOAP engine (numba): power spectrum, its back-propagation, its Jacobian.

Everything here works on a pair list sorted by centre and knows nothing about ASE, dscribe or
models.  One centre at a time (``prange`` over centres): its coefficients, a few hundred numbers,
stay in cache, and every output row belongs to exactly one centre, so results do not depend on the
number of threads.  The maths is in ``docs/theory.md`` §2-3 and in :mod:`.engine`.

Index conventions
-----------------
- ``lm = l * l + l + m`` for the real solid harmonics, ``m = -l..l`` (sine parts for ``m < 0``).
- Per centre: ``T[s, k, lm] = sum_j w_j exp(-b_lk r_j^2) S_lm(r_j)`` over neighbours of species
  channel ``s``; ``c[s, n, lm] = sum_k B[l, n, k] T[s, k, lm]``.
- Species weights ``sw[s]`` scale every channel's coefficients (dscribe's ``species_weighting``).
- Channels ``0..n_species-1`` are the species; with a compression that needs it, channel
  ``n_species`` is the mixed density ``c[mix] = sum_s c[s]`` (dscribe's ``mu2`` / ``mu1nu1``).
- Feature ``f`` is ``pref[l] sum_m c[s1, n, lm] c[s2, n2, lm]`` with
  ``(s1, s2, n, n2, l) = fs1[f], fs2[f], fn[f], fn2[f], fl[f]`` (channel indices).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

WEIGHT_NONE = 0
WEIGHT_POLY = 1


@njit(cache=True, fastmath=False)
def _harmonics(x, y, z, l_max, norm, S, dS, want_grad, P, Pz, Pr, Cm, Sm):
    """Real solid harmonics ``S_lm = r^l Y_lm`` (orthonormal Y) and their gradients.

    ``S_lm = norm[lm] * Pi_l^m(z, r^2) * {Re, Im}(x + i y)^|m|`` where ``Pi`` is the associated
    Legendre polynomial in solid form: ``(l - m) Pi_l^m = (2l - 1) z Pi_{l-1}^m
    - (l + m - 1) r^2 Pi_{l-2}^m``, ``Pi_m^m = (2m - 1)!!``.
    """
    rho = x * x + y * y + z * z
    Cm[0] = 1.0
    Sm[0] = 0.0
    for m in range(1, l_max + 1):
        Cm[m] = x * Cm[m - 1] - y * Sm[m - 1]
        Sm[m] = x * Sm[m - 1] + y * Cm[m - 1]
    dfact = 1.0
    for m in range(l_max + 1):
        if m > 0:
            dfact *= 2 * m - 1
        P[m, m] = dfact
        Pz[m, m] = 0.0
        Pr[m, m] = 0.0
        if m + 1 <= l_max:
            P[m + 1, m] = (2 * m + 1) * z * dfact
            Pz[m + 1, m] = (2 * m + 1) * dfact
            Pr[m + 1, m] = 0.0
        for l in range(m + 2, l_max + 1):
            a = 2 * l - 1.0
            b = l + m - 1.0
            inv = 1.0 / (l - m)
            P[l, m] = (a * z * P[l - 1, m] - b * rho * P[l - 2, m]) * inv
            if want_grad:
                Pz[l, m] = (a * (P[l - 1, m] + z * Pz[l - 1, m]) - b * rho * Pz[l - 2, m]) * inv
                Pr[l, m] = (a * z * Pr[l - 1, m] - b * (P[l - 2, m] + rho * Pr[l - 2, m])) * inv
    for l in range(l_max + 1):
        base = l * l + l
        S[base] = norm[base] * P[l, 0]
        if want_grad:
            g = norm[base]
            dS[0, base] = g * Pr[l, 0] * 2.0 * x
            dS[1, base] = g * Pr[l, 0] * 2.0 * y
            dS[2, base] = g * (Pz[l, 0] + Pr[l, 0] * 2.0 * z)
        for m in range(1, l + 1):
            g = norm[base + m]
            p = P[l, m]
            S[base + m] = g * p * Cm[m]
            S[base - m] = g * p * Sm[m]
            if want_grad:
                pr2 = Pr[l, m] * 2.0
                # d/dx (x+iy)^m = m (x+iy)^(m-1), d/dy = i m (x+iy)^(m-1)
                dS[0, base + m] = g * (pr2 * x * Cm[m] + p * m * Cm[m - 1])
                dS[1, base + m] = g * (pr2 * y * Cm[m] - p * m * Sm[m - 1])
                dS[2, base + m] = g * (Pz[l, m] + pr2 * z) * Cm[m]
                dS[0, base - m] = g * (pr2 * x * Sm[m] + p * m * Sm[m - 1])
                dS[1, base - m] = g * (pr2 * y * Sm[m] + p * m * Cm[m - 1])
                dS[2, base - m] = g * (Pz[l, m] + pr2 * z) * Sm[m]


@njit(cache=True)
def _weight(r, wtype, r0, wc, wm):
    """Neighbour weight w(r) and dw/dr (dscribe's ``poly``: c (1 + 2x^3 - 3x^2)^m, x = r/r0)."""
    if wtype == WEIGHT_POLY:
        if r >= r0:
            return 0.0, 0.0
        x = r / r0
        base = 1.0 + 2.0 * x * x * x - 3.0 * x * x
        w = wc * base ** wm
        dw = wc * wm * base ** (wm - 1.0) * (6.0 * x * x - 6.0 * x) / r0
        return w, dw
    return 1.0, 0.0


@njit(cache=True)
def _centre_coefficients(i, start, vec, nbr_s, centre_s, l_max, n_max, n_species, b, B, norm,
                         r_max2, wtype, r0, wc, wm, w0, sw, T, c, S, dS, P, Pz, Pr, Cm, Sm):
    """Fill ``c`` (n_channels, n_max, L2) for centre ``i``; ``T`` is workspace."""
    T[:] = 0.0
    for p in range(start[i], start[i + 1]):
        x, y, z = vec[p, 0], vec[p, 1], vec[p, 2]
        r2 = x * x + y * y + z * z
        if r2 > r_max2:
            continue
        w, _ = _weight(np.sqrt(r2), wtype, r0, wc, wm)
        if w == 0.0:
            continue
        s = nbr_s[p]
        _harmonics(x, y, z, l_max, norm, S, dS, False, P, Pz, Pr, Cm, Sm)
        for l in range(l_max + 1):
            for k in range(n_max):
                e = w * np.exp(-b[l, k] * r2)
                for lm in range(l * l, (l + 1) * (l + 1)):
                    T[s, k, lm] += e * S[lm]
    # The centre's own Gaussian (r = 0): only l = 0, S_00 = 1 / sqrt(4 pi).
    T[centre_s[i], :, 0] += w0 * norm[0]
    for s in range(n_species):
        for l in range(l_max + 1):
            for n in range(n_max):
                for lm in range(l * l, (l + 1) * (l + 1)):
                    acc = 0.0
                    for k in range(n_max):
                        acc += B[l, n, k] * T[s, k, lm]
                    c[s, n, lm] = sw[s] * acc
    if c.shape[0] > n_species:
        for n in range(n_max):
            for lm in range(c.shape[2]):
                acc = 0.0
                for s in range(n_species):
                    acc += c[s, n, lm]
                c[n_species, n, lm] = acc


@njit(cache=True)
def _alloc(l_max, n_max, n_species, n_channels):
    L2 = (l_max + 1) * (l_max + 1)
    T = np.zeros((n_channels, n_max, L2))
    c = np.zeros((n_channels, n_max, L2))
    S = np.zeros(L2)
    dS = np.zeros((3, L2))
    P = np.zeros((l_max + 2, l_max + 2))
    Pz = np.zeros((l_max + 2, l_max + 2))
    Pr = np.zeros((l_max + 2, l_max + 2))
    Cm = np.zeros(l_max + 2)
    Sm = np.zeros(l_max + 2)
    return T, c, S, dS, P, Pz, Pr, Cm, Sm


@njit(cache=True)
def _forward_centre(i, start, vec, nbr_s, centre_s, prm, out):
    """Power spectrum of centre ``i`` into ``out[i]``."""
    (l_max, n_max, n_species, b, B, norm, pref, fs1, fs2, fn, fn2, fl, r_max2, wtype, r0, wc,
     wm, w0, sw, n_channels) = prm
    n_feat = len(fl)
    T, c, S, dS, P, Pz, Pr, Cm, Sm = _alloc(l_max, n_max, n_species, n_channels)
    _centre_coefficients(i, start, vec, nbr_s, centre_s, l_max, n_max, n_species, b, B,
                         norm, r_max2, wtype, r0, wc, wm, w0, sw, T, c, S, dS, P, Pz, Pr, Cm, Sm)
    for f in range(n_feat):
        l = fl[f]
        s1, s2, n, n2 = fs1[f], fs2[f], fn[f], fn2[f]
        acc = 0.0
        for lm in range(l * l, (l + 1) * (l + 1)):
            acc += c[s1, n, lm] * c[s2, n2, lm]
        out[i, f] = pref[l] * acc


@njit(cache=True)
def _backward_centre(i, start, vec, nbr_s, centre_s, prm, grad, out):
    """``out[p] = dE/dr_p`` for the pairs of centre ``i``, given ``grad[i] = dE/dq_i``.

    Back-propagates through the power spectrum to the coefficients, then to each neighbour's
    contribution; no Jacobian is formed.
    """
    (l_max, n_max, n_species, b, B, norm, pref, fs1, fs2, fn, fn2, fl, r_max2, wtype, r0, wc,
     wm, w0, sw, n_channels) = prm
    n_feat = len(fl)
    T, c, S, dS, P, Pz, Pr, Cm, Sm = _alloc(l_max, n_max, n_species, n_channels)
    _centre_coefficients(i, start, vec, nbr_s, centre_s, l_max, n_max, n_species, b, B,
                         norm, r_max2, wtype, r0, wc, wm, w0, sw, T, c, S, dS, P, Pz, Pr, Cm, Sm)
    # dE/dc: the same expression for equal and different species channels.
    dc = np.zeros_like(c)
    for f in range(n_feat):
        g = grad[i, f]
        if g == 0.0:
            continue
        l = fl[f]
        s1, s2, n, n2 = fs1[f], fs2[f], fn[f], fn2[f]
        gp = pref[l] * g
        for lm in range(l * l, (l + 1) * (l + 1)):
            dc[s1, n, lm] += gp * c[s2, n2, lm]
            dc[s2, n2, lm] += gp * c[s1, n, lm]
    # the mixed channel is the sum of the (weighted) species channels
    if n_channels > n_species:
        for s in range(n_species):
            for n in range(n_max):
                for lm in range(c.shape[2]):
                    dc[s, n, lm] += dc[n_species, n, lm]
    # H[s, k, lm] = sw[s] sum_n B[l, n, k] dE/dc[s, n, lm]  (reuse T as H)
    H = T
    for s in range(n_species):
        for l in range(l_max + 1):
            for k in range(n_max):
                for lm in range(l * l, (l + 1) * (l + 1)):
                    acc = 0.0
                    for n in range(n_max):
                        acc += B[l, n, k] * dc[s, n, lm]
                    H[s, k, lm] = sw[s] * acc
    for p in range(start[i], start[i + 1]):
        x, y, z = vec[p, 0], vec[p, 1], vec[p, 2]
        r2 = x * x + y * y + z * z
        out[p, 0] = 0.0
        out[p, 1] = 0.0
        out[p, 2] = 0.0
        if r2 > r_max2:
            continue
        r = np.sqrt(r2)
        w, dw = _weight(r, wtype, r0, wc, wm)
        if w == 0.0 and dw == 0.0:
            continue
        s = nbr_s[p]
        _harmonics(x, y, z, l_max, norm, S, dS, True, P, Pz, Pr, Cm, Sm)
        gx = 0.0
        gy = 0.0
        gz = 0.0
        radial = 0.0     # sum_lk E A (2 b) for the Gaussian's r-derivative
        plain = 0.0      # sum_lk E A, for the weight's derivative
        for l in range(l_max + 1):
            for k in range(n_max):
                e = np.exp(-b[l, k] * r2)
                a = 0.0
                vx = 0.0
                vy = 0.0
                vz = 0.0
                for lm in range(l * l, (l + 1) * (l + 1)):
                    h = H[s, k, lm]
                    a += h * S[lm]
                    vx += h * dS[0, lm]
                    vy += h * dS[1, lm]
                    vz += h * dS[2, lm]
                gx += e * vx
                gy += e * vy
                gz += e * vz
                radial += e * a * 2.0 * b[l, k]
                plain += e * a
        scale = dw / r * plain if r > 0.0 else 0.0
        out[p, 0] = w * (gx - x * radial) + scale * x
        out[p, 1] = w * (gy - y * radial) + scale * y
        out[p, 2] = w * (gz - z * radial) + scale * z


@njit(cache=True)
def _jacobian_centre(i, start, vec, nbr_s, centre_s, prm, features, out):
    """Features of centre ``i`` and ``out[p, a, f] = d q_i / d r_{p, a}`` for its pairs.

    What training rows need.  Memory is (n_pairs, 3, n_features): per structure, never for MD.
    """
    (l_max, n_max, n_species, b, B, norm, pref, fs1, fs2, fn, fn2, fl, r_max2, wtype, r0, wc,
     wm, w0, sw, n_channels) = prm
    n_feat = len(fl)
    T, c, S, dS, P, Pz, Pr, Cm, Sm = _alloc(l_max, n_max, n_species, n_channels)
    _centre_coefficients(i, start, vec, nbr_s, centre_s, l_max, n_max, n_species, b, B,
                         norm, r_max2, wtype, r0, wc, wm, w0, sw, T, c, S, dS, P, Pz, Pr, Cm, Sm)
    for f in range(n_feat):
        l = fl[f]
        acc = 0.0
        for lm in range(l * l, (l + 1) * (l + 1)):
            acc += c[fs1[f], fn[f], lm] * c[fs2[f], fn2[f], lm]
        features[i, f] = pref[l] * acc
    L2 = (l_max + 1) * (l_max + 1)
    mix = n_species if n_channels > n_species else -1
    dT = np.zeros((3, n_max, L2))
    dcj = np.zeros((3, n_max, L2))
    for p in range(start[i], start[i + 1]):
        out[p] = 0.0
        x, y, z = vec[p, 0], vec[p, 1], vec[p, 2]
        r2 = x * x + y * y + z * z
        if r2 > r_max2:
            continue
        r = np.sqrt(r2)
        w, dw = _weight(r, wtype, r0, wc, wm)
        if w == 0.0 and dw == 0.0:
            continue
        s = nbr_s[p]
        _harmonics(x, y, z, l_max, norm, S, dS, True, P, Pz, Pr, Cm, Sm)
        sc = dw / r if r > 0.0 else 0.0
        for l in range(l_max + 1):
            for k in range(n_max):
                e = np.exp(-b[l, k] * r2)
                tb = 2.0 * b[l, k]
                for lm in range(l * l, (l + 1) * (l + 1)):
                    sv = S[lm]
                    dT[0, k, lm] = e * (w * (dS[0, lm] - tb * x * sv) + sc * x * sv)
                    dT[1, k, lm] = e * (w * (dS[1, lm] - tb * y * sv) + sc * y * sv)
                    dT[2, k, lm] = e * (w * (dS[2, lm] - tb * z * sv) + sc * z * sv)
        for a in range(3):
            for l in range(l_max + 1):
                for n in range(n_max):
                    for lm in range(l * l, (l + 1) * (l + 1)):
                        acc = 0.0
                        for k in range(n_max):
                            acc += B[l, n, k] * dT[a, k, lm]
                        dcj[a, n, lm] = sw[s] * acc
        for f in range(n_feat):
            s1, s2 = fs1[f], fs2[f]
            # this pair moves channel s and the mixed channel (if any)
            m1 = s1 == s or s1 == mix
            m2 = s2 == s or s2 == mix
            if not (m1 or m2):
                continue
            l = fl[f]
            n, n2 = fn[f], fn2[f]
            for a in range(3):
                acc = 0.0
                for lm in range(l * l, (l + 1) * (l + 1)):
                    if m1:
                        acc += dcj[a, n, lm] * c[s2, n2, lm]
                    if m2:
                        acc += c[s1, n, lm] * dcj[a, n2, lm]
                out[p, a, f] = pref[l] * acc


# -- drivers: the same per-centre work, over threads or in one thread ----------------------------
@njit(cache=True, parallel=True)
def power_spectrum(start, vec, nbr_s, centre_s, prm, out):
    """Power spectrum of every centre into ``out`` (n_centres, n_features), threads over centres."""
    for i in prange(len(start) - 1):
        _forward_centre(i, start, vec, nbr_s, centre_s, prm, out)


@njit(cache=True)
def power_spectrum_serial(start, vec, nbr_s, centre_s, prm, out):
    """:func:`power_spectrum` in the calling thread."""
    for i in range(len(start) - 1):
        _forward_centre(i, start, vec, nbr_s, centre_s, prm, out)


@njit(cache=True, parallel=True)
def backward(start, vec, nbr_s, centre_s, prm, grad, out):
    """``out[p] = dE/dr_p`` for every pair given ``grad = dE/dq`` (n_centres, n_features)."""
    for i in prange(len(start) - 1):
        _backward_centre(i, start, vec, nbr_s, centre_s, prm, grad, out)


@njit(cache=True)
def backward_serial(start, vec, nbr_s, centre_s, prm, grad, out):
    """:func:`backward` in the calling thread."""
    for i in range(len(start) - 1):
        _backward_centre(i, start, vec, nbr_s, centre_s, prm, grad, out)


@njit(cache=True, parallel=True)
def pair_jacobian(start, vec, nbr_s, centre_s, prm, features, out):
    """Features and ``d q_i / d r_p`` of every pair, threads over centres."""
    for i in prange(len(start) - 1):
        _jacobian_centre(i, start, vec, nbr_s, centre_s, prm, features, out)


@njit(cache=True)
def pair_jacobian_serial(start, vec, nbr_s, centre_s, prm, features, out):
    """:func:`pair_jacobian` in the calling thread."""
    for i in range(len(start) - 1):
        _jacobian_centre(i, start, vec, nbr_s, centre_s, prm, features, out)


@njit(cache=True)
def assemble_jacobian(centre, slot, own_slot, jac, vec, out_jac, out_strain):
    """Per-pair ``d q_i / d r_ij`` onto (centre, atom) rows: ``out_jac[slot[p]] += jac[p]``, the
    centre's own row ``out_jac[own_slot[i]] -= jac[p]`` and ``out_strain[i, a, b] +=
    jac[p, a] vec[p, b]``."""
    n_feat = jac.shape[2]
    for p in range(len(centre)):
        i = centre[p]
        s = slot[p]
        o = own_slot[i]
        for a in range(3):
            for f in range(n_feat):
                v = jac[p, a, f]
                out_jac[s, a, f] += v
                out_jac[o, a, f] -= v
                for b in range(3):
                    out_strain[i, a, b, f] += v * vec[p, b]
