"""Batch selection from a pool and the uncertainty gate for production MD."""

import json

import ase.io
import numpy as np
import pytest
from ase import units
from ase.calculators.emt import EMT
from ase.md.verlet import VelocityVerlet
try:  # ase >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # older ase
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta

import gpmlip
from gpmlip.active import UncertaintyGate, select_batch
from gpmlip.active import mdstate
from gpmlip.errors import SettingsError, UncertaintyStop, UnknownSpeciesError

from conftest import SMALL_CU, emt_frames


@pytest.fixture(scope="module")
def cold_model():
    """Trained on gently rattled Cu only: hot or strained structures are new to it."""
    frames = emt_frames(3, seed=0, rattle=0.03, strain=0.0)
    # The hard cutoff's descriptor is the more sensitive to small displacements, which these
    # thresholds were set for; the gate and selection logic does not depend on the cutoff.
    soap = gpmlip.SOAP(**SMALL_CU, weighting=None)
    return gpmlip.SparseGP(soap, n_sparse=8, e0={"Cu": 0.0}).fit(frames)


def _copy_with_noise(atoms, seed):
    out = atoms.copy()
    out.positions += 1e-4 * np.random.default_rng(seed).standard_normal(out.positions.shape)
    return out


def test_greedy_skips_near_duplicates_that_topk_takes(cold_model):
    hot = emt_frames(1, seed=1, rattle=0.25, strain=0.0)[0]
    other = emt_frames(1, seed=2, rattle=0.15, strain=0.04)[0]
    pool = [hot, _copy_with_noise(hot, 1), _copy_with_noise(hot, 2), other]
    topk = select_batch(cold_model, pool, 2, method="topk")
    greedy = select_batch(cold_model, pool, 2, method="greedy")
    scores = topk.initial_scores
    assert scores[3] < min(scores[:3])          # the distinct frame is the least uncertain...
    assert set(topk.indices) <= {0, 1, 2}       # ...so top-k takes two copies of one frame
    assert greedy.indices[0] in {0, 1, 2} and greedy.indices[1] == 3
    assert greedy.scores[1] < greedy.scores[0]
    assert greedy.added_atoms[0]                 # the pick's atoms went into the basis
    rnd = select_batch(cold_model, pool, 3, method="random", seed=0)
    assert len(set(rnd.indices)) == 3


def test_scores_match_the_models_uncertainty_order(cold_model):
    pool = [emt_frames(1, seed=s, rattle=r, strain=0.0)[0]
            for s, r in ((3, 0.02), (4, 0.1), (5, 0.3))]
    sel = select_batch(cold_model, pool, 3, method="topk")
    model_max = [cold_model.predict(a, forces=False).max_uncertainty for a in pool]
    assert sel.indices == list(np.argsort(model_max)[::-1])


def test_pool_score_is_the_std_the_learner_thresholds(cold_model):
    """The pool scores a structure by the prediction's largest local_std_normalised (weight
    term included), not by the projected-process residual alone."""
    pool = [emt_frames(1, seed=s, rattle=r, strain=0.0)[0]
            for s, r in ((3, 0.02), (4, 0.1), (5, 0.3))]
    sel = select_batch(cold_model, pool, 3, method="greedy")
    expected = [cold_model.predict(a, forces=False).local_std_normalised.max() for a in pool]
    np.testing.assert_allclose(sel.initial_scores, expected, rtol=1e-8)
    assert sel.scores[0] == pytest.approx(max(expected), rel=1e-8)
    rms = select_batch(cold_model, pool, 1, method="topk", score="rms").initial_scores
    np.testing.assert_allclose(rms, [np.sqrt(np.mean(cold_model.predict(
        a, forces=False).local_std_normalised ** 2)) for a in pool], rtol=1e-8)


