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
