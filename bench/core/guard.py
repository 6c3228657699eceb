"""Runs that survive: faults recorded as results, and SIGINT / SIGTERM turned into one clean stop.

A stage that raises (training, evaluation, curves, sweeps, throughput, report) becomes a record with its error, never
the end of the suite. An interruption is different: it must stop everything, so it is raised as `Interrupted`, a
BaseException that the suite's `except Exception` guards let through to the one place that records what finished,
marks the rest "interrupted" and exits 130 (SIGINT) or 143 (SIGTERM).
"""

import os
import signal
import sys
import threading
import traceback
from contextlib import contextmanager

from tqdm.std import tqdm


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: stop, keep what finished. exit_code is the shell's 128 + signal number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


# What a family's own code may raise and still be one family's fault: SystemExit (sys.exit in a module) and
# KeyboardInterrupt (a signal reaches gvd as Interrupted, never as KeyboardInterrupt: this one was raised by code)
USER_FAULTS = (Exception, SystemExit, KeyboardInterrupt)


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
STOP_SECONDS = 30.0  # default grace: how long a training may take to act on a signal (GVD_STOP_SECONDS overrides it)
ABANDON_SECONDS = 5.0  # after the grace, how long the main thread has to take the forced stop before the process ends
_watch: dict = {}  # the grace timer of the pending signal ("timer"), whether it forced the stop ("forced", "taken")


def stop_seconds() -> float:
    """The grace a stopped training (or worker) gets to save its state: GVD_STOP_SECONDS, else STOP_SECONDS."""
    try:
        value = float(os.environ.get("GVD_STOP_SECONDS", STOP_SECONDS))
    except ValueError:
        return STOP_SECONDS
    return value if 0 < value < float("inf") else STOP_SECONDS


def _hold(signum) -> bool:
    """Inside hold_signals, note the first signal (True: the handler returns) and ignore a repeated SIGTERM (a job
    scheduler's or a parent's duplicate of the first); only a second SIGINT (a second Ctrl-C) escalates (False), as
    does any signal once the grace has run out (a training that sleeps or blocks never acts on the first)."""
    if not _held or _watch.get("forced"):
        return False
    if not _pending:
        _pending.append(signum)
        _arm(signum)
        return True
    return signum != signal.SIGINT


_arming = threading.RLock()  # the handler (main thread) and the watcher thread may both arm for one signal


def _arm(signum: int) -> None:
    """Start the grace timer, once per signal acted on: a training that has not acted on the signal within
    stop_seconds() is stopped anyway."""
    with _arming:
        if "timer" in _watch:
            return
        timer = threading.Timer(stop_seconds(), _force, (signum,))
        timer.daemon = True
        _watch["timer"] = timer
        timer.start()


def _start_watcher():
    """A thread that arms the grace from the signal's byte on a wakeup fd (signal.set_wakeup_fd): the C-level handler
    writes it even while the main thread is blocked where Python's handler cannot run (inside C code, or with the
    signals masked), which would otherwise never arm anything. Returns the function that stops it."""
    try:
        r, w = os.pipe()
        os.set_blocking(w, False)
        previous = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except (ValueError, OSError):  # not the main thread, or no pipe: the handler alone arms
        return lambda: None

    def watch():
        while data := os.read(r, 64):
            for signum in data:
                if _held and signum in (signal.SIGINT, signal.SIGTERM):
                    _arm(signum)

    thread = threading.Thread(target=watch, name="gvd-signal-watch", daemon=True)
    thread.start()

    def stop():
        signal.set_wakeup_fd(previous)
        os.close(w)  # the watcher reads the end of the pipe and returns
        thread.join(5)
        os.close(r)

    return stop


def _disarm() -> None:
    """The pending signal was acted on (or the block ended): no forced stop."""
    timer = _watch.pop("timer", None)
    if timer is not None:
        timer.cancel()
    _watch.pop("forced", None)
    _watch.pop("taken", None)


def _force(signum: int) -> None:
    """The grace ran out with the training still under way (it sleeps, or ignores the stop): deliver the signal to
    the main thread again, which now raises Interrupted there (a sleep or a wait is interrupted by it); a main thread
    blocked where no signal handler can run (inside C code) gets ABANDON_SECONDS more, then the process ends with the
    shell's status, after the registered last words (the suite's results.json marks the rest interrupted)."""
    if not _held:  # the training ended (a signal acted on disarms the timer; this one was already on its way)
        return
    _watch["forced"] = True
    signal.pthread_kill(threading.main_thread().ident, signum)
    timer = threading.Timer(ABANDON_SECONDS, _abandon, (signum,))
    timer.daemon = True
    _watch["timer"] = timer
    timer.start()


def _abandon(signum: int) -> None:
    if _watch.get("taken"):
        return
    last_words, said = _watch.get("last_words"), None
    try:
        if last_words is not None:
            said = last_words()
    finally:
        tqdm.write(f"gvd: a training did not stop within {stop_seconds() + ABANDON_SECONDS:.0f} s of "
                   f"{signal.Signals(signum).name} (it blocks where no signal reaches it); stopped"
                   + (f": {said}" if said else ""), file=sys.stderr)
        exit_worker(128 + signum)


def on_abandon(last_words) -> None:
    """What the process writes before it ends a training that never stops (None: nothing), returning what to add to
    its one line; the main thread is stuck inside the training, so last_words must only touch what the training does
    not (the suite's finished entries)."""
    _watch["last_words"] = last_words


def _on_signal(signum, frame):
    """Raise Interrupted at once, or, inside a training (hold_signals), note the signal for the training loop to act
    on when its step ends (bench/train_state.steps_to_run). A second Ctrl-C raises at once, and so does the forced
    stop of a training that let the grace run out."""
    if _hold(signum):
        return
    _watch["taken"] = True
    _pending.clear()
    raise Interrupted(signum)


def pending_signal() -> int:
    """The signal a held training must stop for (0 = none)."""
    return _pending[0] if _pending else 0


def take_pending() -> Interrupted:
    """The Interrupted of the pending signal, which is cleared (the loop raises it once its state is saved)."""
    _disarm()
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
        if not _held:
            _disarm()
        if not _held and _pending and not isinstance(exc, Interrupted):
            raise take_pending() from exc
        raise
    _held -= 1
    if not _held:
        _disarm()
    if not _held and _pending:
        raise take_pending()


@contextmanager
def stop_on_signals():
    """Within the block, SIGINT and SIGTERM raise Interrupted in the main thread (held to a step boundary inside
    hold_signals); the old handlers come back after."""
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    stop_watcher = _start_watcher()
    try:
        yield
    finally:
        stop_watcher()
        _disarm()
        _pending.clear()
        _watch.pop("last_words", None)
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
    anywhere else, or once the grace has run out, the worker exits at once, quietly, with the shell's status."""
    if _hold(signum):
        return
    _watch["taken"] = True
    exit_worker(128 + signum)


def worker_signals() -> None:
    """Worker-process initializer: a terminal's Ctrl-C reaches the whole process group; only the parent acts on it
    (it terminates the workers), so SIGINT is ignored here. SIGTERM, the parent's terminate, lets a training loop
    save its state at the end of its step before the worker exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_worker_signal)
    tqdm.monitor_interval = 0  # no monitor thread: a signal for this process should reach its main thread
