"""build_model: the data read, the screen run, the noise chosen, the winner fitted, calibrated."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence

import numpy as np
from ase.data import chemical_symbols

from gpmlip.builder.report import BuildReport
from gpmlip.builder.screen import (SCREEN_FRAMES, SCREEN_SPARSE, Plan, Screen, deadlines,
                                   quiet_fits, screen_and_confirm)
from gpmlip.builder.settings import (DESCRIPTOR_FIELDS, START_NOISE, Settings, data_scales,
                                     default_compression, default_sparse, numbers)
from gpmlip.data import as_frames
from gpmlip.errors import DataError, GpmlipError, SettingsError

log = logging.getLogger("gpmlip.builder")

CALIBRATION_FRAMES = 20
"""Training structures left out for the force-std calibration (each costs a force-variance
evaluation, 15x a prediction)."""
NOISE_GROUPS, NOISE_FACTORS, NOISE_SWEEPS = ("energy", "forces"), (0.5, 2.0), 1
"""The noise search (:func:`gpmlip.gp.validation.choose_noise`): energy and force levels, each
halved and doubled once (a wider search on Zuo 2020 Mo moved the criterion 1 -> 0.988 in 232 s,
as much as a Stacked screen candidate gains, so the budget goes to the screen); the virial level
stays at its default, measured on Zuo 2020 Li, Si, Mo."""


def build_model(frames, *, budget: float = 480.0, tune: bool = True,
                species: Sequence[str] | None = None, n_sparse: int | dict | None = None,
                settings: dict | None = None, screen_frames: int = SCREEN_FRAMES,
                screen_sparse: int = SCREEN_SPARSE, noise: bool = True, calibrate: bool = True,
                seed: int = 0, n_jobs: int | None = None, model_kwargs: dict | None = None,
                descriptor=None, executor=None):
    """Build a model the way a GAP expert would: settings chosen by leave-one-out, in a budget.

    Parameters
    ----------
    frames : Dataset, list of Frame, or a path
        Labelled training structures (energies and/or forces; stresses are fitted when present).
    budget : float, default 480
        Wall-time budget in seconds.  After the defaults' screening fit, the time of the later
        stages is estimated from it (:class:`~gpmlip.builder.screen.Plan`) and the screen
        starts no candidate that would eat into it (it always has a quarter of the budget); a
        stage that would not fit is skipped and logged; the final fit always runs.
    tune : bool, default True
        False: the plain defaults (:class:`Settings` with the data's cutoff), no screening.
    species : sequence of str, optional
        Element symbols (default: those in the data).
    n_sparse : int or dict, optional
        Final sparse points per species (default :func:`default_sparse`).
    settings : dict, optional
        Fixed :class:`Settings` fields (e.g. ``{"r_cut": 5.2, "zeta": 4}``): used as given and
        not screened.
    screen_frames, screen_sparse : int
        Size of the screening subset and its sparse points per species.
    noise : bool, default True
        Choose the noise levels and signal variances by leave-one-out on every structure, on
        the chosen settings at the screening sparse count, for the final fit
        (:func:`gpmlip.gp.validation.choose_noise`, which also scales the variances so that the
        leave-one-out z-scores have mean square 1).
    calibrate : bool, default True
        Fit the force-std calibration on leave-one-out residuals of
        :data:`CALIBRATION_FRAMES` structures (:meth:`SparseGP.calibrate`), if the budget has
        time left after the final fit.
    seed : int
        Seed of the sparse selections; the build is deterministic for a seed.
    n_jobs : int, optional
        Worker processes for descriptors (default: the machine's cores, at most 2).
    model_kwargs : dict, optional
        Further :class:`~gpmlip.SparseGP` arguments (``e0``, ``baseline``, noise levels, ...).
    descriptor : Descriptor, optional
        A descriptor built by hand: used as it is (the descriptor stages are not screened; the
        kernel, sparse and noise stages are).
    executor : concurrent.futures.Executor, optional
        Where the final fit's training statistics are computed, chunk by chunk (e.g. a Parsl
        executor on a cluster: :mod:`gpmlip.gp.distributed`); default ``n_jobs`` local
        processes.  The screen and the noise stage run locally.

    Returns
    -------
    SparseGP
        Fitted, with :attr:`~gpmlip.SparseGP.build_report_` (:meth:`BuildReport.to_dict`: the
        defaults, what was chosen, every screened candidate) kept in its model file.
    """
    start = time.perf_counter()
    data = as_frames(frames)
    if not data:
        raise DataError("build_model: no training structures")
    in_data = sorted({int(z) for f in data for z in f.atoms.numbers})
    symbols = list(species) if species else [chemical_symbols[z] for z in in_data]
    missing = sorted(set(in_data) - set(numbers(symbols)))
    if missing:
        raise SettingsError(f"the data contain {[chemical_symbols[z] for z in missing]}, not in "
                            f"species={symbols}; add them or leave species out to read them "
                            "from the data")
    fixed = dict(settings or {})
    unknown = set(fixed) - {f.name for f in dataclasses.fields(Settings)}
    if unknown:
        raise SettingsError(f"settings {sorted(unknown)} unknown; allowed: "
                            f"{[f.name for f in dataclasses.fields(Settings)]}")
    if budget <= 0:
        raise SettingsError(f"budget={budget}: give seconds > 0")
    n_jobs = n_jobs or min(2, os.cpu_count() or 1)
    scales = data_scales(data)
    if descriptor is not None:
        symbols = [chemical_symbols[z] for z in descriptor.species]
        missing = sorted(set(in_data) - set(descriptor.species))
        if missing:
            raise SettingsError(f"the data contain {[chemical_symbols[z] for z in missing]}, "
                                "which the descriptor given does not know; build it with them")
        fixed.setdefault("r_cut", float(descriptor.neighbour_cutoff))
        first = getattr(descriptor, "parts", [descriptor])[0]
        fixed.setdefault("compression", getattr(first.settings, "compression", "off"))
        fixed.update({k: getattr(Settings(1.0), k) for k in DESCRIPTOR_FIELDS if k not in fixed})
    if "second" in fixed and fixed["second"] is not None:
        fixed["second"] = tuple(fixed["second"])
    defaults = Settings(**{"r_cut": scales.r_cut,
                           "compression": default_compression(len(symbols)), **fixed})
    kwargs = {**START_NOISE, **(model_kwargs or {})}
    final_sparse = n_sparse if n_sparse is not None else default_sparse(data, numbers(symbols))
    report = BuildReport(defaults, defaults, scales, float(budget), tuned=tune)
    log.info("model builder: %d structures, %d atoms, species %s; cutoff %.1f Å from the data "
             "(%.0f neighbours), short cutoff %.1f Å; budget %.0f s", len(data),
             sum(f.n_atoms for f in data), symbols, scales.r_cut, scales.neighbours,
             scales.r_short, budget)

    chosen, screened = defaults, None
    if tune:
        chosen, screened = screen_and_confirm(data, symbols, defaults, scales, set(fixed),
                                              report, start, budget, screen_frames,
                                              screen_sparse, seed, n_jobs, kwargs, descriptor)
    report.chosen = chosen
    if tune and noise:
        kwargs.update(noise_stage(screened, data, chosen, symbols, report, start, budget,
                                   screen_sparse, seed, n_jobs, kwargs, descriptor))
    elif noise:
        report.stages["noise"] = "starting levels kept: tuning off"
    del screened

    from gpmlip.gp import SparseGP

    if n_sparse is None and tune:
        final_sparse = sparse_for_budget(data, symbols, final_sparse, report, start, budget)
    t = time.perf_counter()
    model = SparseGP(descriptor or chosen.descriptor(symbols, n_jobs), zeta=chosen.zeta,
                     n_sparse=final_sparse, sparse_method=chosen.sparse_method, seed=seed,
                     **kwargs).fit(data, executor=executor)
    fit_s = time.perf_counter() - t
    report.stages["final fit"] = f"{model.n_sparse_points} sparse points in {fit_s:.0f} s"
    log.info("model builder: final fit (%s), %d sparse points, %.0f s",
             chosen.changes(defaults), model.n_sparse_points, fit_s)
    if calibrate and any(f.forces is not None for f in data) and \
            time.perf_counter() - start > budget:
        report.stages["calibration"] = ("skipped: no budget left; the force std is the raw "
                                        "one (its variances scaled by the noise search)")
        log.warning("model builder: force-std calibration %s", report.stages["calibration"])
    elif calibrate and any(f.forces is not None for f in data):
        try:
            cal = model.calibrate(max_frames=CALIBRATION_FRAMES)
            report.stages["calibration"] = cal.describe()
        except GpmlipError as err:
            report.stages["calibration"] = f"failed: {err}"
            log.warning("model builder: force-std calibration failed (%s); the raw std is "
                        "kept", err)
    report.seconds = time.perf_counter() - start
    model.build_report_ = report.to_dict()
    log.info("model builder: done in %.0f s; chosen %s", report.seconds,
             chosen.changes(defaults))
    return model


SPARSE_GROWTH = 2.5
"""Measured cost of a fit (and its calibration) at twice the sparse points, relative to the
default count (Zuo 2020 Mo: 31 s at 1000 points, 77 s at 2000)."""


def sparse_for_budget(data, symbols, sparse: dict, report, start, budget) -> dict:
    """The default sparse count, doubled (at most a quarter of each species' atoms) when the
    time left would hold the final fit and calibration at the doubled count with a fifth to
    spare: more sparse points bring the model nearer the full GP (on Zuo 2020 Si the force
    error fell from 0.064 to 0.062 eV/Å at 2000 points), and a budget is there to be used."""
    plan = report.plan
    if plan is None:
        return sparse
    left = start + budget - time.perf_counter()
    need = SPARSE_GROWTH * plan.tail
    cap = default_sparse(data, numbers(symbols), limit=2 * max(sparse.values()))
    grown = {s: max(n, cap[s]) for s, n in sparse.items()}
    if grown == sparse:
        return sparse
    if left < 1.2 * need:
        report.stages["sparse count"] = (f"{max(sparse.values())} per species: {left:.0f} s left, "
                                         f"about {need:.0f} s needed for twice the points")
        return sparse
    report.stages["sparse count"] = (f"{max(grown.values())} per species (doubled: {left:.0f} s "
                                     f"left, about {need:.0f} s needed)")
    log.info("model builder: sparse count %s", report.stages["sparse count"])
    return grown


def noise_stage(model, data, chosen, symbols, report, start, budget, screen_sparse, seed,
                 n_jobs, kwargs, descriptor) -> dict:
    """Noise levels and signal variances chosen by leave-one-out on every structure, on the
    chosen settings at the screening sparse count (the rows cost ~(m_screen / m)^2 of the
    final model's, and the levels carry over); the :class:`~gpmlip.SparseGP` arguments that
    set them (empty when the budget allows no search)."""
    from gpmlip.gp.validation import choose_noise

    cache = None
    if model is not None:
        model, cache = model
    else:
        full = Screen(data, symbols, screen_sparse, seed, n_jobs, kwargs, descriptor)
        first = report.rows[0]
        plan = report.plan or Plan(first.seconds, len(data) / max(first.frames, 1))
        if time.perf_counter() + plan.noise > deadlines(start, budget, plan)["noise"]:
            report.stages["noise"] = (f"starting levels kept: no budget left (about "
                                      f"{plan.noise:.0f} s needed)")
            log.warning("model builder: noise levels not chosen (%s)", report.stages["noise"])
            return {}
        with quiet_fits():
            model = full.model(chosen, full.n_sparse).fit(data)
    t = time.perf_counter()
    try:
        choice = choose_noise(model, groups=NOISE_GROUPS, factors=NOISE_FACTORS,
                              sweeps=NOISE_SWEEPS, cache=cache)
    except (GpmlipError, np.linalg.LinAlgError, MemoryError) as err:
        report.stages["noise"] = f"starting levels kept: the search failed ({err})"
        log.warning("model builder: %s", report.stages["noise"])
        return {}
    names = {t.key: t.name for t in model.state.terms}     # the GP's terms beyond SOAP
    report.noise = {"levels": {k: float(v) for k, v in choice.noise.items()},
                    "signal_variance": {names.get(z) or chemical_symbols[z]: float(v)
                                        for z, v in choice.signal_variance.items()},
                    "criterion": choice.criterion, "loo_mae": choice.loo_mae,
                    "initial_loo_mae": choice.initial_loo_mae,
                    "variance_scale": choice.calibration_scale,
                    "sparse_per_species": int(max(np.bincount(model.state.sparse.species)))}
    report.stages["noise"] = (f"chosen by leave-one-out on {len(choice.frames)} structures at "
                              f"{model.n_sparse_points} sparse points, criterion 1 -> "
                              f"{choice.criterion:.3f} ({time.perf_counter() - t:.0f} s)")
    log.info("model builder: noise %s", report.stages["noise"])
    stress = "virial_sigma" if model.stress_noise == "per_atom" else "stress_sigma"
    out = {"energy_sigma": choice.noise["energy"], "force_sigma": choice.noise["forces"],
           stress: choice.noise["stress"],
           "signal_std": {chemical_symbols[z]: float(np.sqrt(v))
                          for z, v in choice.signal_variance.items() if z in model.species}}
    out.update({t.parameter: t.settings(np.sqrt(choice.signal_variance[t.key]))
                for t in model.state.terms if t.key in choice.signal_variance})
    return out
