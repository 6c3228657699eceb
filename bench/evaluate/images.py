"""The evaluation stage of the image benchmark: one protocol for every family (bench/families).

    reference   test images (never a training image), the same for every seed and family
    prompts     drawn from the data's caption distribution; per-sample seeds, the same for every family
    neutral     each family at its knob's neutral value (GAN truncation psi = 1, diffusion guidance scale s = 1)
    tuned       each family at its best knob value by one rule: the lowest FID over its knob grid on validation
                prompts and seeds disjoint from the scored ones; then scored on the scored prompts and seeds
    raw / EMA   families that keep an EMA sample from it; the raw networks are scored beside them
    cost        network passes per sample, both halves of classifier-free guidance counted (the family says)
    memorisation  nearest-neighbour distances of the samples to the training vs the test split, the share of
                near-copies and the data-copying statistic C_T (Meehan et al. 2020), the same for every family

Metrics (image_metrics): FID / KID on features (judge, or Inception for data without classes), precision/recall
(Kynkaanniemi et al. 2019, k = 3), density/coverage (Naeem et al. 2020, k = 5), modes and reverse KL(p_gen ||
p_test) over the judge's labels, prompt accuracy.
"""

import time
import warnings
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from scipy.linalg import LinAlgWarning
from threadpoolctl import threadpool_limits  # installed with scikit-learn

from bench.core import distributed
from bench.core.guard import error_text
from bench.core.pool import torch_threads
from bench.core.seeding import sample_seeds
from bench.core.stages import stage
from bench.data.featcache import cached_features
from bench.data.inception import missing_inception
from bench.evaluate.metrics import (
    cond_accuracy,
    data_copying,
    fid,
    fid_bootstrap,
    fid_curve,
    fid_extrapolate,
    kid,
    kid_report,
    label_probs,
    memorisation,
    mode_stats,
    prdc,
)
from bench.evaluate.protocol import feature_protocols
from bench.evaluate.stability import stability, steps_to_threshold
from bench.evaluate.sweeps import sweep
from bench.evaluate.table import extra_metrics
from bench.families.interface import Prompts
from bench.train.loops import autocast, initial_weight_share, precision
from models.vae import psnr

TUNING_RULE = ("the lowest FID over the family's knob grid on validation prompts and seeds, against validation "
               "reference images (both disjoint from the scored ones where the test split allows: tuned.validation)")
CURVE_KEYS = ("fid", "kid", "precision", "recall", "density", "coverage", "modes", "reverse_kl", "cond_accuracy",
              "num_samples", "initial_weight_share", "train_flops")
COND_THRESHOLD = 0.5  # "steps to threshold" on images: first checkpoint with this prompt accuracy


@dataclass
class EvalSet:
    """What every family is scored on, the same for all of them."""

    scored: Prompts  # the prompts and seeds every reported number uses
    validation: Prompts  # disjoint prompts and seeds: where each family's knob is tuned
    real: torch.Tensor  # (N, C, H, W) reference images: test images, the same for every seed and family
    reference: dict  # how they were drawn (bench.data.images.reference_set): asked, given, short, hash
    real_feats: np.ndarray | None  # their features (judge, or Inception for data without classes)
    real_inception: np.ndarray | None  # their Inception features, when Inception is on (cached across runs)
    p_test: np.ndarray | None  # the test split's mode distribution, p_data of the mode KL (None without a judge)
    split_feats: tuple | None  # judge features of (train, test) for memorisation (None without a judge)
    protocols: dict  # how the feature metrics are computed, by feature family (bench/evaluate/protocol.py)
    unavailable: dict | None  # which metrics this dataset cannot have, and why
    validation_feats: np.ndarray | None = None  # features of the validation reference: where the knobs are tuned
    validation_reference: dict | None = None  # what it is: held-out test images disjoint from the scored reference
    device: torch.device = torch.device("cpu")  # where every family samples
    amp: bool = False  # bf16 autocast of sampling, for every family alike (bench/train/loops.py autocast)


