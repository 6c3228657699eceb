"""The process pool of `gvd run` and `gvd study` (bench/core/pool.py): every outcome recorded, stages relayed, and
every way the jobs can stop (a job that raises, a record that raises, a worker that dies, a signal) ends promptly with
no worker left behind. The earlier pool (multiprocessing.Pool) hung for ever when the run stopped on a full disk: a
worker killed while it held one of the pool's shared locks blocked pool.terminate().

"Promptly" is shown by events, not by a clock a loaded machine can break: the jobs still running when the pool stops
sleep far longer than any test waits and leave a file when they finish their sleep, so a pool that waited for them
instead of stopping them leaves those files behind; deadlines are only hang guards, minutes long."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import alive, children, cmdline, new_children_alive

from bench.core import pool, stages
from bench.core.guard import Interrupted
from bench.errors import WorkerLost


def _square(n: int) -> int:
    with stages.fresh(f"job {n}"), stages.stage("squaring"):
        time.sleep(0.05)
        return n * n


LONG = 120  # seconds a job that must be stopped sleeps: a pool that waits for it instead is seen by its file


def _fails_on_three(job: tuple[int, str]) -> int:
    n, folder = job
    if n == 3:
        raise OSError(28, "No space left on device")
    time.sleep(0.05 if n < 3 else LONG)  # the jobs after it are still running when the pool stops
    Path(folder, f"finished{n}").touch()  # only a job the pool let run to its end gets here
    return n


def _jobs(numbers: list[int], folder: Path) -> list[tuple[int, str]]:
    return [(n, str(folder)) for n in numbers]


def _finished(folder: Path) -> set[int]:
    """The jobs that ran to their end (their file)."""
    return {int(p.name.removeprefix("finished")) for p in folder.glob("finished*")}


def _dies_on_two(n: int) -> int:
    if n == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does
    time.sleep(0.05 if n < 2 else 30)
    return n


def _no_workers_left(before: set[int]) -> bool:
    return not new_children_alive(os.getpid(), before)


def test_every_outcome_recorded_and_every_stage_relayed_as_in_one_process():
    """Workers or not, record sees each job's result once (the same results as fn in this process), on_stage each
    stage the jobs enter, with its job's label; the workers are gone after."""
    before = set(children(os.getpid()))
    got, heard = {}, []
    pool.run_jobs(_square, list(range(7)), 3, lambda job, out: got.__setitem__(job, out),
                  on_stage=lambda label, name: heard.append((label, name)))
    assert got == {n: n * n for n in range(7)}
    assert sorted(heard) == sorted((f"job {n}", "squaring") for n in range(7))
    assert _no_workers_left(before)
    alone = {}
    pool.run_jobs(_square, list(range(7)), 1, lambda job, out: alone.__setitem__(job, out))
    assert alone == got


def test_a_job_that_raises_stops_the_jobs_with_its_exception(tmp_path):
    """The exception crosses from the worker (a full disk's OSError here); the workers still running are stopped (not
    waited for: none of the long jobs finished), none is left, and jobs queued behind never start."""
    before, got = set(children(os.getpid())), []
    with pytest.raises(OSError, match="No space left"):
        pool.run_jobs(_fails_on_three, _jobs(list(range(8)), tmp_path), 2, lambda job, out: got.append(job[0]))
    assert set(got) <= {0, 1, 2} and 7 not in got
    assert _finished(tmp_path) <= {0, 1, 2}, "a job running when the pool stopped was waited for"
    assert _no_workers_left(before)


def test_a_record_that_raises_stops_the_workers(tmp_path):
    """The parent's own failure (results.json on a full disk) stops the pool: no hang (the long jobs did not run to
    their end), no worker left."""
    before = set(children(os.getpid()))

    def record(job, out):
        if job[0] == 1:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        pool.run_jobs(_fails_on_three, _jobs([0, 1, 4, 5], tmp_path), 2, record)
    assert not _finished(tmp_path) & {4, 5}, "a job running when the pool stopped was waited for"
    assert _no_workers_left(before)


def test_a_worker_that_dies_is_named_not_waited_for():
    """A worker killed mid-job (SIGKILL, as by the OOM killer) sends nothing back: WorkerLost names the job and the
    exit status instead of a wait for ever; the others stop, none is left."""
    before = set(children(os.getpid()))
    with pytest.raises(WorkerLost, match=r"exit status -9\) while running 2"):
        pool.run_jobs(_dies_on_two, [0, 1, 2, 3], 2, lambda job, out: None)
    assert _no_workers_left(before)


def test_a_signal_keeps_the_outcomes_that_arrived_and_stops_the_workers(tmp_path):
    """Interrupted in the parent (its SIGINT / SIGTERM handler) stops the workers (the long jobs did not run to their
    end); what finished before is recorded."""
    before, got = set(children(os.getpid())), []

    def poll():
        if got:
            raise Interrupted(signal.SIGTERM)

    with pytest.raises(Interrupted):
        pool.run_jobs(_fails_on_three, _jobs([0, 4, 5, 6], tmp_path), 2, lambda job, out: got.append(job[0]),
                      on_poll=poll)
    assert got == [0] and _finished(tmp_path) == {0}
    assert _no_workers_left(before)


def _sleeps(job: tuple[int, str]) -> int:
    n, folder = job
    Path(folder, f"started{n}").touch()  # the test kills the parent only once both jobs are under way
    time.sleep(600)  # a long stage that sends the parent nothing
    return n


def _wait_for(condition, seconds: float) -> bool:
    """Poll condition() until it holds or `seconds` pass (a hang guard, not a measurement)."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return condition()


def test_workers_end_when_their_parent_is_killed(tmp_path):
    """kill -9 of the parent (gvd run): its workers get SIGTERM from the kernel (Linux's parent-death signal) and end,
    instead of training on for no one until their next message fails. The parent is killed once both workers are
    inside their job (their files), however long a loaded machine took to start them."""
    script = ("import sys, test_pool\nfrom bench.core import pool\nprint('go', flush=True)\n"
              f"pool.run_jobs(test_pool._sleeps, [(0, {str(tmp_path)!r}), (1, {str(tmp_path)!r})], 2, "
              "lambda job, out: None)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert parent.stdout.readline().strip() == "go"
        assert _wait_for(lambda: len(list(tmp_path.glob("started*"))) == 2, 300), "the workers never started a job"
        workers = [p for p in children(parent.pid) if _is_worker(p)]
        assert len(workers) == 2
    finally:
        parent.kill()
        parent.wait()
    assert _wait_for(lambda: not any(alive(p) for p in workers), 120), "workers outlived their killed parent"


def _is_worker(pid: int) -> bool:
    return b"spawn_main" in cmdline(pid)
