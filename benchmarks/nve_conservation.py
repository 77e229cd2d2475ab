"""NVE energy conservation of a gpmlip model trained on EMT copper, against EMT itself.

What is done
------------
1. **Training data.**  fcc Cu at EMT's own 0 K lattice constant (found by minimising the EMT
   energy per atom), a ``--repeat``-times repeated cubic cell (default 2: 32 atoms).  For each
   training temperature (300 K and 1000 K) an EMT Langevin run (2 fs, friction 0.01/fs, seeded)
   is equilibrated for 1 ps and ``--n-train-per-temp`` snapshots are taken 50 fs apart, labelled
   with EMT energy, forces and stress.  A few more snapshots from separately seeded runs are held
   out to report the model's accuracy.
2. **Models.**  ``gpmlip.SOAP(species=["Cu"], r_cut, n_max, l_max, sigma=0.5, weighting=...,
   n_jobs=1)``, ``gpmlip.SparseGP(desc, zeta=4, n_sparse=..., e0={"Cu": 0.0})`` with the default
   noise (5 meV/atom, 50 meV/Å, 1 meV/Å³) and signal std 1 eV, fitted to the same frames twice:
   ``gpmlip`` with ``--weighting`` (default ``smooth``, the library default: dscribe's poly
   weighting r0 = r_cut, m = 2) and ``gpmlip-hard`` with ``weighting=None`` (dscribe's density cut
   at r_cut + 3.7 sigma).  ``gap``: a GAP fitted by ``gap_fit`` (``/work/peers-venv``) to the same
   frames with the same SOAP (GAP's default 0.5 Å cutoff transition), zeta, delta, sparse count
   and noise (energy, forces and virials), run in a subprocess of that interpreter.
3. **NVE.**  For each ``--temperatures`` T: start from the perfect (0 K equilibrium) lattice with
   Maxwell-Boltzmann velocities at 2T (``Stationary``; the same seed for every potential, so all
   potentials start from the identical state), and run ``ase.md.verlet.VelocityVerlet`` at
   ``--dt-fs`` for ``--time-ps`` with (a) ``gpmlip.GPCalculator`` and (b) ASE's EMT.  Every step
   records potential and kinetic energy, the model's ``max_uncertainty`` and two diagnostics
   described below.
4. **Time-step study.**  At ``--dt-study-temperature`` (1000 K) both potentials are also run for
   ``--dt-study-ps`` (1 ps) at each of ``--dt-study`` (0.5, 1, 2 fs) from the same initial state
   (the main run's first ``--dt-study-ps`` is reused for the dt that equals ``--dt-fs``).
   Velocity Verlet's bounded energy fluctuation scales as dt^2; energy steps that come from a
   non-smooth potential do not shrink with dt.
5. **Heating run** (``--heat-ramp-ps`` > 0): from the perfect lattice (velocities at 2
   ``--heat-from``) a Langevin run (friction ``--heat-friction``) whose target temperature rises
   linearly from ``--heat-from`` (300 K) to ``--heat-to`` (1500 K) over ``--heat-ramp-ps`` (3 ps),
   then velocity Verlet NVE for ``--heat-nve-ps`` (2 ps) at ``--dt-fs``.  Reported: the NVE part's
   drift and fluctuation, and the cutoff jumps (below) of the ramp and of the NVE part; the work
   residual needs only positions, forces and potential energies, so the jump detection holds under
   the thermostat too.
6. **Static cutoff probe.**  One atom of the perfect lattice is moved along a generic direction;
   at every displacement where one pair distance crosses the descriptor's reach
   (``neighbour_cutoff``) the energy is evaluated at +-1e-6 Å: the difference (minus the tiny
   ``-F.du`` work) is the energy discontinuity caused by one neighbour entering the sphere.

Reported metrics (per run)
--------------------------
* drift: slope of a linear fit of E_tot/N against time, meV/atom/ps;
* fluctuation: RMS of E_tot/N about its mean, meV/atom (also after removing the linear drift);
* max deviation: max_t |E_tot(t) - E_tot(0)| / N, meV/atom;
* jumps: see below; ms/step: wall time of the force calls per MD step (observer excluded);
* max uncertainty: max over the run of ``results["max_uncertainty"]`` (sqrt of the normalised
  local-energy variance; 0 known, 1 unknown).

Jump detection. For velocity Verlet the total energy obeys exactly ``E_tot(i+1) - E_tot(i) = r_i +
dt^2/8 sum_a (|F_a(i+1)|^2 - |F_a(i)|^2) / m_a`` with the work residual ``r_i = E_pot(i+1) -
E_pot(i) + (F(i) + F(i+1)) . (x(i+1) - x(i)) / 2``. The second term telescopes (it is the bounded
oscillation of Verlet's shadow energy), so any drift is the sum of the ``r_i``. For a smooth
potential ``r_i`` is a trapezoid-rule error of order |dx|^3 that varies on phonon time scales; a
step of the potential energy shows up in it one to one. Every step also counts the atom pairs
(periodic images included) whose distance crossed the descriptor's reach (``neighbour_cutoff``: r0
with a smooth cutoff, ``r_cut + padding`` with the hard one). At steps with a crossing the smooth
part of ``r_i`` is interpolated from the nearest steps without one; the remainder is the energy
step caused by the crossing(s). A *jump* is such a step larger than ``--jump-factor`` (5) x the
noise floor (robust spread of the same leave-one-out interpolation at quiet steps). The cumulative
sum of these steps gives the part of E_tot's drift and fluctuation that comes from the cutoff; the
rest is integration error. EMT is analysed identically, as is GAP, counting crossings of the
``gpmlip`` model's reach (a control: both are smooth there). The literal criterion "|dE_tot| >
--jump-factor x robust spread of dE_tot" is reported too, but Verlet's own step-to-step oscillation
hides small steps there.

GAP runs when ``/work/peers-venv/bin/python`` imports quippy and ``gap_fit`` exists there (or
``--gap-xml`` names a model); otherwise the JSON says why it was skipped.  ``--potentials``
chooses what runs and ``--append`` adds the rows to an existing ``--json``.

Usage
-----
The run reported in the README (smooth and hard gpmlip, EMT, GAP; 300 K and 1000 K NVE, the
heating run; no time-step study)::

    .venv/bin/python benchmarks/nve_conservation.py --temperatures 300 1000 --time-ps 3 \\
        --dt-fs 1 --dt-study --train-temperatures 300 1000 1500 \\
        --json benchmarks/results/nve_conservation.json

Smoke test (a few minutes on a loaded 2-core machine)::

    .venv/bin/python benchmarks/nve_conservation.py --quick --json /tmp/nve_bench/quick.json
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cutoff_option import HELP as WEIGHTING_HELP  # noqa: E402
from cutoff_option import parse_weighting, weighting_label  # noqa: E402

log = logging.getLogger("nve_conservation")

PEERS_PYTHON = "/work/peers-venv/bin/python"
GAP_FIT = "/work/peers-venv/bin/gap_fit"
GPMLIP_KINDS = ("gpmlip", "gpmlip-hard")
JUMP_ABS_MEV = 0.05
"""Default absolute jump threshold (meV): half the hard cutoff's step per pair crossing in the
README's 32-atom Cu model (0.097 meV), well above the interpolation noise at 1000 K."""