def real_features(prep, images: torch.Tensor) -> np.ndarray:
    """The judge's features of real images, from the feature cache (bench/data/featcache.py): they depend on the
    images and the judge's weights alone, so every seed and family of a dataset reads the copy the first computed.
    Computed on one thread, so the cached values do not depend on which process filled the cache."""
    with torch_threads(1):
        return cached_features(images, prep.judge, prep.cache_dir)[0]


def occurrences(labels: torch.Tensor) -> torch.Tensor:
    """(N,) k for each row: the row is the k-th (from 0) with its label."""
    seen: dict[int, int] = {}
    out = []
    for label in labels.tolist():
        out.append(seen.get(label, 0))
        seen[label] = out[-1] + 1
    return torch.tensor(out, dtype=torch.long)


def prompts_for(text, data, n: int, prompt_seed: int, seeds: torch.Tensor) -> Prompts:
    """n prompts from the data's caption distribution (a seeded draw), encoded by the shared text encoder."""
    captions, labels = data.prompts(n, seed=prompt_seed)
    return Prompts(captions, labels, text.encode(captions), seeds, occurrences(labels))


def eval_set(prep, text, cfg, seed: int, device="cpu") -> EvalSet:
    """The scored and validation prompts and the reference set (prep.reference: the same test images for every
    seed, so every run of a dataset is scored against the same images), with their features."""
    n_val = min(cfg.sweep_samples, cfg.num_samples)
    seeds = sample_seeds(seed, cfg.num_samples + n_val)  # the validation seeds follow the scored ones: disjoint
    scored = prompts_for(text, prep.data, cfg.num_samples, 10_000 + seed, seeds[: cfg.num_samples])
    validation = prompts_for(text, prep.data, n_val, 20_000 + seed, seeds[cfg.num_samples :])
    ref = prep.reference.images
    real_inception = (cached_features(ref, prep.inception, prep.cache_dir)[0] if prep.inception is not None
                      else None)
    description = f"{prep.dataset}: test split, {prep.reference_record['given']} of {len(prep.test.labels)} images"
    protocols = feature_protocols(ref, cfg.num_samples, description, inception=prep.inception,
                                  judge_net=prep.judge.net if prep.judge is not None else None,
                                  arithmetic=precision(device, cfg.amp))
    missing = unavailable_metrics(prep.judge is not None, prep.inception is not None, prep.inception_missing)
    ev = EvalSet(scored, validation, ref, prep.reference_record, real_inception, real_inception, None, None,
                 protocols, missing, device=torch.device(device), amp=cfg.amp)
    if prep.judge is not None:
        ev.real_feats = real_features(prep, ref)
        ev.p_test = label_probs(prep.test.labels.numpy(), prep.data.num_modes,
                                None if prep.test.channel_labels is None else prep.test.channel_labels.numpy())
        ev.split_feats = (real_features(prep, prep.data.images), real_features(prep, prep.test.images))
    ev.validation_feats, ev.validation_reference = _validation_reference(prep, ev, n_val)
    return ev


def _validation_reference(prep, ev: EvalSet, n: int) -> tuple[np.ndarray | None, dict]:
    """The real images the knobs are tuned against: up to n held-out test images, disjoint from the scored
    reference; where the test split has none left, the scored reference itself (and the record says so). The record
    also says how many validation prompt strings occur among the scored prompts: a caption space of a few hundred
    strings (shapes: 240) cannot give 1,000 scored prompts and disjoint validation ones."""
    scored = set(ev.scored.captions)
    overlap = sum(c in scored for c in ev.validation.captions) / max(len(ev.validation.captions), 1)
    record = {"prompts": len(ev.validation.captions), "prompt_strings_also_scored": overlap, "seeds": "disjoint"}
    held = prep.held_out[:n]
    if len(held) == 0 or ev.real_feats is None:
        return ev.real_feats, {**record, "images": ev.reference["given"], "disjoint": False,
                               "why": "the test split holds no image outside the scored reference"}
    images = prep.test.images[held]
    feats = real_features(prep, images) if prep.judge is not None else prep.inception.features(images)
    return feats, {**record, "images": len(held), "disjoint": True}


