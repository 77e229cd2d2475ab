"""Long range (issue 17): two Cu slabs 3-12 Å apart, "DFT" = EMT + D3, with and without ``d3``.

Truth: EMT + DFT-D3(BJ) with PBE parameters (the ``dftd3`` package's ASE calculator, the
``dispersion`` extra).  Training (truth labels): 32-atom bulk Cu rattled at three amplitudes (with
stress), one 12-atom Cu(111) slab rattled, and pairs of slabs at gaps 2.2-5 Å (the gap is the
distance between facing (111) layers; slabs periodic in x and y, open in z).  Two models on the
same frames: ``plain`` and ``d3`` (``baseline={"name": "d3", "method": "PBE", "damping":
"d3bj"}``).  Binding curve: E(gap) - E(30 Å) of the unrattled slab pair, gaps 3 to 12 Å, for
the truth and both models; the descriptor's cutoff (4.5 Å) is marked.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 nice -n 10 .venv/bin/python \
        benchmarks/baseline_long_range.py [--out benchmarks/results/baseline_long_range.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT
from ase.calculators.mixing import SumCalculator
from ase.calculators.singlepoint import SinglePointCalculator

import gpmlip

D3 = {"name": "d3", "method": "PBE", "damping": "d3bj"}
SOAP = dict(species=["Cu"], r_cut=4.5, n_max=6, l_max=4, sigma=0.5)
RESULTS = Path(__file__).resolve().parent / "results"
FAR = 30.0


def truth():
    from dftd3.ase import DFTD3

    return SumCalculator([EMT(), DFTD3(method=D3["method"], damping=D3["damping"])])


def slab() -> Atoms:
    s = fcc111("Cu", (2, 2, 3), a=3.61, orthogonal=True, vacuum=0.0)
    s.pbc = (True, True, False)
    return s


def slab_pair(gap: float) -> Atoms:
    lower, upper = slab(), slab()
    top = lower.positions[:, 2].max()
    upper.positions[:, 2] += top + gap - upper.positions[:, 2].min()
    pair = lower + upper
    pair.cell[2, 2] = top * 2 + gap + 20.0
    pair.positions[:, 2] += 10.0
    pair.pbc = (True, True, False)
    return pair


def labelled(atoms: Atoms, stress: bool) -> Atoms:
    a = atoms.copy()
    a.calc = truth()
    results = {"energy": a.get_potential_energy(), "forces": a.get_forces()}
    if stress:
        results["stress"] = a.get_stress()
    out = atoms.copy()
    out.calc = SinglePointCalculator(out, **results)
    return out


def training_frames() -> list[Atoms]:
    rng = np.random.default_rng(0)
    frames = []
    for amp in (0.05, 0.1, 0.15):
        for _ in range(4):
            a = bulk("Cu", "fcc", a=3.61 * (1 + 0.01 * rng.standard_normal()), cubic=True
                     ).repeat(2)
            a.positions += amp * rng.standard_normal(a.positions.shape)
            frames.append(labelled(a, True))
    for _ in range(4):
        s = slab()
        s.cell[2, 2] = 30.0
        s.positions += 0.08 * rng.standard_normal(s.positions.shape)
        frames.append(labelled(s, False))
    for gap in (2.2, 2.6, 3.0, 3.5, 4.0, 5.0):
        p = slab_pair(gap)
        p.positions += 0.05 * rng.standard_normal(p.positions.shape)
        frames.append(labelled(p, False))
    return frames


def energy(calc, atoms) -> float:
    a = atoms.copy()
    a.calc = calc
    return float(a.get_potential_energy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "baseline_long_range.json")
    args = parser.parse_args()
    t0 = time.perf_counter()
    frames = training_frames()
    models = {"plain": gpmlip.SparseGP(gpmlip.SOAP(**SOAP), n_sparse=150),
              "d3": gpmlip.SparseGP(gpmlip.SOAP(**SOAP), n_sparse=150, baseline=D3)}
    for m in models.values():
        m.fit(frames)
    gaps = np.arange(3.0, 12.01, 0.5)
    far = slab_pair(FAR)
    e_far = {"truth": energy(truth(), far)}
    e_far.update({k: m.predict(far, variance=False).energy for k, m in models.items()})
    curve = {"gap_A": gaps.tolist(), "truth": [], "plain": [], "d3": []}
    for g in gaps:
        p = slab_pair(g)
        curve["truth"].append(energy(truth(), p) - e_far["truth"])
        for k, m in models.items():
            curve[k].append(m.predict(p, variance=False).energy - e_far[k])
    cutoff = models["plain"].pair_cutoff
    report = {"descriptor_cutoff_A": cutoff, "training_frames": len(frames),
              "binding_curve_eV": curve, "seconds": None}
    truth_curve = np.array(curve["truth"])
    for k in models:
        err = np.array(curve[k]) - truth_curve
        beyond = gaps > cutoff
        report[k] = {"max_abs_error_eV": float(np.abs(err).max()),
                     "max_abs_error_within_cutoff_eV": float(np.abs(err[~beyond]).max()),
                     "max_abs_error_beyond_cutoff_eV": float(np.abs(err[beyond]).max()),
                     "binding_beyond_cutoff_eV": float(np.array(curve[k])[beyond][0]),
                     "truth_binding_beyond_cutoff_eV": float(truth_curve[beyond][0])}
    report["seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "binding_curve_eV"}, indent=2))
    for row in zip(gaps, curve["truth"], curve["plain"], curve["d3"]):
        print("gap %5.2f  truth %9.4f  plain %9.4f  d3 %9.4f" % row)


if __name__ == "__main__":
    main()
