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

Atomic claiming
---------------
ase.db's own ``update`` reads a row and writes it back in two steps, so two processes could
claim the same row.  Every state change here therefore runs in one SQLite transaction opened
with ``BEGIN IMMEDIATE`` on a raw :mod:`sqlite3` connection to the same file, and the ase.db
object is pointed at that connection for the duration (ase.db then issues its reads and
writes inside our transaction and leaves the commit to us).  ``BEGIN IMMEDIATE`` takes
SQLite's write lock before the first read, so "select claimable rows, mark them running" is
one indivisible step across threads and processes; other writers wait (busy timeout) and
readers see either the old or the new state, never a half-written row.  This needs no extra
table and no lock file: ase.db's own lock file (``use_lock_file``) is switched off because a
worker killed while holding it would leave it behind and block every other process.  The
rollback journal (not WAL) is kept, so the file also works on network file systems that
support POSIX locks; on file systems whose locking is broken (some NFS setups) put the queue
on a local or a properly locking file system.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import chemical_symbols
from ase.db.core import reserved_keys

from gpmlip.errors import GpmlipError, SettingsError, StructureError, UnknownSpeciesError
from gpmlip.labellers import BUILTIN, Labeller, LabelResult, get_labeller
from gpmlip.species import atomic_number_set

log = logging.getLogger(__name__)

STATES = ("queued", "running", "done", "failed")
"""Every state a row can be in."""

FORMAT = 1
"""Version of the queue layout, recorded in the ase.db metadata under ``gpmlip_queue``."""

_OWN_KEYS = {"state", "content_key", "attempts", "lease_owner", "lease_expires", "source",
             "queued_at", "claimed_at", "error", "last_error"}
_SQLITE_MAGIC = b"SQLite format 3\x00"
_BUSY_TIMEOUT = 120.0   # seconds a writer waits for another one's transaction


class QueueError(GpmlipError, RuntimeError):
    """A queue file cannot be used (damaged, not a queue, another labeller) or misused."""


class _NoCommit(sqlite3.Connection):
    """A connection ase.db cannot commit: the transaction belongs to :meth:`LabelQueue._write`."""

    def commit(self) -> None:   # noqa: D102 - ase.db calls this; our COMMIT is explicit
        pass


def labeller_key(labeller: Labeller) -> dict:
    """The part of a labeller that decides its numbers: name and settings (not the timeout)."""
    return {"name": labeller.name, "settings": labeller.settings}


