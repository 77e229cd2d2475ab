"""Property-based tests of every reader a user feeds: any input gives a correct result or a
gpmlip error that names the problem, never a raw traceback or a silently different model.

The default suite runs a bounded number of examples per reader; ``GPMLIP_FUZZ_EXAMPLES=2000
pytest tests/test_fuzz.py`` runs a longer campaign.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpmlip
from gpmlip.cli import config
from gpmlip.errors import GpmlipError

from conftest import SMALL_CU, emt_frames

EXAMPLES = int(os.environ.get("GPMLIP_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small fitted model's file, its arrays and metadata, and its prediction of a probe."""
    path = tmp_path_factory.mktemp("fuzz") / "model.npz"
    model = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=6, e0={"Cu": 0.0}).fit(
        emt_frames(3, seed=1))
    model.calibrate()
    model.save(path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(bytes(arrays.pop("metadata.json")).decode())
    probe = emt_frames(1, seed=2)[0]
    return path, arrays, meta, probe, model.predict(probe)


def _write(path, arrays, meta):
    out = {"metadata.json": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays}
    np.savez(path, **out)


def _loads_exactly_or_refuses(path, probe, reference):
    try:
        model = gpmlip.load_model(path)
    except GpmlipError:
        return "refused"
    p = model.predict(probe)
    assert np.isfinite(p.energy) and np.isfinite(p.forces).all()
    assert p.energy == pytest.approx(reference.energy, rel=1e-6, abs=1e-6)
    np.testing.assert_allclose(p.forces, reference.forces, atol=1e-6)
    return "loaded"


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10, 10 ** 6),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
                   st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3),
                                                                      st.integers(), max_size=2))


def _paths(meta, prefix=()):
    for k, v in meta.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from _paths(v, prefix + (k,))


@FUZZ
@given(data=st.data())
def test_model_file_metadata_mutations(saved, tmp_path, data):
    path, arrays, meta, probe, reference = saved
    meta = json.loads(json.dumps(meta))
    paths = sorted(_paths(meta))
    where = data.draw(st.sampled_from(paths))
    parent = meta
    for k in where[:-1]:
        parent = parent[k]
    if data.draw(st.booleans()):
        del parent[where[-1]]
    else:
        parent[where[-1]] = data.draw(VALUES)
    _write(tmp_path / "m.npz", arrays, meta)
    _loads_exactly_or_refuses(tmp_path / "m.npz", probe, reference)


@FUZZ
@given(data=st.data())
def test_model_file_array_mutations(saved, tmp_path, data):
    path, arrays, meta, probe, reference = saved
    arrays = dict(arrays)
    name = data.draw(st.sampled_from(sorted(arrays)))
    a = arrays[name].copy()
    how = data.draw(st.sampled_from(["value", "shape", "dtype", "drop"]))
    if how == "drop":
        del arrays[name]
    elif how == "shape":
        arrays[name] = a.ravel()[: max(0, a.size - data.draw(st.integers(1, 3)))]
    elif how == "dtype":
        arrays[name] = a.astype(data.draw(st.sampled_from([np.float32, np.int8, np.bool_])))
    elif a.size:
        flat = a.ravel()
        i = data.draw(st.integers(0, a.size - 1))
        if a.dtype.kind == "f":
            flat[i] = data.draw(st.floats(allow_nan=True, allow_infinity=True, width=64))
        elif a.dtype.kind in "iu":
            flat[i] = data.draw(st.integers(-5, 200))
        else:
            flat[i] = not flat[i]
        arrays[name] = flat.reshape(a.shape)
    _write(tmp_path / "m.npz", arrays, meta)
    _loads_exactly_or_refuses(tmp_path / "m.npz", probe, reference)


@FUZZ
@given(cut=st.integers(0, 4000), flips=st.lists(st.tuples(st.integers(0, 10 ** 6),
                                                          st.integers(0, 255)), max_size=4))
