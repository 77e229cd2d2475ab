"""FLARE on-the-fly (OTF) learning on the shared EMT Cu task of ``benchmarks/otf_common.py``.

FLARE's own OTF driver (``flare.learners.otf.OTF``) runs Langevin MD of 108-atom fcc Cu at 800 K
(ASE ``Langevin``, 5 fs, friction 0.02 fs^-1; the same constructor arguments as
``otf_common.make_langevin``) with a sparse GP on the B2 descriptor, starting from an empty model:
the first frame is labelled by EMT (the "DFT") and ``--init-atoms`` of its environments seed the
sparse set.  Afterwards EMT is called whenever the largest predicted uncertainty exceeds the
threshold set by ``--std-tolerance`` (FLARE's ``std_tolerance_factor``: negative = absolute
threshold on the uncertainty, positive = multiple of the force-noise hyperparameter), and every
atom whose uncertainty exceeds ``--update-threshold`` joins the sparse set.

Measured: EMT calls, final sparse-set size, wall and CPU time of the OTF run split into SGP
prediction, EMT, model update and hyper-parameter training, then the final model's force RMSE and
MAE on ``otf_common.heldout_frames()`` (800 K and 1200 K) and how well FLARE's uncertainties rank
and bound the actual force errors there:

* ``local``: FLARE's normalised local-energy std per atom (what OTF thresholds with
  ``variance_type="local"``), ranked (Spearman) against the per-atom force-error norm;
* ``sor`` / ``dtc``: FLARE's SOR and DTC force std per Cartesian component (eV/Å, epistemic, no
  noise term; same final model with ``variance_type`` switched), ranked against |error| per
  component and per atom (norms), plus the fraction of components whose |error| exceeds 2 std,
  with and without the force-noise hyperparameter added in quadrature.  DTC costs ~15-20 s per
  frame here, so only ``--n-dtc-per-t`` frames per temperature get it.

Empty start: FLARE labels the first frame (the perfect crystal) and puts ``--init-atoms`` of its
(identical) environments in the sparse set.  One sparse environment gives NaN predictions about
half the time in this FLARE build and all 108 segfault; training hyper-parameters on that frame
(zero forces) drives the force noise to ~0, hence ``--train-hyps 2,inf`` by default.  The Python
kernel object must stay alive as long as the C++ SparseGP (it keeps a raw pointer).

Every run is appended to the ``runs`` list of ``--out`` (JSON).  FLARE writes its log files into
the working directory, so each run happens in a fresh directory under /tmp.

Usage (from /work/main)::

    /work/peers-venv/bin/python benchmarks/otf_flare.py --steps 500
    /work/peers-venv/bin/python benchmarks/otf_flare.py --steps 2000
    /work/peers-venv/bin/python benchmarks/otf_flare.py --steps 2000 --std-tolerance -0.005 \\
        --update-threshold 0.0025 --label tight
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import otf_common as common  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=2000, help="MD steps of the OTF run")
    p.add_argument("--std-tolerance", type=float, default=-0.01,
                   help="FLARE std_tolerance_factor (<0: absolute threshold on the normalised "
                        "local std; >0: multiple of the force noise)")
    p.add_argument("--update-threshold", type=float, default=0.005,
                   help="atoms with uncertainty above this join the sparse set at an EMT call")
    p.add_argument("--min-steps-with-model", type=int, default=0,
                   help="minimum MD steps between EMT calls")
    p.add_argument("--train-hyps", type=str, default="2,inf",
                   help="FLARE train_hyps: optimise hyper-parameters while the EMT-call count "
                        "is in this inclusive range ('inf' allowed)")
    p.add_argument("--max-iterations", type=int, default=20, help="L-BFGS-B iterations per training")
    p.add_argument("--init-atoms", type=int, default=4,
                   help="environments of the first (perfect-crystal) frame put in the sparse set "
                        "(all identical there; FLARE's example uses 4; 1 gives NaN predictions "
                        "about half the time and all 108 segfault in this build)")
    p.add_argument("--variance-type", choices=["local", "DTC", "SOR"], default="local")
    p.add_argument("--force-only", action="store_true",
                   help="train on forces only (default: energies, forces and stresses)")
    p.add_argument("--cutoff", type=float, default=5.0)
    p.add_argument("--n-max", type=int, default=8)
    p.add_argument("--l-max", type=int, default=3)
    p.add_argument("--sigma", type=float, default=2.0, help="initial signal std (eV)")
    p.add_argument("--power", type=int, default=2, help="NormalizedDotProduct power")
    p.add_argument("--sigma-e-per-atom", type=float, default=0.001,
                   help="energy noise per atom (eV); FLARE's sigma_e is this x N_atoms")
    p.add_argument("--sigma-f", type=float, default=0.05, help="force noise (eV/Å)")
    p.add_argument("--sigma-s", type=float, default=0.0006, help="stress noise (eV/Å^3)")
    p.add_argument("--n-dtc-per-t", type=int, default=2,
                   help="held-out frames per temperature that also get DTC force stds (slow)")
    p.add_argument("--seed", type=int, default=0, help="velocity / thermostat seed (otf_common)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for FLARE's C++")
    p.add_argument("--label", type=str, default=None, help="run label in the JSON")
    p.add_argument("--out", type=Path, default=Path("/work/peer_results/flare_otf.json"))
    p.add_argument("--keep-workdir", action="store_true", help="keep FLARE's files under /tmp")
    return p.parse_args(argv)


def cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def build_model(args: argparse.Namespace, n_atoms: int):
    """Return FLARE's ``SGP_Calculator`` around an empty ``SGP_Wrapper`` (settings from ``args``),
    and the kernel list, which the caller must keep alive: the C++ ``SparseGP`` holds only a raw
    pointer to the kernel and segfaults once Python frees it."""
    from flare.bffs.sgp import SGP_Wrapper
    from flare.bffs.sgp._C_flare import B2, NormalizedDotProduct
    from flare.bffs.sgp.calculator import SGP_Calculator

    descriptor = B2("chebyshev", "quadratic", [0.0, args.cutoff], [], [1, args.n_max, args.l_max])
    sigma_e = args.sigma_e_per_atom * n_atoms
    kernels = [NormalizedDotProduct(args.sigma, args.power)]
    gp = SGP_Wrapper(kernels, [descriptor], args.cutoff,
                     sigma_e, args.sigma_f, args.sigma_s, species_map={29: 0},
                     variance_type=args.variance_type, stress_training=not args.force_only,
                     energy_training=not args.force_only, opt_method="L-BFGS-B",
                     bounds=[(None, None), (sigma_e, None), (None, None), (None, None)],
                     max_iterations=args.max_iterations)
    return SGP_Calculator(gp), kernels


def make_timed_otf_class():
    """Subclass FLARE's OTF so that each phase's wall and CPU time is accumulated precisely
    (FLARE's own log rounds every entry to 10 ms) and each EMT call is recorded."""
    from flare.bffs.sgp.calculator import SGP_Calculator
    from flare.learners.otf import OTF

    class TimedOTF(OTF):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.timers: dict[str, list[float]] = {}
            self.dft_log: list[dict] = []
            self.hyps_log: list[dict] = []
            self.temperatures: list[float] = []

        def _timed(self, name, fn, *a, **kw):
            w, c = time.perf_counter(), cpu_seconds()
            try:
                return fn(*a, **kw)
            finally:
                t = self.timers.setdefault(name, [0.0, 0.0, 0])
                t[0] += time.perf_counter() - w
                t[1] += cpu_seconds() - c
                t[2] += 1

        def md_step(self):
            self._timed("md_step", super().md_step)
            self.temperatures.append(float(self.atoms.get_temperature()))

        def compute_properties(self):
            self._timed("compute_properties", super().compute_properties)

        def run_dft(self):
            calc = self.atoms.calc
            gp_res = dict(calc.results) if isinstance(calc, SGP_Calculator) else {}
            self._timed("emt", super().run_dft)
            entry = {"step": int(self.curr_step), "n_sparse_before": int(self.gp.sparse_gp.n_sparse)}
            if "forces" in gp_res:
                err = gp_res["forces"] - self.atoms.get_forces()
                entry["model_force_rmse_meV_A"] = float(np.sqrt(np.mean(err**2)) * 1e3)
                entry["max_std"] = float(np.max(gp_res["stds"]))
            self.dft_log.append(entry)

        def update_gp(self, *a, **kw):
            self._timed("update_gp_incl_train", super().update_gp, *a, **kw)
            self.dft_log[-1]["n_sparse_after"] = int(self.gp.sparse_gp.n_sparse)

        def train_gp(self):
            self._timed("train_hyps", super().train_gp)
            self.hyps_log.append({"dft_call": int(self.dft_count),
                                  "hyps": [float(h) for h in self.gp.hyps],
                                  "log_likelihood": float(self.gp.likelihood)})

    return TimedOTF


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr
    return float(spearmanr(np.ravel(a), np.ravel(b)).statistic)


def evaluate(calc, frames: list, n_dtc_per_t: int) -> dict:
    """Force errors and uncertainty quality of the final model on the held-out frames.

    Every frame gets the mean forces, the normalised local-energy std per atom (``local``) and
    the SOR force std per component; the first ``n_dtc_per_t`` frames of each temperature also
    get the DTC force std (FLARE's DTC builds the full force-force prior covariance of the
    frame, ~15-20 s per 108-atom frame here, so it is subsampled).
    """
    gp = calc.gp_model
    otf_variance = gp.variance_type
    temps = np.array([f.info["temperature_K"] for f in frames])
    preds, local_std, sor_std, dtc_std, t_pred, t_dtc = [], [], [], [], 0.0, 0.0
    for i, frame in enumerate(frames):
        atoms = frame.copy()
        gp.variance_type = "local"
        t0 = time.perf_counter()
        calc.calculate(atoms)
        t_pred += time.perf_counter() - t0
        preds.append(np.array(calc.results["forces"]))
        local_std.append(np.array(calc.results["stds"][:, 0]))
        gp.variance_type = "SOR"
        calc.calculate(atoms)
        sor_std.append(np.array(calc.results["stds"]))
        dtc = None
        if np.sum(temps[:i] == temps[i]) < n_dtc_per_t:
            gp.variance_type = "DTC"
            t0 = time.perf_counter()
            calc.calculate(atoms)
            t_dtc += time.perf_counter() - t0
            dtc = np.array(calc.results["stds"])
        dtc_std.append(dtc)
    gp.variance_type = otf_variance
    n_dtc = sum(d is not None for d in dtc_std)
    out = {"force_errors": common.force_errors(preds, frames),
           "predict_s_per_frame_local_variance": t_pred / len(frames),
           "predict_s_per_frame_dtc": t_dtc / max(n_dtc, 1), "n_dtc_frames": n_dtc}
    sigma_f = abs(float(gp.force_noise))

    def component_stats(err: np.ndarray, std: np.ndarray, name: str) -> dict:
        n_neg = int(np.sum(std < 0))
        std = np.abs(std)  # FLARE reports a negative variance as -sqrt(|var|)
        abs_err, atom_err = np.abs(err), np.linalg.norm(err, axis=-1)
        return {
            f"spearman_{name}_std_vs_abs_error_per_component": spearman(std, abs_err),
            f"spearman_{name}_std_norm_vs_atom_error_norm": spearman(np.linalg.norm(std, axis=-1), atom_err),
            f"frac_components_error_gt_2_{name}_std": float(np.mean(abs_err > 2 * std)),
            f"frac_components_error_gt_2_{name}_std_plus_noise": float(
                np.mean(abs_err > 2 * np.sqrt(std**2 + sigma_f**2))),
            f"rms_{name}_std_meV_A": float(np.sqrt(np.mean(std**2)) * 1e3),
            f"n_negative_{name}_variances": n_neg,
        }

    def uq(sel: np.ndarray) -> dict:
        idx = np.flatnonzero(sel)
        err = np.stack([preds[i] - frames[i].get_forces() for i in idx])
        ls = np.stack([local_std[i] for i in idx])
        res = {"spearman_local_std_vs_atom_error_norm": spearman(ls, np.linalg.norm(err, axis=-1)),
               "mean_local_std": float(np.mean(ls)),
               "rmse_meV_A": float(np.sqrt(np.mean(err**2)) * 1e3)}
        res |= component_stats(err, np.stack([sor_std[i] for i in idx]), "sor")
        didx = [k for k, i in enumerate(idx) if dtc_std[i] is not None]
        if didx:
            res |= component_stats(err[didx], np.stack([dtc_std[idx[k]] for k in didx]), "dtc")
            res["dtc_subset_rmse_meV_A"] = float(np.sqrt(np.mean(err[didx] ** 2)) * 1e3)
        return res

    out["uncertainty"] = {"overall": uq(np.ones(len(frames), bool))}
    for t in sorted(set(temps)):
        out["uncertainty"][f"{t:g}"] = uq(temps == t)
    out["force_noise_meV_A"] = sigma_f * 1e3
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before FLARE's C++ extension loads
    from ase import units
    from ase.calculators.emt import EMT

    lo, hi = (x.strip() for x in args.train_hyps.split(","))
    train_hyps = (int(lo), np.inf if hi == "inf" else int(hi))
    frames = common.heldout_frames()  # generate/cache before timing anything
    atoms = common.initial_atoms(seed=args.seed)
    calc, kernels = build_model(args, len(atoms))  # noqa: F841 (kernels: keep-alive)
    otf_settings = dict(
        dt=common.TIMESTEP_FS / 1000.0,  # FLARE takes ps
        number_of_steps=args.steps, md_engine="Langevin",
        init_atoms=list(range(min(args.init_atoms, len(atoms)))),
        std_tolerance_factor=args.std_tolerance, update_style="threshold",
        update_threshold=args.update_threshold, max_atoms_added=-1, train_hyps=train_hyps,
        min_steps_with_model=args.min_steps_with_model, force_only=args.force_only,
        write_model=0, output_name="otf")
    md_kwargs = dict(temperature_K=common.TEMPERATURE_K, friction=common.FRICTION / units.fs,
                     rng=np.random.default_rng(args.seed + 1))  # as otf_common.make_langevin

    workdir = Path(tempfile.mkdtemp(prefix="flare_otf_", dir="/tmp"))
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        TimedOTF = make_timed_otf_class()
        otf = TimedOTF(atoms, dft_calc=EMT(), md_kwargs=md_kwargs, flare_calc=calc, **otf_settings)
        load0 = os.getloadavg()
        w0, c0 = time.perf_counter(), cpu_seconds()
        otf.run()
        wall, cpu = time.perf_counter() - w0, cpu_seconds() - c0
        load1 = os.getloadavg()
    finally:
        os.chdir(cwd)
    gp = calc.gp_model
    timers = {k: {"wall_s": v[0], "cpu_s": v[1], "calls": v[2]} for k, v in otf.timers.items()}
    train = timers.get("train_hyps", {"wall_s": 0.0, "cpu_s": 0.0})
    upd = timers.get("update_gp_incl_train", {"wall_s": 0.0, "cpu_s": 0.0})
    timers["update_gp_excl_train"] = {"wall_s": upd["wall_s"] - train["wall_s"],
                                      "cpu_s": upd["cpu_s"] - train["cpu_s"]}
    timers["md_step_note"] = ("md_step = SGP predictions (energy, forces, stress, stds; ASE's "
                              "Langevin asks for forces twice per step and SGP_Calculator always "
                              "recomputes) + Langevin integration")

    w0 = time.perf_counter()
    evaluation = evaluate(calc, frames, args.n_dtc_per_t)
    eval_wall = time.perf_counter() - w0
    hyps = [float(h) for h in gp.hyps]
    temps = np.array(otf.temperatures)
    fe = evaluation["force_errors"]
    run = {
        "label": args.label or f"steps{args.steps}_tol{args.std_tolerance:g}_upd{args.update_threshold:g}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).as_posix(), *sys.argv]),
        "task": {"n_atoms": len(atoms), "lattice_A": common.LATTICE, "temperature_K": common.TEMPERATURE_K,
                 "timestep_fs": common.TIMESTEP_FS, "friction_per_fs": common.FRICTION,
                 "seed": args.seed, "steps": args.steps, "labeller": "ase EMT",
                 "md": "FLARE OTF md_engine='Langevin' (ase.md.langevin.Langevin, fixcm=True default), "
                       "same dt/temperature/friction and rng seed+1 as otf_common.make_langevin",
                 "n_heldout": len(frames)},
        "flare": {
            "version": getattr(sys.modules.get("flare"), "__version__", None),
            "descriptor": {"type": "B2", "radial_basis": "chebyshev", "cutoff_function": "quadratic",
                           "cutoff_A": args.cutoff, "n_max": args.n_max, "l_max": args.l_max},
            "kernel": {"type": "NormalizedDotProduct", "power": args.power, "sigma_initial": args.sigma},
            "noise_initial": {"sigma_e": args.sigma_e_per_atom * len(atoms), "sigma_f": args.sigma_f,
                              "sigma_s": args.sigma_s},
            "variance_type": args.variance_type,
            "otf": {k: (v if not isinstance(v, tuple) else [str(x) for x in v]) for k, v in otf_settings.items()
                    if k != "init_atoms"} | {"n_init_atoms": len(otf_settings["init_atoms"])},
            "hyperparameter_training": {"train_hyps": [str(x) for x in train_hyps], "optimizer": "L-BFGS-B",
                                        "max_iterations": args.max_iterations,
                                        "n_trainings": len(otf.hyps_log), "history": otf.hyps_log},
            "final_hyps": {"sigma": hyps[0], "sigma_e": hyps[1], "sigma_f": hyps[2], "sigma_s": hyps[3]},
            "threads": args.threads,
        },
        "results": {
            "dft_calls": int(otf.dft_count), "dft_steps": [int(s) for s in otf.dft_frames],
            "sparse_size": int(gp.sparse_gp.n_sparse), "n_training_structures": len(gp.training_data),
            "n_labels": int(gp.sparse_gp.n_labels),
            "otf_wall_s": wall, "otf_cpu_s": cpu, "time_split": timers,
            "loadavg_before": load0, "loadavg_after": load1,
            "md_temperature_K": {"mean": float(temps.mean()), "min": float(temps.min()),
                                 "max": float(temps.max()),
                                 "mean_last_half": float(temps[len(temps) // 2:].mean())},
            "dft_log": otf.dft_log,
            "heldout": evaluation, "eval_wall_s": eval_wall,
            "rmse_meV_A": fe["overall"]["rmse_meV_A"], "mae_meV_A": fe["overall"]["mae_meV_A"],
            "rmse_800K_meV_A": fe["per_temperature"]["800"]["rmse_meV_A"],
            "rmse_1200K_meV_A": fe["per_temperature"]["1200"]["rmse_meV_A"],
        },
        "host": {"python": platform.python_version(), "nproc": os.cpu_count()},
        "workdir": str(workdir),
    }
    if not args.keep_workdir:
        shutil.rmtree(workdir, ignore_errors=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    doc.setdefault("runs", []).append(run)
    doc["description"] = ("FLARE (mir-flare 1.4.0) OTF on the otf_common EMT Cu task; "
                          "one entry per run of benchmarks/otf_flare.py")
    args.out.write_text(json.dumps(doc, indent=1, default=float))

    r, u = run["results"], evaluation["uncertainty"]["overall"]
    print(common.summary_table([{
        "run": run["label"], "EMT calls": r["dft_calls"], "sparse": r["sparse_size"],
        "wall s": wall, "cpu s": cpu, "RMSE": r["rmse_meV_A"], "RMSE 800": r["rmse_800K_meV_A"],
        "RMSE 1200": r["rmse_1200K_meV_A"], "MAE": r["mae_meV_A"],
        "rho local/atom": u["spearman_local_std_vs_atom_error_norm"],
        "rho SOR/comp": u["spearman_sor_std_vs_abs_error_per_component"],
        ">2 SOR std": u["frac_components_error_gt_2_sor_std"],
        "rho DTC/comp": u.get("spearman_dtc_std_vs_abs_error_per_component", float("nan")),
        ">2 DTC std": u.get("frac_components_error_gt_2_dtc_std", float("nan"))}]))
    print("final hyps (sigma, sigma_e, sigma_f, sigma_s):", hyps)
    return run


if __name__ == "__main__":
    main()
