"""Training on workers: chunk statistics joined by a tall-skinny QR equal the one-process fit;
a lost worker's chunk runs again; the work runs in separate processes (local or Parsl)."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

import gpmlip
from gpmlip.gp import distributed
from gpmlip.gp.solver import GramStats

from conftest import emt_frames


def _model(n_jobs: int, **kw) -> gpmlip.SparseGP:
    return gpmlip.SparseGP(gpmlip.SOAP(["Cu", "Au"], 4.0, 4, 3), n_sparse=15, n_jobs=n_jobs,
                           e0={"Cu": 0.0, "Au": 0.0}, **kw)


@pytest.fixture(scope="module")
def frames():
    data = emt_frames(6, seed=4, alloy=True)
    data[0].calc.results.pop("stress")     # mixed labels: one structure without stress
    return data


@pytest.fixture(scope="module")
def one_process(frames):
    return _model(1).fit(frames)


def assert_same_model(a: gpmlip.SparseGP, b: gpmlip.SparseGP, rel: float = 1e-10) -> None:
    """Equal predictions (energy, forces, stress) and equal Gram statistics ``R'R``."""
    atoms = emt_frames(1, seed=40, alloy=True)[0]
    pa, pb = a.predict(atoms), b.predict(atoms)
    assert abs(pa.energy - pb.energy) <= rel * abs(pa.energy)
    for x, y in ((pa.forces, pb.forces), (pa.stress, pb.stress)):
        assert np.abs(x - y).max() <= rel * np.abs(x).max()
    for group, st in a.state_.stats.items():
        other = b.state_.stats[group]
        gram, gram_b = st.r.T @ st.r, other.r.T @ other.r
        assert np.abs(gram - gram_b).max() <= rel * max(np.abs(gram).max(), 1e-300), group
        assert (st.n, round(st.yy, 6)) == (other.n, round(other.yy, 6))


def test_merged_statistics_equal_streamed_rows():
    """Chunks' R factors stacked and factored again give the same R'R, R'z as all rows at once."""
    rng = np.random.default_rng(0)
    rows, y, scale = rng.normal(size=(700, 40)), rng.normal(size=700), rng.random(700) + 0.5
    whole = GramStats.empty(40)
    whole.add(rows, y, scale)
    whole.flush()
    joined = GramStats.empty(40)
    for part in np.array_split(np.arange(700), 5):
        chunk = GramStats.empty(40)
        chunk.add(rows[part], y[part], scale[part])
        joined.merge(chunk)
    joined.flush()
    np.testing.assert_allclose(joined.r.T @ joined.r, whole.r.T @ whole.r, rtol=1e-12,
                               atol=1e-10)
    np.testing.assert_allclose(joined.r.T @ joined.z, whole.r.T @ whole.z, rtol=1e-12,
                               atol=1e-10)
    assert (joined.n, joined.yy, joined.log_scale) == pytest.approx(
        (whole.n, whole.yy, whole.log_scale))


def test_chunks_cover_every_structure_once_with_even_weights():
    for n, k in ((10, 3), (3, 8), (1, 1), (100, 7)):
        parts = distributed.chunks(n, k)
        assert [i for p in parts for i in p] == list(range(n)) and all(parts)
    sizes = [100] * 10 + [10] * 100       # ten big structures, then a hundred small ones
    parts = distributed.chunks(sizes, 2)
    assert [i for p in parts for i in p] == list(range(110))
    assert [sum(sizes[i] for i in p) for p in parts] == [1000, 1000]


def test_two_worker_processes_equal_one_process(frames, one_process):
    """n_jobs=2: chunks run in two separate processes and are joined by a TSQR."""
    assert_same_model(one_process, _model(2).fit(frames))


def test_two_body_term_and_updates_on_workers_equal_one_process(frames):
    """The two-body columns travel with the chunks; an update adds chunk statistics to the
    existing ones."""
    kw = dict(two_body=gpmlip.TwoBody(n_sparse=6))
    a = _model(1, **kw).fit(frames[:4]).update(frames[4:])
    b = _model(2, **kw).fit(frames[:4]).update(frames[4:])
    assert_same_model(a, b)


_CHUNK_STATISTICS = distributed.chunk_statistics


def _dies_once(job, frames, e0_totals, indices):
    """A worker that is killed (exits without a word) the first time it sees chunk 0."""
    flag = os.environ["GPMLIP_TEST_FLAG"]
    if indices[0] == 0 and not os.path.exists(flag):
        open(flag, "w").close()
        os._exit(9)
    return _CHUNK_STATISTICS(job, frames, e0_totals, indices)


