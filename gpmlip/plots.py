"""Plots a user reads to judge a model (matplotlib, an optional extra: ``gpmlip[plots]``).

- :func:`parity_plots`: predicted against reference energies and forces, force-error
  distributions by config_type, and calibration (predicted force std against actual error).
- :func:`otf_curve`: an on-the-fly run's labels, sparse-set size and uncertainty against MD step.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gpmlip.errors import GpmlipError


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise GpmlipError("plots need matplotlib: pip install 'gpmlip[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _parity(ax, ref, pred, label, unit):
    lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=1, zorder=0)
    ax.scatter(ref, pred, s=6, alpha=0.5, edgecolors="none")
    rmse = np.sqrt(np.mean((pred - ref) ** 2))
    ax.set_xlabel(f"reference {label} ({unit})")
    ax.set_ylabel(f"predicted {label} ({unit})")
    ax.set_title(f"{label}: RMSE {rmse:.3g} {unit}")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")


def parity_plots(records: list[dict], prefix) -> list[Path]:
    """Write ``PREFIX_parity.png``, ``PREFIX_errors.png`` and ``PREFIX_calibration.png``.

    Parameters
    ----------
    records : list of dict
        From :func:`gpmlip.evaluate.predictions`.
    prefix : str or Path

    Returns
    -------
    list of Path
        The files written.
    """
    plt = _pyplot()
    prefix = str(prefix)
    written = []
    e = [(r["energy"] / r["n_atoms"], r["energy_pred"] / r["n_atoms"]) for r in records
         if r["energy"] is not None]
    f = [(r["forces"].ravel(), r["forces_pred"].ravel()) for r in records
         if r["forces"] is not None]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
    if e:
        ref, pred = np.array(e).T
        _parity(axes[0], ref, pred, "energy", "eV/atom")
    else:
        axes[0].text(0.5, 0.5, "no energies", ha="center")
    if f:
        _parity(axes[1], np.concatenate([a for a, _ in f]), np.concatenate([b for _, b in f]),
                "force component", "eV/Å")
    else:
        axes[1].text(0.5, 0.5, "no forces", ha="center")
    fig.tight_layout()
    written.append(Path(f"{prefix}_parity.png"))
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    groups: dict[str, list[np.ndarray]] = {}
    for r in records:
        if r["forces"] is not None:
            groups.setdefault(r["config_type"], []).append(
                1000 * np.abs(r["forces_pred"] - r["forces"]).ravel())
    if groups:
        fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(groups) + 2), 4.5))
        names = sorted(groups)
        ax.boxplot([np.concatenate(groups[n]) for n in names], showfliers=False)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
        ax.set_ylabel("|force error| (meV/Å)")
        ax.set_title("force errors by config_type")
        ax.text(0.99, 0.98, "boxes: quartiles, line: median\nwhiskers: 1.5 IQR", ha="right",
                va="top", fontsize=8, transform=ax.transAxes)
        fig.tight_layout()
        written.append(Path(f"{prefix}_errors.png"))
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

    std = [r["force_std"].ravel() for r in records
           if r["forces"] is not None and r.get("force_std") is not None]
    if std:
        s = 1000 * np.concatenate(std)
        err = 1000 * np.concatenate([np.abs(r["forces_pred"] - r["forces"]).ravel()
                                     for r in records if r["forces"] is not None])
        edges = np.quantile(s, np.linspace(0, 1, 11))
        idx = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, 9)
        centre = [s[idx == k].mean() for k in range(10) if np.any(idx == k)]
        rmse = [np.sqrt(np.mean(err[idx == k] ** 2)) for k in range(10) if np.any(idx == k)]
        fig, ax = plt.subplots(figsize=(5.5, 5))
        floor = 1e-3
        ax.scatter(s, np.maximum(err, floor), s=4, alpha=0.25, edgecolors="none",
                   label="force components")
        ax.plot(centre, rmse, "o-", color="C3", label="RMSE per std decile")
        positive = err[err > 0]
        lo = max(min(s.min(), np.quantile(positive, 0.01) if len(positive) else s.min()), floor)
        top = float(max(s.max(), err.max()))
        ax.plot([lo, top], [lo, top], color="0.5", lw=1, label="error = std")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("predicted force std (meV/Å)")
        ax.set_ylabel("|force error| (meV/Å)")
        ax.set_title(f"calibration: {100 * np.mean(err > 2 * s):.0f}% of errors > 2 std")
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        written.append(Path(f"{prefix}_calibration.png"))
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written


def _std_trigger_panel(ax, frames, events, tolerance) -> None:
    """The normalised std along the trajectory and at the labels, against ``std_tolerance``."""
    if frames:
        ax.semilogy([f.info.get("step", np.nan) for f in frames],
                    [float(np.max(f.arrays["local_std"])) if "local_std" in f.arrays else np.nan
                     for f in frames], color="0.4", lw=1, label="trajectory")
    ax.semilogy([e["step"] for e in events], [max(e.get("max_std", np.nan), 1e-6) for e in events],
                "o", color="C2", label="at a label")
    if tolerance:
        ax.axhline(tolerance, color="C3", lw=1, ls="--", label="std_tolerance")
    ax.set_ylabel("max normalised std")
    ax.legend(fontsize=8)


def _force_trigger_panel(ax, frames, events) -> None:
    """The trigger that decided a force-triggered run: the largest force std (along the
    trajectory where it was computed, and at the labels) against the force threshold."""
    checked = [f for f in frames if "force_std" in f.arrays]
    if checked:
        ax.semilogy([f.info.get("step", np.nan) for f in checked],
                    [1000 * float(np.max(f.arrays["force_std"])) for f in checked], ".",
                    color="0.4", ms=3, label="trajectory (where checked)")
    at = [e for e in events if "max_predicted_force_std" in e]
    ax.semilogy([e["step"] for e in at], [1000 * e["max_predicted_force_std"] for e in at], "o",
                color="C2", label="at a label")
    limits = [e for e in events if "force_threshold" in e]
    if limits:
        ax.step([e["step"] for e in limits], [1000 * e["force_threshold"] for e in limits],
                where="post", color="C3", lw=1, ls="--", label="force threshold")
    ax.set_ylabel("max force std (meV/Å)")
    ax.legend(fontsize=8)


def otf_curve(run_directory, path=None) -> Path:
    """Labels, sparse-set size and the uncertainty that triggered each label, against MD step.

    Reads ``events.jsonl`` of an on-the-fly run directory; writes ``otf_curve.png`` there
    unless ``path`` is given.
    """
    plt = _pyplot()
    run_directory = Path(run_directory)
    events = [json.loads(line) for line in (run_directory / "events.jsonl").read_text()
              .splitlines() if line.strip()]
    if not events:
        raise GpmlipError(f"{run_directory} has no labels yet: nothing to plot")
    ok = [e for e in events if e.get("ok", True)]
    steps = [e["step"] for e in ok]
    last = steps[-1]
    summary, tolerance = run_directory / "summary.json", None
    if summary.exists():
        info = json.loads(summary.read_text())
        last = max(last, int(info.get("steps", last)))
        tolerance = info.get("settings", {}).get("std_tolerance")
    fig, axes = plt.subplots(4, 1, figsize=(7, 9.5), sharex=True)
    axes[0].step(steps + [last], list(np.arange(1, len(ok) + 1)) + [len(ok)], where="post")
    axes[0].set_ylabel("labeller calls")
    axes[0].set_title(f"on-the-fly learning: {len(ok)} labels, "
                      f"{ok[-1].get('sparse_points', '?')} sparse points")
    sparse = [e.get("sparse_points", np.nan) for e in ok]
    axes[1].step(steps + [last], sparse + [sparse[-1]], where="post", color="C1")
    axes[1].set_ylabel("sparse points")
    traj = run_directory / "trajectory.extxyz"
    frames = []
    if traj.exists():
        import ase.io
        frames = ase.io.read(traj, ":")
    if any(e.get("trigger") == "force" for e in ok):
        _force_trigger_panel(axes[2], frames, ok)
    else:
        _std_trigger_panel(axes[2], frames, ok, tolerance)
    before = [e for e in ok if "force_rmse" in e]
    if before:
        axes[3].plot([e["step"] for e in before], [1000 * e["force_rmse"] for e in before],
                     "s", color="C3", label="actual force RMSE")
        axes[3].plot([e["step"] for e in before],
                     [1000 * e["predicted_force_std"] for e in before], "^", color="C0",
                     label="predicted force std")
        axes[3].legend(fontsize=8)
    axes[3].set_ylabel("model before label (meV/Å)")
    axes[3].set_xlabel("MD step")
    fig.tight_layout()
    path = Path(path) if path else run_directory / "otf_curve.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
