"""Reproduce the GAP accuracy test of Zuo et al. (2020) for Mo, Si and Li with gpmlip.

What is measured
----------------
For every element a gpmlip :class:`~gpmlip.SparseGP` is fitted to the published training set and
evaluated on the published test set (``/work/shared/data/zuo2020/{El}_{train,test}.xyz``, VASP PBE,
from Y. Zuo et al., J. Phys. Chem. A 124, 731 (2020)), with the paper's GAP settings as far as
gpmlip expresses them:

* SOAP n_max=8, l_max=8, atom_sigma=0.5 Å; cutoff Mo 5.2 Å, Si 5.4 Å, Li 4.8 Å (dscribe GTO
  basis).  ``--weighting`` chooses the cutoff: ``smooth`` (default, the library default: dscribe's
  ``poly`` weighting with r0 = r_cut, m = 2, c = 1, the counterpart of GAP's smooth
  ``cutoff_transition_width``), ``hard`` (no weighting: dscribe's density cut at
  r_cut + 3.7 sigma) or ``r0=X,m=Y`` (a poly weighting; ``r0`` may be written ``rcut+0.5``).
* Normalised dot-product kernel, zeta=4, signal std (GAP ``delta``) 1 eV, jitter 1e-8.
* CUR sparse points: Mo 2000, Si 1000, Li 4000 (``--n-sparse`` overrides for every element).
* e0 per atom: Mo -4.04, Si -0.79, Li -0.21 eV (the paper's isolated-atom values).
* Fitted to energies and forces only (stresses dropped), unless ``--with-stress``.
* Noise: forces 0.05 eV/Å.  GAP's energy ``default_sigma`` of 0.01 eV is read as a total-energy
  noise per structure (as the brief for this benchmark states); gpmlip's ``energy_sigma`` is per
  atom and scaled by sqrt(N), so the default here is ``0.01 / sqrt(median N_train)`` eV/atom
  (about 1.3-1.4 meV/atom for these 53-64 atom cells).  ``--energy-sigma`` overrides it.  With
  ``--with-stress`` the stress noise is the library default (``stress_noise="per_atom"``,
  ``virial_sigma`` eV/atom, GAP's ``sigma_per_atom``; ``--virial-sigma`` overrides it), or with
  ``--stress-noise absolute`` ``--stress-sigma`` (default 0.001 eV/Å³ = 0.16 GPa).
* ``--loo``: after the fit, noise levels chosen by leave-one-structure-out error on energies and
  forces together (:func:`gpmlip.gp.validation.choose_noise`); test errors before and after.

Reported per element (each element is fitted in a fresh subprocess, so its peak memory is its own):

* train/test frames and atoms;
* test MAE and RMSE of the energy per atom (meV/atom; the predicted total energy, e0 included,
  against the DFT total energy, divided by the number of atoms) and of the forces (eV/Å, over all
  Cartesian components), with the published GAP MAE and the ratio gpmlip/GAP;
* fit time (s): wall time of ``model.fit`` (features, CUR selection, kernel rows with the SOAP
  Jacobians in 2 worker processes, solve); with ``--optimise`` the time of
  ``optimise_hyperparameters`` is reported separately and the test errors are given both before
  (paper sigmas) and after the optimisation;
* peak RSS (GB): ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the child at its end, and
  ``RUSAGE_CHILDREN`` of it (its reaped worker processes); gpmlip's shared-memory Jacobians in
  ``/dev/shm`` are seen by neither;
* prediction time per atom: wall time of ``model.predict`` (energy, forces, stress, local
  variances; the descriptor uses 2 processes) summed over the test set, divided by its atoms;
* calibration: the fraction of test force components with ``|error| < 2 std``, where std is the
  predicted force std (weight uncertainty only, ``force_std=True``) and also that std combined
  with the force noise (sqrt(std² + sigma_F²)); on ``--calibration-frames`` test frames;
* the machine load (``os.getloadavg``) before and after each fit: other jobs may share the 2 cores.

Usage::

    /work/main/.venv/bin/python benchmarks/zuo2020_accuracy.py --elements Mo Si Li \\
        --json benchmarks/results/zuo2020_accuracy.json
    # variants
    ... --optimise                # also maximise the log marginal likelihood (sigmas, delta)
    ... --with-stress             # fit stresses too
    ... --energy-sigma 0.01       # GAP's 0.01 read as per-atom (sigma_per_atom=T)
    ... --elements Mo --n-sparse 200    # quick check
    ... --weighting hard          # the hard cutoff of models before the smooth default
    ... --weighting r0=rcut+0.5,m=1   # another poly weighting (r0 absolute or rcut+X, in Å)
    ... --two-body                # add GAP's 2-body term (gpmlip.TwoBody defaults: r_cut = the
                                  # SOAP cutoff, sigma 0.5 eV, theta 1 Å, 20 sparse distances)
    ... --two-body sigma=1,n_sparse=30,r_cut=4,length_scale=0.8   # its settings
    ... --n-max 10 --l-max 8 --atom-sigma 0.4 --zeta 6 --w0 0     # other SOAP / kernel settings
    ... --e0 fit                  # gpmlip's default e0 for data without isolated atoms
    ... --force-sigma 0.03        # eV/Å
    ... --loo-screen              # leave-one-out MAE at the fitted levels (compares settings)
    ... --noise-from earlier.json # the noise levels an earlier --loo run chose

``benchmarks/zuo2020_select.py`` drives this script: settings chosen by leave-one-out on the
training data, then measured at the paper's sparse counts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cutoff_option import HELP as WEIGHTING_HELP  # noqa: E402
from cutoff_option import parse_weighting, weighting_label  # noqa: E402

from gpmlip.gp.selection import METHODS as SPARSE_METHODS  # noqa: E402

log = logging.getLogger("zuo2020")

DATA = Path("/work/shared/data/zuo2020")

PAPER = {
    # cutoff (Å), sparse points, e0 (eV), published GAP test MAE: energy (meV/atom), forces (eV/Å)
    "Mo": {"r_cut": 5.2, "n_sparse": 2000, "e0": -4.04, "gap_mae_e": 2.24, "gap_mae_f": 0.09},
    "Si": {"r_cut": 5.4, "n_sparse": 1000, "e0": -0.79, "gap_mae_e": 2.91, "gap_mae_f": 0.07},
    "Li": {"r_cut": 4.8, "n_sparse": 4000, "e0": -0.21, "gap_mae_e": 0.49, "gap_mae_f": 0.01},
}
GAP_ENERGY_SIGMA = 0.01   # eV per structure (paper's default_sigma)
FORCE_SIGMA = 0.05        # eV/Å


def _rss_gb(who) -> float:
    return resource.getrusage(who).ru_maxrss / 1024 ** 2     # ru_maxrss is in KiB on Linux


def _errors(pred_e, ref_e, n_atoms, pred_f, ref_f) -> dict:
    de = (np.asarray(pred_e) - np.asarray(ref_e)) / np.asarray(n_atoms)
    df = np.concatenate([(p - r).ravel() for p, r in zip(pred_f, ref_f)])
    return {"mae_e_mev_atom": 1e3 * float(np.mean(np.abs(de))),
            "rmse_e_mev_atom": 1e3 * float(np.sqrt(np.mean(de ** 2))),
            "mae_f_ev_a": float(np.mean(np.abs(df))),
            "rmse_f_ev_a": float(np.sqrt(np.mean(df ** 2)))}


def bootstrap_se(per_frame: dict, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Standard errors of the test MAEs from resampling the test frames with replacement: how
    much the means would move on another test set of this size (frames, not atoms, are the
    independent units; force MAE is over components, so frames weigh by their atoms)."""
    rng = np.random.default_rng(seed)
    n = np.asarray(per_frame["n_atoms"], float)
    e = np.asarray(per_frame["abs_e_mev_atom"])
    f = np.asarray(per_frame["sum_abs_f_ev_a"])
    idx = rng.integers(0, len(n), size=(n_resamples, len(n)))
    return {"mae_e_mev_atom": float(np.std(e[idx].mean(axis=1))),
            "mae_f_ev_a": float(np.std(f[idx].sum(axis=1) / (3 * n[idx].sum(axis=1))))}


