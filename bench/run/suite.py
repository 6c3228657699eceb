"""`gvd run`: train every model of a suite on every dataset and seed, score them, write the run folder.

Each (dataset, model, seed) is one run entry in results.json. results.json is rewritten (atomically) after every
entry, so an interrupted suite keeps what it finished. A run that raises is recorded as "failed" with its error and
the suite goes on.
"""

import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bench.config import SuiteConfig, to_dict
from bench.core import distributed, stages
from bench.core.distributed import resolve_device  # noqa: F401 -- the CLI's and the tests' way in
from bench.core.executor import Executor, Shipping, execute
from bench.core.files import WriteError
from bench.core.guard import Interrupted, error_text, interrupted_entry, on_abandon, stop_on_signals
from bench.core.pool import torch_threads
from bench.core.results import failed_entry, new_results
from bench.core.rundir import RunDir
from bench.data.images import DataError
from bench.data.registry import dataset_info
from bench.errors import WorkerLost
from bench.families import resolve
from bench.report import build
from bench.report.tables import metric_rows
from bench.run.images import run_image_dataset, warm_up
from bench.run.mixtures import run_mixture
from bench.run.resume import FINISHED, finished
from bench.speed.throughput import image_throughput, measured_families, run_entry_throughput


def cache_dir() -> Path:
    """Where trained judges are cached across runs: $GVD_CACHE, else ~/.cache/gan-vs-diffusion. A cache that cannot
    be written (a read-only disk, a path through a file) is skipped with one warning line: the run goes on with a
    cache of its own in the temporary folder, which $GVD_CACHE then names, so the worker processes started after
    it share it and say nothing more."""
    chosen = Path(os.environ.get("GVD_CACHE") or Path.home() / ".cache" / "gan-vs-diffusion")
    if _writable(chosen):
        return chosen
    fallback = Path(tempfile.gettempdir()) / f"gan-vs-diffusion-cache-{os.getuid()}"
    if not _writable(fallback):  # nowhere to cache: the writes fail later naming the file
        return chosen
    print(f"gvd: warning: the cache {chosen} cannot be written; skipping it (judges and readers are cached in "
          f"{fallback} for this run)", file=sys.stderr)
    os.environ["GVD_CACHE"] = str(fallback)
    return fallback


