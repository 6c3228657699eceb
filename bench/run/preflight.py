"""Checks that run before any work: every bad input is one line (UserError-like ValueError), nothing written yet.

Also the run folder's guard against clobbering: a folder that already holds a run is refused unless the user says
--resume (continue it) or --force (move the old run aside to <dir>.old-<timestamp>, then start afresh).
"""

import contextlib
import errno
import fcntl
import math
import os
import stat
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
def run_lock(folder: Path, active: bool = True, fresh: bool = False, force: bool = False):
    """One `gvd run` per run folder, held while the block runs: an exclusive lock (flock) on the folder itself (its
    descriptor, so deleting or replacing <folder>/.lock frees nothing), checked to be the folder the path still
    names; <folder>/.lock holds the holder's pid for the refusal's message, opened without following a symbolic
    link. The OS drops the lock when the process ends however it ends, so a killed run's folder is taken over by the
    next. A second run into the folder (a second --resume, a --force while one runs) is refused in one line naming
    the holder's pid.

    fresh (a run that is not a resume): a folder holding another run is refused unless force, which moves it to
    <folder>.old-<timestamp> (claim_run_dir) and locks the fresh folder made in its place before anything is written,
    so two --force runs never both write one --out. Yields that archive's path, or None. active=False: a no-op (the
    other ranks under torchrun)."""
    if not active:
        yield None
        return
    folder = Path(folder)
    held, archive = _lock(folder), None
    try:
        if fresh and (archive := claim_run_dir(folder, force)) is not None:
            # the old run's folder stays locked (it moved with its descriptor) until the new one is ours
            fresh_fd = _lock(folder)
            os.close(held)
            held = fresh_fd
        yield archive
    finally:
        os.close(held)


LOCK_FILE = ".lock"
_NO_FOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)  # NONBLOCK: a FIFO put there never blocks


def _lock(folder: Path) -> int:
    """The folder's descriptor, exclusively flocked, after checking the path still names it; its pid in .lock."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(folder)
            raise PreflightError(f"{folder} is in use by another gvd run{f' (pid {holder})' if holder else ''}; wait "
                                 "for it to end or use another --out") from None
        now, mine = os.stat(folder), os.fstat(fd)
        if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
            raise PreflightError(f"{folder} was moved or replaced while gvd took its lock (another gvd run with "
                                 "--force?); wait for it to end or use another --out")
        _write_pid(folder / LOCK_FILE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_lock_file(path: Path, flags: int) -> int:
    try:
        fd = os.open(path, flags | _NO_FOLLOW, 0o666)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):
            raise PreflightError(f"{path} is a symbolic link or a pipe, not gvd's lock file; gvd does not follow it "
                                 "(remove it, then run again)") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PreflightError(f"{path} is not a plain file, not gvd's lock file (remove it, then run again)")
    return fd


def _write_pid(path: Path) -> None:
    fd = _open_lock_file(path, os.O_WRONLY | os.O_CREAT)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    finally:
        os.close(fd)


def _holder(folder: Path) -> str:
    """The pid the holder wrote, or "" (no readable .lock: a link, a pipe, nothing)."""
    try:
        fd = _open_lock_file(folder / LOCK_FILE, os.O_RDONLY)
    except (OSError, PreflightError):
        return ""
    try:
        text = os.read(fd, 32).decode(errors="replace").strip()
    finally:
        os.close(fd)
    return text if text.isdigit() else ""


def check_fresh(path: Path, force: bool) -> None:
    """A fresh run may go into path: it holds no run, or --force moves that run aside (checked again, under the lock,
    by claim_run_dir; here so that a refused run writes not even its lock file)."""
    if holds_run(path) and not force:
        raise PreflightError(f"{path} already holds a run; continue it with --resume {path}, or pass --force to move "
                             f"it to {Path(path).name}.old-<timestamp> and start afresh")


def forget_unstarted_run(path: Path) -> None:
    """A fresh run stopped by bad input before its first entry: its config.json and lock file go (the folder too when
    nothing else is in it), so the corrected command is not refused as a second run into the folder."""
    path = Path(path)
    if (path / "results.json").exists():
        return
    for name in ("config.json", LOCK_FILE):
        (path / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.rmdir()  # only when empty


def claim_run_dir(path: Path, force: bool) -> Path | None:
    """Before a fresh run into path: refuse a folder that holds another run unless force; with force, move the old
    run to <path>.old-<timestamp> (returned) so nothing of it is lost or mixed with the new run's files."""
    path = Path(path)
    if not holds_run(path):
        return None
    check_fresh(path, force)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    archive = path.with_name(f"{path.name}.old-{stamp}")
    n = 1
    while archive.exists():
        archive, n = path.with_name(f"{path.name}.old-{stamp}-{n}"), n + 1
    path.rename(archive)
    return archive
