"""Where the jobs of `gvd run` and `gvd study` run: this machine's process pool (bench/core/pool.py, the default) or a
Ray cluster (`--executor ray`, the `ray` extra).

    executor = choose("ray", device, workers=None, address="auto")
    with session(executor):
        execute(executor, fn, jobs, record, Shipping(root, ...), threads=1, gpu=False)

A job is fn(job): it seeds itself and sets its own threads, so its numbers do not depend on where it runs. It writes
its files (training states, checkpoints, histories, samples) under the folder its job names, or, called as
fn(job, root=R), under R: the local pool runs fn(job) in the run folder itself; on Ray every job runs in a folder of
its own on whichever node runs it, and the driver (the process where gvd runs, as rank 0 under torchrun) alone
writes the run folder.

On Ray each job is a task asking for `threads` CPUs and, on CUDA, one GPU. What travels, through Ray's object store:

    driver -> every task   the files the jobs share from the cache (Shipping.shared: the judge, the text encoder, the
                           reference features, made once by the driver), put in the store once and written into the
                           node's own cache before the job runs, so no node makes them again; and the job's own
                           inputs (Shipping.inputs: its saved training states, for a resumed run)
    task -> driver         every file the job wrote, with its result; the driver writes them into the run folder
                           (atomic writes) before it records the result; and, while the job runs, each file of the
                           `keep` folders (its training states) as it changes, to a small actor on the driver's node
                           (the mailbox) and from there into the run folder

So the nodes need no shared filesystem. A task whose worker or node is lost is retried by Ray (RETRIES times) on any
node, from the latest training state its mailbox holds (the state a training saves on its interval, at most a tenth of
its steps old), and the driver says so; on the CPU the retried job's numbers equal an unbroken run's. A task stopped by
SIGTERM (its node shut down) saves its training's state at the end of the step and sends it before its worker exits,
where the node can still send. A signal to the driver (Interrupted) cancels this run's tasks only (ray.cancel:
SIGINT in the task, so a training saves its state at its step's end), waits STOP_SECONDS for them, writes what they
sent, force-cancels any left, and propagates; the cluster runs on. The stages the jobs enter reach on_stage through
the mailbox.
"""

import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.std import tqdm

from bench.core import pool, stages
from bench.core.files import atomic_write
from bench.core.guard import Interrupted, exit_worker, hold_signals, stop_on_signals
from bench.core.rundir import RunDir
from bench.errors import UserError, WorkerLost

EXTRA = 'pip install -e ".[ray]"'
KINDS = ("local", "ray")
RETRIES = 3  # tries of a Ray task after the first, when its worker or node is lost
STOP_SECONDS = pool.STOP_SECONDS  # how long cancelled tasks may take to save their trainings' states
POLL_SECONDS = 0.5  # the longest the driver waits on the tasks between on_poll calls (and signal checks)
SEND_SECONDS = 1.0  # how often a task looks for changed files in its `keep` folders
SEND_TIMEOUT = 10.0  # how long a stopped task waits for its last files to reach the mailbox
CONNECT_SECONDS = 10.0  # how long --address may take to answer


@dataclass(frozen=True)
class Executor:
    kind: str = "local"  # "local": this machine's process pool; "ray": a Ray cluster
    workers: int = 1  # local: jobs at once; ray without an address: the CPUs of the Ray that gvd starts (0: all)
    address: str | None = None  # ray: an existing cluster, HOST:PORT or "auto"; None: a Ray of its own on this machine
    gpus: tuple[str, ...] = ()  # local with CUDA: the visible devices, one worker pinned to each