# -- structures and data -------------------------------------------------------------------------
def emt_lattice_constant() -> float:
    """EMT's 0 K fcc Cu lattice constant (Å), by minimising the energy per atom."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from scipy.optimize import minimize_scalar

    def energy(a):
        atoms = bulk("Cu", "fcc", a=a)
        atoms.calc = EMT()
        return atoms.get_potential_energy()

    res = minimize_scalar(energy, bounds=(3.4, 3.8), method="bounded",
                          options={"xatol": 1e-6})
    return float(res.x)


def perfect_cell(a0: float, repeat: int):
    from ase.build import bulk
    return bulk("Cu", "fcc", a=a0, cubic=True).repeat(repeat)


def label_emt(atoms):
    """A copy of ``atoms`` carrying EMT energy/forces/stress on a SinglePointCalculator."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = atoms.copy()
    atoms.calc = EMT()
    e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f, stress=s)
    return atoms


def langevin_snapshots(a0: float, repeat: int, temperature: float, n_frames: int, seed: int,
                       equil_ps: float = 1.0, interval_fs: float = 50.0, dt_fs: float = 2.0):
    """EMT Langevin snapshots at ``temperature``, labelled with EMT."""
    from ase import units
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    atoms = perfect_cell(a0, repeat)
    atoms.calc = EMT()
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    dyn = Langevin(atoms, dt_fs * units.fs, temperature_K=temperature,
                   friction=0.01 / units.fs, rng=rng)
    dyn.run(int(round(equil_ps * 1000 / dt_fs)))
    every = int(round(interval_fs / dt_fs))
    frames = []
    for _ in range(n_frames):
        dyn.run(every)
        frames.append(label_emt(atoms))
    return frames


# -- model --------------------------------------------------------------------------------------
def train_model(args, train, test, weighting="smooth") -> tuple[object, dict]:
    import gpmlip

    desc = gpmlip.SOAP(species=["Cu"], r_cut=args.r_cut, n_max=args.n_max, l_max=args.l_max,
                       sigma=args.sigma, weighting=weighting, n_jobs=1)
    model = gpmlip.SparseGP(desc, zeta=4, n_sparse=args.n_sparse, e0={"Cu": 0.0})
    t0 = time.perf_counter()
    model.fit(train)
    fit_s = time.perf_counter() - t0
    df, de = [], []
    for atoms in test:
        pred = model.predict(atoms, forces=True, stress=False)
        df.append((pred.forces - atoms.get_forces()).ravel())
        de.append((pred.energy - atoms.get_potential_energy()) / len(atoms))
    info = {
        "weighting": weighting_label(weighting),
        "fit_seconds": fit_s,
        "n_train_frames": len(train),
        "n_test_frames": len(test),
        "n_sparse_points": model.n_sparse_points,
        "n_features": desc.n_features,
        "cutoff_padding_A": desc.cutoff_padding,
        "descriptor_reach_A": desc.neighbour_cutoff,
        "test_force_rmse_meV_per_A": 1e3 * float(np.sqrt(np.mean(np.concatenate(df) ** 2))),
        "test_energy_mae_meV_per_atom": 1e3 * float(np.mean(np.abs(de))),
    }
    log.info("%s: fitted in %.1f s: %d sparse points; held-out force RMSE %.1f meV/Å, energy MAE "
             "%.2f meV/atom", weighting_label(weighting), fit_s, model.n_sparse_points,
             info["test_force_rmse_meV_per_A"],
             info["test_energy_mae_meV_per_atom"])
    return model, info


