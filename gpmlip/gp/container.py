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

from ase.data import chemical_symbols

from gpmlip.data.reference import ReferenceEnergies
from gpmlip.errors import ModelFileError
from gpmlip.gp.kernels import NormalizedDotProduct
from gpmlip.gp.state import FittedState
from gpmlip.species import atomic_number
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
    version = max([FORMAT_VERSION, *(t.format_version for t in state.terms)])
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


def read_model_file(path) -> tuple[dict, FittedState, np.ndarray | None]:
    """The metadata, the fitted state (posterior not yet solved) and the stored weights of a
    model file (None in files without them); every array and setting checked.

    Raises
    ------
    ModelFileError
        When the file is missing, unreadable, of another format or version, or damaged: an
        array with NaN or infinite values where numbers are needed, a setting out of range.
    """
    meta, arrays = _open(path)
    try:
        # files written before the state object kept the signal variances only in the kernel
        meta.setdefault("signal_variance", meta.get("kernel", {}).get("signal_variance"))
        _check_values(arrays, meta)
        return meta, FittedState.from_arrays(arrays, meta), arrays.get("beta")
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise model_file_damaged(path, exc) from None


def _number(value, name: str, *, bound: str = "") -> None:
    """``value`` must be a finite number; ``bound`` ``"> 0"`` or ``">= 0"`` restricts it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) \
            or (bound == "> 0" and value <= 0) or (bound == ">= 0" and value < 0):
        raise ValueError(f"{name} = {value!r} must be a finite number {bound}".rstrip())


def _check_values(arrays: dict, meta: dict) -> None:
    """Numbers in a model file that no model could have written are damage (ValueError)."""
    for name, a in arrays.items():
        if a.dtype.kind not in "fiub":
            raise ValueError(f"array {name!r} has dtype {a.dtype}")
        if a.dtype.kind == "f":
            # frame labels use NaN for 'not labelled'; nothing may be infinite
            bad = np.isinf(a).any() if name.startswith(("frame_energy", "frame_forces",
                                                        "frame_stress", "frame_sigmas")) \
                else not np.isfinite(a).all()
            if bad:
                raise ValueError(f"array {name!r} has non-finite values")
    for z, v in (meta.get("signal_variance") or {}).items():
        _number(v, f"signal variance of {z}", bound="> 0")
    for z, v in (meta.get("e0") or {}).items():
        _number(v, f"e0 of {z}")
    for group, v in meta["noise"].items():
        _number(v, f"{group} noise", bound="> 0")
    kernel = meta.get("kernel", {})
    zeta = kernel.get("zeta")
    if zeta is not None and (isinstance(zeta, bool) or not isinstance(zeta, int)
                             or not 1 <= zeta <= 64):
        raise ValueError(f"kernel zeta = {zeta!r} must be an integer from 1 to 64")
    desc = meta.get("descriptor", {})
    for part in desc.get("parts", [desc]):
        for key in ("r_cut", "sigma"):
            if key in part:
                _number(part[key], f"descriptor {key}", bound="> 0")
    for key in ("calibration", "energy_calibration"):
        for part, v in ((meta.get(key) or {}).get("weights") or {}).items():
            _number(v, f"{key} weight of {part}", bound=">= 0")


def model_file_damaged(path, exc: BaseException) -> ModelFileError:
    """The error for a model file whose contents do not make a model."""
    return ModelFileError(f"{path} is missing or has malformed model data ({exc!r}); it may "
                          "be damaged: save the model again")


def _what_it_is(head: bytes) -> str:
    """A guess at what a file that is not a zip archive holds, from its first bytes."""
    text = head.lstrip()
    if text.startswith(b"<"):
        return "an XML file (a GAP/QUIP potential .xml?)"
    if text.startswith((b"{", b"[")):
        return "a JSON file (a FLARE model .json?)"
    first = text.split(b"\n", 1)[0].strip()
    if first.isdigit():
        return "an XYZ structure file (training data, not a model?)"
    if head.startswith(b"\x80"):
        return "a Python pickle, which gpmlip never writes or loads"
    return "not a zip archive"


MEMBERS = ("metadata.json", "beta", "features", "kmm", "sparse_features", "sparse_species",
           "sparse_origin")
MEMBER_PREFIXES = ("frame_", "stats_", "twobody_")
"""The arrays a model file may hold (:meth:`FittedState.to_arrays`); anything else is refused
before it is read."""
MAX_BYTES_ENV = "GPMLIP_MAX_MODEL_BYTES"
MAX_BYTES = 16 * 2 ** 30
"""Largest total uncompressed size of a model file's arrays (16 GiB: a model with 20,000 sparse
points of 1,000 features and its Gram statistics is about 7 GiB); ``GPMLIP_MAX_MODEL_BYTES``
raises it."""
MAX_RATIO = 100
"""Largest ratio of a member's size to its compressed size (gpmlip writes uncompressed npz)."""


