"""The machine's processes as /proc shows them: how the test bed finds what it started."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def processes() -> Iterator[tuple[Path, str, str]]:
    """(its /proc folder, executable, command line joined by spaces) of each process that
    can be read; one that exits meanwhile is skipped."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = os.readlink(entry / "exe")
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        yield entry, exe, cmdline