def test_model_file_byte_damage(saved, tmp_path, cut, flips):
    path, arrays, meta, probe, reference = saved
    raw = bytearray(path.read_bytes())
    if cut:
        raw = raw[: max(0, len(raw) - cut)]
    for pos, byte in flips:
        if raw:
            raw[pos % len(raw)] = byte
    (tmp_path / "m.npz").write_bytes(bytes(raw))
    _loads_exactly_or_refuses(tmp_path / "m.npz", probe, reference)


TABLES = st.sampled_from(["descriptor", "model", "data", "md", "otf", "gate", "learn", "modle"])
KEYS = st.sampled_from(["species", "r_cut", "n_max", "l_max", "sigma", "weighting", "second",
                        "zeta", "n_sparse", "budget", "tune", "train", "temperature",
                        "timestep_fs", "steps", "interval", "threshold", "pool", "timeout",
                        "labeller", "energy_sigma", "optimise", "bogus"])


@FUZZ
@given(tables=st.dictionaries(TABLES, st.dictionaries(KEYS, VALUES, max_size=4), max_size=3))
def test_settings_tables_are_accepted_or_one_clear_error(tables):
    try:
        config.check(tables, "fuzz")
    except GpmlipError as err:
        assert "fuzz" in str(err)


@pytest.fixture(scope="module")
def extxyz_text():
    from ase.io import write

    buf = io.StringIO()
    write(buf, emt_frames(2, seed=3), format="extxyz")
    return buf.getvalue()


@FUZZ
@given(data=st.data())
def test_extxyz_damage_loads_or_is_one_data_error(extxyz_text, tmp_path, data):
    lines = extxyz_text.splitlines()
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(lines) - 1))
        how = data.draw(st.sampled_from(["drop", "nan", "garble", "word"]))
        if how == "drop":
            del lines[i]
        elif how == "nan":
            lines[i] = lines[i].replace(data.draw(st.sampled_from(["0", "1", "2", "3"])), "nan", 1)
        elif how == "garble":
            lines[i] = lines[i][: data.draw(st.integers(0, len(lines[i])))]
        else:
            lines[i] = lines[i].replace("energy", data.draw(st.sampled_from(
                ["Energy", "dft_energy", "e", ""])), 1)
        if not lines:
            break
    path = tmp_path / "d.extxyz"
    path.write_text("\n".join(lines) + "\n")
    try:
        frames = gpmlip.load_frames(path)
    except GpmlipError:
        return
    for f in frames:
        assert np.isfinite(f.atoms.positions).all()
        for label in (f.energy, f.forces, f.stress):
            assert label is None or np.isfinite(label).all()


@pytest.fixture(scope="module")
def finished_queue(tmp_path_factory):
    """A labelled queue database (3 EMT Cu rows) and the frames it exports."""
    from ase.build import bulk

    from gpmlip.labelling import LabelQueue, label_queue

    path = tmp_path_factory.mktemp("queue") / "q.db"
    rng = np.random.default_rng(0)
    structures = []
    for _ in range(3):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        structures.append(atoms)
    queue = LabelQueue(path, "emt", species=["Cu"])
    queue.add(structures)
    label_queue(queue, max_workers=1)
    return path, queue.frames()


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(1, 255)), min_size=1,
                      max_size=4), cut=st.one_of(st.none(), st.integers(0, 10 ** 6)))
