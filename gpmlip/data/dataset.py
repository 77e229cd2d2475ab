"""Load labelled structures from extended XYZ, ase.db or Atoms, validated on the way in."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from gpmlip.data.frames import DEFAULT_CONFIG_TYPE, SIGMA_KEYS, Frame, as_stress_3x3
from gpmlip.errors import DataError
from gpmlip.species import atomic_number_set, check_known

log = logging.getLogger(__name__)

MAX_LISTED = 20
"""How many offending frames an error message lists before summarising."""


@dataclass(frozen=True)
class LabelKeys:
    """Where to find the labels of a frame.

    Each key is looked up in ``atoms.info`` (per-structure) or ``atoms.arrays`` (per-atom) first,
    then in the results of the attached calculator (what ASE's extxyz and ase.db readers fill).
    Use e.g. ``LabelKeys(energy="DFT_energy", forces="DFT_forces")`` for GAP-style files.
    """

    energy: str = "energy"
    forces: str = "forces"
    stress: str = "stress"
    virial: str = "virial"
    config_type: str = "config_type"


CONVENTIONS = ("", "dft_", "DFT_", "REF_", "ref_", "QM_")
"""Prefixes of label keys tried, in order, when no :class:`LabelKeys` is given: ASE's own names
(``energy``, ``forces``, ...), GAP's ``dft_energy`` / ``DFT_energy``, ``REF_energy`` (MACE and
nequip data sets), ``QM_energy``."""


def detect_keys(images: Sequence[Atoms], name: str) -> LabelKeys:
    """The :class:`LabelKeys` of the first convention of :data:`CONVENTIONS` whose keys some
    structure in ``images`` carries (ASE's names when none does)."""
    def present(key: str, per_atom: bool) -> bool:
        return any(_lookup(a, key, per_atom) is not None for a in images)

    found = {}
    for kind, per_atom in (("energy", False), ("forces", True), ("stress", False),
                           ("virial", False)):
        for prefix in CONVENTIONS:
            if present(prefix + kind, per_atom):
                found[kind] = prefix + kind
                break
    keys = LabelKeys(**found)
    other = {k: v for k, v in found.items() if v != k}
    if other:
        log.info("%s: labels read from %s (set LabelKeys or [data] *_key to choose others)",
                 name, ", ".join(f"{k} = {v!r}" for k, v in other.items()))
    return keys


def _keys_in(images: Sequence[Atoms]) -> str:
    """The per-structure and per-atom keys of a file, for an error that says where labels are."""
    info, arrays = set(), set()
    for a in images[:50]:
        info |= set(a.info)
        arrays |= set(a.arrays) - {"numbers", "positions"}
        if a.calc is not None:
            info |= set(getattr(a.calc, "results", {}))
    return (f"per-structure keys {sorted(info) or 'none'}, per-atom keys "
            f"{sorted(arrays) or 'none'}")


@dataclass
class Dataset(Sequence):
    """A validated list of :class:`Frame`.

    Attributes
    ----------
    frames : list of Frame
    skipped : dict
        Frame index in the source -> reason, for frames dropped with ``on_error="skip"``.
    """

    frames: list[Frame]
    skipped: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Dataset(self.frames[i])
        return self.frames[i]

    def __iter__(self) -> Iterator[Frame]:
        return iter(self.frames)

    @property
    def species(self) -> tuple[int, ...]:
        """Sorted atomic numbers present."""
        return tuple(sorted({int(z) for f in self.frames for z in f.atoms.numbers}))

    @property
    def n_atoms(self) -> int:
        """Total number of atoms."""
        return sum(f.n_atoms for f in self.frames)

    def config_types(self) -> dict[str, int]:
        """Number of frames per config_type."""
        return dict(Counter(f.config_type for f in self.frames))

    def subset(self, indices: Iterable[int]) -> Dataset:
        """The frames at the given positions (not source indices)."""
        return Dataset([self.frames[i] for i in indices])

    def to_atoms(self) -> list[Atoms]:
        """Copies of the structures with their labels attached (``Frame.to_atoms``)."""
        return [f.to_atoms() for f in self.frames]

    def write(self, path: str | Path) -> None:
        """Write as extended XYZ, through a temporary file renamed at the end."""
        import ase.io

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        ase.io.write(tmp, self.to_atoms(), format="extxyz")
        tmp.replace(path)

    def summary(self) -> str:
        """One line: frames, atoms, species, labels, config types."""
        n_e = sum(f.energy is not None for f in self.frames)
        n_f = sum(f.forces is not None for f in self.frames)
        n_s = sum(f.stress is not None for f in self.frames)
        sym = [chemical_symbols[z] for z in self.species]
        text = (f"{len(self)} frames, {self.n_atoms} atoms, species {sym}; labels: {n_e} energies, "
                f"{n_f} forces, {n_s} stresses; config types {self.config_types()}")
        if self.skipped:
            text += f"; {len(self.skipped)} frames skipped"
        return text


def _lookup(atoms: Atoms, key: str, per_atom: bool):
    store = atoms.arrays if per_atom else atoms.info
    if key in store:
        return store[key]
    calc = atoms.calc
    if calc is not None and key in getattr(calc, "results", {}):
        return calc.results[key]
    return None


def _read_source(source) -> tuple[list[Atoms], str]:
    if isinstance(source, Atoms):
        return [source], "<Atoms>"
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise DataError(f"no such file: {path}; check the path")
        if path.suffix == ".db":
            import ase.db

            images = []
            with ase.db.connect(path) as db:
                for row in db.select():
                    atoms = row.toatoms()
                    atoms.info.update(row.key_value_pairs)
                    atoms.info.update(row.data)
                    images.append(atoms)
            return images, str(path)
        import ase.io

        try:
            images = ase.io.read(path, ":")
        except Exception as exc:  # ase raises many types for a bad file
            raise DataError(f"cannot read {path}: {exc}; is it an extended XYZ or ase.db file?")
        return list(images), str(path)
    images = list(source)
    if not all(isinstance(a, Atoms) for a in images):
        raise DataError("expected a file path, an ase.Atoms or a list of ase.Atoms")
    return images, "<list of Atoms>"


def _frame_from_atoms(atoms: Atoms, index: int, source: str, keys: LabelKeys) -> Frame:
    """Extract labels; raises ValueError with a short reason for malformed ones."""
    n = len(atoms)
    energy = _lookup(atoms, keys.energy, per_atom=False)
    forces = _lookup(atoms, keys.forces, per_atom=True)
    stress = _lookup(atoms, keys.stress, per_atom=False)
    virial = _lookup(atoms, keys.virial, per_atom=False) if stress is None else None
    if energy is not None:
        arr = np.asarray(energy, dtype=float)
        if arr.size != 1:
            raise ValueError(f"energy has shape {arr.shape}; expected one number")
        energy = float(arr.reshape(()))
    if forces is not None:
        forces = np.array(forces, dtype=float)
        if forces.shape != (n, 3):
            raise ValueError(f"forces have shape {forces.shape}; expected ({n}, 3)")
    if stress is not None:
        stress = as_stress_3x3(stress, "stress")
    elif virial is not None:
        virial = as_stress_3x3(virial, "virial")
        volume = abs(atoms.cell.volume)
        if volume < 1e-8:
            raise ValueError("has a virial but no cell volume to turn it into a stress")
        stress = -virial / volume
    sigmas = {}
    for key in SIGMA_KEYS:
        if key in atoms.info:
            value = float(atoms.info[key])
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"{key}={atoms.info[key]} must be a positive number")
            sigmas[key] = value
    structure = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell,
                      pbc=atoms.pbc, info=dict(atoms.info))
    return Frame(atoms=structure, energy=energy, forces=forces, stress=stress,
                 config_type=str(atoms.info.get(keys.config_type, DEFAULT_CONFIG_TYPE)),
                 index=index, source=source, **sigmas)


