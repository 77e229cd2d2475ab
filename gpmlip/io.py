"""Versioned model files: one ``.npz`` of arrays plus JSON metadata, never pickle.

The JSON is stored inside the archive as the UTF-8 bytes of the array ``metadata.json``; loading
uses ``numpy.load(..., allow_pickle=False)``, so an untrusted file can hold only numbers and text.

This module knows the container (format name and version, package versions, atomic writes,
checked reads) and converts a :class:`~gpmlip.gp.state.FittedState` to and from it; building a
model from a file is :func:`gpmlip.gp.files.load_model` (re-exported as ``gpmlip.load_model``).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from gpmlip.errors import ModelFileError
from gpmlip.gp.state import FittedState
from gpmlip.version import __version__

FORMAT = "gpmlip-sparse-gp"
FORMAT_VERSION = 1
TWO_BODY_FORMAT_VERSION = 2
"""Written only by models with a two-body term (older gpmlip refuses them instead of silently
dropping the term); files without one keep version 1."""
STACKED_FORMAT_VERSION = 3
"""Written only by models on a :class:`gpmlip.Stacked` descriptor (older gpmlip would call such a
file damaged instead of naming the version)."""
READABLE_VERSIONS = (FORMAT_VERSION, TWO_BODY_FORMAT_VERSION, STACKED_FORMAT_VERSION)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"gpmlip": __version__}
    for name in ("dscribe", "numpy", "ase"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def write_model_file(path, state: FittedState, settings: dict) -> None:
    """Write a fitted state and the model's settings to ``path`` (``.npz``), atomically.

    Parameters
    ----------
    path : str or Path
    state : FittedState
    settings : dict
        JSON-ready model settings (descriptor, kernel, ...) stored beside the state's metadata.
    """
    path = Path(path)
    arrays, state_meta = state.to_arrays()
    version = FORMAT_VERSION if state.two_body is None else TWO_BODY_FORMAT_VERSION
    if settings.get("descriptor", {}).get("type") == "Stacked":
        version = STACKED_FORMAT_VERSION
    meta = {"format": FORMAT, "format_version": version, "versions": _versions(),
            **settings, **state_meta}
    arrays = {"metadata.json": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
              **arrays}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def read_metadata(path) -> dict:
    """The JSON metadata of a model file, checked for format and version."""
    return _open(path)[0]


def read_model_file(path) -> tuple[dict, FittedState]:
    """The metadata and the fitted state (posterior not yet solved) of a model file.

    Raises
    ------
    ModelFileError
        When the file is missing, unreadable, of another format or version, or damaged.
    """
    meta, arrays = _open(path)
    # files written before the state object kept the signal variances only in the kernel
    meta.setdefault("signal_variance", meta.get("kernel", {}).get("signal_variance"))
    try:
        return meta, FittedState.from_arrays(arrays, meta)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise model_file_damaged(path, exc) from None


def model_file_damaged(path, exc: BaseException) -> ModelFileError:
    """The error for a model file whose contents do not make a model."""
    return ModelFileError(f"{path} is missing or has malformed model data ({exc!r}); it may "
                          "be damaged: save the model again")


def _open(path):
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"no model file at {path}")
    try:
        data = np.load(path, allow_pickle=False)
        arrays = {k: data[k] for k in data.files}
        meta = json.loads(bytes(arrays.pop("metadata.json")).decode())
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError,
            UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path} is not a readable gpmlip model file ({exc}); it may be "
                             "damaged or truncated: save the model again") from None
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a gpmlip sparse GP model (format "
                             f"{meta.get('format')!r})")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise ModelFileError(f"{path} has model format version {meta.get('format_version')}; "
                             f"this gpmlip reads versions {READABLE_VERSIONS}: use the gpmlip "
                             f"version that wrote it ({meta.get('versions', {}).get('gpmlip')})")
    return meta, arrays
