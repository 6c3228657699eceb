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

Metrics (image_metrics), in three feature spaces (bench/data/encoder.py says why the judge's alone is not enough):
    judge        FID / KID, precision/recall (Kynkaanniemi et al. 2019, k = 3), density/coverage (Naeem et al. 2020,
                 k = 5) on the class-trained judge's features (Inception's for data without classes); modes and
                 reverse KL(p_gen || p_test) over its labels, prompt accuracy
    label-free   FID and PRDC (suffix _lf) on the label-free encoder's features; intra-class FID (Miyato & Koyama
                 2018) by prompted class; within-class coverage by the judge's class; memorisation
    factors      on data whose generator records its factors (shapes): within-class coverage of the read factors
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
    copying_cells,
    data_copying,
    fid,
    fid_bootstrap,
    fid_curve,
    fid_extrapolate,
    intra_fid,
    kid,
    kid_report,
    label_probs,
    memorisation,
    memorisation_reference,
    mode_stats,
    prdc,
    within_class_coverage,
)
from bench.evaluate.protocol import feature_protocols
from bench.evaluate.stability import stability, steps_to_threshold
from bench.evaluate.sweeps import sweep
from bench.evaluate.table import extra_metrics
from bench.families.calibration import Pool
from bench.families.interface import Prompts
from bench.train.loops import autocast, initial_weight_share, precision
from models.vae import psnr

TUNING_RULE = ("the lowest FID (label-free features; the judge's where there is no label-free encoder) over the "
               "family's knob grid on validation prompts and seeds, against validation reference images (both "
               "disjoint from the scored ones where the test split allows: tuned.validation)")
CURVE_KEYS = ("fid", "kid", "precision", "recall", "density", "coverage", "modes", "reverse_kl", "cond_accuracy",
              "fid_lf", "precision_lf", "recall_lf", "coverage_lf", "intra_fid", "within_coverage", "factor_coverage",
              "num_samples", "initial_weight_share", "train_flops")
COND_THRESHOLD = 0.5  # "steps to threshold" on images: first checkpoint with this prompt accuracy


@dataclass
class Reading:
    """What the frozen readers see in one set of images (bench/data/judge.py, bench/data/encoder.py)."""

    feats: np.ndarray | None  # (N, F) the judge's features (Inception's for data without classes)
    labels: np.ndarray | None  # (N,) the judge's labels of generated images; a real set's own labels
    lf: np.ndarray | None = None  # (N, D) the label-free encoder's features
    factors: np.ndarray | None = None  # (N, K) the generator factors read back (shapes), else None


@dataclass
class EvalSet:
    """What every family is scored on, the same for all of them."""

    scored: Prompts  # the prompts and seeds every reported number uses
    validation: Prompts  # disjoint prompts and seeds: where each family's knob is tuned
    real: torch.Tensor  # (N, C, H, W) reference images: test images, the same for every seed and family
    reference: dict  # how they were drawn (bench.data.images.reference_set): asked, given, short, hash
    ref: Reading  # the reference images as the readers see them (labels: their true classes)
    real_inception: np.ndarray | None  # their Inception features, when Inception is on (cached across runs)
    p_test: np.ndarray | None  # the test split's mode distribution, p_data of the mode KL (None without a judge)
    train_lf: np.ndarray | None  # label-free features of the training split, for memorisation
    protocols: dict  # how the feature metrics are computed, by feature family (bench/evaluate/protocol.py)
    unavailable: dict | None  # which metrics this dataset cannot have, and why
    validation_ref: Reading | None = None  # the validation reference as the readers see it: where knobs are tuned
    validation_reference: dict | None = None  # what it is: held-out test images disjoint from the scored reference
    baseline: dict | None = None  # the held-out real row's reading on the scored prompts: what the outcome rule
    #                               compares a family with (bench/evaluate/stability.py outcome)
    copying: tuple | None = None  # (memorisation_reference, copying_cells) of the real sets: computed once
    device: torch.device = torch.device("cpu")  # where every family samples
    amp: bool = False  # bf16 autocast of sampling, for every family alike (bench/train/loops.py autocast)

    @property
    def real_feats(self) -> np.ndarray | None:
        return self.ref.feats


def real_features(prep, images: torch.Tensor, reader=None) -> np.ndarray:
    """A frozen reader's features of real images (the judge's by default), from the feature cache
    (bench/data/featcache.py): they depend on the images and the reader's weights alone, so every seed and family of
    a dataset reads the copy the first computed. Computed on one thread, so the cached values do not depend on which
    process filled the cache."""
    with torch_threads(1):
        return cached_features(images, reader or prep.judge, prep.cache_dir)[0]