def _problems(frame: Frame, species: set[int] | None, require: Sequence[str]) -> list[str]:
    out = []
    if frame.n_atoms == 0:
        out.append("has no atoms")
    if not np.isfinite(frame.atoms.positions).all():
        out.append("has non-finite positions")
    if species is not None:
        unknown = sorted(set(frame.atoms.numbers.tolist()) - species)
        if unknown:
            out.append(f"contains species {[chemical_symbols[z] for z in unknown]} not in "
                       f"{[chemical_symbols[z] for z in sorted(species)]}")
    if not frame.has_labels:
        out.append("has no energy, forces or stress")
    for name in require:
        if getattr(frame, name) is None:
            out.append(f"has no {name}")
    if frame.stress is not None and abs(frame.atoms.cell.volume) < 1e-8:
        out.append("has a stress but no cell volume")
    for name in ("energy", "forces", "stress"):
        value = getattr(frame, name)
        if value is not None and not np.isfinite(value).all():
            out.append(f"has non-finite {name}")
    return out


def _grouped(problems: dict[int, str]) -> str:
    """Offending frames listed one line per distinct reason (frames with the same reason
    together), at most :data:`MAX_LISTED` lines."""
    by_reason: dict[str, list[int]] = {}
    for i, why in problems.items():
        by_reason.setdefault(why, []).append(i)
    lines = []
    for why, idx in list(by_reason.items())[:MAX_LISTED]:
        shown = ", ".join(map(str, idx[:8])) + (f", ... ({len(idx)} frames)" if len(idx) > 8
                                                else "")
        lines.append(f"  frame{'s' if len(idx) > 1 else ''} {shown}: {why}")
    if len(by_reason) > MAX_LISTED:
        lines.append(f"  ... and {len(by_reason) - MAX_LISTED} more kinds of problem")
    return "\n".join(lines)


