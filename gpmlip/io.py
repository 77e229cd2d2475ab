"""Versioned model files: one ``.npz`` of arrays plus JSON metadata, never pickle.

The JSON is stored inside the archive as the UTF-8 bytes of the array ``metadata.json``; loading
uses ``numpy.load(..., allow_pickle=False)``, so an untrusted file can hold only numbers and text.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
from ase import Atoms

from gpmlip.errors import ModelFileError
from gpmlip.kernels import NormalizedDotProduct

FORMAT = "gpmlip-sparse-gp"
FORMAT_VERSION = 1
GROUP_NAMES = ("energy", "forces", "stress", "fixed")


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import gpmlip

    out = {"gpmlip": gpmlip.__version__}
    for name in ("dscribe", "numpy", "ase"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _frames_to_arrays(frames) -> dict[str, np.ndarray]:
    n = np.array([f.n_atoms for f in frames], dtype=np.int64)
    nan3 = np.full((3, 3), np.nan)
    return {
        "frame_n_atoms": n,
        "frame_numbers": np.concatenate([f.atoms.numbers for f in frames]),
        "frame_positions": np.concatenate([f.atoms.positions for f in frames]),
        "frame_cells": np.array([f.atoms.cell.array for f in frames]).reshape(-1, 3, 3),
        "frame_pbc": np.array([f.atoms.pbc for f in frames], dtype=bool).reshape(-1, 3),
        "frame_energy": np.array([np.nan if f.energy is None else f.energy for f in frames]),
        "frame_forces": np.concatenate([np.full((f.n_atoms, 3), np.nan) if f.forces is None
                                        else f.forces for f in frames]),
        "frame_stress": np.array([nan3 if f.stress is None else f.stress
                                  for f in frames]).reshape(-1, 3, 3),
        "frame_sigmas": np.array([[np.nan if s is None else s for s in
                                   (f.energy_sigma, f.force_sigma, f.virial_sigma)]
                                  for f in frames]).reshape(-1, 3),
    }


def _frames_from_arrays(arrays, config_types: list[str]):
    from gpmlip.data.frames import Frame

    frames = []
    starts = np.concatenate([[0], np.cumsum(arrays["frame_n_atoms"])])
    for i, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
        atoms = Atoms(numbers=arrays["frame_numbers"][a:b], positions=arrays["frame_positions"][a:b],
                      cell=arrays["frame_cells"][i], pbc=arrays["frame_pbc"][i])
        energy = float(arrays["frame_energy"][i])
        forces = arrays["frame_forces"][a:b]
        stress = arrays["frame_stress"][i]
        sigmas = [None if np.isnan(s) else float(s) for s in arrays["frame_sigmas"][i]]
        frames.append(Frame(atoms=atoms, energy=None if np.isnan(energy) else energy,
                            forces=None if np.isnan(forces).all() else np.array(forces),
                            stress=None if np.isnan(stress).all() else np.array(stress),
                            config_type=config_types[i], energy_sigma=sigmas[0],
                            force_sigma=sigmas[1], virial_sigma=sigmas[2], index=i,
                            source="model file"))
    return frames


def _e0_setting(e0):
    """The model's ``e0`` argument as JSON: a mode string, or symbol -> eV."""
    from gpmlip.data.reference import ReferenceEnergies
    from gpmlip.species import atomic_number

    if isinstance(e0, ReferenceEnergies):
        return e0.to_dict()
    if isinstance(e0, dict):
        from ase.data import chemical_symbols

        return {chemical_symbols[atomic_number(k, "e0")]: float(v) for k, v in e0.items()}
    return e0