def visible_gpus() -> tuple[str, ...]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES names them (its own list when set)."""
    count = torch.cuda.device_count()
    given = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return tuple(given[:count]) if given else tuple(str(i) for i in range(count))


def choose(kind: str, device, workers: int | None = None, address: str | None = None) -> Executor:
    """The executor of --executor KIND with --workers and --address (UserError for a combination that cannot be).
    Local: `workers` at once, default one per CPU core, or on CUDA one per visible GPU, each pinned to its own."""
    if kind not in KINDS:
        raise UserError(f"unknown executor {kind!r}; choose from {', '.join(KINDS)}")
    if workers is not None and workers < 1:
        raise UserError("--workers must be at least 1")
    if kind == "local":
        if address is not None:
            raise UserError("--address names a Ray cluster: it needs --executor ray")
        gpus = visible_gpus() if torch.device(device).type == "cuda" else ()
        return Executor("local", workers or len(gpus) or os.cpu_count() or 1, None, gpus)
    _ray()  # before anything is written: without the extra this is the one line that names it
    if address is not None and workers is not None:
        raise UserError("--workers sizes this machine's pool or the Ray that gvd starts; on a cluster (--address) "
                        "its CPUs and GPUs decide how many jobs run at once")
    return Executor("ray", workers or 0, address)


def _ray():
    """The ray module, or UserError naming the extra that installs it."""
    try:
        import ray  # optional: the `ray` extra, needed by --executor ray alone
    except ImportError:
        raise UserError(f"--executor ray needs Ray, which is not installed: {EXTRA}") from None
    return ray


@contextlib.contextmanager
def session(executor: Executor):
    """Within the block, this process is a Ray driver (for --executor ray; nothing for local): connected to the
    cluster at executor.address, or to a Ray of its own started on this machine. After it: a Ray it started is shut
    down; a cluster it joined runs on (the driver only disconnects), as does a connection the caller had made. Enter
    it before guard.stop_on_signals: ray.init sets a SIGTERM handler of its own."""
    if executor.kind != "ray":
        yield
        return
    ray = _ray()
    if ray.is_initialized():  # the caller's own connection (a notebook, a test): used, and left as it is
        yield
        return
    if executor.address not in (None, "auto"):
        _answers(executor.address)
    options = {"address": executor.address} if executor.address else {
        "address": "local", "num_cpus": executor.workers or None, "include_dashboard": False}
    sigterm = signal.getsignal(signal.SIGTERM)  # ray.init sets its own; this process's comes back after
    try:
        ray.init(**options, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        signal.signal(signal.SIGTERM, sigterm)
        where = f"--address {executor.address}" if executor.address else "a local Ray"
        raise UserError(f"{where}: could not start or reach Ray ({' '.join(str(exc).split())[:200]})") from None
    try:
        yield
    finally:
        ray.shutdown()
        signal.signal(signal.SIGTERM, sigterm)


def _answers(address: str) -> None:
    """UserError unless something listens at HOST:PORT (ray.init would wait there for minutes, retrying)."""
    host, _, port = address.rpartition(":")
    if "://" in address:  # a ray:// client address: Ray's own check
        return
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise UserError(f"--address {address}: no Ray cluster answers there ({why}); `ray start --head` prints the "
                        "address of the one it starts") from None


@dataclass(frozen=True)
class Shipping:
    """What a job on another machine needs, and where its files go (module docstring)."""

    root: Path  # the driver's folder that the jobs' files land in (the run folder, the study folder)
    inputs: Callable = field(default=lambda job: [])  # job -> paths under root it reads (its saved states)
    keep: tuple[str, ...] = ()  # folders under root whose files a retried job starts from, sent back as they change
    cache: Callable | None = None  # () -> the cache folder of whichever machine calls it (a module-level function)
    shared: tuple[Path, ...] = ()  # files under cache() that the jobs read, made by the driver before them


def execute(executor: Executor, fn, jobs: list, record, shipping: Shipping, threads: int = 1, gpu: bool = False,
        on_stage=None, on_poll=None, label=None) -> None:
    """record(job, fn(job)) for every job as it finishes (pool.run_jobs's contract: the same record, stages, polls,
    stops and WorkerLost), on this machine's pool or on Ray with `threads` CPUs and, with gpu, one GPU per job."""
    if executor.kind == "local":
        pool.run_jobs(fn, jobs, executor.workers, record, on_stage, on_poll, label, gpus=executor.gpus)
        return
    _run_ray(fn, jobs, record, shipping, {"num_cpus": threads, "num_gpus": 1 if gpu else 0}, on_stage, on_poll,
             label or pool.job_label)


# ---------------------------------------------------------------- Ray: the driver


