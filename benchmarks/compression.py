"""Many species at a cost that does not explode (issue 33): SOAP compression, accuracy and cost.

Two parts, each one run on one core (``OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1``; ratios within a run
count on a noisy machine, absolute times across runs do not):

``--part accuracy``
    On GFN2-xTB molecular MD (``benchmarks/data_molecules_xtb.py``: HCO, 3 species, and HCNOS,
    5 species), one gpmlip model per compression mode (off, crossover, mu1nu1, mu2) with the same
    SOAP (r_cut 5 Å, n_max 8, l_max 6, sigma 0.5, the smooth cutoff), ``--sparse`` CUR points per
    species, zeta 4, noise 1 meV/atom and 50 meV/Å, e0 the isolated xTB atoms; and GAP
    (``gap_fit``, one multi-species soap per centre species with the same cutoff, n/l, sparse
    count, zeta, noise and e0) in the same run.  Test energy MAE (meV/atom) and force MAE
    (meV/Å) on the later frames of every trajectory, feature count, fit wall time.

``--part cost``
    Random fcc alloys of 1, 3 and 5 EMT metals (EMT gives geometries only: cost does not depend
    on the labels), a model per compression mode with ``--total-sparse`` points shared equally by
    the species.  Per atom and call, the median of ``--repeats``: energy + forces at 108 and 864
    atoms, and energy + forces + calibrated force std at 108 atoms; and the ratio to one species.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 nice .venv/bin/python benchmarks/compression.py \\
        --part accuracy --gap-python /path/to/venv-with-quippy/bin/python
    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 nice .venv/bin/python benchmarks/compression.py \\
        --part cost --total-sparse 500 2000
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import gpmlip

HERE = Path(__file__).resolve().parent
MODES = ("off", "crossover", "mu1nu1", "mu2")
SETS = {"HCO": ("H", "C", "O"), "HCNOS": ("H", "C", "N", "O", "S")}
SOAP_SETTINGS = dict(r_cut=5.0, n_max=8, l_max=6, sigma=0.5)
NOISE = {"energy": 0.001, "forces": 0.05}
METALS = ("Cu", "Ag", "Au", "Ni", "Pd")

log = logging.getLogger("compression")


# -- accuracy ------------------------------------------------------------------------------------
def errors(model_predict, frames) -> dict:
    """Energy MAE (meV/atom) and force MAE (meV/Å) over labelled frames."""
    de, df = [], []
    for atoms in frames:
        energy, forces = model_predict(atoms)
        de.append((energy - atoms.get_potential_energy()) / len(atoms))
        df.append(np.ravel(forces - atoms.get_forces()))
    return {"energy_mae_meV_atom": 1000 * float(np.mean(np.abs(de))),
            "force_mae_meV_A": 1000 * float(np.mean(np.abs(np.concatenate(df))))}


def sparse_counts(name: str, data: Path, n_sparse: int) -> dict:
    """``n_sparse`` per species, capped at the species' environments in the training file."""
    from ase.io import read

    symbols = [s for atoms in read(data / f"{name}_train.xyz", ":")
               for s in atoms.get_chemical_symbols()]
    return {s: min(n_sparse, symbols.count(s)) for s in SETS[name]}


def gpmlip_accuracy(name: str, mode: str, data: Path, n_sparse: dict, e0: dict) -> dict:
    from ase.io import read

    species = SETS[name]
    train = read(data / f"{name}_train.xyz", ":")
    test = read(data / f"{name}_test.xyz", ":")
    soap = gpmlip.SOAP(species, **SOAP_SETTINGS, compression=mode)
    model = gpmlip.SparseGP(soap, n_sparse=n_sparse, sparse_method="cur", zeta=4,
                            energy_sigma=NOISE["energy"], force_sigma=NOISE["forces"],
                            e0={s: e0[s] for s in species})
    start = time.perf_counter()
    model.fit(train)
    fit = time.perf_counter() - start

    def predict(atoms):
        p = model.predict(atoms, stress=False, variance=False)
        return p.energy, p.forces

    return {"code": "gpmlip", "set": name, "compression": mode, "features": soap.n_features,
            "sparse_points": model.n_sparse_points, "fit_s": fit, **errors(predict, test)}


