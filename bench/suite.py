"""`gvd run`: train every model of a suite on every dataset and seed, score them, write the run folder.

Each (dataset, model, seed) is one run entry in results.json. results.json is rewritten (atomically) after every
entry, so an interrupted suite keeps what it finished. A run that raises is recorded as "failed" with its error and
the suite goes on.
"""

import multiprocessing
import os
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bench import distributed, report
from bench.config import SuiteConfig, to_dict
from bench.imagebench import FAMILIES, run_image_dataset
from bench.images import DataError, load_image_dataset
from bench.mixtures import run_mixture
from bench.results import failed_entry, metric_rows, new_results
from bench.rundir import RunDir
from bench.throughput import image_throughput, run_entry_throughput


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
    """One 2D run in a worker process (one thread each: these MLPs are too small to gain from more)."""
    dataset, model, seed, mix, device, root, threads = job
    torch.set_num_threads(threads)
    try:
        return run_mixture(dataset, model, seed, mix, device, RunDir(root), progress=False)
    except Exception as exc:  # noqa: BLE001 -- a broken run is a result, not the end of the suite
        if distributed.world() > 1:  # [ddp] the other ranks may be inside a collective: stop (distributed.session)
            raise
        return failed_entry(dataset, model, seed, f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=5)), {}


def _run_jobs(jobs: list, workers: int, desc: str):
    """Yield (job, (entry, points)) in job order, running up to `workers` jobs at once in separate processes.

    Every job seeds itself, so its result does not depend on how many run beside it."""
    bar = tqdm(total=len(jobs), desc=desc, unit="run")
    if workers <= 1:
        for job in jobs:
            yield job, _mixture_job(job)
            bar.update()
    else:
        ctx = multiprocessing.get_context("spawn")  # fork after torch has started threads can deadlock
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(_mixture_job, job) for job in jobs]
            for f in futures:
                f.add_done_callback(lambda _: bar.update())
            for job, f in zip(jobs, futures):
                yield job, f.result()
    bar.close()


def run_mixtures(cfg: SuiteConfig, run: RunDir, results: dict, device: torch.device, workers: int) -> None:
    """Every 2D (dataset, seed, model), `workers` at a time; results.json rewritten after each."""
    threads = 1 if workers > 1 else torch.get_num_threads()
    jobs = [(d, m, s, cfg.mixtures, device, run.root, threads)
            for d in cfg.mixtures.datasets for s in cfg.seeds for m in ("gan", "diffusion")]
    for (dataset, model, seed, *_), (entry, points) in _run_jobs(jobs, min(workers, len(jobs)),
                                                                 f"2D runs ({cfg.name})"):
        if entry["status"] == "failed":
            tqdm.write(f"run {dataset}/{model}/seed {seed} failed: {entry['error']}")
        for label, x in points.items():
            run.save_points(dataset, seed, model, None if model == "gan" else label, x)
        results["runs"].append(entry)
        run.write_results(results)


def run_images(cfg: SuiteConfig, run: RunDir, results: dict, device: torch.device) -> None:
    """Every image (dataset, seed): both families; results.json rewritten after each pair."""
    for dataset in cfg.images.datasets:
        for seed in cfg.seeds:
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
            results["runs"].extend(entries)
            run.write_results(results)


def measure_throughput(cfg: SuiteConfig, run: RunDir, results: dict, device: torch.device) -> None:
    """The image models' speed (fresh networks of this run's configs) into results.json and each image entry."""
    tqdm.write("throughput of the image models")
    channels = load_image_dataset(cfg.images.datasets[0], 64, cfg.images.resolution, seed=0).images.shape[1]
    results["throughput"] = image_throughput(cfg.images, device, channels=channels, budget_s=cfg.throughput_budget_s)
    for entry in results["runs"]:
        if entry["dataset"] in cfg.images.datasets and entry.get("throughput") is not None:
            entry["throughput"].update(run_entry_throughput(results["throughput"], entry["model"]))
    run.write_results(results)


def run_suite(cfg: SuiteConfig, run_dir: Path, device: torch.device, workers: int = 1) -> dict:
    """Run every benchmark of the suite; the 2D runs go `workers` at a time in separate processes."""
    run = RunDir(run_dir)
    if distributed.is_main():  # [ddp] rank 0 alone writes
        run.root.mkdir(parents=True, exist_ok=True)
    config = to_dict(cfg)
    run.write_config(config)
    name = str(device) if device.type == "cpu" else torch.cuda.get_device_name(device)
    results = new_results(cfg.name, config, name)
    results["distributed"] = distributed.describe()  # [ddp] world size and backend of the run
    workers = 1 if distributed.world() > 1 else workers  # [ddp] the ranks run the 2D jobs together, one at a time
    if cfg.mixtures is not None:
        run_mixtures(cfg, run, results, device, workers)
    if cfg.images is not None:
        run_images(cfg, run, results, device)
        if cfg.throughput_budget_s > 0:
            with distributed.alone() as mine:  # [ddp] one process's speed: rank 0 measures, the others wait
                if mine:
                    measure_throughput(cfg, run, results, device)
    run.write_metrics(metric_rows(results))
    if distributed.is_main():  # [ddp] rank 0 alone writes
        report.write_report(run.root, results)
    distributed.barrier()  # [ddp] the others wait for rank 0's files
    return results
