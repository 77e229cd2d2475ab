"""The `gpmlip` command line, run as a user would: subprocesses on the shipped data."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
COMMANDS = ["train", "eval", "calibrate", "info", "md", "otf", "select", "label", "learn"]

SMALL = """
[descriptor]
species = ["Cu"]
r_cut = 4.0
n_max = 4
l_max = 3

[model]
n_sparse = 40
tune = false
"""


def gpmlip(*args, cwd=None, check=True, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "gpmlip.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("cli")
    (work / "small.toml").write_text(SMALL)
    out = gpmlip("train", "-c", work / "small.toml", DATA / "cu_emt_train.extxyz",
                 "-o", work / "cu.npz", "--test", DATA / "cu_emt_test.extxyz", "--json")
    return work, json.loads(out.stdout)


def test_help_of_every_command():
    top = gpmlip("--help").stdout
    for cmd in COMMANDS:
        assert cmd in top
        text = gpmlip(cmd, "--help").stdout
        assert text.startswith("usage: gpmlip " + cmd) and "--verbose" in text


def test_train_reports_errors_per_config_type(trained):
    work, report = trained
    assert (work / "cu.npz").exists() and report["sparse_points"] == 40
    for part in ("train", "test"):
        assert set(report[part]) == {"md300", "md900", "strained", "all"}
        assert 0 < report[part]["all"]["force_meV_A"]["rmse"] < 100
    text = gpmlip("train", "-c", work / "small.toml", DATA / "cu_emt_train.extxyz",
                  "-o", work / "cu2.npz", "--n-sparse", "20", "-q").stdout
    assert "md900" in text and "forces meV/Å" in text and "(20 sparse points)" in text


def test_train_with_weighting_two_body_and_noise_by_leave_one_out(tmp_path):
    """[descriptor] weighting and second, [model] two_body and optimise = "loo" reach the saved
    model."""
    from gpmlip import SparseGP, Stacked, load_model

    (tmp_path / "soft.toml").write_text(SMALL.replace(
        "l_max = 3\n", "l_max = 3\nweighting = {r0 = 5.0, m = 1}\n"
        "second = {r_cut = 3.0, n_max = 3, weighting = {r0 = 3.5, m = 1}, weight = 0.5}\n")
        + 'two_body = {n_sparse = 8}\noptimise = "loo"\n')
    proc = gpmlip("train", "-c", tmp_path / "soft.toml", DATA / "cu_emt_train.extxyz",
                  "-o", tmp_path / "soft.npz", "--n-sparse", "20", "--json")
    json.loads(proc.stdout)
    model = load_model(tmp_path / "soft.npz")
    assert isinstance(model.descriptor, Stacked) and model.descriptor.weights == [1.0, 0.5]
    first, second = model.descriptor.parts
    assert first.settings.weighting_dict == {"function": "poly", "r0": 5.0, "m": 1.0, "c": 1.0}
    assert (second.settings.r_cut, second.settings.n_max, second.settings.l_max) == (3.0, 3, 3)
    assert second.settings.weighting_dict["r0"] == 3.5
    assert model.two_body is not None and model.two_body.n_sparse == 8
    default = SparseGP(model.descriptor)
    assert model.noise["forces"] != pytest.approx(default.force_sigma)   # chosen, not default
    assert "hyper-parameters (loo)" in proc.stderr


def test_info_and_eval_with_plots(trained):
    work, report = trained
    info = gpmlip("info", work / "cu.npz").stdout
    assert "sparse points Cu 40" in info and "md300" in info and "format version" in info
    out = gpmlip("eval", work / "cu.npz", DATA / "cu_emt_test.extxyz", "--json",
                 "--plot", work / "test")
    table = json.loads(out.stdout)
    assert table["all"]["force_meV_A"] == pytest.approx(report["test"]["all"]["force_meV_A"])
    for name in ("parity", "errors", "calibration"):
        png = work / f"test_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_md_with_a_gate_that_queues(trained):
    work, _ = trained
    out = gpmlip("md", work / "cu.npz", "-s", "Cu fcc 3.61 2", "-n", "30", "-T", "1500",
                 "--gate-threshold", "1e-4", "--gate-policy", "queue", "--queue", work / "q.db",
                 "--labeller", "emt",
                 "-o", work / "md.extxyz", "--interval", "5", "--json")
    summary = json.loads(out.stdout)
    assert summary["steps"] == 30 and summary["gate"]["queue"] >= 1
    import ase.io
    frames = ase.io.read(work / "md.extxyz", ":")
    assert [f.info["step"] for f in frames] == [0, 5, 10, 15, 20, 25, 30]
    from gpmlip.labelling import LabelQueue
    assert LabelQueue(work / "q.db", "emt").counts()["queued"] == summary["gate"]["queue"]


def test_md_with_a_gate_that_labels_saves_the_model_and_resumes(trained, tmp_path):
    work, _ = trained
    args = ["md", work / "cu.npz", "-s", "Cu fcc 3.61 2", "-T", "1500", "--gate-threshold",
            "2e-4", "--gate-policy", "label", "--labeller", "emt", "-o", tmp_path / "md.extxyz",
            "--interval", "5", "--json"]
    summary = json.loads(gpmlip(*args, "-n", "20").stdout)
    gate = summary["gate"]
    assert summary["steps"] == 20 == gate["steps"] and gate["labels"] >= 1
    import gpmlip as lib
    trained_frames = len(lib.load_model(work / "cu.npz").frames_)
    saved = lib.load_model(gate["model"])
    assert len(saved.frames_) == trained_frames + gate["labels"]
    # the same command with --resume and more steps goes on from step 20
    more = json.loads(gpmlip(*args, "-n", "30", "--resume").stdout)
    assert more["steps"] == 30 and more["gate"]["labels"] >= gate["labels"]
    import ase.io
    frames = ase.io.read(tmp_path / "md.extxyz", ":")
    assert [f.info["step"] for f in frames] == [0, 5, 10, 15, 20, 25, 30]
    again = gpmlip(*args, "-n", "30", check=False)          # a new run may not reuse it
    assert again.returncode == 1 and "resume" in again.stderr


def test_select_label_export(trained):
    work, _ = trained
    import ase.io
    pool = ase.io.read(DATA / "cu_emt_train.extxyz", ":")
    out = gpmlip("select", work / "cu.npz", DATA / "cu_emt_test.extxyz", "-n", "3",
                 "-o", work / "batch.extxyz", "--queue", work / "sel.db", "--labeller", "emt",
                 "--json")
    picked = json.loads(out.stdout)
    assert len(picked["picked"]) == 3 and picked["queued_rows"] == [1, 2, 3]
    gpmlip("label", work / "sel.db", "-w", "2", "--export", work / "labelled.extxyz")
    labelled = ase.io.read(work / "labelled.extxyz", ":")
    assert len(labelled) == 3 and len(pool) == 24
    test = ase.io.read(DATA / "cu_emt_test.extxyz", ":")
    for frame, k in zip(labelled, picked["picked"]):
        # EMT on positions read back from the extxyz file (8 decimals): agreement to ~1e-7 eV
        np.testing.assert_allclose(frame.get_potential_energy(),
                                   test[k].get_potential_energy(), rtol=0, atol=1e-6)


def test_learn_runs_the_loop(tmp_path):
    cfg = SMALL + f"""
