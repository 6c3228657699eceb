"""`gvd run`: train every model of a suite on every dataset and seed, score them, write the run folder.

Each (dataset, model, seed) is one run entry in results.json. results.json is rewritten (atomically) after every
entry, so an interrupted suite keeps what it finished. A run that raises is recorded as "failed" with its error and
the suite goes on.
"""

import os
import traceback
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bench.config import SuiteConfig, to_dict
from bench.core import distributed
from bench.core.distributed import resolve_device  # noqa: F401 -- the CLI's and the tests' way in
from bench.core.guard import Interrupted, error_text, interrupted_entry, stop_on_signals
from bench.core.pool import run_jobs, torch_threads
from bench.core.results import failed_entry, new_results
from bench.core.rundir import RunDir
from bench.data.images import DataError
from bench.data.registry import dataset_info
from bench.families import resolve
from bench.report import build
from bench.report.tables import metric_rows
from bench.run.images import run_image_dataset
from bench.run.mixtures import run_mixture
from bench.run.resume import FINISHED, finished
from bench.speed.throughput import image_throughput, run_entry_throughput


def cache_dir() -> Path:
    """Where trained judges are cached across runs: $GVD_CACHE, else ~/.cache/gan-vs-diffusion."""
    return Path(os.environ.get("GVD_CACHE") or Path.home() / ".cache" / "gan-vs-diffusion")


def default_workers(device: torch.device) -> int:
    return 1 if device.type == "cuda" else max(1, os.cpu_count() or 1)


def _mixture_job(job) -> tuple[dict, dict]:
    """One 2D run, in a worker process or in this one, on one torch thread (these MLPs are too small to gain from
    more, and one thread everywhere keeps the numbers independent of --workers; the count is restored after)."""
    dataset, name, seed, mix, device, root, user_specs = job
    with torch_threads(1):
        try:
            family = resolve([name], user_specs)[0]
            return run_mixture(dataset, family, seed, mix, device, RunDir(root), progress=False)
        except Exception as exc:  # noqa: BLE001 -- a broken run is a result, not the end of the suite
            if distributed.world() > 1:  # [ddp] the other ranks may be inside a collective: stop (distributed.session)
                raise
            return failed_entry(dataset, name, seed, error_text(exc), traceback.format_exc(limit=5)), {}


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


def _record_mixture(run: RunDir, results: dict, order: list, job: tuple, outcome: tuple) -> None:
    (dataset, name, seed, *_), (entry, points) = job, outcome
    if entry["status"] == "failed":
        tqdm.write(f"run {dataset}/{name}/seed {seed} failed: {entry['error']}")
    for label, x in points.items():
        run.save_points(dataset, seed, name, label if len(points) > 1 else None, x)
    _add(run, results, [entry], order)
    if entry["status"] in FINISHED:  # in results.json: a resume keeps it and never needs its training's state
        run.remove_states(dataset, seed, name)


def run_mixtures(cfg: SuiteConfig, run: RunDir, results: dict, device: torch.device, workers: int, families: list,
                 done: dict) -> None:
    """Every 2D (dataset, seed, family) not already in `done`, `workers` at a time; results.json rewritten after
    each."""
    order = planned(cfg, families)
    names = [f.name for f in families if f.runs_on("mixture")]
    jobs = [(d, m, s, cfg.mixtures, device, run.root, list(cfg.user_families)) for d in cfg.mixtures.datasets
            for s in cfg.seeds for m in names if (d, m, s) not in done]
    bar = tqdm(total=len(jobs), desc=f"2D runs ({cfg.name})", unit="run")

    def record(job, outcome):
        _record_mixture(run, results, order, job, outcome)
        bar.update()

    try:
        run_jobs(_mixture_job, jobs, workers, record)
    finally:
        bar.close()


