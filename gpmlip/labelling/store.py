"""The labelling queue's coupling to ase.db and SQLite: file checks, transactions, metadata.

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
import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols
from ase.db.core import reserved_keys

from gpmlip.errors import QueueError
from gpmlip.labelling.keys import labeller_key, text_ok
from gpmlip.labelling.labellers import Labeller
from gpmlip.species import atomic_number_set

log = logging.getLogger(__name__)

FORMAT = 1
"""Version of the queue layout, recorded in the ase.db metadata under ``gpmlip_queue``."""

OWN_KEYS = {"state", "content_key", "attempts", "lease_owner", "lease_expires", "source",
            "queued_at", "claimed_at", "error", "last_error", "label_key"}
"""Key-value pairs the queue's state machine owns (provenance never overwrites them)."""

SQLITE_MAGIC = b"SQLite format 3\x00"
BUSY_TIMEOUT = 120.0   # seconds a writer waits for another one's transaction


class _NoCommit(sqlite3.Connection):
    """A connection ase.db cannot commit: the transaction belongs to :func:`transaction`."""

    def commit(self) -> None:   # noqa: D102 - ase.db calls this; our COMMIT is explicit
        pass


def database_error(path: Path, err: Exception) -> QueueError:
    """The error for an SQLite failure on a queue file: locked by another process, or damaged
    (nothing was changed either way: every write is one transaction)."""
    if "locked" in str(err) or "busy" in str(err):
        return QueueError(f"{path} is locked by another process (a coordinator or labeller "
                          f"writing to it) for more than {BUSY_TIMEOUT:g} s; it was not "
                          "modified. Try again when that process has finished.")
    return QueueError(f"{path} is a damaged SQLite database ({err}); it was not modified. "
                      "Restore the queue from a backup, or start a new one under another name "
                      "and add the structures again.")


def check_file(path: Path) -> None:
    """Refuse files that are not a gpmlip queue, reading them without any change."""
    head = b""
    for _ in range(10):   # another process may have just created it: sqlite writes on commit
        with open(path, "rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
        if head:
            break
        time.sleep(0.1)
    if head != SQLITE_MAGIC:
        what = "an empty file" if not head else "not an SQLite database (damaged, or another format)"
        raise QueueError(f"{path} is {what}, so it cannot be a gpmlip labelling queue; it was not "
                         "modified. Give a new file name for a new queue, or restore the queue "
                         "from a backup.")
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                              timeout=BUSY_TIMEOUT)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            meta = None
            if {"systems", "information"} <= tables:
                rows = con.execute("SELECT value FROM information WHERE name='metadata'").fetchall()
                meta = json.loads(rows[0][0]) if rows else {}
        finally:
            con.close()
    except (sqlite3.DatabaseError, ValueError) as err:   # ValueError: bad JSON or text bytes
        raise database_error(path, err) from err
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


def connect(path: Path):
    """The ase.db object of a queue file (its own lock file off: see the module docstring)."""
    import ase.db

    return ase.db.connect(str(path), type="db", use_lock_file=False)


@contextlib.contextmanager
def transaction(path: Path, db) -> Iterator:
    """One ``BEGIN IMMEDIATE`` transaction on ``path``; yields ``db`` bound to it."""
    con = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT, isolation_level=None,
                          factory=_NoCommit)
    try:
        con.execute("BEGIN IMMEDIATE")
        db.connection, db.change_count = con, 0
        try:
            yield db
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
    finally:
        db.connection = None
        con.close()


def open_record(db, path: Path, lab: Labeller | None, species) -> dict:
    """Create the queue's metadata record (in a new file) or check ``lab`` against it.

    ``db`` is bound to a :func:`transaction`.
    """
    meta = db.metadata
    record = meta.get("gpmlip_queue")
    if record is None:   # a new file (an existing non-queue was refused before)
        record = {"format": FORMAT, "created": time.time(),
                  "labeller": None if lab is None else lab.describe(),
                  "species": None if species is None else [
                      chemical_symbols[z] for z in sorted(atomic_number_set(species))]}
        db.connection.execute("CREATE INDEX IF NOT EXISTS gpmlip_text_value "
                              "ON text_key_values(key, value)")
        db.metadata = {**meta, "gpmlip_queue": record, "title": "gpmlip labelling queue",
                       "default_columns": ["id", "formula", "state", "attempts", "source",
                                           "energy", "fmax", "error"]}
        log.info("created labelling queue %s", path)
    elif lab is not None:
        known = record.get("labeller")
        if known is None:
            record = {**record, "labeller": lab.describe()}
            db.metadata = {**meta, "gpmlip_queue": record}
        elif labeller_key(lab) != {"name": known["name"], "settings": known["settings"]}:
            raise QueueError(
                f"queue {path} labels with {known['name']} {known['settings']}, not "
                f"{lab.name} {lab.settings}: use one queue file per labeller")
    return record


def provenance_columns(provenance: dict, worker: str, seconds: float) -> dict:
    """The key-value pairs ase.db can hold of a label's provenance (numbers and safe text)."""
    kvp = {"worker": worker, "label_seconds": float(seconds)}
    for k, v in provenance.items():
        if k in ("gpmlip", "ase", "numpy"):
            k = f"{k}_version"
        if not k.isidentifier() or k in reserved_keys or k in OWN_KEYS:
            continue
        if isinstance(v, bool) or (isinstance(v, (int, float)) and np.isfinite(v)):
            kvp[k] = v
        elif isinstance(v, str) and v and text_ok(v):
            kvp[k] = v
    return kvp
