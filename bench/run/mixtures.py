"""The 2D mode-collapse benchmark as stages: train -> evaluate -> record, for one (dataset, model, seed).

Both families see the same real batches (one data stream per seed), the same number of steps at the same batch size,
and are scored on the same per-sample seeds: 2,500 samples, modes captured, high-quality fraction and reverse KL
(VEEGAN, Srivastava et al. 2017, sec. 5.1; PacGAN, Lin et al. 2018, sec. 5; bench.evaluate.metrics.mixture_stats).
"""

import time
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch import nn

from bench.config import MixtureBenchConfig, parse_sampler, to_dict
from bench.core import distributed
from bench.core.guard import error_text, hold_signals
from bench.core.rundir import RunDir
from bench.core.seeding import sample_seeds
from bench.data.mixtures import mixture_scale, sample_mixture
from bench.evaluate.mixtures import mixture_metrics, sample_diffusion, sample_gan
from bench.evaluate.stability import stability, steps_to_threshold
from bench.train.loops import checkpoint_interval, initial_weight_share, train_diffusion, train_gan
from bench.train.state import NO_STATE, StateFiles
from models.diffusion import alphas_cumprod
from models.mlp import MLPDenoiser, MLPDiscriminator, MLPGenerator, num_params


@dataclass
class MixtureTrained:
    model: str  # "gan" | "diffusion"
    net: nn.Module  # what samples for the headline: the EMA of G or of the denoiser (one rule for both families)
    raw: nn.Module  # the trained network itself, scored beside the EMA
    ema_decay: float
    modules: dict[str, nn.Module]  # what the checkpoint keeps
    history: list[dict]
    status: dict  # {"status": "ok"} or {"status": "diverged", "diverged_at_step": k}
    seconds: float
    params: dict[str, int]
    snapshots: list = field(default_factory=list)  # [Snapshot(step, raw copy, EMA copy)]


def real_batches(dataset: str, seed: int, batch_size: int, device, data_gen: torch.Generator | None = None):
    """The real examples of each step, scaled to unit variance: the same stream for both models of a seed (data_gen:
    the stream's generator, seeded from `seed` when not given). [ddp] Every rank draws the global batch and keeps its
    rows (bench/distributed.py)."""
    scale, data_gen = mixture_scale(dataset), data_gen or torch.Generator().manual_seed(seed)
    return lambda step: (distributed.local_rows(sample_mixture(dataset, batch_size, data_gen)).to(device) / scale, None)


def train_mixture(dataset: str, model: str, seed: int, mix: MixtureBenchConfig, device, progress=True,
                  states: StateFiles = NO_STATE):
    """Train one model on one mixture from its seed, resuming from its state in `states` (part = the model) and
    saving it there (bench/train_state.py). Returns a MixtureTrained; its seconds include the training time before a
    resume."""
    data_gen = torch.Generator().manual_seed(seed)
    real_batch = real_batches(dataset, seed, mix.batch_size, device, data_gen)
    torch.manual_seed(seed)
    train_gen = torch.Generator().manual_seed(seed + 7919)
    state = states.open(model, mix.steps, {"data": data_gen, "train": train_gen})
    snapshots: list = []
    every = checkpoint_interval(mix.steps, mix.eval_checkpoints)
    desc = f"{dataset}_{model}_seed{seed}"
    start = time.perf_counter()
    if model == "gan":
        G, D = MLPGenerator(mix.gan_net).to(device), MLPDiscriminator(mix.gan_net).to(device)

        def latent(n):  # [ddp] n is this rank's share: draw the global batch's latents, keep its rows
            z = torch.randn(distributed.global_size(n), mix.gan_net.z_dim, generator=train_gen)
            return distributed.local_rows(z).to(device)

        nets = distributed.wrap(G, device), distributed.wrap(D, device)  # [ddp] DDP under torchrun
        result = train_gan(*nets, real_batch, latent, mix.gan, mix.steps, desc=desc, progress=progress,
                           snapshot_every=every, snapshots=snapshots, state=state)
        modules, params = {"G": result.ema, "G_raw": G, "D": D}, {"G": num_params(G), "D": num_params(D)}
    else:
        denoiser = MLPDenoiser(mix.denoiser_net).to(device)
        alpha_bar = alphas_cumprod(mix.diffusion.schedule, mix.diffusion.num_steps).float().to(device)
        wrapped = distributed.wrap(denoiser, device)  # [ddp] DDP under torchrun
        result = train_diffusion(wrapped, lambda step: (real_batch(step)[0], {}), alpha_bar,
                                 mix.diffusion.prediction, mix.diffusion_train, mix.steps, train_gen, desc=desc,
                                 progress=progress, snapshot_every=every, snapshots=snapshots, state=state)
        modules, params = {"denoiser": result.ema, "denoiser_raw": denoiser}, {"denoiser": num_params(denoiser)}
    seconds = time.perf_counter() - start + states.offset(model)
    return MixtureTrained(model, result.ema, result.model.eval(), result.ema_decay, modules, result.history,
                          result.status, seconds, params, snapshots)


def draw_points(net: nn.Module, model: str, spec: str | None, seeds, mix: MixtureBenchConfig, device):
    """Samples of a 2D model on per-sample seeds, in data units. spec: the diffusion sampler ("ddpm:1000").
    Returns (points (N, 2) on the CPU, NFE). [ddp] Each rank draws its block of the seeds; all N are gathered."""
    return distributed.sample_sharded(lambda rows: _draw_rows(net, model, spec, seeds[rows], mix, device), len(seeds))


