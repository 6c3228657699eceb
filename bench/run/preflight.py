"""Checks that run before any work: every bad input is one line (UserError-like ValueError), nothing written yet.

Also the run folder's guard against clobbering: a folder that already holds a run is refused unless the user says
--resume (continue it) or --force (move the old run aside to <dir>.old-<timestamp>, then start afresh).
"""

import contextlib
import fcntl
import math
import os
from datetime import datetime
from pathlib import Path

from bench.errors import UserError

MAX_SAMPLE_IMAGES = 4096  # `gvd sample --n`: one PNG grid; more images would hold them all in memory at once
RUN_FILES = ("results.json", "config.json")  # a folder holding either is a run folder


class PreflightError(UserError):
    """A bad input found before any work started (printed as one line, exit status 2)."""


def check_writable_dir(path: Path, what: str = "--out") -> None:
    """path may be created as a folder and written into: the nearest existing ancestor is a writable folder, and
    path itself, if it exists, is a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PreflightError(f"{what} {path} exists and is not a folder")
    existing = next(p for p in [path, *path.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise PreflightError(f"{what} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PreflightError(f"{what} {path}: {existing} is not writable")


def check_output_file(path: Path, suffix: str, what: str = "--out") -> None:
    """A file to be written: the right suffix, in an existing writable folder, not a folder itself."""
    path = Path(path)
    if path.suffix.lower() != suffix:
        raise PreflightError(f"{what} {path}: give a {suffix} file name")
    if path.is_dir():
        raise PreflightError(f"{what} {path} is a folder; give a {suffix} file name")
    if not path.parent.absolute().is_dir():
        raise PreflightError(f"{what} {path}: folder {path.parent} does not exist")
    if not os.access(path.parent.absolute(), os.W_OK):
        raise PreflightError(f"{what} {path}: folder {path.parent} is not writable")


def check_finite(value: float | None, name: str, low: float | None = None, strict: bool = False) -> None:
    """A finite number (None passes: not given), >= low (> low when strict)."""
    if value is None:
        return
    if not math.isfinite(value):
        raise PreflightError(f"{name} must be a finite number, got {value}")
    if low is not None and (value <= low if strict else value < low):
        raise PreflightError(f"{name} must be {'>' if strict else '>='} {low:g}, got {value:g}")


def check_sample_count(n: int) -> None:
    if not 1 <= n <= MAX_SAMPLE_IMAGES:
        raise PreflightError(f"--n must be between 1 and {MAX_SAMPLE_IMAGES} (one grid image), got {n}")


def holds_run(path: Path) -> bool:
    return any((Path(path) / name).exists() for name in RUN_FILES)


@contextlib.contextmanager
def run_lock(folder: Path, active: bool = True):
    """One `gvd run` per run folder: an exclusive lock (flock) on <folder>/.lock, which holds the holder's pid, held
    while the block runs. The OS drops the lock when the process ends however it ends, so the lock of a killed run is
    taken over by the next (its pid is simply overwritten). A second run into the folder (a second --resume, a
    --force while one runs) is refused in one line naming the holder's pid. active=False: a no-op (the other ranks
    under torchrun)."""
    if not active:
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            holder = f" (pid {holder})" if holder.isdigit() else ""
            raise PreflightError(f"{folder} is in use by another gvd run{holder}; wait for it to end or use another "
                                 "--out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def claim_run_dir(path: Path, force: bool) -> Path | None:
    """Before a fresh run into path: refuse a folder that holds another run unless force; with force, move the old
    run to <path>.old-<timestamp> (returned) so nothing of it is lost or mixed with the new run's files."""
    path = Path(path)
    if not holds_run(path):
        return None
    if not force:
        raise PreflightError(f"{path} already holds a run; continue it with --resume {path}, or pass --force to move "
                             f"it to {path.name}.old-<timestamp> and start afresh")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    archive = path.with_name(f"{path.name}.old-{stamp}")
    n = 1
    while archive.exists():
        archive, n = path.with_name(f"{path.name}.old-{stamp}-{n}"), n + 1
    path.rename(archive)
    return archive
