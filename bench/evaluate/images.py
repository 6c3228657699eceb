"""Scoring the image models: one protocol for both families.

    reference   the test split (never a training image), the same images for every seed and model
    prompts     drawn from the data's caption distribution; per-sample seeds, the same for both families
    neutral     each family at its neutral knob (GAN truncation psi = 1, diffusion guidance scale s = 1)
    tuned       each family at its best knob value by one rule: the lowest FID over its sweep grid on validation
                prompts and seeds disjoint from the scored ones; then scored on the scored prompts and seeds
    raw / EMA   both families sample from their EMA weights; the raw networks are scored beside them
    cost        network passes per sample count both halves of classifier-free guidance
    memorisation  nearest-neighbour distances of the samples to the training vs the test split, the share of
                near-copies and the data-copying statistic C_T (Meehan et al. 2020), the same for both families

Metrics (image_metrics): FID / KID on features (judge, or Inception for data without classes), precision/recall
(Kynkaanniemi et al. 2019, k = 3), density/coverage (Naeem et al. 2020, k = 5), modes and reverse KL(p_gen ||
p_test) over the judge's labels, prompt accuracy.
"""

import time
import warnings
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from scipy.linalg import LinAlgWarning
from threadpoolctl import threadpool_limits  # installed with scikit-learn

from bench.config import ImageBenchConfig, parse_sampler
from bench.core import distributed
from bench.core.seeding import sample_seeds
from bench.data.featcache import cached_features
from bench.data.images import reference_set
from bench.data.inception import missing_inception
from bench.evaluate.metrics import (
    cond_accuracy,
    data_copying,
    fid,
    fid_bootstrap,
    fid_curve,
    fid_extrapolate,
    kid,
    label_probs,
    memorisation,
    mode_stats,
    prdc,
)
from bench.evaluate.sweeps import sweep
from bench.families.bundle import ImageModels
from bench.train.loops import initial_weight_share

FAMILIES = ("gan", "diffusion")
KNOBS = {"gan": "truncation psi", "diffusion": "guidance scale"}
NEUTRAL = {"gan": 1.0, "diffusion": 1.0}  # psi = 1: untruncated; s = 1: the plain conditional model
TUNING_RULE = "the lowest FID over the family's sweep grid on validation prompts and seeds (disjoint from the scored)"
CURVE_KEYS = ("fid", "kid", "precision", "recall", "density", "coverage", "modes", "reverse_kl", "cond_accuracy",
              "num_samples", "initial_weight_share")
COND_THRESHOLD = 0.5  # "steps to threshold" on images: first checkpoint with this prompt accuracy


@dataclass
class Prompts:
    """A set of prompts with their per-sample seeds and text encodings."""

    captions: list[str]
    labels: torch.Tensor  # (N,) the mode each prompt asks for
    text: tuple  # (states (N, L, W), pooled (N, E), mask (N, L))
    seeds: torch.Tensor  # (N,) per-sample seeds


@dataclass
class EvalSet:
    """What both families are scored on."""

    scored: Prompts  # the prompts and seeds every reported number uses
    validation: Prompts  # disjoint prompts and seeds: where each family's knob is tuned
    real: torch.Tensor  # (N, C, H, W) reference images: the test split
    reference: dict  # how they were drawn (bench.data.images.reference_set): asked, given, short, hash
    real_feats: np.ndarray | None  # their features (judge, or Inception for data without classes)
    real_inception: np.ndarray | None  # their Inception features, when Inception is on (cached across runs)
    p_test: np.ndarray | None  # the test split's mode distribution, p_data of the mode KL (None without a judge)
    split_feats: tuple | None = None  # judge features of (train, test) for memorisation (None without a judge)


def _prompts(models: ImageModels, data, n: int, prompt_seed: int, seeds: torch.Tensor) -> Prompts:
    captions, labels = data.prompts(n, seed=prompt_seed)
    return Prompts(captions, labels, models.encode(captions), seeds)


