"""The numbers a refactor must not change: every model kind's predictions, uncertainties,
leave-one-out errors, noise search, calibration, update, pool selection and model files.

Run it at two commits and compare (a refactor passes when nothing differs beyond round-off):

    git worktree add /tmp/before <old commit> --detach
    PYTHONPATH=/tmp/before python benchmarks/same_numbers.py -o before.json
    python benchmarks/same_numbers.py -o after.json
    python benchmarks/same_numbers.py --compare before.json after.json

One thread, about a minute.  Only API present since the 0.x model-file format is used, so that
an older commit runs the same script.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.calculators.emt import EMT  # noqa: E402
from ase.io import read  # noqa: E402

import gpmlip  # noqa: E402
from gpmlip import SOAP, SparseGP, TwoBody  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"


def _alloys(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
        a.numbers[rng.choice(len(a), 10, replace=False)] = 28
        a.numbers[rng.choice(len(a), 4, replace=False)] = 46
        a.positions += rng.normal(0, 0.08, a.positions.shape)
        a.calc = EMT()
        a.get_potential_energy()
        out.append(a)
    return out


def _calibration(model):
    return getattr(model, "calibration_", None) or model.__dict__.get("calibration")


def _predictions(model, test, tmp: Path, name: str) -> dict:
    from gpmlip.gp.validation import leave_one_out

    out = {"log_likelihood": model.log_likelihood}
    for k, atoms in enumerate(test):
        p = model.predict(atoms, force_std=True, energy_std=True)
        out[f"frame{k}"] = {"energy": p.energy, "forces": p.forces.ravel().tolist(),
                            "stress": None if p.stress is None else p.stress.ravel().tolist(),
                            "local_std": p.local_std_normalised.tolist(),
                            "force_std": p.force_std.ravel().tolist(),
                            "energy_std": p.energy_std}
    out["energy_covariance"] = np.asarray(model.energy_covariance(test)).ravel().tolist()
    out["loo_mae"] = leave_one_out(model).mae()
    model.calibrate()
    out["calibration"] = _calibration(model).to_dict()
    out["force_std_calibrated"] = model.predict(test[0], force_std=True).force_std.ravel().tolist()
    model.save(tmp / f"{name}.npz")
    again = gpmlip.load_model(tmp / f"{name}.npz")
    out["reloaded_energy"] = again.predict(test[-1]).energy
    return out


def run() -> dict:
    from gpmlip.active import select_batch
    from gpmlip.gp.validation import choose_noise

    train = read(DATA / "cu_emt_train.extxyz", ":12")
    test = read(DATA / "cu_emt_test.extxyz", ":3")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cu = SOAP(species=["Cu"], r_cut=4.0, n_max=4, l_max=3)
        plain = SparseGP(cu, n_sparse=30).fit(train[:8])
        out["plain"] = _predictions(plain, test, tmp, "plain")
        plain.update(train[8:], n_sparse=6)
        out["plain_updated"] = {"energy": plain.predict(test[0]).energy,
                                "sparse": plain.n_sparse_points}
        pick = select_batch(plain, test + train[:3], 2)
        out["pool"] = {"indices": [int(i) for i in pick.indices],
                       "scores": [float(s) for s in pick.scores]}
        two = SparseGP(cu, n_sparse=30, two_body=TwoBody(n_sparse=8)).fit(train)
        out["two_body"] = _predictions(two, test, tmp, "two_body")
        noise = choose_noise(SparseGP(cu, n_sparse=20).fit(train), sweeps=1,
                             factors=(0.5, 2.0))
        out["noise_search"] = {"noise": noise.noise, "loo_mae": noise.loo_mae,
                               "criterion": noise.criterion}
        stacked = gpmlip.Stacked([cu, SOAP(species=["Cu"], r_cut=3.0, n_max=3, l_max=2)],
                                 [1.0, 0.5])
        out["stacked"] = _predictions(SparseGP(stacked, n_sparse=20).fit(train), test, tmp,
                                      "stacked")
        alloys = _alloys(8)
        three = SOAP(species=["Ni", "Cu", "Pd"], r_cut=4.0, n_max=3, l_max=2,
                     compression="mu1nu1")
        alloy = SparseGP(three, n_sparse=15, two_body=TwoBody(n_sparse=5),
                         e0={"Ni": 0.0, "Cu": 0.0, "Pd": 0.0}).fit(alloys[:6])
        out["alloy"] = _predictions(alloy, alloys[6:], tmp, "alloy")
        alloy.optimise_hyperparameters(max_iterations=3)
        out["alloy"]["optimised_energy"] = alloy.predict(alloys[6]).energy
    return out


def _differences(a, b, path=""):
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                yield path + "/" + k, "missing in one", None
            else:
                yield from _differences(a[k], b[k], path + "/" + k)
        return
    if a is None or b is None or isinstance(a, str):
        if a != b:
            yield path, a, b
        return
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        yield path, f"shape {x.shape}", f"shape {y.shape}"
        return
    scale = max(float(np.abs(x).max(initial=0.0)), 1e-300)
    rel = float(np.abs(x - y).max(initial=0.0)) / scale
    yield path, rel, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("same_numbers.json"))
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--tolerance", type=float, default=1e-9,
                        help="largest relative difference counted as round-off")
    args = parser.parse_args()
    if args.compare:
        a, b = (json.loads(p.read_text()) for p in args.compare)
        worst, bad = 0.0, []
        for path, x, y in _differences(a, b):
            if isinstance(x, float) and y is None:
                worst = max(worst, x)
                if x > args.tolerance:
                    bad.append(f"{path}: relative difference {x:.3g}")
            else:
                bad.append(f"{path}: {x} vs {y}")
        print(f"largest relative difference {worst:.3g}; {len(bad)} beyond {args.tolerance:g}")
        for line in bad:
            print("  " + line)
        raise SystemExit(1 if bad else 0)
    args.output.write_text(json.dumps(run(), indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
