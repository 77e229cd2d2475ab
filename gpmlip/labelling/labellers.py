"""Labellers: reference calculators (EMT, LJ, xTB, DFT) built fresh for every structure.

A labeller is a *factory*: a named recipe that builds a new ASE calculator for each call, so no
state leaks from one structure to the next and a recipe can be written into a config file and a
provenance record.  :func:`run_labeller` runs one, optionally in a child process with a time
limit, and turns every way it can fail (an exception, a crash, a hang, non-finite numbers) into
a :class:`LabelResult` with ``ok=False`` and the error text: a failed label is data, not a crash.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError

from gpmlip.errors import SettingsError
from gpmlip.parallel import die_with_parent, mp_context

log = logging.getLogger(__name__)


def _emt(**kwargs) -> Calculator:
    from ase.calculators.emt import EMT

    return EMT(**kwargs)


def _lj(**kwargs) -> Calculator:
    from ase.calculators.lj import LennardJones

    return LennardJones(**kwargs)


def _tblite(method: str = "GFN2-xTB", **kwargs) -> Calculator:
    try:
        from tblite.ase import TBLite
    except ImportError as err:
        raise SettingsError("the 'tblite' labeller needs the tblite package: "
                            "pip install 'gpmlip[tblite]'") from err
    return TBLite(method=method, verbosity=0, **kwargs)


def _gpaw(ecut: float = 300.0, kpts=(2, 2, 2), xc: str = "PBE", **kwargs) -> Calculator:
    try:
        from gpaw import GPAW, PW
    except ImportError as err:
        raise SettingsError("the 'gpaw' labeller needs GPAW and its PAW setups: apt-get install "
                            "libxc-dev libopenblas-dev libopenmpi-dev, then pip install -e "
                            "'.[gpaw]' (docs/guide/uncertainty.md, 'Labellers')") from err
    kwargs.setdefault("txt", None)
    return GPAW(mode=PW(ecut), kpts=kpts, xc=xc, **kwargs)


BUILTIN = {"emt": _emt, "lj": _lj, "tblite": _tblite, "gpaw": _gpaw}
"""Labellers known by name; their keyword arguments go to the calculator (see each factory)."""


@dataclass(frozen=True)
class Labeller:
    """A named recipe for a fresh ASE calculator.

    Parameters
    ----------
    name : str
        What provenance records call it (``"emt"``, ``"gpaw"``, or a user's name).
    factory : callable
        ``factory(**settings)`` returns a new ASE calculator.
    settings : dict
        JSON-serialisable keyword arguments of ``factory``.
    timeout : float, optional
        Seconds one structure may take; the call then runs in a child process that is killed
        when the time is up (None: run in this process, no limit).
    """

    name: str
    factory: Callable[..., Calculator]
    settings: dict = field(default_factory=dict)
    timeout: float | None = None

    def build(self) -> Calculator:
        """A new calculator."""
        return self.factory(**self.settings)

    def describe(self) -> dict:
        """Name and settings, for provenance records."""
        return {"name": self.name, "settings": self.settings, "timeout": self.timeout}


def get_labeller(spec, *, timeout: float | None = None) -> Labeller:
    """Turn a name, a config mapping, a callable or a :class:`Labeller` into a :class:`Labeller`.

    Parameters
    ----------
    spec : str, dict, callable or Labeller
        ``"emt"``; ``{"name": "gpaw", "ecut": 300, "kpts": [3, 3, 3]}``; a function with no
        required arguments that returns an ASE calculator; or a ready :class:`Labeller`.
    timeout : float, optional
        Overrides the labeller's own time limit.
    """
    if isinstance(spec, Labeller):
        lab = spec
    elif isinstance(spec, str) or isinstance(spec, dict):
        settings = {"name": spec} if isinstance(spec, str) else dict(spec)
        name = str(settings.pop("name", "")).lower()
        if name not in BUILTIN:
            raise SettingsError(f"unknown labeller {name!r}: use one of {sorted(BUILTIN)} or pass "
                                "a function that returns an ASE calculator")
        lab = Labeller(name, BUILTIN[name], settings)
    elif callable(spec):
        lab = Labeller(getattr(spec, "__name__", type(spec).__name__), spec, {})
    else:
        raise SettingsError(f"labeller {spec!r}: give a name ({sorted(BUILTIN)}), a dict with "
                            "'name', or a function that returns an ASE calculator")
    if timeout is not None:
        lab = Labeller(lab.name, lab.factory, lab.settings, timeout)
    if lab.timeout is not None and not lab.timeout > 0:
        raise SettingsError(f"labeller timeout={lab.timeout}: use a positive number of seconds")
    return lab


@dataclass
class LabelResult:
    """The outcome of one labeller call.

    Attributes
    ----------
    ok : bool
    energy : float or None
        eV.
    forces : ndarray, shape (n_atoms, 3), or None
        eV/Å.
    stress : ndarray, shape (6,), or None
        ASE's Voigt order and sign, eV/Å³ (periodic structures whose calculator has it).
    error : str
        Why it failed (empty when ``ok``).
    seconds : float
        Wall time of the call.
    """

    ok: bool
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    error: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """JSON-serialisable form (exact floats)."""
        return {"ok": self.ok, "error": self.error, "seconds": self.seconds,
                "energy": self.energy,
                "forces": None if self.forces is None else self.forces.tolist(),
                "stress": None if self.stress is None else self.stress.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> LabelResult:
        """Inverse of :meth:`to_dict`."""
        arr = (lambda v: None if v is None else np.asarray(v, dtype=float))
        return cls(bool(d["ok"]), d.get("energy"), arr(d.get("forces")), arr(d.get("stress")),
                   str(d.get("error", "")), float(d.get("seconds", 0.0)))


def _compute(labeller: Labeller, atoms: Atoms) -> dict:
    """Run the calculator; return plain lists (what crosses a process boundary)."""
    atoms = atoms.copy()
    atoms.calc = labeller.build()
    out = {"energy": float(atoms.get_potential_energy()),
           "forces": atoms.get_forces().tolist(), "stress": None}
    if atoms.pbc.all():
        try:
            out["stress"] = atoms.get_stress(voigt=True).tolist()
        except PropertyNotImplementedError:
            pass
    return out


def _validate(out: dict, n_atoms: int) -> str:
    forces = np.asarray(out["forces"], dtype=float)
    if forces.shape != (n_atoms, 3):
        return f"labeller returned forces of shape {forces.shape}, expected ({n_atoms}, 3)"
    for name in ("energy", "forces", "stress"):
        if out[name] is not None and not np.all(np.isfinite(out[name])):
            return f"labeller returned non-finite {name}"
    return ""


def _child(labeller: Labeller, atoms: Atoms, conn) -> None:
    from threadpoolctl import threadpool_limits

    die_with_parent()        # a killed worker or coordinator takes its labeller child along

    try:
        # One OpenMP/BLAS thread: libgomp's thread pool does not survive fork (tblite hung
        # here after running once in the parent), and on a busy node one thread is faster.
        with threadpool_limits(1):
            payload = {"out": _compute(labeller, atoms)}
    except BaseException as err:   # noqa: BLE001 - everything is reported to the parent
        payload = {"error": f"{type(err).__name__}: {err}",
                   "traceback": traceback.format_exc()}
    conn.send_bytes(json.dumps(payload).encode())
    conn.close()


def _in_child(labeller: Labeller, atoms: Atoms) -> dict:
    ctx = mp_context("compute")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(labeller, atoms, send), daemon=True)
    proc.start()
    send.close()
    try:
        if not recv.poll(labeller.timeout):
            return {"error": f"timed out after {labeller.timeout:g} s (the labeller process was "
                             "killed; raise the timeout if the calculation is just slow)"}
        try:
            return json.loads(recv.recv_bytes().decode())
        except EOFError:
            proc.join(5)
            return {"error": f"the labeller process died (exit code {proc.exitcode}) before "
                             "returning a result"}
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        recv.close()


def run_labeller(labeller: Labeller, atoms: Atoms) -> LabelResult:
    """Label one structure, never raising for a failure of the calculator.

    Parameters
    ----------
    labeller : Labeller
    atoms : ase.Atoms
        Not modified.

    Returns
    -------
    LabelResult
        ``ok=False`` with the error text if the calculator raised, crashed, timed out, or
        returned non-finite or wrongly shaped numbers.
    """
    start = time.perf_counter()
    if labeller.timeout is None:
        try:
            payload = {"out": _compute(labeller, atoms)}
        except Exception as err:   # noqa: BLE001 - a failed label is data
            payload = {"error": f"{type(err).__name__}: {err}",
                       "traceback": traceback.format_exc()}
    else:
        payload = _in_child(labeller, atoms)
    seconds = time.perf_counter() - start
    if "error" in payload:
        log.warning("labeller %s failed: %s", labeller.name, payload["error"])
        log.debug("%s", payload.get("traceback", ""))
        return LabelResult(False, error=payload["error"], seconds=seconds)
    out = payload["out"]
    error = _validate(out, len(atoms))
    if error:
        log.warning("labeller %s failed: %s", labeller.name, error)
        return LabelResult(False, error=error, seconds=seconds)
    stress = None if out["stress"] is None else np.asarray(out["stress"], dtype=float)
    return LabelResult(True, out["energy"], np.asarray(out["forces"], dtype=float), stress,
                       seconds=seconds)


def provenance() -> dict:
    """Host and process facts recorded with every label."""
    import platform

    import ase

    return {"host": platform.node(), "pid": os.getpid(), "ase": ase.__version__}
