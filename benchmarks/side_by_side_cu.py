"""Side-by-side benchmark of GAP, FLARE and gpmlip on EMT-labelled, rattled and strained fcc Cu.

What is measured
----------------
All three codes are trained on the same frames and tested on the same held-out frames, in one run:

* **fit time**: wall time of training (descriptors, sparse-point selection, kernel matrices and
  solve; FLARE's hyper-parameter optimisation only with ``--flare-optimise N``), and its CPU time
  (user + system, threads and reaped worker processes included), which other jobs on the machine
  hardly change: compare wall times only from a quiet machine (the load average is recorded).
* **peak memory**: ``ru_maxrss`` of the process that fits (GAP: the ``gap_fit`` child; FLARE and
  gpmlip: their own process, plus any reaped worker processes).  Every code runs in its own
  subprocess, so the number is its own.  gpmlip's parallel Jacobians live in ``/dev/shm``, which
  no RSS sees (reported by ``benchmarks/descriptors.py`` separately).
* **accuracy** on the held-out frames: force RMSE over all components (meV/Å), energy MAE
  (meV/atom) and stress RMSE (meV/Å³).
* **prediction time** per atom per MD-like step: the median over ``--n-repeat`` calls of energy
  and forces for one 108-atom cell, with freshly displaced positions before every call so nothing
  is cached.  GAP: quippy ``Potential`` as an ASE calculator; FLARE: descriptor plus
  ``SparseGP.predict_mean`` (mean only; the time with FLARE's SOR variances is reported too);
  gpmlip: ``GPCalculator``, which always returns local-energy variances as well.
* **gpmlip floor**: ``gpmlip.SOAP(...).describe(atoms, gradients=True)`` alone, per atom per step:
  what any gpmlip prediction of forces costs before the model is touched.

Data: 108-atom fcc Cu cells (``bulk('Cu', 'fcc', a=3.61, cubic=True).repeat(3)``) with random
cell strain (isotropic up to 0.5 % plus symmetric anisotropic up to 0.5 % per component, so stresses
vary) and Gaussian displacements whose standard deviation runs from 0.05 to 0.15 Å across the set
(roughly 300-1200 K thermal amplitudes), labelled with ASE's EMT.  Training and test frames come from
separate deterministic random streams, written as extxyz under ``--workdir``.

Common settings (the same nominal values wherever the codes' parameterisations allow):

* SOAP n_max=8, l_max=6, r_cut=5.0 Å, atom_sigma=0.5 Å (FLARE: B2 with n_max=8, l_max=6, Chebyshev
  radial basis, quadratic cutoff at 5.0 Å: FLARE has no Gaussian-density SOAP).
* Normalised dot-product kernel, zeta=4 (FLARE ``NormalizedDotProduct`` power 4), signal std
  (GAP ``delta``) 1 eV; 500 sparse environments (GAP: CUR; gpmlip: CUR; FLARE: the same number of
  randomly chosen atoms per training frame, seeded, as FLARE has no CUR).
* Noise: energy 1 meV/atom scaled by sqrt(N_atoms) per structure (GAP's ``sigma_per_atom``
  convention and gpmlip's; FLARE's sigma_e is absolute, so it is given 1 meV x sqrt(108)); forces
  50 meV/Å; stress 1 meV/Å³ (GAP: as a virial sigma of 1 meV/Å³ x V0).  EMT labels are noise-free,
  so these are regularisers: forces dominate the fit, as in practice.
* e0 = the mean energy per atom of the training frames for every code (GAP's ``e0_method=average``
  made explicit).
* GAP alone also gets a two-body term (``distance_2b``, cutoff 5 Å, delta 0.5 eV, 15 uniform
  sparse points), "soap+2b" as in the issue; ``--gap-no-2b`` drops it.

Usage::

    /work/peers-venv/bin/python benchmarks/side_by_side_cu.py                  # all three codes
    /work/peers-venv/bin/python benchmarks/side_by_side_cu.py --only gap --json gap.json
    /work/peers-venv/bin/python benchmarks/side_by_side_cu.py --reuse /work/peer_results
    python benchmarks/side_by_side_cu.py --n-train 10 --n-sparse 50             # quick check

A peer that is not installed is skipped with a message; gpmlip alone still runs.  ``--reuse DIR``
takes ``DIR/gap.json`` and ``DIR/flare.json`` from an earlier run on the same data and settings
instead of refitting (GAP takes ~13 minutes and ~9 GB here); reused rows are marked as such.

Notes on this environment: FLARE 1.4.0 pins numpy<1.23 and ase==3.22 but runs here with numpy 2 and
ase 3.2x; this script only uses its C++ bindings (``flare.bffs.sgp._C_flare``), none of the old
Python code paths.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

log = logging.getLogger("side_by_side_cu")

CODES = ("gap", "flare", "gpmlip")

# Common model settings (see the module docstring).
R_CUT = 5.0
N_MAX = 8
L_MAX = 6
ATOM_SIGMA = 0.5
ZETA = 4
SIGNAL_STD = 1.0  # eV
SIGMA_E = 0.001  # eV/atom, scaled by sqrt(N_atoms)
SIGMA_F = 0.05  # eV/Å
SIGMA_S = 0.001  # eV/Å³
GAP_2B = "distance_2b cutoff=5.0 covariance_type=ard_se delta=0.5 theta_uniform=1.0 " \
         "sparse_method=uniform n_sparse=15 add_species=T"

# Data.
LATTICE = 3.61
REPEAT = 3
AMPLITUDES = (0.05, 0.15)  # Å, std of the Gaussian displacements
STRAIN_ISO = 0.005
STRAIN_ANISO = 0.005


# -- data ------------------------------------------------------------------------------------
def make_frames(n: int, rng: np.random.Generator) -> list:
    """``n`` rattled and strained 108-atom Cu cells with EMT energy, forces and stress."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    base = bulk("Cu", "fcc", a=LATTICE, cubic=True).repeat(REPEAT)
    frames = []
    for amp in np.linspace(*AMPLITUDES, n) if n > 1 else [np.mean(AMPLITUDES)]:
        atoms = base.copy()
        aniso = rng.uniform(-STRAIN_ANISO, STRAIN_ANISO, (3, 3))
        eps = rng.uniform(-STRAIN_ISO, STRAIN_ISO) * np.eye(3) + 0.5 * (aniso + aniso.T)
        atoms.set_cell(base.cell.array @ (np.eye(3) + eps), scale_atoms=True)
        atoms.positions += rng.normal(0.0, amp, atoms.positions.shape)
        atoms.calc = EMT()
        results = dict(energy=atoms.get_potential_energy(), forces=atoms.get_forces(),
                       stress=atoms.get_stress())
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info["rattle_std"] = float(amp)
        frames.append(atoms)
    return frames


