"""`gvd run`: train every model of a suite on every dataset and seed, score them, write the run folder.

Each (dataset, model, seed) is one run entry in results.json. results.json is rewritten (atomically) after every
entry, so an interrupted suite keeps what it finished. A run that raises is recorded as "failed" with its error and
the suite goes on.
"""

import json
import multiprocessing
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from bench import report
from bench.config import MixtureBenchConfig, SuiteConfig, parse_sampler, to_dict
from bench.data import mixture_scale, sample_mixture
from bench.evaluate import mixture_metrics, sample_diffusion, sample_gan
from bench.imagebench import _failed, run_image_dataset
from bench.images import DataError, load_image_dataset
from bench.results import metric_rows, new_results, sample_file_stem, write_csv, write_json
from bench.seeding import sample_seeds
from bench.stability import stability, steps_to_threshold
from bench.throughput import image_throughput, run_entry_throughput
from bench.train import checkpoint_interval, initial_weight_share, train_diffusion, train_gan
from models.diffusion import alphas_cumprod
from models.mlp import MLPDenoiser, MLPDiscriminator, MLPGenerator, num_params


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def save_checkpoint(path: Path, modules: dict, config: dict) -> None:
    """safetensors file with every module's state under '<name>.<key>' and the config as JSON metadata,
    so the networks can be rebuilt from the checkpoint alone."""
    tensors = {f"{name}.{k}": v.detach().cpu().contiguous() for name, m in modules.items() for k, v in m.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"config": json.dumps(config)})


def load_checkpoint(path: Path) -> tuple[dict, dict]:
    """The inverse of save_checkpoint: ({module name: state dict}, config)."""
    with safe_open(str(path), "pt") as f:
        config = json.loads(f.metadata()["config"])
        states: dict[str, dict] = {}
        for key in f.keys():  # noqa: SIM118 -- a safetensors handle, not a dict
            name, _, param = key.partition(".")
            states.setdefault(name, {})[param] = f.get_tensor(key)
    return states, config


