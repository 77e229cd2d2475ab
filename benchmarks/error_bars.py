"""Are the energy, stress and force stds honest, in and out of distribution, on real DFT data?

    python benchmarks/error_bars.py [--data ../shared/data/zuo2020] [--elements Mo Si Li]
                                    [--n-sparse 500] [--holdout]

For each Zuo 2020 element: one model (SOAP at the paper's cutoff, n_max 8, l_max 6, the paper's
e0, ``--n-sparse`` CUR points, the builder's starting noise levels), calibrated as a user would
(``model.calibrate()``: closed-form leave-one-out on its own training data). Then

- in distribution: the ZMS (mean of (error / std)^2, 1 when honest) and 2-std coverage of the
  total-energy, stress-component and force-component stds on the shipped test set, raw and
  calibrated;
- the cost: ``predict`` with ``stress_std`` and with ``force_std`` against energy + forces +
  stress, per structure, and what ``calibrate`` takes;
- with ``--holdout``, out of distribution: leave-one-config-type-out (``gpmlip.holdout``), each
  held-out type scored by a refit that never saw it, calibrated by its own leave-one-out.

One thread.  Results: ``benchmarks/results/error_bars.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import gpmlip  # noqa: E402
from gpmlip.evaluate import calibration_report, predictions  # noqa: E402
from gpmlip.holdout import error_bar_scores, format_rows, leave_config_types_out  # noqa: E402

PAPER = {"Mo": {"r_cut": 5.2, "e0": -4.04}, "Si": {"r_cut": 5.4, "e0": -0.79},
         "Li": {"r_cut": 4.8, "e0": -0.21}}
NOISE = {"energy_sigma": 0.002, "force_sigma": 0.05, "virial_sigma": 0.05}
"""Fixed starting levels (eV/atom, eV/Å, eV/atom of virial), the same for every element."""


def _time(f, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def run(element: str, data: Path, n_sparse: int, holdout: bool) -> dict:
    spec = PAPER[element]
    train = gpmlip.load_frames(data / f"{element}_train.xyz", species=[element])
    test = gpmlip.load_frames(data / f"{element}_test.xyz", species=[element])
    soap = gpmlip.SOAP(species=[element], r_cut=spec["r_cut"], n_max=8, l_max=6)
    model = gpmlip.SparseGP(soap, n_sparse=n_sparse, e0={element: spec["e0"]}, **NOISE)
    t = time.perf_counter()
    model.fit(train)
    out = {"element": element, "n_sparse": model.n_sparse_points,
           "fit_s": time.perf_counter() - t}
    t = time.perf_counter()
    model.calibrate()
    out["calibrate_s"] = time.perf_counter() - t
    out["calibrations"] = {"force": model.calibration_.describe(),
                           "energy": None if model.energy_calibration_ is None else
                           model.energy_calibration_.describe(),
                           "stress": None if model.stress_calibration_ is None else
                           model.stress_calibration_.describe()}
    out["test"] = error_bar_scores(model, test)
    forces = calibration_report(predictions(model, test, force_std=True))
    out["test"]["forces"] = {"zms": forces["calibrated"]["zms"],
                             "zms_raw": forces["raw"]["zms"],
                             "coverage_2std": forces["calibrated"]["coverage_2std"]}
    atoms = test[0].atoms
    base = _time(lambda: model.predict(atoms))
    out["cost"] = {"atoms": len(atoms), "predict_s": base,
                   "stress_std_x": _time(lambda: model.predict(atoms, stress_std=True)) / base,
                   "force_std_x": _time(lambda: model.predict(atoms, force_std=True)) / base,
                   "energy_std_x": _time(lambda: model.predict(atoms, energy_std=True)) / base}
    logging.info("%s: %s", element, json.dumps(out, default=float))
    if holdout:
        rows = leave_config_types_out(model, train, progress=True)
        out["holdout"] = rows
        print(f"\n{element}: leave-one-config-type-out\n" + format_rows(rows))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "zuo2020"
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--elements", nargs="+", default=["Mo", "Si", "Li"])
    parser.add_argument("--n-sparse", type=int, default=500)
    parser.add_argument("--holdout", action="store_true")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" /
                        "error_bars.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = [run(e, args.data, args.n_sparse, args.holdout) for e in args.elements]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1, default=float))
    print(f"\n{'element':8s} {'quantity':8s} {'n':>6s} {'ZMS raw':>9s} {'ZMS cal':>9s} "
          f"{'cover2':>7s}   (test set, in distribution)")
    for r in results:
        for q in ("energy", "stress", "forces"):
            s = r["test"].get(q) or {}
            if s:
                n = str(s["n"]) if "n" in s else "-"
                print(f"{r['element']:8s} {q:8s} {n:>6s} {s['zms_raw']:9.3g} "
                      f"{s['zms']:9.3g} {s['coverage_2std']:7.3f}")
        c = r["cost"]
        print(f"{r['element']:8s} cost per {c['atoms']}-atom structure: E+F+S "
              f"{1000 * c['predict_s']:.1f} ms; with stress std x{c['stress_std_x']:.1f}, "
              f"force std x{c['force_std_x']:.1f}, energy std x{c['energy_std_x']:.1f}; "
              f"calibrate {r['calibrate_s']:.0f} s")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
