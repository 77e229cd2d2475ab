"""kill -9 at any point of an on-the-fly run, then --resume: no label lost, none repeated."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

JOB = Path(__file__).with_name("otf_job.py")
STEPS = 60


def run_job(directory: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(JOB), str(directory), "--steps", str(STEPS),
                           *args], capture_output=True, text=True, timeout=timeout)


def label_hash(record: dict) -> str:
    positions = np.array(record["structure"]["positions"])
    return hashlib.sha256(np.round(positions, 8).tobytes()).hexdigest()[:16]


def check_run(directory: Path, *, in_flight_may_repeat: bool = False) -> dict:
    """What every finished run must satisfy; returns its summary.

    ``in_flight_may_repeat``: a kill at an arbitrary moment can land after the labeller returned
    but before its result reached the disk (the write is the last thing between them); that one
    call is then made again on resume.  No other call may repeat or be missing.
    """
    summary = json.loads((directory / "summary.json").read_text())
    assert summary["steps"] == STEPS
    records = [json.loads(p.read_text()) for p in sorted((directory / "labels").glob("*.json"))]
    assert [r["index"] for r in records] == list(range(1, len(records) + 1))
    completed = (directory.parent / "calls.log").read_text().split()[1::2]
    on_disk = sorted(label_hash(r) for r in records)
    repeated = sorted({h for h in completed if completed.count(h) > 1})
    if in_flight_may_repeat and len(repeated) == 1:
        completed.remove(repeated[0])
    # every labeller call that finished is on disk exactly once, and nothing else is
    assert sorted(completed) == on_disk
    assert len(set(completed)) == len(completed), "a structure was labelled twice"
    assert summary["labels"] == len(records) == summary["labelled_frames"]
    steps = [r["step"] for r in records]
    assert steps == sorted(steps) and steps[0] == 0
    # the trajectory has each step once, in order, up to the end
    import ase.io

    traj = ase.io.read(directory / "trajectory.extxyz", ":")
    t_steps = [a.info["step"] for a in traj]
    assert t_steps == sorted(set(t_steps)) and t_steps[-1] == STEPS
    assert "local_std" in traj[-1].arrays
    # every labelled frame is in the trajectory, marked (a kill between a label's checkpoint
    # and the frame's write lost it for good)
    assert {a.info["step"] for a in traj if a.info.get("labelled")} == set(steps)
    events = [json.loads(line) for line in (directory / "events.jsonl").read_text().splitlines()]
    assert [e["label"] for e in events] == [r["index"] for r in records]
    return summary


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """An uninterrupted run."""
    base = tmp_path_factory.mktemp("reference")
    done = run_job(base / "run")
    assert done.returncode == 0, done.stderr
    summary = check_run(base / "run")
    assert summary["labels"] >= 3, "the test run must label several frames to be meaningful"
    return summary


SLOW = pytest.mark.slow   # each kill point costs 10-13 s on 2 cores; one stays in the default suite


@pytest.mark.parametrize("kill_at", [
    "labelled:3",   # the default suite's case: a label on disk, not yet applied
    pytest.param("labeller:3", marks=SLOW), pytest.param("labelled:2", marks=SLOW),
    pytest.param("event:2", marks=SLOW), pytest.param("updated:2", marks=SLOW),
    pytest.param("checkpoint:5", marks=SLOW)])
def test_kill_then_resume(tmp_path, reference, kill_at):
    killed = run_job(tmp_path / "run", "--kill-at", kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = run_job(tmp_path / "run", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    summary = check_run(tmp_path / "run")
    if kill_at.startswith("labelled"):
        assert "applying label" in resumed.stderr     # the label on disk was used, not redone
    # the same MD (same thermostat noise) and the same labels as without the kill
    assert summary["labels"] == reference["labels"]
    assert summary["sparse_points"] == reference["sparse_points"]


@pytest.mark.slow
def test_kill_at_a_random_moment(tmp_path, reference):
    """SIGKILL from outside, while the run is somewhere in MD, labelling or writing."""
    proc = subprocess.Popen([sys.executable, str(JOB), str(tmp_path / "run"), "--steps",
                             str(STEPS)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    labels = tmp_path / "run" / "labels"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(labels.glob("*.json"))) < 2:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_job(tmp_path / "run", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    check_run(tmp_path / "run", in_flight_may_repeat=True)


def test_a_new_run_refuses_a_used_directory(tmp_path, reference):
    first = run_job(tmp_path / "run")
    assert first.returncode == 0
    second = run_job(tmp_path / "run")
    assert second.returncode != 0
    assert "holds an earlier run" in second.stderr


ZBL = json.dumps({"name": "zbl", "inner": 1.8, "outer": 2.5})


@SLOW
def test_kill_then_resume_with_a_baseline(tmp_path):
    """With a zbl baseline in the model, a kill and resume gives the uninterrupted run."""
    import gpmlip
    from gpmlip.baselines import ZBL as ZBLBaseline

    done = run_job(tmp_path / "reference" / "run", "--baseline", ZBL)
    assert done.returncode == 0, done.stderr
    reference = check_run(tmp_path / "reference" / "run")
    killed = run_job(tmp_path / "killed" / "run", "--baseline", ZBL, "--kill-at", "updated:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = run_job(tmp_path / "killed" / "run", "--baseline", ZBL, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    summary = check_run(tmp_path / "killed" / "run")
    assert summary["labels"] == reference["labels"] >= 3
    assert summary["sparse_points"] == reference["sparse_points"]
    final = sorted((tmp_path / "killed" / "run").glob("model*.npz"))[-1]
    assert isinstance(gpmlip.load_model(final).baseline, ZBLBaseline)


def test_resume_checks_the_checkpoint_and_rebuilds_lost_events(tmp_path, reference):
    """An edited checkpoint count is refused (it would learn labels twice or skip them); a
    truncated events.jsonl gets its checkpointed events back from labels/ (issue 31)."""
    import shutil

    killed = run_job(tmp_path / "a" / "run", "--kill-at", "updated:3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    ck_path = tmp_path / "a" / "run" / "checkpoint.json"
    ck = json.loads(ck_path.read_text())
    assert ck["n_labels"] == 3
    for count in (2, 4, 99):
        ck_path.write_text(json.dumps({**ck, "n_labels": count}))
        refused = run_job(tmp_path / "a" / "run", "--resume")
        assert refused.returncode != 0 and f"n_labels = {count}" in refused.stderr
    events = tmp_path / "b" / "run" / "events.jsonl"
    events.write_text(events.read_text().splitlines(keepends=True)[0])
    resumed = run_job(tmp_path / "b" / "run", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "lacks the events of labels [2, 3]" in resumed.stderr
    check_run(tmp_path / "b" / "run")
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    assert [e.get("rebuilt", False) for e in lines[:3]] == [False, True, True]


def test_an_events_line_with_a_damaged_byte_is_dropped_not_fatal(tmp_path):
    """A byte that is not UTF-8 in events.jsonl spoils its line only (found by fuzzing: a
    UnicodeDecodeError ended the resume)."""
    from gpmlip.active.rundir import RunDirectory

    rundir = RunDirectory(tmp_path / "run")
    rundir.create()
    rundir.append_event({"label": 1, "step": 0})
    rundir.append_event({"label": 2, "step": 5})
    raw = bytearray(rundir.events_path.read_bytes())
    raw[0] = 0xFB
    rundir.events_path.write_bytes(bytes(raw))
    assert rundir.events() == [{"label": 2, "step": 5}]
