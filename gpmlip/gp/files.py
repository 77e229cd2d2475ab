"""Model files back into a model: :func:`load_model`, the reader of :meth:`SparseGP.save`.

The file format itself (npz + JSON, versions, damage checks) is :mod:`gpmlip.gp.container`; this
module rebuilds the :class:`~gpmlip.gp.model.SparseGP` around the stored state.
"""

from __future__ import annotations

import os

import numpy as np
from scipy.linalg import LinAlgError

from gpmlip.baselines import BaselineSpec, stored_baseline
from gpmlip.gp.covariance import SparseSet, local_kernel
from gpmlip.descriptors.registry import descriptor_from_dict
from gpmlip.errors import GpmlipError, ModelFileError, SettingsError
from gpmlip.gp.calibration import Calibration
from gpmlip.gp.model import SparseGP
from gpmlip.gp.observations import FrameRows, NoiseModel, observations
from gpmlip.gp.container import model_file_damaged, read_model_file
from gpmlip.gp.kernels import NormalizedDotProduct


def load_model(path: str | os.PathLike, *, n_jobs: int = 1,
               baseline: BaselineSpec = None) -> SparseGP:
    """Read a model written by :meth:`SparseGP.save`.

    Parameters
    ----------
    path : str or Path
    n_jobs : int
        Worker processes for the descriptor of the loaded model.
    baseline : optional
        Only for a model trained with a user-supplied calculator factory (which a file cannot
        store): the same factory again.  A stored named baseline is rebuilt from the file.

    Returns
    -------
    SparseGP
    """
    meta, state, stored_beta = read_model_file(path)
    try:
        return _rebuilt(meta, state, stored_beta, path, n_jobs, baseline)
    except (ModelFileError, SettingsError):
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError,
            OverflowError, RecursionError, LinAlgError, GpmlipError) as exc:
        # values that passed the container's checks but make no model with the rest
        raise model_file_damaged(path, exc) from None


def _check_sparse_set(state, n_features: int, zeta: int) -> None:
    """The sparse points agree with each other and with the stored ``K_mm``: unit-length
    descriptors of the descriptor's length, one species and origin each, and ``K_mm`` their
    kernel (up to the jitter on its diagonal); ValueError otherwise."""
    x, z = state.sparse.features, state.sparse.species
    m = len(z)
    if x.ndim != 2 or x.shape != (m, n_features) or state.kmm.shape != (m, m) \
            or len(state.sparse_origin) != m:
        raise ValueError(f"its sparse set has features {x.shape}, species ({m},), K_mm "
                         f"{state.kmm.shape} and origins ({len(state.sparse_origin)},); the "
                         f"descriptor has {n_features} features")
    if not np.allclose(np.linalg.norm(x, axis=1), 1.0, rtol=0, atol=1e-6):
        raise ValueError("its sparse descriptors are not of unit length as stored")
    k = local_kernel(x, z, SparseSet(x, z), zeta)
    off = ~np.eye(m, dtype=bool)
    if not (np.allclose(state.kmm[off], k[off], rtol=0, atol=1e-8)
            and np.all(np.abs(np.diag(state.kmm) - 1.0) < 1e-3)):
        raise ValueError("its K_mm is not the kernel of its sparse descriptors")


def _check_targets(model: SparseGP, state) -> None:
    """The stored labels, e0 and noise model give the stored statistics' ``y' W y`` of every
    noise group (an e0 or label changed in the file would otherwise shift every prediction
    while the weights, solved from the statistics, still agree); ValueError otherwise.  Not
    checked with a baseline (its labels are residuals of the baseline, costly to recompute)."""
    if model.baseline is not None:
        return
    noise = NoiseModel(model.config_sigmas, model.stress_noise == "per_atom")
    sums: dict[str, float] = {}
    for frame in state.frames:
        n = frame.n_atoms
        rows = FrameRows(np.zeros(0), np.zeros((3 * n, 0)) if frame.forces is not None
                         else None, np.zeros((6, 0)) if frame.stress is not None else None)
        for group, _, y, scale in observations(frame, rows, state.e0.of(frame.atoms.numbers),
                                               noise):
            sums[group] = sums.get(group, 0.0) + float(np.sum(y * y / scale))
    for group, st in state.stats.items():
        if not np.isclose(sums.get(group, 0.0), st.yy, rtol=1e-8, atol=1e-10):
            raise ValueError(f"its stored labels, e0 and noise model do not give its stored "
                             f"{group} statistics (y'Wy {sums.get(group, 0.0):.6g} against "
                             f"{st.yy:.6g})")