def draw(ev: EvalSet, family, trained, prompts: Prompts, n: int, knob: float, net=None) -> tuple[torch.Tensor, int]:
    """The first n images of a family for a prompt set at one knob value, from its trained model or another network
    `net` of the same shape (a snapshot, the raw weights), in the evaluation's arithmetic (the same for every
    family). Returns (images in float32, network passes per sample).
    [ddp] Each rank draws its block of the n per-sample seeds; the blocks are gathered back to all n, in order."""
    def rows(part: slice):
        with autocast(ev.device, ev.amp):
            images, nfe = family.sample_image(trained, prompts.rows(part), knob, net)
        return images.float(), nfe

    return distributed.sample_sharded(rows, n)


def score(prep, ev: EvalSet, prompts: Prompts, images: torch.Tensor, against: np.ndarray | None = None,
          **extra) -> dict:
    """image_metrics of generated images against the reference set (`against`: other reference features, the
    validation reference's); raises FloatingPointError on NaN images."""
    return distributed.on_main(partial(_score, prep, ev, prompts, images, against, **extra))  # [ddp] once, on rank 0


def _score(prep, ev: EvalSet, prompts: Prompts, images: torch.Tensor, against, **extra) -> dict:
    feats, judged = describe(images, prep.judge, prep.inception)
    real = ev.real_feats if against is None else against
    # One BLAS thread: the metrics' matrices are small (128 features), and OpenBLAS threads spinning against
    # torch's on a busy 2-core machine made each FID's sqrtm 250x slower (1.2 s instead of 5 ms).
    prompted = prompts.labels[: len(images)]
    with threadpool_limits(limits=1, user_api="blas"):
        out = image_metrics(real, feats, judged, prompted, prep.data.num_modes, reference_probs=ev.p_test, **extra)
    sample_set = {"real_feats": real, "feats": feats, "judged": judged, "prompted": prompted,
                  "num_modes": prep.data.num_modes, "images": images.numpy()}
    return {**out, **extra_metrics(sample_set)}


@dataclass
class Setting:
    """One knob value of a family, drawn on the scored prompts and seeds at full size, and scored."""

    value: float  # the knob's value
    images: torch.Tensor
    nfe: int  # network passes per sample
    seconds: float  # wall time of drawing the images
    metrics: dict  # every metric of the images (empty when they could not be scored)


@dataclass
class FamilyScore:
    """Everything the evaluation stage measured of one family on one (dataset, seed)."""

    neutral: Setting  # the headline: the neutral knob
    tuned: Setting  # the best knob value by TUNING_RULE (the same object as neutral when that is the best)
    validation: list[dict]  # the sweep on the validation prompts the tuned value was chosen from
    curve: list[dict]  # metrics of the training snapshots' EMAs, at the neutral knob
    raw: dict  # the raw (non-EMA) network at the neutral knob on the curve's prompts and seeds
    memorisation: dict  # of the neutral samples (judge features)
    stability: dict  # the training history's diagnostics (bench/evaluate/stability.py)
    autoencoder: dict | None = None  # a latent family's autoencoder on the reference images: PSNR, kept classes
    problem: dict | None = None  # status fields when the samples could not be scored (non-finite: diverged)