def read_real(prep, images: torch.Tensor, labels: torch.Tensor) -> Reading:
    """Real images as every reader sees them (cached), with their own labels."""
    if prep.judge is not None:
        feats = real_features(prep, images)
    else:
        feats = cached_features(images, prep.inception, prep.cache_dir)[0] if prep.inception is not None else None
    lf = real_features(prep, images, prep.encoder) if getattr(prep, "encoder", None) is not None else None
    factors = real_features(prep, images, prep.factors) if getattr(prep, "factors", None) is not None else None
    return Reading(feats, labels.numpy() if prep.judge is not None else None, lf, factors)


def read(prep, images: torch.Tensor) -> Reading:
    """Generated images as every reader sees them; FloatingPointError on non-finite images (a diverged model's)."""
    feats, judged = describe(images, prep.judge, prep.inception)
    encoder, factors = getattr(prep, "encoder", None), getattr(prep, "factors", None)
    return Reading(feats, judged, encoder.features(images) if encoder is not None else None,
                   factors.features(images) if factors is not None else None)


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


def eval_set(prep, text, cfg, seed: int, device="cpu", scored: Prompts | None = None) -> EvalSet:
    """The scored and validation prompts and the reference set (prep.reference: the same test images for every
    seed, so every run of a dataset is scored against the same images), with their features; and the held-out real
    row's reading on the scored prompts (the baseline of the outcome rule). `scored`: given prompts instead of drawn
    ones (`gvd score`: those a user's samples were made for); with text None (no text encoder) they are the
    validation prompts too."""
    n_val = min(cfg.sweep_samples, cfg.num_samples)
    seeds = sample_seeds(seed, cfg.num_samples + n_val)  # the validation seeds follow the scored ones: disjoint
    if scored is None:
        scored = prompts_for(text, prep.data, cfg.num_samples, 10_000 + seed, seeds[: cfg.num_samples])
    validation = (scored if text is None else
                  prompts_for(text, prep.data, n_val, 20_000 + seed, seeds[cfg.num_samples :]))
    ref = prep.reference.images
    real_inception = (cached_features(ref, prep.inception, prep.cache_dir)[0] if prep.inception is not None
                      else None)
    description = f"{prep.dataset}: test split, {prep.reference_record['given']} of {len(prep.test.labels)} images"
    protocols = feature_protocols(ref, cfg.num_samples, description, inception=prep.inception,
                                  judge_net=prep.judge.net if prep.judge is not None else None,
                                  encoder=getattr(prep, "encoder", None), arithmetic=precision(device, cfg.amp))
    missing = unavailable_metrics(prep.judge is not None, prep.inception is not None, prep.inception_missing)
    encoder = getattr(prep, "encoder", None)
    train_lf = real_features(prep, prep.data.images, encoder) if encoder is not None else None
    ev = EvalSet(scored, validation, ref, prep.reference_record, read_real(prep, ref, prep.reference.labels),
                 real_inception, None, train_lf, protocols, missing, device=torch.device(device), amp=cfg.amp)
    if prep.judge is not None:
        ev.p_test = label_probs(prep.test.labels.numpy(), prep.data.num_modes,
                                None if prep.test.channel_labels is None else prep.test.channel_labels.numpy())
    ev.validation_ref, ev.validation_reference = _validation_reference(prep, ev, n_val)
    if train_lf is not None:
        with threadpool_limits(limits=1, user_api="blas"):
            ev.copying = (memorisation_reference(train_lf, ev.ref.lf), copying_cells(train_lf))
    ev.baseline = baseline(prep, ev, seed)
    return ev


BASELINE_KEYS = ("precision_lf", "modes", "within_coverage", "cond_accuracy", "num_samples")


def baseline(prep, ev: EvalSet, seed: int) -> dict | None:
    """What the held-out real row reads on the scored prompts (the same images it shows: test images outside the
    scored reference, one of the prompted class per prompt, bench/families/calibration.py): fresh data at this
    sample count, the yardstick of the outcome rule. None where no image is held out or there is no judge."""
    if len(prep.held_out) == 0 or prep.judge is None:
        return None
    from_pool = held_out_pool(prep, seed).draw(ev.scored.labels, ev.scored.occurrence)
    out = score(prep, ev, ev.scored, from_pool)
    return {k: out[k] for k in BASELINE_KEYS if out.get(k) is not None}


def held_out_pool(prep, seed: int) -> Pool:
    """The held-out real row's images by class, as that family draws them for a seed."""
    return Pool.of(prep.test.images[prep.held_out], prep.test.labels[prep.held_out], seed)


