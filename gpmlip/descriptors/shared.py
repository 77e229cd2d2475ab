"""Output arrays in shared memory, so worker processes on this machine write results in place.

Pickling Jacobian blocks back from worker processes costs as much as computing them; a file in
``/dev/shm`` (RAM-backed) mapped by the parent and by each worker avoids that copy.  The file is
unlinked as soon as the workers are done; the parent's mapping keeps the memory alive for as long as
the arrays are referenced.  A file left by a process killed mid-computation is named after its
process id and removed by the next allocation once that process is gone.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np

SHM_DIR = "/dev/shm"
PREFIX = "gpmlip-"


def _remove_orphans() -> None:
    """Remove files left by gpmlip processes that were killed while their workers ran."""
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return
    for name in names:
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
            except OSError:
                pass


@dataclass(frozen=True)
class SharedSpec:
    """What a worker needs to map the arrays: a path and each array's (offset, shape)."""

    path: str
    layout: dict[str, tuple[int, tuple[int, ...]]]

    def view(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of array ``name``, mapped writable."""
        offset, shape = self.layout[name]
        row = int(np.prod(shape[1:], dtype=np.int64)) * 8
        return np.memmap(self.path, dtype=np.float64, mode="r+", offset=offset + start * row,
                         shape=(stop - start, *shape[1:]))


def shared_memory_available(n_bytes: int) -> bool:
    """Whether /dev/shm exists and has room (with a 2x margin) for ``n_bytes``."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize > 2 * n_bytes


def allocate(shapes: dict[str, tuple[int, ...]]) -> tuple[SharedSpec, dict[str, np.ndarray]]:
    """Create the shared file and map every array in the parent.

    Returns the spec for the workers and the parent's arrays (plain ndarrays over the mapping).
    """
    _remove_orphans()
    layout, offset = {}, 0
    for name, shape in shapes.items():
        layout[name] = (offset, tuple(int(s) for s in shape))
        offset += int(np.prod(shape, dtype=np.int64)) * 8
    fd, path = tempfile.mkstemp(prefix=f"{PREFIX}{os.getpid()}-", dir=SHM_DIR)
    try:
        os.ftruncate(fd, max(offset, 8))
    finally:
        os.close(fd)
    spec = SharedSpec(path, layout)
    arrays = {name: np.asarray(spec.view(name, 0, shape[0])) for name, (_, shape) in layout.items()}
    return spec, arrays


def release(spec: SharedSpec) -> None:
    """Remove the file; mappings stay valid until their arrays are garbage-collected."""
    try:
        os.unlink(spec.path)
    except FileNotFoundError:
        pass
