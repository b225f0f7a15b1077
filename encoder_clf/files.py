"""Files written whole or not at all: a temporary file or folder beside the target, renamed into place.

``tempfile`` creates them private (0600, a folder 0700), so that no one else sees them half-written. Renamed into
place they would stay private, and a run's results, model and caches would be unreadable to the other users of a
shared machine while its ``run_config.json`` is not: :func:`published` gives them the permissions that ``open``
or ``mkdir`` would have, under the process's umask.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UsageError


def published(path: Path) -> Path:
    """``path`` (a finished temporary file, or a folder and what it holds) with the permissions of a plain new one.

    A folder's files are included: safetensors writes its files private too.
    """
    mask = os.umask(0)
    os.umask(mask)
    for item in [path, *(path.rglob("*") if path.is_dir() else [])]:
        item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)
    return path


@contextmanager
def writing_out(path: Path) -> Iterator[None]:
    """Writing the file a user named with ``--out``: a folder that cannot be written, or a directory of that name,
    is a bad ``--out``, not a bug, and ends in one line."""
    try:
        yield
    except OSError as err:
        raise UsageError(f"--out {path}: cannot write it ({err.strerror}); pick another path") from None