def _validation_reference(prep, ev: EvalSet, n: int) -> tuple[Reading | None, dict]:
    """The real images the knobs are tuned against: up to n held-out test images, disjoint from the scored
    reference; where the test split has none left, the scored reference itself (and the record says so). The record
    also says how many validation prompt strings occur among the scored prompts: a caption space of a few hundred
    strings (shapes: 240) cannot give 1,000 scored prompts and disjoint validation ones."""
    scored = set(ev.scored.captions)
    overlap = sum(c in scored for c in ev.validation.captions) / max(len(ev.validation.captions), 1)
    record = {"prompts": len(ev.validation.captions), "prompt_strings_also_scored": overlap, "seeds": "disjoint"}
    held = prep.held_out[:n]
    if len(held) == 0 or ev.ref.feats is None:
        return ev.ref, {**record, "images": ev.reference["given"], "disjoint": False,
                        "why": "the test split holds no image outside the scored reference"}
    return (read_real(prep, prep.test.images[held], prep.test.labels[held]),
            {**record, "images": len(held), "disjoint": True})


RANGE_SLACK = 1e-3  # images are in [-1, 1]; a family's rounding may overshoot by this much


class SampleError(ValueError):
    """A family's samples are not what the protocol scores: the entry fails in one line naming the family."""


def check_images(family: str, images, n: int, shape: tuple | None = None) -> None:
    """A family's images before anything scores them: a floating-point tensor of n images (N, C, H, W), of the
    reference's (C, H, W) when given, finite values in [-1, 1]. Non-finite values pass (a diverged model's samples:
    scoring records the divergence). SampleError names the family and what is wrong."""
    what = f"the {family} family's sample_image"
    if not isinstance(images, torch.Tensor):
        raise SampleError(f"{what} returned {type(images).__name__}, not a tensor of images")
    if not images.dtype.is_floating_point:
        raise SampleError(f"{what} returned {images.dtype} images; give floats in [-1, 1]")
    if images.dim() != 4 or images.shape[0] != n:
        raise SampleError(f"{what} returned shape {tuple(images.shape)} for {n} prompts; give (N, C, H, W) with "
                          f"N = {n}")
    if shape is not None and tuple(images.shape[1:]) != tuple(shape):
        raise SampleError(f"{what} returned images of shape {tuple(images.shape[1:])}; the data's are {tuple(shape)}")
    finite = images[torch.isfinite(images)]
    if finite.numel() and finite.abs().max().item() > 1 + RANGE_SLACK:
        raise SampleError(f"{what} returned values in [{finite.min().item():.3g}, {finite.max().item():.3g}]; give "
                          "images in [-1, 1]")


def draw(ev: EvalSet, family, trained, prompts: Prompts, n: int, knob: float, net=None) -> tuple[torch.Tensor, int]:
    """The first n images of a family for a prompt set at one knob value, from its trained model or another network
    `net` of the same shape (a snapshot, the raw weights), in the evaluation's arithmetic (the same for every
    family). Returns (images in float32, network passes per sample).
    [ddp] Each rank draws its block of the n per-sample seeds; the blocks are gathered back to all n, in order."""
    def rows(part: slice):
        asked = prompts.rows(part)
        with autocast(ev.device, ev.amp):
            images, nfe = family.sample_image(trained, asked, knob, net)
        check_images(family.name, images, len(asked.seeds), tuple(ev.real.shape[1:]))
        return images.float(), nfe

    return distributed.sample_sharded(rows, n)


def score(prep, ev: EvalSet, prompts: Prompts, images: torch.Tensor, against: Reading | None = None,
          **extra) -> dict:
    """image_metrics of generated images against the reference set (`against`: another reference, the validation
    reference); raises FloatingPointError on NaN images."""
    return distributed.on_main(partial(_score, prep, ev, prompts, images, against, **extra))  # [ddp] once, on rank 0