def data_key(args) -> dict:
    """What identifies the data set (used to name files and to check reused results)."""
    return {"n_train": args.n_train, "n_test": args.n_test, "seed": args.seed}


def ensure_data(args) -> dict:
    """Write train/test extxyz files once (atomically) and return their paths and e0."""
    from ase.io import write

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tag = f"n{args.n_train}_t{args.n_test}_s{args.seed}"
    paths = {"train": workdir / f"train_{tag}.xyz", "test": workdir / f"test_{tag}.xyz",
             "meta": workdir / f"meta_{tag}.json"}
    if not paths["meta"].exists():
        t = time.perf_counter()
        train = make_frames(args.n_train, np.random.default_rng([args.seed, 0]))
        test = make_frames(args.n_test, np.random.default_rng([args.seed, 1]))
        for name, frames in (("train", train), ("test", test)):
            tmp = paths[name].with_suffix(".tmp.xyz")
            write(tmp, frames, format="extxyz")
            os.replace(tmp, paths[name])
        e0 = float(np.mean([a.get_potential_energy() / len(a) for a in train]))
        meta = {**data_key(args), "e0_Cu": e0, "n_atoms": len(train[0]),
                "volume0": float((LATTICE * REPEAT) ** 3)}
        tmp = paths["meta"].with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, paths["meta"])
        log.info("wrote %d train + %d test frames to %s (%.1f s)", args.n_train, args.n_test,
                 workdir, time.perf_counter() - t)
    meta = json.loads(paths["meta"].read_text())
    return {**meta, "train": str(paths["train"]), "test": str(paths["test"])}


def read_frames(path: str) -> list:
    from ase.io import read

    return read(path, index=":", format="extxyz")


