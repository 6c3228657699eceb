"""The 2D mode-collapse benchmark as stages: train -> evaluate -> record, for one (dataset, family, seed).

Every family sees the same real batches (one data stream per seed: bench/families/interface.py MixtureTask.begin),
the same number of steps at the same batch size, and is scored on the same per-sample seeds: 2,500 samples, modes
captured, high-quality fraction and reverse KL (VEEGAN, Srivastava et al. 2017, sec. 5.1; PacGAN, Lin et al. 2018,
sec. 5; bench/evaluate/metrics.py mixture_stats).
"""

import time
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np
import torch

from bench.core import distributed
from bench.core.guard import error_text, hold_signals
from bench.core.rundir import RunDir
from bench.core.seeding import sample_seeds
from bench.core.stages import stage
from bench.data.mixtures import mixture_scale
from bench.evaluate.images import train_flops_at
from bench.evaluate.mixtures import mixture_metrics
from bench.evaluate.stability import stability, steps_to_threshold
from bench.families import Family, MixtureTask, Trained
from bench.train.loops import initial_weight_share
from bench.train.state import NO_STATE, StateFiles


def train_mixture(family: Family, dataset: str, seed: int, mix, device, progress: bool = True,
                  states: StateFiles = NO_STATE) -> Trained:
    """The family's training on one mixture from its seed, resuming from its state in `states` (part = the family's
    name) and saving it there (bench/train/state.py)."""
    return family.train_mixture(MixtureTask(dataset, seed, mix, torch.device(device), states, progress))


def draw_points(family: Family, trained: Trained, label: str, seeds: torch.Tensor, net=None):
    """Samples of a 2D family on per-sample seeds, in the units it trained in (unit variance). Returns (points (N, 2)
    on the CPU, NFE). [ddp] Each rank draws its block of the seeds; all N are gathered."""
    return distributed.sample_sharded(lambda rows: family.sample_mixture(trained, seeds[rows], label, net),
                                      len(seeds))


@dataclass
class MixtureScore:
    by_sampler: dict[str, dict]  # sampler label -> metrics, NFE and sampling seconds (the headline first)
    points: dict[str, np.ndarray]  # sampler label -> samples (N, 2) in data units
    raw: dict  # the raw network with the headline sampler
    curve: list[dict]  # the snapshots' EMAs at evenly spaced steps
    curve_seconds: float
    clouds: dict[int, np.ndarray]  # step -> the first CLOUD_POINTS curve samples of its snapshot (data units)


CLOUD_POINTS = 500  # samples per snapshot kept for the report's collapse strip (bench/report/process.py)


def _curve(family: Family, trained: Trained, dataset: str, seeds, mix) -> tuple[list[dict], dict]:
    """Metric-over-training: each snapshot's EMA copy with the curve sampler (families that need no solver ignore
    it). Returns (the curve's points, step -> its first CLOUD_POINTS samples in data units)."""
    scale, curve, clouds = mixture_scale(dataset), [], {}
    for step, _raw, ema in trained.snapshots:
        try:
            x, _ = draw_points(family, trained, mix.curve_sampler, seeds, net=ema)
            clouds[step] = (x[:CLOUD_POINTS] * scale).numpy()
            m = mixture_metrics(x * scale, dataset)
            curve.append({"step": step, **{k: m[k] for k in ("modes", "hq_fraction", "reverse_kl")},
                          "initial_weight_share": initial_weight_share(step, trained.ema_decay),
                          "train_flops": train_flops_at(trained.train, step)})
        except Exception as exc:  # noqa: BLE001 -- a curve point that cannot be drawn is recorded, not raised
            curve.append({"step": step, "error": error_text(exc)})
    return curve, clouds


