"""A labelling queue: structures waiting for a reference calculation, in one ase.db SQLite file.

Every structure is one ase.db row.  Its key-value pairs say where it is in its life
(``state``: queued -> running -> done, or back to queued after a failed attempt, or failed
for good after ``max_attempts``), who holds it (``lease_owner``, ``lease_expires`` in unix
seconds), how often it was tried (``attempts``), where it came from (``source``) and, once
labelled, how (``labeller``, ``labeller_settings``, ``host``, ``pid``, ``started``,
``finished``, package versions, ``error``).  Energies, forces and stresses are the row's own
ase.db columns (written through a ``SinglePointCalculator``), so ``ase db queue.db state=done``
and ``ase gui queue.db@state=done`` work as usual.  The full provenance and the text of every
failed attempt are kept in the row's ``data``.  Nothing is pickled: ase.db stores arrays as
raw bytes and everything else as JSON.

The modules around it: :mod:`gpmlip.labelling.keys` (content keys), :mod:`gpmlip.labelling.store`
(the ase.db / SQLite coupling: atomic transactions, file checks, metadata) and
:mod:`gpmlip.labelling.export` (labelled rows out as frames and extended XYZ).  This module is
the state machine: add, claim, renew, complete.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from gpmlip.errors import QueueError, SettingsError, StructureError
from gpmlip.labelling import store
from gpmlip.labelling.export import row_frames, write_extxyz
from gpmlip.labelling.keys import content_key, labeller_key, labels_key, row_problem, text_ok
from gpmlip.labelling.labellers import BUILTIN, Labeller, LabelResult, get_labeller
from gpmlip.species import atomic_number_set, check_known

log = logging.getLogger(__name__)

STATES = ("queued", "running", "done", "failed")
"""Every state a row can be in."""


def _sqlite_errors(method):
    """Any SQLite failure inside a queue method becomes a QueueError that says whether the file
    is locked or damaged (it is never left half-written: every write is one transaction)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.DatabaseError, UnicodeDecodeError, json.JSONDecodeError) as err:
            path = getattr(self, "path", None) or Path(args[0])
            raise store.database_error(path, err) from err
    return wrapper


