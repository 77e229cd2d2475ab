"""Model files back into a model: :func:`load_model`, the reader of :meth:`SparseGP.save`.

The file format itself (npz + JSON, versions, damage checks) is :mod:`gpmlip.io`; this module
rebuilds the :class:`~gpmlip.gp.model.SparseGP` around the stored state.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from gpmlip.baselines import BaselineSpec, stored_baseline
from gpmlip.descriptors.registry import descriptor_from_dict
from gpmlip.errors import SettingsError
from gpmlip.gp import twobody
from gpmlip.gp.calibration import Calibration
from gpmlip.gp.model import SparseGP
from gpmlip.io import model_file_damaged, read_model_file
from gpmlip.kernels import NormalizedDotProduct


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
    meta, state = read_model_file(path)
    try:
        descriptor = descriptor_from_dict(meta["descriptor"], n_jobs=n_jobs)
        settings = meta["settings"]
        kernel = NormalizedDotProduct.from_dict(meta["kernel"])
        two = state.two_body
        model = SparseGP(descriptor, zeta=kernel.zeta, n_sparse=settings["n_sparse"],
                         sparse_method=settings["sparse_method"], jitter=settings["jitter"],
                         seed=settings["seed"], config_sigmas=meta["config_sigmas"],
                         energy_sigma=state.noise["energy"], force_sigma=state.noise["forces"],
                         # files without the setting weighted stresses in eV/Å³
                         stress_noise=settings.get("stress_noise", "absolute"),
                         **{"virial_sigma" if settings.get("stress_noise") == "per_atom"
                            else "stress_sigma": state.noise["stress"]},
                         # the fitted signal levels and the e0 rule, so that a refit of the
                         # loaded model is the model that was saved
                         signal_std={z: float(np.sqrt(v))
                                     for z, v in state.signal_variance.items()
                                     if z != twobody.KEY},
                         two_body=None if two is None else dataclasses.replace(
                             two.term, sigma=float(np.sqrt(state.signal_variance[twobody.KEY]))),
                         e0=meta.get("e0_setting") or dict(state.e0.energies),
                         baseline=stored_baseline(meta.get("baseline"), baseline, path))
    except SettingsError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise model_file_damaged(path, exc) from None
    model.resolve(state)
    model.calibration = Calibration.from_dict(meta.get("calibration"))   # older files: raw
    model.build_report_ = meta.get("build")   # None: not built by gpmlip.build_model
    return model
