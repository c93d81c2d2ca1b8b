"""Reading what a user points gancore at: regular files only, with a bound on size.

A path to ``/dev/zero`` or a FIFO must not grow memory until the machine dies or block forever.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from gancore.errors import GancoreError


def check_regular_file(path: Path, what: str) -> os.stat_result:
    """``path``'s stat if it is a regular file (links followed); else a one-line GancoreError."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise GancoreError(f"{what} {path} does not exist") from None
    except OSError as error:
        raise GancoreError(f"cannot read {what} {path}: {error.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a device, FIFO or socket)"
        raise GancoreError(f"{what} {path} is {kind}; give a file")
    return info


def read_regular_file(path: Path, what: str, limit: int) -> bytes:
    """The bytes of regular file ``path``, refusing one larger than ``limit`` bytes."""
    size = check_regular_file(path, what).st_size
    if size > limit:
        raise GancoreError(f"{what} {path} is {size} bytes; the limit is {limit} bytes")
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)  # the file may have grown since stat
    except OSError as error:
        raise GancoreError(f"cannot read {what} {path}: {error.strerror}") from None
    if len(data) > limit:
        raise GancoreError(f"{what} {path} is larger than the limit of {limit} bytes")
    return data
