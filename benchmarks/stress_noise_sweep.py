"""Which stress noise does not sacrifice energies: one fit with stresses, re-solved per noise level.

For each element of the Zuo 2020 set (``/work/shared/data/zuo2020``), the model of
``zuo2020_accuracy.py`` (smooth-cutoff SOAP n8 l8, zeta 4, CUR sparse points, sigma_E 0.01 eV per
structure, sigma_F 0.05 eV/Å) is fitted once to energies, forces and stresses with
``stress_noise="per_atom"``; the Gram blocks are then re-solved (O(m^3), no new kernels) for every
``--virial-sigmas`` level (eV/atom) and for energies + forces only, and the test set is evaluated
each time.  Also: the fit report (stress labels against the energy+forces model) and, with
``--loo``, the noise chosen by leave-one-structure-out error (:func:`gpmlip.gp.validation.choose_noise`)
with its test errors.

Usage::

    nice -n 10 .venv/bin/python benchmarks/stress_noise_sweep.py --elements Li Si Mo \\
        --n-sparse 500 --json benchmarks/results/stress_noise_sweep.json [--loo]
    # --weighting hard (or r0=X,m=Y): the cutoff options of zuo2020_accuracy.py
    # without --n-sparse: the paper's sparse counts (Mo 2000, Si 1000, Li 4000)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cutoff_option import HELP as WEIGHTING_HELP  # noqa: E402
from cutoff_option import parse_weighting, weighting_label  # noqa: E402
from zuo2020_accuracy import DATA, FORCE_SIGMA, GAP_ENERGY_SIGMA, PAPER, _errors  # noqa: E402

log = logging.getLogger("stress_noise_sweep")


def test_errors(model, test) -> dict:
    preds = [model.predict(f.atoms) for f in test]
    out = _errors([p.energy for p in preds], [f.energy for f in test],
                  [f.n_atoms for f in test], [p.forces for p in preds], [f.forces for f in test])
    s = [(p.stress - f.stress).ravel() for p, f in zip(preds, test) if f.stress is not None]
    out["mae_stress_gpa"] = float(np.mean(np.abs(s)) * 160.21766) if s else None
    return out


def run(element: str, args) -> dict:
    import gpmlip
    from gpmlip.gp.validation import choose_noise

    spec = PAPER[element]
    train = list(gpmlip.load_frames(DATA / f"{element}_train.xyz", species=[element]))
    test = list(gpmlip.load_frames(DATA / f"{element}_test.xyz", species=[element]))
    energy_sigma = GAP_ENERGY_SIGMA / np.sqrt(np.median([f.n_atoms for f in train]))
    weighting = parse_weighting(args.weighting, spec["r_cut"])
    desc = gpmlip.SOAP(species=[element], r_cut=spec["r_cut"], n_max=8, l_max=8, sigma=0.5,
                       weighting=weighting, n_jobs=args.n_jobs)
    model = gpmlip.SparseGP(desc, zeta=4, n_sparse=args.n_sparse or spec["n_sparse"],
                            e0={element: spec["e0"]}, energy_sigma=energy_sigma,
                            force_sigma=FORCE_SIGMA, stress_noise="per_atom",
                            virial_sigma=args.virial_sigmas[0], jitter=1e-8)
    t = time.perf_counter()
    model.fit(train)
    out = {"element": element, "weighting": weighting_label(weighting), "n_sparse": model.n_sparse_points, "fit_s": time.perf_counter() - t,
           "energy_sigma": energy_sigma, "report": model.fit_report_.to_dict(), "rows": []}
    out["rows"].append({"variant": "energy+forces",
                        **test_errors(model.with_hyperparameters(drop=("stress",)), test)})
    log.info("%s %s", element, out["rows"][-1])
    for sv in args.virial_sigmas:
        levels = model.with_hyperparameters(noise={"stress": sv})
        out["rows"].append({"variant": f"+stress per atom {sv} eV/atom",
                            "log_likelihood": levels.log_likelihood, **test_errors(levels, test)})
        log.info("%s %s", element, out["rows"][-1])
    if args.loo:
        t = time.perf_counter()
        choice = choose_noise(model.with_hyperparameters(noise={"stress": args.virial_sigmas[0]}),
                              max_frames=args.loo_frames)
        out["rows"].append({"variant": "+stress, noise by LOO", "noise": choice.noise,
                            "loo_criterion": choice.criterion, "loo_mae": choice.loo_mae,
                            "initial_loo_mae": choice.initial_loo_mae,
                            "log_likelihood": choice.log_likelihood,
                            "initial_log_likelihood": choice.initial_log_likelihood,
                            "seconds": time.perf_counter() - t,
                            **test_errors(choice.model, test)})
        log.info("%s %s", element, out["rows"][-1])
    desc.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--elements", nargs="+", default=["Li", "Si", "Mo"], choices=list(PAPER))
    parser.add_argument("--n-sparse", type=int)
    parser.add_argument("--virial-sigmas", type=float, nargs="+",
                        default=[0.1, 0.02, 0.05, 0.2, 0.5, 1.0])
    parser.add_argument("--weighting", default="smooth", help=WEIGHTING_HELP)
    parser.add_argument("--loo", action="store_true")
    parser.add_argument("--loo-frames", type=int, default=40)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    results = []
    for el in args.elements:
        results.append(run(el, args))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"command": " ".join(sys.argv), "results": results},
                                            indent=1))
    for r in results:
        for row in r["rows"]:
            print(f"{r['element']} {r['weighting']} m={r['n_sparse']} | {row['variant']} | "
                  f"E {row['mae_e_mev_atom']:.3f} meV/atom | F {row['mae_f_ev_a']:.4f} eV/Å | "
                  f"S {row['mae_stress_gpa']} GPa")


if __name__ == "__main__":
    main()
