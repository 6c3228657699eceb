"""`gvd run`: train every model of a suite on every dataset and seed, score them, write the run folder.

Each (dataset, model, seed) is one run entry in results.json. results.json is rewritten (atomically) after every
entry, so an interrupted suite keeps what it finished. A run that raises is recorded as "failed" with its error and
the suite goes on.
"""

import multiprocessing
import os
import traceback
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bench.config import SuiteConfig, to_dict
from bench.core import distributed
from bench.core.guard import Interrupted, error_text, exit_worker, interrupted_entry, stop_on_signals, worker_signals
from bench.core.results import failed_entry, metric_rows, new_results
from bench.core.rundir import RunDir
from bench.data.images import DataError, load_image_dataset
from bench.report import build as report
from bench.run.images import FAMILIES, STATE_PARTS, run_image_dataset
from bench.run.mixtures import run_mixture
from bench.run.resume import FINISHED, finished
from bench.speed.throughput import image_throughput, run_entry_throughput


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def cache_dir() -> Path:
    """Where trained judges are cached across runs: $GVD_CACHE, else ~/.cache/gan-vs-diffusion."""
    return Path(os.environ.get("GVD_CACHE") or Path.home() / ".cache" / "gan-vs-diffusion")


def default_workers(device: torch.device) -> int:
    return 1 if device.type == "cuda" else max(1, os.cpu_count() or 1)


def _mixture_job(job) -> tuple[dict, dict]:
    """One 2D run, in a worker process or in the main one, on one thread: these MLPs are too small to gain from
    more, and one thread everywhere keeps the numbers independent of --workers."""
    dataset, model, seed, mix, device, root = job
    torch.set_num_threads(1)
    try:
        return run_mixture(dataset, model, seed, mix, device, RunDir(root), progress=False)
    except Exception as exc:  # noqa: BLE001 -- a broken run is a result, not the end of the suite
        if distributed.world() > 1:  # [ddp] the other ranks may be inside a collective: stop (distributed.session)
            raise
        return failed_entry(dataset, model, seed, f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=5)), {}


def _worker_job(job) -> tuple[dict, dict]:
    """_mixture_job in a pool worker: stopped by the parent's terminate, the training saves its state at the end of
    its step (bench/guard.worker_signals) and the worker exits at once with the shell's status."""
    try:
        return _mixture_job(job)
    except Interrupted as stop:
        exit_worker(stop.exit_code)


def planned(cfg: SuiteConfig) -> list[tuple]:
    """Every (dataset, model, seed) the suite runs, in the order results.json lists them."""
    keys = [(d, m, s) for d in cfg.mixtures.datasets for s in cfg.seeds for m in FAMILIES] if cfg.mixtures else []
    if cfg.images is not None:
        keys += [(d, m, s) for d in cfg.images.datasets for s in cfg.seeds for m in FAMILIES]
    return keys


def _key(entry: dict) -> tuple:
    return entry["dataset"], entry["model"], entry["seed"]


def _add(run: RunDir, results: dict, entries: list[dict], order: list[tuple]) -> None:
    """Put entries into results (replacing any of the same key), in planned order, and rewrite results.json."""
    new = {_key(e) for e in entries}
    results["runs"] = [r for r in results["runs"] if _key(r) not in new] + entries
    results["runs"].sort(key=lambda r: order.index(_key(r)) if _key(r) in order else len(order))
    run.write_results(results)


def _record_mixture(run: RunDir, results: dict, order: list, job: tuple, outcome: tuple) -> None:
    (dataset, model, seed, *_), (entry, points) = job, outcome
    if entry["status"] == "failed":
        tqdm.write(f"run {dataset}/{model}/seed {seed} failed: {entry['error']}")
    for label, x in points.items():
        run.save_points(dataset, seed, model, None if model == "gan" else label, x)
    _add(run, results, [entry], order)
    if entry["status"] in FINISHED:  # in results.json: a resume keeps it and never needs its training's state
        run.remove_states(dataset, seed, [model])


def _run_pool(jobs: list, workers: int, record) -> None:
    """Run jobs `workers` at a time in spawned processes, record(job, outcome) in job order. On Interrupted, record
    the jobs that had finished, terminate every worker (each training saves its state first; none is left behind)
    and re-raise."""
    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=worker_signals)  # fork after torch has
    try:                                                                                   # started threads can hang
        pending = [(job, pool.apply_async(_worker_job, (job,))) for job in jobs]
        recorded = 0
        try:
            for job, res in pending:
                while not res.ready():
                    res.wait(0.2)  # short waits: the signal handler runs between them
                record(job, res.get())
                recorded += 1
        except Interrupted:
            for job, res in pending[recorded:]:
                if res.ready() and res.successful():
                    record(job, res.get())
            raise
    finally:
        pool.terminate()
        pool.join()


def run_mixtures(cfg: SuiteConfig, run: RunDir, results: dict, device: torch.device, workers: int,
                 done: dict | None = None) -> None:
    """Every 2D (dataset, seed, model) not already in `done`, `workers` at a time; results.json rewritten after each."""
    order, done = planned(cfg), done or {}
    jobs = [(d, m, s, cfg.mixtures, device, run.root) for d in cfg.mixtures.datasets for s in cfg.seeds
            for m in FAMILIES if (d, m, s) not in done]
    bar = tqdm(total=len(jobs), desc=f"2D runs ({cfg.name})", unit="run")

    def record(job, outcome):
        _record_mixture(run, results, order, job, outcome)
        bar.update()

    try:
        if min(workers, len(jobs)) <= 1:
            for job in jobs:
                record(job, _mixture_job(job))
        else:
            _run_pool(jobs, min(workers, len(jobs)), record)
    finally:
        bar.close()


