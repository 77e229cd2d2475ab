"""Issue 16 items 1-2: is the calibrated force std calibrated, in and out of distribution?

Two 108-atom Cu models (EMT, SOAP 4.5/4/3 as in the README's main job):

* offline: fitted on 8 frames of an 800 K Langevin trajectory (100 sparse points, CUR), then
  ``model.calibrate`` on 4 other 800 K frames;
* on the fly: the main job's learner (empty start, 800 K, 1000 steps of 5 fs, default
  settings), calibrated by the run itself on each label's residual before it was learnt
  (or ``--otf-model`` a model file such a run wrote);
* ``offline_loo`` / ``on_the_fly_loo``: the same two models calibrated instead by
  ``model.calibrate()`` (closed-form leave-one-structure-out residuals of their own training sets).

Both are measured on fresh held-out frames: 800 K (in distribution), 1200 K, a vacancy (107
atoms, 800 K) and a (111) surface slab (800 K).  Goals: ZMS in [0.8, 1.25], coverage
68 +/- 5 % and 95 +/- 3 %, miscalibration area <= 0.05, Spearman rho >= 0.8 x the calibrated
reference.  Every number is reported, raw and calibrated.

Run from the repository root::

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/calibration.py \
        [--otf-model runs/.../model.npz] [--out benchmarks/results/calibration.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from ase import units
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution  # noqa: F401 (ase < 3.29)

import gpmlip
from gpmlip.active import OnTheFlyLearner
from gpmlip.gp.calibration import force_variance_parts
from gpmlip.uncertainty import calibration_metrics


def trajectory(atoms, temperature, seed, n_frames, equilibrate=300, spacing=50):
    atoms = atoms.copy()
    atoms.calc = EMT()
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature,
                                 rng=np.random.default_rng(seed))
    dyn = Langevin(atoms, 5 * units.fs, temperature_K=temperature, friction=0.02 / units.fs,
                   fixcm=False, rng=np.random.default_rng(seed + 1))
    dyn.run(equilibrate)
    frames = []
    for _ in range(n_frames):
        dyn.run(spacing)
        frame = atoms.copy()
        frame.calc = None
        frame.arrays["emt_forces"] = atoms.get_forces().copy()
        frame.info["emt_energy"] = atoms.get_potential_energy()
        frames.append(frame)
    return frames


def cu():
    return bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)


def test_sets():
    vacancy = cu()
    del vacancy[0]
    surface = fcc111("Cu", (3, 3, 6), a=3.6, vacuum=8.0, periodic=True)
    return {"800K": trajectory(cu(), 800, 100, 4), "1200K": trajectory(cu(), 1200, 200, 4),
            "vacancy_800K": trajectory(vacancy, 800, 300, 4),
            "surface111_800K": trajectory(surface, 800, 400, 4)}


def as_labelled(frames):
    from ase.calculators.singlepoint import SinglePointCalculator
    out = []
    for f in frames:
        a = f.copy()
        a.calc = SinglePointCalculator(a, energy=f.info["emt_energy"],
                                       forces=f.arrays["emt_forces"])
        out.append(a)
    return out


def measure(model, frames) -> dict:
    err, cal, raw = [], [], []
    for f in frames:
        pred = model.predict(f, stress=False, variance=False)
        parts = force_variance_parts(model, f).reshape(-1, 3)
        err.append(np.ravel(pred.forces - f.arrays["emt_forces"]))
        raw.append(np.sqrt(parts[:, 0] + parts[:, 1]))
        cal.append(model.calibration_.std(parts) if model.calibration_ else raw[-1])
    err = np.concatenate(err)
    out = {}
    for name, std in (("calibrated", np.concatenate(cal)), ("raw", np.concatenate(raw))):
        m = calibration_metrics(err, std)
        m["goals"] = {"zms": 0.8 <= m["zms"] <= 1.25,
                      "coverage_1std": abs(m["coverage_1std"] - 0.683) <= 0.05,
                      "coverage_2std": abs(m["coverage_2std"] - 0.954) <= 0.03,
                      "miscalibration_area": m["miscalibration_area"] <= 0.05,
                      "spearman": m["spearman"] >= 0.8 * m["spearman_reference"]}
        out[name] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}
    return out


def otf_model(path):
    if path:
        return gpmlip.load_model(path)
    atoms = cu()
    MaxwellBoltzmannDistribution(atoms, temperature_K=800, rng=np.random.default_rng(0))
    model = gpmlip.SparseGP(gpmlip.SOAP(["Cu"], r_cut=4.5, n_max=4, l_max=3), n_jobs=1)
    learner = OnTheFlyLearner(model, "emt", Path(tempfile.mkdtemp()) / "run")
    atoms.calc = learner.calculator
    learner.run(Langevin(atoms, 5 * units.fs, temperature_K=800, friction=0.02 / units.fs,
                         fixcm=False, rng=np.random.default_rng(1)), 1000)
    return learner.model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--otf-model", default=None)
    parser.add_argument("--out", default="benchmarks/results/calibration.json")
    args = parser.parse_args()
    sets = test_sets()
    train = trajectory(cu(), 800, 1, 12, spacing=40)
    offline = gpmlip.SparseGP(gpmlip.SOAP(["Cu"], r_cut=4.5, n_max=4, l_max=3), n_sparse=100,
                              n_jobs=1)
    offline.fit(as_labelled(train[:8]))
    offline.optimise_hyperparameters()
    offline.calibrate(as_labelled(train[8:]))
    otf = otf_model(args.otf_model)
    # the same two models calibrated instead by leave-one-structure-out of their training sets
    with tempfile.TemporaryDirectory() as tmp:
        copies = []
        for model in (offline, otf):
            model.save(Path(tmp) / "m.npz")
            copy = gpmlip.load_model(Path(tmp) / "m.npz")
            copy.calibrate()
            copies.append(copy)
    result = {}
    for name, model in (("offline", offline), ("on_the_fly", otf),
                        ("offline_loo", copies[0]), ("on_the_fly_loo", copies[1])):
        result[name] = {"calibration": model.calibration_.to_dict() if model.calibration_
                        else None, "sparse_points": model.n_sparse_points,
                        "sets": {k: measure(model, v) for k, v in sets.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    for name, r in result.items():
        print(name, json.dumps(r["calibration"]))
        for s, m in r["sets"].items():
            c = m["calibrated"]
            print(f"  {s:16s} calibrated: ZMS {c['zms']:.2f} cov1 {100 * c['coverage_1std']:.1f}"
                  f" cov2 {100 * c['coverage_2std']:.1f} area {c['miscalibration_area']:.3f} "
                  f"rho {c['spearman']:.2f}/{c['spearman_reference']:.2f} RMSE "
                  f"{1000 * c['rmse']:.1f} | raw ZMS {m['raw']['zms']:.2f} "
                  f"cov2 {100 * m['raw']['coverage_2std']:.1f} | met "
                  f"{sum(c['goals'].values())}/5")


if __name__ == "__main__":
    main()