def eval_set(prep, models: ImageModels, cfg: ImageBenchConfig, seed: int) -> EvalSet:
    """The scored and validation prompts, and the reference set: the first num_samples distinct test images of a
    fixed draw (the same for every seed, so every run of a dataset is scored against the same images)."""
    n_val = min(cfg.sweep_samples, cfg.num_samples)
    seeds = sample_seeds(seed, cfg.num_samples + n_val)  # the validation seeds follow the scored ones: disjoint
    scored = _prompts(models, prep.data, cfg.num_samples, 10_000 + seed, seeds[: cfg.num_samples])
    validation = _prompts(models, prep.data, n_val, 20_000 + seed, seeds[cfg.num_samples :])
    ref, record = reference_set(prep.test, cfg.num_samples, seed=0)
    real_inception = (cached_features(ref.images, prep.inception, prep.cache_dir)[0]
                      if prep.inception is not None else None)
    ev = EvalSet(scored, validation, ref.images, record, real_inception, real_inception, None)
    if prep.judge is not None:
        ev.real_feats = prep.judge.features(ref.images)
        ev.p_test = label_probs(prep.test.labels.numpy(), prep.data.num_modes,
                                None if prep.test.channel_labels is None else prep.test.channel_labels.numpy())
        ev.split_feats = (prep.judge.features(prep.data.images), prep.judge.features(prep.test.images))
    return ev


def draw(models: ImageModels, prompts: Prompts, family: str, n: int, knob: float, sampler: str, net=None):
    """The first n images of one family for a prompt set at one knob setting (truncation psi for the GAN, the
    guidance scale for diffusion), from the final networks or another network `net` of the same shape (a snapshot,
    the raw weights). Returns (images, network passes per sample: both halves of guidance counted).
    [ddp] Each rank draws its block of the n per-sample seeds; the blocks are gathered back to all n, in order."""
    return distributed.sample_sharded(partial(_draw_rows, models, prompts, family, knob, sampler, net), n)


def _draw_rows(models: ImageModels, prompts: Prompts, family: str, knob: float, sampler: str, net, rows: slice):
    """draw() for the rows `rows` (one rank's block)."""
    states, pooled, mask = (x[rows] for x in prompts.text)
    if family == "gan":
        return models.sample_gan(pooled, prompts.seeds[rows], psi=knob, G=net), 1
    name, steps = parse_sampler(sampler)
    images, nfe = models.sample_diffusion(states, mask, prompts.seeds[rows], sampler=name, steps=steps,
                                          guidance=knob, unet=net)
    return images, nfe * (1 if knob == 1.0 else 2)  # guidance runs the conditional and unconditional halves


def score(prep, ev: EvalSet, prompts: Prompts, images: torch.Tensor, **extra) -> dict:
    """image_metrics of generated images against the reference set; raises FloatingPointError on NaN images."""
    return distributed.on_main(partial(_score, prep, ev, prompts, images, **extra))  # [ddp] once, on rank 0


def _score(prep, ev: EvalSet, prompts: Prompts, images: torch.Tensor, **extra) -> dict:
    feats, judged = describe(images, prep.judge, prep.inception)
    # One BLAS thread: the metrics' matrices are small (128 features), and OpenBLAS threads spinning against
    # torch's on a busy 2-core machine made each FID's sqrtm 250x slower (1.2 s instead of 5 ms).
    with threadpool_limits(limits=1, user_api="blas"):
        return image_metrics(ev.real_feats, feats, judged, prompts.labels[: len(images)], prep.data.num_modes,
                             reference_probs=ev.p_test, **extra)


@dataclass
class Setting:
    """One knob setting of a family, scored on the scored prompts and seeds at full size."""

    value: float  # the knob's value
    images: torch.Tensor
    nfe: int  # network passes per sample
    seconds: float  # wall time of drawing the images


@dataclass
class FamilyEval:
    neutral: Setting  # the headline: the neutral knob
    tuned: Setting  # the best knob by TUNING_RULE (the same object as neutral when that is the best)
    validation: list[dict]  # the sweep on the validation prompts the tuned value was chosen from
    curve: list[dict]  # metrics of the training snapshots' EMAs, at the neutral knob
    raw: dict  # the raw (non-EMA) network at the neutral knob on the curve's prompts and seeds
    memorisation: dict = field(default_factory=dict)  # of the neutral samples (judge features)


