"""The on-disk record of an active-learning run: labels, checkpoints, trajectory, events.

Layout of a run directory::

    labels/000001.json   one file per labeller call (done or failed), written before use
    checkpoint.json      what has been applied: label count, model file, MD state, counters
    model-000007.npz     the model after the checkpoint's last label (older ones are removed)
    trajectory.extxyz    MD frames with per-atom uncertainties
    events.jsonl         one line per labeller call: step, uncertainty, errors, timings
    labelled.extxyz      the labelled set, exported for other codes (derived from labels/)
    model.npz            the final model (written when the run ends)
    summary.json         counts and timings (written when the run ends)

Every file that matters is written to a temporary name and renamed, so a process killed at any
moment leaves either the old or the new version, never half of one.  Labels are the source of
truth: a label on disk that the checkpoint has not applied yet is applied on resume, never
recomputed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ase import Atoms
from ase.stress import voigt_6_to_full_3x3_stress

from gpmlip.data import Frame
from gpmlip.errors import RunDirectoryError
from gpmlip.labelling.labellers import LabelResult

if TYPE_CHECKING:
    from gpmlip.gp.model import SparseGP

log = logging.getLogger(__name__)

LABEL_FORMAT = "gpmlip-label"
LABEL_VERSION = 1


def write_json(path: Path, obj) -> None:
    """Write JSON to ``path`` atomically (temporary file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    """Read a JSON file written by :func:`write_json`, with a clear error if damaged."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError) as err:
        raise RunDirectoryError(f"{path} cannot be read ({err}); it is not a file this run "
                                "wrote, or the disk is damaged") from err


def structure_dict(atoms: Atoms) -> dict:
    """Numbers, positions, cell and pbc of a structure as plain data."""
    return {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
            "cell": atoms.cell.array.tolist(), "pbc": [bool(p) for p in atoms.pbc]}


def structure_atoms(d: dict) -> Atoms:
    """Inverse of :func:`structure_dict`."""
    return Atoms(numbers=d["numbers"], positions=d["positions"], cell=d["cell"], pbc=d["pbc"])


def label_frame(record: dict) -> Frame:
    """The labelled :class:`~gpmlip.Frame` of a successful label record."""
    result = LabelResult.from_dict(record["result"])
    stress = None if result.stress is None else voigt_6_to_full_3x3_stress(result.stress)
    return Frame(structure_atoms(record["structure"]), result.energy, result.forces, stress,
                 config_type=record.get("config_type", "otf"), index=record["index"],
                 source=f"label {record['index']}")


LABEL_FIELDS = {"index": int, "step": int, "attempt": int, "structure": dict, "result": dict,
                "max_std": (int, float), "sparse_atoms": list, "md": dict}
"""The fields every label record has, with their JSON types."""


def _label_problem(record: dict, path: Path) -> str:
    """What is wrong with a label record's fields ('' if nothing): missing or mistyped fields,
    or an index that is not the one its file name says."""
    for key, kind in LABEL_FIELDS.items():
        value = record.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"field {key!r} is {value!r}"
    if not path.stem.isdigit() or record["index"] != int(path.stem):
        return f"its index {record['index']} is not its file's"
    if not isinstance(record["result"].get("ok"), bool):
        return "its result has no ok flag"
    return ""


class RunDirectory:
    """Files of one active-learning run (see the module docstring for the layout).

    Parameters
    ----------
    path : str or Path
        Created if missing.
    """

    def __init__(self, path) -> None:
        self.path = Path(path)
        self.labels_dir = self.path / "labels"
        self.checkpoint_path = self.path / "checkpoint.json"
        self.trajectory_path = self.path / "trajectory.extxyz"
        self.events_path = self.path / "events.jsonl"

    def create(self) -> None:
        """Make the directories."""
        self.labels_dir.mkdir(parents=True, exist_ok=True)

    def has_run(self) -> bool:
        """Whether an earlier run left labels or a checkpoint here."""
        return self.checkpoint_path.exists() or any(self.labels_dir.glob("*.json"))

    # -- labels ----------------------------------------------------------------------------
    def write_label(self, record: dict) -> Path:
        """Write one label record (before anything uses it)."""
        record = {"format": LABEL_FORMAT, "version": LABEL_VERSION, **record}
        path = self.labels_dir / f"{record['index']:06d}.json"
        if path.exists():
            raise RunDirectoryError(f"{path} exists already: two runs are writing to "
                                    f"{self.path}; give each its own directory")
        write_json(path, record)
        return path

    def labels(self, after: int = 0) -> list[dict]:
        """Label records with index > ``after``, in order; checks there are no gaps."""
        records = []
        for path in sorted(self.labels_dir.glob("[0-9]*.json")):
            record = read_json(path)
            if not isinstance(record, dict) or record.get("format") != LABEL_FORMAT \
                    or record.get("version") != LABEL_VERSION:
                what = (f"format {record.get('format')!r} {record.get('version')!r}"
                        if isinstance(record, dict) else f"a JSON {type(record).__name__}")
                raise RunDirectoryError(f"{path} is not a gpmlip label ({what})")
            problem = _label_problem(record, path)
            if problem:
                raise RunDirectoryError(f"{path} is damaged ({problem}); restore it from a "
                                        "backup, or start a new run (a label cannot be "
                                        "skipped: later labels were chosen knowing it)")
            if record["index"] > after:
                records.append(record)
        expected = list(range(after + 1, after + 1 + len(records)))
        if [r["index"] for r in records] != expected:
            raise RunDirectoryError(f"labels in {self.labels_dir} are not numbered "
                                    f"{after + 1}, {after + 2}, ...: files were removed by hand")
        return records

    def export_labelled(self, path: Path | None = None) -> Path:
        """Write every successful label as extended XYZ (for ``SparseGP.fit``, GAP, FLARE)."""
        import ase.io

        path = path or self.path / "labelled.extxyz"
        frames = []
        for record in self.labels():
            if record["result"]["ok"]:
                atoms = label_frame(record).to_atoms()
                atoms.info.update(step=record["step"], label_index=record["index"])
                frames.append(atoms)
        tmp = path.with_name(path.name + ".tmp")
        ase.io.write(tmp, frames, format="extxyz")
        os.replace(tmp, path)
        return path

    # -- checkpoints -----------------------------------------------------------------------
    def write_checkpoint(self, state: dict, model: SparseGP | None = None) -> None:
        """Save the model (if given) under a new name, then the checkpoint that points to it.

        ``state["n_labels"]`` names the model file, so a kill between the two writes leaves
        the previous checkpoint and its model intact.
        """
        if model is not None:
            name = f"model-{state['n_labels']:06d}.npz"
            model.save(self.path / name)
            state = {**state, "model": name}
        write_json(self.checkpoint_path, state)
        for old in self.path.glob("model-*.npz"):
            if old.name != state.get("model"):
                old.unlink(missing_ok=True)

    def read_checkpoint(self) -> dict | None:
        """The last checkpoint, or None if the run never wrote one."""
        if not self.checkpoint_path.exists():
            return None
        return read_json(self.checkpoint_path)

    # -- trajectory and events -------------------------------------------------------------
    def append_trajectory(self, atoms: Atoms) -> None:
        """Append one frame to ``trajectory.extxyz``."""
        import ase.io

        with open(self.trajectory_path, "a") as fh:
            ase.io.write(fh, atoms, format="extxyz")

    def append_event(self, event: dict) -> None:
        """Append one line to ``events.jsonl``."""
        with open(self.events_path, "a") as fh:
            fh.write(json.dumps(event) + "\n")

    def events(self) -> list[dict]:
        """Events written so far (a line cut short by a kill is dropped)."""
        if not self.events_path.exists():
            return []
        out = []
        # a damaged byte spoils its line only: that line is dropped (and rebuilt from labels/
        # on resume), the others are kept
        for line in self.events_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def rewind(self, step: int, n_labels: int) -> None:
        """Drop trajectory frames after ``step`` and events after label ``n_labels``.

        Called on resume: the steps after the checkpoint are run again.
        """
        import ase.io

        if self.trajectory_path.exists():
            kept = []
            try:
                for atoms in ase.io.iread(self.trajectory_path, format="extxyz"):
                    if atoms.info.get("step", 0) <= step:
                        kept.append(atoms)
            except Exception:   # noqa: BLE001 - a frame cut short by a kill ends the file
                log.info("dropped an incomplete frame at the end of %s", self.trajectory_path)
            tmp = self.trajectory_path.with_name("trajectory.extxyz.tmp")
            tmp.write_text("")
            if kept:
                ase.io.write(tmp, kept, format="extxyz")
            os.replace(tmp, self.trajectory_path)
        self.rewrite_events([e for e in self.events() if e.get("label", 0) <= n_labels])

    def rewrite_events(self, events: list[dict]) -> None:
        """Replace ``events.jsonl`` with ``events`` (atomically)."""
        tmp = self.events_path.with_name("events.jsonl.tmp")
        tmp.write_text("".join(json.dumps(e) + "\n" for e in events))
        os.replace(tmp, self.events_path)