def evaluate_mixture(family: Family, trained: Trained, dataset: str, seed: int, mix) -> MixtureScore:
    """Every sampler of the family on the same seeds, the raw network with the headline sampler, then the
    snapshots' EMA copies."""
    seeds, scale = sample_seeds(seed, mix.num_samples), mixture_scale(dataset)
    by_sampler, points = {}, {}
    for label in family.mixture_samplers(mix):
        t0 = time.perf_counter()
        x, nfe = draw_points(family, trained, label, seeds)
        seconds = time.perf_counter() - t0
        points[label] = (x * scale).numpy()
        by_sampler[label] = {**mixture_metrics(x * scale, dataset), "nfe": nfe, "sample_seconds": seconds,
                             "samples_per_s": len(x) / max(seconds, 1e-9)}
    headline = next(iter(by_sampler))
    raw = ({} if trained.raw is None else
           mixture_metrics(draw_points(family, trained, headline, seeds, net=trained.raw)[0] * scale, dataset))
    t0 = time.perf_counter()
    curve, clouds = _curve(family, trained, dataset, seeds, mix)
    return MixtureScore(by_sampler, points, raw, curve, time.perf_counter() - t0, clouds)


def record_mixture(family: Family, trained: Trained, score: MixtureScore, dataset: str, seed: int) -> dict:
    """The run entry of one family on one mixture (results.json)."""
    headline = next(iter(score.by_sampler))
    entry = {"dataset": dataset, "model": family.name, "seed": seed, **trained.status, "role": family.role,
             "train": trained.train, "sampler": headline,
             "metrics": {k: v for k, v in score.by_sampler[headline].items()
                         if k not in ("sample_seconds", "samples_per_s")},
             "throughput": {k: score.by_sampler[headline][k] for k in ("nfe", "sample_seconds", "samples_per_s")}}
    if len(score.by_sampler) > 1:
        entry["by_sampler"] = score.by_sampler
    entry["metrics_raw"] = score.raw  # the raw network on the same seeds (the headline is its EMA)
    if trained.ema_decay is not None:
        steps = len(trained.history)
        entry["ema"] = {"decay": trained.ema_decay, "initial_weight_share": initial_weight_share(steps,
                                                                                                 trained.ema_decay)}
    bad = {label: float(1 - np.isfinite(x).all(axis=1).mean()) for label, x in score.points.items()}
    if entry["status"] == "ok" and any(bad.values()):  # a finite loss but NaN/inf samples: diverged all the same
        entry.update(status="diverged", diverged_at_step=None, diverged_in="sampling",
                     nonfinite_fraction={k: v for k, v in bad.items() if v})
    entry["curve"], entry["curve_seconds"] = score.curve, score.curve_seconds
    entry["stability"] = stability(trained.history) if trained.history else {}
    if score.curve:  # VEEGAN's notion of success on these mixtures: every mode captured
        num_modes = entry["metrics"]["num_modes"]
        entry["stability"].update(threshold=f"modes == {num_modes}",
                                  steps_to_threshold=steps_to_threshold(score.curve, "modes", num_modes))
    entry["networks"] = trained.networks
    return entry


def run_mixture(dataset: str, family: Family, seed: int, mix, device, run: RunDir,
                progress: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """Train, score and record one family on one mixture; writes its history and checkpoint.
    Returns (run entry, {sampler label: samples}); the caller saves the samples."""
    states = StateFiles(partial(run.state_path, dataset, seed))
    with hold_signals(), stage(f"2D: train {family.name}"):  # a signal stops the training when its step ends
        trained = train_mixture(family, dataset, seed, mix, device, progress, states)
    for i, (part, rows) in enumerate(trained.histories.items()):  # the headline's file is the family's name
        run.write_history(dataset, seed, family.name if i == 0 else f"{family.name}-{part}", rows)
    if trained.modules:
        run.save_checkpoint(dataset, seed, family.name, trained.modules,
                            {"model": family.name, "dataset": dataset, "seed": seed, "bench": asdict(mix)})
    with stage("2D: sample and score"):
        score = evaluate_mixture(family, trained, dataset, seed, mix)
    for step, x in score.clouds.items():  # the collapse strip's samples (bench/report/process.py)
        run.save_points(dataset, seed, family.name, f"step{step}", x)
    return record_mixture(family, trained, score, dataset, seed), score.points