def content_key(atoms: Atoms, labeller: Labeller) -> str:
    """``sha256:`` hash of the exact structure and the labeller's name and settings.

    The structure enters as the bytes of its atomic numbers (int64), positions and cell
    (float64) and pbc, so two structures share a key only if they are bit-for-bit equal.
    """
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(atoms.positions, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(atoms.cell.array, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(atoms.pbc, dtype=bool).tobytes())
    h.update(json.dumps(labeller_key(labeller), sort_keys=True, separators=(",", ":"),
                        default=str).encode())
    return "sha256:" + h.hexdigest()


def _text_ok(value: str) -> bool:
    """Whether ase.db accepts ``value`` as a text key-value (it refuses number-like text)."""
    for kind in (int, float):
        try:
            kind(value)
            return False
        except ValueError:
            pass
    return value.lower() not in ("true", "false")


def _check_file(path: Path) -> None:
    """Refuse files that are not a gpmlip queue, reading them without any change."""
    head = b""
    for _ in range(10):   # another process may have just created it: sqlite writes on commit
        with open(path, "rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
        if head:
            break
        time.sleep(0.1)
    if head != _SQLITE_MAGIC:
        what = "an empty file" if not head else "not an SQLite database (damaged, or another format)"
        raise QueueError(f"{path} is {what}, so it cannot be a gpmlip labelling queue; it was not "
                         "modified. Give a new file name for a new queue, or restore the queue "
                         "from a backup.")
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            meta = None
            if {"systems", "information"} <= tables:
                rows = con.execute("SELECT value FROM information WHERE name='metadata'").fetchall()
                meta = json.loads(rows[0][0]) if rows else {}
        finally:
            con.close()
    except (sqlite3.DatabaseError, json.JSONDecodeError) as err:
        raise QueueError(f"{path} is a damaged SQLite database ({err}); it was not modified. "
                         "Restore the queue from a backup, or start a new one under another name "
                         "and add the structures again.") from err
    if meta is None:
        raise QueueError(f"{path} is an SQLite database but not an ase.db file (tables: "
                         f"{sorted(tables) or 'none'}); it was not modified. Give a new file "
                         "name for the labelling queue.")
    if "gpmlip_queue" not in meta:
        raise QueueError(f"{path} is an ase.db database but not a gpmlip labelling queue; it was "
                         "not modified. To label its structures, open a new queue file and "
                         "add them: queue.add([row.toatoms() for row in ase.db.connect(path)."
                         "select()])")
    fmt = meta["gpmlip_queue"].get("format")
    if fmt != FORMAT:
        raise QueueError(f"{path} is a gpmlip queue of format {fmt}; this gpmlip reads format "
                         f"{FORMAT}. Use the gpmlip version that wrote it.")


class LabelQueue:
    """Structures to label, their state, leases and results, in one ase.db SQLite file.

    Parameters
    ----------
    path : str or Path
        The queue file (``.db``).  Created if missing; an existing file must be a queue this
        class made, otherwise :class:`QueueError` is raised and the file is left untouched.
    labeller : str, dict, callable or Labeller, optional
        What labels the rows (see :func:`gpmlip.labellers.get_labeller`).  A new queue records
        it in its metadata; reopening with a different name or settings raises
        :class:`QueueError` (one queue, one labeller).  When omitted, a queue made with a
        built-in labeller rebuilds it from the record.
    species : sequence of str or int, optional
        Species :meth:`add` accepts (default: the list recorded at creation, else any).
    max_attempts : int
        Tries per row (failed labels and expired leases both count) before it is ``failed``.
    """

    def __init__(self, path, labeller=None, *, species: Sequence[str | int] | None = None,
                 max_attempts: int = 3) -> None:
        import ase.db

        if int(max_attempts) < 1:
            raise SettingsError(f"max_attempts={max_attempts}: use 1 or more")
        self.path = Path(path)
        self.max_attempts = int(max_attempts)
        if self.path.suffix != ".db":
            raise QueueError(f"queue file {self.path}: use a name ending in .db (an ase.db "
                             "SQLite file)")
        if self.path.exists():
            _check_file(self.path)
        elif not self.path.parent.is_dir():
            raise QueueError(f"cannot create {self.path}: directory {self.path.parent} does not "
                             "exist")
        self._db = ase.db.connect(str(self.path), type="db", use_lock_file=False)
        lab = None if labeller is None else get_labeller(labeller)
        record = self._open(lab, species)
        self.labeller = lab or self._rebuild(record.get("labeller"))
        sp = species if species is not None else record.get("species")
        self.species = None if sp is None else sorted(atomic_number_set(sp, "species"))

    # -- transactions -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator:
        """One ``BEGIN IMMEDIATE`` transaction; yields the ase.db object bound to it."""
        con = sqlite3.connect(str(self.path), timeout=_BUSY_TIMEOUT, isolation_level=None,
                              factory=_NoCommit)
        try:
            con.execute("BEGIN IMMEDIATE")
            self._db.connection, self._db.change_count = con, 0
            try:
                yield self._db
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        finally:
            self._db.connection = None
            con.close()

    def _open(self, lab: Labeller | None, species) -> dict:
        """Create the queue (tables, metadata) or check the labeller against its record."""
        with self._write() as db:
            meta = db.metadata
            record = meta.get("gpmlip_queue")
            if record is None:   # a new file (an existing non-queue was refused before)
                record = {"format": FORMAT, "created": time.time(),
                          "labeller": None if lab is None else lab.describe(),
                          "species": None if species is None else [
                              chemical_symbols[z] for z in sorted(atomic_number_set(species))]}
                db.connection.execute("CREATE INDEX IF NOT EXISTS gpmlip_text_value "
                                      "ON text_key_values(key, value)")
                db.metadata = {**meta, "gpmlip_queue": record,
                               "title": "gpmlip labelling queue",
                               "default_columns": ["id", "formula", "state", "attempts",
                                                   "source", "energy", "fmax", "error"]}
                log.info("created labelling queue %s", self.path)
            elif lab is not None:
                known = record.get("labeller")
                if known is None:
                    record = {**record, "labeller": lab.describe()}
                    db.metadata = {**meta, "gpmlip_queue": record}
                elif labeller_key(lab) != {"name": known["name"], "settings": known["settings"]}:
                    raise QueueError(
                        f"queue {self.path} labels with {known['name']} {known['settings']}, not "
                        f"{lab.name} {lab.settings}: use one queue file per labeller")
        return record

    def _rebuild(self, described: dict | None) -> Labeller | None:
        if described is None or described["name"] not in BUILTIN:
            return None
        return get_labeller({"name": described["name"], **described["settings"]},
                            timeout=described.get("timeout"))

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
                extra = sorted(set(atoms.numbers.tolist()) - allowed)
                if extra:
                    raise UnknownSpeciesError(
                        f"structure {i} ({atoms.get_chemical_formula()}) contains "
                        f"{', '.join(chemical_symbols[z] for z in extra)}, not among the queue's "
                        f"species {[chemical_symbols[z] for z in allowed]}; nothing from this "
                        "call was added. Remove the structure or use a queue made with those "
                        "species.")

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
        if source and not _text_ok(source):
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
        if not worker or not _text_ok(worker):
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
                  error=error if _text_ok(error) else f"error: {error}")

    def complete(self, row_id: int, result: LabelResult, provenance: dict,
                 worker: str) -> str | None:
        """Store a label (or a failed attempt) and the row's new state in one transaction.

        Parameters
        ----------
        row_id : int
        result : LabelResult
            From :func:`gpmlip.labellers.run_labeller`.  A failed one sends the row back to
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
            kvp = {"worker": worker, "label_seconds": float(result.seconds)}
            for k, v in prov.items():
                if k in ("gpmlip", "ase", "numpy"):
                    k = f"{k}_version"
                if not k.isidentifier() or k in reserved_keys or k in _OWN_KEYS:
                    continue
                if isinstance(v, bool) or (isinstance(v, (int, float)) and np.isfinite(v)):
                    kvp[k] = v
                elif isinstance(v, str) and v and _text_ok(v):
                    kvp[k] = v
            data = {"provenance": prov}
            if result.ok:
                atoms = row.toatoms()
                atoms.calc = SinglePointCalculator(atoms, energy=result.energy,
                                                   forces=result.forces, stress=result.stress)
                db.update(row_id, atoms=atoms, state="done", data=data, **kvp,
                          delete_keys=["lease_owner", "lease_expires", "last_error", "error"])
                return "done"
            if row.attempts >= self.max_attempts:
                self._fail(db, row, result.error, {**kvp})
                db.update(row_id, data=data)
                return "failed"
            errors = list(row.data.get("errors", [])) + [result.error]
            if _text_ok(result.error):
                kvp["last_error"] = result.error
            db.update(row_id, delete_keys=["lease_owner", "lease_expires"], state="queued",
                      data={**data, "errors": errors}, **kvp)
            log.info("row %d: attempt %d of %d failed (%s), queued again", row_id,
                     row.attempts, self.max_attempts, result.error)
            return "queued"

    # -- reading ------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Number of rows in each state."""
        return {state: self._db.count(state=state) for state in STATES}

    def rows(self, state: str | None = None) -> list:
        """The ase.db rows (``ase.db.row.AtomsRow``), all or those in ``state``."""
        if state is not None and state not in STATES:
            raise SettingsError(f"state={state!r}: use one of {STATES}")
        return list(self._db.select() if state is None else self._db.select(state=state))

    def next_lease_expiry(self) -> float | None:
        """The earliest ``lease_expires`` of a running row (unix time), None if none runs."""
        times = [row.lease_expires for row in self._db.select(state="running")]
        return min(times) if times else None

    def frames(self, state: str = "done") -> list[Atoms]:
        """The rows as Atoms, labelled ones with a ``SinglePointCalculator``.

        ``info`` holds ``queue_id`` (the row id), ``config_type="queue"`` and ``source`` (if
        the row has one).
        """
        out = []
        for row in self.rows(state):
            atoms = row.toatoms()
            atoms.info.update({"queue_id": row.id, "config_type": "queue"})
            if row.get("source"):   # an empty value would not survive extended XYZ
                atoms.info["source"] = row.source
            out.append(atoms)
        return out

    def export(self, path, state: str = "done") -> int:
        """Write :meth:`frames` to an extended XYZ file (via a temporary name, then renamed).

        Returns
        -------
        int
            Number of frames written.
        """
        import ase.io

        path = Path(path)
        frames = self.frames(state)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            ase.io.write(tmp, frames, format="extxyz")
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        log.info("exported %d %s frames to %s", len(frames), state, path)
        return len(frames)

    def __repr__(self) -> str:
        return f"LabelQueue({str(self.path)!r}, {self.counts()})"
