"""Descriptors rebuilt from their stored settings (model files, worker processes)."""

from __future__ import annotations

from gpmlip.descriptors.protocol import Descriptor
from gpmlip.descriptors.soap import SOAP
from gpmlip.descriptors.stacked import Stacked
from gpmlip.errors import SettingsError


def descriptor_from_dict(data: dict, *, n_jobs: int = 1) -> Descriptor:
    """The descriptor that ``to_dict()`` described: ``SOAP`` (files without a type) or
    ``Stacked``.

    Raises
    ------
    SettingsError
        For a type this version does not know.
    """
    kind = data.get("type", "SOAP")
    if kind == "SOAP":
        return SOAP.from_dict(data, n_jobs=n_jobs)
    if kind == "Stacked":
        return Stacked.from_dict(data, n_jobs=n_jobs)
    raise SettingsError(f"descriptor type {kind!r} is unknown to this gpmlip version (it knows "
                        "SOAP and Stacked); upgrade gpmlip to read this file")