def run_images(cfg: SuiteConfig, run: RunDir, results: dict, device: torch.device, families: list,
               done: dict) -> None:
    """Every image (dataset, seed) not all of whose entries are in `done`: every image family; results.json
    rewritten after each (dataset, seed)."""
    order = planned(cfg, families)
    mine = [f for f in families if f.runs_on("image")]
    for dataset in cfg.images.datasets:
        for seed in cfg.seeds:
            if all((dataset, f.name, seed) in done for f in mine):
                continue
            tqdm.write(f"image benchmark: {dataset}, seed {seed}")
            try:
                entries = run_image_dataset(dataset, seed, cfg.images, device, run, cache_dir(), mine)
            except DataError:
                raise  # bad user input: stop with its one-line message
            except Exception as exc:  # noqa: BLE001 -- a broken run is a result, not the end of the suite
                if distributed.world() > 1:  # [ddp] the other ranks may be inside a collective: stop
                    raise
                tqdm.write(f"image runs {dataset}/seed {seed} failed: {error_text(exc)}")
                trace = traceback.format_exc(limit=5)
                entries = [failed_entry(dataset, f.name, seed, error_text(exc), trace) for f in mine]
            _add(run, results, entries, order)
            for entry in entries:
                if entry["status"] in FINISHED:
                    run.remove_states(dataset, seed, entry["model"])


def measure_throughput(cfg: SuiteConfig, run: RunDir, results: dict, device: torch.device) -> None:
    """The image models' speed (fresh networks of this run's configs) into results.json and each scored entry of a
    family it measures. A measurement that raises is recorded as {"error"} and changes no entry."""
    tqdm.write("throughput of the image models")
    try:
        channels = dataset_info(cfg.images.datasets[0]).channels
        results["throughput"] = image_throughput(cfg.images, device, channels=channels,
                                                 budget_s=cfg.throughput_budget_s)
        measured = {r["model"] for r in results["throughput"]["rows"]}
        for entry in results["runs"]:
            if (entry["dataset"] in cfg.images.datasets and entry["model"] in measured
                    and "nfe" in (entry.get("throughput") or {})):
                entry["throughput"].update(run_entry_throughput(results["throughput"], entry["model"]))
    except Exception as exc:  # noqa: BLE001 -- a speed measurement that fails is a result, not a lost run
        tqdm.write(f"throughput failed: {error_text(exc)}")
        results["throughput"] = {"error": error_text(exc)}
    run.write_results(results)


def finish(run: RunDir, results: dict) -> None:
    """metrics.csv and the report; a report that cannot be built is one line on stderr, the results stay."""
    run.write_metrics(metric_rows(results))
    try:
        build.write_report(run.root, results)
    except Exception as exc:  # noqa: BLE001 -- results.json is written; `gvd report` can retry
        tqdm.write(f"report failed ({error_text(exc)}); results.json is complete, rebuild with `gvd report`")


def run_suite(cfg: SuiteConfig, run_dir: Path, device: torch.device, workers: int = 1,
              previous: dict | None = None, study: str | None = None) -> dict:
    """Run every benchmark of the suite with every family of its config; the 2D runs go `workers` at a time in
    separate processes. previous: the results.json of the run being resumed (its finished entries are kept, not
    rerun). SIGINT / SIGTERM raise Interrupted after results.json, metrics.csv and the report have recorded what
    finished and marked the rest "interrupted"."""
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
    results["distributed"] = distributed.describe()  # [ddp] world size and backend of the run
    if study or (previous or {}).get("study"):
        results["study"] = study or previous["study"]  # the stability study the verdict shows (gvd run --study)
    workers = 1 if distributed.world() > 1 else workers  # [ddp] the ranks run the 2D jobs together, one at a time
    order = planned(cfg, families)
    with stop_on_signals():
        try:
            if cfg.mixtures is not None:
                run_mixtures(cfg, run, results, device, workers, families, done)
            if cfg.images is not None:
                run_images(cfg, run, results, device, families, done)
                if cfg.throughput_budget_s > 0 and "throughput" not in results:
                    with distributed.alone() as mine:  # [ddp] one process's speed: rank 0 measures, the others wait
                        if mine:
                            measure_throughput(cfg, run, results, device)
        except Interrupted as stop:
            tqdm.write(f"{stop}: recording what finished in {run.results_path}")
            have = {_key(r) for r in results["runs"]}
            _add(run, results, [interrupted_entry(*k) for k in order if k not in have], order)
            finish(run, results)
            raise
        finish(run, results)
    distributed.barrier()  # [ddp] the others wait for rank 0's files
    return results