def check_frames(frames: Sequence[Frame], species: Iterable[int] | None = None) -> None:
    """Raise :class:`~gpmlip.errors.DataError` naming every frame whose labels or structure are
    unusable (non-finite labels or positions, wrong shapes, unknown species, no labels): the
    checks :func:`load_frames` makes, for frames built by hand."""
    allowed = None if species is None else set(int(z) for z in species)
    problems = {}
    for k, frame in enumerate(frames):
        if not isinstance(frame, Frame):
            raise DataError(f"frame {k} is a {type(frame).__name__}, not a gpmlip Frame")
        issues = _problems(frame, allowed, ())
        if frame.forces is not None and np.shape(frame.forces) != (frame.n_atoms, 3):
            issues.append(f"forces have shape {np.shape(frame.forces)}; expected "
                          f"({frame.n_atoms}, 3)")
        if frame.stress is not None and np.shape(frame.stress) != (3, 3):
            issues.append(f"stress has shape {np.shape(frame.stress)}; expected (3, 3)")
        if issues:
            problems[k] = "; ".join(issues)
    if problems:
        raise DataError(f"{len(problems)} of {len(frames)} frames are invalid:\n"
                        f"{_grouped(problems)}\n"
                        "Fix their labels or leave them out.")


def as_frames(source, species: Iterable[int] | None = None) -> list[Frame]:
    """Labelled frames from a :class:`Frame`, a :class:`Dataset`, a list of frames (checked as
    :func:`check_frames` checks them) or anything :func:`load_frames` reads.

    ``species`` (atomic numbers): frames with others raise
    :class:`~gpmlip.errors.UnknownSpeciesError`.
    """
    if isinstance(source, Frame):
        source = [source]
    if isinstance(source, Dataset) or (isinstance(source, (list, tuple)) and source and all(
            isinstance(f, Frame) for f in source)):
        data = list(source)
        if species is not None:
            check_known(np.concatenate([f.atoms.numbers for f in data]) if data else [],
                        species, what="the data", owner="the model's descriptor",
                        remedy="build the descriptor with those species")
        check_frames(data)
        return data
    return list(load_frames(source, species=species))


def label_summary(frames: Sequence[Frame]) -> dict[str, int]:
    """How many frames carry each label kind."""
    return {kind: sum(getattr(f, kind) is not None for f in frames)
            for kind in ("energy", "forces", "stress")}


