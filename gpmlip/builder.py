"""The automatic model builder: settings chosen on the user's data by leave-one-out, in a budget.

:func:`build_model` does what a GAP expert does by hand, on the training data only (no test set
enters): it reads the species and a cutoff from the data, screens descriptor and kernel settings
one change at a time on a stratified subset of the structures, confirms the winner against the
plain defaults on every structure, fits the winner at the full sparse count, chooses the noise
levels by leave-one-structure-out error and calibrates the variances.  Every choice is made by
the closed-form leave-one-structure-out MAE of energies and forces (:mod:`gpmlip.gp.validation`),
as the criterion

    ``(MAE_E / MAE_E,ref + MAE_F / MAE_F,ref) / 2``

relative to the plain defaults, so that neither label kind is traded away for the other.

The plain defaults (``tune=False``) were chosen on DFT data (Zuo et al. 2020 Mo, Si, Li; see
``benchmarks/zuo2020_select.py``): a cutoff holding ~30 neighbours on average, a smooth
weighting reaching zero 1.5 Å past it with exponent 1 (the best weighting of those screened on
all three sets), n_max 10 (better than 8 on Li and Si), l_max 6, zeta 4, 1000 CUR sparse points
per species (at most a quarter of the atoms).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from ase.data import chemical_symbols

from gpmlip.data import Dataset, Frame, load_frames
from gpmlip.errors import DataError, GpmlipError, SettingsError

log = logging.getLogger(__name__)

NEIGHBOURS_IN_CUTOFF = 30
"""Mean neighbour count the default cutoff holds: on Zuo 2020 it gives Mo 5.1, Si 5.4, Li 5.4 Å
against the paper's hand-chosen 5.2, 5.4, 4.8."""
R_CUT_RANGE = (3.0, 6.5)
SCREEN_SPARSE = 300
"""Sparse points per species while screening."""
SCREEN_FRAMES = 60
"""Structures in the screening subset (spread over every config_type)."""
SCREEN_SHARE = 0.35
"""Share of the budget the screen may use (it stops starting candidates after it)."""
CONFIRM_SHARE = 0.5
"""Share of the budget by which the confirmation must be done (else it is skipped)."""
NOISE_SHARE = 0.6
"""Share of the budget by which the noise search must be done, where it needs a fit of its own."""
CALIBRATION_FRAMES = 20
"""Training structures left out for the force-std calibration (each costs a force-variance
evaluation, 15x a prediction)."""
NOISE_GROUPS, NOISE_FACTORS, NOISE_SWEEPS = ("energy", "forces"), (0.5, 2.0), 1
"""The noise search (:func:`gpmlip.gp.validation.choose_noise`): energy and force levels, each
halved and doubled once (a wider search on Zuo 2020 Mo moved the criterion 1 -> 0.988 in 232 s,
as much as a Stacked screen candidate gains, so the budget goes to the screen); the virial level
stays at its default, measured on Zuo 2020 Li, Si, Mo."""
DESCRIPTOR_FIELDS = ("r_cut", "r0", "m", "n_max", "l_max", "sigma", "second")
"""The :class:`Settings` fields of the descriptor (fixed when a descriptor is given)."""
START_NOISE = {"energy_sigma": 0.002, "force_sigma": 0.05, "virial_sigma": 0.5}
"""Starting noise levels (eV/atom, eV/Å, eV/atom of virial); the final stage chooses them."""


