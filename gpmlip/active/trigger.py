"""When the on-the-fly learner labels a frame, and the calibration it keeps on the way.

:class:`Trigger` decides, step by step, from the frame's normalised local-energy std and (with
``force_tolerance``) its calibrated force std, and says why (the ``reason`` of every label
record).  It also keeps the honest residuals of the run (each label's force error before the
model learnt it, with the raw variance parts the model predicted) and refits the model's
calibration from them after every label (see :mod:`gpmlip.active.settings`).
"""

from __future__ import annotations

import logging
from collections import deque

import numpy as np

from gpmlip.active.settings import OTFSettings
from gpmlip.gp.calibration import fit_calibration
from gpmlip.gp.model import SparseGP

log = logging.getLogger(__name__)


class Trigger:
    """The labelling decision of an on-the-fly run (see the module docstring)."""

    def __init__(self, settings: OTFSettings) -> None:
        self.settings = settings
        self.window: deque = deque(maxlen=settings.adaptive_window)
        self.history: deque = deque(maxlen=settings.calibration_labels)
        self.ratios: list[float] = []       # max force std / max normalised std, per check
        self.last: dict | None = None       # force std of the last checked frame
        self.last_check = -10 ** 9          # step of the last force check

    def threshold(self) -> float:
        """The force threshold now (eV/Å): fixed, or the adaptive one."""
        s = self.settings
        if not s.adaptive_tolerance or not self.window:
            return s.force_tolerance
        return max(s.force_tolerance, s.adaptive_factor * float(np.mean(self.window)))

    def check(self, model: SparseGP, atoms, std: np.ndarray, cooling: bool,
              step: int = 0) -> dict | None:
        """The reason to label this frame (a dict), or None.

        ``cooling``: the frame is within ``min_steps_between_labels`` of the last label (it is
        not labelled, but the adaptive level is still updated).  The force std is computed
        at most every ``force_check_interval`` steps.
        """
        s = self.settings
        self.last = None
        u = float(std.max())
        if s.force_tolerance is None:
            if cooling or u <= s.std_tolerance:
                return None
            return {"trigger": "std", "max_std": u, "std_tolerance": s.std_tolerance,
                    "text": f"max normalised std {u:.4g} > std_tolerance {s.std_tolerance}"}
        if not s.adaptive_tolerance and (cooling or u <= s.std_tolerance):
            return None
        if step - self.last_check < s.force_check_interval:
            return None
        self.last_check = step
        fu = model.force_uncertainty(atoms)
        fstd, parts, calibrated = fu.std, fu.parts, fu.calibrated
        f = float(fstd.max())
        self.last = {"force_std": fstd, "parts": parts}
        if u > 0:
            self.ratios.append(f / u)
        limit = self.threshold()
        if s.adaptive_tolerance:
            self.window.append(f)
        if cooling or u <= s.std_tolerance or f <= limit:
            return None
        kind = "calibrated" if calibrated else "raw (no calibration yet)"
        return {"trigger": "force", "max_force_std": f, "threshold": limit,
                "calibrated": calibrated, "max_std": u,
                "text": f"max {kind} force std {1000 * f:.1f} meV/Å > "
                        f"{'adaptive ' if s.adaptive_tolerance else ''}threshold "
                        f"{1000 * limit:.1f} meV/Å (max normalised std {u:.4g})"}

    def learnt(self, model: SparseGP, record: dict) -> None:
        """After a label was learnt: keep its residuals, refit the calibration, reset the
        adaptive level (it was measured with the old model)."""
        self.window.clear()
        self.last_check = -10 ** 9
        res = record.get("residuals")
        if res:
            self.history.append((np.asarray(res["force_error"]), np.asarray(res["parts"])))
        self.calibrate(model)

    def calibrate(self, model: SparseGP) -> None:
        """Fit the model's calibration on the kept residuals (nothing before there are any)."""
        if not self.history or not model.is_fitted:
            return
        err = np.concatenate([e for e, _ in self.history])
        parts = np.concatenate([p for _, p in self.history])
        model.calibration_ = fit_calibration(err, parts, source="on-the-fly")
        log.info("calibration: %s", model.calibration_.describe())

    def equivalents(self) -> dict:
        """What each threshold meant in the other unit, from the frames checked so far."""
        s = self.settings
        if not self.ratios:
            return {}
        ratio = float(np.median(self.ratios))
        out = {"median_force_std_per_normalised_std_eV_A": ratio,
               "std_tolerance_as_force_std_eV_A": s.std_tolerance * ratio}
        if s.force_tolerance is not None:
            out["force_tolerance_as_normalised_std"] = s.force_tolerance / ratio
        return out
