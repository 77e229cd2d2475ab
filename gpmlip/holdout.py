"""Leave-one-config-type-out: is the predicted std honest where the model has not been?

In-distribution residuals (held-out frames of the same kinds, leave-one-structure-out) say
little about the std where a gate must fire: a surface, a vacancy, a hotter phase.  This module
holds out every config type of a data set in turn, refits the model's settings on the other
types, calibrates the refit as the user would (leave-one-structure-out on its own training data,
or not at all), and scores the held-out type: force errors, and the calibration metrics of the
raw and the calibrated force std (:mod:`gpmlip.uncertainty`).  ``gpmlip eval MODEL DATA
--leave-out-config-types`` runs it from the command line.
"""

from __future__ import annotations

import logging

import numpy as np

from gpmlip.data import Dataset, load_frames
from gpmlip.errors import DataError

log = logging.getLogger(__name__)


def refit_copy(model):
    """A new, unfitted :class:`~gpmlip.SparseGP` with ``model``'s settings and fitted levels
    (descriptor, kernel, sparse count and method, noise, signal std, two-body term, e0 rule,
    baseline): what a refit of the same model on other data starts from."""
    from gpmlip.descriptors.registry import descriptor_from_dict
    from gpmlip.gp.files import fitted_levels
    from gpmlip.gp.model import SparseGP

    return SparseGP(
        descriptor_from_dict(model.descriptor.to_dict(), n_jobs=model.n_jobs),
        zeta=model.zeta, n_sparse=model.n_sparse, sparse_method=model.sparse_method,
        jitter=model.jitter, seed=model.seed, config_sigmas=model.config_sigmas,
        **fitted_levels(model.state, model.stress_noise),
        e0=model.e0, baseline=model.baseline, n_jobs=model.n_jobs)


def _capped_sparse(model, frames) -> dict[int, int]:
    """The model's sparse count per species, at most the environments ``frames`` hold."""
    from gpmlip.species import by_atomic_number

    wanted = by_atomic_number(model.n_sparse, "n_sparse") if isinstance(model.n_sparse, dict) \
        else dict.fromkeys(model.species, model.n_sparse)
    counts = {z: 0 for z in model.species}
    for f in frames:
        for z in f.atoms.numbers:
            counts[int(z)] += 1
    return {z: min(int(wanted.get(z, 0)), counts[z]) for z in model.species}


def error_bar_scores(model, frames) -> dict:
    """How honest the total-energy and stress stds are on labelled structures.

    Returns
    -------
    dict
        ``energy`` and ``stress``: ``n`` (structures, or stress components that symmetry does
        not fix: :func:`gpmlip.gp.calibration.free_components`), ``zms`` and
        ``zms_raw`` (mean squared error over predicted std, calibrated and raw; 1 is honest),
        ``coverage_2std`` (calibrated); empty for a quantity without labels.
    """
    from ase.stress import full_3x3_to_voigt_6_stress as voigt

    from gpmlip.gp.calibration import free_components

    found = {"energy": ([], [], []), "stress": ([], [], [])}
    for frame in frames:
        cell = frame.atoms.pbc.all() and abs(frame.atoms.cell.volume) > 1e-8
        want_s = frame.stress is not None and cell
        if frame.energy is None and not want_s:
            continue
        p = model.predict(frame.atoms, forces=False, stress=want_s, variance=False,
                          energy_std=frame.energy is not None, stress_std=want_s)
        if frame.energy is not None:
            for out, x in zip(found["energy"], (p.energy - frame.energy, p.energy_std,
                                                p.energy_std_raw)):
                out.append(np.atleast_1d(x))
        if want_s:
            for out, x in zip(found["stress"], (voigt(p.stress) - voigt(frame.stress),
                                                voigt(p.stress_std), voigt(p.stress_std_raw))):
                out.append(x)
    scores = {}
    for name, (err, std, raw) in found.items():
        if not err:
            scores[name] = {}
            continue
        err, std, raw = (np.concatenate(x) for x in (err, std, raw))
        free = free_components(raw)          # a cubic cell's shear has no std but round-off
        err, std, raw = err[free], std[free], raw[free]
        scores[name] = {"n": int(len(err)), "zms": float(np.mean((err / std) ** 2)),
                        "zms_raw": float(np.mean((err / raw) ** 2)),
                        "coverage_2std": float(np.mean(np.abs(err) <= 2 * std))}
    return scores


