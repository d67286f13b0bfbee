"""Where the tests' own servers keep their data: in memory when the machine has a tmpfs.

The test servers' PostgreSQL clones a database for every test and JetStream writes every
message to its store; on a shared disk each clone took 0.3-0.6 s (most of a test's set-up) and
varied threefold from one run to the next with the disk's other users. In /dev/shm the same
clone takes ~20 ms. Nothing there must survive the run, so the folder is removed at the end,
and folders left by a run that was killed are removed by the next one.
`SHVYA_TEST_SCRATCH=disk` keeps everything under pytest's temporary folder instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

RAM = Path("/dev/shm")
PREFIX = "shvya-test-"
NEEDED_BYTES = 2 * 1024**3


def _ram_usable() -> bool:
    if os.environ.get("SHVYA_TEST_SCRATCH") == "disk" or not RAM.is_dir():
        return False
    if not os.access(RAM, os.W_OK | os.X_OK):
        return False
    stats = os.statvfs(RAM)
    return stats.f_bavail * stats.f_frsize >= NEEDED_BYTES


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_abandoned() -> None:
    for folder in RAM.glob(PREFIX + "*"):
        pid = folder.name[len(PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def scratch(fallback: Path) -> Iterator[Path]:
    """A folder for the servers' data: in RAM if possible, else `fallback`."""
    if not _ram_usable():
        yield fallback
        return
    _remove_abandoned()
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=RAM))
    folder.chmod(0o755)  # the embedded PostgreSQL runs as its own user under root
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