def run_images(cfg: SuiteConfig, run: RunDir, results: dict, device: torch.device, done: dict | None = None) -> None:
    """Every image (dataset, seed) whose two entries are not both in `done`: both families; results.json rewritten
    after each pair."""
    order, done = planned(cfg), done or {}
    for dataset in cfg.images.datasets:
        for seed in cfg.seeds:
            if all((dataset, m, seed) in done for m in FAMILIES):
                continue
            tqdm.write(f"image benchmark: {dataset}, seed {seed}")
            try:
                entries = run_image_dataset(dataset, seed, cfg.images, device, run, cache_dir())
            except DataError:
                raise  # bad user input: stop with its one-line message
            except Exception as exc:  # noqa: BLE001 -- a broken run is a result, not the end of the suite
                if distributed.world() > 1:  # [ddp] the other ranks may be inside a collective: stop
                    raise
                tqdm.write(f"image runs {dataset}/seed {seed} failed: {type(exc).__name__}: {exc}")
                error, trace = f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=5)
                entries = [failed_entry(dataset, m, seed, error, trace) for m in FAMILIES]
            _add(run, results, entries, order)
            if all(e["status"] in FINISHED for e in entries):  # the states are shared: the text encoder's by both
                run.remove_states(dataset, seed, STATE_PARTS)


def training_flops(entry: dict, per_image: dict, images) -> float:
    """Training FLOPs of one image run entry, counted the same way for both families (forward + backward of every
    network pass, bench/timing.count_flops): the GAN's D and G steps; the UNet's steps plus the VAE's. The shared,
    frozen text encoder is counted on neither side."""
    steps = entry["train"]["steps"]
    if entry["model"] == "gan":
        return per_image["gan"] * steps * images.batch_size
    vae = per_image["vae"] * images.vae_steps * images.vae_batch_size
    return per_image["diffusion"] * steps * images.batch_size + vae


def measure_throughput(cfg: SuiteConfig, run: RunDir, results: dict, device: torch.device) -> None:
    """The image models' speed (fresh networks of this run's configs) into results.json and each scored image entry.
    A measurement that raises is recorded as {"error"} and changes no entry."""
    tqdm.write("throughput of the image models")
    try:
        channels = load_image_dataset(cfg.images.datasets[0], 64, cfg.images.resolution, seed=0).images.shape[1]
        results["throughput"] = image_throughput(cfg.images, device, channels=channels,
                                                 budget_s=cfg.throughput_budget_s)
        per_image = {r["model"]: r["flops_per_image"] for r in results["throughput"]["rows"] if r["stage"] == "train"}
        for entry in results["runs"]:
            if entry["dataset"] in cfg.images.datasets and "nfe" in (entry.get("throughput") or {}):
                entry["throughput"].update(run_entry_throughput(results["throughput"], entry["model"]))
                entry["train"]["flops"] = training_flops(entry, per_image, cfg.images)
                for point in entry.get("curve", []):  # the curves on the compute axis too
                    point["train_flops"] = training_flops({**entry, "train": {"steps": point["step"]}}, per_image,
                                                          cfg.images)
    except Exception as exc:  # noqa: BLE001 -- a speed measurement that fails is a result, not a lost run
        tqdm.write(f"throughput failed: {error_text(exc)}")
        results["throughput"] = {"error": error_text(exc)}
    run.write_results(results)


def finish(run: RunDir, results: dict) -> None:
    """metrics.csv and the report; a report that cannot be built is one line on stderr, the results stay."""
    run.write_metrics(metric_rows(results))
    try:
        report.write_report(run.root, results)
    except Exception as exc:  # noqa: BLE001 -- results.json is written; `gvd report` can retry
        tqdm.write(f"report failed ({error_text(exc)}); results.json is complete, rebuild with `gvd report`")


def run_suite(cfg: SuiteConfig, run_dir: Path, device: torch.device, workers: int = 1,
              previous: dict | None = None) -> dict:
    """Run every benchmark of the suite; the 2D runs go `workers` at a time in separate processes. previous: the
    results.json of the run being resumed (its finished entries are kept, not rerun). SIGINT / SIGTERM raise
    Interrupted after results.json, metrics.csv and the report have recorded what finished and marked the rest
    "interrupted"."""
    run = RunDir(run_dir)
    if distributed.is_main():  # [ddp] rank 0 alone writes
        run.root.mkdir(parents=True, exist_ok=True)
    config = to_dict(cfg)
    run.write_config(config)
    name = str(device) if device.type == "cpu" else torch.cuda.get_device_name(device)
    results = new_results(cfg.name, config, name)
    done = finished(previous or {})
    results["runs"] = list(done.values())
    if "error" not in (previous or {}).get("throughput", {"error": None}):
        results["throughput"] = previous["throughput"]  # measured already
    results["distributed"] = distributed.describe()  # [ddp] world size and backend of the run
    workers = 1 if distributed.world() > 1 else workers  # [ddp] the ranks run the 2D jobs together, one at a time
    with stop_on_signals():
        try:
            if cfg.mixtures is not None:
                run_mixtures(cfg, run, results, device, workers, done)
            if cfg.images is not None:
                run_images(cfg, run, results, device, done)
                if cfg.throughput_budget_s > 0 and "throughput" not in results:
                    with distributed.alone() as mine:  # [ddp] one process's speed: rank 0 measures, the others wait
                        if mine:
                            measure_throughput(cfg, run, results, device)
        except Interrupted as stop:
            tqdm.write(f"{stop}: recording what finished in {run.results_path}")
            have = {_key(r) for r in results["runs"]}
            _add(run, results, [interrupted_entry(*k) for k in planned(cfg) if k not in have], planned(cfg))
            finish(run, results)
            raise
        finish(run, results)
    distributed.barrier()  # [ddp] the others wait for rank 0's files
    return results