def _run_mixture(dataset: str, model: str, seed: int, mix: MixtureBenchConfig, device, run_dir: Path,
                 progress: bool = True) -> tuple[dict, dict]:
    """Train and score one model on one 2D mixture. Returns (run entry, {sampler label: samples})."""
    tag = f"{dataset}_{model}_seed{seed}"
    scale = mixture_scale(dataset)
    data_gen = torch.Generator().manual_seed(seed)  # the same real batches for both models of a seed
    real_batch = lambda step: (sample_mixture(dataset, mix.batch_size, data_gen).to(device) / scale, None)
    torch.manual_seed(seed)
    entry = {"dataset": dataset, "model": model, "seed": seed}
    seeds = sample_seeds(seed, mix.num_samples)
    alpha_bar = alphas_cumprod(mix.diffusion.schedule, mix.diffusion.num_steps).float().to(device)
    snapshots: list = []  # Snapshot(step, raw copy, EMA copy), for the metric-over-training curve
    every = checkpoint_interval(mix.steps, mix.eval_checkpoints)
    start = time.perf_counter()
    if model == "gan":
        G, D = MLPGenerator(mix.gan_net).to(device), MLPDiscriminator(mix.gan_net).to(device)
        train_gen = torch.Generator().manual_seed(seed + 7919)
        latent = lambda n: torch.randn(n, mix.gan_net.z_dim, generator=train_gen).to(device)
        trained = train_gan(G, D, real_batch, latent, mix.gan, mix.steps, desc=tag, progress=progress,
                            snapshot_every=every, snapshots=snapshots)
        params = {"G": num_params(G), "D": num_params(D)}
        modules, samplers = {"G": trained.ema, "G_raw": G, "D": D}, {"G": None}  # the EMA samples (both families)
    else:
        net = MLPDenoiser(mix.denoiser_net).to(device)
        train_gen = torch.Generator().manual_seed(seed + 7919)
        trained = train_diffusion(net, lambda step: (real_batch(step)[0], {}), alpha_bar, mix.diffusion.prediction,
                                  mix.diffusion_train, mix.steps, train_gen, desc=tag, progress=progress,
                                  snapshot_every=every, snapshots=snapshots)
        params = {"denoiser": num_params(net)}
        modules, samplers = {"denoiser": trained.ema}, {s: parse_sampler(s) for s in mix.samplers}
    ema, history, status = trained.ema, trained.history, trained.status
    train_seconds = time.perf_counter() - start
    steps_done = len(history)
    entry.update(status)
    entry["train"] = {
        "steps": steps_done,
        "examples_seen": steps_done * mix.batch_size,
        "seconds": train_seconds,
        "images_per_s": steps_done * mix.batch_size / max(train_seconds, 1e-9),
        "params": params,
        "params_total": sum(params.values()),
    }
    write_csv(run_dir / "history" / f"{tag}.csv", history)
    save_checkpoint(run_dir / "checkpoints" / f"{tag}.safetensors", modules,
                    {"model": model, "dataset": dataset, "seed": seed, "bench": to_dict(mix)})

    # --- evaluation: the same per-sample seeds for every model and sampler
    by_sampler, points = {}, {}
    for label, spec in samplers.items():
        t0 = time.perf_counter()
        if model == "gan":
            x, nfe = sample_gan(ema, seeds, mix.gan_net.z_dim, device), 1
        else:
            x, nfe = sample_diffusion(ema, seeds, (2,), alpha_bar, spec[0], spec[1], mix.diffusion.prediction, device)
        seconds = time.perf_counter() - t0
        x = x.cpu() * scale
        points[label] = x.numpy()
        by_sampler[label] = {**mixture_metrics(x, dataset), "nfe": nfe, "sample_seconds": seconds,
                             "samples_per_s": len(x) / max(seconds, 1e-9)}
    headline = next(iter(by_sampler))
    entry["sampler"] = headline if model == "diffusion" else None
    entry["metrics"] = {k: v for k, v in by_sampler[headline].items() if k not in ("sample_seconds", "samples_per_s")}
    entry["throughput"] = {k: by_sampler[headline][k] for k in ("nfe", "sample_seconds", "samples_per_s")}
    if model == "diffusion":
        entry["by_sampler"] = by_sampler
    else:  # the raw generator too: the EMA is the headline for both families, the raw G stays on record
        entry["metrics_raw"] = mixture_metrics(sample_gan(G.eval(), seeds, mix.gan_net.z_dim, device).cpu() * scale,
                                               dataset)
    entry["ema"] = {"decay": trained.ema_decay, "initial_weight_share": initial_weight_share(steps_done,
                                                                                             trained.ema_decay)}

    # --- metric-over-training: each snapshot on the same seeds (diffusion with the cheap curve sampler)
    t0 = time.perf_counter()
    curve_name, curve_steps = parse_sampler(mix.curve_sampler)
    entry["curve"] = []
    for step, _raw, snap in snapshots:  # the EMA copies, as the headline
        if model == "gan":
            x = sample_gan(snap, seeds, mix.gan_net.z_dim, device)
        else:
            x, _ = sample_diffusion(snap, seeds, (2,), alpha_bar, curve_name, curve_steps, mix.diffusion.prediction,
                                    device)
        m = mixture_metrics(x.cpu() * scale, dataset)
        entry["curve"].append({"step": step, **{k: m[k] for k in ("modes", "hq_fraction", "reverse_kl")},
                               "initial_weight_share": initial_weight_share(step, trained.ema_decay)})
    entry["curve_seconds"] = time.perf_counter() - t0
    entry["stability"] = stability(history, model)
    if entry["curve"]:  # VEEGAN's notion of success on these mixtures: every mode captured
        num_modes = entry["metrics"]["num_modes"]
        entry["stability"].update(threshold=f"modes == {num_modes}",
                                  steps_to_threshold=steps_to_threshold(entry["curve"], "modes", num_modes))
    return entry, points