def _run_ray(fn, jobs: list, record, shipping: Shipping, resources: dict, on_stage, on_poll, label) -> None:
    ray = _ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # optional: the `ray` extra

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    mailbox = ray.remote(num_cpus=0, max_restarts=0)(Mailbox).options(scheduling_strategy=here).remote()
    run_dir = RunDir(shipping.root)
    cache = shipping.cache() if shipping.cache is not None else None
    shared = ray.put({p.relative_to(cache).as_posix(): p.read_bytes() for p in shipping.shared if p.is_file()})
    _warn_unfit(ray, resources)
    task = ray.remote(_task)
    running = {}  # ObjectRef -> (key, job)
    try:
        for key, job in enumerate(jobs):
            mine = {run_dir.relative(p): p.read_bytes() for p in map(Path, shipping.inputs(job)) if p.is_file()}
            named = task.options(**resources, max_retries=RETRIES, retry_exceptions=False, name=f"gvd: {label(job)}")
            with _held():
                running[named.remote(fn, job, key, mine, shared, mailbox, shipping.keep, shipping.cache)] = (key, job)
        while running:
            with _held():
                ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
                _deliver(ray, mailbox, run_dir, running, on_stage, label)
                for ref in ready:
                    key, job = running.pop(ref)
                    status, outcome = _collect(ray, ref, job, run_dir, label)
                    if status != "done":  # a task stopped by a SIGINT that was not the driver's cancel
                        raise WorkerLost(f"the Ray task of {label(job)} was stopped by a signal ({outcome})")
                    record(job, outcome)
            if on_poll is not None:
                on_poll()
    except BaseException as stop:
        _stop(ray, running, mailbox, run_dir, record if isinstance(stop, Interrupted) else None, label)
        raise
    finally:
        ray.kill(mailbox)


