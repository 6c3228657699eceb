"""Runs that survive: faults recorded as results, and SIGINT / SIGTERM turned into one clean stop.

A stage that raises (training, evaluation, curves, sweeps, throughput, report) becomes a record with its error, never
the end of the suite. An interruption is different: it must stop everything, so it is raised as `Interrupted`, a
BaseException that the suite's `except Exception` guards let through to the one place that records what finished,
marks the rest "interrupted" and exits 130 (SIGINT) or 143 (SIGTERM).
"""

import signal
import traceback
from contextlib import contextmanager


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: stop, keep what finished. exit_code is the shell's 128 + signal number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


def error_text(exc: BaseException) -> str:
    """'TypeError: message', first line only (what a run entry and the report show)."""
    text = f"{type(exc).__name__}: {exc}"
    return text.splitlines()[0] if text.strip() else type(exc).__name__


def failed_status(exc: BaseException) -> dict:
    """The status fields of a run entry whose stage raised."""
    return {"status": "failed", "error": error_text(exc),
            "traceback": "".join(traceback.format_exception(exc, limit=5))}


def interrupted_entry(dataset: str, model: str, seed: int) -> dict:
    """The run entry of a (dataset, model, seed) that had not finished when the suite was stopped."""
    return {"dataset": dataset, "model": model, "seed": seed, "status": "interrupted", "train": {}, "metrics": {},
            "throughput": {}}


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


@contextmanager
def stop_on_signals():
    """Within the block, SIGINT and SIGTERM raise Interrupted in the main thread; the old handlers come back after."""
    old = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def ignore_sigint() -> None:
    """Worker-process initializer: a terminal's Ctrl-C reaches the whole process group; only the parent acts on it
    (it terminates the workers), so a worker never dies half-way through writing a file on its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