def leave_config_types_out(model, frames, *, config_types=None, calibrate: bool = True,
                           max_frames: int | None = 50, progress: bool = False) -> list[dict]:
    """Hold out each config type in turn, refit on the rest, score the held-out type.

    Parameters
    ----------
    model : SparseGP
        Fitted: its settings and fitted levels are refitted (:func:`refit_copy`); it is not
        changed.
    frames : Dataset, list of ase.Atoms or a path
        Labelled structures with ``config_type``s (at least two types), with forces.
    config_types : sequence of str, optional
        The types to hold out (default: every type).
    calibrate : bool, default True
        Calibrate each refit on leave-one-structure-out residuals of its own training data
        (:meth:`~gpmlip.SparseGP.calibrate`), as a user without held-out data would.
    max_frames : int, optional
        Structures left out for that calibration.
    progress : bool
        A progress bar over the held-out types.

    Returns
    -------
    list of dict
        Per held-out type: ``config_type``, ``frames``, ``train_frames``,
        ``force_mae_meV_A``, ``force_rmse_meV_A``, ``energy_mae_meV_atom``, ``raw`` and
        ``calibrated`` (:func:`gpmlip.uncertainty.calibration_metrics` of the force std:
        ``zms``, ``coverage_2std``, ...; ``calibrated`` is None without a calibration), and
        ``error_bars`` (:func:`error_bar_scores`: the total-energy and stress stds).
    """
    from gpmlip.evaluate import ALL, calibration_report, error_table, predictions
    from gpmlip.progress import progress_bar

    data = frames if isinstance(frames, Dataset) else load_frames(frames, species=model.species)
    types = sorted({f.config_type for f in data})
    chosen = list(config_types) if config_types is not None else types
    unknown = sorted(set(chosen) - set(types))
    if unknown:
        raise DataError(f"config types {unknown} are not in the data (it has {types})")
    if len(types) < 2:
        raise DataError(f"the data have one config type ({types}): leaving it out leaves "
                        "nothing to fit; give structures of several kinds with config_type")
    out = []
    bar = progress_bar(total=len(chosen), desc="config types", unit="type",
                       enable=None if progress else False)
    with bar:
        for name in chosen:
            train = [f for f in data if f.config_type != name]
            held = [f for f in data if f.config_type == name]
            refit = refit_copy(model)
            refit.n_sparse = _capped_sparse(model, train)
            refit.fit(train)
            if calibrate:
                refit.calibrate(max_frames=max_frames)
            records = predictions(refit, Dataset(held), force_std=True)
            table = error_table(records).get(ALL, {})
            report = calibration_report(records)
            force, energy = table.get("force_meV_A", {}), table.get("energy_meV_atom", {})
            row = {"config_type": name, "frames": len(held), "train_frames": len(train),
                   "force_mae_meV_A": force.get("mae"), "force_rmse_meV_A": force.get("rmse"),
                   "energy_mae_meV_atom": energy.get("mae"),
                   "raw": report.get("raw"),
                   "calibrated": report.get("calibrated") if refit.calibration_ else None,
                   "calibration": None if refit.calibration_ is None else
                   refit.calibration_.describe(),
                   "error_bars": error_bar_scores(refit, held)}
            log.info("left out %s (%d frames): force MAE %s meV/Å, ZMS raw %s, calibrated %s",
                     name, len(held), row["force_mae_meV_A"],
                     None if row["raw"] is None else f"{row['raw']['zms']:.3g}",
                     None if row["calibrated"] is None else f"{row['calibrated']['zms']:.3g}")
            out.append(row)
            bar.update(1)
    return out


def format_rows(rows: list[dict]) -> str:
    """The result of :func:`leave_config_types_out` as a text table."""
    lines = ["held-out type            frames  F MAE meV/Å  ZMS raw  ZMS cal  cover2 raw  "
             "cover2 cal  E ZMS raw  E ZMS cal  S ZMS raw  S ZMS cal"]

    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    for r in rows:
        raw, cal = r["raw"] or {}, r["calibrated"] or {}
        lines.append(
            f"{r['config_type'][:24]:24s} {r['frames']:6d}  "
            f"{num(r['force_mae_meV_A'], '11.1f')}  "
            f"{num(raw.get('zms'), '7.3g')}  {num(cal.get('zms'), '7.3g')}  "
            f"{num(raw.get('coverage_2std'), '10.3f')}  {num(cal.get('coverage_2std'), '10.3f')}"
            + "".join(f"  {num(bars.get(k), '9.3g')}"
                      for q in ("energy", "stress") for bars in [r.get("error_bars", {}).get(q, {})]
                      for k in ("zms_raw", "zms")))
    lines.append("ZMS = mean (error / std)^2: 1 is honest, > 1 overconfident; cover2 = share of "
                 "errors within 2 std (0.954 for a calibrated Gaussian); F: force components, "
                 "E: total energies, S: stress components")
    return "\n".join(lines)
