"""Shared definition of the on-the-fly (OTF) learning benchmark: 108-atom fcc Cu, EMT as the oracle.

Imported by both the FLARE driver (``benchmarks/otf_flare.py``, run in ``/work/peers-venv``) and
gpmlip's own OTF benchmark, so it depends on numpy and ASE only.  It fixes the starting structure,
the Langevin thermostat (5 fs, friction 0.02 fs^-1, 800 K) and the held-out test frames (EMT
Langevin MD at 800 K and 1200 K), and scores predicted forces against them.

Usage::

    from otf_common import initial_atoms, make_langevin, heldout_frames, force_errors
    frames = heldout_frames()            # cached in benchmarks/results/otf_heldout_<hash>.extxyz
    errors = force_errors([model_forces(f) for f in frames], frames)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

TIMESTEP_FS = 5.0
FRICTION = 0.02  # per fs; pass as FRICTION / units.fs to ASE
TEMPERATURE_K = 800.0
LATTICE = 3.6
HELDOUT_DISCARD = 1000  # equilibration steps before the first kept held-out frame
HELDOUT_EVERY = 200  # steps between kept held-out frames
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def initial_atoms(seed: int = 0, temperature_k: float = TEMPERATURE_K) -> Atoms:
    """Return the perfect 108-atom fcc Cu cell with Maxwell-Boltzmann velocities.

    Parameters
    ----------
    seed : int
        Seed of the numpy generator that draws the velocities.
    temperature_k : float
        Temperature of the velocity distribution in K.

    Returns
    -------
    ase.Atoms
        ``bulk("Cu", "fcc", a=LATTICE, cubic=True).repeat(3)`` with zero total momentum, no calculator.
    """
    atoms = bulk("Cu", "fcc", a=LATTICE, cubic=True).repeat(3)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_k, rng=np.random.default_rng(seed))
    Stationary(atoms)
    return atoms


def make_langevin(atoms: Atoms, seed: int = 0, temperature_k: float = TEMPERATURE_K) -> Langevin:
    """Return the benchmark's Langevin integrator (5 fs, friction 0.02 fs^-1) for ``atoms``.

    Parameters
    ----------
    atoms : ase.Atoms
        Atoms with a calculator attached.
    seed : int
        The thermostat's random stream is ``np.random.default_rng(seed + 1)``.
    temperature_k : float
        Thermostat temperature in K.
    """
    return Langevin(atoms, TIMESTEP_FS * units.fs, temperature_K=temperature_k,
                    friction=FRICTION / units.fs, rng=np.random.default_rng(seed + 1))


def _heldout_path(params: dict) -> Path:
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return RESULTS_DIR / f"otf_heldout_{digest}.extxyz"


def heldout_frames(temperatures: Sequence[float] = (800, 1200), n_per_t: int = 10,
                   seed: int = 123) -> list[Atoms]:
    """Return EMT-labelled test frames from Langevin MD of the perfect crystal at each temperature.

    For each temperature (index ``i``) the perfect cell gets velocities from seed ``seed + 2 i``
    and a thermostat stream from ``seed + 2 i + 1``; after ``HELDOUT_DISCARD`` steps one frame is
    kept every ``HELDOUT_EVERY`` steps.  Frames are cached as extxyz under ``benchmarks/results/``
    (the file name hashes every parameter) and reloaded from there when present.

    Parameters
    ----------
    temperatures : sequence of float
        MD temperatures in K.
    n_per_t : int
        Frames kept per temperature.
    seed : int
        Base seed.

    Returns
    -------
    list of ase.Atoms
        Copies with EMT energy and forces in a ``SinglePointCalculator`` and
        ``info["temperature_K"]``.
    """
    params = dict(temperatures=[float(t) for t in temperatures], n_per_t=n_per_t, seed=seed,
                  lattice=LATTICE, dt_fs=TIMESTEP_FS, friction_per_fs=FRICTION,
                  discard=HELDOUT_DISCARD, every=HELDOUT_EVERY, version=1)
    path = _heldout_path(params)
    if path.exists():
        return list(read(path, index=":"))
    frames: list[Atoms] = []
    for i, temp in enumerate(temperatures):
        atoms = initial_atoms(seed=seed + 2 * i, temperature_k=temp)
        atoms.calc = EMT()
        dyn = make_langevin(atoms, seed=seed + 2 * i, temperature_k=temp)
        dyn.run(HELDOUT_DISCARD)
        for _ in range(n_per_t):
            dyn.run(HELDOUT_EVERY)
            frame = atoms.copy()
            frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(),
                                               forces=atoms.get_forces())
            frame.info["temperature_K"] = float(temp)
            frames.append(frame)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    write(path, frames, format="extxyz")
    return frames


def _stats(err: np.ndarray) -> dict:
    return {"rmse_meV_A": float(np.sqrt(np.mean(err**2)) * 1e3),
            "mae_meV_A": float(np.mean(np.abs(err)) * 1e3), "n_components": int(err.size)}


def force_errors(pred_forces_list: Sequence[np.ndarray], frames: Sequence[Atoms]) -> dict:
    """Force RMSE and MAE (meV/Å, over Cartesian components) against the frames' stored forces.

    Parameters
    ----------
    pred_forces_list : sequence of (N, 3) arrays
        Predicted forces in eV/Å, one per frame.
    frames : sequence of ase.Atoms
        Frames from :func:`heldout_frames`.

    Returns
    -------
    dict
        ``{"overall": {...}, "per_temperature": {"800": {...}, ...}}``, each with
        ``rmse_meV_A``, ``mae_meV_A`` and ``n_components``.
    """
    errs = [np.asarray(p) - f.get_forces() for p, f in zip(pred_forces_list, frames, strict=True)]
    temps = [f.info.get("temperature_K") for f in frames]
    out = {"overall": _stats(np.concatenate([e.ravel() for e in errs])), "per_temperature": {}}
    for t in sorted({t for t in temps if t is not None}):
        sel = np.concatenate([e.ravel() for e, tt in zip(errs, temps) if tt == t])
        out["per_temperature"][f"{t:g}"] = _stats(sel)
    return out


def summary_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """Format ``rows`` (dicts) as a markdown table; floats get 3 significant digits.

    Parameters
    ----------
    rows : sequence of dict
        One dict per table row.
    columns : sequence of str, optional
        Column order; defaults to the keys of the first row.
    """
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