# -- measurement helpers ---------------------------------------------------------------------
def errors(predicted: list[dict], reference: list) -> dict:
    """Force RMSE (meV/Å), energy MAE (meV/atom), stress RMSE (meV/Å³) over the test frames."""
    df = np.concatenate([(p["forces"] - r.get_forces()).ravel()
                         for p, r in zip(predicted, reference)])
    de = np.array([(p["energy"] - r.get_potential_energy()) / len(r)
                   for p, r in zip(predicted, reference)])
    ds = np.concatenate([p["stress"] - r.get_stress() for p, r in zip(predicted, reference)
                         if p.get("stress") is not None])
    return {"force_rmse_meV_A": 1e3 * float(np.sqrt(np.mean(df ** 2))),
            "energy_mae_meV_atom": 1e3 * float(np.mean(np.abs(de))),
            "stress_rmse_meV_A3": 1e3 * float(np.sqrt(np.mean(ds ** 2))) if len(ds) else None}


def time_steps(atoms, step, n_repeat: int, seed: int = 1, *, budget_s: float | None = None,
               n_min: int = 3) -> dict:
    """Median and best time of ``step(atoms)``, with fresh positions before every call.

    The first call is a warm-up, timed on its own (``first_call_s``).  With ``budget_s``, timed
    calls stop once they have taken that long, after at least ``n_min`` of them.
    """
    rng = np.random.default_rng(seed)
    base = atoms.positions.copy()
    t = time.perf_counter()
    step(atoms)  # warm-up
    first = time.perf_counter() - t
    times = []
    for _ in range(n_repeat):
        atoms.positions = base + rng.normal(0.0, 0.01, base.shape)
        t = time.perf_counter()
        step(atoms)
        times.append(time.perf_counter() - t)
        if budget_s is not None and len(times) >= n_min and sum(times) > budget_s:
            break
    atoms.positions = base
    n = len(atoms)
    return {"ms_per_atom": 1e3 * float(np.median(times)) / n, "best_ms_per_atom": 1e3 * min(times) / n,
            "first_call_s": first, "n_calls": len(times),
            "predict_loadavg_1min": os.getloadavg()[0]}


def peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def cpu_s(*who: int) -> float:
    """User + system CPU seconds of this process and/or its reaped children."""
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, who))


class Clock:
    """Wall and CPU time of a block, and the load average around it (other jobs on the machine
    inflate wall time but hardly CPU time, so both are reported)."""

    def __init__(self, *who: int) -> None:
        self.who = who

    def __enter__(self) -> Clock:
        self.load = [os.getloadavg()[0]]
        self.cpu0, self.t0 = cpu_s(*self.who), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.t0
        self.cpu = cpu_s(*self.who) - self.cpu0
        self.load.append(os.getloadavg()[0])

    def as_dict(self) -> dict:
        return {"fit_s": self.wall, "fit_cpu_s": self.cpu, "loadavg_1min": self.load}


def predict_all(frames, predict) -> list[dict]:
    return [predict(a.copy()) for a in frames]


def from_calculator(calc):
    """``predict`` function for an ASE calculator."""
    def predict(atoms):
        atoms.calc = calc
        return {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
                "stress": atoms.get_stress()}
    return predict


# -- GAP -------------------------------------------------------------------------------------
def gap_fit_binary() -> str | None:
    """The compiled ``gap_fit`` shipped in quippy (the ``bin/gap_fit`` script only wraps it)."""
    try:
        import quippy
    except ImportError:
        return None
    path = Path(quippy.__path__[0]) / "gap_fit"
    return str(path) if path.exists() else None


def gap_fit_command(binary: str, data: dict, xml, n_sparse: int, *, two_body: bool = True):
    """The ``gap_fit`` command for the common settings: ``(cmd, gap string, default_sigma)``.

    ``data`` is what :func:`ensure_data` returns (train file, e0, atoms per frame, volume).
    """
    n_atoms, volume = data["n_atoms"], data["volume0"]
    soap = (f"soap n_max={N_MAX} l_max={L_MAX} cutoff={R_CUT} atom_sigma={ATOM_SIGMA} zeta={ZETA} "
            f"delta={SIGNAL_STD} covariance_type=dot_product n_sparse={n_sparse} "
            "sparse_method=cur_points add_species=T")
    gap = f"{GAP_2B} : {soap}" if two_body else soap
    # Absolute sigmas (sigma_per_atom=F): every frame has the same atom count and a volume within
    # 3 % of V0, so this equals GAP's per-atom convention and gpmlip's settings.
    sigmas = (float(SIGMA_E * np.sqrt(n_atoms)), SIGMA_F, SIGMA_S * volume, 0.0)
    cmd = [binary, f"at_file={data['train']}", f"gap={{{gap}}}", f"gp_file={xml}",
           f"e0={{Cu:{data['e0_Cu']:.10g}}}", "default_sigma={%.10g %.10g %.10g %.10g}" % sigmas,
           "sigma_per_atom=F", "energy_parameter_name=energy", "force_parameter_name=forces",
           "stress_parameter_name=stress",
           "sparse_jitter=1e-8", "do_copy_at_file=F", "rnd_seed=1"]
    return cmd, gap, sigmas


