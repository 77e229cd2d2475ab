"""Batch selection on a redundant pool: no two copies of a frame, rare configurations first."""

import numpy as np
import pytest
from ase.build import bulk, fcc111

import gpmlip
from gpmlip.active import select_batch
from gpmlip.testing import emt_md_frames

from conftest import SMALL_CU


def _md(atoms, n, every, seed):
    return emt_md_frames(atoms, n, temperature=800, every=every, seed=seed, warmup=40)


@pytest.fixture(scope="module")
def pool_and_model():
    """A model fitted on two 800 K bulk frames; a pool of 800 K bulk frames 4 fs apart (each
    one twice) and one vacancy and one surface frame at the end."""
    cell = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    train = _md(cell, 2, 30, seed=1)
    soap = gpmlip.SOAP(**SMALL_CU)
    model = gpmlip.SparseGP(soap, n_sparse=20, e0="fit", energy_sigma=0.002,
                            force_sigma=0.03).fit(train)
    frames = _md(cell, 6, 2, seed=2)
    vacancy = cell.copy()
    del vacancy[5]
    surface = fcc111("Cu", size=(2, 2, 6), a=3.61, vacuum=6.0)
    rare = [_md(vacancy, 1, 2, seed=3)[0], _md(surface, 1, 2, seed=4)[0]]
    pool = [f for frame in frames for f in (frame, frame.copy())] + rare
    return model, pool


def test_greedy_never_picks_two_copies_of_a_frame(pool_and_model):
    model, pool = pool_and_model
    bulk_pool = pool[:-2]
    topk = select_batch(model, bulk_pool, 4, method="topk")
    owners = [i // 2 for i in topk.indices]
    assert len(set(owners)) < len(owners)        # scores alone take both copies of a frame
    for score in ("max", "rms"):
        sel = select_batch(model, bulk_pool, 6, method="greedy", score=score)
        owners = [i // 2 for i in sel.indices]
        assert len(set(owners)) == 6, (score, sel.indices)
        assert np.all(np.diff(sel.scores) <= 1e-12)      # conditioning only lowers scores


def test_greedy_picks_the_rare_configurations_first(pool_and_model):
    model, pool = pool_and_model
    rare = {len(pool) - 2, len(pool) - 1}
    rms = select_batch(model, pool, 2, method="greedy", score="rms")
    assert set(rms.indices) == rare
    top = select_batch(model, pool, 3, method="greedy", score="max")
    assert top.indices[0] in rare and rare <= set(top.indices)
    rnd = select_batch(model, pool, 3, method="random", seed=0)
    assert not rare <= set(rnd.indices)


def test_a_translated_permuted_copy_is_a_copy(pool_and_model):
    """The copy rule sees structures, not arrays: shifted and reordered atoms are the same
    frame; with the rule disabled (``duplicate=0``) the same pool gives a copy."""
    model, pool = pool_and_model
    frames = pool[:-2:2]
    moved = frames[0].copy()
    moved.positions += [0.3, -0.2, 0.1]
    moved.wrap()
    moved = moved[np.random.default_rng(0).permutation(len(moved))]
    candidates = frames + [moved]
    sel = select_batch(model, candidates, len(frames), method="greedy", atoms_per_pick=4)
    assert not {0, len(frames)} <= set(sel.indices)
    off = select_batch(model, candidates, len(frames), method="greedy", atoms_per_pick=4,
                       duplicate=0)
    assert {0, len(frames)} <= set(off.indices)