def test_a_killed_worker_is_retried_and_the_model_is_the_same(frames, one_process,
                                                               monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("GPMLIP_TEST_FLAG", str(tmp_path / "died"))
    monkeypatch.setattr(distributed, "chunk_statistics", _dies_once)
    with caplog.at_level(logging.WARNING, logger="gpmlip.gp.distributed"):
        model = _model(2).fit(frames)
    assert (tmp_path / "died").exists()
    assert "was lost" in caplog.text and "runs again" in caplog.text
    assert_same_model(one_process, model)


def test_a_broken_pool_that_was_given_is_replaced(frames, one_process, monkeypatch, tmp_path,
                                                   caplog):
    """A ProcessPoolExecutor passed in is unusable once a worker dies: the remaining chunks run
    on local processes and the model is still the same."""
    from concurrent.futures import ProcessPoolExecutor

    from gpmlip.parallel import mp_context

    monkeypatch.setenv("GPMLIP_TEST_FLAG", str(tmp_path / "died"))
    monkeypatch.setattr(distributed, "chunk_statistics", _dies_once)
    with ProcessPoolExecutor(2, mp_context=mp_context("compute")) as pool, \
            caplog.at_level(logging.WARNING, logger="gpmlip.gp.distributed"):
        model = _model(2).fit(frames, executor=pool)
    assert "cannot take work any more" in caplog.text
    assert_same_model(one_process, model)


def _always_dies(job, frames, e0_totals, indices):
    os._exit(9)


def test_a_chunk_that_keeps_failing_is_a_clear_error(frames, monkeypatch):
    from gpmlip.errors import NumericalError

    monkeypatch.setattr(distributed, "chunk_statistics", _always_dies)
    with pytest.raises(NumericalError, match="failed 3 times"):
        _model(2).fit(frames)


def test_bad_data_in_a_worker_is_raised_at_once(frames, monkeypatch):
    """gpmlip's own errors (bad input) are not retried."""
    from gpmlip.errors import DataError

    calls = []

    def bad(job, frames, e0_totals, indices):
        calls.append(1)
        raise DataError("bad structure")

    monkeypatch.setattr(distributed, "chunk_statistics", bad)
    with pytest.raises(DataError, match="bad structure"):
        _model(1).fit(frames, executor=_InProcess())


class _InProcess:
    """An executor that runs calls here (what a foreign executor's futures look like)."""

    def submit(self, fn, *args):
        from concurrent.futures import Future

        future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as err:   # noqa: BLE001 - handed to the caller as a future would
            future.set_exception(err)
        return future


@pytest.mark.slow
def test_parsl_workers_equal_one_process(frames, one_process, tmp_path):
    """Parsl's HighThroughputExecutor (separate worker processes, the cluster code path)."""
    from gpmlip.labelling.parsl import local_config, parsl_executor

    with parsl_executor(local_config(2, run_dir=tmp_path / "runinfo")) as executor:
        model = _model(1).fit(frames, executor=executor)
    assert_same_model(one_process, model)


@pytest.mark.slow
def test_gpmlip_train_with_two_workers_equals_one(frames, tmp_path):
    """``gpmlip train --workers N`` end to end (plain defaults): the same model file (slow: two
    CLI runs; the default suite checks 2 worker processes against 1 in process)."""
    import subprocess
    import sys

    from gpmlip.data import Dataset

    path = tmp_path / "train.extxyz"
    Dataset(gpmlip.load_frames(frames[1:])).write(path)
    toml = tmp_path / "s.toml"
    toml.write_text('[descriptor]\nn_max = 4\nl_max = 3\n[model]\nn_sparse = 10\n'
                    'e0 = {Cu = 0.0, Au = 0.0}\n')
    models = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.npz"
        proc = subprocess.run([sys.executable, "-m", "gpmlip.cli", "train", str(path), "-c",
                               str(toml), "--no-tune", "--workers", str(workers), "-o",
                               str(out), "--json"], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        models.append(gpmlip.load_model(out))
    assert_same_model(*models)


def test_cluster_settings_are_checked():
    from gpmlip.cli import build
    from gpmlip.errors import SettingsError

    assert build.cluster({"cluster": {"workers": 3}}) == (None, 3)
    assert build.cluster({}, 2) == (None, 2)
    with pytest.raises(SettingsError, match="need parsl"):
        build.cluster({"cluster": {"partition": "cpu"}})
    with pytest.raises(SettingsError, match="use \"local\" or \"slurm\""):
        build.cluster({"cluster": {"parsl": "pbs"}})
    with pytest.raises(SettingsError, match="needs partition"):
        build.cluster({"cluster": {"parsl": "slurm"}})
    model = _model(1)
    with build.cluster_for(model, {"cluster": {"workers": 2}}):
        assert model.n_jobs == 2 and model.executor is None