def fit_gap(binary: str, data: dict, xml, n_sparse: int, *, two_body: bool = True):
    """Run ``gap_fit`` (log next to ``xml``); return ``(cmd, gap string, sigmas, Clock)``."""
    cmd, gap, sigmas = gap_fit_command(binary, data, xml, n_sparse, two_body=two_body)
    log.info("GAP: %s", " ".join(cmd))
    logfile = Path(xml).with_suffix(".log")
    with open(logfile, "w") as out, Clock(resource.RUSAGE_CHILDREN) as clock:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=Path(xml).parent,
                              check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"gap_fit exited with {proc.returncode}; see {logfile}")
    return cmd, gap, sigmas, clock


def run_gap(args, data: dict) -> dict:
    binary = gap_fit_binary()
    if binary is None:
        return {"status": "skipped", "reason": "quippy-ase (gap_fit) is not installed in "
                f"{sys.executable}; see /work/shared/anchors/install_peers.sh"}
    from quippy.potential import Potential

    xml = Path(args.workdir) / f"gap_{Path(data['train']).stem}_{args.n_sparse}.xml"
    cmd, gap, sigmas, clock = fit_gap(binary, data, xml, args.n_sparse, two_body=not args.gap_no_2b)
    fit_peak = peak_mb(resource.RUSAGE_CHILDREN)
    log.info("GAP fit %.1f s (%.1f s CPU), peak %.0f MB", clock.wall, clock.cpu, fit_peak)

    pot = Potential(param_filename=str(xml))
    test = read_frames(data["test"])
    result = errors(predict_all(test, from_calculator(pot)), test)
    atoms = test[0].copy()
    atoms.calc = pot
    result.update(time_steps(atoms, lambda a: (a.get_potential_energy(), a.get_forces()),
                             args.n_repeat))
    result.update(clock.as_dict(), peak_rss_mb=fit_peak,
                  predict_process_rss_mb=peak_mb(resource.RUSAGE_SELF),
                  settings={"gap": gap, "default_sigma": list(sigmas), "sigma_per_atom": False,
                            "e0": data["e0_Cu"], "command": cmd},
                  threads=os.environ.get("OMP_NUM_THREADS"))
    return result


# -- FLARE -----------------------------------------------------------------------------------
def flare_structure(atoms, b2):
    """FLARE's C++ ``Structure`` of a Cu-only ``atoms`` (FLARE's coded species 0)."""
    from flare.bffs.sgp._C_flare import Structure

    return Structure(atoms.cell.array, [0] * len(atoms), atoms.positions, R_CUT, [b2])


def flare_to_ase_stress(flare):
    """FLARE (xx, xy, xz, yy, yz, zz) -> ASE (xx, yy, zz, yz, xz, xy), opposite sign."""
    return -np.array([flare[0], flare[3], flare[5], flare[4], flare[2], flare[1]])