[learn]
pool = ["{DATA / 'cu_emt_train.extxyz'}"]
labeller = "emt"
directory = "{tmp_path / 'learn'}"
batch = 3
max_labels = 6
target_std = 1e-9
"""
    (tmp_path / "learn.toml").write_text(cfg)
    out = json.loads(gpmlip("learn", tmp_path / "learn.toml", "--json").stdout)
    assert out["labels"] == 6 and out["stopped_by"] == "max_labels"
    assert Path(out["model"]).exists()


OTF = """
[descriptor]
species = ["Cu"]
r_cut = 4.0
n_max = 4
l_max = 3

[md]
structure = "Cu fcc 3.61 2"
temperature = 800.0
timestep_fs = 5.0
steps = {steps}

[otf]
labeller = "emt"
std_tolerance = 0.01
"""


def test_otf_ctrl_c_then_resume(tmp_path):
    (tmp_path / "otf.toml").write_text(OTF.format(steps=4000))
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "gpmlip.cli", "otf", tmp_path / "otf.toml",
                             "-d", run], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True,
                            # as at a terminal: a shell's background job starts with SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "events.jsonl").exists():
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err and "Traceback" not in err
    labels = len(list((run / "labels").glob("*.json")))
    assert labels >= 1
    (tmp_path / "otf.toml").write_text(OTF.format(steps=60))
    done = gpmlip("otf", tmp_path / "otf.toml", "--resume", run, "--json", "--plot")
    summary = json.loads(done.stdout)
    assert summary["labels"] >= labels and summary["steps"] >= 60
    assert Path(summary["plot"]).exists()


def test_otf_needs_a_labeller(tmp_path):
    (tmp_path / "otf.toml").write_text(OTF.format(steps=5).replace('labeller = "emt"\n', ""))
    proc = gpmlip("otf", tmp_path / "otf.toml", "-d", tmp_path / "run", check=False)
    assert proc.returncode == 1 and "[otf] labeller is needed" in proc.stderr
    assert not (tmp_path / "run" / "labels").exists()


@pytest.mark.parametrize("case", ["bad_key", "bad_type", "missing_file", "future_model",
                                  "unknown_table", "bad_optimise", "bad_weighting",
                                  "bad_two_body", "bad_second"])
def test_errors_are_one_clear_line(trained, tmp_path, case):
    work, _ = trained
    if case in ("bad_key", "bad_type", "unknown_table", "bad_optimise", "bad_weighting",
                "bad_two_body", "bad_second"):
        text = {"bad_key": "[descriptor]\nspecies = ['Cu']\nr_cutt = 4.0\n",
                "bad_type": "[descriptor]\nspecies = ['Cu']\nr_cut = 'four'\n",
                "unknown_table": "[modle]\nzeta = 4\n",
                "bad_optimise": "[model]\noptimise = 'lo'\n",
                "bad_weighting": "[descriptor]\nweighting = 'soft'\n",
                "bad_two_body": "[descriptor]\nspecies = ['Cu']\nr_cut = 4.0\n"
                                "[model]\ntwo_body = {sigmaa = 1}\n",
                "bad_second": "[descriptor]\nspecies = ['Cu']\nr_cut = 4.0\n"
                              "second = {rcut = 3.0}\n"}[case]
        (tmp_path / "c.toml").write_text(text)
        args = ["train", "-c", tmp_path / "c.toml", DATA / "cu_emt_train.extxyz"]
        expect = {"bad_key": "unknown key 'r_cutt' in [descriptor]; allowed: species, r_cut",
                  "bad_type": "r_cut = 'four' must be a number",
                  "unknown_table": "unknown table [modle]",
                  "bad_optimise": "[model] optimise = 'lo'; allowed: true, false, "
                                  '"likelihood", "loo"',
                  "bad_weighting": "[descriptor] weighting = 'soft'; allowed",
                  "bad_two_body": "the keys are those of gpmlip.TwoBody",
                  "bad_second": "unknown keys ['rcut']; allowed: r_cut, n_max"}[case]
    elif case == "missing_file":
        args, expect = ["eval", work / "cu.npz", tmp_path / "none.xyz"], "no data file at"
    else:
        data = dict(np.load(work / "cu.npz", allow_pickle=False))
        meta = json.loads(bytes(data["metadata.json"]).decode())
        meta["format_version"] = 99
        data["metadata.json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        np.savez(tmp_path / "future.npz", **data)
        args, expect = ["info", tmp_path / "future.npz"], "format version 99"
    proc = gpmlip(*args, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert expect in lines[-1] and "Traceback" not in proc.stderr
    if case == "bad_key":
        verbose = gpmlip(*args, "--verbose", check=False)
        assert verbose.returncode != 0 and "Traceback" in verbose.stderr


def test_settings_paths_are_relative_to_the_settings_file(tmp_path):
    """[data] train in a settings file elsewhere is read relative to that file, from any
    working directory."""
    import shutil
    (tmp_path / "conf" / "data").mkdir(parents=True)
    shutil.copy(DATA / "cu_emt_train.extxyz", tmp_path / "conf" / "data" / "train.extxyz")
    (tmp_path / "conf" / "s.toml").write_text(SMALL + '\n[data]\ntrain = ["data/train.extxyz"]\n')
    (tmp_path / "elsewhere").mkdir()
    proc = gpmlip("train", "-c", tmp_path / "conf" / "s.toml", "-o", tmp_path / "m.npz", "-q",
                  cwd=tmp_path / "elsewhere")
    assert (tmp_path / "m.npz").exists(), proc.stderr


def test_resume_of_a_directory_without_a_run_is_an_error(tmp_path):
    (tmp_path / "otf.toml").write_text(OTF.format(steps=5))
    proc = gpmlip("otf", tmp_path / "otf.toml", "--resume", tmp_path / "nothing", check=False)
    assert proc.returncode == 1 and "no on-the-fly run there" in proc.stderr
    assert not (tmp_path / "nothing").exists()


@pytest.mark.parametrize("key, value, text", [
    ("timestep_fs", -1.0, "timestep_fs = -1.0 must be a finite number > 0"),
    ("timestep_fs", 0.0, "timestep_fs = 0.0 must be a finite number > 0"),
    ("temperature", -300.0, "temperature = -300.0 must be a finite number >= 0"),
    ("steps", -5, "steps = -5 must be a finite number >= 0"),
    ("interval", 0, "interval = 0 must be a finite number >= 1"),
])
def test_settings_out_of_range_are_refused(key, value, text):
    from gpmlip.cli import config
    from gpmlip.errors import SettingsError

    with pytest.raises(SettingsError, match=re.escape(text)):
        config.merge({}, "md", **{key: value})


def test_md_flags_out_of_range_are_one_clear_line(trained):
    work, _ = trained
    proc = gpmlip("md", work / "cu.npz", "-s", "Cu fcc 3.61 2", "--timestep", "-1", check=False)
    assert proc.returncode == 1 and "timestep_fs = -1.0 must be a finite number > 0" in \
        proc.stderr and "Traceback" not in proc.stderr


def test_label_timeout_flag(tmp_path):
    import ase.io

    from gpmlip.labelling import LabelQueue

    ase.io.write(tmp_path / "pool.extxyz", ase.io.read(DATA / "cu_emt_test.extxyz", ":2"))
    LabelQueue(tmp_path / "q.db", "emt").add(ase.io.read(tmp_path / "pool.extxyz", ":"))
    bad = gpmlip("label", tmp_path / "q.db", "--timeout", "0", check=False)
    assert bad.returncode == 1 and "timeout=0.0: use a positive number" in bad.stderr
    done = gpmlip("label", tmp_path / "q.db", "--timeout", "120", "--json")
    assert json.loads(done.stdout)["done"] == 2


def test_otf_resume_with_other_settings_is_refused(tmp_path):
    (tmp_path / "otf.toml").write_text(OTF.format(steps=5))
    gpmlip("otf", tmp_path / "otf.toml", "-d", tmp_path / "run", "-q")
    assert (tmp_path / "run" / "cli_settings.json").exists()
    hotter = OTF.format(steps=10).replace("temperature = ", "temperature = 1")
    assert hotter != OTF.format(steps=10)
    (tmp_path / "hot.toml").write_text(hotter)
    proc = gpmlip("otf", tmp_path / "hot.toml", "--resume", tmp_path / "run", check=False)
    assert proc.returncode == 1 and "the settings differ from the run's" in proc.stderr
    assert "[md] temperature" in proc.stderr
    gpmlip("otf", tmp_path / "otf.toml", "--resume", tmp_path / "run", "-n", "10", "-q")


def test_otf_prints_the_final_model_error_on_fresh_trajectory_frames(tmp_path):
    """`gpmlip otf` ends with the final model's force error on trajectory frames it never
    learnt, labelled after the run by its own labeller and kept on disk (issue 31)."""
    import ase.io
    from ase.calculators.emt import EMT

    import gpmlip as gpmlip_lib

    (tmp_path / "otf.toml").write_text(OTF.format(steps=40))
    out = gpmlip("otf", tmp_path / "otf.toml", "-d", tmp_path / "run", "--validate", "2")
    assert "unlabelled trajectory frames (labelled after the run): force MAE" in out.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    check = summary["fresh_frame_check"]
    assert check["frames"] == 2 and check["failed"] == 0
    labelled_steps = {e["step"] for e in map(json.loads, (tmp_path / "run" / "events.jsonl")
                                             .read_text().splitlines())}
    assert not set(check["steps"]) & labelled_steps and min(check["steps"]) >= 20
    frames = ase.io.read(tmp_path / "run" / "validation.extxyz", ":")
    model = gpmlip_lib.load_model(tmp_path / "run" / "model.npz")
    errors = []
    for atoms in frames:
        reference = atoms.copy()
        reference.calc = EMT()
        assert atoms.get_potential_energy() == pytest.approx(reference.get_potential_energy())
        errors.append(model.predict(atoms, stress=False).forces - reference.get_forces())
    assert check["force_mae_meV_A"] == pytest.approx(1000 * np.mean(np.abs(errors)))
    bad = gpmlip("otf", tmp_path / "otf.toml", "-d", tmp_path / "r2", "--validate", "-1",
                 check=False)
    assert bad.returncode == 1 and "--validate -1" in bad.stderr


@pytest.mark.parametrize("trigger", ["force", "std"])
def test_otf_plot_draws_the_trigger_that_decided(tmp_path, monkeypatch, trigger):
    """The uncertainty panel of otf_curve.png shows the force std against the force threshold
    when the force trigger labelled, the normalised std otherwise (issue 31)."""
    from gpmlip import plots

    event = {"label": 0, "step": 5, "ok": True, "trigger": trigger, "max_std": 0.2,
             "sparse_points": 4, "max_predicted_force_std": 0.1}
    if trigger == "force":
        event["force_threshold"] = 0.08
    (tmp_path / "events.jsonl").write_text(json.dumps(event) + "\n")
    drawn = []
    monkeypatch.setattr(plots, "_force_trigger_panel", lambda *a: drawn.append("force"))
    monkeypatch.setattr(plots, "_std_trigger_panel", lambda *a: drawn.append("std"))
    assert plots.otf_curve(tmp_path).exists() and drawn == [trigger]


def test_md_reports_temperature_and_energy_drift(trained, tmp_path):
    """`gpmlip md` says what the run did: mean and final temperature and the total-energy
    drift, the same numbers the trajectory gives (issue 31)."""
    import ase.io
    from ase import units

    work, _ = trained
    args = ["md", work / "cu.npz", "-s", "Cu fcc 3.61 2", "-n", "20", "-T", "600",
            "--ensemble", "verlet", "--interval", "1", "-o", tmp_path / "nve.extxyz"]
    summary = json.loads(gpmlip(*args, "--json").stdout)
    frames = ase.io.read(tmp_path / "nve.extxyz", ":")
    total = [f.get_potential_energy() + f.get_kinetic_energy() for f in frames]
    time_ps = np.array([f.info["step"] for f in frames]) * summary["timestep_fs"] / 1000
    slope = np.polyfit(time_ps, total, 1)[0]
    assert summary["energy_drift_meV_atom_ps"] == pytest.approx(1000 * slope / len(frames[0]),
                                                                rel=1e-6, abs=1e-9)
    assert summary["mean_temperature_K"] == pytest.approx(
        np.mean([f.info["temperature"] for f in frames]), rel=1e-9)
    assert summary["final_temperature_K"] == pytest.approx(frames[-1].info["temperature"])
    text = gpmlip(*args).stdout
    assert "temperature: mean" in text and "meV/atom/ps (NVE: this is the integration error)" \
        in text


def test_data_table_drops_or_shifts_stress_labels():
    """The fit report's Pulay advice has a CLI route (issue 31): [data] stresses = false fits
    energies and forces only, pressure_offset_gpa subtracts a constant pressure."""
    from ase.units import GPa

    from gpmlip.cli import build, config
    from gpmlip.errors import SettingsError

    path = str(DATA / "cu_emt_train.extxyz")
    plain = build.data(path, {})
    assert any(f.stress is not None for f in plain)
    assert all(f.stress is None for f in build.data(path, {"stresses": False}))
    shifted = build.data(path, {"pressure_offset_gpa": 2.0})
    for a, b in zip(plain, shifted):
        if a.stress is not None:
            np.testing.assert_allclose(b.stress - a.stress, 2.0 * GPa * np.eye(3), atol=1e-15)
            assert -np.trace(b.stress) / 3 / GPa == pytest.approx(-np.trace(a.stress) / 3 / GPa
                                                                  - 2.0)
    with pytest.raises(SettingsError, match="both given"):
        build.data(path, {"stresses": False, "pressure_offset_gpa": 1.0})
    with pytest.raises(SettingsError, match="stresses"):
        config.check({"data": {"stresses": "no"}}, "x.toml")


def test_calibrate_command_and_the_gate_warns_on_an_uncalibrated_model(tmp_path, caplog):
    """`gpmlip calibrate` writes a calibrated model (held-out data or leave-one-out); a gate that
    thresholds the force std of an uncalibrated model says so (issue 29)."""
    import logging

    import gpmlip as lib
    from gpmlip.active import UncertaintyGate

    train = lib.load_frames(DATA / "cu_emt_train.extxyz")
    model = lib.SparseGP(lib.SOAP(["Cu"], 4.0, 4, 3), n_sparse=30).fit(list(train)[:6])
    assert model.calibration_ is None
    model.save(tmp_path / "raw.npz")
    with caplog.at_level(logging.WARNING, logger="gpmlip.active.gate"):
        UncertaintyGate(model, tmp_path / "gate", 0.01, "warn", force_threshold=0.1)
    assert "the model is not calibrated" in caplog.text and "gpmlip calibrate" in caplog.text
    out = gpmlip("calibrate", tmp_path / "raw.npz", DATA / "cu_emt_test.extxyz",
                 "-o", tmp_path / "held.npz", "--json")
    cal = json.loads(out.stdout)["calibration"]
    assert cal["source"] == "held-out" and cal["n"] > 0
    held = lib.load_model(tmp_path / "held.npz")
    assert held.calibration_.to_dict()["weights"] == pytest.approx(cal["weights"])
    again = lib.load_model(tmp_path / "raw.npz").calibrate(DATA / "cu_emt_test.extxyz")
    assert again.to_dict()["weights"] == pytest.approx(cal["weights"])
    gpmlip("calibrate", tmp_path / "raw.npz", "--max-frames", "3")
    assert lib.load_model(tmp_path / "raw.npz").calibration_.source == "leave-one-out"
    bad = gpmlip("calibrate", tmp_path / "raw.npz", "--max-frames", "0", check=False)
    assert bad.returncode == 1 and "--max-frames 0" in bad.stderr
