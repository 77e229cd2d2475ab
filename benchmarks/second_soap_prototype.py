"""Prototype: does a sum of two SOAP kernels with different cutoffs help on the Zuo 2020 data?

Measured before building it into the model (issue 15: "a sum of SOAP kernels with two cutoffs,
if measurement shows it helps").  Nothing here is library code: the sum kernel is formed from
gpmlip's pieces.  Because the model is linear in the weights of all sparse basis functions,
``k = k_SOAP(r_cut1) + k_SOAP(r_cut2)`` is the two kernels' rows side by side and a
block-diagonal ``K_mm``:

1. fit the paper's SOAP (n_max = l_max = 8, atom_sigma 0.5, zeta 4, smooth cutoff, the paper's
   r_cut, CUR ``--n-sparse`` points) -- the baseline row;
2. fit a second SOAP alone (``--cutoff2`` = r_cut + X or an absolute value, n_max = l_max =
   ``--nl2``, CUR ``--n-sparse2`` points) -- its own row;
3. stack the rows of both models' sparse sets (energies + forces of every training frame, the
   benchmark's noise: 0.05 eV/Å, 0.01 eV / sqrt(median N) per atom), solve the DTC system
   (``gpmlip.gp.solver.solve``, signal std 1 eV for the first term, ``--delta2`` for the second) and predict the test set from the
   test frames' rows (``prediction = rows @ beta``).

Test MAE of energy per atom (meV/atom) and forces (eV/Å) of the three rows are printed and, with
``--json``, written.

Usage::

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 .venv/bin/python benchmarks/second_soap_prototype.py \\
        --elements Mo Si Li --n-sparse 500 --n-sparse2 250 --cutoff2 rcut-1.5 \\
        --json benchmarks/results/second_soap_prototype_short.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

import gpmlip
from gpmlip.gp.observations import NoiseModel, compute_rows, observations
from gpmlip.gp.solver import GramStats, Hyper, solve

sys.path.insert(0, str(Path(__file__).parent))
from zuo2020_accuracy import DATA, FORCE_SIGMA, GAP_ENERGY_SIGMA, PAPER  # noqa: E402


def _model(element, r_cut, nl, n_sparse, energy_sigma):
    desc = gpmlip.SOAP(species=[element], r_cut=r_cut, n_max=nl, l_max=nl, sigma=0.5, n_jobs=2)
    return gpmlip.SparseGP(desc, zeta=4, n_sparse=n_sparse, sparse_method="cur",
                           e0={element: PAPER[element]["e0"]}, energy_sigma=energy_sigma,
                           force_sigma=FORCE_SIGMA, signal_std=1.0, jitter=1e-8)


def _errors(energies, forces, test):
    e = np.mean([abs(p - f.energy) / f.n_atoms for p, f in zip(energies, test)])
    f = np.mean(np.concatenate([np.abs(p - t.forces).ravel() for p, t in zip(forces, test)]))
    return {"mae_e_mev_atom": 1e3 * float(e), "mae_f_ev_a": float(f)}


def _rows(models, frames, with_forces=True):
    streams = [compute_rows(frames, m.descriptor.to_dict(), 4, m.state.sparse, n_jobs=2)
               for m in models]
    for parts in zip(*streams):
        energy = np.concatenate([p.energy for p in parts])
        forces = np.hstack([p.forces for p in parts]) if with_forces else None
        yield type(parts[0])(energy, forces, None)


def run(element, args) -> dict:
    spec = PAPER[element]
    train = list(gpmlip.load_frames(DATA / f"{element}_train.xyz", species=[element]))
    test = list(gpmlip.load_frames(DATA / f"{element}_test.xyz", species=[element]))
    for f in train + test:
        f.stress = None
    energy_sigma = GAP_ENERGY_SIGMA / np.sqrt(np.median([f.n_atoms for f in train]))
    text = args.cutoff2
    r_cut2 = spec["r_cut"] + float(text[4:]) if text.startswith("rcut") else float(text)
    out = {"element": element, "r_cut": spec["r_cut"], "r_cut2": r_cut2, "delta2": args.delta2}
    models = []
    for name, r_cut, nl, m in (("soap", spec["r_cut"], 8, args.n_sparse),
                               ("soap2", r_cut2, args.nl2, args.n_sparse2)):
        model = _model(element, r_cut, nl, m, energy_sigma)
        t = time.perf_counter()
        model.fit(train)
        preds = [model.predict(f.atoms, stress=False, variance=False) for f in test]
        out[name] = {"fit_s": time.perf_counter() - t, "n_sparse": model.n_sparse_points,
                     **_errors([p.energy for p in preds], [p.forces for p in preds], test)}
        logging.info("%s %s: %s", element, name, out[name])
        models.append(model)
    t = time.perf_counter()
    m_all = sum(m.n_sparse_points for m in models)
    kmm = np.zeros((m_all, m_all))
    a = 0
    for m in models:
        b = a + m.n_sparse_points
        kmm[a:b, a:b] = m.state.kmm
        a = b
    stats = {g: GramStats.empty(m_all) for g in ("energy", "forces")}
    e0 = models[0].state.e0
    for frame, rows in zip(train, _rows(models, train)):
        for group, k, y, scale in observations(frame, rows, e0.of(frame.atoms.numbers),
                                               NoiseModel({})):
            stats[group].add(k, y, scale)
    column = np.ones(m_all)
    column[models[0].n_sparse_points:] = args.delta2 ** 2
    post = solve(kmm, stats, Hyper(column, {"energy": energy_sigma,
                                                    "forces": FORCE_SIGMA}))
    energies, forces = [], []
    for frame, rows in zip(test, _rows(models, test)):
        energies.append(float(rows.energy @ post.beta) + e0.of(frame.atoms.numbers))
        forces.append((rows.forces @ post.beta).reshape(-1, 3))
    out["soap+soap2"] = {"fit_s": time.perf_counter() - t, "n_sparse": m_all,
                         **_errors(energies, forces, test)}
    logging.info("%s soap+soap2: %s", element, out["soap+soap2"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--elements", nargs="+", default=["Mo", "Si", "Li"])
    parser.add_argument("--n-sparse", type=int, default=500)
    parser.add_argument("--n-sparse2", type=int, default=250)
    parser.add_argument("--cutoff2", default="rcut-1.5", help="absolute Å or rcut+X / rcut-X")
    parser.add_argument("--nl2", type=int, default=6, help="n_max = l_max of the second SOAP")
    parser.add_argument("--delta2", type=float, default=1.0,
                        help="signal std of the second SOAP in the sum (eV; the first has 1)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("gpmlip").setLevel(logging.WARNING)
    results = {"command": " ".join(["python", *sys.argv]), "results": []}
    for element in args.elements:
        results["results"].append(run(element, args))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=1))
    for r in results["results"]:
        for name in ("soap", "soap2", "soap+soap2"):
            print(f"{r['element']} {name:10s} m={r[name]['n_sparse']:5d} "
                  f"E {r[name]['mae_e_mev_atom']:.2f} meV/atom  F {r[name]['mae_f_ev_a']:.3f} eV/Å")


if __name__ == "__main__":
    main()