def evaluate(model, test, calibration_frames: int, force_sigma: float) -> dict:
    """Test-set errors, per config_type too, prediction time and force calibration."""
    pred_e, pred_f, ref_e, ref_f, n_at, ctype, stress_err = [], [], [], [], [], [], []
    seconds = 0.0
    for frame in test:
        t = time.perf_counter()
        p = model.predict(frame.atoms)
        seconds += time.perf_counter() - t
        pred_e.append(p.energy)
        pred_f.append(p.forces)
        ref_e.append(frame.energy)
        ref_f.append(frame.forces)
        n_at.append(frame.n_atoms)
        ctype.append(frame.config_type)
        if frame.stress is not None and p.stress is not None:
            stress_err.append((p.stress - frame.stress).ravel()[[0, 4, 8, 5, 2, 1]])
    out = _errors(pred_e, ref_e, n_at, pred_f, ref_f)
    if stress_err:   # eV/Å³ -> GPa
        out["mae_stress_gpa"] = float(np.mean(np.abs(stress_err)) * 160.21766)
    out["per_config_type"] = {}
    for c in sorted(set(ctype)):
        idx = [i for i, x in enumerate(ctype) if x == c]
        out["per_config_type"][c] = {"frames": len(idx), **_errors(
            [pred_e[i] for i in idx], [ref_e[i] for i in idx], [n_at[i] for i in idx],
            [pred_f[i] for i in idx], [ref_f[i] for i in idx])}
    out["predict_ms_per_atom"] = 1e3 * seconds / sum(n_at)
    out["per_frame"] = {   # for bootstrap errors of the means (test frames resampled)
        "n_atoms": [int(n) for n in n_at],
        "abs_e_mev_atom": [1e3 * abs(p - r) / n for p, r, n in zip(pred_e, ref_e, n_at)],
        "sum_abs_f_ev_a": [float(np.abs(p - r).sum()) for p, r in zip(pred_f, ref_f)]}
    out["bootstrap_se"] = bootstrap_se(out["per_frame"])
    if calibration_frames:
        pick = np.unique(np.linspace(0, len(test) - 1, min(calibration_frames, len(test)))
                         .round().astype(int))
        err, std = [], []
        t = time.perf_counter()
        for i in pick:
            p = model.predict(test[i].atoms, stress=False, force_std=True)
            err.append(np.abs(p.forces - test[i].forces).ravel())
            std.append(p.force_std.ravel())
        err, std = np.concatenate(err), np.concatenate(std)
        out["calibration"] = {
            "frames": len(pick), "components": len(err),
            "seconds": time.perf_counter() - t,
            "frac_below_2std": float(np.mean(err < 2 * std)),
            "frac_below_2std_with_noise": float(
                np.mean(err < 2 * np.sqrt(std ** 2 + force_sigma ** 2))),
            "median_force_std": float(np.median(std)),
            "median_abs_error": float(np.median(err))}
    return out


def parse_two_body(text: str | None):
    """``--two-body`` as a :class:`gpmlip.TwoBody` (None when not given)."""
    if text is None:
        return None
    import gpmlip

    values = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        values[key.strip()] = int(value) if key.strip() == "n_sparse" else float(value)
    return gpmlip.TwoBody(**values)


def parse_second(text: str | None, args) -> dict | None:
    """``--second`` as the settings of a second SOAP joined to the first (None when not given)."""
    if text is None:
        return None
    values = {"n_max": args.n_max, "l_max": args.l_max, "sigma": args.atom_sigma, "weight": 1.0}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in ("r_cut", "n_max", "l_max", "sigma", "weight", "r0", "m"):
            raise SystemExit(f"--second: unknown key {key!r} (r_cut, n_max, l_max, sigma, "
                             "weight, r0, m)")
        values[key] = int(value) if key in ("n_max", "l_max") else float(value)
    if "r_cut" not in values:
        raise SystemExit("--second needs r_cut=...")
    return values


def build_descriptor(element: str, spec: dict, weighting, second: dict | None, args):
    """The SOAP of the element, or with ``second`` (:func:`parse_second`) two SOAPs side by side
    (gpmlip.Stacked)."""
    import gpmlip

    desc = gpmlip.SOAP(species=[element], r_cut=spec["r_cut"], n_max=args.n_max,
                       l_max=args.l_max, sigma=args.atom_sigma, weighting=weighting,
                       n_jobs=args.n_jobs)
    if second is None:
        return desc
    w2 = "smooth"
    if "r0" in second or "m" in second:
        w2 = {"function": "poly", "r0": second.get("r0", second["r_cut"]), "c": 1.0,
              "m": second.get("m", 2.0)}
    other = gpmlip.SOAP(species=[element], r_cut=second["r_cut"], n_max=second["n_max"],
                        l_max=second["l_max"], sigma=second["sigma"], weighting=w2,
                        n_jobs=args.n_jobs)
    return gpmlip.Stacked([desc, other], [1.0, second["weight"]], n_jobs=args.n_jobs)


def run_element(element: str, args) -> dict:
    """Fit and test one element (runs in the child process)."""
    import gpmlip

    spec = PAPER[element]
    train = list(gpmlip.load_frames(DATA / f"{element}_train.xyz", species=[element]))
    test = list(gpmlip.load_frames(DATA / f"{element}_test.xyz", species=[element]))
    if not args.with_stress:
        for f in train:
            f.stress = None
    n_sparse = args.n_sparse or spec["n_sparse"]
    median_n = float(np.median([f.n_atoms for f in train]))
    energy_sigma = float(args.energy_sigma or GAP_ENERGY_SIGMA / np.sqrt(median_n))
    force_sigma = args.force_sigma
    noise_source = None
    if args.noise_from:   # levels chosen by leave-one-out in an earlier (cheaper) run
        earlier = [r for r in json.loads(args.noise_from.read_text())["results"]
                   if r["element"] == element and "loo" in r]
        if not earlier:
            raise SystemExit(f"{args.noise_from} has no leave-one-out result for {element}")
        chosen, scale = earlier[0]["loo"]["noise"], earlier[0]["loo"]["calibration_scale"]
        # the calibration scaled signal and noise variances together: undo it for signal 1
        energy_sigma, force_sigma = (chosen[g] / np.sqrt(scale) for g in ("energy", "forces"))
        if "stress" in chosen and args.with_stress:
            args.virial_sigma = chosen["stress"] / np.sqrt(scale)
        noise_source = {"file": str(args.noise_from), "n_sparse": earlier[0]["n_sparse_points"],
                        "weighting": earlier[0]["settings"]["weighting"]}
    weighting = parse_weighting(args.weighting, spec["r_cut"])
    settings = {"r_cut": spec["r_cut"], "n_max": args.n_max, "l_max": args.l_max,
                "sigma": args.atom_sigma, "zeta": args.zeta,
                "weighting": weighting_label(weighting),
                "n_sparse": n_sparse, "sparse_method": args.sparse_method,
                "e0": spec["e0"] if args.e0 == "paper" else args.e0,
                "signal_std": 1.0, "energy_sigma_ev_atom": energy_sigma,
                "force_sigma": force_sigma, "noise_from": noise_source,
                "stress_sigma": args.stress_sigma if args.with_stress else None,
                "stress_noise": args.stress_noise, "virial_sigma": args.virial_sigma,
                "fitted_to": "energy+forces+stress" if args.with_stress else "energy+forces",
                "n_jobs": args.n_jobs}
    log.info("%s: %d train frames (%d atoms), %d test frames; settings %s", element, len(train),
             sum(f.n_atoms for f in train), len(test), settings)
    if args.w0 is not None:
        if weighting in (None, "smooth"):
            raise SystemExit("--w0 needs an explicit poly weighting: --weighting r0=X,m=Y")
        weighting = {**weighting, "w0": args.w0}
    settings["second"] = parse_second(args.second, args)
    desc = build_descriptor(element, spec, weighting, settings["second"], args)
    settings["soap"] = repr(desc)
    model = gpmlip.SparseGP(desc, zeta=args.zeta, n_sparse=n_sparse,
                            sparse_method=args.sparse_method,
                            e0={element: spec["e0"]} if args.e0 == "paper" else args.e0,
                            energy_sigma=energy_sigma,
                            force_sigma=force_sigma, stress_sigma=args.stress_sigma,
                            stress_noise=args.stress_noise,
                            **({"virial_sigma": args.virial_sigma} if args.virial_sigma else {}),
                            signal_std=1.0, jitter=1e-8,
                            two_body=parse_two_body(args.two_body))
    settings["two_body"] = None if model.two_body is None else model.two_body.to_dict()
    load_before = os.getloadavg()
    t = time.perf_counter()
    model.fit(train)
    fit_s = time.perf_counter() - t
    load_after = os.getloadavg()
    log.info("%s: fit %.1f s (load %s -> %s)", element, fit_s, load_before, load_after)
    result = {
        "element": element, "settings": settings,
        "train_frames": len(train), "train_atoms": sum(f.n_atoms for f in train),
        "test_frames": len(test), "test_atoms": sum(f.n_atoms for f in test),
        "n_sparse_points": model.n_sparse_points,
        "fit_s": fit_s, "loadavg_before_fit": load_before, "loadavg_after_fit": load_after,
        "log_likelihood": model.log_likelihood,
        "fit_report": model.fit_report_.to_dict() if model.fit_report_ else None,
        "gap_mae_e_mev_atom": spec["gap_mae_e"], "gap_mae_f_ev_a": spec["gap_mae_f"],
    }
    t = time.perf_counter()
    result["test"] = evaluate(model, test, args.calibration_frames, force_sigma)
    result["evaluate_s"] = time.perf_counter() - t
    log.info("%s: test %s", element, {k: v for k, v in result["test"].items()
                                      if k != "per_config_type"})
    if args.loo_screen:   # one leave-one-out pass at the fitted levels: compares settings
        from gpmlip.gp.validation import leave_one_out

        t = time.perf_counter()
        frames = np.unique(np.linspace(0, len(train) - 1, min(args.loo_frames, len(train)))
                           .round().astype(int))
        loo = leave_one_out(model, frames=frames)
        mae = loo.mae()
        kinds = np.array([model.training_frames[i].config_type or "-" for i in loo.frames])
        per_type = {str(k): {"frames": int((kinds == k).sum()),
                             "energy": float(np.nanmean(np.abs(loo.energy_residual[kinds == k])))}
                    for k in np.unique(kinds)}
        result["loo_screen"] = {"frames": len(frames), "loo_mae": mae,
                                "per_config_type": per_type, "seconds": time.perf_counter() - t}
        log.info("%s: leave-one-out MAE at the fitted levels %s", element, mae)
    if args.loo:
        from gpmlip.gp.validation import choose_noise

        t = time.perf_counter()
        choice = choose_noise(model, max_frames=args.loo_frames)
        result["loo_s"] = time.perf_counter() - t
        result["loo"] = {"noise": choice.noise, "criterion": choice.criterion,
                         "loo_mae": choice.loo_mae, "initial_loo_mae": choice.initial_loo_mae,
                         "log_likelihood": choice.log_likelihood,
                         "initial_log_likelihood": choice.initial_log_likelihood,
                         "calibration_scale": choice.calibration_scale}
        result["test_loo"] = evaluate(model, test, args.calibration_frames, model.noise["forces"])
        log.info("%s: noise by LOO %s; test %s", element, choice.noise,
                 {k: v for k, v in result["test_loo"].items() if k != "per_config_type"})
    if args.optimise:
        t = time.perf_counter()
        hyper = model.optimise_hyperparameters()
        result["optimise_s"] = time.perf_counter() - t
        result["hyper"] = {"values": hyper.values, "log_likelihood": hyper.log_likelihood,
                           "initial_log_likelihood": hyper.initial_log_likelihood,
                           "at_bound": hyper.at_bound, "success": hyper.success,
                           "message": hyper.message, "n_evaluations": hyper.n_evaluations}
        result["test_optimised"] = evaluate(model, test, args.calibration_frames,
                                            model.noise["forces"])
        log.info("%s: optimised %s; test %s", element, hyper.values,
                 {k: v for k, v in result["test_optimised"].items() if k != "per_config_type"})
    desc.close()    # reap the descriptor's worker processes so RUSAGE_CHILDREN includes them
    result["peak_rss_gb"] = _rss_gb(resource.RUSAGE_SELF)
    result["peak_rss_children_gb"] = _rss_gb(resource.RUSAGE_CHILDREN)
    return result


def _rows(results: list[dict]) -> list[tuple]:
    rows = []
    for r in results:
        st = r["settings"]
        base = (f"{st.get('weighting', 'hard')}, σE {1e3 * st['energy_sigma_ev_atom']:.2g} "
                f"meV/at, σF {st['force_sigma']}")
        if st["stress_sigma"] is not None:
            base += (f", +stress σS {st['stress_sigma']}" if st.get("stress_noise") == "absolute"
                     else f", +stress per atom σV {st.get('virial_sigma') or 'default'}")
        if st["n_sparse"] != PAPER[r["element"]]["n_sparse"]:
            base += f", m={st['n_sparse']}"
        variants = [(base, r["test"])]
        if "test_loo" in r:
            nv = r["loo"]["noise"]
            variants.append((f"noise by LOO: σE {1e3 * nv['energy']:.3g} meV/at, "
                             f"σF {nv['forces']:.3g}", r["test_loo"]))
        if "test_optimised" in r:
            hv = r["hyper"]["values"]
            delta = hv["signal " + r["element"]]
            variants.append((f"optimised: δ {delta:.3g}, "
                             f"σE {1e3 * hv['energy']:.3g} meV/at, σF {hv['forces']:.3g}"
                             + (f", σS {hv['stress']:.2g}" if "stress" in hv else ""),
                             r["test_optimised"]))
        for name, t in variants:
            rows.append((r["element"], name, r, t))
    return rows