def _writable(folder: Path) -> bool:
    """folder exists (made if need be) and a file can be written in it, tried by writing one: os.access says yes to
    root on a read-only mount."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            return True
    except OSError:
        return False


def planned(cfg: SuiteConfig, families: list) -> list[tuple]:
    """Every (dataset, family, seed) the suite runs, in the order results.json lists them."""
    keys = []
    for benchmark, section in (("mixture", cfg.mixtures), ("image", cfg.images)):
        if section is not None:
            names = [f.name for f in families if f.runs_on(benchmark)]
            keys += [(d, m, s) for d in section.datasets for s in cfg.seeds for m in names]
    return keys


def _key(entry: dict) -> tuple:
    return entry["dataset"], entry["model"], entry["seed"]


def _add(run: RunDir, results: dict, entries: list[dict], order: list[tuple]) -> None:
    """Put entries into results (replacing any of the same key), in planned order, and rewrite results.json."""
    new = {_key(e) for e in entries}
    results["runs"] = [r for r in results["runs"] if _key(r) not in new] + entries
    results["runs"].sort(key=lambda r: order.index(_key(r)) if _key(r) in order else len(order))
    run.write_results(results)


# ---------------------------------------------------------------- jobs

# What one job costs: wall seconds on one thread of the project's 2-core CPU with a second job beside it (bf16),
# measured on the quick preset (results.json "stages", 3 seeds). They set the order the jobs start in (longest first,
# so the last to finish is a short one) and the progress line's estimate of the time left; scaled by the preset's
# steps. A family not listed costs as a GAN does.
JOB_SECONDS = {"diffusion": 650.0, "gan": 130.0}
CALIBRATION_SECONDS = 10.0  # a calibration row's job: no training, one evaluation
MIXTURE_SECONDS = 25.0  # one 2D run (2,000 steps)


@dataclass(frozen=True)
class Job:
    """One unit of `gvd run`'s work, run in a worker process or in this one: a 2D run (one family), or the image
    runs of one (dataset, seed) for some families (each model family alone; the calibration rows together; every
    family together on the compute budget axis, where the reference family's FLOPs set the others' budget)."""

    benchmark: str  # "mixture" or "image"
    dataset: str
    seed: int
    families: tuple[str, ...]
    seconds: float  # expected (JOB_SECONDS)

    @property
    def label(self) -> str:
        return f"{self.dataset} seed {self.seed} {'+'.join(self.families)}"


def _image_seconds(family) -> float:
    return CALIBRATION_SECONDS if family.role == "calibration" else JOB_SECONDS.get(family.name, JOB_SECONDS["gan"])


def plan_jobs(cfg: SuiteConfig, families: list, done: dict) -> list[Job]:
    """Every job for the (dataset, family, seed) entries not in `done`, longest first (planned order among equals)."""
    jobs = []
    if cfg.mixtures is not None:
        scale = cfg.mixtures.steps / 2000
        names = [f for f in families if f.runs_on("mixture")]
        jobs += [Job("mixture", d, s, (f.name,), MIXTURE_SECONDS * scale) for d in cfg.mixtures.datasets
                 for s in cfg.seeds for f in names if (d, f.name, s) not in done]
    if cfg.images is not None:
        scale = cfg.images.steps / 1600
        mine = [f for f in families if f.runs_on("image")]
        for d in cfg.images.datasets:
            for s in cfg.seeds:
                todo = [f for f in mine if (d, f.name, s) not in done]
                if not todo:
                    continue
                if cfg.images.budget == "compute":
                    groups = [mine]  # one job: the reference trains first (bench/run/images.py train_families)
                else:
                    groups = [[f] for f in todo if f.role == "model"] + [[f for f in todo if f.role != "model"]]
                jobs += [Job("image", d, s, tuple(f.name for f in g), scale * sum(map(_image_seconds, g)))
                         for g in groups if g]
    return sorted(jobs, key=lambda j: -j.seconds)


def _mixture(job: Job, family, cfg: SuiteConfig, device, run: RunDir) -> tuple[list[dict], dict]:
    try:
        entry, points = run_mixture(job.dataset, family, job.seed, cfg.mixtures, device, run, progress=False)
        return [entry], points
    except WriteError:
        raise  # a full disk or an unwritable folder: no later run could be kept either, so the suite stops
    except Exception as exc:  # noqa: BLE001 -- a broken run is a result, not the end of the suite
        if distributed.world() > 1:  # [ddp] the other ranks may be inside a collective: stop (distributed.session)
            raise
        return [failed_entry(job.dataset, family.name, job.seed, error_text(exc), traceback.format_exc(limit=5))], {}


def _images(job: Job, families: list, cfg: SuiteConfig, device, run: RunDir) -> list[dict]:
    try:
        return run_image_dataset(job.dataset, job.seed, cfg.images, device, run, cache_dir(), families,
                                 progress=False)
    except (DataError, WriteError):
        raise  # bad user input, a full disk: stop with its one-line message
    except Exception as exc:  # noqa: BLE001 -- a broken run is a result, not the end of the suite
        if distributed.world() > 1:  # [ddp] the other ranks may be inside a collective: stop
            raise
        trace = traceback.format_exc(limit=5)
        return [failed_entry(job.dataset, f.name, job.seed, error_text(exc), trace) for f in families]


def _run_job(args, root=None) -> tuple[list[dict], dict, dict]:
    """One job, in a worker process or in this one, on cfg.job_threads torch threads (restored after): the numbers
    do not depend on how many jobs run beside it. Its files go into the run folder it names, or into `root` (a Ray
    task's own folder: bench/core/executor.py). Returns (its run entries, its 2D samples to save, its stages)."""
    job, cfg, device, folder = args
    root = folder if root is None else root
    with stages.fresh(job.label) as ledger, torch_threads(cfg.job_threads):
        families = resolve(list(job.families), cfg.user_families)
        if job.benchmark == "mixture":
            entries, points = _mixture(job, families[0], cfg, device, RunDir(root))
        else:
            entries, points = _images(job, families, cfg, device, RunDir(root)), {}
    return entries, points, ledger.record()


class Progress:
    """The one progress line of `gvd run`: the share of the jobs' expected seconds done (a running job credited with
    its elapsed time, up to 95% of its estimate), the stage each running job is in, and the time left."""

    def __init__(self, jobs: list[Job], desc: str):
        self.expected = {j.label: j.seconds for j in jobs}
        self.running: dict[str, tuple[float, str]] = {}  # label -> (when it started, its stage)
        self.done, self.count, self.total = 0.0, 0, len(jobs)
        self.bar = tqdm(total=max(1, round(sum(self.expected.values()))), desc=desc, smoothing=0,
                        bar_format=self.WARMING, disable=not distributed.is_main())

    # the time left is the rate so far extrapolated: until 1% is done (the workers starting, the first stages
    # reported) it would read hundreds of hours, so it shows as "?"
    WARMING = "{desc}: {percentage:3.0f}%|{bar}| {elapsed}<?{postfix}"
    RUNNING = "{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}"

    def stage(self, label: str, name: str) -> None:
        self.running[label] = (self.running.get(label, (time.monotonic(), ""))[0], name)
        self.poll()

    def finished(self, job: Job) -> None:
        self.running.pop(job.label, None)
        self.done += job.seconds
        self.count += 1
        self.poll()

    def poll(self) -> None:
        now = time.monotonic()
        credit = sum(min(now - t0, 0.95 * self.expected.get(label, 0.0)) for label, (t0, _) in self.running.items())
        self.bar.update(max(0.0, min(self.done + credit, self.bar.total) - self.bar.n))
        if self.bar.n >= 0.01 * self.bar.total:
            self.bar.bar_format = self.RUNNING
        doing = "; ".join(f"{label}: {name}" for label, (_, name) in self.running.items())
        self.bar.set_postfix_str(f"{self.count}/{self.total} jobs" + (f" | {doing}" if doing else ""))

    def close(self) -> None:
        self.bar.close()


def run_all(cfg: SuiteConfig, run: RunDir, results: dict, device: torch.device, executor: Executor, families: list,
            done: dict) -> None:
    """Every job (plan_jobs) on the executor (this machine's pool, `workers` at a time, or Ray); before them, what
    they share (each image dataset's judge, text encoder and reference features: run/images.py warm_up) on every core
    of this process, shipped to the nodes of a cluster; results.json rewritten after each job."""
    order, jobs = planned(cfg, families), plan_jobs(cfg, families, done)
    images, cached = {j.dataset for j in jobs if j.benchmark == "image"}, []
    for dataset in [d for d in (cfg.images.datasets if cfg.images else []) if d in images]:
        tqdm.write(f"image benchmark: {dataset}: the judge and readers, the text encoder, the reference features and "
                   "the known-answer panel (cached after the first run)")
        panel, files = warm_up(dataset, cfg.images, device, cache_dir())
        cached += files
        if panel is not None:
            results.setdefault("panel", {})[dataset] = panel
    shipping = Shipping(run.root, partial(_states, run), ("state",), cache_dir, tuple(cached))
    progress = Progress(jobs, f"gvd run {cfg.name}")

    def record(args, outcome):
        job, (entries, points, ledger) = args[0], outcome
        stages.LEDGER.merge(ledger)
        for entry in entries:
            if entry["status"] == "failed":
                tqdm.write(f"run {entry['dataset']}/{entry['model']}/seed {entry['seed']} failed: {entry['error']}")
        for label, x in points.items():
            run.save_points(job.dataset, job.seed, job.families[0], label if len(points) > 1 else None, x)
        _add(run, results, entries, order)
        for entry in entries:  # in results.json: a resume keeps it and never needs its training's state
            if entry["status"] in FINISHED:
                run.remove_states(entry["dataset"], entry["seed"], entry["model"])
        progress.finished(job)

    try:
        execute(executor, _run_job, [(job, cfg, device, run.root) for job in jobs], record, shipping,
                cfg.job_threads, device.type == "cuda", progress.stage, progress.poll)
    finally:
        progress.close()


def _states(run: RunDir, args) -> list[Path]:
    """The saved training states a job resumes from (what a Ray task on another machine is sent)."""
    job = args[0]
    return [p for family in job.families for p in run.state_files(job.dataset, job.seed, family)]


def measure_throughput(cfg: SuiteConfig, run: RunDir, results: dict, device: torch.device) -> None:
    """The image models' speed (fresh networks of this run's configs) into results.json and each scored entry of a
    family it measures. A measurement that raises is recorded as {"error"} and changes no entry."""
    tqdm.write("throughput of the image models")
    try:
        channels = dataset_info(cfg.images.datasets[0]).channels
        results["throughput"] = image_throughput(cfg.images, device, channels=channels,
                                                 budget_s=cfg.throughput_budget_s)
    except Exception as exc:  # noqa: BLE001 -- a speed measurement that fails is a result, not a lost run
        tqdm.write(f"throughput failed: {error_text(exc)}")
        results["throughput"] = {"error": error_text(exc)}
    run.write_results(results)


def entry_speeds(cfg: SuiteConfig, results: dict) -> None:
    """Every scored image entry of a family the throughput stage measured gets its speed fields: those measured in
    this invocation and those re-run by a resume whose throughput was measured before (never half an entry)."""
    measured = measured_families(results.get("throughput") or {})
    for entry in results["runs"]:
        speed = entry.get("throughput") or {}
        if (cfg.images is not None and entry["dataset"] in cfg.images.datasets and entry["model"] in measured
                and "nfe" in speed and "sampling" not in speed):
            speed.update(run_entry_throughput(results["throughput"], entry["model"]))


def finish(run: RunDir, results: dict, ledger: stages.Ledger, started: float, workers: int, earlier: dict) -> None:
    """results.json with the stages' times, metrics.csv and the report (a report that cannot be built is one line on
    stderr, the results stay); then the report's own seconds in results.json ("stages" -> "report", beside the table
    the report shows, so `gvd report` rebuilds the same page)."""
    results["stages"] = stage_record(ledger, started, workers, results, earlier)
    run.write_results(results)
    run.write_metrics(metric_rows(results))
    wall, cpu, written = time.perf_counter(), time.process_time(), True
    try:
        build.write_report(run.root, results)
    except Exception as exc:  # noqa: BLE001 -- results.json is written; `gvd report` can retry
        tqdm.write(f"report failed ({error_text(exc)}); results.json is complete, rebuild the report with "
                   f"`gvd report {run.root}`", file=sys.stderr)
        written = False
    results["stages"]["report"] = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                                   "written": written}
    try:
        run.write_results(results)
    except WriteError as exc:  # the results are on disk already (above): only the report's seconds are not
        if written:  # else the report's own line has named the write that failed: one line for one full disk
            tqdm.write(f"the report's time is not in results.json ({exc})", file=sys.stderr)


