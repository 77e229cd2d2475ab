"""Make multi-species molecular data sets labelled with GFN2-xTB (tblite) by Langevin MD.

The sets are for comparing compressed and uncompressed SOAP descriptors on 3 and 5 species:

* ``HCO`` (H, C, O): six molecules of ``ase.collections.g2``;
* ``HCNOS`` (H, C, N, O, S): eight molecules of ``ase.collections.g2``, with N and S each in
  several of them (see ``MOLECULE_SETS``).

Each molecule (``ase.build.molecule``, no cell, no periodicity) runs Langevin MD on the tblite
GFN2-xTB calculator itself (0.5 fs, friction 0.01/fs, ``--temperature`` K, velocities from a
seeded Maxwell-Boltzmann draw with zero momentum and angular momentum, centre of mass held by
``FixCom``).  After ``--equil`` steps, one snapshot is kept every ``--stride`` steps until there
are ``--frames-per-molecule``; each is stored with its xTB energy and (unconstrained) forces via
a ``SinglePointCalculator`` and ``info["config_type"]`` = the molecule name.  Per molecule, the
first 2/3 of the snapshots in time order go to the training file and the rest to the test file,
so the test frames are later in each trajectory.  A molecule on which tblite fails is logged,
skipped and listed in ``data.json``.

Files written to ``--out``: ``HCO_train.xyz``, ``HCO_test.xyz``, ``HCNOS_train.xyz``,
``HCNOS_test.xyz`` (extxyz with ``energy`` and ``forces``) and ``data.json`` (molecules, counts,
settings, seed, the xTB energies of the isolated H, C, N, O and S atoms with tblite's defaults,
and the wall time).  The isolated atoms are not in the xyz files.

Usage (from the repository root; needs ``pip install -e ".[tblite]"``)::

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/data_molecules_xtb.py
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import zlib
from importlib.metadata import version
from pathlib import Path

import numpy as np

#: Molecule names in ``ase.collections.g2`` per set, with the species each set may contain.
MOLECULE_SETS: dict[str, dict] = {
    "HCO": {
        "species": ("H", "C", "O"),
        "molecules": ("CH3CH2OH", "CH3COOH", "CH3OCH3", "HCOOH", "CH3CHO", "H2CCO"),
    },
    "HCNOS": {
        "species": ("H", "C", "N", "O", "S"),
        "molecules": ("CH3SH", "CH3SCH3", "C4H4S", "C2H6SO", "CH3CN", "CH3NO2", "CH3CONH2",
                      "HCOOCH3"),
    },
}
TIMESTEP_FS = 0.5
FRICTION_PER_FS = 0.01
TRAIN_FRACTION = 2 / 3
ELEMENT_ORDER = ("H", "C", "N", "O", "S")  # order of species in listings


def calculator():
    """Return a fresh tblite GFN2-xTB calculator with the library's defaults.

    Returns
    -------
    tblite.ase.TBLite
        Calculator without printout (charge and multiplicity left to tblite).
    """
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0)


def check_sets(sets: dict[str, dict]) -> None:
    """Check that every molecule exists in g2 and holds only its set's species.

    Parameters
    ----------
    sets : dict
        Set name -> ``{"species": tuple, "molecules": tuple}``, as ``MOLECULE_SETS``.

    Raises
    ------
    ValueError
        If a name is not in ``ase.collections.g2.names`` or has a species outside its set.
    """
    from ase.build import molecule
    from ase.collections import g2

    for set_name, spec in sets.items():
        for name in spec["molecules"]:
            if name not in g2.names:
                raise ValueError(f"{set_name}: {name!r} is not in ase.collections.g2")
            extra = set(molecule(name).get_chemical_symbols()) - set(spec["species"])
            if extra:
                raise ValueError(f"{set_name}: {name} has species {sorted(extra)} outside "
                                 f"{spec['species']}")


def molecule_seed(seed: int, name: str) -> list[int]:
    """Return the seed entropy of one molecule's trajectory.

    Parameters
    ----------
    seed : int
        The run's seed (``--seed``).
    name : str
        Molecule name; its CRC-32 makes the seed independent of the set lists' order.

    Returns
    -------
    list of int
        Entropy for ``numpy.random.default_rng``.
    """
    return [seed, zlib.crc32(name.encode())]


def run_molecule(name: str, *, seed: int, temperature: float, equil: int, stride: int,
                 frames: int) -> tuple[list, dict]:
    """Run Langevin MD of one g2 molecule on GFN2-xTB and return labelled snapshots.

    Parameters
    ----------
    name : str
        Molecule name in ``ase.collections.g2``.
    seed : int
        The run's seed; the trajectory's generator is seeded by ``molecule_seed(seed, name)``.
    temperature : float
        Thermostat and initial-velocity temperature in K.
    equil : int
        MD steps before the first snapshot.
    stride : int
        MD steps between snapshots.
    frames : int
        Number of snapshots.

    Returns
    -------
    snapshots : list of ase.Atoms
        Snapshots in time order, each with a ``SinglePointCalculator`` holding the xTB energy
        (eV) and forces (eV/Å), ``info["config_type"] = name`` and ``info["md_step"]``.
    stats : dict
        Atom count, formula, species, mean kinetic temperature of the snapshots, energy range and
        seconds per xTB call.

    Raises
    ------
    ase.calculators.calculator.CalculationFailed
        If tblite fails (e.g. its SCF does not converge).
    """
    from ase import Atoms, units
    from ase.build import molecule
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import (MaxwellBoltzmannDistribution, Stationary,
                                             ZeroRotation)

    rng = np.random.default_rng(molecule_seed(seed, name))
    atoms = molecule(name)
    atoms.pbc = False
    atoms.calc = calculator()
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    # FixCom instead of Langevin's fixcm=True, which heats small molecules; the stored forces
    # are the calculator's, without the constraint's projection.
    atoms.set_constraint(FixCom())
    dyn = Langevin(atoms, TIMESTEP_FS * units.fs, temperature_K=temperature,
                   friction=FRICTION_PER_FS / units.fs, fixcm=False, rng=rng)
    t0 = time.perf_counter()
    dyn.run(equil)
    snapshots, temps = [], []
    for _ in range(frames):
        dyn.run(stride)
        snap = Atoms(atoms.numbers, atoms.positions, pbc=False)
        snap.calc = SinglePointCalculator(snap, energy=atoms.get_potential_energy(),
                                          forces=atoms.get_forces(apply_constraint=False))
        snap.info["config_type"] = name
        snap.info["md_step"] = dyn.nsteps
        snapshots.append(snap)
        temps.append(atoms.get_temperature())
    seconds = time.perf_counter() - t0
    energies = np.array([s.get_potential_energy() for s in snapshots])
    stats = {"atoms": len(atoms), "formula": atoms.get_chemical_formula(),
             "species": sorted(set(atoms.get_chemical_symbols()), key=ELEMENT_ORDER.index),
             "mean_kinetic_T_K": round(float(np.mean(temps)), 1),
             "energy_range_eV": round(float(np.ptp(energies)), 4),
             "seconds": round(seconds, 2),
             "seconds_per_xtb_call": round(seconds / (equil + frames * stride + 1), 5)}
    return snapshots, stats


def isolated_atom_energies(symbols: list[str]) -> dict[str, float]:
    """Return the GFN2-xTB energy of each isolated atom with tblite's defaults.

    Parameters
    ----------
    symbols : list of str
        Chemical symbols.

    Returns
    -------
    dict
        Symbol -> energy in eV (tblite's default multiplicity, no spin polarisation).
    """
    from ase import Atoms

    energies = {}
    for symbol in symbols:
        atom = Atoms(symbol, pbc=False)
        atom.calc = calculator()
        energies[symbol] = float(atom.get_potential_energy())
    return energies


def make_set(set_name: str, spec: dict, args: argparse.Namespace) -> dict:
    """Run every molecule of one set, write its train and test files, and summarise them.

    Parameters
    ----------
    set_name : str
        Set name, the prefix of the file names.
    spec : dict
        ``{"species": tuple, "molecules": tuple}``.
    args : argparse.Namespace
        Command-line settings (``out``, ``seed``, ``temperature``, ``equil``, ``stride``,
        ``frames_per_molecule``).

    Returns
    -------
    dict
        The set's entry of ``data.json``.
    """
    from ase.calculators.calculator import CalculationFailed
    from ase.io import write

    train, test, molecules, skipped = [], [], {}, {}
    n_train = round(TRAIN_FRACTION * args.frames_per_molecule)
    for name in spec["molecules"]:
        try:
            snaps, stats = run_molecule(name, seed=args.seed, temperature=args.temperature,
                                        equil=args.equil, stride=args.stride,
                                        frames=args.frames_per_molecule)
        except (CalculationFailed, RuntimeError) as err:
            print(f"  {set_name} {name}: tblite failed, skipped ({err})", flush=True)
            skipped[name] = str(err)
            continue
        train += snaps[:n_train]
        test += snaps[n_train:]
        stats.update(train_frames=n_train, test_frames=len(snaps) - n_train)
        molecules[name] = stats
        print(f"  {set_name} {name:<9} {stats['formula']:<8} {stats['atoms']:>3} atoms  "
              f"{len(snaps)} frames  mean T {stats['mean_kinetic_T_K']:.0f} K  E range "
              f"{stats['energy_range_eV']:.3f} eV  {stats['seconds']:.1f} s "
              f"({1e3 * stats['seconds_per_xtb_call']:.1f} ms/call)", flush=True)
    files = {}
    for part, frames in (("train", train), ("test", test)):
        path = args.out / f"{set_name}_{part}.xyz"
        write(path, frames, format="extxyz")
        files[part] = {"file": path.name, "frames": len(frames),
                       "atoms": int(sum(len(f) for f in frames))}
    present = {s: [m for m in molecules if s in molecules[m]["species"]]
               for s in spec["species"]}
    for symbol, names in present.items():
        if len(names) < 2:
            print(f"  warning: {set_name}: {symbol} is in only {len(names)} molecule(s)",
                  flush=True)
    return {"species": list(spec["species"]), "molecules": molecules, "skipped": skipped,
            "molecules_per_species": present, "files": files}


def main() -> None:
    """Parse the command line, make both sets and write ``data.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/molecules_xtb"),
                        help="output folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the MD (default: 0)")
    parser.add_argument("--frames-per-molecule", type=int, default=60,
                        help="snapshots per molecule, 2/3 train (default: %(default)s)")
    parser.add_argument("--stride", type=int, default=10,
                        help="MD steps between snapshots (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=600.0,
                        help="Langevin temperature in K (default: %(default)s)")
    parser.add_argument("--equil", type=int, default=200,
                        help="equilibration steps before the first snapshot (default: "
                             "%(default)s)")
    args = parser.parse_args()
    check_sets(MOLECULE_SETS)
    args.out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    sets = {}
    for set_name, spec in MOLECULE_SETS.items():
        print(f"{set_name}: {len(spec['molecules'])} molecules", flush=True)
        sets[set_name] = make_set(set_name, spec, args)
        for part, info in sets[set_name]["files"].items():
            print(f"  -> {args.out / info['file']}: {info['frames']} frames, "
                  f"{info['atoms']} atoms", flush=True)
    species = sorted({s for spec in MOLECULE_SETS.values() for s in spec["species"]},
                     key=ELEMENT_ORDER.index)
    e0 = isolated_atom_energies(species)
    wall = time.perf_counter() - t0
    meta = {
        "description": __doc__.split("\n\n")[0],
        "method": "GFN2-xTB (tblite ASE calculator, defaults, verbosity=0)",
        "seed": args.seed,
        "settings": {"temperature_K": args.temperature, "timestep_fs": TIMESTEP_FS,
                     "friction_per_fs": FRICTION_PER_FS, "equil_steps": args.equil,
                     "stride": args.stride, "frames_per_molecule": args.frames_per_molecule,
                     "train_fraction": TRAIN_FRACTION, "split": "time order per molecule: "
                     "first frames train, last frames test", "pbc": False, "cell": None,
                     "constraint": "FixCom (forces stored without it)",
                     "trajectory_seed": "numpy default_rng([seed, crc32(molecule name)])"},
        "sets": sets,
        "skipped": {name: {"set": s, "error": err} for s, v in sets.items()
                    for name, err in v["skipped"].items()},
        "isolated_atom_energies_eV": e0,
        "wall_time_s": round(wall, 1),
        "versions": {"tblite": version("tblite"), "ase": version("ase"),
                     "numpy": np.__version__, "python": platform.python_version()},
    }
    (args.out / "data.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"isolated atoms (eV): {e0}")
    print(f"wrote {args.out / 'data.json'}; wall time {wall:.1f} s", flush=True)


if __name__ == "__main__":
    main()