def _score(prep, ev: EvalSet, prompts: Prompts, images: torch.Tensor, against, **extra) -> dict:
    fake = read(prep, images)
    real = ev.ref if against is None else against
    # One BLAS thread: the metrics' matrices are small (128 features), and OpenBLAS threads spinning against
    # torch's on a busy 2-core machine made each FID's sqrtm 250x slower (1.2 s instead of 5 ms).
    prompted = prompts.labels[: len(images)]
    with threadpool_limits(limits=1, user_api="blas"):
        out = image_metrics(real, fake, prompted, prep.data.num_modes, reference_probs=ev.p_test, **extra)
    sample_set = {"real_feats": real.feats, "feats": fake.feats, "judged": fake.labels, "prompted": prompted,
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
    points = _points(sweep(values, generate, partial(score, prep, ev, ev.validation, against=ev.validation_ref)))
    key = "fid_lf" if ev.ref.lf is not None else "fid"
    finite = [p for p in points if p.get(key) is not None and np.isfinite(p[key])]
    return (min(finite, key=lambda p: p[key])["value"] if finite else neutral), points


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
    """Memorisation of one sample set, on label-free features, against the training split and the scored reference
    (held-out test images, which no family trains on or replays): the copy excess, near-copies of each, C_T."""
    if ev.train_lf is None or ev.ref.lf is None or not torch.isfinite(images).all():
        return {}
    fake = prep.encoder.features(images)
    reference, cells = ev.copying
    with threadpool_limits(limits=1, user_api="blas"):
        out = memorisation(ev.train_lf, ev.ref.lf, fake, reference=reference)
        out["c_t"] = data_copying(ev.train_lf, ev.ref.lf, fake, kmeans=cells)["c_t"]
    out["features"] = "label-free encoder"
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


def image_metrics(real: Reading, fake: Reading, prompted: torch.Tensor, num_modes: int, fid_boot: int = 0,
                  fid_counts: tuple[int, ...] = (), seed: int = 0, reference_probs: np.ndarray | None = None) -> dict:
    """FID/KID (clean-fid's formulas) and PRDC on the judge's features, mode statistics (against reference_probs, the
    test split's mode distribution) and prompt accuracy on its labels; FID and PRDC on the label-free features
    (suffix _lf), intra-class FID (by prompted class) and within-class coverage (by the judge's class) on them, and
    within-class coverage of the read factors (factor_coverage): each where its input exists. With fid_boot > 0 the
    basic bootstrap 95% interval fid_lo..fid_hi for the population FID, its bias-corrected estimate fid_bc and FID's
    spread at this N fid_sd (metrics.fid_bootstrap); with fid_counts, FID at those sample counts and its 1/n
    extrapolation fid_inf (Chong & Forsyth 2020)."""
    out: dict = {}
    if fake.feats is not None:
        out.update(fid=fid(real.feats, fake.feats), kid=kid(real.feats, fake.feats), **prdc(real.feats, fake.feats))
        out.update(_fid_spread(real.feats, fake.feats, fid_boot, fid_counts, seed))
    if fake.labels is not None:
        out.update(mode_stats(fake.labels, num_modes, reference_probs))
        out["cond_accuracy"] = cond_accuracy(prompted.numpy(), fake.labels)
    out.update(within_class(real, fake, prompted))
    out["num_samples"] = len(prompted)
    return out


def within_class(real: Reading, fake: Reading, prompted: torch.Tensor) -> dict:
    """The label-free metrics: FID and PRDC (_lf), intra-class FID, within-class coverage of the label-free features
    and of the read factors (each standardised by the reference's spread: no factor weighs more for its units)."""
    out: dict = {}
    if fake.lf is None or real.lf is None:
        return out
    out["fid_lf"] = fid(real.lf, fake.lf)
    out.update({f"{k}_lf": v for k, v in prdc(real.lf, fake.lf).items()})
    if real.labels is None or fake.labels is None:
        return out
    intra = intra_fid(real.lf, real.labels, fake.lf, prompted.numpy())
    out.update(intra_fid=intra["intra_fid"], intra_fid_classes=intra["classes"],
               intra_fid_min_count=intra["min_count"], intra_fid_median_count=intra["median_count"])
    out["within_coverage"] = within_class_coverage(real.lf, real.labels, fake.lf, fake.labels)["within_coverage"]
    if real.factors is not None and fake.factors is not None:
        scale = real.factors.std(axis=0).clip(1e-12)
        by = within_class_coverage(real.factors / scale, real.labels, fake.factors / scale, fake.labels)
        out.update(factor_coverage=by["within_coverage"], factor_coverage_by_class=by["by_class"])
    return {k: v for k, v in out.items() if v is not None}


def _fid_spread(real: np.ndarray, fake: np.ndarray, fid_boot: int, fid_counts: tuple[int, ...], seed: int) -> dict:
    """FID's bootstrap interval and bias-corrected value, and its curve over sample counts with FID_inf."""
    out: dict = {}
    if fid_boot > 0:
        with warnings.catch_warnings():  # resamples hold duplicates: singular covariances are expected
            warnings.simplefilter("ignore", LinAlgWarning)
            boot = fid_bootstrap(real, fake, num_boot=fid_boot, seed=seed)
        out.update(fid_lo=boot["lo"], fid_hi=boot["hi"], fid_bc=boot["fid_bc"], fid_sd=boot["sd"])
    counts = sorted({n for n in fid_counts if 2 <= n <= len(fake)} | ({len(fake)} if fid_counts else set()))
    if len(counts) >= 2:
        out["fid_curve"] = fid_curve(real, fake, counts, seed=seed)
        out["fid_inf"] = fid_extrapolate(out["fid_curve"])
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