def _check_members(path: Path) -> None:
    """Refuse, before reading any array, an archive with members a model file does not have,
    too large in total, or compressed beyond what gpmlip writes (a zip bomb)."""
    limit = int(os.environ.get(MAX_BYTES_ENV, MAX_BYTES))
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    names = [i.filename.removesuffix(".npy") for i in infos]
    foreign = [n for n in names if n not in MEMBERS and not n.startswith(MEMBER_PREFIXES)]
    if "metadata.json" in names and foreign:
        raise ModelFileError(f"{path} holds arrays no gpmlip model has ({foreign[:5]}): it was "
                             "written or edited by another program; save the model again")
    total = sum(i.file_size for i in infos)
    if total > limit:
        raise ModelFileError(f"{path} declares {total / 2 ** 30:.1f} GiB of arrays, over the "
                             f"limit of {limit / 2 ** 30:.1f} GiB: it is damaged or not a model; "
                             f"if it is a genuine model that large, set {MAX_BYTES_ENV}")
    for i in infos:
        if i.file_size > MAX_RATIO * max(i.compress_size, 1) and i.file_size > 2 ** 20:
            raise ModelFileError(f"{path}: array {i.filename} expands {i.file_size} bytes from "
                                 f"{i.compress_size}; gpmlip never writes compressed models, so "
                                 "the file is not one of its models")


def _open(path):
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"no model file at {path}")
    if path.is_dir():
        raise ModelFileError(f"{path} is a directory, not a model file")
    with open(path, "rb") as fh:
        head = fh.read(256)
    if not head.startswith(b"PK"):
        raise ModelFileError(f"{path} is not a gpmlip model file: it is {_what_it_is(head)}; "
                             "a model file is the .npz that SparseGP.save or gpmlip train "
                             "writes (check the order of the arguments)")
    try:
        _check_members(path)
        data = np.load(path, allow_pickle=False)
        if "metadata.json" not in data.files:
            raise ModelFileError(f"{path} is an .npz archive but not a gpmlip model file (it has "
                                 f"no metadata.json; its arrays: {sorted(data.files)[:10]})")
        arrays = {k: data[k] for k in data.files}
        meta = json.loads(bytes(arrays.pop("metadata.json")).decode())
    except ModelFileError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc):
            raise ModelFileError(f"{path} holds Python objects (pickled data), which gpmlip "
                                 "never writes and never loads: it is not a gpmlip model "
                                 "file") from None
        raise ModelFileError(f"{path} is not a readable gpmlip model file ({exc}); it may be "
                             "damaged or truncated: save the model again") from None
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path} is not a readable gpmlip model file ({exc}); it may be "
                             "damaged or truncated: save the model again") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path}: its metadata is not a JSON object; the file is damaged")
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a gpmlip sparse GP model (format "
                             f"{meta.get('format')!r})")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise ModelFileError(f"{path} has model format version {meta.get('format_version')}; "
                             f"this gpmlip reads versions {READABLE_VERSIONS}: use the gpmlip "
                             f"version that wrote it ({meta.get('versions', {}).get('gpmlip')})")
    return meta, arrays


def model_settings(model) -> dict:
    """The settings a model file stores beside the state (what
    :func:`gpmlip.gp.files.load_model` reads)."""
    return {
        "descriptor": model.descriptor.to_dict(),
        "kernel": NormalizedDotProduct(model.zeta, model.signal_variances).to_dict(),
        "config_sigmas": model.config_sigmas,
        "baseline": None if model.baseline is None else model.baseline.to_dict(),
        "e0_setting": _e0_setting(model.e0),
        "settings": {"n_sparse": model.n_sparse, "sparse_method": model.sparse_method,
                     "jitter": model.jitter, "seed": model.seed,
                     "stress_noise": model.stress_noise},
        "calibration": None if model.calibration_ is None else model.calibration_.to_dict(),
        "energy_calibration": None if model.energy_calibration_ is None else
        model.energy_calibration_.to_dict(),
        "stress_calibration": None if model.stress_calibration_ is None else
        model.stress_calibration_.to_dict(),
        "build": model.build_report_,
    }


def _e0_setting(e0):
    """The model's ``e0`` argument as JSON: a mode string, or symbol -> eV."""
    if isinstance(e0, ReferenceEnergies):
        return e0.to_dict()
    if isinstance(e0, dict):
        return {chemical_symbols[atomic_number(k, "e0")]: float(v) for k, v in e0.items()}
    return e0