def test_rms_score_is_between_mean_and_max(cold_model):
    pool = [emt_frames(1, seed=s, rattle=r, strain=0.0)[0] for s, r in ((3, 0.05), (4, 0.2))]
    rms = select_batch(cold_model, pool, 2, method="topk", score="rms").initial_scores
    top = select_batch(cold_model, pool, 2, method="topk", score="max").initial_scores
    assert np.all(rms <= top + 1e-12) and np.all(rms > 0.2 * top)
    assert rms[1] > rms[0]                     # the hotter frame is newer on average too


def test_selection_bad_input(cold_model):
    pool = emt_frames(2, seed=6)
    with pytest.raises(SettingsError, match="method"):
        select_batch(cold_model, pool, 1, method="maxvol")
    with pytest.raises(SettingsError, match="score"):
        select_batch(cold_model, pool, 1, score="median")
    with pytest.raises(SettingsError, match="pool size"):
        select_batch(cold_model, pool, 3)
    alloy = emt_frames(1, seed=7, alloy=True)
    with pytest.raises(UnknownSpeciesError, match="candidate 0"):
        select_batch(cold_model, alloy, 1)


def _hot_md(model_or_gate, temperature=1500, seed=0):
    atoms = emt_frames(1, seed=seed, rattle=0.0, strain=0.0)[0]
    thermalize_momenta(atoms, temperature_K=temperature,
                                 rng=np.random.default_rng(seed))
    atoms.calc = model_or_gate.calculator
    return atoms, VelocityVerlet(atoms, 2 * units.fs)


class ListQueue:
    def __init__(self):
        self.items = []

    def add(self, structures, source=""):
        self.items += [(s, source) for s in structures]
        return list(range(len(self.items) - len(structures), len(self.items)))


@pytest.mark.parametrize("policy", ["warn", "queue"])
def test_gate_warns_or_queues_and_counts(cold_model, tmp_path, policy):
    queue = ListQueue()
    gate = UncertaintyGate(cold_model, tmp_path, threshold=0.01, policy=policy, queue=queue,
                           min_steps_between=5)
    atoms, dyn = _hot_md(gate)
    summary = gate.run(dyn, 40)
    assert summary["steps"] == 40 == dyn.nsteps and summary["gated"] >= 2
    assert summary[policy] == summary["gated"] and summary["max_std_seen"] > 0.01
    frames = ase.io.read(tmp_path / "gated.extxyz", ":")
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert len(frames) == len(events) == summary["gated"]
    steps = [e["step"] for e in events]
    assert all(b - a >= 5 for a, b in zip(steps, steps[1:]))
    assert all(f.info["max_std"] > 0.01 and "local_std" in f.arrays for f in frames)
    if policy == "queue":
        assert len(queue.items) == summary["gated"]
        np.testing.assert_allclose(queue.items[0][0].positions, frames[0].positions, atol=1e-7)
    calm = UncertaintyGate(cold_model, tmp_path / "calm", threshold=0.9, policy=policy,
                           queue=queue)
    atoms, dyn = _hot_md(calm)
    assert calm.run(dyn, 10)["gated"] == 0


def test_gate_stop_saves_a_resumable_state(cold_model, tmp_path):
    gate = UncertaintyGate(cold_model, tmp_path, threshold=0.01, policy="stop")
    atoms, dyn = _hot_md(gate)
    summary = gate.run(dyn, 200)
    assert summary["stopped"] and summary["stop"] == 1 and summary["steps"] < 200
    saved = json.loads((tmp_path / "stop.json").read_text())
    assert saved["step"] == dyn.nsteps and saved["max_std"] > 0.01
    fresh, dyn2 = _hot_md(gate, seed=9)
    mdstate.restore(dyn2, saved["md"])
    np.testing.assert_allclose(fresh.positions, atoms.positions)
    np.testing.assert_allclose(fresh.get_momenta(), atoms.get_momenta())
    # attached to the dynamics instead: the stop is an exception the caller sees
    gate2 = UncertaintyGate(cold_model, tmp_path / "attached", threshold=0.01, policy="stop")
    atoms, dyn = _hot_md(gate2)
    gate2.start(dyn)
    dyn.attach(gate2)
    with pytest.raises(UncertaintyStop, match="saved"):
        dyn.run(200)


