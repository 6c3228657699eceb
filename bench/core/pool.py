"""Jobs in worker processes, stopped cleanly: the one process pool of `gvd run` and `gvd study`.

run_jobs(fn, jobs, workers, record) calls record(job, fn(job)) for every job, as each finishes. With one worker (or
one job) it runs them in this process, in job order. Otherwise in `workers` spawned processes (fork after torch has
started threads can hang), each of which ignores SIGINT (a terminal's Ctrl-C reaches the whole group: the parent
decides) and, on the parent's SIGTERM, lets a held training save its state before it exits
(bench/core/guard.worker_signals). On Interrupted in the parent (SIGINT / SIGTERM under guard.stop_on_signals) the
jobs that had finished are recorded, every worker is terminated (each saves what it holds first; none is left behind)
and Interrupted propagates. The stages the jobs enter (bench/core/stages.py) reach on_stage(label, stage) in the
parent, from the workers through a queue.
"""

import contextlib
import multiprocessing
import queue
import time

import torch

from bench.core import stages
from bench.core.guard import Interrupted, exit_worker, worker_signals


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


def _in_worker(fn, job):
    """fn(job) in a pool worker: stopped by the parent's terminate, a held training saves its state at the end of
    its step and the worker exits at once with the shell's status."""
    try:
        return fn(job)
    except Interrupted as stop:
        exit_worker(stop.exit_code)


STOP_SECONDS = 30.0  # how long a stopped worker may take to save its training's state before it is killed


def _start_worker(messages) -> None:
    """Pool initializer: the signals of a worker (guard.worker_signals), and its stages reported to the parent."""
    worker_signals()
    if messages is not None:
        stages.listen(lambda label, name: messages.put((label, name)))


def run_jobs(fn, jobs: list, workers: int, record, on_stage=None, on_poll=None) -> None:
    """record(job, fn(job)) for every job as it finishes, `workers` at a time (module docstring); on_stage(label,
    stage) for every stage a job enters, on_poll() every fifth of a second while jobs run in workers. fn must be a
    module-level function (it is pickled to the workers), jobs picklable."""
    if min(workers, len(jobs)) <= 1:
        stages.listen(on_stage)
        try:
            for job in jobs:
                record(job, fn(job))
        finally:
            stages.listen(None)
        return
    context = multiprocessing.get_context("spawn")
    messages = context.Queue() if on_stage is not None else None
    pool = context.Pool(min(workers, len(jobs)), initializer=_start_worker, initargs=(messages,))
    finished = False
    try:
        pending = [(job, pool.apply_async(_in_worker, (fn, job))) for job in jobs]
        try:
            while pending:
                _relay(messages, on_stage)
                done = [p for p in pending if p[1].ready()]
                for job, res in done:
                    pending.remove((job, res))
                    record(job, res.get())
                if not done:
                    if on_poll is not None:
                        on_poll()
                    pending[0][1].wait(0.2)  # short waits: the signal handler runs between them
        except Interrupted:
            for job, res in pending:
                if res.ready() and res.successful():
                    record(job, res.get())
            raise
        finished = True
    finally:
        _stop(pool, finished)
        if messages is not None:  # its feeder thread and semaphores go with it (no "leaked semaphore" at exit)
            messages.close()
            messages.join_thread()


def _relay(messages, on_stage) -> None:
    """Hand the workers' stage messages that have arrived to on_stage."""
    while messages is not None:
        try:
            on_stage(*messages.get_nowait())
        except queue.Empty:
            return


def _stop(pool, finished: bool) -> None:
    """Every job done: the workers take the pool's end-of-work sentinel and exit. Stopped early: each worker gets
    SIGTERM (a training saves its state at the end of its step, then the worker exits) and STOP_SECONDS to go; one
    still there is killed. (A worker waiting for work can sleep through the SIGTERM when a thread other than its main
    one, which Python's handler needs, takes the signal; with nothing to save, killing it loses nothing.)"""
    if finished:
        pool.close()
        pool.join()
        return
    workers = multiprocessing.active_children()
    for process in workers:
        process.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    for process in workers:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
    pool.terminate()
    pool.join()