class LabelQueue:
    """Structures to label, their state, leases and results, in one ase.db SQLite file.

    Parameters
    ----------
    path : str or Path
        The queue file (``.db``).  Created if missing; an existing file must be a queue this
        class made, otherwise :class:`QueueError` is raised and the file is left untouched.
    labeller : str, dict, callable or Labeller, optional
        What labels the rows (see :func:`gpmlip.labelling.labellers.get_labeller`).  A new queue records
        it in its metadata; reopening with a different name or settings raises
        :class:`QueueError` (one queue, one labeller).  When omitted, a queue made with a
        built-in labeller rebuilds it from the record.
    species : sequence of str or int, optional
        Species :meth:`add` accepts (default: the list recorded at creation, else any).
    max_attempts : int
        Tries per row (failed labels and expired leases both count) before it is ``failed``.
    """

    @_sqlite_errors
    def __init__(self, path, labeller=None, *, species: Sequence[str | int] | None = None,
                 max_attempts: int = 3) -> None:
        if int(max_attempts) < 1:
            raise SettingsError(f"max_attempts={max_attempts}: use 1 or more")
        self.path = Path(path)
        self.max_attempts = int(max_attempts)
        if self.path.suffix != ".db":
            raise QueueError(f"queue file {self.path}: use a name ending in .db (an ase.db "
                             "SQLite file)")
        if self.path.exists():
            store.check_file(self.path)
        elif not self.path.parent.is_dir():
            raise QueueError(f"cannot create {self.path}: directory {self.path.parent} does not "
                             "exist")
        self._db = store.connect(self.path)
        lab = None if labeller is None else get_labeller(labeller)
        with self._write() as db:
            record = store.open_record(db, self.path, lab, species)
        self.labeller = lab or self._rebuild(record.get("labeller"))
        sp = species if species is not None else record.get("species")
        self.species = None if sp is None else sorted(atomic_number_set(sp, "species"))

    # -- transactions -------------------------------------------------------------------------

    def _write(self):
        """One ``BEGIN IMMEDIATE`` transaction; yields the ase.db object bound to it."""
        return store.transaction(self.path, self._db)

    def _rebuild(self, described: dict | None) -> Labeller | None:
        if described is None or described["name"] not in BUILTIN:
            return None
        return get_labeller({"name": described["name"], **described["settings"]},
                            timeout=described.get("timeout"))

    @_sqlite_errors
    def check_labeller(self, labeller) -> Labeller:
        """The labeller to run: ``labeller`` if it matches the queue's record, else the queue's own.

        Raises
        ------
        QueueError
            If neither is known or they differ.
        """
        if labeller is None:
            if self.labeller is None:
                raise QueueError(f"queue {self.path} does not know its labeller (a custom "
                                 "function): pass it, LabelQueue(path, labeller)")
            return self.labeller
        lab = get_labeller(labeller)
        record = self._db.metadata["gpmlip_queue"].get("labeller")
        if record is not None and labeller_key(lab) != {"name": record["name"],
                                                       "settings": record["settings"]}:
            raise QueueError(f"queue {self.path} labels with {record['name']} "
                             f"{record['settings']}, not {lab.name} {lab.settings}")
        return lab

    # -- adding -------------------------------------------------------------------------------

    def _validate(self, structures: Sequence[Atoms]) -> None:
        allowed = None if self.species is None else set(self.species)
        for i, atoms in enumerate(structures):
            if not isinstance(atoms, Atoms):
                raise StructureError(f"structure {i} is a {type(atoms).__name__}, not ase.Atoms; "
                                     "nothing from this call was added")
            if len(atoms) == 0:
                raise StructureError(f"structure {i} has no atoms; nothing from this call was "
                                     "added")
            if not (np.all(np.isfinite(atoms.positions)) and np.all(np.isfinite(atoms.cell.array))):
                raise StructureError(f"structure {i} has non-finite positions or cell; nothing "
                                     "from this call was added")
            if allowed is not None:
                check_known(atoms.numbers, allowed,
                            what=f"structure {i} ({atoms.get_chemical_formula()})",
                            owner="the queue", remedy="nothing from this call was added. Remove "
                            "the structure or use a queue made with those species.")

    @_sqlite_errors
    def add(self, structures: Atoms | Iterable[Atoms], source: str = "") -> list[int]:
        """Queue structures; one that is already in the queue is not added again.

        Parameters
        ----------
        structures : ase.Atoms or iterable of ase.Atoms
            Not modified.  Calculators and ``info`` are not stored; tags, masses, magnetic
            moments and constraints are.
        source : str
            Where they came from (e.g. ``"md-800K"``), stored as ``source``.

        Returns
        -------
        list of int
            The row id of each structure (the existing row's id for duplicates).

        Raises
        ------
        UnknownSpeciesError, StructureError
            Naming the offending structure; nothing from the call is added.
        """
        structures = [structures] if isinstance(structures, Atoms) else list(structures)
        if self.labeller is None:
            raise QueueError(f"queue {self.path} has no labeller yet; open it with one, "
                             "LabelQueue(path, labeller), so identical work is recognised")
        if source and not text_ok(source):
            raise SettingsError(f"source={source!r} reads as a number, which ase.db stores as "
                                "one; use text such as 'md-' + source")
        self._validate(structures)
        ids: list[int] = []
        new = 0
        with self._write() as db:
            for atoms in structures:
                key = content_key(atoms, self.labeller)
                found = db.connection.execute(
                    "SELECT id FROM text_key_values WHERE key='content_key' AND value=?",
                    (key,)).fetchone()
                if found:
                    ids.append(int(found[0]))
                    continue
                clean = atoms.copy()
                clean.calc = None
                kvp = {"state": "queued", "content_key": key, "attempts": 0,
                       "queued_at": time.time()}
                if source:
                    kvp["source"] = source
                ids.append(db.write(clean, key_value_pairs=kvp))
                new += 1
        log.info("queued %d new structures (%d already in %s)", new, len(ids) - new, self.path)
        return ids

    # -- claiming and completing --------------------------------------------------------------

    @_sqlite_errors
    def claim(self, n: int, worker: str, lease_seconds: float) -> list[tuple[int, Atoms]]:
        """Lease up to ``n`` rows to ``worker``, atomically across processes.

        Queued rows come first (lowest id first), then ``running`` rows whose lease has
        expired (their worker died); taking one over counts an attempt, and a row whose
        attempts are used up becomes ``failed`` instead.

        Returns
        -------
        list of (int, ase.Atoms)
            Row id and structure (no calculator) of each leased row.
        """
        if not worker or not text_ok(worker):
            raise SettingsError(f"worker={worker!r}: use a non-empty name that is not a number")
        if not lease_seconds > 0:
            raise SettingsError(f"lease_seconds={lease_seconds}: use a positive number")
        out: list[tuple[int, Atoms]] = []
        with self._write() as db:
            now = time.time()
            rows = list(db.select(state="queued", limit=n, sort="id")) if n > 0 else []
            if len(rows) < n:
                rows += list(db.select(f"state=running,lease_expires<{now!r}", sort="id"))
            for row in rows:
                if len(out) >= n:
                    break
                problem = row_problem(row, self.labeller)
                if problem is not None:
                    self._fail(db, row, f"damaged row: {problem}; it was not labelled "
                               "(the database was changed outside gpmlip)", {})
                    log.error("row %d: %s; marked failed instead of labelled", row.id, problem)
                    continue
                if row.state == "running":
                    log.warning("row %d: lease of %s expired, taking it over", row.id,
                                row.get("lease_owner"))
                    if row.attempts >= self.max_attempts:
                        self._fail(db, row, f"the lease of worker {row.get('lease_owner')} "
                                   f"expired on attempt {row.attempts} of {self.max_attempts} "
                                   "(the worker died or was cut off)", {})
                        continue
                db.update(row.id, attempts=int(row.attempts) + 1, state="running",
                          lease_owner=worker, lease_expires=now + lease_seconds, claimed_at=now)
                out.append((row.id, row.toatoms()))
        return out

    @_sqlite_errors
    def renew(self, row_ids: Iterable[int], worker: str, lease_seconds: float) -> list[int]:
        """Extend the leases ``worker`` still holds; returns the ids it lost to others."""
        lost = []
        with self._write() as db:
            until = time.time() + lease_seconds
            for rid in row_ids:
                row = db.get(id=rid)
                if row.state == "running" and row.get("lease_owner") == worker:
                    db.update(rid, lease_expires=until)
                else:
                    lost.append(rid)
        return lost

    def _fail(self, db, row, error: str, prov_kvp: dict) -> None:
        errors = list(row.data.get("errors", [])) + [error]
        db.update(row.id, delete_keys=["lease_owner", "lease_expires"], state="failed",
                  data={"errors": errors}, **prov_kvp,
                  error=error if text_ok(error) else f"error: {error}")

    @_sqlite_errors
    def complete(self, row_id: int, result: LabelResult, provenance: dict,
                 worker: str) -> str | None:
        """Store a label (or a failed attempt) and the row's new state in one transaction.

        Parameters
        ----------
        row_id : int
        result : LabelResult
            From :func:`gpmlip.labelling.labellers.run_labeller`.  A failed one sends the row back to
            ``queued``, or to ``failed`` with its error text after ``max_attempts``.
        provenance : dict
            JSON-serialisable facts of the call (host, pid, started, finished, versions...).
        worker : str
            Who claimed the row.

        Returns
        -------
        str or None
            The row's new state (``"done"``, ``"queued"`` or ``"failed"``), or None if
            ``worker`` no longer held the lease (another worker took the row over): nothing is
            written then, so a row is never labelled and stored twice.
        """
        with self._write() as db:
            row = db.get(id=row_id)
            if row.state != "running" or row.get("lease_owner") != worker:
                log.warning("row %d: result from %s ignored, the row is %s by %s", row_id,
                            worker, row.state, row.get("lease_owner", "nobody"))
                return None
            prov = {**provenance}
            if self.labeller is not None:
                prov.setdefault("labeller", self.labeller.name)
                prov.setdefault("labeller_settings", json.dumps(self.labeller.settings,
                                                                sort_keys=True))
            kvp = store.provenance_columns(prov, worker, result.seconds)
            data = {"provenance": prov}
            if result.ok:
                atoms = row.toatoms()
                atoms.calc = SinglePointCalculator(atoms, energy=result.energy,
                                                   forces=result.forces, stress=result.stress)
                kvp["label_key"] = labels_key(atoms)
                db.update(row_id, atoms=atoms, state="done", data=data, **kvp,
                          delete_keys=["lease_owner", "lease_expires", "last_error", "error"])
                return "done"
            if row.attempts >= self.max_attempts:
                self._fail(db, row, result.error, {**kvp})
                db.update(row_id, data=data)
                return "failed"
            errors = list(row.data.get("errors", [])) + [result.error]
            if text_ok(result.error):
                kvp["last_error"] = result.error
            db.update(row_id, delete_keys=["lease_owner", "lease_expires"], state="queued",
                      data={**data, "errors": errors}, **kvp)
            log.info("row %d: attempt %d of %d failed (%s), queued again", row_id,
                     row.attempts, self.max_attempts, result.error)
            return "queued"

    # -- reading ------------------------------------------------------------------------------

    @_sqlite_errors
    def counts(self) -> dict[str, int]:
        """Number of rows in each state."""
        return {state: self._db.count(state=state) for state in STATES}

    @_sqlite_errors
    def rows(self, state: str | None = None) -> list:
        """The ase.db rows (``ase.db.row.AtomsRow``), all or those in ``state``."""
        if state is not None and state not in STATES:
            raise SettingsError(f"state={state!r}: use one of {STATES}")
        return list(self._db.select() if state is None else self._db.select(state=state))

    @_sqlite_errors
    def next_lease_expiry(self) -> float | None:
        """The earliest ``lease_expires`` of a running row (unix time), None if none runs."""
        times = [row.lease_expires for row in self._db.select(state="running")]
        return min(times) if times else None

    @_sqlite_errors
    def frames(self, state: str = "done") -> list[Atoms]:
        """The rows as Atoms, labelled ones with a ``SinglePointCalculator``.

        ``info`` holds ``queue_id`` (the row id), ``config_type="queue"`` and ``source`` (if
        the row has one).
        """
        rows = self.rows(state)
        damaged = {row.id: why for row in rows
                   if (why := row_problem(row, self.labeller)) is not None}
        if damaged:
            listed = "; ".join(f"row {i}: {why}" for i, (why) in list(damaged.items())[:10])
            raise QueueError(f"{self.path}: {len(damaged)} of {len(rows)} {state} rows are "
                             f"damaged ({listed}); nothing was read. Restore the queue from a "
                             "backup, or delete those rows and add their structures again.")
        return row_frames(rows)

    @_sqlite_errors
    def export(self, path, state: str = "done") -> int:
        """Write :meth:`frames` to an extended XYZ file (via a temporary name, then renamed).

        Returns
        -------
        int
            Number of frames written.
        """
        frames = self.frames(state)
        write_extxyz(Path(path), frames)
        log.info("exported %d %s frames to %s", len(frames), state, path)
        return len(frames)

    def __repr__(self) -> str:
        return f"LabelQueue({str(self.path)!r}, {self.counts()})"
