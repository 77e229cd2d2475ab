"""NVE energy conservation of a gpmlip model trained on EMT copper, against EMT itself.

What is done
------------
1. **Training data.**  fcc Cu at EMT's own 0 K lattice constant (found by minimising the EMT
   energy per atom), a ``--repeat``-times repeated cubic cell (default 2: 32 atoms).  For each
   training temperature (300 K and 1000 K) an EMT Langevin run (2 fs, friction 0.01/fs, seeded)
   is equilibrated for 1 ps and ``--n-train-per-temp`` snapshots are taken 50 fs apart, labelled
   with EMT energy, forces and stress.  A few more snapshots from separately seeded runs are held
   out to report the model's accuracy.
2. **Model.**  ``gpmlip.SOAP(species=["Cu"], r_cut, n_max, l_max, sigma=0.5, n_jobs=1)``,
   ``gpmlip.SparseGP(desc, zeta=4, n_sparse=..., e0={"Cu": 0.0})`` with the default noise
   (5 meV/atom, 50 meV/Å, 1 meV/Å³) and signal std 1 eV.
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
5. **Static cutoff probe.**  One atom of the perfect lattice is moved along a generic direction;
   at every displacement where one pair distance crosses the descriptor's reach
   ``r_cut + padding`` the energy is evaluated at +-1e-6 Å: the difference (minus the tiny
   ``-F.du`` work) is the energy discontinuity caused by one neighbour entering the sphere.

Reported metrics (per run)
--------------------------
* drift: slope of a linear fit of E_tot/N against time, meV/atom/ps;
* fluctuation: RMS of E_tot/N about its mean, meV/atom (also after removing the linear drift);
* max deviation: max_t |E_tot(t) - E_tot(0)| / N, meV/atom;
* jumps: see below; ms/step: wall time of the force calls per MD step (observer excluded);
* max uncertainty: max over the run of ``results["max_uncertainty"]`` (sqrt of the normalised
  local-energy variance; 0 known, 1 unknown).

Jump detection.  For velocity Verlet the total energy obeys exactly
``E_tot(i+1) - E_tot(i) = r_i + dt^2/8 sum_a (|F_a(i+1)|^2 - |F_a(i)|^2) / m_a`` with the
work residual ``r_i = E_pot(i+1) - E_pot(i) + (F(i) + F(i+1)) . (x(i+1) - x(i)) / 2``.  The second
term telescopes (it is the bounded oscillation of Verlet's shadow energy), so any drift is the sum
of the ``r_i``.  For a smooth potential ``r_i`` is a trapezoid-rule error of order |dx|^3 that
varies on phonon time scales; a step of the potential energy shows up in it one to one.  Every step
also counts the atom pairs (periodic images included) whose distance crossed the descriptor's reach
``r_cut + padding``.  At steps with a crossing the smooth part of ``r_i`` is interpolated from the
nearest steps without one; the remainder is the energy step caused by the crossing(s).  A *jump* is
such a step larger than ``--jump-factor`` (5) x the noise floor (robust spread of the same
leave-one-out interpolation at quiet steps).  The cumulative sum of these steps gives the part of
E_tot's drift and fluctuation that comes from the cutoff; the rest is integration error.  EMT is
analysed identically (its crossings of the same radius are a control: EMT is smooth there).  The
literal criterion "|dE_tot| > --jump-factor x robust spread of dE_tot" is reported too, but
Verlet's own step-to-step oscillation hides small steps there.

GAP: run only when a Cu GAP model (``*.xml``) is already present under ``/tmp/gpmlip_side_by_side``
or ``/work/peer_results`` and ``/work/peers-venv/bin/python`` imports quippy; it then runs in a
subprocess of that interpreter (``--gap-worker``).  Otherwise the JSON says why it was skipped.
``--potentials`` chooses what runs and ``--append`` adds the rows to an existing ``--json``.

Usage
-----
The run reported in ``benchmarks/results/nve_conservation.json``::

    cd /work/main && .venv/bin/python benchmarks/nve_conservation.py \\
        --temperatures 300 1000 --time-ps 5 --dt-fs 1 \\
        --json benchmarks/results/nve_conservation.json

GAP added afterwards to the same JSON, once its model exists (rows are appended)::

    .venv/bin/python benchmarks/nve_conservation.py --potentials gap --append \\
        --model /tmp/nve_bench/model_r2.npz --temperatures 300 1000 --time-ps 1 --dt-study \\
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

log = logging.getLogger("nve_conservation")

GAP_SEARCH_DIRS = ("/tmp/gpmlip_side_by_side", "/work/peer_results")
PEERS_PYTHON = "/work/peers-venv/bin/python"


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
def train_model(args, train, test) -> tuple[object, dict]:
    import gpmlip

    desc = gpmlip.SOAP(species=["Cu"], r_cut=args.r_cut, n_max=args.n_max, l_max=args.l_max,
                       sigma=args.sigma, n_jobs=1)
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
    log.info("fitted in %.1f s: %d sparse points; held-out force RMSE %.1f meV/Å, energy MAE "
             "%.2f meV/atom", fit_s, model.n_sparse_points, info["test_force_rmse_meV_per_A"],
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
        epot = atoms.get_potential_energy()
        forces = atoms.get_forces()
        pos = atoms.get_positions()
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
    if kind == "gpmlip":
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
               n_steps=n_steps, seed=seed, wall_seconds=wall,
               ms_per_step=1e3 * (wall - rec.seconds) / n_steps,
               loadavg_start=load0, loadavg_end=os.getloadavg()[0],
               dt2_over_8=(dt_fs * units.fs) ** 2 / 8)
    log.info("  done in %.0f s (%.1f ms/step, load %.2f -> %.2f)", wall, out["ms_per_step"],
             load0, out["loadavg_end"])
    return out


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
            trace_every_fs: float = 10.0) -> dict:
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
        if calc_kind == "gpmlip":
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
def find_gap() -> tuple[str | None, str]:
    xmls = []
    for d in GAP_SEARCH_DIRS:
        xmls += glob.glob(os.path.join(d, "**", "*.xml"), recursive=True)
    if not xmls:
        return None, f"no GAP model xml under {' or '.join(GAP_SEARCH_DIRS)}"
    if not os.path.exists(PEERS_PYTHON):
        return None, f"{PEERS_PYTHON} does not exist"
    ok = subprocess.run([PEERS_PYTHON, "-c", "import quippy"], capture_output=True)
    if ok.returncode:
        return None, f"quippy does not import in {PEERS_PYTHON}"
    return sorted(xmls)[0], "found"


def run_gap_subprocess(xml: str, a0: float, args, temperature: float, dt_fs: float,
                       time_ps: float, seed: int, reach: float, workdir: Path) -> dict:
    out = workdir / f"gap_{temperature:g}K_{dt_fs:g}fs.npz"
    cmd = [PEERS_PYTHON, __file__, "--gap-worker", xml, "--worker-out", str(out),
           "--worker-args", json.dumps({"a0": a0, "repeat": args.repeat,
                                        "temperature": temperature, "dt_fs": dt_fs,
                                        "time_ps": time_ps, "seed": seed, "reach": reach})]
    subprocess.run(cmd, check=True)
    data = dict(np.load(out, allow_pickle=False))
    run = {k: (v.item() if v.ndim == 0 else v) for k, v in data.items()}
    run["kind"] = "gap"
    return run


def gap_worker(xml: str, out: str, kwargs: dict) -> None:
    run = run_nve("gap", gap_xml=xml, **kwargs)
    np.savez(out, **{k: np.asarray(v) for k, v in run.items() if k != "kind"})


# -- report -----------------------------------------------------------------------------------
def markdown(results: dict) -> str:
    head = ["| potential | T (K) | dt (fs) | t (ps) | <T> (K) | drift (meV/atom/ps) | "
            "RMS fluct. (meV/atom) | max dev. (meV/atom) | jumps: cutoff / dE_tot | "
            "pair crossings | median step/crossing (meV) | drift w/o cutoff steps | "
            "ms/step | max unc. |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

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
                 f"{n_jumps} / {r['n_jumps_dEtot']}", str(r["pair_crossings"]), step, drift_wo,
                 f"{r['ms_per_step']:.1f}", unc]
        return "| " + " | ".join(cells) + " |"

    lines = head + [row(r) for r in results["runs"]]
    if results.get("dt_study"):
        lines += ["", f"Time-step study ({results['dt_study_temperature_K']:g} K, "
                  f"{results['dt_study_ps']:g} ps):", "", *head]
        lines += [row(r) for r in results["dt_study"]]
    probe = results.get("static_probe")
    if probe:
        lines += ["", f"Static probe: energy step when one pair crosses r_cut + padding = "
                  f"{probe['reach_A']:.3f} Å (one atom moved, perfect lattice):", "",
                  "E(pair inside) - E(pair outside):", "",
                  "| displacement (Å) | pairs | gpmlip step (meV) | EMT step (meV) |",
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--potentials", nargs="+", choices=["gpmlip", "emt", "gap"],
                   default=["gpmlip", "emt", "gap"],
                   help="what to run (gap only when a model xml and quippy are found)")
    p.add_argument("--no-emt", action="store_true", help="skip the EMT reference runs")
    p.add_argument("--append", action="store_true",
                   help="add these runs to an existing --json (rows with the same potential, T "
                        "and dt are replaced), e.g. GAP once its model exists")
    p.add_argument("--model", type=Path, help="load this gpmlip model instead of training")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/nve_bench"))
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 4+1 frames per T, 50 sparse points, 0.2 ps, dt study 0.1 ps")
    p.add_argument("--gap-worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--worker-args", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:   # smaller defaults; options given explicitly still win
        for name, value in {"n_train_per_temp": 4, "n_test_per_temp": 1, "n_sparse": 50,
                            "time_ps": 0.2, "dt_study_ps": 0.1}.items():
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    return args


def _prepare_model(args, a0: float, results: dict):
    """Train (or load) the gpmlip model, time one step and probe the cutoff; fills ``results``."""
    import gpmlip

    if args.model:
        model = gpmlip.load_model(args.model)
        results["model"] = {"loaded_from": str(args.model)}
    else:
        train, test = [], []
        t0 = time.perf_counter()
        for k, temp in enumerate(args.train_temperatures):
            train += langevin_snapshots(a0, args.repeat, temp, args.n_train_per_temp,
                                        seed=args.seed + 1 + k)
            test += langevin_snapshots(a0, args.repeat, temp, args.n_test_per_temp,
                                       seed=args.seed + 101 + k, interval_fs=200.0)
        log.info("%d training + %d test frames of %d atoms in %.0f s", len(train), len(test),
                 len(train[0]), time.perf_counter() - t0)
        model, info = train_model(args, train, test)
        path = args.workdir / f"model_r{args.repeat}.npz"
        model.save(path)
        info["saved_to"] = str(path)
        info["train_temperatures_K"] = args.train_temperatures
        results["model"] = info
    desc = model.descriptor
    results["settings"] = {"soap": repr(desc), "r_cut": desc.settings.r_cut,
                           "n_max": desc.settings.n_max, "l_max": desc.settings.l_max,
                           "sigma": desc.settings.sigma, "zeta": model.zeta,
                           "n_sparse": model.n_sparse_points, "repeat": args.repeat,
                           "n_atoms": 4 * args.repeat ** 3,
                           "descriptor_reach_A": desc.neighbour_cutoff}

    # Single-step timing and the estimate, before anything long.
    atoms = perfect_cell(a0, args.repeat)
    atoms.calc = make_calculator("gpmlip", model)
    times = []
    for k in range(3):
        atoms.rattle(0.02, seed=k)
        t0 = time.perf_counter()
        atoms.get_forces()
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    n_gp_steps = len(args.temperatures) * args.time_ps * 1000 / args.dt_fs + sum(
        args.dt_study_ps * 1000 / dt for dt in args.dt_study if dt != args.dt_fs)
    log.info("gpmlip single step: %.1f ms (%.2f ms/atom); %d gpmlip MD steps -> about %.0f min",
             1e3 * step_s, 1e3 * step_s / len(atoms), n_gp_steps, n_gp_steps * step_s / 60)
    results["single_step_ms"] = 1e3 * step_s
    results["estimated_gpmlip_minutes"] = n_gp_steps * step_s / 60

    results["static_probe"] = static_jump_probe(model, a0, args.repeat,
                                                desc.neighbour_cutoff)
    log.info("static probe: median |energy step| per pair crossing %.4f meV (max %.4f)",
             results["static_probe"]["gpmlip_median_abs_step_per_pair_meV"],
             results["static_probe"]["gpmlip_max_abs_step_per_pair_meV"])
    return model


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
            "runs": [], "dt_study": [],
        }
    potentials = list(dict.fromkeys(args.potentials))
    if args.no_emt and "emt" in potentials:
        potentials.remove("emt")
    model = None
    if "gpmlip" in potentials or "settings" not in results:
        model = _prepare_model(args, a0, results)
    reach = results["settings"]["descriptor_reach_A"]

    if "gap" in potentials:
        gap_xml, gap_reason = find_gap()
        results["gap"] = {"run": gap_xml is not None, "reason": gap_reason, "xml": gap_xml}
        log.info("GAP: %s", "running " + gap_xml if gap_xml else "skipped (" + gap_reason + ")")
        if gap_xml is None:
            potentials.remove("gap")

    def do_run(kind, temp, dt, time_ps):
        seed = args.seed + 1000 + int(temp)
        if kind == "gap":
            return run_gap_subprocess(results["gap"]["xml"], a0, args, temp, dt, time_ps, seed,
                                      reach, args.workdir)
        return run_nve(kind, a0, args.repeat, temp, dt, time_ps, seed, reach, model=model)

    def store(table: str, row: dict) -> None:
        key = (row["potential"], row["temperature_K"], row.get("dt_fs"))
        results[table] = [r for r in results[table]
                          if (r["potential"], r["temperature_K"], r.get("dt_fs")) != key]
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
            store("runs", analyse(run, args.jump_factor))

    for dt in args.dt_study:
        for kind in potentials:
            temp = args.dt_study_temperature
            main_run = raw.get((kind, temp))
            steps = int(round(args.dt_study_ps * 1000 / dt))
            if dt == args.dt_fs and main_run is not None and main_run["n_steps"] >= steps:
                row = analyse(main_run, args.jump_factor, upto_steps=steps)
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
            store("dt_study", analyse(run, args.jump_factor))

    order = {"gpmlip": 0, "emt": 1, "gap": 2}
    for table in ("runs", "dt_study"):
        results[table].sort(key=lambda r: (r["temperature_K"], r.get("dt_fs") or 0,
                                           order.get(r["potential"], 9)))
    results["environment"]["loadavg_end"] = os.getloadavg()
    results["total_minutes"] = results.get("total_minutes", 0.0) + (
        time.perf_counter() - t_start) / 60
    results["table"] = markdown(results)
    write_json(args.json, results)
    print(results["table"])
    return results


if __name__ == "__main__":
    main()