# -- NVE ----------------------------------------------------------------------------------------
class CrossingCounter:
    """Counts atom pairs (periodic images included) whose distance crosses ``radius`` per step.

    Positions are the MD's unwrapped ones; a pair is (i < j, image shift S), fixed for the whole
    run, so a crossing is a change of the "inside" flag of the same pair between two steps.
    """

    def __init__(self, cell: np.ndarray, n_atoms: int, radius: float) -> None:
        self.radius = radius
        heights = abs(np.linalg.det(cell)) / np.linalg.norm(
            np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
        n = int(np.ceil((radius + 2.0) / heights.min()))   # +2 Å: drift of unwrapped atoms
        rng = np.arange(-n, n + 1)
        shifts = np.array(np.meshgrid(rng, rng, rng, indexing="ij")).reshape(3, -1).T
        self.shift_vectors = shifts @ cell                        # (n_img, 3)
        self.i, self.j = np.triu_indices(n_atoms, k=1)
        self.previous: np.ndarray | None = None

    def inside(self, positions: np.ndarray) -> np.ndarray:
        d = positions[self.j] - positions[self.i]                 # (n_pairs, 3)
        r2 = ((d[:, None, :] + self.shift_vectors[None]) ** 2).sum(-1)
        return r2 < self.radius ** 2

    def __call__(self, positions: np.ndarray) -> int:
        now = self.inside(positions)
        count = 0 if self.previous is None else int((now != self.previous).sum())
        self.previous = now
        return count


class Recorder:
    """MD observer: energies, uncertainty, work residual and neighbour crossings every step."""

    def __init__(self, atoms, counter: CrossingCounter | None) -> None:
        self.atoms = atoms
        self.counter = counter
        self.masses = atoms.get_masses()[:, None]
        self.rows: list[tuple] = []
        self.prev: tuple | None = None
        self.seconds = 0.0

    def __call__(self) -> None:
        t0 = time.perf_counter()
        atoms = self.atoms
        pos = atoms.get_positions()
        if self.prev is not None and np.array_equal(pos, self.prev[2]):
            return       # a second integrator's first observer call: the same state again
        epot = atoms.get_potential_energy()
        forces = atoms.get_forces()
        ekin = atoms.get_kinetic_energy()
        unc = atoms.calc.results.get("max_uncertainty", np.nan)
        f2m = float((forces ** 2 / self.masses).sum())
        if self.prev is None:
            resid = 0.0
        else:
            epot0, forces0, pos0 = self.prev
            resid = epot - epot0 + 0.5 * float(((forces0 + forces) * (pos - pos0)).sum())
        crossings = self.counter(pos) if self.counter is not None else -1
        self.prev = (epot, forces.copy(), pos.copy())
        self.rows.append((epot, ekin, unc, resid, crossings, f2m))
        self.seconds += time.perf_counter() - t0

    def arrays(self) -> dict[str, np.ndarray]:
        a = np.array(self.rows, dtype=float)
        return {"epot": a[:, 0], "ekin": a[:, 1], "max_uncertainty": a[:, 2],
                "residual": a[:, 3], "crossings": a[:, 4].astype(int), "f2m": a[:, 5]}


def make_calculator(kind: str, model=None, gap_xml: str | None = None):
    if kind in GPMLIP_KINDS:
        import gpmlip
        return gpmlip.GPCalculator(model)
    if kind == "emt":
        from ase.calculators.emt import EMT
        return EMT()
    if kind == "gap":
        from quippy.potential import Potential
        return Potential(param_filename=gap_xml)
    raise ValueError(kind)


def run_nve(kind: str, a0: float, repeat: int, temperature: float, dt_fs: float, time_ps: float,
            seed: int, reach: float, model=None, gap_xml: str | None = None) -> dict:
    """One NVE run from the perfect lattice with MB velocities at 2T; per-step arrays."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    atoms = perfect_cell(a0, repeat)
    atoms.calc = make_calculator(kind, model, gap_xml)
    MaxwellBoltzmannDistribution(atoms, temperature_K=2 * temperature,
                                 rng=np.random.default_rng(seed))
    Stationary(atoms)
    n_steps = int(round(time_ps * 1000 / dt_fs))
    rec = Recorder(atoms, CrossingCounter(atoms.cell.array, len(atoms), reach))
    dyn = VelocityVerlet(atoms, timestep=dt_fs * units.fs)
    dyn.attach(rec, interval=1)
    load0 = os.getloadavg()[0]
    log.info("NVE %s T=%g K dt=%g fs: %d steps of %d atoms", kind, temperature, dt_fs, n_steps,
             len(atoms))
    t0 = time.perf_counter()
    dyn.run(n_steps)
    wall = time.perf_counter() - t0
    out = rec.arrays()
    out.update(kind=kind, temperature=temperature, dt_fs=dt_fs, n_atoms=len(atoms),
               n_steps=n_steps, seed=seed, wall_seconds=wall, reach_A=reach,
               ms_per_step=1e3 * (wall - rec.seconds) / n_steps,
               loadavg_start=load0, loadavg_end=os.getloadavg()[0],
               dt2_over_8=(dt_fs * units.fs) ** 2 / 8)
    log.info("  done in %.0f s (%.1f ms/step, load %.2f -> %.2f)", wall, out["ms_per_step"],
             load0, out["loadavg_end"])
    return out


def heating_schedule(args) -> dict:
    return {"t_from": args.heat_from, "t_to": args.heat_to, "ramp_ps": args.heat_ramp_ps,
            "nve_ps": args.heat_nve_ps, "dt_fs": args.dt_fs, "friction_per_fs": args.heat_friction}


def run_heating(kind: str, a0: float, repeat: int, t_from: float, t_to: float, ramp_ps: float,
                nve_ps: float, dt_fs: float, friction_per_fs: float, seed: int, reach: float,
                model=None, gap_xml: str | None = None) -> dict:
    """Langevin with a linear temperature ramp t_from -> t_to, then NVE; per-step arrays.

    Starts from the perfect lattice with Maxwell-Boltzmann velocities at 2 t_from (the same seed
    and the same thermostat random numbers for every potential).  The work residual (and so the
    jump detection) needs only positions, forces and potential energies, so it holds for the
    thermostatted part too; the energy drift is measured on the NVE part.
    """
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    atoms = perfect_cell(a0, repeat)
    atoms.calc = make_calculator(kind, model, gap_xml)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=2 * t_from, rng=rng)
    Stationary(atoms)
    n_ramp = int(round(ramp_ps * 1000 / dt_fs))
    n_nve = int(round(nve_ps * 1000 / dt_fs))
    rec = Recorder(atoms, CrossingCounter(atoms.cell.array, len(atoms), reach))
    ramp = Langevin(atoms, dt_fs * units.fs, temperature_K=t_from,
                    friction=friction_per_fs / units.fs, rng=rng, fixcm=True)

    def set_target():
        ramp.set_temperature(temperature_K=t_from + (t_to - t_from) * min(
            1.0, (ramp.nsteps + 1) / max(n_ramp, 1)))

    ramp.attach(set_target, interval=1)
    ramp.attach(rec, interval=1)
    load0 = os.getloadavg()[0]
    log.info("heating %s %g -> %g K in %g ps (Langevin %g/fs), then NVE %g ps, dt=%g fs",
             kind, t_from, t_to, ramp_ps, friction_per_fs, nve_ps, dt_fs)
    t0 = time.perf_counter()
    ramp.run(n_ramp)
    n_rows_ramp = len(rec.rows)
    nve = VelocityVerlet(atoms, timestep=dt_fs * units.fs)
    nve.attach(rec, interval=1)
    nve.run(n_nve)
    wall = time.perf_counter() - t0
    out = rec.arrays()
    out.update(kind=kind, temperature=t_to, dt_fs=dt_fs, n_atoms=len(atoms),
               n_steps=n_ramp + n_nve, n_ramp_steps=n_rows_ramp - 1, seed=seed,
               wall_seconds=wall, ms_per_step=1e3 * (wall - rec.seconds) / (n_ramp + n_nve),
               loadavg_start=load0, loadavg_end=os.getloadavg()[0],
               dt2_over_8=(dt_fs * units.fs) ** 2 / 8, reach_A=reach)
    log.info("  done in %.0f s (%.1f ms/step, load %.2f -> %.2f)", wall, out["ms_per_step"],
             load0, out["loadavg_end"])
    return out


def analyse_heating(run: dict, jump_factor: float, schedule: dict,
                    jump_abs_mev: float = JUMP_ABS_MEV) -> dict:
    """Jumps over the whole heating run; drift and fluctuation of its NVE part."""
    k = int(run["n_ramp_steps"])
    resid, cross = run["residual"][1:], run["crossings"][1:]
    steps, noise = split_residual(resid, cross)
    jumps = np.abs(steps) > jump_factor * noise
    big = np.abs(steps) > 1e-3 * jump_abs_mev
    arrays = ("epot", "ekin", "max_uncertainty", "residual", "crossings", "f2m")
    nve = {**run, **{a: run[a][k:] for a in arrays}}
    nve_row = analyse(nve, jump_factor)
    n_atoms = run["n_atoms"]
    temp_k = 2 * run["ekin"] / (3 * n_atoms * 8.617333262e-5)
    unc = run["max_uncertainty"]
    return {
        "potential": run["kind"], "schedule": schedule, "n_atoms": n_atoms, "dt_fs": run["dt_fs"],
        "reach_A": float(run["reach_A"]),
        "ramp_steps": k, "nve_steps": len(run["epot"]) - 1 - k,
        "temperature_end_of_ramp_K": float(temp_k[max(0, k - 100):k + 1].mean()),
        "nve_mean_temperature_K": float(temp_k[k:].mean()),
        "nve_drift_meV_per_atom_per_ps": nve_row["drift_meV_per_atom_per_ps"],
        "nve_fluctuation_rms_meV_per_atom": nve_row["fluctuation_rms_meV_per_atom"],
        "nve_fluctuation_rms_detrended_meV_per_atom":
            nve_row["fluctuation_rms_detrended_meV_per_atom"],
        "nve_max_abs_deviation_meV_per_atom": nve_row["max_abs_deviation_meV_per_atom"],
        "residual_noise_floor_meV": 1e3 * noise,
        "jumps_resolved": bool(nve_row["jumps_resolved"]),
        "n_jumps_ramp": int(jumps[:k].sum()), "n_jumps_nve": int(jumps[k:].sum()),
        "jump_abs_meV": jump_abs_mev,
        "n_jumps_abs_ramp": int(big[:k].sum()), "n_jumps_abs_nve": int(big[k:].sum()),
        "jump_median_abs_meV": (1e3 * float(np.median(np.abs(steps[jumps])))
                                if jumps.any() else 0.0),
        "pair_crossings_ramp": int(cross[:k].sum()), "pair_crossings_nve": int(cross[k:].sum()),
        "nve_crossing_steps_drift_meV_per_atom_per_ps":
            nve_row["crossing_steps_drift_meV_per_atom_per_ps"],
        "ms_per_step": run["ms_per_step"],
        "max_uncertainty": float(np.nanmax(unc)) if np.isfinite(unc).any() else None,
        "loadavg_start_end": [run["loadavg_start"], run["loadavg_end"]],
        "trace_t_ps": nve_row["trace_t_ps"],
        "trace_nve_etot_meV_per_atom_rel": nve_row["trace_etot_meV_per_atom_rel"],
    }


def _robust_std(x: np.ndarray) -> float:
    return 1.4826 * float(np.median(np.abs(x - np.median(x)))) if len(x) else 0.0


def split_residual(resid: np.ndarray, crossings: np.ndarray) -> tuple[np.ndarray, float]:
    """Split the per-step work residual into a smooth part and steps at neighbour crossings.

    The smooth trapezoid error varies on phonon time scales (tens of steps), so at a step with a
    crossing it is interpolated linearly from the nearest steps without one; what is left is the
    energy step of the crossing(s).  Returns (steps, noise): ``steps`` is zero at quiet steps and
    ``noise`` is the robust spread of the same interpolation applied leave-one-out to quiet steps
    (the detection floor).
    """
    idx = np.arange(len(resid))
    quiet = crossings == 0
    if quiet.sum() < 3:
        return np.zeros_like(resid), float("nan")
    qi, qr = idx[quiet], resid[quiet]
    baseline = np.interp(idx, qi, qr)
    steps = np.where(quiet, 0.0, resid - baseline)
    w = (qi[1:-1] - qi[:-2]) / (qi[2:] - qi[:-2])
    loo = qr[1:-1] - (qr[:-2] + w * (qr[2:] - qr[:-2]))
    return steps, _robust_std(loo)


def analyse(run: dict, jump_factor: float, upto_steps: int | None = None,
            trace_every_fs: float = 10.0, jump_abs_mev: float = JUMP_ABS_MEV) -> dict:
    """Conservation metrics of one run (optionally of its first ``upto_steps`` steps)."""
    n = len(run["epot"]) if upto_steps is None else upto_steps + 1
    n_atoms = run["n_atoms"]
    dt = run["dt_fs"]
    t_ps = np.arange(n) * dt / 1000
    etot = run["epot"][:n] + run["ekin"][:n]
    e = 1e3 * etot / n_atoms                                  # meV/atom
    slope, intercept = np.polyfit(t_ps, e, 1)
    resid = run["residual"][1:n]                              # eV, per step
    de = np.diff(etot)
    cross = run["crossings"][1:n]
    # Exactness check of the Verlet bookkeeping: dE_tot = r + dt^2/8 d(sum F^2/m).
    bookkeeping = de - resid - run["dt2_over_8"] * np.diff(run["f2m"][:n])
    s_de = _robust_std(de)
    jumps_de = np.abs(de) > jump_factor * s_de
    steps, noise = split_residual(resid, cross)
    jumps = np.abs(steps) > jump_factor * noise
    # With crossings at almost every step the smooth part cannot be interpolated reliably.
    quiet = int((cross == 0).sum())
    resolved = quiet >= 20 and quiet >= 0.1 * len(cross)
    single = (cross == 1) & (steps != 0)
    cum_steps = 1e3 * np.concatenate([[0.0], np.cumsum(steps)]) / n_atoms   # meV/atom
    slope_steps = np.polyfit(t_ps, cum_steps, 1)[0]
    duration = t_ps[-1]
    temp_k = 2 * run["ekin"][:n] / (3 * n_atoms * 8.617333262e-5)
    every = max(1, int(round(trace_every_fs / dt)))
    unc = run["max_uncertainty"][:n]
    out = {
        "potential": run["kind"], "temperature_K": run["temperature"], "dt_fs": dt,
        "reach_A": float(run.get("reach_A", np.nan)),
        "time_ps": duration, "n_atoms": n_atoms, "n_steps": n - 1,
        "mean_temperature_K": float(temp_k[len(temp_k) // 5:].mean()),
        "drift_meV_per_atom_per_ps": float(slope),
        "fluctuation_rms_meV_per_atom": float(np.std(e)),
        "fluctuation_rms_detrended_meV_per_atom": float(np.std(e - (slope * t_ps + intercept))),
        "max_abs_deviation_meV_per_atom": float(np.max(np.abs(e - e[0]))),
        "final_deviation_meV_per_atom": float(e[-1] - e[0]),
        "sum_residual_meV_per_atom": 1e3 * float(resid.sum()) / n_atoms,
        "bookkeeping_max_error_eV": float(np.max(np.abs(bookkeeping))) if len(de) else 0.0,
        "jump_factor": jump_factor,
        "step_dE_robust_std_meV": 1e3 * s_de,
        "n_jumps_dEtot": int(jumps_de.sum()),
        "residual_noise_floor_meV": 1e3 * noise,
        "jumps_resolved": bool(resolved),
        "n_jumps": int(jumps.sum()),
        "jump_abs_meV": jump_abs_mev,
        "n_jumps_abs": int((np.abs(steps) > 1e-3 * jump_abs_mev).sum()),
        "jumps_per_ps": float(jumps.sum() / duration),
        "jump_median_abs_meV": 1e3 * float(np.median(np.abs(steps[jumps]))) if jumps.any() else 0.0,
        "jump_max_abs_meV": 1e3 * float(np.max(np.abs(steps[jumps]))) if jumps.any() else 0.0,
        "step_per_single_crossing_median_abs_meV": (1e3 * float(np.median(np.abs(steps[single])))
                                                    if single.any() else 0.0),
        "step_per_single_crossing_rms_meV": (1e3 * float(np.sqrt(np.mean(steps[single] ** 2)))
                                             if single.any() else 0.0),
        "crossing_steps_sum_meV_per_atom": float(cum_steps[-1]),
        "crossing_steps_drift_meV_per_atom_per_ps": float(slope_steps),
        "drift_without_crossing_steps_meV_per_atom_per_ps": float(slope - slope_steps),
        "fluctuation_rms_without_crossing_steps_meV_per_atom": float(np.std(e - cum_steps)),
        "pair_crossings": int(cross.sum()),
        "pair_crossings_per_ps": float(cross.sum() / duration),
        "steps_with_crossing": int((cross > 0).sum()),
        "ms_per_step": run["ms_per_step"],
        "ms_per_atom_step": run["ms_per_step"] / n_atoms,
        "max_uncertainty": float(np.nanmax(unc)) if np.isfinite(unc).any() else None,
        "mean_uncertainty": float(np.nanmean(unc)) if np.isfinite(unc).any() else None,
        "loadavg_start_end": [run["loadavg_start"], run["loadavg_end"]],
        "trace_t_ps": [round(float(x), 4) for x in t_ps[::every]],
        "trace_etot_meV_per_atom_rel": [round(float(x), 5) for x in (e - e[0])[::every]],
        "trace_crossing_steps_meV_per_atom": [round(float(x), 5) for x in cum_steps[::every]],
    }
    return out


# -- static probe of the cutoff discontinuity -----------------------------------------------
def static_jump_probe(model, a0: float, repeat: int, reach: float, n_crossings: int = 8,
                      eps: float = 1e-6) -> dict:
    """Energy step when one pair distance crosses ``reach`` (one atom moved, perfect lattice)."""
    from ase.calculators.emt import EMT

    base = perfect_cell(a0, repeat)
    direction = np.array([1.0, 0.37, 0.11])
    direction /= np.linalg.norm(direction)
    cell = base.cell.array
    rng = np.arange(-3, 4)
    shifts = np.array(np.meshgrid(rng, rng, rng, indexing="ij")).reshape(3, -1).T @ cell
    roots = []
    for j in range(len(base)):
        c = base.positions[j] + shifts - base.positions[0]      # vectors from atom 0
        if j == 0:
            continue                                            # own images move with it
        b = c @ direction
        disc = b ** 2 - ((c ** 2).sum(1) - reach ** 2)
        ok = disc >= 0
        for root in np.concatenate([b[ok] - np.sqrt(disc[ok]), b[ok] + np.sqrt(disc[ok])]):
            if 1e-3 < root < 0.6:
                roots.append(float(root))
    roots = sorted(roots)
    distinct = [r for k, r in enumerate(roots) if k == 0 or r - roots[k - 1] > 1e-4]
    chosen = distinct[:n_crossings]

    def energy_and_force(calc_kind, u):
        atoms = base.copy()
        atoms.positions[0] += u * direction
        if calc_kind != "emt":
            pred = model.predict(atoms, forces=True, stress=False)
            return pred.energy, pred.forces[0] @ direction
        atoms.calc = EMT()
        return atoms.get_potential_energy(), atoms.get_forces()[0] @ direction

    rows = []
    def n_inside(u):
        x0 = base.positions[0] + u * direction
        d = base.positions[1:, None, :] + shifts[None] - x0
        return int(((d ** 2).sum(-1) < reach ** 2).sum())

    for u in chosen:
        # how many pairs cross exactly here (coincident crossings by symmetry)
        mult = sum(1 for r in roots if abs(r - u) <= 1e-4)
        entering = n_inside(u + eps) > n_inside(u - eps)     # a neighbour comes in as u grows
        row = {"u_A": u, "n_pairs": mult, "entering_with_u": entering}
        for kind in ("gpmlip", "emt"):
            e_lo, f_lo = energy_and_force(kind, u - eps)
            e_hi, f_hi = energy_and_force(kind, u + eps)
            # remove the smooth part: dE = -F.du over the 2 eps interval; then sign it as
            # E(pair inside the reach) - E(pair outside)
            step = e_hi - e_lo + 0.5 * (f_lo + f_hi) * 2 * eps
            row[f"{kind}_step_meV"] = 1e3 * float(step if entering else -step)
        rows.append(row)
    steps = np.array([abs(r["gpmlip_step_meV"]) / r["n_pairs"] for r in rows]) if rows else []
    return {"reach_A": reach, "direction": direction.tolist(), "eps_A": eps, "crossings": rows,
            "gpmlip_median_abs_step_per_pair_meV": float(np.median(steps)) if len(steps) else None,
            "gpmlip_max_abs_step_per_pair_meV": float(np.max(steps)) if len(steps) else None}


# -- GAP (optional) -------------------------------------------------------------------------
def gap_available() -> str | None:
    """None when GAP can run here, else why not."""
    if not os.path.exists(PEERS_PYTHON):
        return f"{PEERS_PYTHON} does not exist"
    ok = subprocess.run([PEERS_PYTHON, "-c", "import quippy"], capture_output=True)
    if ok.returncode:
        return f"quippy does not import in {PEERS_PYTHON}"
    return None


def gap_command(args, xyz: Path, xml: Path, virial_sigma: float) -> list[str]:
    """gap_fit on the gpmlip model's data and settings: SOAP with GAP's default 0.5 Å cutoff
    transition, dot-product kernel zeta 4, delta 1 eV, CUR sparse points, the same noise
    (gpmlip's 5 meV/atom, 50 meV/Å; its 1 meV/Å³ stress noise as ``virial_sigma``, in eV per
    sqrt(atom) as ``sigma_per_atom=T`` takes it)."""
    soap = (f"soap cutoff={args.r_cut} cutoff_transition_width=0.5 n_max={args.n_max} "
            f"l_max={args.l_max} atom_sigma={args.sigma} zeta=4 delta=1.0 "
            f"covariance_type=dot_product n_sparse={args.n_sparse} sparse_method=cur_points")
    return [GAP_FIT, f"at_file={xyz}", "gap={" + soap + "}",
            f"default_sigma={{0.005 0.05 {virial_sigma:.6g} 0.0}}", "sigma_per_atom=T",
            "e0={Cu:0.0}",
            "energy_parameter_name=energy", "force_parameter_name=forces",
            "virial_parameter_name=virial", f"gp_file={xml}", "sparse_jitter=1e-8"]


def train_gap(args, train, workdir: Path) -> tuple[str, dict]:
    """Fit a GAP with gap_fit (peers venv) to the training frames (energy, forces, virial)."""
    from ase.io import write

    frames = []
    for atoms in train:
        a = atoms.copy()
        a.info["energy"] = atoms.get_potential_energy()
        a.arrays["forces"] = atoms.get_forces()
        a.info["virial"] = -atoms.get_volume() * _voigt_to_matrix(atoms.get_stress())
        frames.append(a)
    xyz, xml = workdir / "gap_train.xyz", workdir / "gap_cu.xml"
    write(xyz, frames, format="extxyz")
    volume, n_atoms = train[0].get_volume(), len(train[0])
    cmd = gap_command(args, xyz, xml, virial_sigma=1e-3 * volume / np.sqrt(n_atoms))
    log.info("GAP: %s", " ".join(cmd))
    t0 = time.perf_counter()
    with open(workdir / "gap_fit.log", "w") as fh:
        subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT,
                       env={**os.environ, "OMP_NUM_THREADS": "2"})
    fit_s = time.perf_counter() - t0
    log.info("GAP: fitted in %.0f s", fit_s)
    return str(xml), {"fit_seconds": fit_s, "command": " ".join(cmd), "xml": str(xml)}


def _voigt_to_matrix(v: np.ndarray) -> np.ndarray:
    xx, yy, zz, yz, xz, xy = v
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def run_gap_subprocess(xml: str, workdir: Path, name: str, **kwargs) -> dict:
    """``run_nve`` (or, with ``mode="heat"``, ``run_heating``; ``mode="test"``: test errors) with
    GAP in the peers interpreter."""
    out = workdir / f"gap_{name}.npz"
    cmd = [PEERS_PYTHON, __file__, "--gap-worker", xml, "--worker-out", str(out),
           "--worker-args", json.dumps(kwargs)]
    subprocess.run(cmd, check=True)
    data = dict(np.load(out, allow_pickle=False))
    run = {k: (v.item() if v.ndim == 0 else v) for k, v in data.items()}
    run["kind"] = "gap"
    return run


def gap_worker(xml: str, out: str, kwargs: dict) -> None:
    mode = kwargs.pop("mode", "nve")
    if mode == "test":
        from ase.io import read
        calc = make_calculator("gap", gap_xml=xml)
        df, de = [], []
        for atoms in read(kwargs["xyz"], ":"):    # labels arrive on a SinglePointCalculator
            f_ref, e_ref = atoms.get_forces().copy(), atoms.get_potential_energy()
            atoms.calc = calc
            df.append((atoms.get_forces() - f_ref).ravel())
            de.append((atoms.get_potential_energy() - e_ref) / len(atoms))
        np.savez(out, force_rmse=np.sqrt(np.mean(np.concatenate(df) ** 2)),
                 energy_mae=np.mean(np.abs(de)))
        return
    run = (run_heating if mode == "heat" else run_nve)("gap", gap_xml=xml, **kwargs)
    np.savez(out, **{k: np.asarray(v) for k, v in run.items() if k != "kind"})


# -- report -----------------------------------------------------------------------------------
def markdown(results: dict) -> str:
    head = ["| potential | T (K) | dt (fs) | t (ps) | <T> (K) | drift (meV/atom/ps) | "
            "RMS fluct. (meV/atom) | max dev. (meV/atom) | jumps: cutoff / dE_tot | "
            f"steps > {results.get('jump_abs_meV', JUMP_ABS_MEV):g} meV | "
            "pair crossings | median step/crossing (meV) | drift w/o cutoff steps | "
            "ms/step | max unc. |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def row(r):
        if "error" in r:
            return f"| {r['potential']} | {r['temperature_K']:g} | failed: {r['error']} |"
        unc = "-" if r["max_uncertainty"] is None else f"{r['max_uncertainty']:.3f}"
        ok = r["jumps_resolved"]
        n_jumps = r["n_jumps"] if ok else "n/a"
        step = f"{r['step_per_single_crossing_median_abs_meV']:.4f}" if ok else "n/a"
        drift_wo = f"{r['drift_without_crossing_steps_meV_per_atom_per_ps']:+.4f}" if ok else "n/a"
        cells = [r["potential"], f"{r['temperature_K']:g}", f"{r['dt_fs']:g}",
                 f"{r['time_ps']:.2f}", f"{r['mean_temperature_K']:.0f}",
                 f"{r['drift_meV_per_atom_per_ps']:+.4f}",
                 f"{r['fluctuation_rms_meV_per_atom']:.4f}",
                 f"{r['max_abs_deviation_meV_per_atom']:.4f}",
                 f"{n_jumps} / {r['n_jumps_dEtot']}", str(r.get("n_jumps_abs", "-")),
                 str(r["pair_crossings"]), step, drift_wo,
                 f"{r['ms_per_step']:.1f}", unc]
        return "| " + " | ".join(cells) + " |"

    lines = head + [row(r) for r in results["runs"]]
    if results.get("dt_study"):
        lines += ["", f"Time-step study ({results['dt_study_temperature_K']:g} K, "
                  f"{results['dt_study_ps']:g} ps):", "", *head]
        lines += [row(r) for r in results["dt_study"]]
    heat = results.get("heating")
    if heat:
        sch = heat[0]["schedule"]
        lines += ["", f"Heating: Langevin ({sch['friction_per_fs']:g}/fs) ramp {sch['t_from']:g} "
                  f"-> {sch['t_to']:g} K in {sch['ramp_ps']:g} ps, then NVE {sch['nve_ps']:g} ps "
                  f"(dt {sch['dt_fs']:g} fs):", "",
                  "| potential | reach (Å) | T end of ramp (K) | <T> NVE (K) | NVE drift "
                  "(meV/atom/ps) | NVE RMS fluct. (meV/atom) | NVE max dev. (meV/atom) | "
                  "cutoff jumps ramp / NVE | steps > "
                  f"{results.get('jump_abs_meV', JUMP_ABS_MEV):g} meV ramp / NVE | "
                  "pair crossings ramp / NVE | median jump (meV) | "
                  "ms/step | max unc. |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in heat:
            if "error" in r:
                lines.append(f"| {r['potential']} | failed: {r['error']} |")
                continue
            unc = "-" if r["max_uncertainty"] is None else f"{r['max_uncertainty']:.3f}"
            lines.append(
                f"| {r['potential']} | {r['reach_A']:.3f} | "
                f"{r['temperature_end_of_ramp_K']:.0f} | "
                f"{r['nve_mean_temperature_K']:.0f} | {r['nve_drift_meV_per_atom_per_ps']:+.4f} | "
                f"{r['nve_fluctuation_rms_meV_per_atom']:.4f} | "
                f"{r['nve_max_abs_deviation_meV_per_atom']:.4f} | "
                f"{r['n_jumps_ramp']} / {r['n_jumps_nve']} | "
                f"{r.get('n_jumps_abs_ramp', '-')} / {r.get('n_jumps_abs_nve', '-')} | "
                f"{r['pair_crossings_ramp']} / {r['pair_crossings_nve']} | "
                f"{r['jump_median_abs_meV']:.4f} | {r['ms_per_step']:.1f} | {unc} |")
    probes = results.get("static_probe") or {}
    for kind, probe in probes.items():
        lines += ["", f"Static probe ({kind}): energy step when one pair crosses the reach "
                  f"{probe['reach_A']:.3f} Å (one atom moved, perfect lattice):", "",
                  "E(pair inside) - E(pair outside):", "",
                  f"| displacement (Å) | pairs | {kind} step (meV) | EMT step (meV) |",
                  "|---|---|---|---|"]
        lines += [f"| {c['u_A']:.4f} | {c['n_pairs']} | {c['gpmlip_step_meV']:+.4f} | "
                  f"{c['emt_step_meV']:+.2e} |" for c in probe["crossings"]]
    return "\n".join(lines)


def write_json(path: Path | None, results: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)


# -- main -------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--temperatures", type=float, nargs="+", default=[300.0, 1000.0])
    p.add_argument("--time-ps", type=float, default=5.0, help="length of each main NVE run")
    p.add_argument("--dt-fs", type=float, default=1.0)
    p.add_argument("--dt-study", type=float, nargs="*", default=[0.5, 1.0, 2.0],
                   help="time steps of the dt study (empty: skip it)")
    p.add_argument("--dt-study-ps", type=float, default=1.0)
    p.add_argument("--dt-study-temperature", type=float, default=1000.0)
    p.add_argument("--repeat", type=int, default=2, help="cubic cells per side (2: 32 atoms)")
    p.add_argument("--train-temperatures", type=float, nargs="+", default=[300.0, 1000.0])
    p.add_argument("--n-train-per-temp", type=int, default=24)
    p.add_argument("--n-test-per-temp", type=int, default=4)
    p.add_argument("--n-sparse", type=int, default=200)
    p.add_argument("--r-cut", type=float, default=4.5)
    p.add_argument("--n-max", type=int, default=6)
    p.add_argument("--l-max", type=int, default=4)
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--jump-factor", type=float, default=5.0,
                   help="a step is a jump when its energy step exceeds this x the noise floor")
    p.add_argument("--jump-abs-mev", type=float, default=JUMP_ABS_MEV,
                   help="also count crossing steps whose energy step exceeds this (meV)")
    p.add_argument("--reanalyse", action="store_true",
                   help="recompute every row of --json from the traces in --workdir (no MD)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weighting", default="smooth",
                   help="the 'gpmlip' potential's " + WEIGHTING_HELP + "; 'gpmlip-hard' is always "
                        "the hard cutoff")
    p.add_argument("--potentials", nargs="+", choices=["gpmlip", "gpmlip-hard", "emt", "gap"],
                   default=["gpmlip", "gpmlip-hard", "emt", "gap"],
                   help="what to run: gpmlip (--weighting), gpmlip-hard (the same model with the "
                        "hard cutoff), EMT, GAP (gap_fit on the same frames, when "
                        f"{PEERS_PYTHON} imports quippy; or --gap-xml)")
    p.add_argument("--gap-xml", help="use this GAP model instead of fitting one")
    p.add_argument("--heat-from", type=float, default=300.0, help="heating run: start T (K)")
    p.add_argument("--heat-to", type=float, default=1500.0, help="heating run: end T (K)")
    p.add_argument("--heat-ramp-ps", type=float, default=3.0,
                   help="heating run: length of the Langevin ramp (0: no heating run)")
    p.add_argument("--heat-nve-ps", type=float, default=2.0,
                   help="heating run: NVE after the ramp")
    p.add_argument("--heat-friction", type=float, default=0.01, help="Langevin friction (1/fs)")
    p.add_argument("--no-emt", action="store_true", help="skip the EMT reference runs")
    p.add_argument("--append", action="store_true",
                   help="add these runs to an existing --json (rows with the same potential, T "
                        "and dt are replaced), e.g. GAP once its model exists")
    p.add_argument("--model", type=Path, help="load this model as 'gpmlip' instead of "
                   "training (gpmlip-hard and GAP are still trained)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/nve_bench"))
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 4+1 frames per T, 50 sparse points, 0.2 ps, dt study 0.1 "
                        "ps, heating 0.2 + 0.1 ps")
    p.add_argument("--gap-worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--worker-args", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.weighting_value = parse_weighting(args.weighting, args.r_cut)
    except ValueError as exc:
        p.error(str(exc))
    if args.quick:   # smaller defaults; options given explicitly still win
        for name, value in {"n_train_per_temp": 4, "n_test_per_temp": 1, "n_sparse": 50,
                            "time_ps": 0.2, "dt_study_ps": 0.1, "heat_ramp_ps": 0.2,
                            "heat_nve_ps": 0.1}.items():
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    return args


def _frames(args, a0: float, cache: dict) -> tuple[list, list]:
    """EMT training and held-out frames (made once)."""
    if "train" not in cache:
        train, test = [], []
        t0 = time.perf_counter()
        for k, temp in enumerate(args.train_temperatures):
            train += langevin_snapshots(a0, args.repeat, temp, args.n_train_per_temp,
                                        seed=args.seed + 1 + k)
            test += langevin_snapshots(a0, args.repeat, temp, args.n_test_per_temp,
                                       seed=args.seed + 101 + k, interval_fs=200.0)
        log.info("%d training + %d test frames of %d atoms in %.0f s", len(train), len(test),
                 len(train[0]), time.perf_counter() - t0)
        cache.update(train=train, test=test)
    return cache["train"], cache["test"]


def _prepare_model(args, a0: float, results: dict, kind: str, cache: dict):
    """Train (or load) one gpmlip model, time one step and probe the cutoff; fills ``results``."""
    import gpmlip

    weighting = args.weighting_value if kind == "gpmlip" else None
    if args.model and kind == "gpmlip":
        model = gpmlip.load_model(args.model)
        results["models"][kind] = {"loaded_from": str(args.model)}
    else:
        train, test = _frames(args, a0, cache)
        model, info = train_model(args, train, test, weighting)
        path = args.workdir / f"model_r{args.repeat}_{weighting_label(weighting)}.npz"
        model.save(path)
        info["saved_to"] = str(path)
        info["train_temperatures_K"] = args.train_temperatures
        results["models"][kind] = info
    desc = model.descriptor
    results["settings"][kind] = {
        "soap": repr(desc), "r_cut": desc.settings.r_cut, "n_max": desc.settings.n_max,
        "l_max": desc.settings.l_max, "sigma": desc.settings.sigma, "zeta": model.zeta,
        "weighting": desc.settings.weighting_dict, "n_sparse": model.n_sparse_points,
        "repeat": args.repeat, "n_atoms": 4 * args.repeat ** 3,
        "descriptor_reach_A": desc.neighbour_cutoff}

    # Single-step timing, before anything long.
    atoms = perfect_cell(a0, args.repeat)
    atoms.calc = make_calculator(kind, model)
    times = []
    for k in range(3):
        atoms.rattle(0.02, seed=k)
        t0 = time.perf_counter()
        atoms.get_forces()
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    n_gp_steps = len(args.temperatures) * args.time_ps * 1000 / args.dt_fs + sum(
        args.dt_study_ps * 1000 / dt for dt in args.dt_study if dt != args.dt_fs) + (
        (args.heat_ramp_ps + args.heat_nve_ps) * 1000 / args.dt_fs if args.heat_ramp_ps else 0)
    log.info("%s single step: %.1f ms (%.2f ms/atom); %d MD steps -> about %.0f min", kind,
             1e3 * step_s, 1e3 * step_s / len(atoms), n_gp_steps, n_gp_steps * step_s / 60)
    results["single_step_ms"][kind] = 1e3 * step_s
    results["estimated_minutes"][kind] = n_gp_steps * step_s / 60

    probe = static_jump_probe(model, a0, args.repeat, desc.neighbour_cutoff)
    results["static_probe"][kind] = probe
    log.info("%s static probe: median |energy step| per pair crossing %.4f meV (max %.4f)", kind,
             probe["gpmlip_median_abs_step_per_pair_meV"],
             probe["gpmlip_max_abs_step_per_pair_meV"])
    return model


def _prepare_gap(args, a0: float, results: dict, cache: dict) -> str | None:
    """The GAP model (fitted with gap_fit on the same frames unless --gap-xml); None: skipped."""
    reason = gap_available()
    if reason is None and not args.gap_xml and not os.path.exists(GAP_FIT):
        reason = f"{GAP_FIT} does not exist"
    if reason is not None:
        results["gap"] = {"run": False, "reason": reason}
        log.info("GAP skipped: %s", reason)
        return None
    if args.gap_xml:
        xml, info = args.gap_xml, {"xml": args.gap_xml, "given": True}
    else:
        train, _ = _frames(args, a0, cache)
        xml, info = train_gap(args, train, args.workdir)
    from ase.io import write
    _, test = _frames(args, a0, cache)
    test_xyz = args.workdir / "gap_test.xyz"
    frames = []
    for atoms in test:
        a = atoms.copy()
        a.info["energy"] = atoms.get_potential_energy()
        a.arrays["forces"] = atoms.get_forces()
        frames.append(a)
    write(test_xyz, frames, format="extxyz")
    err = run_gap_subprocess(xml, args.workdir, "test", mode="test", xyz=str(test_xyz))
    info["test_force_rmse_meV_per_A"] = 1e3 * float(err["force_rmse"])
    info["test_energy_mae_meV_per_atom"] = 1e3 * float(err["energy_mae"])
    log.info("GAP: held-out force RMSE %.1f meV/Å, energy MAE %.2f meV/atom",
             info["test_force_rmse_meV_per_A"], info["test_energy_mae_meV_per_atom"])
    results["gap"] = {"run": True, **info}
    return xml


def _load_trace(path: Path, kind: str) -> dict:
    data = dict(np.load(path, allow_pickle=False))
    run = {k: (v.item() if v.ndim == 0 else v) for k, v in data.items()}
    run["kind"] = kind
    return run


def reanalyse(args) -> dict:
    """Rebuild the rows of ``--json`` from the saved traces (new thresholds, no MD)."""
    results = json.loads(args.json.read_text())
    results["jump_abs_meV"] = args.jump_abs_mev
    for table in ("runs", "dt_study"):
        for k, r in enumerate(results[table]):
            if "error" in r:
                continue
            name = f"{r['potential']}_{r['temperature_K']:g}K_{r['dt_fs']:g}fs"
            path = args.workdir / f"trace_{name}.npz"
            upto = r["n_steps"] if r.get("note") else None
            new = analyse(_load_trace(path, r["potential"]), args.jump_factor, upto_steps=upto,
                          jump_abs_mev=args.jump_abs_mev)
            results[table][k] = {**new, **({"note": r["note"]} if r.get("note") else {})}
    for k, r in enumerate(results.get("heating", [])):
        if "error" not in r:
            run = _load_trace(args.workdir / f"trace_heating_{r['potential']}.npz", r["potential"])
            results["heating"][k] = analyse_heating(run, args.jump_factor, r["schedule"],
                                                    args.jump_abs_mev)
    results.setdefault("appended_commands", []).append(
        " ".join([Path(sys.executable).as_posix(), *sys.argv]))
    results["table"] = markdown(results)
    write_json(args.json, results)
    print(results["table"])
    return results


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    warnings.filterwarnings("ignore", message="Use thermalize_momenta")  # the spec's MB call
    warnings.filterwarnings("ignore", message=".*fixcm.*", category=FutureWarning)
    if args.gap_worker:
        gap_worker(args.gap_worker, args.worker_out, json.loads(args.worker_args))
        return {}
    logging.getLogger("gpmlip").setLevel(logging.WARNING)
    if args.reanalyse:
        return reanalyse(args)
    import ase
    import gpmlip

    args.workdir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    a0 = emt_lattice_constant()
    log.info("EMT lattice constant %.5f Å; load average %s on %d CPUs", a0,
             " ".join(f"{x:.2f}" for x in os.getloadavg()), os.cpu_count())
    command = " ".join([Path(sys.executable).as_posix(), *sys.argv])
    if args.append and args.json and args.json.exists():
        results = json.loads(args.json.read_text())
        results.setdefault("appended_commands", []).append(command)
        results["environment"]["loadavg_append_start"] = os.getloadavg()
    else:
        results = {
            "command": command,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if not k.startswith("worker") and k != "gap_worker"},
            "environment": {"python": platform.python_version(), "ase": ase.__version__,
                            "numpy": np.__version__, "gpmlip": gpmlip.__version__,
                            "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()},
            "emt_lattice_constant_A": a0,
            "nve_start": "perfect lattice at the EMT 0 K lattice constant, Maxwell-Boltzmann "
                         "velocities at 2T, Stationary; identical for every potential",
            "runs": [], "dt_study": [], "heating": [],
        }
    results["jump_abs_meV"] = args.jump_abs_mev
    for key in ("models", "settings", "single_step_ms", "estimated_minutes", "static_probe"):
        results.setdefault(key, {})
    results.setdefault("heating", [])
    potentials = list(dict.fromkeys(args.potentials))
    if args.no_emt and "emt" in potentials:
        potentials.remove("emt")
    cache: dict = {}
    models = {kind: _prepare_model(args, a0, results, kind, cache)
              for kind in GPMLIP_KINDS if kind in potentials}
    if not results["settings"]:     # EMT / GAP only: the crossing radius needs a model
        _prepare_model(args, a0, results, "gpmlip", cache)
    # EMT and GAP count crossings of the smooth model's reach (its r0) as a control.
    control = results["settings"].get("gpmlip") or next(iter(results["settings"].values()))
    reaches = {kind: results["settings"].get(kind, control)["descriptor_reach_A"]
               for kind in potentials}
    gap_xml = None
    if "gap" in potentials:
        gap_xml = _prepare_gap(args, a0, results, cache)
        if gap_xml is None:
            potentials.remove("gap")
    write_json(args.json, results)

    def do_run(kind, temp, dt, time_ps):
        seed = args.seed + 1000 + int(temp)
        kw = dict(a0=a0, repeat=args.repeat, temperature=temp, dt_fs=dt, time_ps=time_ps,
                  seed=seed, reach=reaches[kind])
        if kind == "gap":
            return run_gap_subprocess(gap_xml, args.workdir, f"{temp:g}K_{dt:g}fs", **kw)
        return run_nve(kind, model=models.get(kind), **kw)

    def store(table: str, row: dict) -> None:
        key = (row["potential"], row.get("temperature_K"), row.get("dt_fs"))
        results[table] = [r for r in results[table]
                          if (r["potential"], r.get("temperature_K"), r.get("dt_fs")) != key]
        results[table].append(row)
        write_json(args.json, results)

    results["dt_study_temperature_K"], results["dt_study_ps"] = (args.dt_study_temperature,
                                                                 args.dt_study_ps)
    raw = {}
    for temp in args.temperatures:
        for kind in potentials:
            try:
                run = do_run(kind, temp, args.dt_fs, args.time_ps)
            except Exception as exc:
                log.exception("NVE %s at %g K failed", kind, temp)
                store("runs", {"potential": kind, "temperature_K": temp, "dt_fs": args.dt_fs,
                               "error": repr(exc)})
                continue
            raw[(kind, temp)] = run
            np.savez(args.workdir / f"trace_{kind}_{temp:g}K_{args.dt_fs:g}fs.npz",
                     **{k: np.asarray(v) for k, v in run.items() if k != "kind"})
            store("runs", analyse(run, args.jump_factor, jump_abs_mev=args.jump_abs_mev))

    for dt in args.dt_study:
        for kind in potentials:
            temp = args.dt_study_temperature
            main_run = raw.get((kind, temp))
            steps = int(round(args.dt_study_ps * 1000 / dt))
            if dt == args.dt_fs and main_run is not None and main_run["n_steps"] >= steps:
                row = analyse(main_run, args.jump_factor, upto_steps=steps,
                              jump_abs_mev=args.jump_abs_mev)
                row["note"] = "first part of the main run"
                store("dt_study", row)
                continue
            try:
                run = do_run(kind, temp, dt, args.dt_study_ps)
            except Exception:
                log.exception("dt study %s dt=%g failed", kind, dt)
                continue
            np.savez(args.workdir / f"trace_{kind}_{temp:g}K_{dt:g}fs.npz",
                     **{k: np.asarray(v) for k, v in run.items() if k != "kind"})
            store("dt_study", analyse(run, args.jump_factor, jump_abs_mev=args.jump_abs_mev))

    if args.heat_ramp_ps > 0:
        schedule = heating_schedule(args)
        for kind in potentials:
            kw = dict(a0=a0, repeat=args.repeat, t_from=args.heat_from, t_to=args.heat_to,
                      ramp_ps=args.heat_ramp_ps, nve_ps=args.heat_nve_ps, dt_fs=args.dt_fs,
                      friction_per_fs=args.heat_friction, seed=args.seed + 5000,
                      reach=reaches[kind])
            try:
                if kind == "gap":
                    run = run_gap_subprocess(gap_xml, args.workdir, "heating", mode="heat", **kw)
                else:
                    run = run_heating(kind, model=models.get(kind), **kw)
            except Exception as exc:
                log.exception("heating %s failed", kind)
                store("heating", {"potential": kind, "error": repr(exc)})
                continue
            np.savez(args.workdir / f"trace_heating_{kind}.npz",
                     **{k: np.asarray(v) for k, v in run.items() if k != "kind"})
            store("heating", analyse_heating(run, args.jump_factor, schedule,
                                             args.jump_abs_mev))

    order = {"gpmlip": 0, "gpmlip-hard": 1, "emt": 2, "gap": 3}
    for table in ("runs", "dt_study"):
        results[table].sort(key=lambda r: (r["temperature_K"], r.get("dt_fs") or 0,
                                           order.get(r["potential"], 9)))
    results["heating"].sort(key=lambda r: order.get(r["potential"], 9))
    results["environment"]["loadavg_end"] = os.getloadavg()
    results["total_minutes"] = results.get("total_minutes", 0.0) + (
        time.perf_counter() - t_start) / 60
    results["table"] = markdown(results)
    write_json(args.json, results)
    print(results["table"])
    return results


if __name__ == "__main__":
    main()