def warn_missing_labels(frames: Sequence[Frame], what: str = "training data") -> None:
    """Log a warning for a label kind the data lacks: forces absent everywhere (a model then
    learns its forces from energies alone), or any kind present on some frames only."""
    counts = label_summary(frames)
    n = len(frames)
    if n and counts["forces"] == 0:
        log.warning("%s: none of the %d frames has forces; the model will learn forces from "
                    "energies alone and predict them poorly (check the forces key: "
                    "[data] forces_key or LabelKeys)", what, n)
    for kind, c in counts.items():
        if 0 < c < n:
            log.warning("%s: %d of %d frames have %s labels, %d have none", what, c, n,
                        "stress" if kind == "stress" else kind, n - c)


def load_frames(
    source,
    *,
    keys: LabelKeys | None = None,
    species: Iterable[str | int] | None = None,
    require: Sequence[str] = (),
    on_error: str = "raise",
    allow_duplicates: bool = False,
) -> Dataset:
    """Load and validate labelled structures.

    Parameters
    ----------
    source : str, Path, ase.Atoms or list of ase.Atoms
        An extended-XYZ file (any extension ASE reads), an ``ase.db`` file (``.db``), or structures
        with labels on their calculator or in ``info``/``arrays``.
    keys : LabelKeys, optional
        Where the labels are (default: ``energy``, ``forces``, ``stress``, ``virial``).
    species : iterable of str or int, optional
        The species a model knows; frames with others are invalid.
    require : sequence of {"energy", "forces", "stress"}
        Labels every frame must have (default: at least one of the three).
    on_error : {"raise", "skip"}
        ``"raise"``: one :class:`~gpmlip.errors.DataError` listing every offending frame.
        ``"skip"``: drop them with a warning; they are counted in ``Dataset.skipped``.
    allow_duplicates : bool
        Keep structures identical to an earlier one (same numbers, positions, cell, pbc).

    Returns
    -------
    Dataset
    """
    if on_error not in ("raise", "skip"):
        raise DataError(f"on_error={on_error!r}: use 'raise' or 'skip'")
    bad_require = set(require) - {"energy", "forces", "stress"}
    if bad_require:
        raise DataError(f"require={sorted(bad_require)}: use 'energy', 'forces' or 'stress'")
    allowed = None
    if species is not None:
        allowed = atomic_number_set(species, "species")
    images, name = _read_source(source)
    if not images:
        raise DataError(f"{name} holds no structures")
    keys = keys or detect_keys(images, name)

    frames, problems, seen = [], {}, {}
    for index, atoms in enumerate(images):
        try:
            frame = _frame_from_atoms(atoms, index, name, keys)
        except ValueError as exc:
            problems[index] = str(exc)
            continue
        issues = _problems(frame, allowed, require)
        if not allow_duplicates and not issues:
            first = seen.setdefault(frame.content_key, index)
            if first != index:
                issues.append(f"duplicates frame {first}")
        if issues:
            problems[index] = "; ".join(issues)
        else:
            frames.append(frame)
    if problems:
        text = f"{len(problems)} of {len(images)} frames in {name} are invalid:\n" + \
            _grouped(problems)
        if all("has no energy, forces or stress" in why for why in problems.values()):
            text += (f"\nNo frame has labels under the keys {keys}; the file has "
                     f"{_keys_in(images)}. Name the label keys: [data] energy_key, forces_key, "
                     "stress_key, virial_key in the settings file, or LabelKeys(...) in Python.")
        if on_error == "raise":
            raise DataError(text + "\nFix them, or drop them: [data] on_error = \"skip\" in the "
                            "settings file, load_frames(..., on_error=\"skip\") in Python.")
        log.warning("%s\nSkipping them.", text)
    if not frames:
        raise DataError(f"no valid frames left in {name}")
    dataset = Dataset(frames, skipped=problems)
    log.info("loaded %s from %s", dataset.summary(), name)
    return dataset
