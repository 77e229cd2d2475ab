"""Save and restore the state of an ASE dynamics object as JSON-serialisable data.

What is saved: positions, momenta, cell, the step counter, the random-number generator of
stochastic thermostats (Langevin, Andersen, Bussi: ``dyn.rng``) and, for the integrators that keep
extra variables (ASE's NPT, Nose-Hoover chains), those variables when ASE exposes them as
attributes.  With a restored generator a resumed Langevin run continues the same random sequence.
"""

from __future__ import annotations

import logging

import numpy as np
from ase.optimize.optimize import Dynamics

log = logging.getLogger(__name__)

EXTRA_ATTRIBUTES = ("eta", "zeta", "zeta_integrated", "q_past", "q_future", "h_past",
                    "_eta", "_p_eta", "_xi", "_p_xi")
"""Integrator variables saved when a dynamics object has them (NPT, Nose-Hoover chains)."""


def _atoms(dyn: Dynamics):
    atoms = getattr(dyn, "atoms", None)
    return getattr(atoms, "atoms", atoms)    # a Filter wraps the real Atoms


def _rng_state(rng) -> dict | None:
    if rng is None:
        return None
    if rng is np.random:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        return {"kind": "global", "state": [kind, keys.tolist(), pos, has_gauss, cached]}
    if isinstance(rng, np.random.RandomState):
        kind, keys, pos, has_gauss, cached = rng.get_state()
        return {"kind": "RandomState", "state": [kind, keys.tolist(), pos, has_gauss, cached]}
    if isinstance(rng, np.random.Generator):
        return {"kind": "Generator", "state": rng.bit_generator.state}
    log.warning("cannot save the state of random generator %r: a resumed run will draw "
                "different thermostat noise", type(rng).__name__)
    return None


def _set_rng_state(rng, saved: dict | None) -> None:
    if saved is None:
        return
    kind = saved["kind"]
    if kind in ("global", "RandomState"):
        k, keys, pos, has_gauss, cached = saved["state"]
        state = (k, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)
        (np.random if kind == "global" else rng).set_state(state)
    elif kind == "Generator" and isinstance(rng, np.random.Generator):
        rng.bit_generator.state = saved["state"]


def capture(dyn: Dynamics) -> dict:
    """The dynamics' state now, as plain JSON-serialisable data."""
    atoms = _atoms(dyn)
    state = {
        "nsteps": int(getattr(dyn, "nsteps", 0)),
        "positions": atoms.positions.tolist(),
        "momenta": atoms.get_momenta().tolist(),
        "cell": atoms.cell.array.tolist(),
        "rng": _rng_state(getattr(dyn, "rng", None)),
        "extra": {},
    }
    for name in EXTRA_ATTRIBUTES:
        value = getattr(dyn, name, None)
        if isinstance(value, (int, float, np.floating, np.ndarray)):
            state["extra"][name] = np.asarray(value, dtype=float).tolist()
    return state


def restore(dyn: Dynamics, state: dict) -> None:
    """Put a state from :func:`capture` back into ``dyn`` (same kind of dynamics and atoms)."""
    atoms = _atoms(dyn)
    positions = np.asarray(state["positions"], dtype=float)
    if positions.shape != atoms.positions.shape:
        from gpmlip.errors import RunDirectoryError

        raise RunDirectoryError(f"the saved state has {len(positions)} atoms but the dynamics "
                                f"has {len(atoms)}: resume with the same structure")
    atoms.set_cell(np.asarray(state["cell"], dtype=float), scale_atoms=False)
    atoms.positions = positions
    atoms.set_momenta(np.asarray(state["momenta"], dtype=float))
    dyn.nsteps = int(state["nsteps"])
    _set_rng_state(getattr(dyn, "rng", None), state.get("rng"))
    for name, value in state.get("extra", {}).items():
        current = getattr(dyn, name, None)
        if isinstance(current, np.ndarray):
            setattr(dyn, name, np.asarray(value, dtype=float).reshape(current.shape))
        elif current is not None:
            setattr(dyn, name, float(value))