def _warn_unfit(ray, resources: dict) -> None:
    """One line when no node of the cluster has what a job asks for: Ray would wait, silently, for one to join."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not any(r.get("CPU", 0) >= resources["num_cpus"] and r.get("GPU", 0) >= resources["num_gpus"] for r in nodes):
        gpu = " and a GPU" if resources["num_gpus"] else ""
        tqdm.write(f"no node of the Ray cluster has {resources['num_cpus']} CPU(s){gpu}, what each job asks for "
                   "(job_threads, --device): the jobs wait until such a node joins")


def _collect(ray, ref, job, run_dir: RunDir, label) -> tuple[str, object]:
    """A finished task's (status, outcome), its files written into the run folder first. The job's own exception is
    re-raised as itself (as the pool does); a task lost more often than it is retried is WorkerLost."""
    try:
        (status, outcome), files = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        raise exc.cause from None
    except ray.exceptions.RayError as exc:  # lost more often than Ray retries it, or cancelled from outside
        raise WorkerLost(f"the Ray task of {label(job)} ended without its result ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:160]}; a lost task is retried {RETRIES} times)") from None
    for name, data in files.items():
        run_dir.write_file(name, data)
    return status, outcome


def _deliver(ray, mailbox, run_dir: RunDir, running: dict, on_stage, label) -> None:
    """What the running tasks sent to the mailbox: their changed `keep` files into the run folder (those of a job
    whose result has arrived are older than the files it returned, and are dropped), their stages to on_stage, and
    a line for each task that Ray started again."""
    news, entered, retries = ray.get(mailbox.take.remote())
    alive = {key: job for key, job in running.values()}
    for key, files in news:
        if key in alive:
            for name, data in files.items():
                run_dir.write_file(name, data)
    for label_, name in entered if on_stage is not None else []:
        on_stage(label_, name)
    for key, names in retries:
        start = ", ".join(Path(n).name for n in names) or "the start (no training state saved yet)"
        tqdm.write(f"{label(alive[key]) if key in alive else key}: its Ray task was lost; Ray runs it again, from "
                   f"{start}")


def _stop(ray, running: dict, mailbox, run_dir: RunDir, record, label) -> None:
    """Cancel this run's tasks (SIGINT in a running task: its training saves its state at the step's end); for
    STOP_SECONDS write what they send back (with `record`, an Interrupted driver's, a result that arrives is kept);
    then their latest states from the mailbox; a task still there is force-cancelled. The cluster runs on."""
    deadline = time.monotonic() + STOP_SECONDS
    with contextlib.suppress(Exception, Interrupted):  # a second Ctrl-C: no more waiting
        with _held():
            for ref in running:
                ray.cancel(ref)
        while running and time.monotonic() < deadline:
            with _held():
                ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
                _deliver(ray, mailbox, run_dir, running, None, label)
                for ref in ready:
                    _, job = running.pop(ref)
                    with contextlib.suppress(Exception):
                        status, outcome = _collect(ray, ref, job, run_dir, label)
                        if status == "done" and record is not None:
                            record(job, outcome)
        with _held():
            _deliver(ray, mailbox, run_dir, running, None, label)
    for ref in running:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)


@contextlib.contextmanager
def _held():
    """A SIGINT / SIGTERM that arrives inside Ray's own calls waits for the block's end (guard.hold_signals): Ray's
    compiled code cannot pass on the exception the handler raises (it ends in SystemError). A second Ctrl-C, raised at
    once, is recovered from that SystemError."""
    try:
        with hold_signals():
            yield
    except SystemError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, Interrupted):
            raise cause from None
        raise


class Mailbox:
    """The driver's end of the running tasks (a Ray actor on the driver's node, so a lost node does not take it
    along): each job's latest `keep` files (a retried task starts from them) and what is new since the driver last
    took it, and the stages the tasks enter."""

    def __init__(self):
        self.latest: dict[int, dict] = {}
        self.news: list[tuple[int, dict]] = []
        self.stages: list[tuple[str, str]] = []
        self.starts: dict[int, int] = {}
        self.retries: list[tuple[int, list]] = []  # (key, the files a retried task starts from)

    def send(self, key: int, files: dict) -> None:
        self.latest.setdefault(key, {}).update(files)
        self.news.append((key, files))

    def stage(self, label: str, name: str) -> None:
        self.stages.append((label, name))

    def start(self, key: int) -> dict:
        """A task starts: the latest files of its job (a retried task's, else none)."""
        self.starts[key] = self.starts.get(key, 0) + 1
        if self.starts[key] > 1:
            self.retries.append((key, sorted(self.latest.get(key, {}))))
        return self.latest.get(key, {})

    def take(self) -> tuple[list, list, list]:
        out, self.news, self.stages, self.retries = (self.news, self.stages, self.retries), [], [], []
        return out


# ---------------------------------------------------------------- Ray: the task


def _task(fn, job, key: int, inputs: dict, shared: dict, mailbox, keep: tuple, cache) -> tuple[tuple, dict]:
    """One job in a Ray worker, in a folder of its own: the shared cache files written into this node's cache, the
    job's inputs (or the newer files its mailbox holds: a retry's) into the folder, then fn(job, root=folder) with
    SIGINT (ray.cancel) and SIGTERM raising Interrupted, held to a training's step end. Returns ((status, outcome),
    every file in the folder): ("done", fn's result) or ("interrupted", signal name)."""
    import ray  # optional: the `ray` extra (this runs in a Ray worker)

    root = Path(tempfile.mkdtemp(prefix="gvd-job-"))
    stages.listen(lambda label, name: mailbox.stage.remote(label, name))
    try:
        if cache is not None:
            _unpack(Path(cache()), shared)
        _unpack(root, {**inputs, **ray.get(mailbox.start.remote(key))})
        with _sending(RunDir(root), keep, lambda files: mailbox.send.remote(key, files)) as send:
            with stop_on_signals():
                try:
                    outcome = ("done", fn(job, root=root))
                except Interrupted as stop:
                    with contextlib.suppress(Exception):  # the state the training saved on the signal, if it can go
                        ray.get(send(), timeout=SEND_TIMEOUT)
                    if stop.signum == signal.SIGTERM:  # the node is going away: Ray retries the job from that state
                        exit_worker(stop.exit_code)
                    outcome = ("interrupted", str(stop))
        return outcome, RunDir(root).files()
    finally:
        stages.listen(None)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _sending(run_dir: RunDir, keep: tuple, post):
    """Within the block, a thread posts the changed files of the `keep` folders every SEND_SECONDS; yields send(),
    which posts them (or nothing) now and returns the post's reference, to wait on."""
    taken: dict = {}
    lock, done = threading.Lock(), threading.Event()

    def send(always: bool = True):
        with lock:
            files = {name: data for folder in keep for name, data in run_dir.files(folder, taken).items()}
            return post(files) if files or always else None

    def loop():
        while not done.wait(SEND_SECONDS):
            send(always=False)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield send
    finally:
        done.set()
        thread.join()


def _unpack(folder: Path, files: dict) -> None:
    """Write files {relative path: bytes} under folder (atomic), leaving a file that already holds the same bytes."""
    for name, data in files.items():
        path = folder / name
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            continue
        atomic_write(path, data)
