"""Labeller factories for the queue tests: importable module-level functions, so process
pools and Parsl workers can unpickle them (the tests directory is on their sys.path)."""

from __future__ import annotations

import hashlib
import os
import sys
import time
import uuid
from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT

RAISE, HANG, NAN = 1, 2, 3
"""Tag of atom 0 that makes :func:`picky` fail in each way."""


def structure_id(atoms) -> str:
    """Short hash of the positions, to name call records."""
    return hashlib.sha256(np.ascontiguousarray(atoms.positions).tobytes()).hexdigest()[:12]


def cu_structures(n: int, *, repeat: int = 1, seed: int = 0, rattle: float = 0.05):
    """``n`` distinct rattled fcc Cu cells (4 * repeat**3 atoms)."""
    out = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
        atoms.rattle(rattle, seed=seed * 1000 + i)
        out.append(atoms)
    return out


class Recording(EMT):
    """EMT that writes ``start-<structure>-<pid>-<uuid>`` before and ``end-...`` after."""

    def __init__(self, record_dir: str, delay: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.record_dir, self.delay = Path(record_dir), delay

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        name = f"{structure_id(atoms)}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        (self.record_dir / f"start-{name}").write_text("")
        time.sleep(self.delay)
        super().calculate(atoms, properties, system_changes)
        (self.record_dir / f"end-{name}").write_text("")


def recording(record_dir: str, delay: float = 0.0) -> Recording:
    """Factory of :class:`Recording`."""
    return Recording(record_dir, delay)


def calls(record_dir, kind: str = "end") -> dict[str, int]:
    """Structure hash -> number of ``kind`` ("start"/"end") records."""
    out: dict[str, int] = {}
    for path in Path(record_dir).glob(f"{kind}-*"):
        key = path.name.split("-")[1]
        out[key] = out.get(key, 0) + 1
    return out


class Picky(EMT):
    """EMT that raises, hangs or returns NaN forces depending on the tag of atom 0."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        tag = int(atoms.get_tags()[0])
        if tag == RAISE:
            raise RuntimeError("SCF did not converge")
        if tag == HANG:
            time.sleep(120)
        super().calculate(atoms, properties, system_changes)
        if tag == NAN:
            self.results["forces"][0, 0] = np.nan


def picky() -> Picky:
    """Factory of :class:`Picky`."""
    return Picky()


class Sleepy(EMT):
    """EMT after a fixed sleep (a stand-in for an expensive calculation)."""

    def __init__(self, seconds: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.seconds = seconds

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        time.sleep(self.seconds)
        super().calculate(atoms, properties, system_changes)


def sleepy(seconds: float = 0.5) -> Sleepy:
    """Factory of :class:`Sleepy`."""
    return Sleepy(seconds)


def coordinator_main(argv: list[str]) -> None:
    """``python queue_helpers.py QUEUE RECORD_DIR DELAY LEASE``: one coordinator process."""
    import json

    from gpmlip.labelling.labellers import Labeller
    from gpmlip.labelling import LabelQueue, label_queue

    path, record_dir, delay, lease = argv[0], argv[1], float(argv[2]), float(argv[3])
    lab = Labeller("recording", recording, {"record_dir": record_dir, "delay": delay})
    queue = LabelQueue(path, lab)
    summary = label_queue(queue, max_workers=1, batch=1, lease_seconds=lease)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    # Import ourselves by module name, so the factories pickle as queue_helpers.recording
    # (not __main__.recording) for the worker processes.
    from queue_helpers import coordinator_main as main

    main(sys.argv[1:])
