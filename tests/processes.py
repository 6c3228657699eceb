"""Process helpers for the signal tests (gvd run's and gvd study's): children of a process and whether one still
runs, read from /proc."""

from pathlib import Path


def children(pid: int) -> list[int]:
    """Process ids whose parent is pid."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    """Whether pid is a running process (a zombie is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def cmdline(pid: int) -> bytes:
    """pid's command line ('' once it has gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def new_children_alive(pid: int, before: set[int]) -> list[int]:
    """Children of pid not in `before` that still run, but multiprocessing's resource tracker (one per process, for
    its life): the workers a pool left behind."""
    return [p for p in set(children(pid)) - before if alive(p) and b"resource_tracker" not in cmdline(p)]
