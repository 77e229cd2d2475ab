"""Side-by-side: gpmlip's automatic model builder against GAP on GFN2-xTB ethanol MD.

What is measured
----------------
On one multi-species molecular data set labelled with a real quantum code, in one run:

* **gpmlip, tuned**: ``gpmlip train train.xyz --test test_300.xyz test_600.xyz -o ... --json``
  with no other setting (the builder's defaults and its 480 s budget: cutoff from the data,
  settings screened by leave-one-structure-out, noise chosen, std calibrated);
* **gpmlip, --no-tune**: the same command with ``--no-tune`` (plain defaults, nothing screened);
* **GAP**: ``gap_fit`` (quippy-ase) with the usual molecular settings (below), twice: e0 from the
  xTB isolated atoms (the usual GAP practice) and ``e0_method=average``; and, as a diagnostic,
  once with gpmlip tuned's e0, noise levels and signal std (``delta``) on GAP's descriptor
  (``gap_gpmlip_hypers``), to separate the hyper-parameters from the descriptor.

For each: the fit wall time (and CPU time of the fitting process tree; the load average is
recorded, as the machine may be shared), the sparse points, and the test errors per test
temperature computed here the same way for every code from per-structure predictions (gpmlip:
``gpmlip.load_model(...).predict(atoms)``; GAP: quippy ``Potential``): energy MAE / RMSE / mean
signed error in meV/atom (error of the total energy divided by the atom count) and force MAE /
RMSE over all Cartesian components in meV/Å.  The gpmlip builder's report (``gpmlip info
--json``, section ``build``: what it chose and the screening table) is stored too.

Data (``--make-data``; cached in the results folder, never downloaded)
---------------------------------------------------------------------
Ethanol (``ase.build.molecule("CH3CH2OH")``, C2H6O, 9 atoms) in a 20 Å box without periodicity, run
with Langevin MD (0.5 fs, friction 0.01/fs, centre of mass fixed by ``FixCom``) on the tblite
GFN2-xTB calculator itself, which also labels every snapshot (energy, forces; ``ase.io.write`` of a
``SinglePointCalculator`` so that extxyz stores ``energy`` and ``forces``). Three independent
trajectories (own seeds and equilibration of ``--equil`` steps): 300 K for ``--n-train`` training
structures, 300 K and 600 K for ``--n-test`` test structures each, one snapshot every ``--stride``
steps. With ``--train-trajectories K`` the training structures come from K independent 300 K
trajectories instead of one (the test files are the same for a seed). One 1 ps trajectory does not
sample the H-O-C-C torsion: with the default seed the training frames are 88 % gauche- and never
trans, while the test frames are 42 % (300 K) and 60 % (600 K) trans; the shares are in
``summary.txt`` (and ``data.json``). The xTB energies of the isolated H, C and O atoms (tblite's
default multiplicity, no spin polarisation, as for the molecule) are stored in ``data.json`` for
GAP's e0; they are not in ``train.xyz``, so gpmlip's e0 is its own default (``"auto"``: a
least-squares fit on composition; with one composition the minimum-norm solution, which gpmlip
logs as under-determined).

GAP settings
------------
One ``soap`` descriptor per centre species (``Z=1``, ``6``, ``8``; ``add_species=F``) each with
as many CUR sparse points as gpmlip's tuned model has for that species; cutoff = the builder's
cutoff (5 Å on molecules), ``cutoff_transition_width=1.0``, ``n_max=8 l_max=6 atom_sigma=0.5
zeta=4 delta=1.0 covariance_type=dot_product``; ``default_sigma={0.001 0.05 0 0}`` with
``sigma_per_atom=T`` (energy 1 meV/atom scaled by sqrt(N), forces 50 meV/Å); ``sparse_jitter``
1e-8; ``rnd_seed=1``.  GAP runs in its own virtualenv (``--gap-python``, the interpreter that
imports quippy; ``gap_fit`` is taken from quippy's package folder or next to that interpreter).
Install it with ``bash <shared>/anchors/install_peers.sh gap`` (``PYTHON=<venv>/bin/python``),
``<shared>`` being ``Path(__file__).resolve().parents[2] / "shared"``.

Usage (from the repository root; everything heavy under ``nice``)::

    nice -n 19 .venv/bin/python benchmarks/build_model_molecules.py --make-data
    nice -n 19 .venv/bin/python benchmarks/build_model_molecules.py --make-data \
        --train-trajectories 5 --out benchmarks/results/build_model_molecules/five_trajectories
    nice -n 19 .venv/bin/python benchmarks/build_model_molecules.py --gap-python VENV/bin/python
    nice -n 19 .venv/bin/python benchmarks/build_model_molecules.py --only gap --gap-python ...
    .venv/bin/python benchmarks/build_model_molecules.py --report      # table from stored JSON

Results go to ``benchmarks/results/build_model_molecules/``: one JSON per code
(``gpmlip_tuned.json``, ``gpmlip_notune.json``, ``gap_isolated.json``, ``gap_average.json``,
``gap_gpmlip_hypers.json``),
``summary.json`` and ``summary.txt``.  A code not re-run is taken from its stored JSON.
The script needs tblite only for ``--make-data`` (``pip install tblite``) and quippy only in the
GAP interpreter; neither is a dependency of gpmlip.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("build_model_molecules")

HERE = Path(__file__).resolve()
RESULTS = HERE.parent / "results" / "build_model_molecules"
SHARED = HERE.parents[2] / "shared"
INSTALL_PEERS = SHARED / "anchors" / "install_peers.sh"
TEST_FILES = {"300 K": "test_300.xyz", "600 K": "test_600.xyz"}
SPECIES = {"H": 1, "C": 6, "O": 8}
BOX = 20.0
GAP_SIGMAS = (0.001, 0.05, 0.0, 0.0)
RUNS = ("gpmlip_tuned", "gpmlip_notune", "gap_isolated", "gap_average", "gap_gpmlip_hypers")
"""gap_gpmlip_hypers: GAP's descriptor with gpmlip tuned's e0, noise levels and signal std
(delta), a diagnostic of how much of the difference is the hyper-parameters."""


# -- data ----------------------------------------------------------------------------------------
def make_data(out: Path, args) -> dict:
    """Label three xTB Langevin trajectories of ethanol; write the extxyz files and data.json."""
    from ase import Atoms, units
    from ase.build import molecule
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixCom
    from ase.io import write
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
    from tblite.ase import TBLite

    def calculator():
        return TBLite(method="GFN2-xTB", verbosity=0)

    t0 = time.perf_counter()
    def trajectory(temp: float, count: int, seed: int):
        rng = np.random.default_rng(seed)
        atoms = molecule("CH3CH2OH")
        atoms.set_cell([BOX] * 3)
        atoms.center()
        atoms.pbc = False
        atoms.calc = calculator()
        MaxwellBoltzmannDistribution(atoms, temperature_K=temp, rng=rng)
        Stationary(atoms)
        ZeroRotation(atoms)
        # ASE's fixcm=True heats a 9-atom molecule by ~30 %; FixCom is its recommended way
        atoms.set_constraint(FixCom())
        dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=temp,
                       friction=args.friction / units.fs, rng=rng, fixcm=False)
        dyn.run(args.equil)
        frames, temps = [], []
        for _ in range(count):
            dyn.run(args.stride)
            snap = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=False)
            snap.center()
            snap.calc = SinglePointCalculator(snap, energy=atoms.get_potential_energy(),
                                              forces=atoms.get_forces())
            snap.info["config_type"] = f"md{temp:.0f}K"
            frames.append(snap)
            temps.append(atoms.get_temperature())
        return frames, temps

    k = args.train_trajectories
    train_seeds = [args.seed] if k == 1 else [args.seed + 10 + j for j in range(k)]
    train_counts = [args.n_train // k + (j < args.n_train % k) for j in range(k)]
    plan = [("train.xyz", 300.0, train_counts, train_seeds),
            ("test_300.xyz", 300.0, [args.n_test], [args.seed + 1]),
            ("test_600.xyz", 600.0, [args.n_test], [args.seed + 2])]
    meta = {"molecule": "CH3CH2OH", "method": "GFN2-xTB (tblite)", "timestep_fs": 0.5,
            "friction_per_fs": args.friction, "equil_steps": args.equil, "stride": args.stride,
            "box_A": BOX, "pbc": False, "files": {}}
    for name, temp, counts, seeds in plan:
        frames, temps, t = [], [], time.perf_counter()
        for count, seed in zip(counts, seeds):
            f, T = trajectory(temp, count, seed)
            frames += f
            temps += T
        write(out / name, frames, format="extxyz")
        energies = np.array([f.get_potential_energy() for f in frames])
        meta["files"][name] = {"frames": len(frames), "temperature_K": temp,
                               "trajectories": len(seeds), "seeds": seeds,
                               "mean_kinetic_T_K": float(np.mean(temps)),
                               "energy_range_eV": float(np.ptp(energies)),
                               "hocc_conformers": conformers(frames),
                               "seconds": round(time.perf_counter() - t, 1)}
        log.info("%s: %d frames at %.0f K from %d trajectories (mean T %.0f K), energy range "
                 "%.3f eV, H-O-C-C conformers %s", name, len(frames), temp, len(seeds),
                 np.mean(temps), np.ptp(energies), meta["files"][name]["hocc_conformers"])
    e0 = {}
    for symbol in SPECIES:
        atom = Atoms(symbol, positions=[[BOX / 2] * 3], cell=[BOX] * 3, pbc=False)
        atom.calc = calculator()
        e0[symbol] = float(atom.get_potential_energy())
    meta["isolated_atom_energies_eV"] = e0
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "data.json").write_text(json.dumps(meta, indent=1))
    log.info("data written to %s in %.0f s; isolated atoms %s eV", out, meta["seconds"], e0)
    return meta


def conformers(frames) -> dict:
    """Shares of the H-O-C-C torsion of ethanol: trans (|phi| > 120 deg), gauche+ and gauche-."""
    symbols = frames[0].get_chemical_symbols()
    d = frames[0].get_all_distances()
    o = symbols.index("O")
    carbons = [i for i, x in enumerate(symbols) if x == "C"]
    c1 = min(carbons, key=lambda i: d[o, i])
    c2 = next(c for c in carbons if c != c1)
    h = min((i for i, x in enumerate(symbols) if x == "H"), key=lambda i: d[o, i])
    phi = (np.array([a.get_dihedral(h, o, c1, c2) for a in frames]) + 180) % 360 - 180
    return {"trans": round(float(np.mean(np.abs(phi) > 120)), 3),
            "gauche+": round(float(np.mean((phi > 0) & (phi <= 120))), 3),
            "gauche-": round(float(np.mean((phi < 0) & (phi >= -120))), 3)}


def read_labels(path: Path) -> list[dict]:
    """Reference energy, forces and atom count of every frame of an extxyz file."""
    from ase.io import read

    return [{"energy": a.get_potential_energy(), "forces": a.get_forces(), "n_atoms": len(a)}
            for a in read(path, ":")]


def errors(refs: list[dict], preds: list[dict]) -> dict:
    """Energy errors per atom (meV/atom) and force errors per component (meV/Å)."""
    de = np.array([(p["energy"] - r["energy"]) / r["n_atoms"] for r, p in zip(refs, preds)])
    df = np.concatenate([(np.asarray(p["forces"]) - r["forces"]).ravel()
                         for r, p in zip(refs, preds)])
    return {"frames": len(refs),
            "energy_mae_meV_atom": 1e3 * float(np.mean(np.abs(de))),
            "energy_rmse_meV_atom": 1e3 * float(np.sqrt(np.mean(de ** 2))),
            "energy_mean_error_meV_atom": 1e3 * float(np.mean(de)),
            "force_mae_meV_A": 1e3 * float(np.mean(np.abs(df))),
            "force_rmse_meV_A": 1e3 * float(np.sqrt(np.mean(df ** 2)))}


def timed(cmd, *, cwd: Path, stdout, stderr, env=None) -> dict:
    """Run ``cmd``; its wall time, CPU time (reaped children) and the load average before."""
    load = os.getloadavg()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, stdout=stdout, stderr=stderr,
                          env=env, check=False)
    wall = time.perf_counter() - t
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited with {proc.returncode}")
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "loadavg_before": [round(x, 2) for x in load]}


# -- gpmlip --------------------------------------------------------------------------------------
def gpmlip_command() -> list[str]:
    exe = Path(sys.executable).parent / "gpmlip"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "gpmlip.cli"]


def run_gpmlip(out: Path, tune: bool) -> dict:
    """``gpmlip train`` with no settings (or ``--no-tune``); test errors per temperature."""
    import gpmlip

    name = "gpmlip_tuned" if tune else "gpmlip_notune"
    model_file = f"{name}.npz"
    cmd = [*gpmlip_command(), "train", "train.xyz", "--test", *TEST_FILES.values(),
           "-o", model_file, "--json"] + ([] if tune else ["--no-tune"])
    log.info("%s: %s", name, " ".join(cmd))
    with open(out / f"{name}_train.json", "w") as so, open(out / f"{name}_train.log", "w") as se:
        clock = timed(cmd, cwd=out, stdout=so, stderr=se)
    cli_report = json.loads((out / f"{name}_train.json").read_text())
    info = json.loads(subprocess.run([*gpmlip_command(), "info", model_file, "--json"], cwd=out,
                                     capture_output=True, text=True, check=True).stdout)
    model = gpmlip.load_model(out / model_file)
    tests = {}
    for label, file in TEST_FILES.items():
        refs = read_labels(out / file)
        from ase.io import read

        preds = []
        for atoms in read(out / file, ":"):
            p = model.predict(atoms, stress=False, variance=False)
            preds.append({"energy": p.energy, "forces": p.forces})
        tests[label] = errors(refs, preds)
    result = {"code": name, "command": " ".join(cmd), "fit": clock, "source": source_state(),
              "sparse_points": model.n_sparse_points,
              "sparse_per_species": sparse_per_species(model),
              "build": info.get("build"), "info": {k: v for k, v in info.items() if k != "build"},
              "cli_errors": cli_report, "test": tests}
    log.info("%s: fit %.0f s; %s", name, clock["wall_s"], _brief(tests))
    return result


def source_state() -> dict:
    """The gpmlip commit the run used and whether gpmlip/ had uncommitted changes."""
    def git(*a):
        proc = subprocess.run(["git", *a], cwd=HERE.parents[1], capture_output=True, text=True,
                              check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    import gpmlip

    return {"commit": git("rev-parse", "HEAD"), "gpmlip_version": gpmlip.__version__,
            "uncommitted_in_gpmlip": git("status", "--porcelain", "gpmlip")}


def sparse_per_species(model) -> dict:
    """Sparse points per centre species of a gpmlip model (symbol -> count)."""
    from ase.data import chemical_symbols

    z, c = np.unique(np.asarray(model.state_.sparse.species), return_counts=True)
    return {chemical_symbols[int(a)]: int(b) for a, b in zip(z, c)}


# -- GAP -----------------------------------------------------------------------------------------
def gap_fit_binary(gap_python: str) -> str | None:
    """quippy's compiled ``gap_fit`` (or the ``gap_fit`` script next to ``gap_python``)."""
    proc = subprocess.run([gap_python, "-c", "import quippy; print(quippy.__path__[0])"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return None
    binary = Path(proc.stdout.strip()) / "gap_fit"
    if binary.exists():
        return str(binary)
    script = Path(gap_python).parent / "gap_fit"
    return str(script) if script.exists() else None


def gap_string(r_cut: float, sparse: dict, delta: float = 1.0) -> str:
    """One soap descriptor per centre species, each with its own CUR sparse set."""
    zs = " ".join(str(z) for z in SPECIES.values())
    # gap_fit strips one level of braces inside gap={...}: species_Z needs two
    blocks = [f"soap cutoff={r_cut:g} cutoff_transition_width=1.0 n_max=8 l_max=6 "
              f"atom_sigma=0.5 zeta=4 delta={delta:.6g} covariance_type=dot_product n_species=3 "
              f"species_Z={{{{{zs}}}}} Z={z} n_sparse={sparse[s]} sparse_method=cur_points "
              "add_species=F" for s, z in SPECIES.items()]
    return " : ".join(blocks)


def run_gap(out: Path, gap_python: str, name: str, tuned: dict) -> dict:
    """``gap_fit`` on train.xyz; ``name`` picks e0 and hyper-parameters (see RUNS)."""
    binary = gap_fit_binary(gap_python)
    if binary is None:
        return {"code": name, "status": "skipped",
                "reason": f"{gap_python} does not import quippy (install: PYTHON=... bash "
                          f"{INSTALL_PEERS} gap)"}
    meta = json.loads((out / "data.json").read_text())
    r_cut, sparse = tuned["build"]["chosen"]["r_cut"], tuned["sparse_per_species"]
    sigmas, delta = GAP_SIGMAS, 1.0
    if name == "gap_isolated":
        e0 = "e0={" + ":".join(f"{s}:{meta['isolated_atom_energies_eV'][s]:.10g}"
                               for s in SPECIES) + "}"
    elif name == "gap_average":
        e0 = "e0_method=average"
    else:   # gap_gpmlip_hypers: gpmlip tuned's e0, noise levels and signal std (diagnostic)
        info = tuned["info"]
        e0 = "e0={" + ":".join(f"{s}:{info['e0'][str(z)]:.10g}" for s, z in SPECIES.items()) \
            + "}"
        variances = set(round(v, 9) for v in info["signal_variance"].values())
        delta = float(np.sqrt(max(variances)))
        sigmas = (info["noise"]["energy"], info["noise"]["forces"], 0.0, 0.0)
    xml = f"{name}.xml"
    gap = gap_string(r_cut, sparse, delta)
    cmd = [binary, "at_file=train.xyz", f"gap={{{gap}}}", f"gp_file={xml}", e0,
           "default_sigma={%.6g %.6g %.6g %.6g}" % tuple(sigmas), "sigma_per_atom=T",
           "energy_parameter_name=energy", "force_parameter_name=forces",
           "sparse_jitter=1e-8", "do_copy_at_file=F", "rnd_seed=1"]
    log.info("%s: %s", name, " ".join(cmd))
    for old in out.glob(f"{xml}*"):
        old.unlink()
    with open(out / f"{name}_fit.log", "w") as log_file:
        clock = timed(cmd, cwd=out, stdout=log_file, stderr=subprocess.STDOUT)
    preds_file = out / f"{name}_predictions.json"
    subprocess.run([gap_python, str(HERE), "--gap-predict", str(out / xml), str(preds_file),
                    *[str(out / f) for f in TEST_FILES.values()]], check=True)
    preds = json.loads(preds_file.read_text())
    tests = {label: errors(read_labels(out / file), preds[file])
             for label, file in TEST_FILES.items()}
    result = {"code": name, "command": " ".join(cmd), "gap": gap, "e0": e0, "fit": clock,
              "sparse_points": int(sum(sparse.values())), "sparse_per_species": sparse,
              "default_sigma": list(sigmas), "delta": delta, "test": tests}
    log.info("%s: fit %.0f s; %s", name, clock["wall_s"], _brief(tests))
    return result


def gap_predict(xml: str, out: str, files: list[str]) -> None:
    """(Run by the GAP interpreter.)  quippy Potential predictions of every frame, as JSON."""
    from ase.io import read
    from quippy.potential import Potential

    pot = Potential(param_filename=xml)
    result = {}
    for file in files:
        rows = []
        for atoms in read(file, ":"):
            atoms = atoms.copy()
            atoms.calc = pot
            rows.append({"energy": float(atoms.get_potential_energy()),
                         "forces": atoms.get_forces().tolist()})
        result[Path(file).name] = rows
    Path(out).write_text(json.dumps(result))


# -- report --------------------------------------------------------------------------------------
def _brief(tests: dict) -> str:
    return "; ".join(f"{k}: E {v['energy_mae_meV_atom']:.2f} meV/atom, F {v['force_mae_meV_A']:.1f}"
                     " meV/Å" for k, v in tests.items())


def summarise(out: Path) -> dict:
    results = {}
    for name in RUNS:
        path = out / f"{name}.json"
        if path.exists():
            results[name] = json.loads(path.read_text())
    meta = json.loads((out / "data.json").read_text()) if (out / "data.json").exists() else {}
    lines = ["gpmlip build_model vs GAP on GFN2-xTB ethanol MD (train: "
             f"{meta.get('files', {}).get('train.xyz', {}).get('frames', '?')} frames at 300 K)",
             ""]
    for file in ("train.xyz", *TEST_FILES.values()):
        if (out / file).exists():
            from ase.io import read

            lines.append(f"H-O-C-C torsion shares in {file}: {conformers(read(out / file, ':'))}")
    lines.append("")
    for label, file in TEST_FILES.items():
        if (out / file).exists():
            refs = read_labels(out / file)
            e = np.array([r["energy"] / r["n_atoms"] for r in refs])
            f = np.concatenate([r["forces"].ravel() for r in refs])
            lines.append(f"test {label} labels: energy std {1e3 * e.std():.1f} meV/atom, "
                         f"mean |force component| {1e3 * np.abs(f).mean():.0f} meV/Å")
        lines.append(f"test {label}: MAE (RMSE)      energy meV/atom     force meV/Å")
        for name, r in results.items():
            t = r.get("test", {}).get(label)
            if t is None:
                lines.append(f"  {name:16s} {r.get('status', '-')}: {r.get('reason', '')}")
                continue
            lines.append(f"  {name:16s} {t['energy_mae_meV_atom']:12.2f} "
                         f"({t['energy_rmse_meV_atom']:6.2f}) {t['force_mae_meV_A']:12.1f} "
                         f"({t['force_rmse_meV_A']:6.1f})")
        lines.append("")
    lines.append("fit wall s (CPU s), sparse points per species:")
    for name, r in results.items():
        if "fit" in r:
            lines.append(f"  {name:16s} {r['fit']['wall_s']:8.1f} ({r['fit']['cpu_s']:.1f})  "
                         f"{r['sparse_points']} {r['sparse_per_species']}  load before "
                         f"{r['fit']['loadavg_before'][0]}")
    build = results.get("gpmlip_tuned", {}).get("build")
    if build:
        lines += ["", f"builder (tuned): chosen {build.get('chosen_changes')}; "
                  f"chosen settings {build.get('chosen')}",
                  f"  scales {build.get('scales')}",
                  f"  noise {(build.get('noise') or {}).get('levels')}"]
        lines += [f"  {k}: {v}" for k, v in build.get("stages", {}).items()]
        lines.append("  screen:")
        for row in build.get("screen", []):
            crit = row.get("criterion")
            mae = row.get("loo_mae") or {}
            lines.append(f"    {row['stage']:14s} {row['candidate']:28s} frames {row['frames']:4d} "
                         f"crit {'-' if crit is None else f'{crit:.3f}'}  "
                         f"LOO E {1e3 * mae.get('energy', float('nan')):.2f} meV/atom "
                         f"F {1e3 * mae.get('forces', float('nan')):.1f} meV/Å  "
                         f"{row['seconds']:.0f} s {row['status']}")
    text = "\n".join(lines) + "\n"
    (out / "summary.txt").write_text(text)
    (out / "summary.json").write_text(json.dumps({"data": meta, "results": results}, indent=1))
    print(text)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default %(default)s)")
    p.add_argument("--make-data", action="store_true",
                   help="only (re)label the data with tblite GFN2-xTB and stop")
    p.add_argument("--only", nargs="+", choices=RUNS, default=None,
                   help="codes to (re)run; the others are read from their stored JSON")
    p.add_argument("--report", action="store_true", help="only print the table of stored results")
    p.add_argument("--gap-python", default=os.environ.get("GAP_PYTHON", sys.executable),
                   help="interpreter that imports quippy (default $GAP_PYTHON or this one)")
    p.add_argument("--n-train", type=int, default=100)
    p.add_argument("--n-test", type=int, default=40)
    p.add_argument("--stride", type=int, default=20, help="MD steps between snapshots")
    p.add_argument("--equil", type=int, default=1000, help="MD steps before the first snapshot")
    p.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs")
    p.add_argument("--train-trajectories", type=int, default=1,
                   help="independent 300 K trajectories the training frames are split over "
                        "(default 1: one trajectory, n_train x stride steps long)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--gap-predict", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.gap_predict:
        xml, out, *files = args.gap_predict
        gap_predict(xml, out, files)
        return 0
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.report:
        summarise(out)
        return 0
    if args.make_data or not (out / "data.json").exists():
        make_data(out, args)
        if args.make_data:
            return 0
    todo = args.only or list(RUNS)
    for name in todo:
        if name.startswith("gpmlip"):
            result = run_gpmlip(out, tune=name == "gpmlip_tuned")
        else:
            tuned_file = out / "gpmlip_tuned.json"
            if not tuned_file.exists():
                log.error("%s needs gpmlip_tuned.json (its cutoff and sparse counts)", name)
                continue
            result = run_gap(out, args.gap_python, name, json.loads(tuned_file.read_text()))
        (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    summarise(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