@dataclass(frozen=True)
class Settings:
    """One candidate: the descriptor, kernel and sparse settings a model is built from.

    ``r0`` is the distance past ``r_cut`` (Å) at which the smooth weighting reaches zero and
    ``m`` its exponent (``r0=None``: no weighting, dscribe's hard cutoff); ``second`` is
    ``(r_cut, weight)`` of a second SOAP at a short cutoff (:class:`gpmlip.Stacked`) or None.
    """

    r_cut: float
    r0: float | None = 1.5
    m: float = 1.0
    n_max: int = 10
    l_max: int = 6
    sigma: float = 0.5
    zeta: int = 4
    second: tuple[float, float] | None = None
    sparse_method: str = "cur"

    def descriptor(self, species: Sequence[str], n_jobs: int = 1):
        """The SOAP (or two stacked) of these settings."""
        from gpmlip.descriptors import SOAP, Stacked

        weighting = None if self.r0 is None else {"function": "poly", "r0": self.r_cut + self.r0,
                                                  "c": 1.0, "m": self.m}
        first = SOAP(list(species), self.r_cut, self.n_max, self.l_max, self.sigma,
                     weighting=weighting, n_jobs=n_jobs)
        if self.second is None:
            return first
        r_short, weight = self.second
        other = SOAP(list(species), r_short, self.n_max, self.l_max, self.sigma,
                     weighting="smooth", n_jobs=n_jobs)
        return Stacked([first, other], [1.0, weight], n_jobs=n_jobs)

    def changes(self, reference: Settings) -> str:
        """What differs from ``reference``, e.g. ``"zeta 6, second 3.7 w0.5"``."""
        out = []
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(reference, f.name)
            if a != b:
                out.append(f"{f.name} {_short(a)}")
        return ", ".join(out) or "defaults"

    def to_dict(self) -> dict:
        """JSON-ready settings."""
        return {**dataclasses.asdict(self),
                "second": None if self.second is None else list(self.second)}