def _metrics(prep, ev: EvalSet, images: torch.Tensor, cfg, seed: int) -> dict:
    """Every metric of one setting's images on the scored prompts (raises FloatingPointError on non-finite ones)."""
    out = score(prep, ev, ev.scored, images, fid_boot=cfg.fid_bootstrap, fid_counts=tuple(cfg.fid_counts), seed=seed)
    if prep.judge is not None:
        out["judge_accuracy"] = prep.judge.accuracy
    if ev.real_inception is not None and prep.judge is not None:  # beside the judge's, comparable with papers'
        out.update(inception_metrics(ev.real_inception, prep.inception.features(images))[0])
    return out


def _setting(prep, ev: EvalSet, family, trained, knob: float, cfg, seed: int) -> Setting:
    t0 = time.perf_counter()
    images, nfe = draw(ev, family, trained, ev.scored, cfg.num_samples, knob)
    seconds = time.perf_counter() - t0
    return Setting(knob, images, nfe, seconds, _metrics(prep, ev, images, cfg, seed))


def tune(prep, ev: EvalSet, family, trained, cfg) -> tuple[float | None, list[dict]]:
    """The family's knob value by TUNING_RULE, and the validation sweep it was read from. Without a knob, a grid or
    features to compute FID: (the neutral value, [])."""
    neutral = family.knob.neutral if family.knob else None
    values = family.grid(cfg) if family.knob else []
    if ev.real_feats is None or not values:
        return neutral, []
    n = len(ev.validation.seeds)
    generate = lambda value: draw(ev, family, trained, ev.validation, n, value)[0]  # noqa: E731
    points = _points(sweep(values, generate, partial(score, prep, ev, ev.validation, against=ev.validation_feats)))
    finite = [p for p in points if p.get("fid") is not None and np.isfinite(p["fid"])]
    return (min(finite, key=lambda p: p["fid"])["value"] if finite else neutral), points


def curve_points(prep, ev: EvalSet, family, trained, cfg, headline) -> list[dict]:
    """Metric-over-training: each snapshot's EMA at the neutral knob on the first curve_samples scored prompts (at the
    final step, the headline's first images: the same network)."""
    if ev.real_feats is None or not trained.snapshots:
        return []
    n, final = min(cfg.curve_samples, cfg.num_samples), len(trained.history)
    at_step = {s.step: s.ema for s in trained.snapshots}
    knob = family.knob.neutral if family.knob else 1.0

    def images(step):
        return headline[:n] if step == final else draw(ev, family, trained, ev.scored, n, knob, net=at_step[step])[0]

    points = _points(sweep(list(at_step), images, partial(score, prep, ev, ev.scored), key="step"))
    for point in points:
        point["initial_weight_share"] = initial_weight_share(point["step"], trained.ema_decay)
        point["train_flops"] = train_flops_at(trained.train, point["step"])
    return points


def train_flops_at(train: dict, step: int) -> float | None:
    """The training FLOPs spent by a step (the compute axis of the curves): the stage before the steps (an
    autoencoder) and `step` steps."""
    if "step_flops" not in train:
        return None
    return train.get("setup_flops", 0.0) + step * train["step_flops"]


def raw_point(prep, ev: EvalSet, family, trained, cfg) -> dict:
    """The raw network at the neutral knob, on the curve's prompts and seeds (comparable with the curve's last, EMA
    point)."""
    if ev.real_feats is None or trained.raw is None:
        return {}
    n = min(cfg.curve_samples, cfg.num_samples)
    knob = family.knob.neutral if family.knob else 1.0
    images = draw(ev, family, trained, ev.scored, n, knob, net=trained.raw)[0]
    return _points(sweep([n], lambda _: images, partial(score, prep, ev, ev.scored), key="num_samples"))[0]


def memorisation_record(ev: EvalSet, prep, images: torch.Tensor) -> dict:
    """Memorisation of one sample set, on judge features, against the training split and the scored reference
    (held-out test images, which no family trains on or replays): near-copies of each, their excess, C_T."""
    if ev.split_feats is None or not torch.isfinite(images).all():
        return {}
    train_feats, held_feats = ev.split_feats[0], ev.real_feats
    fake = prep.judge.features(images)
    with threadpool_limits(limits=1, user_api="blas"):
        out = memorisation(train_feats, held_feats, fake)
        out["c_t"] = data_copying(train_feats, held_feats, fake)["c_t"]
    return out


