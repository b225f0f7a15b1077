"""Files written whole or not at all: a temporary file or folder beside the target, renamed into place.

``tempfile`` creates them private (0600, a folder 0700), so that no one else sees them half-written. Renamed into
place they would stay private, and a run's results, model and caches would be unreadable to the other users of a
shared machine while its ``run_config.json`` is not: :func:`published` gives them the permissions that ``open``
or ``mkdir`` would have, under the process's umask.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UsageError

ABANDONED_AFTER_S = 3600  # a temporary that nothing has written for this long was left by a run that died


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


def remove_abandoned(directory: Path, name: re.Pattern) -> None:
    """Delete the temporary files and folders of ``directory`` whose names match ``name`` and that nothing has
    written for an hour: what a run killed while writing left behind (a partial token cache or table of teacher
    outputs can be hundreds of megabytes). A live writer's temporaries are younger, since it writes them as it
    goes; one that vanishes while looked at has just been renamed into place by its writer, and one that cannot be
    read or removed (another user's, in a shared cache folder) is left as it is: tidying never fails a run."""
    if not directory.is_dir():
        return
    now = time.time()
    for entry in directory.iterdir():
        if not name.fullmatch(entry.name):
            continue
        try:
            touched = max([entry.stat().st_mtime, *(item.stat().st_mtime for item in entry.rglob("*"))]
                          if entry.is_dir() else [entry.stat().st_mtime])
            if now - touched <= ABANDONED_AFTER_S:
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue
