"""Jobs in worker processes, stopped cleanly: the one process pool of `gvd run` and `gvd study`.

run_jobs(fn, jobs, workers, record) calls record(job, fn(job)) for every job, as each finishes. With one worker (or
one job) it runs them in this process, in job order. Otherwise in `workers` spawned processes (fork after torch has
started threads can hang), each talking to the parent over a pipe of its own: nothing is shared between workers, so
a worker that dies or is killed holds no lock that another process waits on (multiprocessing.Pool's shared queues
deadlocked when a worker ended while holding one, and lost the job of a worker that died). A worker ignores SIGINT (a
terminal's Ctrl-C reaches the whole group: the parent decides) and, on the parent's SIGTERM, lets a held training
save its state before it exits (bench/core/guard.worker_signals); on Linux the parent's death sends it that SIGTERM.

When the jobs cannot go on (Interrupted in the parent under guard.stop_on_signals, a job that raised, a record that
raised, a worker that died) the results that had arrived are recorded, every busy worker gets SIGTERM (a training
saves what it holds first) and STOP_SECONDS to go, an idle one is told to exit, none is left behind, and the cause
propagates; a worker that died is WorkerLost. The stages the jobs enter (bench/core/stages.py) reach on_stage(label,
stage) in the parent over the same pipes. With CUDA devices given (`gpus`), worker i sees only gpus[i] (it starts with
CUDA_VISIBLE_DEVICES set to it), so each job's "cuda" is its worker's own GPU.
"""

import contextlib
import ctypes
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import wait

import torch
from tqdm.std import tqdm

from bench.core import stages
from bench.core.guard import ABANDON_SECONDS, STOP_SECONDS, Interrupted, exit_worker, stop_seconds, worker_signals
from bench.errors import WorkerLost


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to n within the block and restored after it, so a job run in this process
    leaves the next one (and its numbers) as it found them."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


POLL_SECONDS = 0.2  # the longest the parent waits on its workers between on_poll calls (and signal checks)


def _serve(conn, fn, parent: int) -> None:
    """A worker process: take a job from the parent's pipe, send back ("done", fn(job)) or ("raised", exception),
    until the parent sends None or goes away. Stages entered are sent as ("stage", label, name)."""
    worker_signals()
    _end_with(parent)
    # tqdm's default lock holds a multiprocessing semaphore that a terminated worker never unlinks ("leaked semaphore"
    # at exit); a worker's bars are its own (the parent draws the progress line), so a thread lock does
    tqdm.set_lock(threading.RLock())
    stages.listen(lambda label, name: conn.send(("stage", label, name)))
    while True:
        try:
            job = conn.recv()
        except EOFError:  # the parent has gone
            return
        if job is None:
            return
        try:
            reply = ("done", fn(job))
        except Interrupted as stop:  # the parent's SIGTERM reached a held training: its state is saved
            exit_worker(stop.exit_code)
        except Exception as exc:  # noqa: BLE001 -- the parent decides: it re-raises it
            reply = ("raised", exc)
        try:
            conn.send(reply)
        except (OSError, ValueError):  # the parent has gone
            return
        except Exception as exc:  # noqa: BLE001 -- an unpicklable result or exception: its text
            conn.send(("raised", RuntimeError(f"{type(exc).__name__}: {exc}")))