def fit_flare(train: list, n_sparse: int, seed: int, e0: float):
    """FLARE B2 sparse GP on ``train`` with the common settings: ``(sgp, b2, kernel)``.

    Keep all three alive: the C++ ``SparseGP`` holds raw pointers to the kernel and descriptor.
    Sparse environments: ``n_sparse`` split evenly over the frames, atoms drawn with ``seed``
    (FLARE has no CUR).
    """
    from flare.bffs.sgp._C_flare import B2, NormalizedDotProduct, SparseGP

    def flare_stress(s):  # ASE (xx, yy, zz, yz, xz, xy) -> FLARE order, opposite sign
        return -np.array([s[0], s[5], s[4], s[1], s[3], s[2]])

    rng = np.random.default_rng(seed)
    per_frame = np.full(len(train), n_sparse // len(train))
    per_frame[: n_sparse % len(train)] += 1
    b2 = B2("chebyshev", "quadratic", [0.0, R_CUT], [], [1, N_MAX, L_MAX])  # 1 species
    kernel = NormalizedDotProduct(SIGNAL_STD, ZETA)
    sgp = SparseGP([kernel], SIGMA_E * np.sqrt(len(train[0])), SIGMA_F, SIGMA_S)
    for atoms, n_env in zip(train, per_frame):
        s = flare_structure(atoms, b2)
        s.energy = np.array([[atoms.get_potential_energy() - e0 * len(atoms)]])
        s.forces = atoms.get_forces().reshape(-1)
        s.stresses = flare_stress(atoms.get_stress())
        sgp.add_training_structure(s, [-1], 1.0, 1.0, 1.0)
        if n_env:
            chosen = rng.choice(len(atoms), n_env, replace=False)
            sgp.add_specific_environments(s, sorted(chosen.tolist()))
    sgp.update_matrices_QR()
    return sgp, b2, kernel


def run_flare(args, data: dict) -> dict:
    try:
        import flare.bffs.sgp._C_flare  # noqa: F401
    except ImportError as exc:
        return {"status": "skipped", "reason": f"FLARE (mir-flare) is not importable in "
                f"{sys.executable}: {exc}; see /work/shared/anchors/install_peers.sh"}

    train, test = read_frames(data["train"]), read_frames(data["test"])
    n_atoms = data["n_atoms"]
    e0 = data["e0_Cu"]
    with Clock(resource.RUSAGE_SELF) as clock:
        sgp, b2, kernel = fit_flare(train, args.n_sparse, args.seed, e0)
    log.info("FLARE fit %.1f s (%.1f s CPU)", clock.wall, clock.cpu)
    result = {}
    if args.flare_optimise:
        from flare.bffs.sgp.sparse_gp import optimize_hyperparameters

        t = time.perf_counter()
        optimize_hyperparameters(sgp, max_iterations=args.flare_optimise)
        result["optimise_s"] = time.perf_counter() - t
        result["optimised_hyperparameters"] = np.asarray(sgp.hyperparameters).tolist()
    fit_peak = peak_mb(resource.RUSAGE_SELF)

    def predict(atoms):
        s = flare_structure(atoms, b2)
        sgp.predict_mean(s)
        efs = np.asarray(s.mean_efs)
        return {"energy": efs[0] + e0 * len(atoms), "forces": efs[1:-6].reshape(-1, 3),
                "stress": flare_to_ase_stress(efs[-6:])}

    result.update(errors(predict_all(test, predict), test))
    atoms = test[0].copy()
    result.update(time_steps(atoms, predict, args.n_repeat))

    def predict_sor(atoms):
        s = flare_structure(atoms, b2)
        sgp.predict_SOR(s)

    result["ms_per_atom_with_variance"] = time_steps(atoms, predict_sor, args.n_repeat)["ms_per_atom"]
    result.update(clock.as_dict(), peak_rss_mb=fit_peak,
                  settings={"descriptor": f"B2 chebyshev quadratic cutoff={R_CUT} n_max={N_MAX} "
                                          f"l_max={L_MAX}",
                            "kernel": f"NormalizedDotProduct sigma={SIGNAL_STD} power={ZETA}",
                            "sigma_e_total": SIGMA_E * np.sqrt(n_atoms), "sigma_f": SIGMA_F,
                            "sigma_s": SIGMA_S, "sparse": "seeded random atoms, evenly per frame",
                            "e0": e0},
                  threads=os.environ.get("OMP_NUM_THREADS"))
    return result


# -- gpmlip ----------------------------------------------------------------------------------
def gpmlip_soap(n_jobs: int = 1):
    """gpmlip's SOAP with the common settings."""
    import gpmlip

    return gpmlip.SOAP(species=["Cu"], r_cut=R_CUT, n_max=N_MAX, l_max=L_MAX, sigma=ATOM_SIGMA,
                       n_jobs=n_jobs)


def gpmlip_model(desc, n_sparse: int, e0: float):
    """An unfitted ``gpmlip.SparseGP`` with the common settings (those its signature takes),
    and the settings it took."""
    import gpmlip

    wanted = dict(zeta=ZETA, n_sparse=n_sparse, sparse_method="cur", signal_std=SIGNAL_STD,
                  energy_sigma=SIGMA_E, force_sigma=SIGMA_F, stress_sigma=SIGMA_S,
                  e0={"Cu": e0})
    accepted = inspect.signature(gpmlip.SparseGP).parameters
    kwargs = {k: v for k, v in wanted.items() if k in accepted}
    if len(kwargs) < len(wanted):
        log.warning("gpmlip.SparseGP does not take %s; using its defaults",
                    sorted(set(wanted) - set(kwargs)))
    return gpmlip.SparseGP(desc, **kwargs), kwargs


def run_gpmlip(args, data: dict) -> dict:
    import gpmlip

    test = read_frames(data["test"])
    desc = gpmlip_soap(args.n_jobs)
    atoms = test[0].copy()
    floor = time_steps(atoms, lambda a: desc.describe(a, gradients=True), args.n_repeat)
    result = {"floor_ms_per_atom": floor["ms_per_atom"],
              "floor_best_ms_per_atom": floor["best_ms_per_atom"]}
    if not hasattr(gpmlip, "SparseGP") or not hasattr(gpmlip, "GPCalculator"):
        desc.close()
        return {**result, "status": "not available yet",
                "reason": "gpmlip.SparseGP / gpmlip.GPCalculator are not importable yet"}

    train = read_frames(data["train"])
    desc.close()  # so that the fit's CPU time includes its own (reaped) workers
    with Clock(resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) as clock:
        model, kwargs = gpmlip_model(desc, args.n_sparse, data["e0_Cu"])
        model.fit(train)
        desc.close()
    log.info("gpmlip fit %.1f s (%.1f s CPU)", clock.wall, clock.cpu)
    if args.gpmlip_optimise:
        t = time.perf_counter()
        hyper = model.optimise_hyperparameters()
        result["optimise_s"] = time.perf_counter() - t
        result["optimised_hyperparameters"] = hyper.values
    calc = gpmlip.GPCalculator(model)
    result.update(errors(predict_all(test, from_calculator(calc)), test))
    atoms.calc = calc
    result.update(time_steps(atoms, lambda a: (a.get_potential_energy(), a.get_forces()),
                             args.n_repeat))
    desc.close()  # reap the workers, so that RUSAGE_CHILDREN includes them
    result.update(clock.as_dict(), peak_rss_mb=max(peak_mb(resource.RUSAGE_SELF),
                                               peak_mb(resource.RUSAGE_CHILDREN)),
                  settings={k: v for k, v in kwargs.items()}, n_jobs=args.n_jobs,
                  threads=os.environ.get("OMP_NUM_THREADS"))
    return result


RUNNERS = {"gap": run_gap, "flare": run_flare, "gpmlip": run_gpmlip}


# -- driver ----------------------------------------------------------------------------------
def run_one(code: str, args) -> dict:
    """Run one code in this process and return its result row."""
    data = ensure_data(args)
    try:
        result = RUNNERS[code](args, data)
    except Exception as exc:  # a failing code is a row in the table, not a crash of the run
        log.error("%s failed:\n%s", code, traceback.format_exc())
        result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    result.setdefault("status", "ok")
    result.update(code=code, data={**data_key(args), "n_sparse": args.n_sparse},
                  python=sys.executable, when=time.strftime("%Y-%m-%d %H:%M:%S"))
    return result


def run_child(code: str, args) -> dict:
    out = Path(args.workdir) / f"{code}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, os.path.abspath(__file__), "--only", code, "--json", str(out),
           "--workdir", args.workdir, "--n-train", str(args.n_train), "--n-test",
           str(args.n_test), "--n-sparse", str(args.n_sparse), "--seed", str(args.seed),
           "--n-repeat", str(args.n_repeat), "--n-jobs", str(args.n_jobs),
           "--flare-optimise", str(args.flare_optimise)] + (["--gap-no-2b"] if args.gap_no_2b else [])
    cmd += ["--gpmlip-optimise"] if args.gpmlip_optimise else []
    log.info("running %s in a subprocess", code)
    proc = subprocess.run(cmd, check=False)
    if proc.returncode != 0 or not out.exists():
        return {"code": code, "status": "failed", "reason": f"subprocess exited with {proc.returncode}"}
    return json.loads(out.read_text())


