"""Active learning: on the fly during dynamics, batches from a pool, gated production MD."""

from gpmlip.active.gate import UncertaintyGate
from gpmlip.active.otf import OnTheFlyLearner
from gpmlip.active.pool import BatchSelection, select_batch
from gpmlip.active.rundir import RunDirectory
from gpmlip.active.settings import OTFSettings

__all__ = ["BatchSelection", "OnTheFlyLearner", "OTFSettings", "RunDirectory",
           "UncertaintyGate", "select_batch"]
