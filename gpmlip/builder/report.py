"""What the model builder did: one row per screened candidate, and the report a model file keeps."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from gpmlip.builder.settings import Scales, Settings


@dataclass
class Row:
    """One screened candidate."""

    stage: str
    settings: Settings
    frames: int
    sparse: int
    loo_mae: dict | None = None
    criterion: float | None = None
    seconds: float = 0.0
    status: str = "ok"
    model: object = None
    """``(fitted model, its structure rows)``, kept only where asked: the noise stage reuses
    them."""

    def to_dict(self, reference: Settings) -> dict:
        return {"stage": self.stage, "candidate": self.settings.changes(reference),
                "frames": self.frames, "sparse_per_species": self.sparse,
                "loo_mae": self.loo_mae, "criterion": self.criterion,
                "seconds": round(self.seconds, 2), "status": self.status}


@dataclass
class BuildReport:
    """What :func:`build_model` chose and how (stored in the model file as ``build``)."""

    defaults: Settings
    chosen: Settings
    scales: Scales
    budget: float
    rows: list[Row] = field(default_factory=list)
    stages: dict[str, str] = field(default_factory=dict)
    noise: dict | None = None
    seconds: float = 0.0
    tuned: bool = True
    plan: object = None
    """The :class:`~gpmlip.builder.screen.Plan` of the later stages' time, once measured."""

    def to_dict(self) -> dict:
        """JSON-ready report."""
        return {"tuned": self.tuned, "budget_s": self.budget, "seconds": round(self.seconds, 1),
                "defaults": self.defaults.to_dict(), "chosen": self.chosen.to_dict(),
                "chosen_changes": self.chosen.changes(self.defaults),
                "scales": dataclasses.asdict(self.scales), "stages": self.stages,
                "noise": self.noise, "plan": None if self.plan is None else {
                    "fit_seconds": round(self.plan.fit_seconds, 2),
                    "structures_ratio": round(self.plan.structures_ratio, 3),
                    "confirm_s": round(self.plan.confirm, 1), "noise_s": round(self.plan.noise, 1),
                    "final_fit_and_calibration_s": round(self.plan.tail, 1)},
                "screen": [r.to_dict(self.defaults) for r in self.rows]}
