"""Settings of on-the-fly learning, and what its thresholds mean.

The trigger in eV/Å (default)
-----------------------------
With ``force_tolerance`` set (the default, 0.08 eV/Å) a frame is labelled when its largest
*calibrated* predicted force std (over atoms and Cartesian components, eV/Å, the unit of
VASP's on-the-fly ML_CTIFOR) exceeds it.  The calibration is refitted after every label by
maximum likelihood on the honest residuals of the run: the force error of the model on each
new label *before* it learnt it, against the std it predicted (the last ``calibration_labels``
labels; :mod:`gpmlip.gp.calibration`).  Before the first calibration exists (empty model: the
first frame is always labelled; then until a second label gives residuals) the raw std is
used, which overestimates the error, so the first labels come early.  ``std_tolerance`` is then
a cheap pre-screen: a frame whose largest normalised std is at most ``std_tolerance`` is known
in every environment and is not labelled, and its force std is not computed (it needs the
descriptor Jacobian, ~7x the cost of a step's prediction).  With ``adaptive_tolerance`` the
threshold follows the running level of recent maxima (VASP resets ML_CTIFOR to the mean of
recent Bayesian errors): ``max(force_tolerance, adaptive_factor * mean of the frame maxima of
the last adaptive_window steps with the current model)``, and the force std is computed at
every step.  A trigger on forces lets go on multi-species systems of one composition, where
the local-energy std cannot fall along the undetermined split of energy between species
(docs/theory.md §6); ``force_tolerance = None`` restores the trigger on ``std_tolerance``.

Choosing the thresholds
-----------------------
Both thresholds are on the **normalised local-energy standard deviation**

    u_i = sqrt(var(E_i)) / sigma_z,      0 <= u_i <= 1,

of each atom ``i``, where ``var(E_i)`` is the GP's predictive variance of that atom's local
energy and ``sigma_z`` is the signal standard deviation of its species
(``sqrt(model.signal_variances[z])``, in eV).  ``u = 1`` means "nothing in the training set looks like this environment"; ``u = 0``
means "this environment is a sparse point and is pinned by data".  The number is dimensionless
and does not change when the hyper-parameters rescale the energy, which is why it is the one
thresholded (FLARE's users meet the same two quantities as a sign convention on one number).

* ``std_tolerance``: a frame is sent to the labeller when ``max_i u_i > std_tolerance``.
  In eV this is a local-energy std of ``std_tolerance * sigma_z`` (logged at the start of a run
  and at every label).  In eV/Å there is no fixed conversion: each label records the predicted
  force std and the actual force error of the model before it saw the label, and the run summary
  reports their medians, so you can read off what your tolerance meant for your system.
  The SOAP dot-product kernel is flat: thermal distortions of a crystal are a normalised
  distance of only 0.01-0.1 from the perfect one, and the smooth cutoff (the default descriptor)
  damps the outer shells, so useful values are small: 0.002 (careful, more labels) to 0.01
  (cheap, rougher).  On the main job (workflows/otf_demo.py: 108 Cu, EMT, 800 K, 1000 steps,
  SOAP 4.5/4/3 with the smooth cutoff) 0.01, 0.005 and 0.003 gave 3, 4 and 5 labels and force
  RMSE 23, 18 and 14 meV/Å on fresh frames; the default is 0.003.
* ``update_threshold``: of a labelled frame, the atoms with ``u_i > update_threshold`` are
  candidates for new sparse points; at most ``max_atoms_added`` per species are added, chosen
  greedily so that each one is the candidate least explained by the sparse set *including the
  ones just added* (near-duplicates are not added twice, and the greedy pass stops when no
  candidate is left above the threshold).  A DFT call is expensive and its frame holds many
  environments, so take a lot from each: about a tenth of ``std_tolerance``.  On the EMT Cu
  benchmark (6 labels in each run) ``update_threshold`` / ``max_atoms_added`` of 0.005 / 10,
  0.002 / 30, 0.001 / 60 and 0.0005 / 100 gave 15, 29, 38 and 47 sparse points and held-out
  force RMSE 67, 36, 22 and 24 meV/Å; prediction cost grows only slowly with the sparse set
  (the descriptor dominates).  It must not exceed
  ``std_tolerance``, or a labelled frame could add no sparse point.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import asdict, dataclass, fields

from gpmlip.errors import SettingsError

log = logging.getLogger(__name__)

FAILURE_POLICIES = ("retry", "skip", "stop")


_TYPES = {"float": (numbers.Real,), "float | None": (numbers.Real, type(None)),
          "bool": (bool,), "int": (numbers.Integral,), "int | None": (numbers.Integral, type(None)),
          "str": (str,)}
"""Allowed value types of each :class:`OTFSettings` annotation (an int where a float goes)."""


@dataclass
class OTFSettings:
    """What an :class:`~gpmlip.active.OnTheFlyLearner` does (see the module docstring).

    Parameters
    ----------
    std_tolerance : float, default 0.003
        Label a frame when its largest normalised local-energy std exceeds this (and, with
        ``force_tolerance``, its force std too; below it no force std is computed).
    force_tolerance : float or None, default 0.08
        eV/Å: label a frame when its largest calibrated force std exceeds this (None: trigger
        on ``std_tolerance`` alone).
    adaptive_tolerance : bool, default False
        Follow the running level of recent maxima (``force_tolerance`` is then the floor).
    adaptive_window, adaptive_factor : int, float, default 20, 1.3
        Steps of the running level, and how far above it a frame must be.
    force_check_interval : int, default 5
        Compute the force std (and so check the force trigger) at most every this many steps
        (it costs ~7x a step's prediction; 1 checks every step).
    calibration_labels : int, default 10
        The calibration is fitted on the residuals of this many most recent labels.
    update_threshold : float, default 0.001
        Atoms above this normalised std may become sparse points.
    max_atoms_added : int, default 50
        Sparse points added per species per label.
    optimise_every : int, default 5
        Re-optimise hyper-parameters after every this many successful labels (0: never).
    optimise_until : int, default 30
        ... but not after this many successful labels (the cost grows with the data).
    max_labels : int, optional
        Labeller budget; when spent the run goes on without labelling (with a warning).
    timeout : float, optional
        Seconds a labeller call may take (it then runs in a child process that is killed).
    on_failure : {"retry", "skip", "stop"}, default "retry"
        A failed label (exception, crash, timeout, NaN) is retried ``max_retries`` times, then
        skipped; "skip" skips at once; "stop" stops the run (the failure is on disk).
    max_retries : int, default 2
    min_steps_between_labels : int, default 5
        After a label, MD steps on the updated model before the next label (FLARE's
        ``min_steps_with_model``): consecutive frames are near-duplicates, and one label usually
        settles the next few steps' uncertainty.  0 labels whenever the tolerance is passed.
    cooldown_steps : int, default 10
        After a skipped frame, steps before the labeller is called again.
    trajectory_interval : int, default 10
        Write an MD frame every this many steps (labelled frames are always written).
    checkpoint_interval : int, default 100
        Save the MD state every this many steps (it is always saved after a label).
    """

    std_tolerance: float = 0.003
    force_tolerance: float | None = 0.08
    adaptive_tolerance: bool = False
    adaptive_window: int = 20
    adaptive_factor: float = 1.3
    force_check_interval: int = 5
    calibration_labels: int = 10
    update_threshold: float = 0.001
    max_atoms_added: int = 50
    optimise_every: int = 5
    optimise_until: int = 30
    max_labels: int | None = None
    timeout: float | None = None
    on_failure: str = "retry"
    max_retries: int = 2
    min_steps_between_labels: int = 5
    cooldown_steps: int = 10
    trajectory_interval: int = 10
    checkpoint_interval: int = 100

    def __post_init__(self) -> None:
        for f in fields(self):
            allowed = _TYPES[str(f.type)]
            value = getattr(self, f.name)
            if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
                names = " or ".join({"Real": "a number", "Integral": "an integer", "NoneType": "None",
                                     "bool": "true or false", "str": "a string"}[t.__name__]
                                    for t in allowed)
                raise SettingsError(f"{f.name}={value!r}: give {names}")
        if not 0 < self.std_tolerance <= 1:
            raise SettingsError(f"std_tolerance={self.std_tolerance}: it is a normalised std, "
                                "use a number in (0, 1], typically 0.005-0.03")
        if not 0 < self.update_threshold <= self.std_tolerance:
            raise SettingsError(f"update_threshold={self.update_threshold}: use a number in "
                                f"(0, std_tolerance={self.std_tolerance}], about a tenth of it")
        if self.force_tolerance is not None and not 0 < self.force_tolerance < 10:
            raise SettingsError(f"force_tolerance={self.force_tolerance}: a force std in eV/Å, "
                                "e.g. 0.02-0.1, or None to trigger on std_tolerance alone")
        if self.adaptive_tolerance and self.force_tolerance is None:
            raise SettingsError("adaptive_tolerance follows the force std: set force_tolerance "
                                "(eV/Å, the floor of the adaptive threshold)")
        if not self.adaptive_factor >= 1:
            raise SettingsError(f"adaptive_factor={self.adaptive_factor}: use 1 or more")
        if self.on_failure not in FAILURE_POLICIES:
            raise SettingsError(f"on_failure={self.on_failure!r}: use one of {FAILURE_POLICIES}")
        for name in ("max_atoms_added", "trajectory_interval", "checkpoint_interval",
                     "adaptive_window", "calibration_labels", "force_check_interval"):
            if int(getattr(self, name)) < 1:
                raise SettingsError(f"{name}={getattr(self, name)}: use 1 or more")
        for name in ("optimise_every", "optimise_until", "max_retries", "cooldown_steps",
                     "min_steps_between_labels"):
            if int(getattr(self, name)) < 0:
                raise SettingsError(f"{name}={getattr(self, name)}: use 0 or more")
        if self.max_labels is not None and self.max_labels < 1:
            raise SettingsError(f"max_labels={self.max_labels}: use 1 or more, or None")
        if self.timeout is not None and not self.timeout > 0:
            raise SettingsError(f"timeout={self.timeout}: use a positive number of seconds")

    @classmethod
    def from_dict(cls, values: dict) -> OTFSettings:
        """Build from a mapping, naming any unknown key and the allowed ones."""
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise SettingsError(f"unknown on-the-fly setting(s) {unknown}; allowed: {allowed}")
        return cls(**values)

    def to_dict(self) -> dict:
        """Plain mapping (for checkpoints and summaries)."""
        return asdict(self)


def log_thresholds(settings: OTFSettings, signal_variances: dict[int, float]) -> None:
    """Log what ``std_tolerance`` and ``update_threshold`` mean in meV for every species."""
    for z, var in signal_variances.items():
        sigma = math.sqrt(var)
        log.info("species %d: sigma_z %.4g eV, so std_tolerance %.3g = local-energy std "
                 "%.3g meV and update_threshold %.3g = %.3g meV", z, sigma,
                 settings.std_tolerance, 1000 * settings.std_tolerance * sigma,
                 settings.update_threshold, 1000 * settings.update_threshold * sigma)
    if settings.force_tolerance is not None:
        log.info("trigger: largest calibrated force std > %.3g eV/Å%s (frames with normalised "
                 "std <= %.3g are not labelled); what it is in normalised std is logged at "
                 "every label and in the summary (threshold_equivalents)",
                 settings.force_tolerance, " (floor of the adaptive threshold)"
                 if settings.adaptive_tolerance else "", settings.std_tolerance)