def _end_with(parent: int) -> None:
    """On Linux, this process gets SIGTERM when its parent dies (a `kill -9` of gvd run): a training under way saves
    its state and the worker exits, instead of training on for no one (prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the worker ends at its next message to the parent
        return
    if os.getppid() != parent:  # the parent died before the call above
        exit_worker(128 + signal.SIGTERM)


@contextlib.contextmanager
def _visible(gpu: str | None):
    """CUDA_VISIBLE_DEVICES=gpu in the environment a worker starts with (set in the child instead, it would come too
    late if an import there had asked torch about CUDA already)."""
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    try:
        yield
    finally:
        if gpu is not None and before is None:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        elif gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


class _Worker:
    def __init__(self, context, fn, gpu: str | None = None):
        self.conn, child = context.Pipe(duplex=True)
        self.process = context.Process(target=_serve, args=(child, fn, os.getpid()), daemon=True)
        with _visible(gpu):
            self.process.start()
        child.close()
        self.job = None  # the job it runs, None while idle

    def give(self, job, label) -> None:
        self.job = job
        try:
            self.conn.send(job)
        except OSError:  # it died while idle
            self.process.join()
            raise WorkerLost(f"a worker process ended (exit status {self.process.exitcode}) before it could run "
                             f"{label(job)}") from None


def run_jobs(fn, jobs: list, workers: int, record, on_stage=None, on_poll=None, label=None, gpus=()) -> None:
    """record(job, fn(job)) for every job as it finishes, `workers` at a time (module docstring); on_stage(label,
    stage) for every stage a job enters, on_poll() every POLL_SECONDS or sooner while jobs run in workers; label(job)
    names a job in WorkerLost (default: the .label of the job or of its first item); gpus: CUDA device ids, worker i
    pinned to gpus[i % len(gpus)]. fn must be a module-level function (it is pickled to the workers), jobs
    picklable."""
    label = label or job_label
    if min(workers, len(jobs)) <= 1:
        stages.listen(on_stage)
        try:
            for job in jobs:
                record(job, fn(job))
        finally:
            stages.listen(None)
        return
    context = multiprocessing.get_context("spawn")
    team = [_Worker(context, fn, gpus[i % len(gpus)] if gpus else None) for i in range(min(workers, len(jobs)))]
    todo, finished = list(jobs), False
    try:
        while todo or any(w.job is not None for w in team):
            for worker in team:
                if worker.job is None and todo:
                    worker.give(todo.pop(0), label)
            busy = [w for w in team if w.job is not None]
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=POLL_SECONDS)
            for worker in busy:
                if worker.conn in ready or worker.process.sentinel in ready:
                    _hear(worker, record, on_stage, label)
            if on_poll is not None:
                on_poll()
        finished = True
    except Interrupted:
        for worker in team:  # outcomes that had arrived are kept
            if worker.job is not None:
                with contextlib.suppress(Exception):
                    _hear(worker, record, None, label)
        raise
    finally:
        _stop(team, finished)


def _hear(worker: _Worker, record, on_stage, label) -> None:
    """Every message the worker has sent: stages to on_stage, its job's outcome to record (the worker is idle again),
    an exception it raised re-raised here; a worker that has died without an outcome is WorkerLost."""
    while worker.conn.poll():
        try:
            message = worker.conn.recv()
        except EOFError:
            break
        if message[0] == "stage":
            if on_stage is not None:
                on_stage(*message[1:])
            continue
        job, worker.job = worker.job, None
        if message[0] == "raised":
            raise message[1]
        record(job, message[1])
        return
    if not worker.process.is_alive():
        worker.process.join()
        raise WorkerLost(f"a worker process ended (exit status {worker.process.exitcode}) while running "
                         f"{label(worker.job)}, with nothing sent back (killed? out of memory?)")


def job_label(job) -> str:
    first = job[0] if isinstance(job, tuple) and job else job
    return str(getattr(first, "label", first))


def _stop(team: list[_Worker], finished: bool) -> None:
    """Every job done: each worker is told to exit. Stopped early: a busy worker gets SIGTERM (a training saves its
    state at the end of its step, then the worker exits) and an idle one is told to exit; STOP_SECONDS for all of them
    to go, and one still there is killed."""
    for worker in team:
        if worker.job is not None and not finished:
            worker.process.terminate()
        else:
            with contextlib.suppress(OSError, ValueError):
                worker.conn.send(None)
    deadline = time.monotonic() + (stop_seconds() + ABANDON_SECONDS if not finished else STOP_SECONDS)
    for worker in team:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()