GAP_PREDICT = """
import json, sys
from ase.io import read
from quippy.potential import Potential
pot = Potential(param_filename=sys.argv[1])
rows = []
for atoms in read(sys.argv[2], ":"):
    atoms = atoms.copy()
    atoms.calc = pot
    rows.append([float(atoms.get_potential_energy()), atoms.get_forces().tolist()])
print(json.dumps(rows))
"""


def gap_accuracy(name: str, data: Path, n_sparse: dict, e0: dict, gap_python: str) -> dict:
    """gap_fit with one multi-species soap per centre species, predictions by quippy."""
    from ase.data import atomic_numbers
    from ase.io import read, write

    species = SETS[name]
    zs = [atomic_numbers[s] for s in species]
    zlist = " ".join(str(z) for z in zs)
    # gap_fit strips one level of braces inside gap={...}: species_Z needs two
    blocks = [f"soap cutoff={SOAP_SETTINGS['r_cut']:g} cutoff_transition_width=1.0 "
              f"n_max={SOAP_SETTINGS['n_max']} l_max={SOAP_SETTINGS['l_max']} "
              f"atom_sigma={SOAP_SETTINGS['sigma']} zeta=4 delta=1.0 "
              f"covariance_type=dot_product n_species={len(zs)} species_Z={{{{{zlist}}}}} Z={z} "
              f"n_sparse={n_sparse[s]} sparse_method=cur_points add_species=F"
              for s, z in zip(species, zs)]
    binary = Path(subprocess.run([gap_python, "-c", "import quippy; print(quippy.__path__[0])"],
                                 capture_output=True, text=True, check=True).stdout.strip())
    binary = binary / "gap_fit"
    if not binary.exists():
        binary = Path(gap_python).parent / "gap_fit"
    e0_arg = "e0={" + ":".join(f"{s}:{e0[s]:.10g}" for s in species) + "}"
    with tempfile.TemporaryDirectory() as tmp:
        # QUIP gives a structure without a lattice a small periodic cell: the molecules get a
        # 30 Å box (no periodicity) as in benchmarks/build_model_molecules.py
        for part in ("train", "test"):
            boxed = []
            for atoms in read(data / f"{name}_{part}.xyz", ":"):
                atoms.set_cell([30.0, 30.0, 30.0])
                atoms.center()
                boxed.append(atoms)
            write(Path(tmp) / f"{part}.xyz", boxed, format="extxyz")
        cmd = [str(binary), "at_file=train.xyz",
               "gap={" + " : ".join(blocks) + "}", "gp_file=gap.xml", e0_arg,
               "default_sigma={%g %g 0 0}" % (NOISE["energy"], NOISE["forces"]),
               "sigma_per_atom=T", "energy_parameter_name=energy",
               "force_parameter_name=forces", "sparse_jitter=1e-8", "do_copy_at_file=F",
               "rnd_seed=1"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        fit = time.perf_counter() - start
        if proc.returncode != 0:
            return {"code": "gap", "set": name, "status": "failed",
                    "log_tail": (proc.stdout + proc.stderr)[-2000:]}
        out = subprocess.run([gap_python, "-c", GAP_PREDICT, str(Path(tmp) / "gap.xml"),
                              str(Path(tmp) / "test.xyz")], capture_output=True, text=True,
                             check=True)
    rows = iter(json.loads(out.stdout.strip().splitlines()[-1]))

    def predict(_atoms):
        energy, forces = next(rows)
        return energy, np.array(forces)

    test = read(data / f"{name}_test.xyz", ":")
    return {"code": "gap", "set": name, "compression": "off (GAP soap)",
            "sparse_points": sum(n_sparse.values()), "fit_s": fit, "command": " ".join(cmd),
            **errors(predict, test)}


# -- cost ----------------------------------------------------------------------------------------
def alloy(n_species: int, repeat: int, seed: int, *, label: bool = True):
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.8, cubic=True).repeat(repeat)
    atoms.symbols = rng.choice(METALS[:n_species], len(atoms))
    atoms.positions += rng.normal(0, 0.08, atoms.positions.shape)
    if label:
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces())
    return atoms


