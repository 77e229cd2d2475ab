"""The explore-select-label-update loop: runs to its budget and resumes after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gpmlip
from gpmlip.active.loop import run_loop
from gpmlip.errors import SettingsError
from gpmlip.labelling import LabelQueue

from conftest import SMALL_CU
from queue_helpers import calls

JOB = Path(__file__).with_name("loop_job.py")


def _run(directory, delay, *baseline):
    return subprocess.Popen([sys.executable, str(JOB), str(directory), str(delay), *baseline],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


ZBL = '{"name": "zbl", "inner": 1.6, "outer": 2.3}'


@pytest.mark.slow     # the default suite's kill/resume case is test_otf_resume's
@pytest.mark.parametrize("baseline", [(), (ZBL,)], ids=["plain", "zbl"])
def test_loop_resumes_after_sigkill_without_losing_or_repeating_labels(tmp_path, baseline):
    proc = _run(tmp_path, 0.3, *baseline)
    state = tmp_path / "loop" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (state.exists() and
                                          json.loads(state.read_text())["round"] >= 1):
        time.sleep(0.05)
    time.sleep(0.4)                         # into round 2: some rows claimed or labelled
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads(state.read_text())["round"] < 3, "the job finished before it was killed"
    done = _run(tmp_path, 0.3, *baseline)   # same labeller settings: same queue
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err[-3000:]
    assert "RESULT 9" in out
    final = json.loads(state.read_text())
    queue = LabelQueue(tmp_path / "queue.db")
    assert queue.counts()["done"] == 9 and len(queue.rows()) == 9
    done_ids = sorted(r.id for r in queue.rows("done"))
    assert sorted(final["applied"]) == done_ids          # every label learnt, once
    model = gpmlip.load_model(tmp_path / "loop" / final["model"])
    assert len(model.frames_) == 9
    assert (model.baseline is None) == (not baseline)
    # each structure's label was stored once; a label cut short by the kill may have run twice
    ended = calls(tmp_path / "calls", "end")
    assert len(ended) == 9 and sum(ended.values()) <= 9 + 3


def test_loop_needs_candidates(tmp_path):
    model = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU))
    queue = LabelQueue(tmp_path / "q.db", "emt")
    with pytest.raises(SettingsError, match="pool"):
        run_loop(model, tmp_path / "loop", queue)
