"""Runs that survive: faults recorded as results, and SIGINT / SIGTERM turned into one clean stop.

A stage that raises (training, evaluation, curves, sweeps, throughput, report) becomes a record with its error, never
the end of the suite. An interruption is different: it must stop everything, so it is raised as `Interrupted`, a
BaseException that the suite's `except Exception` guards let through to the one place that records what finished,
marks the rest "interrupted" and exits 130 (SIGINT) or 143 (SIGTERM).
"""

import os
import signal
import sys
import traceback
from contextlib import contextmanager

from tqdm.std import tqdm


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


_held = 0  # depth of hold_signals() blocks: trainings that save their state at their next step boundary
_pending: list[int] = []  # the signal a held training has yet to act on


def _hold(signum) -> bool:
    """Inside hold_signals, note the first signal (True: the handler returns) and ignore a repeated SIGTERM (a job
    scheduler's or a parent's duplicate of the first); only a second SIGINT (a second Ctrl-C) escalates (False)."""
    if not _held:
        return False
    if not _pending:
        _pending.append(signum)
        return True
    return signum != signal.SIGINT


def _on_signal(signum, frame):
    """Raise Interrupted at once, or, inside a training (hold_signals), note the signal for the training loop to act
    on when its step ends (bench/train_state.steps_to_run). A second Ctrl-C raises at once."""
    if _hold(signum):
        return
    _pending.clear()
    raise Interrupted(signum)


def pending_signal() -> int:
    """The signal a held training must stop for (0 = none)."""
    return _pending[0] if _pending else 0


def take_pending() -> Interrupted:
    """The Interrupted of the pending signal, which is cleared (the loop raises it once its state is saved)."""
    return Interrupted(_pending.pop())


@contextmanager
def hold_signals():
    """Within the block (trainings, with the code between them), SIGINT / SIGTERM wait for the training loop's step
    to end, so the loop can save a state that is whole (weights, optimisers and generators of the same step) before
    it stops. A signal still pending when the block ends, normally or by an exception (a diverged loop's `break`, a
    failed step), raises Interrupted here, in the caller's frame."""
    global _held
    _held += 1
    try:
        yield
    except BaseException as exc:
        _held -= 1
        if not _held and _pending and not isinstance(exc, Interrupted):
            raise take_pending() from exc
        raise
    _held -= 1
    if not _held and _pending:
        raise take_pending()


@contextmanager
def stop_on_signals():
    """Within the block, SIGINT and SIGTERM raise Interrupted in the main thread (held to a step boundary inside
    hold_signals); the old handlers come back after."""
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        _pending.clear()
        for s, handler in old.items():
            signal.signal(s, handler)


def exit_worker(status: int) -> None:
    """End a worker process now, as SIGTERM's default action would: no exit handlers. Raising SystemExit instead ran
    Python's exit machinery from inside whatever the worker was doing (a pool shutdown, an interpreter exit after the
    pool's sentinel), and once in about a dozen slow-test runs a worker stayed blocked on a pool lock, so
    pool.terminate() waited for ever."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(status)


def _on_worker_signal(signum, frame):
    """A worker process's SIGTERM (the parent's pool.terminate): a training saves its state first (as above);
    anywhere else the worker exits at once, quietly, with the shell's status."""
    if _hold(signum):
        return
    exit_worker(128 + signum)


def worker_signals() -> None:
    """Worker-process initializer: a terminal's Ctrl-C reaches the whole process group; only the parent acts on it
    (it terminates the workers), so SIGINT is ignored here. SIGTERM, the parent's terminate, lets a training loop
    save its state at the end of its step before the worker exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_worker_signal)
    tqdm.monitor_interval = 0  # no monitor thread: a signal for this process should reach its main thread