def _setting(models, ev: EvalSet, family: str, knob: float, cfg: ImageBenchConfig) -> Setting:
    t0 = time.perf_counter()
    images, nfe = draw(models, ev.scored, family, cfg.num_samples, knob, cfg.sampler)
    return Setting(knob, images, nfe, time.perf_counter() - t0)


def tune(prep, models, ev: EvalSet, cfg: ImageBenchConfig, family: str) -> tuple[float, list[dict]]:
    """The family's knob value by TUNING_RULE, and the validation sweep it was read from. Without features to
    compute FID (or without a grid) the neutral value."""
    values = cfg.truncation_sweep if family == "gan" else cfg.guidance_sweep
    if ev.real_feats is None or not values:
        return NEUTRAL[family], []
    n = len(ev.validation.seeds)
    generate = partial(_validation_images, models, ev, family, n, cfg.sampler)
    points = _points(sweep(values, generate, partial(score, prep, ev, ev.validation)))
    finite = [p for p in points if p.get("fid") is not None and np.isfinite(p["fid"])]
    return (min(finite, key=lambda p: p["fid"])["value"] if finite else NEUTRAL[family]), points


def _validation_images(models, ev, family, n, sampler, value) -> torch.Tensor:
    return draw(models, ev.validation, family, n, value, sampler)[0]


def _snapshot_images(models, ev, family, n, sampler, headline, final, at_step, step) -> torch.Tensor:
    """The curve's images at one training step: the headline's first n at the final step (the same network)."""
    if step == final:
        return headline[:n]
    return draw(models, ev.scored, family, n, NEUTRAL[family], sampler, net=at_step[step])[0]


def curve_points(prep, trained, ev: EvalSet, cfg: ImageBenchConfig, family: str, headline) -> list[dict]:
    """Metric-over-training: each snapshot's EMA at the neutral knob on the first curve_samples scored prompts."""
    if ev.real_feats is None:
        trained.snapshots[family] = []
        return []
    at_step = {s.step: s.ema for s in trained.snapshots[family]}
    trained.snapshots[family] = []  # the dict holds the copies until the curve is scored
    n = min(cfg.curve_samples, cfg.num_samples)
    snaps = partial(_snapshot_images, trained.models, ev, family, n, cfg.sampler, headline,
                    len(trained.histories[family]), at_step)
    points = _points(sweep(list(at_step), snaps, partial(score, prep, ev, ev.scored), key="step"))
    for point in points:
        point["initial_weight_share"] = initial_weight_share(point["step"], trained.ema_decay[family])
    return points


def raw_point(prep, trained, ev: EvalSet, cfg: ImageBenchConfig, family: str) -> dict:
    """The raw network at the neutral knob, on the curve's prompts and seeds (comparable with the curve's last,
    EMA point)."""
    if ev.real_feats is None:
        return {}
    n = min(cfg.curve_samples, cfg.num_samples)
    images = draw(trained.models, ev.scored, family, n, NEUTRAL[family], cfg.sampler, net=trained.raw[family])[0]
    return _points(sweep([n], lambda _: images, partial(score, prep, ev, ev.scored), key="num_samples"))[0]


def memorisation_record(ev: EvalSet, prep, images: torch.Tensor) -> dict:
    """Memorisation of one sample set, on judge features: distances to train vs test, near-copies, C_T."""
    if ev.split_feats is None or not torch.isfinite(images).all():
        return {}
    train_feats, test_feats = ev.split_feats
    fake = prep.judge.features(images)
    with threadpool_limits(limits=1, user_api="blas"):
        out = memorisation(train_feats, test_feats, fake)
        out["c_t"] = data_copying(train_feats, test_feats, fake)["c_t"]
    return out


