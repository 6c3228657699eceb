"""`gvd run`: train every model of a suite on every dataset and seed, score them, write the run folder.

Each (dataset, model, seed) is one run entry in results.json. results.json is rewritten (atomically) after every
entry, so an interrupted suite keeps what it finished. A run that raises is recorded as "failed" with its error and
the suite goes on.
"""

import json
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from bench import report
from bench.config import MixtureBenchConfig, SuiteConfig, parse_sampler, to_dict
from bench.data import mixture_scale, sample_mixture
from bench.evaluate import mixture_metrics, sample_diffusion, sample_gan
from bench.results import metric_rows, new_results, sample_file_stem, write_csv, write_json
from bench.seeding import sample_seeds
from bench.train import train_diffusion, train_gan
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


def _run_mixture(dataset: str, model: str, seed: int, mix: MixtureBenchConfig, device, run_dir: Path) -> tuple[dict, dict]:
    """Train and score one model on one 2D mixture. Returns (run entry, {sampler label: samples})."""
    tag = f"{dataset}_{model}_seed{seed}"
    scale = mixture_scale(dataset)
    data_gen = torch.Generator().manual_seed(seed)  # the same real batches for both models of a seed
    real_batch = lambda step: (sample_mixture(dataset, mix.batch_size, data_gen).to(device) / scale, None)
    torch.manual_seed(seed)
    entry = {"dataset": dataset, "model": model, "seed": seed}
    seeds = sample_seeds(seed, mix.num_samples)
    start = time.perf_counter()
    if model == "gan":
        G, D = MLPGenerator(mix.gan_net).to(device), MLPDiscriminator(mix.gan_net).to(device)
        train_gen = torch.Generator().manual_seed(seed + 7919)
        latent = lambda n: torch.randn(n, mix.gan_net.z_dim, generator=train_gen).to(device)
        history, status = train_gan(G, D, real_batch, latent, mix.gan, mix.steps, desc=tag)
        params = {"G": num_params(G), "D": num_params(D)}
        modules, samplers = {"G": G, "D": D}, {"G": None}
    else:
        net = MLPDenoiser(mix.denoiser_net).to(device)
        alpha_bar = alphas_cumprod(mix.diffusion.schedule, mix.diffusion.num_steps).float().to(device)
        train_gen = torch.Generator().manual_seed(seed + 7919)
        ema, history, status = train_diffusion(net, lambda step: (real_batch(step)[0], {}), alpha_bar,
                                               mix.diffusion.prediction, mix.diffusion_train, mix.steps,
                                               train_gen, desc=tag)
        params = {"denoiser": num_params(net)}
        modules, samplers = {"denoiser": ema}, {s: parse_sampler(s) for s in mix.samplers}
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
            x, nfe = sample_gan(G.eval(), seeds, mix.gan_net.z_dim, device), 1
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
    return entry, points


def run_suite(cfg: SuiteConfig, run_dir: Path, device: torch.device) -> dict:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = to_dict(cfg)
    write_json(run_dir / "config.json", config)
    results = new_results(cfg.name, config, str(device) if device.type == "cpu" else torch.cuda.get_device_name(device))
    jobs = []
    if cfg.mixtures is not None:
        jobs += [(d, m, s) for d in cfg.mixtures.datasets for s in cfg.seeds for m in ("gan", "diffusion")]
    for dataset, model, seed in tqdm(jobs, desc=f"suite {cfg.name}", unit="run"):
        try:
            entry, points = _run_mixture(dataset, model, seed, cfg.mixtures, device, run_dir)
            (run_dir / "samples").mkdir(exist_ok=True)
            for label, x in points.items():
                np.save(run_dir / "samples" / f"{sample_file_stem(dataset, model, seed, label)}.npy", x)
        except Exception as exc:  # noqa: BLE001 -- a broken run is a result, not the end of the suite
            entry = {"dataset": dataset, "model": model, "seed": seed, "status": "failed",
                     "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=5),
                     "train": {}, "metrics": {}, "throughput": {}}
            tqdm.write(f"run {dataset}/{model}/seed {seed} failed: {type(exc).__name__}: {exc}")
        results["runs"].append(entry)
        write_json(run_dir / "results.json", results)
    write_csv(run_dir / "metrics.csv", metric_rows(results))
    report.write_report(run_dir, results)
    return results
