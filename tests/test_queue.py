"""The labelling queue: atomic claims, leases, failures as data, refusal of foreign files."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.emt import EMT

import gpmlip
from gpmlip.errors import StructureError, UnknownSpeciesError
from gpmlip.labelling.labellers import Labeller, LabelResult, get_labeller
from gpmlip.labelling import LabelQueue, QueueError, content_key, label_queue

from queue_helpers import HANG, NAN, RAISE, calls, cu_structures, picky, recording, structure_id

HELPERS = Path(__file__).with_name("queue_helpers.py")


def emt_energy(atoms) -> float:
    ref = atoms.copy()
    ref.calc = EMT()
    return ref.get_potential_energy()


def recording_labeller(record_dir: Path, delay: float = 0.0) -> Labeller:
    return Labeller("recording", recording, {"record_dir": str(record_dir), "delay": delay})


def wait_for(predicate, timeout: float = 60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out waiting")


# -- adding -----------------------------------------------------------------------------------

def test_same_structure_is_queued_once(tmp_path):
    queue = LabelQueue(tmp_path / "q.db", "emt")
    a, b = cu_structures(2)
    ids = queue.add([a, b, a.copy()], source="md")
    assert ids[0] == ids[2] != ids[1]
    assert queue.add(b) == [ids[1]]
    nudged = a.copy()
    nudged.positions[0, 0] += 1e-9                     # any change of the bytes is new work
    assert queue.add(nudged)[0] not in ids
    assert queue.counts() == {"queued": 3, "running": 0, "done": 0, "failed": 0}
    assert content_key(a, get_labeller("emt")) != content_key(a, get_labeller("lj"))
    assert content_key(a, get_labeller("emt")) == content_key(a, get_labeller("emt", timeout=9))
    assert [row.get("source") for row in queue.rows()] == ["md", "md", None]


def test_unknown_species_or_nan_adds_nothing(tmp_path):
    queue = LabelQueue(tmp_path / "q.db", "emt", species=["Cu"])
    good = cu_structures(2)
    alloy = cu_structures(1, seed=5)[0]
    alloy.symbols[1] = "Au"
    with pytest.raises(UnknownSpeciesError, match=r"structure 2 .*Au.*nothing from this call"):
        queue.add(good + [alloy])
    broken = good[0].copy()
    broken.positions[3, 1] = np.nan
    with pytest.raises(StructureError, match="structure 1 has non-finite"):
        queue.add([good[1], broken])
    assert sum(queue.counts().values()) == 0
    # the species list is part of the queue: reopening without it still refuses Au
    with pytest.raises(UnknownSpeciesError):
        LabelQueue(tmp_path / "q.db").add([alloy])


def test_other_labeller_is_refused(tmp_path):
    LabelQueue(tmp_path / "q.db", "emt")
    with pytest.raises(QueueError, match="one queue file per labeller"):
        LabelQueue(tmp_path / "q.db", {"name": "lj", "sigma": 2.3})
    assert LabelQueue(tmp_path / "q.db").labeller.name == "emt"   # rebuilt from the record


def _foreign_sqlite(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE samples (id INTEGER, name TEXT)")
    con.execute("INSERT INTO samples VALUES (1, 'x')")
    con.commit()
    con.close()


def _plain_ase_db(path: Path) -> None:
    import ase.db

    ase.db.connect(str(path)).write(cu_structures(1)[0], kind="not a queue")


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def _damaged_sqlite(path: Path) -> None:
    _foreign_sqlite(path)
    data = bytearray(path.read_bytes())
    data[100:] = b"\xff" * (len(data) - 100)       # keep the header, wreck the pages
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("make, message", [
    (_garbage, "not an SQLite database"),
    (_damaged_sqlite, "damaged SQLite database"),
    (_foreign_sqlite, "not an ase.db file"),
    (_plain_ase_db, "ase.db database but not a gpmlip labelling queue"),
    (lambda p: p.write_bytes(b""), "empty file"),
])
def test_foreign_or_damaged_file_is_refused_untouched(tmp_path, make, message):
    path = tmp_path / "q.db"
    make(path)
    before = path.read_bytes()
    with pytest.raises(QueueError, match=message) as info:
        LabelQueue(path, "emt")
    assert "not modified" in str(info.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.db"]


# -- claiming and completing ------------------------------------------------------------------

def test_claims_are_exclusive_across_connections(tmp_path):
    path = tmp_path / "q.db"
    ids = LabelQueue(path, "emt").add(cu_structures(40))
    got: dict[str, list[int]] = {}

    def claimer(name):
        queue = LabelQueue(path, "emt")            # its own connection, as another process has
        mine = got.setdefault(name, [])
        while batch := queue.claim(2, name, 60):
            mine += [rid for rid, _ in batch]

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [rid for mine in got.values() for rid in mine]
    assert sorted(claimed) == sorted(ids)          # every row once, none twice
    assert LabelQueue(path).counts()["running"] == 40


def test_expired_lease_is_taken_over_and_stale_result_ignored(tmp_path):
    queue = LabelQueue(tmp_path / "q.db", "emt")
    [rid] = queue.add(cu_structures(1))
    [(_, atoms)] = queue.claim(5, "slow", lease_seconds=0.2)
    assert queue.claim(5, "fast", lease_seconds=60) == []      # leased: not claimable
    time.sleep(0.3)
    [(rid2, _)] = queue.claim(5, "fast", lease_seconds=60)
    assert rid2 == rid and queue.rows("running")[0].attempts == 2
    ok = LabelResult(True, emt_energy(atoms), np.zeros((len(atoms), 3)), None)
    assert queue.complete(rid, ok, {"host": "h"}, "slow") is None       # lease lost: ignored
    assert queue.rows("running")[0].lease_owner == "fast"
    assert queue.complete(rid, ok, {"host": "h"}, "fast") == "done"
    assert queue.complete(rid, ok, {"host": "h"}, "fast") is None       # never stored twice
    assert queue.rows("done")[0].worker == "fast"


def test_lease_expiry_uses_up_attempts(tmp_path):
    queue = LabelQueue(tmp_path / "q.db", "emt", max_attempts=2)
    [rid] = queue.add(cu_structures(1))
    for worker in ("a", "b"):
        assert [r for r, _ in queue.claim(1, worker, lease_seconds=0.05)] == [rid]
        time.sleep(0.1)
    assert queue.claim(1, "c", lease_seconds=1) == []
    [row] = queue.rows("failed")
    assert "lease of worker b expired on attempt 2 of 2" in row.error


def test_failures_are_recorded_while_other_rows_finish(tmp_path):
    queue = LabelQueue(tmp_path / "q.db", Labeller("picky", picky, {}, timeout=1.0),
                       max_attempts=2)
    structures = cu_structures(6)
    for atoms, tag in zip(structures[3:], (RAISE, HANG, NAN)):
        atoms.set_tags([tag] + [0] * (len(atoms) - 1))
    ids = queue.add(structures)
    summary = label_queue(queue, max_workers=2, lease_seconds=20)
    assert summary["done"] == 3 and summary["failed"] == 3 and summary["retried"] == 3
    assert queue.counts() == {"queued": 0, "running": 0, "done": 3, "failed": 3}
    errors = {row.id: row.error for row in queue.rows("failed")}
    assert "RuntimeError: SCF did not converge" in errors[ids[3]]
    assert "timed out after 1 s" in errors[ids[4]]
    assert "non-finite forces" in errors[ids[5]]
    for row in queue.rows("failed"):
        assert row.attempts == 2 and len(row.data["errors"]) == 2
    for atoms, frame in zip(structures[:3], queue.frames()):
        assert frame.get_potential_energy() == pytest.approx(emt_energy(atoms), abs=1e-10)


def test_done_rows_carry_labels_and_provenance(tmp_path):
    queue = LabelQueue(tmp_path / "q.db", {"name": "lj", "sigma": 2.3, "epsilon": 0.4})
    structures = cu_structures(3)
    queue.add(structures, source="unit")
    summary = label_queue(queue, max_workers=1)
    assert summary["done"] == 3 and summary["counts"]["done"] == 3
    for row in queue.rows("done"):
        assert row.labeller == "lj"
        assert json.loads(row.labeller_settings) == {"sigma": 2.3, "epsilon": 0.4}
        assert row.gpmlip_version == gpmlip.__version__ and row.numpy_version == np.__version__
        assert row.host and row.pid != os.getpid() and row.started <= row.finished
        assert "lease_owner" not in row.key_value_pairs
    frames = queue.frames()
    assert [f.info["queue_id"] for f in frames] == [r.id for r in queue.rows("done")]
    assert {f.info["config_type"] for f in frames} == {"queue"}
    assert {f.info["source"] for f in frames} == {"unit"}
    assert frames[0].get_stress().shape == (6,)


# -- crashes and concurrent coordinators ------------------------------------------------------

def test_killed_pool_worker_row_is_relabelled_once(tmp_path):
    record = tmp_path / "calls"
    record.mkdir()
    queue = LabelQueue(tmp_path / "q.db", recording_labeller(record, delay=0.8))
    structures = cu_structures(3)
    queue.add(structures)
    killed = {}

    def kill_first_worker():
        first = wait_for(lambda: sorted(record.glob("start-*")))[0]
        _, key, pid, _ = first.name.split("-")
        killed["key"] = key
        os.kill(int(pid), signal.SIGKILL)

    killer = threading.Thread(target=kill_first_worker)
    killer.start()
    summary = label_queue(queue, max_workers=1, batch=1, lease_seconds=1.5)
    killer.join()
    assert summary["lost"] >= 1
    assert queue.counts()["done"] == 3
    assert calls(record, "end") == {structure_id(a): 1 for a in structures}
    assert calls(record, "start")[killed["key"]] == 2
    attempts = {structure_id(r.toatoms()): r.attempts for r in queue.rows()}
    assert attempts[killed["key"]] == 2


def _coordinator(path, record, delay, lease) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(HELPERS.parent), str(Path(gpmlip.__file__).parents[1])])}
    return subprocess.Popen([sys.executable, str(HELPERS), str(path), str(record), str(delay),
                             str(lease)], stdout=subprocess.PIPE, env=env,
                            start_new_session=True, text=True)


def test_killed_coordinator_rows_are_taken_over_after_lease(tmp_path):
    record = tmp_path / "calls"
    record.mkdir()
    path = tmp_path / "q.db"
    lab = recording_labeller(record, delay=2.0)
    structures = cu_structures(2)
    LabelQueue(path, lab).add(structures)
    proc = _coordinator(path, record, 2.0, 1.5)
    try:
        first = wait_for(lambda: sorted(record.glob("start-*")))[0]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)         # the coordinator and its pool workers
        proc.wait()
    killed_key = first.name.split("-")[1]
    queue = LabelQueue(path, lab)
    assert queue.counts()["running"] == 1          # its lease is still on the row
    summary = label_queue(queue, max_workers=2, lease_seconds=5)
    assert summary["done"] == 2 and queue.counts()["done"] == 2
    assert calls(record, "end") == {structure_id(a): 1 for a in structures}
    assert calls(record, "start")[killed_key] == 2
    assert {r.attempts for r in queue.rows()} == {1, 2}


def test_two_coordinators_never_label_a_row_twice(tmp_path):
    record = tmp_path / "calls"
    record.mkdir()
    path = tmp_path / "q.db"
    structures = cu_structures(12)
    LabelQueue(path, recording_labeller(record, delay=0.15)).add(structures)
    procs = [_coordinator(path, record, 0.15, 10) for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(out["done"] for out in outs) == 12
    assert LabelQueue(path).counts()["done"] == 12
    assert calls(record, "end") == {structure_id(a): 1 for a in structures}
    assert calls(record, "start") == calls(record, "end")


# -- export and executors ---------------------------------------------------------------------

def test_export_loads_and_fits_a_sparse_gp(tmp_path):
    rng = np.random.default_rng(3)
    structures = []
    for atoms in cu_structures(6, seed=1, rattle=0.1):
        eps = 0.01 * rng.standard_normal((3, 3))
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True)
        structures.append(atoms)
    queue = LabelQueue(tmp_path / "q.db", "emt", species=["Cu"])
    queue.add(structures)
    label_queue(queue, max_workers=2)
    assert queue.export(tmp_path / "train.extxyz") == 6
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    data = gpmlip.load_frames(tmp_path / "train.extxyz", require=("energy", "forces", "stress"))
    assert len(data) == 6 and data.config_types() == {"queue": 6}
    model = gpmlip.SparseGP(gpmlip.SOAP(["Cu"], r_cut=4.0, n_max=4, l_max=3),
                            n_sparse=20).fit(data)
    for atoms in structures[:2]:
        assert model.predict(atoms, forces=False).energy == pytest.approx(emt_energy(atoms),
                                                                          abs=0.05)


def test_parsl_local_executor_labels_end_to_end(tmp_path):
    pytest.importorskip("parsl")
    from gpmlip.labelling.parsl import local_config, parsl_executor

    queue = LabelQueue(tmp_path / "q.db", "emt")
    structures = cu_structures(4)
    queue.add(structures)
    with parsl_executor(local_config(2, run_dir=tmp_path / "runinfo")) as executor:
        summary = label_queue(queue, executor=executor, lease_seconds=60)
    assert summary["done"] == 4 and queue.counts()["done"] == 4
    pids = {row.pid for row in queue.rows("done")}
    assert os.getpid() not in pids                  # ran in Parsl's worker processes
    for atoms, frame in zip(structures, queue.frames()):
        assert frame.get_potential_energy() == pytest.approx(emt_energy(atoms), abs=1e-10)


@pytest.mark.parametrize("part", ["forces", "positions"])
def test_a_row_changed_outside_gpmlip_is_never_used(tmp_path, part):
    """A bit of a done row's forces or a queued row's positions changed in the database file:
    export refuses to read the queue, and a damaged queued row is failed, not labelled."""
    import ase.db

    queue = LabelQueue(tmp_path / "q.db", "emt", species=["Cu"])
    queue.add(cu_structures(3))
    if part == "forces":
        label_queue(queue, max_workers=1)
        assert queue.export(tmp_path / "ok.extxyz") == 3
    target = queue.rows()[1].id
    db = ase.db.connect(str(tmp_path / "q.db"))
    row = db.get(id=target)
    atoms = row.toatoms()
    if part == "forces":   # rewrite the stored forces array, as a flipped bit would
        forces = atoms.get_forces().copy()
        forces[0, 0] += 0.75
        with sqlite3.connect(tmp_path / "q.db") as con:
            con.execute("UPDATE systems SET forces=? WHERE id=?",
                        (np.ascontiguousarray(forces, dtype=np.float64).tobytes(), target))
    else:
        positions = atoms.positions.copy()
        positions[0, 0] += 0.01
        with sqlite3.connect(tmp_path / "q.db") as con:
            con.execute("UPDATE systems SET positions=? WHERE id=?",
                        (np.ascontiguousarray(positions, dtype=np.float64).tobytes(), target))
    queue = LabelQueue(tmp_path / "q.db")
    if part == "forces":
        with pytest.raises(QueueError, match=f"row {target}: its labels no longer match"):
            queue.export(tmp_path / "bad.extxyz")
        assert not (tmp_path / "bad.extxyz").exists()
    else:
        summary = label_queue(queue, max_workers=1)
        failed = queue.rows("failed")
        assert [r.id for r in failed] == [target] and summary["counts"]["done"] == 2
        assert "no longer matches its content key" in failed[0].error


def test_a_queue_locked_by_another_process_is_called_locked_not_damaged(tmp_path, monkeypatch):
    from gpmlip.labelling import store

    LabelQueue(tmp_path / "q.db", "emt").add(cu_structures(1))
    monkeypatch.setattr(store, "BUSY_TIMEOUT", 0.3)
    holder = sqlite3.connect(tmp_path / "q.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(QueueError, match="is locked by another process"):
            LabelQueue(tmp_path / "q.db")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert LabelQueue(tmp_path / "q.db").counts()["queued"] == 1


def _ended(pid: int) -> bool:
    """Whether process ``pid`` has ended (gone, or a zombie waiting for its parent's wait)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(")")[-1].split()[0] == "Z"


def test_a_killed_coordinator_leaves_no_worker_running(tmp_path):
    """SIGKILL to the coordinator alone: its pool worker, in the middle of a 60 s labeller
    call, ends within seconds instead of labelling on for nobody (issue 31)."""
    record = tmp_path / "calls"
    record.mkdir()
    path = tmp_path / "q.db"
    LabelQueue(path, recording_labeller(record, delay=60.0)).add(cu_structures(1))
    proc = _coordinator(path, record, 60.0, 120.0)
    try:
        first = wait_for(lambda: sorted(record.glob("start-*")))[0]
        worker = int(first.name.split("-")[2])
        assert worker != proc.pid
        os.kill(proc.pid, signal.SIGKILL)                 # the coordinator only
        proc.wait()

        wait_for(lambda: _ended(worker), timeout=20.0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_killed_parsl_coordinator_leaves_no_interchange(tmp_path):
    """SIGKILL to a coordinator running Parsl: its interchange (a child that does not notice
    its parent's death) is ended by gpmlip's watchdog, and with it the worker pool's heartbeats
    (issue 31: both ran on)."""
    script = tmp_path / "coordinator.py"
    script.write_text(
        "import sys, time\n"
        "from gpmlip.labelling.parsl import ParslExecutor, local_config\n"
        f"cfg = local_config(1, run_dir={str(tmp_path / 'runinfo')!r})\n"
        "ex = ParslExecutor(cfg)\n"
        "print(cfg.executors[0].interchange_proc.pid, flush=True)\n"
        "time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        interchange = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

        wait_for(lambda: _ended(interchange), timeout=20.0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
