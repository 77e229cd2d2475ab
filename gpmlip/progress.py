"""Progress bars on the loops a user waits on (tqdm), silent when output is not a terminal."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm.auto import tqdm


def progress_bar(iterable: Iterable | None = None, *, desc: str = "", total: int | None = None,
                 unit: str = "it", enable: bool | None = None) -> tqdm:
    """A tqdm bar on stderr; ``enable=None`` shows it only when stderr is a terminal."""
    show = sys.stderr.isatty() if enable is None else enable
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not show, leave=False,
                file=sys.stderr, dynamic_ncols=True)
