"""The fresh-frame check at the end of an on-the-fly run: trajectory frames the model never learnt,
labelled by the run's own labeller, and the final model's errors and force-std calibration on them.

The labels an on-the-fly run made were chosen where the model was unsure, so the errors at them
("before learning") say how the run went, not how good the final model is.  This check is what
``workflows/otf_demo.py`` does with fresh frames and what ``gpmlip otf`` prints: a few frames of
the run's own trajectory that were not labelled, spread over its second half, labelled after the
run and written to ``validation.extxyz`` (labelled data is on disk before it is used).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

VALIDATION_FILE = "validation.extxyz"


def pick_frames(trajectory: list, n: int) -> list:
    """``n`` unlabelled frames spread evenly over the second half of ``trajectory`` (fewer when
    it has fewer)."""
    pool = [a for a in trajectory[len(trajectory) // 2:] if not a.info.get("labelled", False)]
    if n <= 0 or not pool:
        return []
    idx = np.unique(np.linspace(0, len(pool) - 1, min(n, len(pool))).round().astype(int))
    return [pool[i] for i in idx]


def fresh_frame_check(model, labeller, run_directory, n_frames: int = 3) -> dict:
    """Label ``n_frames`` unlabelled trajectory frames and score the model on them.

    Parameters
    ----------
    model : SparseGP
        The run's final model.
    labeller : Labeller
        The run's labeller (:func:`gpmlip.labelling.get_labeller`).
    run_directory : path
        The run directory (its ``trajectory.extxyz`` is read; ``validation.extxyz`` written).
    n_frames : int
        Frames to label (each costs one labeller call).

    Returns
    -------
    dict
        ``frames`` (labelled successfully), ``failed``, ``steps``, ``force_mae_meV_A``,
        ``force_rmse_meV_A``, ``energy_mae_meV_atom``, ``force_std_rms_meV_A`` (the model's
        predicted std there, calibrated if the model is), ``force_zms`` (mean squared error over
        predicted variance: 1 is calibrated), ``calibrated`` and ``file``; the error fields are
        None when no frame could be labelled.
    """
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    from gpmlip.evaluate import error_table, predictions
    from gpmlip.labelling.labellers import run_labeller

    run_directory = Path(run_directory)
    traj = run_directory / "trajectory.extxyz"
    frames = pick_frames(ase.io.read(traj, ":") if traj.exists() else [], n_frames)
    out_path = run_directory / VALIDATION_FILE
    out_path.unlink(missing_ok=True)
    labelled, failed = [], 0
    for atoms in frames:
        atoms = atoms.copy()
        atoms.info = {"step": atoms.info.get("step", -1), "config_type": "fresh"}
        for key in list(atoms.arrays):
            if key not in ("numbers", "positions"):
                del atoms.arrays[key]
        result = run_labeller(labeller, atoms)
        if not result.ok:
            failed += 1
            continue
        atoms.calc = SinglePointCalculator(atoms, energy=result.energy, forces=result.forces,
                                           **({} if result.stress is None else
                                              {"stress": result.stress}))
        ase.io.write(out_path, atoms, format="extxyz", append=True)
        labelled.append(atoms)
    report = {"frames": len(labelled), "failed": failed,
              "steps": [int(a.info.get("step", -1)) for a in labelled],
              "file": str(out_path) if labelled else None,
              "calibrated": model.calibration_ is not None,
              "force_mae_meV_A": None, "force_rmse_meV_A": None, "energy_mae_meV_atom": None,
              "force_std_rms_meV_A": None, "force_zms": None}
    if not labelled:
        log.warning("fresh-frame check: no frame labelled (%d failed, %d asked for)", failed,
                    n_frames)
        return report
    records = predictions(model, ase.io.read(out_path, ":"), force_std=True)
    table = error_table(records)["all"]
    err = np.concatenate([np.ravel(r["forces_pred"] - r["forces"]) for r in records])
    std = np.concatenate([np.ravel(r["force_std"]) for r in records])
    report.update(force_mae_meV_A=table["force_meV_A"]["mae"],
                  force_rmse_meV_A=table["force_meV_A"]["rmse"],
                  energy_mae_meV_atom=table.get("energy_meV_atom", {}).get("mae"),
                  force_std_rms_meV_A=float(1000 * np.sqrt(np.mean(std ** 2))),
                  force_zms=float(np.mean(err ** 2 / np.maximum(std, 1e-12) ** 2)))
    log.info("fresh-frame check on %d unlabelled trajectory frames: force MAE %.1f meV/Å, "
             "predicted force std RMS %.1f meV/Å (ZMS %.2f)", len(labelled),
             report["force_mae_meV_A"], report["force_std_rms_meV_A"], report["force_zms"])
    return report