def _draw_rows(net: nn.Module, model: str, spec: str | None, seeds, mix: MixtureBenchConfig, device):
    if model == "gan":
        x, nfe = sample_gan(net, seeds, mix.gan_net.z_dim, device), 1
    else:
        alpha_bar = alphas_cumprod(mix.diffusion.schedule, mix.diffusion.num_steps).float().to(device)
        name, steps = parse_sampler(spec)
        x, nfe = sample_diffusion(net, seeds, (2,), alpha_bar, name, steps, mix.diffusion.prediction, device)
    return x.cpu(), nfe


def evaluate_mixture(trained: MixtureTrained, dataset: str, seed: int, mix: MixtureBenchConfig, device):
    """Every sampler of the EMA model on the same seeds (the GAN has one), the raw network with the headline sampler,
    then the snapshots' EMA copies with the curve sampler.
    Returns ({sampler label: metrics}, {sampler label: points (N, 2)}, raw metrics, curve, curve seconds)."""
    seeds, scale = sample_seeds(seed, mix.num_samples), mixture_scale(dataset)
    by_sampler, points = {}, {}
    for label in (["G"] if trained.model == "gan" else mix.samplers):
        t0 = time.perf_counter()
        x, nfe = draw_points(trained.net, trained.model, label, seeds, mix, device)
        seconds = time.perf_counter() - t0
        points[label] = (x * scale).numpy()
        by_sampler[label] = {**mixture_metrics(x * scale, dataset), "nfe": nfe, "sample_seconds": seconds,
                             "samples_per_s": len(x) / max(seconds, 1e-9)}
    headline = "G" if trained.model == "gan" else mix.samplers[0]
    raw = mixture_metrics(draw_points(trained.raw, trained.model, headline, seeds, mix, device)[0] * scale, dataset)
    t0 = time.perf_counter()
    curve = []
    for step, _raw, ema in trained.snapshots:  # the EMA copies, as the headline
        try:
            x, _ = draw_points(ema, trained.model, mix.curve_sampler, seeds, mix, device)
            m = mixture_metrics(x * scale, dataset)
            curve.append({"step": step, **{k: m[k] for k in ("modes", "hq_fraction", "reverse_kl")},
                          "initial_weight_share": initial_weight_share(step, trained.ema_decay)})
        except Exception as exc:  # noqa: BLE001 -- a curve point that cannot be drawn is recorded, not raised
            curve.append({"step": step, "error": error_text(exc)})
    return by_sampler, points, raw, curve, time.perf_counter() - t0


def record_mixture(trained: MixtureTrained, dataset: str, seed: int, mix: MixtureBenchConfig, evaluation) -> dict:
    """The run entry of one 2D model (results.json)."""
    by_sampler, _, raw, curve, curve_seconds = evaluation
    steps = len(trained.history)
    headline = next(iter(by_sampler))
    entry = {"dataset": dataset, "model": trained.model, "seed": seed, **trained.status,
             "train": {"steps": steps, "examples_seen": steps * mix.batch_size, "seconds": trained.seconds,
                       "images_per_s": steps * mix.batch_size / max(trained.seconds, 1e-9), "params": trained.params,
                       **distributed.batch_record(mix.batch_size),  # [ddp]
                       "params_total": sum(trained.params.values())},
             "sampler": headline if trained.model == "diffusion" else None,
             "metrics": {k: v for k, v in by_sampler[headline].items() if k not in ("sample_seconds", "samples_per_s")},
             "throughput": {k: by_sampler[headline][k] for k in ("nfe", "sample_seconds", "samples_per_s")}}
    if trained.model == "diffusion":
        entry["by_sampler"] = by_sampler
    entry["metrics_raw"] = raw  # the raw network on the same seeds (the headline is its EMA, for both families)
    entry["ema"] = {"decay": trained.ema_decay, "initial_weight_share": initial_weight_share(steps, trained.ema_decay)}
    bad = {label: float(1 - np.isfinite(x).all(axis=1).mean()) for label, x in evaluation[1].items()}
    if entry["status"] == "ok" and any(bad.values()):  # a finite loss but NaN/inf samples: diverged all the same
        entry.update(status="diverged", diverged_at_step=None, diverged_in="sampling",
                     nonfinite_fraction={k: v for k, v in bad.items() if v})
    entry["curve"], entry["curve_seconds"] = curve, curve_seconds
    entry["stability"] = stability(trained.history, trained.model)
    if curve:  # VEEGAN's notion of success on these mixtures: every mode captured
        num_modes = entry["metrics"]["num_modes"]
        entry["stability"].update(threshold=f"modes == {num_modes}",
                                  steps_to_threshold=steps_to_threshold(curve, "modes", num_modes))
    return entry


def run_mixture(dataset: str, model: str, seed: int, mix: MixtureBenchConfig, device, run: RunDir,
                progress: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """Train, score and record one model on one mixture; writes its history and checkpoint.
    Returns (run entry, {sampler label: samples}); the caller saves the samples."""
    states = StateFiles(partial(run.state_path, dataset, seed))
    with hold_signals():  # a signal stops the training when its step ends, with its state saved
        trained = train_mixture(dataset, model, seed, mix, device, progress, states)
    run.write_history(dataset, seed, model, trained.history)
    run.save_checkpoint(dataset, seed, model, trained.modules,
                        {"model": model, "dataset": dataset, "seed": seed, "bench": to_dict(mix)})
    evaluation = evaluate_mixture(trained, dataset, seed, mix, device)
    return record_mixture(trained, dataset, seed, mix, evaluation), evaluation[1]
