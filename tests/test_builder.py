"""The model builder (gpmlip.build_model): data scales, the screen, budget, failures, files, CLI."""

import json
import logging
import subprocess
import sys

import pytest
from ase.build import bulk
from ase.neighborlist import neighbor_list

import gpmlip
from gpmlip import builder
from gpmlip.builder import screen
from gpmlip.builder import Settings, build_model, data_scales, screening_subset
from gpmlip.data import Dataset
from gpmlip.errors import NumericalError, SettingsError
from gpmlip.gp.validation import leave_one_out

from conftest import emt_frames

SMALL = {"n_max": 4, "l_max": 3}
"""Fixed basis for speed: the basis stage is not screened."""


@pytest.fixture(scope="module")
def frames():
    data = emt_frames(8, seed=11)
    for i, atoms in enumerate(data):
        atoms.info["config_type"] = "hot" if i % 2 else "cold"
    return list(gpmlip.load_frames(data))


def build(frames, **kw):
    args = dict(budget=300, screen_frames=4, screen_sparse=8, n_sparse=12, settings=SMALL,
                n_jobs=1, model_kwargs={"e0": {"Cu": 0.0}}, calibrate=False)
    args.update(kw)
    return build_model(frames, **args)


def test_data_scales_on_fcc_copper():
    """The cutoff holds ~30 neighbours and the short cutoff falls in the gap between the first
    two shells of fcc Cu (2.55 and 3.61 Å)."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)
    scales = data_scales([gpmlip.Frame(atoms)])
    count = len(neighbor_list("d", atoms, scales.r_cut)) / len(atoms)
    assert count >= builder.NEIGHBOURS_IN_CUTOFF
    assert len(neighbor_list("d", atoms, scales.r_cut - 0.15)) / len(atoms) \
        < builder.NEIGHBOURS_IN_CUTOFF
    assert 2.55 + 0.2 < scales.r_short < 3.61 - 0.2


def test_screening_subset_spreads_over_config_types():
    frames = [gpmlip.Frame(bulk("Cu"), config_type=t) for t in ["a"] * 30 + ["b"] * 10]
    idx = screening_subset(frames, 8)
    kinds = [frames[i].config_type for i in idx]
    assert len(idx) == 8 and kinds.count("b") == 2 and list(idx) == sorted(idx)
    assert list(screening_subset(frames, 100)) == list(range(40))


def test_screen_scores_what_leave_one_out_says(frames):
    """The screen's numbers are the closed-form leave-one-out of the model it describes (which
    tests/test_validation.py checks against refits), and the criterion is relative to the
    defaults."""
    model = build(frames, budget=1e-6, noise=False)
    row = model.build_report_["screen"][0]
    assert row["candidate"] == "defaults" and row["criterion"] == 1.0
    subset = [frames[i] for i in screening_subset(frames, 4)]
    again = gpmlip.SparseGP(Settings(**{**model.build_report_["defaults"], "second": None})
                            .descriptor(["Cu"], 1), n_sparse=8, e0={"Cu": 0.0},
                            **builder.START_NOISE).fit(subset)
    mae = leave_one_out(again).mae()
    assert row["loo_mae"]["energy"] == pytest.approx(mae["energy"], rel=1e-8)
    assert row["loo_mae"]["forces"] == pytest.approx(mae["forces"], rel=1e-8)
    assert builder.criterion({"energy": 2.0, "forces": 1.0}, {"energy": 1.0, "forces": 1.0}) \
        == pytest.approx(1.5)


def test_a_tiny_budget_returns_the_defaults_and_says_so(frames, caplog):
    with caplog.at_level(logging.INFO, logger="gpmlip.builder"):
        model = build(frames, budget=1e-6)
    report = model.build_report_
    assert report["chosen"] == report["defaults"] and report["chosen_changes"] == "defaults"
    assert all(v == "skipped: budget" for k, v in report["stages"].items()
               if k in ("weighting", "radial basis", "zeta", "sigma", "second SOAP",
                        "angular basis", "sparse method"))
    assert report["stages"]["noise"].startswith("starting levels kept: no budget left")
    assert "no budget left" in caplog.text
    assert model.is_fitted and model.n_sparse_points == 12


def test_search_is_deterministic_chooses_by_the_criterion_and_round_trips(frames, tmp_path):
    a = build(frames)
    b = build(frames)
    strip = lambda r: [{k: v for k, v in row.items() if k != "seconds"} for row in r["screen"]]
    assert strip(a.build_report_) == strip(b.build_report_)
    assert a.build_report_["chosen"] == b.build_report_["chosen"]
    atoms = emt_frames(1, seed=99)[0]
    assert a.predict(atoms).energy == pytest.approx(b.predict(atoms).energy, abs=1e-10)
    rows = a.build_report_["screen"]
    assert {r["stage"] for r in rows} >= {"defaults", "weighting", "zeta", "sigma",
                                          "second SOAP", "sparse method"}
    # the winner's criterion is the smallest of the screen (ties within 0.005 keep the earlier)
    screened = [r for r in rows if r["stage"] != "confirm" and r["criterion"] is not None]
    best = min(r["criterion"] for r in screened)
    chosen = a.build_report_["chosen_changes"]
    winner = [r for r in screened if r["candidate"] == chosen]
    assert winner and winner[0]["criterion"] <= best + 0.005 * len(screened)
    # the chosen settings are the model's
    s = a.build_report_["chosen"]
    desc = a.descriptor.parts[0] if isinstance(a.descriptor, gpmlip.Stacked) else a.descriptor
    assert (desc.settings.r_cut, desc.settings.n_max, a.zeta) == (s["r_cut"], 4, s["zeta"])
    # the noise levels chosen on every structure at the screening sparse count are the model's
    levels = a.build_report_["noise"]["levels"]
    assert a.noise["forces"] == pytest.approx(levels["forces"])
    assert a.noise["energy"] == pytest.approx(levels["energy"])
    a.save(tmp_path / "m.npz")
    assert gpmlip.load_model(tmp_path / "m.npz").build_report_ == json.loads(
        json.dumps(a.build_report_))


def test_a_failing_candidate_is_skipped_and_logged(frames, monkeypatch, caplog):
    real = screen.Screen.model

    def broken(self, settings, n_sparse):
        if settings.zeta == 6:
            raise NumericalError("singular test system")
        return real(self, settings, n_sparse)

    monkeypatch.setattr(screen.Screen, "model", broken)
    with caplog.at_level(logging.WARNING, logger="gpmlip.builder"):
        model = build(frames, noise=False)
    rows = [r for r in model.build_report_["screen"] if r["stage"] == "zeta"]
    assert rows and rows[0]["status"].startswith("failed: NumericalError: singular test system")
    assert rows[0]["criterion"] is None and model.build_report_["chosen"]["zeta"] == 4
    assert "skipped" in caplog.text and "singular test system" in caplog.text


def test_a_slow_first_fit_does_not_enter_the_plan(frames, monkeypatch):
    """On a fresh install numba compiles the engine in the first fit; the builder warms up
    first, so the first screening fit, the unit of the budget plan, does not carry it."""
    import time

    real, calls = screen.Screen.run, []

    def first_call_compiles(self, *args, **kwargs):
        calls.append(args[0])
        if len(calls) == 1:
            time.sleep(3.0)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(screen.Screen, "run", first_call_compiles)
    model = build(frames, noise=False)
    report = model.build_report_
    assert calls[:2] == ["warm-up", "defaults"]
    assert report["screen"][0]["stage"] == "defaults" and report["screen"][0]["seconds"] < 3.0
    assert report["plan"]["fit_seconds"] < 3.0 and "warm-up" in report["stages"]


def test_bad_settings_are_clear_errors(frames):
    with pytest.raises(SettingsError, match="settings \\['zetta'\\] unknown"):
        build(frames, settings={"zetta": 2})
    with pytest.raises(SettingsError, match="not in species"):
        build(frames, species=["Au"])
    with pytest.raises(SettingsError, match="budget"):
        build(frames, budget=0)


def test_gpmlip_train_tunes_by_default_and_info_shows_how(frames, tmp_path):
    path = tmp_path / "train.extxyz"
    Dataset(frames[:6]).write(path)
    toml = tmp_path / "s.toml"
    toml.write_text('[descriptor]\nn_max = 4\nl_max = 3\n[model]\nn_sparse = 10\n'
                    'e0 = {Cu = 0.0}\n')
    run = lambda *a: subprocess.run([sys.executable, "-m", "gpmlip.cli", *map(str, a)],
                                    capture_output=True, text=True, timeout=600)
    proc = run("train", path, "-c", toml, "-o", tmp_path / "m.npz", "--budget", "20")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "settings      tuned" in proc.stdout and "screened" in proc.stdout
    info = run("info", tmp_path / "m.npz")
    assert info.returncode == 0 and "weighting" in info.stdout and "criterion" in info.stdout
    report = gpmlip.load_model(tmp_path / "m.npz").build_report_
    assert report["tuned"] and report["defaults"]["r_cut"] == data_scales(
        list(gpmlip.load_frames(path))).r_cut
    plain = run("train", path, "-c", toml, "-o", tmp_path / "p.npz", "--no-tune", "--json")
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert gpmlip.load_model(tmp_path / "p.npz").build_report_["screen"] == []


def test_the_final_sparse_count_doubles_when_the_budget_holds_it():
    """Time left for the final fit at twice the points (a fifth to spare): 2000 per species,
    at most a quarter of the atoms; too little time: the default, and the report says why."""
    import time

    from gpmlip.builder.build import sparse_for_budget
    from gpmlip.builder.report import BuildReport
    from gpmlip.builder.screen import Plan

    big = [gpmlip.Frame(bulk("Cu", cubic=True).repeat(10), energy=0.0) for _ in range(3)]
    small = [gpmlip.Frame(bulk("Cu", cubic=True).repeat(5), energy=0.0) for _ in range(3)]

    def report():
        r = BuildReport(Settings(4.0), Settings(4.0), data_scales(small[:1]), 100.0)
        r.plan = Plan(fit_seconds=1.0, structures_ratio=1.0)     # tail 3 s: 7.5 s needed
        return r

    start = time.perf_counter()
    r = report()
    assert sparse_for_budget(big, ["Cu"], {"Cu": 1000}, r, start, 100.0) == {"Cu": 2000}
    assert r.stages["sparse count"].startswith("2000 per species (doubled")
    assert sparse_for_budget(small, ["Cu"], {"Cu": 375}, report(), start, 100.0) == {"Cu": 375}
    r = report()
    assert sparse_for_budget(big, ["Cu"], {"Cu": 1000}, r, start, 5.0) == {"Cu": 1000}
    assert "needed for twice the points" in r.stages["sparse count"]


def test_the_runner_up_is_confirmed_beside_the_winner_only_when_close():
    from gpmlip.builder.report import Row

    d = Settings(4.0)
    a, b, c = (Settings(4.0, zeta=6), Settings(4.0, sigma=0.4), Settings(4.0, n_max=8))
    rows = [Row("defaults", d, 4, 8, criterion=1.0), Row("zeta", a, 4, 8, criterion=0.96),
            Row("sigma", b, 4, 8, criterion=0.985), Row("radial", c, 4, 8, criterion=0.99),
            Row("confirm", b, 4, 8, criterion=0.5)]
    assert screen.runner_up(rows, a, rows[1], d) is rows[2]
    rows[2].criterion = 0.96 + screen.DUEL_MARGIN + 0.001
    rows[3].criterion = 1.2
    assert screen.runner_up(rows, a, rows[1], d) is None
    # the defaults won: the best other candidate within the margin of 1 is confirmed
    won = [Row("defaults", d, 4, 8, criterion=1.0), Row("zeta", a, 4, 8, criterion=1.05),
           Row("radial", c, 4, 8, criterion=1.02)]
    assert screen.runner_up(won, d, won[0], d) is won[2]


def _alloy_frames(symbols, n: int = 3):
    """Rattled fcc cells with ``symbols`` spread over the sites, labelled with EMT."""
    import numpy as np
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(7)
    out = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.8, cubic=True).repeat(2)
        atoms.symbols = [symbols[k % len(symbols)] for k in range(len(atoms))]
        atoms.rattle(0.05, seed=int(rng.integers(1000)))
        atoms.calc = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy(),
                                           forces=atoms.get_forces())
        out.append(atoms)
    return out


def test_three_species_get_the_compressed_soap_by_default():
    """From three species the plain defaults use dscribe's mu1nu1 compression (features linear
    in the species count); a setting given by hand wins; two species stay uncompressed."""
    kw = dict(tune=False, noise=False, calibrate=False, n_sparse=4, settings=SMALL, n_jobs=1)
    three = _alloy_frames(["Cu", "Ag", "Au"])
    model = build_model(three, **kw)
    assert model.descriptor.settings.compression == "mu1nu1"
    assert model.build_report_["chosen"]["compression"] == "mu1nu1"
    kept = build_model(three, **{**kw, "settings": {**SMALL, "compression": "off"}})
    assert kept.descriptor.settings.compression == "off"
    two = build_model(_alloy_frames(["Cu", "Au"]), **kw)
    assert two.descriptor.settings.compression == "off"