def stage_record(ledger: stages.Ledger, started: float, workers: int, results: dict, earlier: dict) -> dict:
    """results.json "stages": the wall time, how the jobs ran, and the seconds of every stage; `earlier`, the stages
    of the run being resumed, added in."""
    total = stages.Ledger()
    total.merge(earlier.get("stages", {}))
    total.merge(ledger.record())
    return {"wall_s": earlier.get("wall_s", 0.0) + time.perf_counter() - started,
            "invocations": earlier.get("invocations", 0) + 1, "workers": workers,
            "job_threads": results["config"].get("job_threads", 1), "cpu_count": os.cpu_count(),
            "stages": total.record()}


def _interrupt_the_rest(run: RunDir, results: dict, order: list[tuple]) -> str:
    """Every planned entry not in results recorded as interrupted, results.json rewritten; what to tell the user."""
    have = {_key(r) for r in results["runs"]}
    _add(run, results, [interrupted_entry(*k) for k in order if k not in have], order)
    return f"finished runs are in {run.results_path}, `gvd run --resume {run.root}` continues"


def run_suite(cfg: SuiteConfig, run_dir: Path, device: torch.device, workers: int = 1,
              previous: dict | None = None, study: str | None = None, executor: Executor | None = None) -> dict:
    """Run every benchmark of the suite with every family of its config: every job (plan_jobs) `workers` at a time
    in separate processes, or on the executor given (bench/core/executor.py: this machine's pool, or Ray). previous:
    the results.json of the run being resumed (its finished entries are kept, not rerun). SIGINT / SIGTERM raise
    Interrupted after results.json, metrics.csv and the report have recorded what finished and marked the rest
    "interrupted"."""
    started = time.perf_counter()
    families = resolve(cfg.families, cfg.user_families)
    run = RunDir(run_dir)
    if distributed.is_main():  # [ddp] rank 0 alone writes
        run.root.mkdir(parents=True, exist_ok=True)
    config = to_dict(cfg)
    run.write_config(config)
    name = str(device) if device.type == "cpu" else torch.cuda.get_device_name(device)
    results = new_results(cfg.name, config, name, {f.name: f.record() for f in families})
    done = finished(previous or {})
    results["runs"] = list(done.values())
    if "error" not in (previous or {}).get("throughput", {"error": None}):
        results["throughput"] = previous["throughput"]  # measured already
    if (previous or {}).get("panel"):
        results["panel"] = previous["panel"]  # a dataset with jobs left recomputes its own (from the cache)
    workers = 1 if distributed.world() > 1 else workers  # [ddp] the ranks run the jobs together, one at a time
    executor = Executor("local", 1) if distributed.world() > 1 else executor or Executor("local", workers)
    # [ddp] world size and backend of the run; where its jobs ran (this machine's pool, or a Ray cluster)
    results["distributed"] = {**distributed.describe(), "executor": executor.kind}
    if study or (previous or {}).get("study"):
        results["study"] = study or previous["study"]  # the stability study the verdict shows (gvd run --study)
    earlier = (previous or {}).get("stages") or {}  # the earlier invocations' times, added in
    order = planned(cfg, families)
    with stop_on_signals(), stages.fresh("gvd run") as ledger:
        # a training that never stops, even after the grace: what finished stays, the rest is interrupted
        on_abandon(partial(_interrupt_the_rest, run, results, order) if distributed.is_main() else None)
        try:
            run_all(cfg, run, results, device, executor, families, done)
            if cfg.images is not None and cfg.throughput_budget_s > 0 and "throughput" not in results:
                with distributed.alone() as mine, stages.stage("throughput"):  # [ddp] rank 0 measures, the others wait
                    if mine:
                        measure_throughput(cfg, run, results, device)
            entry_speeds(cfg, results)
        except WriteError as exc:  # a full disk: what finished is in results.json (as far as it could be written)
            kept = (f"finished runs are in {run.results_path}, " if run.results_path.is_file() else "")
            raise WriteError(f"{exc}; {kept}`gvd run --resume {run.root}` continues once it can be written") from None
        except (Interrupted, WorkerLost) as stop:  # a signal, a worker killed: the rest is marked interrupted
            if distributed.is_main():  # [ddp] rank 0 records (and says so) for every rank
                tqdm.write(f"{stop}: recording what finished in {run.results_path}")
            _interrupt_the_rest(run, results, order)
            finish(run, results, ledger, started, workers, earlier)
            if isinstance(stop, WorkerLost):
                raise WorkerLost(f"{stop}; what finished is in {run.results_path}, `gvd run --resume {run.root}` "
                                 "goes on") from None
            raise
        finish(run, results, ledger, started, workers, earlier)
    distributed.barrier()  # [ddp] the others wait for rank 0's files
    return results
