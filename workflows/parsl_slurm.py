"""Label structures with GPAW on a Slurm cluster through Parsl.  NEEDS A SLURM CLUSTER.

Not run in gpmlip's tests.  Copy this file, edit the CLUSTER block (partition, account,
environment set-up) and run it on a login node (or inside a long, cheap Slurm job), from a
directory on a file system the login node can lock (the queue file never leaves this node;
compute nodes only receive structures and return energies, forces and stresses):

    pip install 'gpmlip[parsl,gpaw]'
    python parsl_slurm.py structures.extxyz queue.db labelled.extxyz

Interrupt it at any time and run it again: finished rows stay finished, rows that were in
flight are taken over once their leases expire, and structures already queued are not added
twice.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import ase.io

from gpmlip.labelling.labellers import get_labeller
from gpmlip.labelling import LabelQueue, label_queue
from gpmlip.labelling.parsl import parsl_executor, slurm_config

# --- CLUSTER: edit these ---------------------------------------------------------------------
CONFIG = slurm_config(
    partition="compute",                 # sinfo -s lists the partitions
    account=None,                        # e.g. "proj123" if your site wants --account
    walltime="02:00:00",                 # per Slurm job; Parsl submits new ones as needed
    nodes_per_block=1,
    max_blocks=4,                        # at most 4 jobs at once
    cores_per_worker=4,                  # one GPAW calculation = 4 OpenMP threads
    worker_init="module load GPAW; source ~/venvs/gpmlip/bin/activate; "
                "export OMP_NUM_THREADS=4",
    # address=parsl.addresses.address_by_interface("ib0"),   # if compute nodes cannot reach
)                                                            # the login node's default address
LABELLER = {"name": "gpaw", "ecut": 400, "kpts": [3, 3, 3], "xc": "PBE"}
TIMEOUT = 3600.0                         # seconds per structure before it counts as failed
# ---------------------------------------------------------------------------------------------


def main(structures_file: str, queue_file: str, out_file: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    structures = ase.io.read(structures_file, ":")
    # the timeout limits each call; it is not part of what makes two labels the same
    queue = LabelQueue(queue_file, get_labeller(LABELLER, timeout=TIMEOUT), max_attempts=2)
    queue.add(structures, source=Path(structures_file).name)
    with parsl_executor(CONFIG) as executor:
        summary = label_queue(queue, executor=executor, batch=32, lease_seconds=900,
                              progress=True)
    logging.info("summary: %s", summary)
    n = queue.export(out_file)
    logging.info("%d labelled structures in %s; failed rows: %s", n, out_file,
                 [(row.id, row.error) for row in queue.rows("failed")])


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