def _short(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return f"{value[0]:g} w{value[1]:g}"
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass
class Scales:
    """Length scales read from the data: the default cutoff and a short one (Å)."""

    r_cut: float
    r_short: float
    neighbours: float
    """Mean neighbour count within ``r_cut``."""


def data_scales(frames: Sequence[Frame], max_frames: int = 20) -> Scales:
    """The default cutoff and the short cutoff of a second SOAP, from the data's neighbours.

    ``r_cut``: the radius holding :data:`NEIGHBOURS_IN_CUTOFF` neighbours on average (over at
    most ``max_frames`` structures), rounded to 0.1 Å and kept within :data:`R_CUT_RANGE`
    (5 Å for data too sparse to reach the count, such as small molecules).  ``r_short``: the
    centre of the flattest stretch of the neighbour count between 0.5 and 0.8 ``r_cut`` (and
    0.3 Å past the nearest neighbours), the gap between coordination shells (Zuo 2020: Mo 3.8, Si 3.0, Li 4.0 Å; the short cutoffs chosen
    there by leave-one-out were 3.5, 3.2, 3.9).
    """
    from ase.neighborlist import neighbor_list

    idx = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames)))
                    .round().astype(int))
    grid = np.arange(1.0, 8.0 + 1e-9, 0.05)
    counts = []
    for i in idx:
        atoms = frames[i].atoms
        d = np.sort(neighbor_list("d", atoms, float(grid[-1])))
        counts.append(np.searchsorted(d, grid, side="right") / len(atoms))
    count = np.mean(counts, axis=0)
    reached = count >= NEIGHBOURS_IN_CUTOFF
    r_cut = float(np.clip(np.round(grid[np.argmax(reached)], 1), *R_CUT_RANGE)) \
        if reached.any() else 5.0
    nearest = grid[np.argmax(count > 0.5)] if (count > 0.5).any() else 0.0
    window = np.arange(max(0.5 * r_cut, nearest + 0.3), 0.8 * r_cut, 0.05)
    if len(window) == 0:
        window = np.array([0.65 * r_cut])
    slope = np.interp(window + 0.3, grid, count) - np.interp(window - 0.3, grid, count)
    flat = np.flatnonzero(slope <= slope.min() + 1e-9)
    run = flat[: np.argmax(np.diff(np.append(flat, flat[-1] + 2)) > 1) + 1]   # first stretch
    r_short = float(np.round(window[run[len(run) // 2]], 1))
    return Scales(r_cut, r_short, float(np.interp(r_cut, grid, count)))


@dataclass
class Row:
    """One screened candidate."""

    stage: str
    settings: Settings
    frames: int
    sparse: int
    loo_mae: dict | None = None
    criterion: float | None = None
    seconds: float = 0.0
    status: str = "ok"
    model: object = None
    """``(fitted model, its structure rows)``, kept only where asked: the noise stage reuses
    them."""

    def to_dict(self, reference: Settings) -> dict:
        return {"stage": self.stage, "candidate": self.settings.changes(reference),
                "frames": self.frames, "sparse_per_species": self.sparse,
                "loo_mae": self.loo_mae, "criterion": self.criterion,
                "seconds": round(self.seconds, 2), "status": self.status}


@dataclass
class BuildReport:
    """What :func:`build_model` chose and how (stored in the model file as ``build``)."""

    defaults: Settings
    chosen: Settings
    scales: Scales
    budget: float
    rows: list[Row] = field(default_factory=list)
    stages: dict[str, str] = field(default_factory=dict)
    noise: dict | None = None
    seconds: float = 0.0
    tuned: bool = True

    def to_dict(self) -> dict:
        """JSON-ready report."""
        return {"tuned": self.tuned, "budget_s": self.budget, "seconds": round(self.seconds, 1),
                "defaults": self.defaults.to_dict(), "chosen": self.chosen.to_dict(),
                "chosen_changes": self.chosen.changes(self.defaults),
                "scales": dataclasses.asdict(self.scales), "stages": self.stages,
                "noise": self.noise,
                "screen": [r.to_dict(self.defaults) for r in self.rows]}


def _as_frames(frames) -> list[Frame]:
    if isinstance(frames, Dataset):
        return list(frames)
    if isinstance(frames, Frame):
        return [frames]
    if isinstance(frames, (list, tuple)) and frames and all(isinstance(f, Frame)
                                                            for f in frames):
        return list(frames)
    return list(load_frames(frames))


def screening_subset(frames: Sequence[Frame], n: int) -> np.ndarray:
    """``n`` structure indices spread over every config_type in proportion (deterministic)."""
    if n >= len(frames):
        return np.arange(len(frames))
    order = np.array(sorted(range(len(frames)), key=lambda i: (frames[i].config_type, i)))
    return np.sort(order[np.unique(np.linspace(0, len(order) - 1, n).round().astype(int))])


def default_sparse(frames: Sequence[Frame], species: Sequence[int]) -> dict[str, int]:
    """Sparse points per species: 1000, at most a quarter of that species' atoms (>= 10)."""
    counts = {z: 0 for z in species}
    for f in frames:
        for z, c in zip(*np.unique(f.atoms.numbers, return_counts=True)):
            counts[int(z)] += int(c)
    return {chemical_symbols[z]: int(max(10, min(1000, c // 4))) for z, c in counts.items()}


class _Screen:
    """Fits candidates on a set of structures and scores them by leave-one-out."""

    def __init__(self, frames, symbols, n_sparse, seed, n_jobs, model_kwargs, descriptor=None):
        self.frames, self.symbols, self.seed, self.n_jobs = frames, symbols, seed, n_jobs
        self.descriptor = descriptor
        self.n_sparse = {s: min(n, n_sparse) for s, n in
                         default_sparse(frames, [int(z) for z in _numbers(symbols)]).items()}
        self.model_kwargs = model_kwargs
        self.reference: dict | None = None

    def model(self, settings: Settings, n_sparse):
        from gpmlip.gp import SparseGP

        desc = self.descriptor or settings.descriptor(self.symbols, self.n_jobs)
        return SparseGP(desc, zeta=settings.zeta,
                        n_sparse=n_sparse, sparse_method=settings.sparse_method,
                        seed=self.seed, **self.model_kwargs)

    def run(self, stage: str, settings: Settings, keep: bool = False) -> Row:
        """Fit ``settings`` and score them; with ``keep`` the fitted model is ``row.model``."""
        from gpmlip.gp.validation import leave_one_out, structure_rows

        t = time.perf_counter()
        row = Row(stage, settings, len(self.frames), max(self.n_sparse.values()))
        quiet = logging.getLogger("gpmlip.gp")   # fit reports of every candidate: noise
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            model = self.model(settings, self.n_sparse).fit(self.frames)
            # rows kept for the noise search where the model is (they cost a fit's Jacobians)
            cache = list(structure_rows(model)) if keep else None
            row.loo_mae = {k: float(v) for k, v in leave_one_out(model, cache=cache)
                           .mae().items()}
            row.model = (model, cache) if keep else None
        except (GpmlipError, np.linalg.LinAlgError, MemoryError, ValueError) as err:
            row.status = f"failed: {type(err).__name__}: {err}"
            log.warning("model builder: candidate %s skipped (%s)", settings.changes(
                Settings(settings.r_cut)), row.status)
        finally:
            quiet.setLevel(level)
        row.seconds = time.perf_counter() - t
        if row.loo_mae is not None:
            if self.reference is None:
                self.reference = row.loo_mae
            row.criterion = criterion(row.loo_mae, self.reference)
        return row


def _numbers(symbols):
    from gpmlip.species import atomic_number

    return [atomic_number(s, "species") for s in symbols]


def criterion(mae: dict, reference: dict) -> float:
    """``(MAE_E / MAE_E,ref + MAE_F / MAE_F,ref) / 2`` over the kinds both have."""
    terms = [mae[k] / reference[k] for k in ("energy", "forces")
             if np.isfinite(reference.get(k, np.nan)) and reference[k] > 0
             and np.isfinite(mae.get(k, np.nan))]
    if not terms:
        raise DataError("leave-one-out gave no energy or force error to compare settings by; "
                        "the training data need energies or forces")
    return float(np.mean(terms))


def _stages(defaults: Settings, scales: Scales, fixed: set[str]) -> list[tuple[str, list[dict]]]:
    """Screening stages in order: each a list of changes to try on the current winner."""
    stages = [   # most gain first (Zuo 2020 Mo, Si, Li screens), so a short budget gets it
        ("second SOAP", ["second"], [{"second": (scales.r_short, 1.0)},
                                      {"second": (scales.r_short, 0.5)}]),
        ("sigma", ["sigma"], [{"sigma": 0.4}]),
        ("zeta", ["zeta"], [{"zeta": 6}]),
        ("weighting", ["r0", "m"], [{"r0": 1.0, "m": 1.0}]),
        ("radial basis", ["n_max"], [{"n_max": 8}]),
        ("angular basis", ["l_max"], [{"l_max": 8}]),
        ("sparse method", ["sparse_method"], [{"sparse_method": "kmeans++"}]),
    ]
    return [(name, changes) for name, keys, changes in stages if not set(keys) & fixed]


def build_model(frames, *, budget: float = 480.0, tune: bool = True,
                species: Sequence[str] | None = None, n_sparse: int | dict | None = None,
                settings: dict | None = None, screen_frames: int = SCREEN_FRAMES,
                screen_sparse: int = SCREEN_SPARSE, noise: bool = True, calibrate: bool = True,
                seed: int = 0, n_jobs: int | None = None, model_kwargs: dict | None = None,
                descriptor=None):
    """Build a model the way a GAP expert would: settings chosen by leave-one-out, in a budget.

    Parameters
    ----------
    frames : Dataset, list of Frame, or a path
        Labelled training structures (energies and/or forces; stresses are fitted when present).
    budget : float, default 480
        Wall-time budget in seconds.  The screen starts no candidate after 35 % of it, the
        confirmation must end by half of it and the noise search by 60 %; a stage that would not
        fit is skipped and logged; the final fit always runs.
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

    Returns
    -------
    SparseGP
        Fitted, with :attr:`~gpmlip.SparseGP.build_report_` (:meth:`BuildReport.to_dict`: the
        defaults, what was chosen, every screened candidate) kept in its model file.
    """
    start = time.perf_counter()
    data = _as_frames(frames)
    if not data:
        raise DataError("build_model: no training structures")
    in_data = sorted({int(z) for f in data for z in f.atoms.numbers})
    symbols = list(species) if species else [chemical_symbols[z] for z in in_data]
    missing = sorted(set(in_data) - set(_numbers(symbols)))
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
        fixed.update({k: getattr(Settings(1.0), k) for k in DESCRIPTOR_FIELDS if k not in fixed})
    if "second" in fixed and fixed["second"] is not None:
        fixed["second"] = tuple(fixed["second"])
    defaults = Settings(**{"r_cut": scales.r_cut, **fixed})
    kwargs = {**START_NOISE, **(model_kwargs or {})}
    final_sparse = n_sparse if n_sparse is not None else default_sparse(data, _numbers(symbols))
    report = BuildReport(defaults, defaults, scales, float(budget), tuned=tune)
    log.info("model builder: %d structures, %d atoms, species %s; cutoff %.1f Å from the data "
             "(%.0f neighbours), short cutoff %.1f Å; budget %.0f s", len(data),
             sum(f.n_atoms for f in data), symbols, scales.r_cut, scales.neighbours,
             scales.r_short, budget)

    chosen, screened = defaults, None
    if tune:
        chosen, screened = _tune(data, symbols, defaults, scales, set(fixed), report, start,
                                 budget, screen_frames, screen_sparse, seed, n_jobs, kwargs,
                                 descriptor)
    report.chosen = chosen
    if tune and noise:
        kwargs.update(_noise_stage(screened, data, chosen, symbols, report, start, budget,
                                   screen_sparse, seed, n_jobs, kwargs, descriptor))
    elif noise:
        report.stages["noise"] = "starting levels kept: tuning off"
    del screened

    from gpmlip.gp import SparseGP

    t = time.perf_counter()
    model = SparseGP(descriptor or chosen.descriptor(symbols, n_jobs), zeta=chosen.zeta,
                     n_sparse=final_sparse, sparse_method=chosen.sparse_method, seed=seed,
                     **kwargs).fit(data)
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


def _tune(data, symbols, defaults, scales, fixed, report, start, budget, screen_frames,
          screen_sparse, seed, n_jobs, kwargs, descriptor=None):
    """Screen on a subset, confirm on all: the chosen settings and, when the confirmation ran,
    the chosen model fitted on every structure at the screening sparse count (else None);
    ``report`` filled in."""
    from gpmlip.progress import progress_bar

    subset = [data[i] for i in screening_subset(data, screen_frames)]
    screen = _Screen(subset, symbols, screen_sparse, seed, n_jobs, kwargs, descriptor)
    deadline = start + SCREEN_SHARE * budget
    everything = len(subset) == len(data)
    base = screen.run("defaults", defaults, keep=everything)
    report.rows.append(base)
    if base.criterion is None:
        report.stages["screen"] = "the defaults failed to fit; nothing screened"
        return defaults, None
    best, best_row = defaults, base
    stages = _stages(defaults, scales, fixed)
    bar = progress_bar(total=sum(len(c) for _, c in stages), desc="model builder", unit="fit")
    with bar:
        for name, changes in stages:
            tried = 0
            for change in changes:
                # the last fit's time predicts the next one's
                if time.perf_counter() + report.rows[-1].seconds > deadline:
                    break
                row = screen.run(name, dataclasses.replace(best, **change), keep=everything)
                report.rows.append(row)
                bar.update(1)
                tried += 1
                if row.criterion is not None and row.criterion < best_row.criterion - 0.005:
                    best_row.model = None
                    best, best_row = row.settings, row
                else:
                    row.model = None
            report.stages[name] = (f"{tried} of {len(changes)} tried; kept "
                                   f"{best.changes(defaults)} ({best_row.criterion:.3f})"
                                   if tried else "skipped: budget")
            log.info("model builder: %s: %s", name, report.stages[name])
    if everything:
        report.stages["confirm"] = "the screen used every structure"
        return best, best_row.model
    if best == defaults:
        report.stages["confirm"] = "nothing to confirm: the defaults won the screen"
        return defaults, None
    # confirm on structures the screen did not see (all of them when the budget allows it,
    # else a second subset of the screen's size): the winner against the defaults
    seen = set(screening_subset(data, screen_frames).tolist())
    rest = [i for i in range(len(data)) if i not in seen]
    cost_all = (base.seconds + best_row.seconds) * len(data) / len(subset)
    if time.perf_counter() + cost_all <= start + budget * CONFIRM_SHARE:
        frames, where = data, f"all {len(data)} structures"
    else:
        pick = [rest[i] for i in screening_subset([data[i] for i in rest], screen_frames)]
        frames, where = [data[i] for i in pick], f"{len(pick)} structures the screen did not see"
    cost = (base.seconds + best_row.seconds) * len(frames) / len(subset)
    if time.perf_counter() + cost > start + budget * CONFIRM_SHARE:
        report.stages["confirm"] = (f"skipped: budget (about {cost:.0f} s needed); the "
                                    "screen's winner is kept unconfirmed")
        log.warning("model builder: %s", report.stages["confirm"])
        return best, None
    full = _Screen(frames, symbols, screen_sparse, seed, n_jobs, kwargs, descriptor)
    keep = frames is data
    ref = full.run("confirm", defaults, keep=keep)
    win = full.run("confirm", best, keep=keep)
    report.rows += [ref, win]
    if win.criterion is not None and ref.criterion is not None and win.criterion < 1.0:
        report.stages["confirm"] = (f"on {where} the winner scores {win.criterion:.3f} "
                                    "against the defaults' 1")
        ref.model = None
        return best, win.model
    report.stages["confirm"] = (f"on {where} the winner scored {win.criterion} against the "
                                "defaults' 1: defaults kept")
    log.warning("model builder: %s", report.stages["confirm"])
    win.model = None
    return defaults, ref.model


def _noise_stage(model, data, chosen, symbols, report, start, budget, screen_sparse, seed,
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
        full = _Screen(data, symbols, screen_sparse, seed, n_jobs, kwargs, descriptor)
        first = report.rows[0]
        cost = first.seconds * len(data) / max(first.frames, 1)
        if time.perf_counter() + 2 * cost > start + budget * NOISE_SHARE:
            report.stages["noise"] = (f"starting levels kept: no budget left (about "
                                      f"{2 * cost:.0f} s needed)")
            log.warning("model builder: noise levels not chosen (%s)", report.stages["noise"])
            return {}
        quiet = logging.getLogger("gpmlip.gp")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            model = full.model(chosen, full.n_sparse).fit(data)
        finally:
            quiet.setLevel(level)
    t = time.perf_counter()
    try:
        choice = choose_noise(model, groups=NOISE_GROUPS, factors=NOISE_FACTORS,
                              sweeps=NOISE_SWEEPS, cache=cache)
    except (GpmlipError, np.linalg.LinAlgError, MemoryError) as err:
        report.stages["noise"] = f"starting levels kept: the search failed ({err})"
        log.warning("model builder: %s", report.stages["noise"])
        return {}
    report.noise = {"levels": {k: float(v) for k, v in choice.noise.items()},
                    "signal_variance": {chemical_symbols[z] if z else "two-body": float(v)
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
                          for z, v in choice.signal_variance.items() if z}}
    if model.two_body is not None and 0 in choice.signal_variance:
        out["two_body"] = dataclasses.replace(model.two_body,
                                              sigma=float(np.sqrt(choice.signal_variance[0])))
    return out
