"""Errors of a model on labelled data, per config_type: what `gpmlip eval` and fit reports show."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

from gpmlip.data import Dataset, load_frames

if TYPE_CHECKING:
    from gpmlip.gp.model import SparseGP, TrainingData

ALL = "all"


def predictions(model: SparseGP, frames: TrainingData, *, force_std: bool = False,
                progress: bool = False) -> list[dict]:
    """Reference and predicted labels of every frame (what error tables and parity plots use).

    Returns
    -------
    list of dict
        Per frame: ``config_type``, ``n_atoms``, ``energy``/``energy_pred`` (eV), ``forces``/
        ``forces_pred`` (eV/Å), ``stress``/``stress_pred`` (eV/Å³), ``force_std`` and
        ``force_std_raw`` (calibrated and raw, eV/Å, only with ``force_std=True``); a label
        the frame lacks is None.

    Parameters
    ----------
    model : gpmlip.SparseGP
    frames : Dataset, list of Atoms or a path
    force_std : bool
        Also the predicted force std (what calibration plots need; it costs a prior-variance
        contraction per atom, so error tables go without it).
    progress : bool
        Show a progress bar (only when stderr is a terminal).
    """
    from gpmlip.progress import progress_bar

    data = frames if isinstance(frames, Dataset) else load_frames(frames,
                                                                   species=model.species)
    out = []
    for frame in progress_bar(list(data), desc="predicting", unit="frame",
                              enable=None if progress else False):
        want_stress = frame.stress is not None
        pred = model.predict(frame.atoms, stress=want_stress, force_std=force_std)
        out.append({"config_type": frame.config_type, "n_atoms": len(frame.atoms),
                    "energy": frame.energy, "energy_pred": pred.energy,
                    "forces": frame.forces, "forces_pred": pred.forces,
                    "force_std": pred.force_std, "force_std_raw": pred.force_std_raw,
                    "stress": frame.stress, "stress_pred": pred.stress})
    return out


def error_table(records: list[dict]) -> dict[str, dict]:
    """Energy (meV/atom), force (meV/Å) and stress (meV/Å³) MAE/RMSE per config_type and overall."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[r["config_type"]].append(r)
        groups[ALL].append(r)
    table = {}
    for name, rows in sorted(groups.items(), key=lambda kv: (kv[0] == ALL, kv[0])):
        entry: dict = {"frames": len(rows), "atoms": int(sum(r["n_atoms"] for r in rows))}
        e = [(r["energy_pred"] - r["energy"]) / r["n_atoms"] for r in rows
             if r["energy"] is not None]
        f = [np.ravel(r["forces_pred"] - r["forces"]) for r in rows if r["forces"] is not None]
        s = [np.ravel(r["stress_pred"] - r["stress"]) for r in rows
             if r["stress"] is not None and r["stress_pred"] is not None]
        for label, errs, scale in (("energy_meV_atom", e, 1000.0), ("force_meV_A", f, 1000.0),
                                   ("stress_meV_A3", s, 1000.0)):
            if len(errs):
                x = np.abs(np.concatenate([np.atleast_1d(v) for v in errs])) * scale
                entry[label] = {"mae": float(x.mean()), "rmse": float(np.sqrt((x ** 2).mean())),
                                "max": float(x.max())}
        table[name] = entry
    return table


def format_table(table: dict[str, dict]) -> str:
    """A plain-text table of :func:`error_table` (MAE / RMSE)."""
    cols = (("energy_meV_atom", "energy meV/atom"), ("force_meV_A", "forces meV/Å"),
            ("stress_meV_A3", "stress meV/Å³"))
    width = max(11, *(len(k) for k in table))
    lines = [f"{'config_type':<{width}} {'frames':>6}  " +
             "  ".join(f"{title + ' MAE/RMSE':>26}" for _, title in cols)]
    for name, entry in table.items():
        cells = []
        for key, _ in cols:
            v = entry.get(key)
            cells.append(f"{v['mae']:>12.2f} /{v['rmse']:>12.2f}" if v else f"{'-':>26}")
        lines.append(f"{name:<{width}} {entry['frames']:>6}  " + "  ".join(cells))
    return "\n".join(lines)


def calibration_report(records: list[dict]) -> dict[str, dict]:
    """Calibration metrics (:mod:`gpmlip.uncertainty`) of the force std in ``records``.

    Returns ``{"calibrated": metrics, "raw": metrics}`` over every force component of the frames
    with forces and a predicted std (``predictions(..., force_std=True)``) that symmetry does
    not fix (:func:`gpmlip.gp.calibration.free_components`: a force on an atom at an inversion
    centre is zero for any model); empty without any.
    """
    from gpmlip.gp.calibration import free_components
    from gpmlip.uncertainty import calibration_metrics

    rows = [r for r in records if r["forces"] is not None and r.get("force_std") is not None]
    if not rows:
        return {}
    err = np.concatenate([np.ravel(r["forces_pred"] - r["forces"]) for r in rows])
    free = free_components(np.concatenate([np.ravel(r["force_std_raw"]) for r in rows]))
    if not free.any():
        return {}
    out = {}
    for name, key in (("calibrated", "force_std"), ("raw", "force_std_raw")):
        std = np.concatenate([np.ravel(r[key]) for r in rows])
        out[name] = calibration_metrics(err[free], np.maximum(std[free], 1e-12))
    return out