def test_queue_database_damage_exports_exactly_or_is_one_error(finished_queue, tmp_path, flips,
                                                                 cut):
    """Random byte damage to a finished queue: export writes exactly the labelled frames (a
    byte SQLite never reads) or is refused with a gpmlip error, never a changed frame."""
    from ase.io import read

    from gpmlip.labelling import LabelQueue

    source, frames = finished_queue
    raw = source.read_bytes()
    data = bytearray(raw if cut is None else raw[: cut % (len(raw) + 1)])
    for pos, xor in flips:
        if data:
            data[pos % len(data)] ^= xor
    path = tmp_path / "q.db"
    path.write_bytes(bytes(data))
    (tmp_path / "out.extxyz").unlink(missing_ok=True)
    try:
        n = LabelQueue(path).export(tmp_path / "out.extxyz")
    except GpmlipError:
        return
    exported = read(tmp_path / "out.extxyz", ":") if n else []
    by_positions = {np.round(f.positions, 8).tobytes(): f for f in frames}
    for atoms in exported:
        ref = by_positions.get(np.round(atoms.positions, 8).tobytes())
        assert ref is not None, "an exported structure is not one that was labelled"
        # extended XYZ keeps 8 decimals; a damaged label changes its checksum and is refused
        assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(),
                                                             abs=1e-7)
        np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(), atol=1e-7)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 20-step on-the-fly run directory (EMT Cu, 32 atoms) as bytes per file."""
    from ase import units
    from ase.build import bulk
    from ase.md.verlet import VelocityVerlet

    from gpmlip.active import OnTheFlyLearner

    directory = tmp_path_factory.mktemp("otf") / "run"
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.set_momenta(np.random.default_rng(0).normal(0, 0.6, (len(atoms), 3)))
    learner = OnTheFlyLearner(gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_jobs=1), "emt",
                              directory, std_tolerance=0.01, update_threshold=0.005,
                              trajectory_interval=5, checkpoint_interval=5,
                              force_tolerance=None)
    atoms.calc = learner.calculator
    summary = learner.run(VelocityVerlet(atoms, 5 * units.fs), 20)
    assert summary["labels"] >= 2
    files = {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*")
             if p.is_file()}
    return files, summary


def _resume(directory, steps):
    from ase import units
    from ase.build import bulk
    from ase.md.verlet import VelocityVerlet

    from gpmlip.active import OnTheFlyLearner

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    learner = OnTheFlyLearner(gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_jobs=1), "emt",
                              directory, std_tolerance=0.01, update_threshold=0.005,
                              trajectory_interval=5, checkpoint_interval=5,
                              force_tolerance=None)
    atoms.calc = learner.calculator
    return learner.run(VelocityVerlet(atoms, 5 * units.fs), steps, resume=True)


RUN_EXAMPLES = max(4, EXAMPLES // 4)
"""A resume costs about a second: a quarter of the other readers' examples."""


@settings(max_examples=RUN_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_run_directory_damage_resumes_or_is_one_error(finished_run, tmp_path, data):
    """Damage to a run directory's checkpoint, events, a label record or its trajectory: the
    resume either goes on with every label it had (none learnt twice) or stops with a gpmlip
    error that names the file, never a raw traceback."""
    files, summary = finished_run
    directory = tmp_path / "run"
    for rel, raw in files.items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_bytes(raw)
    names = sorted(str(r) for r in files if str(r).endswith((".json", ".jsonl", ".extxyz"))
                   and not str(r).startswith("summary"))
    target = directory / data.draw(st.sampled_from(names))
    raw = target.read_bytes()
    how = data.draw(st.sampled_from(["truncate", "flip", "empty", "json"]))
    if how == "truncate":
        target.write_bytes(raw[: data.draw(st.integers(0, max(len(raw) - 1, 0)))])
    elif how == "flip" and raw:
        b = bytearray(raw)
        b[data.draw(st.integers(0, len(b) - 1))] ^= data.draw(st.integers(1, 255))
        target.write_bytes(bytes(b))
    elif how == "empty":
        target.write_bytes(b"")
    elif target.suffix == ".json":
        doc = json.loads(raw)
        key = data.draw(st.sampled_from(sorted(doc)))
        doc[key] = data.draw(VALUES)
        target.write_text(json.dumps(doc))
    try:
        out = _resume(directory, summary["steps"] + 5)
    except GpmlipError:
        return
    assert out["steps"] == summary["steps"] + 5
    assert out["labels"] >= summary["labels"] - 0   # nothing on disk was dropped silently
    records = sorted((directory / "labels").glob("*.json"))
    assert out["labels"] == len(records)
