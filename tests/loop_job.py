"""A run of the active-learning loop as a subprocess (the kill/resume test runs it twice)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpmlip  # noqa: E402
from gpmlip.active.loop import run_loop  # noqa: E402
from gpmlip.labelling.labellers import Labeller  # noqa: E402
from gpmlip.labelling import LabelQueue  # noqa: E402

from conftest import SMALL_CU  # noqa: E402
from queue_helpers import cu_structures, recording  # noqa: E402


def main(directory: str, delay: float, baseline: str | None = None) -> None:
    directory = Path(directory)
    (directory / "calls").mkdir(parents=True, exist_ok=True)
    labeller = Labeller("recording", recording, {"record_dir": str(directory / "calls"),
                                                 "delay": delay})
    queue = LabelQueue(directory / "queue.db", labeller, species=["Cu"])
    pool = cu_structures(24, repeat=2, seed=3, rattle=0.12)
    model = gpmlip.SparseGP(gpmlip.SOAP(**SMALL_CU), n_sparse=6, e0={"Cu": 0.0},
                            baseline=None if baseline is None else json.loads(baseline))
    out = run_loop(model, directory / "loop", queue, pool=pool, batch=3, max_labels=9,
                   target_std=1e-9, max_workers=1, lease_seconds=2.0)
    print("RESULT", out["labels"], out["rounds"], out["stopped_by"])


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), *sys.argv[3:4])