def evaluate_family(prep, trained, ev: EvalSet, cfg: ImageBenchConfig, family: str) -> FamilyEval:
    """Both knob settings on the scored prompts, the validation sweep, the curve, the raw network, memorisation."""
    models = trained.models
    neutral = _setting(models, ev, family, NEUTRAL[family], cfg)
    best, validation = tune(prep, models, ev, cfg, family)
    tuned = neutral if best == NEUTRAL[family] else _setting(models, ev, family, best, cfg)
    return FamilyEval(neutral, tuned, validation, curve_points(prep, trained, ev, cfg, family, neutral.images),
                      raw_point(prep, trained, ev, cfg, family), memorisation_record(ev, prep, neutral.images))


# ---------------------------------------------------------------- metrics


def describe(images: torch.Tensor, judge, inception) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(features (N, F), mode labels (N,)) of images for the metrics: the judge's features and labels; for data
    without classes (no judge), Inception features (clean-fid's "clean" mode) and no labels; (None, None) without
    either. Raises FloatingPointError on non-finite images (a diverged model's)."""
    if not torch.isfinite(images).all():
        raise FloatingPointError("generated images contain NaN or inf")
    if judge is not None:
        return judge.features(images), judge.labels(images).numpy()
    if inception is not None:
        return inception.features(images), None
    return None, None


def image_metrics(real_feats: np.ndarray | None, feats: np.ndarray | None, judged: np.ndarray | None,
                  prompted: torch.Tensor, num_modes: int, fid_boot: int = 0, fid_counts: tuple[int, ...] = (),
                  seed: int = 0, reference_probs: np.ndarray | None = None) -> dict:
    """FID/KID (clean-fid's formulas) and PRDC on features, mode statistics (against reference_probs, the test
    split's mode distribution) and prompt accuracy on judged labels, each where its input exists. With fid_boot > 0
    the basic bootstrap 95% interval fid_lo..fid_hi for the population FID, its bias-corrected estimate fid_bc and
    FID's spread at this N fid_sd (metrics.fid_bootstrap); with fid_counts, FID at those sample counts and its 1/n
    extrapolation fid_inf (Chong & Forsyth 2020)."""
    out: dict = {}
    if feats is not None:
        out.update(fid=fid(real_feats, feats), kid=kid(real_feats, feats), **prdc(real_feats, feats))
        if fid_boot > 0:
            with warnings.catch_warnings():  # resamples hold duplicates: singular covariances are expected
                warnings.simplefilter("ignore", LinAlgWarning)
                boot = fid_bootstrap(real_feats, feats, num_boot=fid_boot, seed=seed)
            out.update(fid_lo=boot["lo"], fid_hi=boot["hi"], fid_bc=boot["fid_bc"], fid_sd=boot["sd"])
        counts = sorted({n for n in fid_counts if 2 <= n <= len(feats)} | ({len(feats)} if fid_counts else set()))
        if len(counts) >= 2:
            out["fid_curve"] = fid_curve(real_feats, feats, counts, seed=seed)
            out["fid_inf"] = fid_extrapolate(out["fid_curve"])
    if judged is not None:
        out.update(mode_stats(judged, num_modes, reference_probs))
        out["cond_accuracy"] = cond_accuracy(prompted.numpy(), judged)
    out["num_samples"] = len(prompted)
    return out


def unavailable_metrics(has_judge: bool, has_inception: bool, inception_missing: str | None = None) -> dict | None:
    """Which metrics a run cannot report and why (None when all are there)."""
    if has_judge:
        return missing_inception(inception_missing) if inception_missing else None
    missing = ["modes", "reverse_kl", "forward_kl", "cond_accuracy"] + (
        [] if has_inception else ["fid", "kid", "precision", "recall", "density", "coverage"])
    why = ("the dataset has no classes to train a judge on" + ("" if has_inception else
           f", and {inception_missing or 'no Inception weights were given (images.inception / --inception-weights)'}"))
    return {"metrics": missing, "why": why, **({"fix": missing_inception("")["fix"]} if inception_missing else {})}


def _points(points: list[dict]) -> list[dict]:
    """Curve and sweep points keep the headline metrics only (no bootstrap, no nested lists)."""
    return [{k: v for k, v in p.items() if k in CURVE_KEYS or k in ("step", "value", "error")} for p in points]