def fitted_levels(state, stress_noise: str) -> dict:
    """:class:`SparseGP` arguments that reproduce a fitted state's levels: its noise (``stress_noise``
    names the stress level's meaning), its signal std per species and its two-body term with its
    own signal std; a model built with them and refitted on the same data is the same model."""
    return {"energy_sigma": state.noise["energy"], "force_sigma": state.noise["forces"],
            "stress_noise": stress_noise,
            "virial_sigma" if stress_noise == "per_atom" else "stress_sigma":
                state.noise["stress"],
            "signal_std": {z: float(np.sqrt(v)) for z, v in
                           state.species_signal_variance.items()},
            **{t.parameter: t.settings(np.sqrt(state.signal_variance[t.key]))
               for t in state.terms}}


def _rebuilt(meta: dict, state, stored_beta, path, n_jobs: int, baseline) -> SparseGP:
    """The model of a file's metadata and state, every part checked against the others."""
    descriptor = descriptor_from_dict(meta["descriptor"], n_jobs=n_jobs)
    settings = meta["settings"]
    kernel = NormalizedDotProduct.from_dict(meta["kernel"])
    model = SparseGP(descriptor, zeta=kernel.zeta, n_sparse=settings["n_sparse"],
                     sparse_method=settings["sparse_method"], jitter=settings["jitter"],
                     seed=settings["seed"], config_sigmas=meta["config_sigmas"],
                     # files without the setting weighted stresses in eV/Å³; the fitted levels
                     # and the e0 rule, so that a refit of the loaded model is the saved model
                     **fitted_levels(state, settings.get("stress_noise", "absolute")),
                     e0=meta.get("e0_setting") or dict(state.e0.energies),
                     baseline=stored_baseline(meta.get("baseline"), baseline, path))
    lacking = set(model.species) - set(state.e0.energies)
    if lacking or set(model.species) - set(state.signal_variance):
        raise ValueError(f"species {sorted(lacking)} have no e0 or signal variance")
    first = state.frames[0].atoms if state.frames else None
    if first is not None:
        again = descriptor.describe(first).features
        if again.shape != state.features[0].shape or not np.allclose(
                again, state.features[0], rtol=1e-6, atol=1e-9):
            raise ValueError("its descriptor settings do not reproduce the stored features of "
                             "its first training structure")
    _check_sparse_set(state, descriptor.n_features, kernel.zeta)
    _check_targets(model, state)
    model.set_state(state)
    beta = model.state.posterior.beta
    if stored_beta is not None and (stored_beta.shape != beta.shape or not np.allclose(
            stored_beta, beta, rtol=1e-6, atol=1e-8 * max(1.0, float(np.abs(beta).max())))):
        raise ValueError("the stored weights differ from those its stored statistics give")
    model.calibration_ = Calibration.from_dict(meta.get("calibration"))   # older files: raw
    model.energy_calibration_ = Calibration.from_dict(meta.get("energy_calibration"))
    model.stress_calibration_ = Calibration.from_dict(meta.get("stress_calibration"))
    build = meta.get("build")   # None: not built by gpmlip.build_model
    if build is not None and not isinstance(build, dict):
        raise ValueError(f"its build report is a {type(build).__name__}, not a table")
    model.build_report_ = build
    return model