def reused(code: str, args) -> dict | None:
    if not args.reuse:
        return None
    path = Path(args.reuse) / f"{code}.json"
    if not path.exists():
        return None
    row = json.loads(path.read_text())
    if row.get("data") != {**data_key(args), "n_sparse": args.n_sparse} or row.get("status") != "ok":
        log.warning("not reusing %s: different data/settings or not ok", path)
        return None
    log.info("reusing %s (measured %s)", path, row.get("when"))
    return {**row, "reused_from": str(path)}


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


COLUMNS = [  # key, column title, format, short name for the ratios
    ("fit_s", "fit s", ".1f", "fit time"),
    ("fit_cpu_s", "fit CPU s", ".1f", "fit CPU"),
    ("peak_rss_mb", "peak MB", ".0f", "peak memory"),
    ("force_rmse_meV_A", "F RMSE meV/Å", ".1f", "force RMSE"),
    ("energy_mae_meV_atom", "E MAE meV/at", ".2f", "energy MAE"),
    ("stress_rmse_meV_A3", "S RMSE meV/Å³", ".2f", "stress RMSE"),
    ("ms_per_atom", "predict ms/at", ".3f", "prediction time"),
]


def report(rows: dict[str, dict]) -> None:
    print(f"\nEMT Cu, 108 atoms/frame; SOAP n_max={N_MAX} l_max={L_MAX} r_cut={R_CUT} "
          f"zeta={ZETA}; {os.cpu_count()} cores\n")
    print(f"{'code':<8}" + "".join(f"{title:>14}" for _, title, _, _ in COLUMNS) + "  note")
    for code, row in rows.items():
        if row.get("status") != "ok":
            print(f"{code:<8}  {row.get('status')}: {row.get('reason', '')}")
            continue
        note = "reused " + row["when"] if "reused_from" in row else ""
        print(f"{code:<8}" + "".join(f"{fmt(row.get(k), f):>14}" for k, _, f, _ in COLUMNS) + f"  {note}")
    ours = rows.get("gpmlip", {})
    if "floor_ms_per_atom" in ours:
        print(f"\ngpmlip floor (SOAP describe with gradients, n_jobs={ours.get('n_jobs', '?')}): "
              f"{ours['floor_ms_per_atom']:.3f} ms/atom/step")
    if "flare" in rows and "ms_per_atom_with_variance" in rows["flare"]:
        print(f"FLARE prediction with SOR variances (its SGP_Calculator default): "
              f"{rows['flare']['ms_per_atom_with_variance']:.3f} ms/atom/step")
    if ours.get("status") != "ok":
        return
    for peer in ("gap", "flare"):
        row = rows.get(peer, {})
        if row.get("status") != "ok":
            continue
        ratios = [f"{name} {ours[k] / row[k]:.2f}" for k, _, _, name in COLUMNS
                  if ours.get(k) is not None and row.get(k)]
        print(f"gpmlip/{peer}: " + ", ".join(ratios))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/gpmlip_side_by_side",
                        help="scratch directory for data, models and per-code JSON")
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--n-test", type=int, default=20)
    parser.add_argument("--n-sparse", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-repeat", type=int, default=10, help="prediction timings per code")
    parser.add_argument("--n-jobs", type=int, default=2, help="gpmlip worker processes")
    parser.add_argument("--only", choices=CODES, help="run one code in this process")
    parser.add_argument("--skip", choices=CODES, action="append", default=[])
    parser.add_argument("--reuse", metavar="DIR", help="take <code>.json from DIR when it matches")
    parser.add_argument("--gap-no-2b", action="store_true", help="GAP with SOAP only")
    parser.add_argument("--flare-optimise", type=int, default=0, metavar="N",
                        help="also run N iterations of FLARE's hyper-parameter optimisation")
    parser.add_argument("--gpmlip-optimise", action="store_true",
                        help="gpmlip: maximise the log likelihood over sigmas after the fit")
    parser.add_argument("--json", help="write the result(s) to this file")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    args.workdir = os.path.abspath(args.workdir)

    if args.only:
        row = run_one(args.only, args)
        out = args.json or str(Path(args.workdir) / f"{args.only}.json")
        Path(out).write_text(json.dumps(row, indent=1, default=float))
        if args.json is None:
            print(json.dumps(row, indent=1, default=float))
        return

    ensure_data(args)
    rows = {}
    for code in CODES:
        if code in args.skip:
            continue
        rows[code] = reused(code, args) or run_child(code, args)
    report(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