def save_model(model, path) -> None:
    """Write a fitted :class:`~gpmlip.SparseGP` to ``path`` (``.npz``), atomically.

    Parameters
    ----------
    model : SparseGP
    path : str or Path
    """
    model._check_fitted()
    path = Path(path)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": _versions(),
        "descriptor": model.descriptor.to_dict(),
        "kernel": NormalizedDotProduct(model.zeta, model.signal_variance_).to_dict(),
        "noise": model.noise_,
        "config_sigmas": model.config_sigmas,
        "e0": {str(z): e for z, e in model.e0_.energies.items()},
        "e0_method": model.e0_.method,
        "e0_setting": _e0_setting(model.e0),
        "settings": {"n_sparse": model.n_sparse, "sparse_method": model.sparse_method,
                     "jitter": model.jitter, "seed": model.seed},
        "config_types": [f.config_type for f in model.frames_],
        "log_likelihood": model.posterior_.log_likelihood,
    }
    arrays = {
        "metadata.json": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        "sparse_features": model.sparse_.features,
        "sparse_species": model.sparse_.species,
        "sparse_origin": model.sparse_origin_,
        "kmm": model.kmm_,
        "beta": model.posterior_.beta,
        "features": np.concatenate(model.features_),
        **_frames_to_arrays(model.frames_),
    }
    for name, st in model.stats_.items():
        arrays.update(st.to_arrays(f"stats_{name}_"))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def read_metadata(path) -> dict:
    """The JSON metadata of a model file, checked for format and version."""
    return _open(path)[0]


def _open(path):
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"no model file at {path}")
    try:
        data = np.load(path, allow_pickle=False)
        arrays = {k: data[k] for k in data.files}
        meta = json.loads(bytes(arrays.pop("metadata.json")).decode())
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError,
            UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path} is not a readable gpmlip model file ({exc}); it may be "
                             "damaged or truncated: save the model again") from None
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a gpmlip sparse GP model (format "
                             f"{meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path} has model format version {meta.get('format_version')}; "
                             f"this gpmlip reads version {FORMAT_VERSION}: use the gpmlip "
                             f"version that wrote it ({meta.get('versions', {}).get('gpmlip')})")
    return meta, arrays


def load_model(path, *, n_jobs: int = 1):
    """Read a model written by :meth:`SparseGP.save`.

    Parameters
    ----------
    path : str or Path
    n_jobs : int
        Worker processes for the descriptor of the loaded model.

    Returns
    -------
    SparseGP
    """
    from gpmlip.covariance import SparseSet
    from gpmlip.data.reference import ReferenceEnergies
    from gpmlip.descriptors.soap import SOAP
    from gpmlip.gp.model import SparseGP
    from gpmlip.gp.solver import GramStats

    meta, arrays = _open(path)
    try:
        descriptor = SOAP(**{k: v for k, v in meta["descriptor"].items() if k != "type"},
                          n_jobs=n_jobs)
        settings = meta["settings"]
        kernel = NormalizedDotProduct.from_dict(meta["kernel"])
        model = SparseGP(descriptor, zeta=kernel.zeta, n_sparse=settings["n_sparse"],
                         sparse_method=settings["sparse_method"], jitter=settings["jitter"],
                         seed=settings["seed"], config_sigmas=meta["config_sigmas"],
                         energy_sigma=meta["noise"]["energy"],
                         force_sigma=meta["noise"]["forces"],
                         stress_sigma=meta["noise"]["stress"],
                         # the fitted signal levels and the e0 rule, so that a refit of the
                         # loaded model is the model that was saved
                         signal_std={int(z): float(np.sqrt(v)) for z, v in
                                     kernel.signal_variance.items()},
                         e0=meta.get("e0_setting") or {int(z): float(e) for z, e in meta["e0"].items()})
        model.signal_variance_ = kernel.signal_variance
        model.noise_ = {k: float(v) for k, v in meta["noise"].items()}
        model.e0_ = ReferenceEnergies({int(z): float(e) for z, e in meta["e0"].items()},
                                      meta["e0_method"])
        model.sparse_ = SparseSet(arrays["sparse_features"], arrays["sparse_species"])
        model.sparse_.features = arrays["sparse_features"]   # already unit length: keep the bits
        model.sparse_origin_ = arrays["sparse_origin"]
        model.kmm_ = arrays["kmm"]
        model.stats_ = {g: GramStats.from_arrays(arrays, f"stats_{g}_") for g in GROUP_NAMES}
        model.frames_ = _frames_from_arrays(arrays, meta["config_types"])
        split = np.cumsum(arrays["frame_n_atoms"])[:-1]
        model.features_ = np.split(arrays["features"], split)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path} is missing or has malformed model data ({exc!r}); it may "
                             "be damaged: save the model again") from None
    model._solve()
    return model
