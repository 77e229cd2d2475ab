"""What the two-body term (``gpmlip.TwoBody``) buys and costs: the Cu dimer curve and MD speed.

What is measured
----------------
EMT Cu is the reference ("DFT").  Training sets: ``bulk`` = rattled (0.1 Å), strained (2 %)
32-atom fcc Cu cells (energies, forces, stresses); ``bulk+dimers`` = the same plus Cu2 dimers at
1.6, 1.8, ..., 4.0 Å (energies and forces), as GAP users add dimers to fix short-range
behaviour.  For each set, one SOAP model and one SOAP + 2b model (same SOAP, same sparse points
count, ``TwoBody()`` defaults: r_cut = the SOAP cutoff, sigma 0.5 eV, theta 1 Å, 20 sparse
distances) are fitted, and

* the dimer curve E(r) - 2 E(atom) on r = 1.5 ... 5.0 Å (step 0.05) is compared with EMT's: RMSE
  over r in [1.8, 4.5] Å and the curve itself (written to the JSON);
* bulk test errors on 10 held-out EMT frames (energy meV/atom, forces eV/Å);
* MD cost: the two-body term alone (``gpmlip.gp.twobody.evaluate``: energies and dE/dr on the
  model's pair list) against the SOAP model's step, and ``GPCalculator`` energy + forces per step (the MD path; no variances) on rattled fcc
  Cu of 108 and 864 atoms, median over ``--repeats`` calls on freshly displaced positions, ms per
  atom per step, SOAP and SOAP + 2b interleaved in the same run (ratios are what count: the machine
  is shared).  Threads: whatever OMP/NUMBA_NUM_THREADS say (set both to 1 for a quiet number).

Usage::

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 .venv/bin/python benchmarks/twobody_dimer_cost.py \\
        --json benchmarks/results/twobody_dimer_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

import gpmlip

SOAP_SETTINGS = dict(species=["Cu"], r_cut=5.0, n_max=8, l_max=6, sigma=0.5)
GRID = np.round(np.arange(1.5, 5.0001, 0.05), 4)


def bulk_frames(n: int, seed: int) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
        eps = 0.02 * rng.standard_normal((3, 3))
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True)
        atoms.positions += 0.1 * rng.standard_normal(atoms.positions.shape)
        atoms.calc = EMT()
        atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        out.append(atoms)
    return out


def dimer(r: float) -> Atoms:
    return Atoms("Cu2", positions=[[0, 0, 0], [0, 0, r]])


def dimer_frames() -> list[Atoms]:
    out = []
    for r in np.arange(1.6, 4.01, 0.2):
        atoms = dimer(r)
        atoms.calc = EMT()
        atoms.get_potential_energy(), atoms.get_forces()
        out.append(atoms)
    return out


def emt_energy(atoms: Atoms) -> float:
    atoms = atoms.copy()
    atoms.calc = EMT()
    return atoms.get_potential_energy()


def step_ms_per_atom(model, n_rep: int, repeats: int) -> float:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(n_rep)
    atoms.rattle(0.05, seed=1)
    base = atoms.positions.copy()
    atoms.calc = gpmlip.GPCalculator(model)
    rng = np.random.default_rng(0)
    atoms.get_forces()                         # warm-up (compilation)
    times = []
    for _ in range(repeats):
        atoms.positions = base + 0.01 * rng.standard_normal(base.shape)
        t = time.perf_counter()
        atoms.get_forces()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times)) / len(atoms)


def term_ms_per_atom(model, n_rep: int, repeats: int) -> float:
    """The two-body term alone (energies and dE/dr on the model's pair list), ms/atom."""
    from gpmlip.gp import twobody

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(n_rep)
    atoms.rattle(0.05, seed=1)
    pairs = model.descriptor.pair_list(atoms)
    two = model.state.terms[0]
    beta = model.state.posterior.beta[-len(two):]
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        twobody.evaluate(two.term, pairs, two.distances, two.keys, beta, gradient=True,
                         rows=False)
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times[1:])) / len(atoms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=20)
    parser.add_argument("--n-sparse", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    train, test = bulk_frames(args.n_train, 0), bulk_frames(10, 99)
    e_atom = emt_energy(Atoms("Cu"))
    reference = np.array([emt_energy(dimer(r)) - 2 * e_atom for r in GRID])
    window = (GRID >= 1.8) & (GRID <= 4.5)
    results = {"command": "OMP_NUM_THREADS=%s NUMBA_NUM_THREADS=%s %s" % (
        os.environ.get("OMP_NUM_THREADS"), os.environ.get("NUMBA_NUM_THREADS"),
        " ".join(["python", *os.sys.argv])), "grid": GRID.tolist(),
        "emt_dimer": reference.tolist(), "models": {}}
    models = {}
    for data_name, frames in (("bulk", train), ("bulk+dimers", train + dimer_frames())):
        for term_name, term in (("soap", None), ("soap+2b", gpmlip.TwoBody())):
            soap = gpmlip.SOAP(**SOAP_SETTINGS, n_jobs=1)
            model = gpmlip.SparseGP(soap, n_sparse=args.n_sparse, e0={"Cu": e_atom},
                                    energy_sigma=0.001, force_sigma=0.05, stress_sigma=0.001,
                                    two_body=term)
            t = time.perf_counter()
            model.fit(frames)
            fit_s = time.perf_counter() - t
            curve = np.array([model.predict(dimer(r), variance=False).energy - 2 * e_atom
                              for r in GRID])
            e_err = [abs(model.predict(a).energy - a.get_potential_energy()) / len(a)
                     for a in test]
            f_err = np.concatenate([np.abs(model.predict(a).forces - a.get_forces()).ravel()
                                    for a in test])
            key = f"{data_name} {term_name}"
            models[key] = model
            results["models"][key] = {
                "fit_s": fit_s, "dimer": curve.tolist(),
                "dimer_rmse_1.8_4.5_ev": float(np.sqrt(np.mean((curve - reference)[window] ** 2))),
                "bulk_test_mae_e_mev_atom": 1e3 * float(np.mean(e_err)),
                "bulk_test_mae_f_ev_a": float(np.mean(f_err))}
            print(key, {k: v for k, v in results["models"][key].items() if k != "dimer"},
                  flush=True)
    timing = {}
    for n_rep in (3, 6):
        soap_t, tb_t = [], []
        for _ in range(3):   # interleaved, so that both see the same machine load
            soap_t.append(step_ms_per_atom(models["bulk soap"], n_rep, args.repeats))
            tb_t.append(step_ms_per_atom(models["bulk soap+2b"], n_rep, args.repeats))
        n_atoms = 4 * n_rep ** 3
        term = term_ms_per_atom(models["bulk soap+2b"], n_rep, args.repeats)
        timing[n_atoms] = {"soap_ms_atom_step": float(np.min(soap_t)),
                           "two_body_term_alone_ms_atom_step": term,
                           "two_body_term_fraction_of_soap": term / float(np.min(soap_t)),
                           "soap+2b_ms_atom_step": float(np.min(tb_t)),
                           "ratio": float(np.min(tb_t) / np.min(soap_t)),
                           "loadavg": os.getloadavg()}
        print(n_atoms, timing[n_atoms], flush=True)
    results["md_cost"] = timing
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