def test_gate_label_learns_and_keeps_labels(tmp_path):
    frames = emt_frames(2, seed=0, rattle=0.03, strain=0.0)
    model = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=4, e0={"Cu": 0.0}).fit(frames)
    gate = UncertaintyGate(model, tmp_path, threshold=0.01, policy="label", labeller="emt",
                           min_steps_between=3)
    atoms, dyn = _hot_md(gate)
    n_sparse = model.n_sparse_points
    summary = gate.run(dyn, 30)
    assert summary["label"] >= 1 and len(model.frames_) == 2 + summary["label"]
    assert model.n_sparse_points > n_sparse
    labels = sorted((tmp_path / "labels").glob("*.json"))
    assert len(labels) == summary["label"]
    record = json.loads(labels[0].read_text())
    check = atoms.copy()
    check.positions = np.array(record["structure"]["positions"])
    check.calc = EMT()
    assert record["result"]["energy"] == pytest.approx(check.get_potential_energy())
    # the labelled frame is now known to the model
    assert model.predict(check, forces=False).max_uncertainty < record["max_std"]


def _label_gate(directory, **kwargs):
    frames = emt_frames(2, seed=0, rattle=0.03, strain=0.0)
    model = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=4, e0={"Cu": 0.0}).fit(frames)
    return UncertaintyGate(model, directory, threshold=0.003, policy="label", labeller="emt",
                           min_steps_between=3, **kwargs)


def test_gate_label_saves_its_model_and_resumes_like_an_otf_run(tmp_path):
    """The label policy is the on-the-fly learner's machinery: the model with the new labels
    is saved, and a run killed between a label reaching the disk and the model learning it
    resumes (label re-applied, not recomputed) to the same end as an uncut run."""
    gate = _label_gate(tmp_path / "ref")
    atoms, dyn = _hot_md(gate)
    ref = gate.run(dyn, 30)
    assert ref["labels"] >= 2 and ref["steps"] == 30
    saved = gpmlip.load_model(tmp_path / "ref" / "model.npz")
    assert len(saved.frames_) == 2 + ref["labels"]
    assert {f.config_type for f in saved.frames_[2:]} == {"gate"}
    record = json.loads((tmp_path / "ref/labels/000001.json").read_text())
    assert record["provenance"]["start"] and record["md"]["nsteps"] == record["step"]

    class Killed(Exception):
        pass

    seen = []

    def kill(event, info):
        if event == "labelled":
            seen.append(info["index"])
            if len(seen) == 2:
                raise Killed

    gate = _label_gate(tmp_path / "cut", callbacks=[kill])
    _, dyn = _hot_md(gate)
    with pytest.raises(Killed):
        gate.run(dyn, 30)
    with pytest.raises(gpmlip.errors.RunDirectoryError, match="resume"):
        _label_gate(tmp_path / "cut").run(_hot_md(gate)[1], 30)
    gate = _label_gate(tmp_path / "cut")
    again, dyn = _hot_md(gate)
    summary = gate.run(dyn, 30, resume=True)
    assert summary["steps"] == 30 and summary["labels"] == ref["labels"]
    assert summary["sparse_points"] == ref["sparse_points"]
    assert summary["gated"] == ref["gated"]
    np.testing.assert_allclose(again.positions, atoms.positions, atol=1e-6)
    assert len(list((tmp_path / "cut/labels").glob("*.json"))) == ref["labels"]


def test_gate_bad_settings(cold_model, tmp_path):
    with pytest.raises(SettingsError, match="policy"):
        UncertaintyGate(cold_model, tmp_path, 0.05, "explode")
    with pytest.raises(SettingsError, match="queue"):
        UncertaintyGate(cold_model, tmp_path, 0.05, "queue")
    with pytest.raises(SettingsError, match="labeller"):
        UncertaintyGate(cold_model, tmp_path, 0.05, "label")
    with pytest.raises(SettingsError, match="threshold"):
        UncertaintyGate(cold_model, tmp_path, 5.0)