def table(results: list[dict]) -> str:
    """Markdown table of the measured numbers."""
    head = ("| El | variant | train/test frames | MAE E meV/atom (GAP) | ratio | RMSE E | "
            "MAE F eV/Å (GAP) | ratio | RMSE F | fit s | peak RSS GB (workers) | predict ms/atom | "
            "F within 2σ | load |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for el, name, r, t in _rows(results):
        fit = f"{r['fit_s']:.0f}"
        if name.startswith("optimised"):
            fit += f" (+{r['optimise_s']:.0f} opt)"
        cal = t.get("calibration", {})
        cal_s = (f"{cal['frac_below_2std']:.2f} / {cal['frac_below_2std_with_noise']:.2f}"
                 if cal else "-")
        lines.append(
            f"| {el} | {name} | {r['train_frames']}/{r['test_frames']} | "
            f"{t['mae_e_mev_atom']:.2f} ({r['gap_mae_e_mev_atom']}) | "
            f"{t['mae_e_mev_atom'] / r['gap_mae_e_mev_atom']:.2f} | {t['rmse_e_mev_atom']:.2f} | "
            f"{t['mae_f_ev_a']:.3f} ({r['gap_mae_f_ev_a']}) | "
            f"{t['mae_f_ev_a'] / r['gap_mae_f_ev_a']:.2f} | {t['rmse_f_ev_a']:.3f} | {fit} | "
            f"{r['peak_rss_gb']:.2f} ({r['peak_rss_children_gb']:.2f}) | {t['predict_ms_per_atom']:.1f} | {cal_s} | "
            f"{r['loadavg_before_fit'][0]:.1f}→{r['loadavg_after_fit'][0]:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--elements", nargs="+", default=["Mo", "Si", "Li"], choices=list(PAPER))
    parser.add_argument("--n-sparse", type=int, help="sparse points for every element "
                        "(default: the paper's per element)")
    parser.add_argument("--with-stress", action="store_true", help="fit stresses too")
    parser.add_argument("--sparse-method", default="cur",
                        choices=SPARSE_METHODS,
                        help="how the sparse points are chosen (the paper: CUR)")
    parser.add_argument("--optimise", action="store_true",
                        help="also optimise the hyper-parameters and re-test")
    parser.add_argument("--energy-sigma", type=float,
                        help="eV/atom (default 0.01 eV / sqrt(median N_train))")
    parser.add_argument("--e0", choices=["paper", "fit"], default="paper",
                        help="paper: the isolated-atom energies GAP used; fit: gpmlip's default "
                             "for data without isolated atoms (least squares of the energy on "
                             "composition, here the mean energy per atom)")
    parser.add_argument("--force-sigma", type=float, default=FORCE_SIGMA, help="eV/Å")
    parser.add_argument("--noise-from", type=Path,
                        help="results JSON of an earlier --loo run: fit with the noise levels "
                             "it chose for the element (signal std 1)")
    parser.add_argument("--stress-sigma", type=float, default=0.001,
                        help="eV/Å³ (with --stress-noise absolute)")
    parser.add_argument("--stress-noise", choices=["per_atom", "absolute"], default="per_atom")
    parser.add_argument("--virial-sigma", type=float,
                        help="eV/atom (default: the library's, with --stress-noise per_atom)")
    parser.add_argument("--loo", action="store_true",
                        help="also choose noise levels by leave-one-structure-out error")
    parser.add_argument("--loo-frames", type=int, default=60)
    parser.add_argument("--loo-screen", action="store_true",
                        help="also measure the leave-one-structure-out MAE at the fitted noise "
                             "levels (on --loo-frames training structures): the criterion that "
                             "compares descriptor settings without the test set")
    parser.add_argument("--weighting", default="smooth", help=WEIGHTING_HELP)
    parser.add_argument("--w0", type=float, help="weight of the centre atom's own density "
                        "(dscribe's poly weighting w0; with an r0=...,m=... weighting)")
    parser.add_argument("--n-max", type=int, default=8)
    parser.add_argument("--l-max", type=int, default=8)
    parser.add_argument("--atom-sigma", type=float, default=0.5, help="Å")
    parser.add_argument("--zeta", type=int, default=4)
    parser.add_argument("--calibration-frames", type=int, default=8,
                        help="test frames for the force-std calibration (0: skip)")
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--two-body", nargs="?", const="", default=None,
                        help="add the 2-body term; optional settings key=value,... "
                             "(r_cut, sigma, length_scale, n_sparse, r_min, transition_width)")
    parser.add_argument("--second", help="join a second SOAP (gpmlip.Stacked): key=value,... "
                        "with r_cut (required), n_max, l_max, sigma (default: the first's), "
                        "weight (of its cosine, default 1), r0, m (poly weighting; default "
                        "smooth)")
    parser.add_argument("--json", type=Path, help="write all results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    for element in args.elements:      # fail before any fit on a malformed --weighting
        try:
            parse_weighting(args.weighting, PAPER[element]["r_cut"])
        except ValueError as exc:
            parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s "
                        "%(message)s", stream=sys.stderr)

    if args.child:
        result = run_element(args.child, args)
        args.child_out.write_text(json.dumps(result, indent=1))
        return

    results, failures = [], {}
    passthrough = sys.argv[1:]
    for element in args.elements:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), *passthrough,
                   "--child", element, "--child-out", str(out)]
            log.info("%s: running %s", element, " ".join(cmd))
            t = time.perf_counter()
            proc = subprocess.run(cmd)
            wall = time.perf_counter() - t
            if proc.returncode or not out.exists():
                log.error("%s: child failed with exit code %s", element, proc.returncode)
                failures[element] = proc.returncode
                continue
            result = json.loads(out.read_text())
            result["child_wall_s"] = wall
            results.append(result)
        if args.json:   # after every element, so a later failure keeps the earlier results
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({
                "command": " ".join([sys.executable, *sys.argv]),
                "uname": " ".join(os.uname()), "cpu_count": os.cpu_count(),
                "results": results, "failures": failures}, indent=1))
            log.info("wrote %s", args.json)
    print(table(results))
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