def _mixture_job(job) -> tuple[dict, dict]:
    """One 2D run in a worker process (one thread each: these MLPs are too small to gain from more)."""
    dataset, model, seed, mix, device, run_dir, threads = job
    torch.set_num_threads(threads)
    try:
        return _run_mixture(dataset, model, seed, mix, device, run_dir, progress=False)
    except Exception as exc:  # noqa: BLE001 -- a broken run is a result, not the end of the suite
        return {"dataset": dataset, "model": model, "seed": seed, "status": "failed",
                "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=5),
                "train": {}, "metrics": {}, "throughput": {}}, {}


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


def default_workers(device: torch.device) -> int:
    return 1 if device.type == "cuda" else max(1, os.cpu_count() or 1)


def run_suite(cfg: SuiteConfig, run_dir: Path, device: torch.device, workers: int = 1) -> dict:
    """Run every benchmark of the suite; the 2D runs go `workers` at a time in separate processes."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = to_dict(cfg)
    write_json(run_dir / "config.json", config)
    results = new_results(cfg.name, config, str(device) if device.type == "cpu" else torch.cuda.get_device_name(device))
    if cfg.mixtures is not None:
        threads = 1 if workers > 1 else torch.get_num_threads()
        jobs = [(d, m, s, cfg.mixtures, device, run_dir, threads)
                for d in cfg.mixtures.datasets for s in cfg.seeds for m in ("gan", "diffusion")]
        (run_dir / "samples").mkdir(exist_ok=True)
        for (dataset, model, seed, *_), (entry, points) in _run_jobs(jobs, min(workers, len(jobs)), f"2D runs ({cfg.name})"):
            if entry["status"] == "failed":
                tqdm.write(f"run {dataset}/{model}/seed {seed} failed: {entry['error']}")
            for label, x in points.items():
                np.save(run_dir / "samples" / f"{sample_file_stem(dataset, model, seed, label)}.npy", x)
            results["runs"].append(entry)
            write_json(run_dir / "results.json", results)
    if cfg.images is not None:
        for dataset in cfg.images.datasets:
            for seed in cfg.seeds:
                tqdm.write(f"image benchmark: {dataset}, seed {seed}")
                try:
                    entries = run_image_dataset(dataset, seed, cfg.images, device, run_dir, cache_dir(),
                                                save=save_checkpoint)
                except DataError:
                    raise  # bad user input: stop with its one-line message
                except Exception as exc:  # noqa: BLE001 -- a broken run is a result, not the end of the suite
                    tqdm.write(f"image runs {dataset}/seed {seed} failed: {type(exc).__name__}: {exc}")
                    entries = [{**e, "traceback": traceback.format_exc(limit=5)}
                               for e in _failed(dataset, seed, f"{type(exc).__name__}: {exc}")]
                results["runs"].extend(entries)
                write_json(run_dir / "results.json", results)
    if cfg.images is not None and cfg.throughput_budget_s > 0:
        tqdm.write("throughput of the image models")
        first = cfg.images.datasets[0]
        channels = load_image_dataset(first, 64, cfg.images.resolution, seed=0).images.shape[1]
        results["throughput"] = image_throughput(cfg.images, device, channels=channels,
                                                 budget_s=cfg.throughput_budget_s)
        for entry in results["runs"]:
            if entry["dataset"] in cfg.images.datasets and entry.get("throughput") is not None:
                entry["throughput"].update(run_entry_throughput(results["throughput"], entry["model"]))
        write_json(run_dir / "results.json", results)
    write_csv(run_dir / "metrics.csv", metric_rows(results))
    report.write_report(run_dir, results)
    return results


def cache_dir() -> Path:
    """Where trained judges are cached across runs: $GVD_CACHE, else ~/.cache/gan-vs-diffusion."""
    return Path(os.environ.get("GVD_CACHE") or Path.home() / ".cache" / "gan-vs-diffusion")