def median_ms_per_atom(fn, n_atoms: int, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)) / n_atoms


def cost(n_species: int, mode: str, total_sparse: int, repeats: int) -> dict:
    species = METALS[:n_species]
    train = [alloy(n_species, 3, seed) for seed in range(max(4, 2 * total_sparse // 108 + 1))]
    soap = gpmlip.SOAP(species, **SOAP_SETTINGS, compression=mode)
    model = gpmlip.SparseGP(soap, n_sparse=total_sparse // n_species, sparse_method="cur",
                            e0={s: 0.0 for s in species})
    start = time.perf_counter()
    model.fit(train)
    fit = time.perf_counter() - start
    model.calibrate([alloy(n_species, 3, 1000 + k) for k in range(2)])
    small, big = alloy(n_species, 3, 99, label=False), alloy(n_species, 6, 98, label=False)
    row = {"species": n_species, "compression": mode, "features": soap.n_features,
           "sparse_points": model.n_sparse_points, "fit_s": fit}
    for key, atoms, kw in (("energy_forces_108", small, {}), ("energy_forces_864", big, {}),
                           ("force_std_108", small, {"force_std": True})):
        row[key + "_ms_per_atom"] = median_ms_per_atom(
            lambda a=atoms, k=kw: model.predict(a, stress=False, variance=False, **k),
            len(atoms), repeats)
    row["force_std_ratio"] = row["force_std_108_ms_per_atom"] / row["energy_forces_108_ms_per_atom"]
    row["small_over_big"] = row["energy_forces_108_ms_per_atom"] / \
        row["energy_forces_864_ms_per_atom"]
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("accuracy", "cost"), required=True)
    p.add_argument("--data", default=str(HERE / "results" / "molecules_xtb"),
                   help="folder of benchmarks/data_molecules_xtb.py")
    p.add_argument("--sparse", type=int, default=200, help="sparse points per species (accuracy)")
    p.add_argument("--gap-python", default=None, help="interpreter that imports quippy")
    p.add_argument("--sets", nargs="+", default=list(SETS))
    p.add_argument("--modes", nargs="+", default=list(MODES))
    p.add_argument("--total-sparse", type=int, nargs="+", default=[500])
    p.add_argument("--species", type=int, nargs="+", default=[1, 3, 5])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out or HERE / "results" / f"compression_{args.part}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []

    def keep(row):
        rows.append(row)
        print(json.dumps(row), flush=True)
        out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))

    if args.part == "accuracy":
        data = Path(args.data)
        if not (data / "data.json").exists():
            p.error(f"{data} has no data: run benchmarks/data_molecules_xtb.py first")
        e0 = json.loads((data / "data.json").read_text())["isolated_atom_energies_eV"]
        for name in args.sets:
            counts = sparse_counts(name, data, args.sparse)
            for mode in args.modes:
                keep(gpmlip_accuracy(name, mode, data, counts, e0))
            if args.gap_python:
                keep(gap_accuracy(name, data, counts, e0, args.gap_python))
    else:
        for total in args.total_sparse:
            for n_species in args.species:
                for mode in (("off",) if n_species == 1 else args.modes):
                    row = cost(n_species, mode, total, args.repeats)
                    one = next((r for r in rows if r["species"] == 1
                                and r["sparse_points"] == row["sparse_points"]), None)
                    if one is not None:
                        for key in ("energy_forces_108", "energy_forces_864", "force_std_108"):
                            row[key + "_over_one_species"] = \
                                row[key + "_ms_per_atom"] / one[key + "_ms_per_atom"]
                    keep(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
