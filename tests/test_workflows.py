"""The workflow scripts run as written (short versions in the default suite, full ones as slow)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def script(name, *args, cwd, timeout=600):
    proc = subprocess.run([sys.executable, str(ROOT / "workflows" / name), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_gated_md(tmp_path):
    out = script("gated_md.py", "--policy", "warn", "--steps", "60", "--directory",
                 tmp_path / "g", cwd=tmp_path)
    assert "60 steps at 1200 K, policy warn" in out      # steps = dyn.nsteps
    assert (tmp_path / "g" / "gate_summary.json").exists()


def test_otf_demo_short(tmp_path):
    out = script("otf_demo.py", "--steps", "40", "--directory", tmp_path / "o", cwd=tmp_path)
    assert "labeller calls" in out and "final model" in out
    assert (tmp_path / "o" / "model.npz").exists()


def test_active_loop_short(tmp_path):
    out = script("active_loop.py", "--directory", tmp_path / "a", "--max-labels", "6",
                 "--batch", "3", "--workers", "1", cwd=tmp_path)
    assert "labels" in out and (tmp_path / "a" / "queue.db").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fit_demo.py", "otf_demo.py", "active_loop.py",
                                  "gated_md.py"])
def test_workflow_as_written(tmp_path, name):
    script(name, cwd=tmp_path, timeout=1800)
