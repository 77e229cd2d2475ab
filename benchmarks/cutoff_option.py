"""The ``--weighting`` command-line option of the benchmarks: which cutoff gpmlip.SOAP uses."""

from __future__ import annotations

HELP = ("cutoff: smooth (default, gpmlip's: dscribe poly weighting r0=r_cut, m=2, c=1), hard (no "
        "weighting: dscribe's density cut at r_cut + 3.7 sigma) or r0=X,m=Y (poly weighting; X in "
        "Å or rcut+D)")


def parse_weighting(text: str, r_cut: float):
    """``--weighting`` as gpmlip.SOAP takes it: "smooth", None (hard) or a dscribe poly dict.

    ``r0=X,m=Y``: X in Å or ``rcut+D`` (r_cut plus D Å); m defaults to 2, c to 1.
    """
    text = text.strip().lower()
    if text == "smooth":
        return "smooth"
    if text in ("hard", "none"):
        return None
    values = {}
    for item in text.split(","):
        key, sep, value = (x.strip() for x in item.partition("="))
        if not sep or key not in ("r0", "m", "c"):
            raise ValueError(f"--weighting {text!r}: use smooth, hard or r0=X,m=Y")
        values[key] = r_cut + float(value[4:] or 0.0) if value.startswith("rcut") else float(value)
    if "r0" not in values:
        raise ValueError(f"--weighting {text!r}: give r0")
    return {"function": "poly", "r0": values["r0"], "m": values.get("m", 2.0),
            "c": values.get("c", 1.0)}


def weighting_label(weighting) -> str:
    """Short name of a parsed weighting for tables."""
    if isinstance(weighting, str):
        return weighting
    if weighting is None:
        return "hard"
    return f"r0={weighting['r0']:g},m={weighting['m']:g}"