def autoencoder_report(prep, ev: EvalSet, family, trained) -> dict | None:
    """A latent family's autoencoder on the reference images: PSNR of the round trip and the share the judge still
    labels the same (the ceiling of that family's prompt accuracy)."""
    if family.autoencode is None:
        return None
    recon = family.autoencode(trained, ev.real)
    judge = prep.judge
    same = float((judge.labels(recon) == judge.labels(ev.real)).float().mean()) if judge is not None else None
    return {"psnr": psnr(recon, ev.real), "recon_accuracy": same}


def _unscorable(exc: Exception) -> dict:
    """The status fields of a family whose samples could not be scored: non-finite samples are a divergence."""
    if isinstance(exc, FloatingPointError):
        return {"status": "diverged", "diverged_at_step": None, "diverged_in": "sampling", "error": error_text(exc)}
    return {"status": "failed", "error": error_text(exc)}


def evaluate_family(prep, ev: EvalSet, family, trained, cfg, seed: int) -> FamilyScore:
    """Both knob settings on the scored prompts, the validation sweep, the curve, the raw network, memorisation,
    stability; samples that cannot be scored (NaN) make the family diverged in sampling."""
    neutral_value = family.knob.neutral if family.knob else 1.0
    history_stability = stability(trained.history) if trained.history else {}
    try:
        with stage("sample and score (neutral knob)"):
            neutral = _setting(prep, ev, family, trained, neutral_value, cfg, seed)
    except (FloatingPointError, ValueError) as exc:
        empty = Setting(neutral_value, torch.zeros(0), 0, 0.0, {})
        curve = curve_points(prep, ev, family, trained, cfg, torch.zeros(0))
        return FamilyScore(empty, empty, [], curve, {}, {}, history_stability, problem=_unscorable(exc))
    with stage("knob sweeps (validation)"):
        best, validation = tune(prep, ev, family, trained, cfg)
    with stage("sample and score (tuned knob)"):
        tuned = (neutral if best is None or best == neutral_value
                 else _setting(prep, ev, family, trained, best, cfg, seed))
    with stage("curves (training snapshots, raw weights)"):
        curve, raw = curve_points(prep, ev, family, trained, cfg, neutral.images), raw_point(prep, ev, family,
                                                                                              trained, cfg)
    if curve and prep.judge is not None:
        history_stability.update(threshold=f"cond_accuracy >= {COND_THRESHOLD}",
                                 steps_to_threshold=steps_to_threshold(curve, "cond_accuracy", COND_THRESHOLD))
    with stage("memorisation"):
        memorised = memorisation_record(ev, prep, neutral.images)
    with stage("autoencoder report"):
        autoencoder = autoencoder_report(prep, ev, family, trained)
    return FamilyScore(neutral, tuned, validation, curve, raw, memorised, history_stability, autoencoder)


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


def inception_metrics(real_feats: np.ndarray, fake_feats: np.ndarray, seed: int = 0) -> tuple[dict, dict]:
    """FID, KID and precision/recall/density/coverage on Inception features, the keys suffixed `_inception` so they
    stand beside the judge's; and KID's subset size and why it was shrunk, if it was (for the protocol record)."""
    kid_rec = kid_report(real_feats, fake_feats, seed=seed)
    metrics = {"fid_inception": fid(real_feats, fake_feats), "kid_inception": kid_rec["kid"],
               **{f"{name}_inception": value for name, value in prdc(real_feats, fake_feats).items()}}
    return metrics, {"kid_subset_size": kid_rec["kid_subset_size"], "kid_subset_note": kid_rec["kid_subset_note"]}


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
