"""Active learning: on-the-fly learning during dynamics (and, later, pools and queues)."""

from gpmlip.active.otf import OnTheFlyLearner
from gpmlip.active.rundir import RunDirectory
from gpmlip.active.settings import OTFSettings

__all__ = ["OnTheFlyLearner", "OTFSettings", "RunDirectory"]
