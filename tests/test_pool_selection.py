"""Batch selection on a redundant pool: no copies twice, rare configurations early, the scores."""

import numpy as np
import pytest
from ase.build import bulk

import gpmlip
from gpmlip.active import select_batch

from conftest import SMALL_CU, emt_frames


@pytest.fixture(scope="module")
def model():
    frames = emt_frames(2, seed=0, rattle=0.05, strain=0.0)
    soap = gpmlip.SOAP(**SMALL_CU, weighting=None)
    return gpmlip.SparseGP(soap, n_sparse=8, e0={"Cu": 0.0}).fit(frames)


def _redundant_pool():
    """Six exact copies of each of two thermal frames, then a vacancy and a surface frame."""
    a, b = emt_frames(2, seed=7, rattle=0.08, strain=0.0)
    vacancy = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    vacancy.rattle(0.05, seed=3)
    del vacancy[5]
    surface = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    surface.rattle(0.05, seed=4)
    surface.center(vacuum=5.0, axis=2)
    surface.pbc = (True, True, False)
    pool = [a.copy() for _ in range(6)] + [b.copy() for _ in range(6)] + [vacancy, surface]
    copies = [0] * 6 + [1] * 6 + [2, 3]          # which distinct frame each entry is
    return pool, copies


@pytest.mark.parametrize("score", ["max", "rms", "sum"])
def test_greedy_never_picks_two_copies_and_takes_the_rare_ones_first(model, score):
    pool, copies = _redundant_pool()
    sel = select_batch(model, pool, 4, method="greedy", score=score)
    picked = [copies[i] for i in sel.indices]
    assert len(set(picked)) == 4, picked                  # one of each distinct frame
    assert set(picked[:2]) == {2, 3}, picked              # the vacancy and the surface first
    assert np.all(np.diff(sel.scores) <= 1e-12)           # conditioning only lowers scores
    topk = select_batch(model, pool, 4, method="topk", score=score)
    assert len(set(copies[i] for i in topk.indices)) < 4  # the baseline does take copies


def test_sum_score_counts_every_atom(model):
    frame = emt_frames(1, seed=9, rattle=0.1, strain=0.0)[0]
    double = frame.repeat((2, 1, 1))                      # the same environments, twice as many
    sel = {s: select_batch(model, [frame, double], 2, method="topk", score=s).initial_scores
           for s in ("max", "rms", "sum")}
    np.testing.assert_allclose(sel["max"][1], sel["max"][0], rtol=1e-6)
    np.testing.assert_allclose(sel["rms"][1], sel["rms"][0], rtol=1e-6)
    np.testing.assert_allclose(sel["sum"][1], np.sqrt(2) * sel["sum"][0], rtol=1e-6)
    np.testing.assert_allclose(sel["sum"][0], np.sqrt(len(frame)) * sel["rms"][0], rtol=1e-9)
