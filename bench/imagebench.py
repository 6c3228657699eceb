"""The image benchmark: a conditional DCGAN and a text-conditioned latent diffusion model on one captioned dataset.

Data flow for one (dataset, seed), in three stages that each return a small dataclass:

    prepare:  real images + captions --> judge (frozen classifier: mode labels + features; cached across runs)
    train:    text encoder, CLIP pre-trained then frozen: shared by both models (a fair comparison)
              GAN:       DCGAN G(z, pooled text), projection D                   } same examples seen per model step
              diffusion: KL-VAE, then UNet on scaled latents with cross-attention }
    evaluate: the same prompts and per-sample seeds for both --> samples --> judge --> metrics
    record:   run entries for results.json; histories, checkpoint and sample grids through the RunDir

Every model is trained from the seed; the data and the judge do not depend on it (the judge trains once per dataset
config and is cached), so seeds measure training variance only. The networks are wired in bench/image_models.py.
"""

import json
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from scipy.linalg import LinAlgWarning
from threadpoolctl import threadpool_limits  # installed with scikit-learn
from torch import nn
from tqdm.auto import tqdm

from bench import distributed
from bench.config import ImageBenchConfig, parse_sampler
from bench.featcache import cached_features
from bench.image_models import (
    ImageModels,
    encode_captions,
    encode_latents,
    network_configs,
    new_text_encoder,
    schedule,
)
from bench.images import ImageData, load_image_dataset
from bench.inception import Backbone, inception_backbone, inception_metrics, missing_inception
from bench.judge import Judge, judge_failure, load_or_train_judge
from bench.metrics import cond_accuracy, fid, fid_bootstrap, fid_curve, fid_extrapolate, kid, mode_stats, prdc
from bench.protocol import feature_protocols
from bench.results import failed_entry
from bench.rundir import RunDir
from bench.seeding import sample_seeds
from bench.stability import stability, steps_to_threshold
from bench.sweeps import sweep
from bench.train import (
    autocast,
    checkpoint_interval,
    drop_captions,
    initial_weight_share,
    train_diffusion,
    train_gan,
    vae_step,
)
from models.dcgan import Discriminator, Generator
from models.mlp import num_params
from models.text import Tokenizer, clip_loss
from models.unet import UNet
from models.vae import KLAutoencoder, latent_scale_factor, psnr

FAMILIES = ("gan", "diffusion")


def _cosine_opt(params, lr: float, steps: int):
    opt = torch.optim.Adam(params, lr=lr)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))


def _batches(n: int, batch_size: int, generator: torch.Generator):
    """Index batches drawn uniformly with replacement from a seeded generator (data resident on the device)."""
    return lambda step: torch.randint(n, (batch_size,), generator=generator)


# ---------------------------------------------------------------- stage 1: data and judge


@dataclass
class Prepared:
    dataset: str
    data: ImageData
    judge: Judge | None  # None for data without classes (no labels to train one on)
    inception: Backbone | None  # Inception-v3 (the extra's file or clean-fid's), when asked for and present
    inception_missing: str | None  # why Inception metrics were asked for and cannot be had
    cache_dir: Path  # where judges and reference features are cached
    failure: str | None = None  # why the run cannot go on (a judge below its accuracy floor)


def prepare(dataset: str, cfg: ImageBenchConfig, device: torch.device, cache_dir) -> Prepared:
    """The dataset (it does not vary with the seed), its judge (trained once, cached) and Inception if given."""
    data = load_image_dataset(dataset, cfg.num_train, cfg.resolution, seed=0)
    data_key = {"dataset": dataset, "num_train": cfg.num_train, "resolution": cfg.resolution, "seed": 0}
    judge = None
    if data.num_modes >= 2:
        with distributed.main_first():  # [ddp] rank 0 trains and caches the judge; the others read the cache
            judge = load_or_train_judge(data, data_key, cfg.judge, str(cache_dir), device=str(device))
    inception, inception_missing = inception_backbone(cfg.inception_weights, cfg.inception, str(device))
    if inception_missing:
        tqdm.write(f"{dataset}: no Inception metrics: {inception_missing}")
    failure = judge_failure(dataset, judge) if judge is not None else None
    return Prepared(dataset, data, judge, inception, inception_missing, Path(cache_dir), failure)


# ---------------------------------------------------------------- stage 2: training


def caption_groups(data: ImageData) -> torch.Tensor:
    """Ids of what each caption says (its template fields), so that captions saying the same thing in different
    words count as matches in the CLIP loss rather than as negatives."""
    if data.fields is None:
        return data.labels
    keys = [json.dumps(f, sort_keys=True) for f in data.fields]
    index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    return torch.tensor([index[k] for k in keys])


@dataclass
class Trained:
    models: ImageModels  # G and the UNet are the sampling weights: their EMAs (one rule for both families)
    raw: dict[str, nn.Module]  # "gan", "diffusion": the trained networks themselves, scored beside the EMAs
    ema_decay: dict[str, float]  # "gan", "diffusion": the configured EMA decays
    histories: dict[str, list[dict]]  # "text", "gan", "vae", "diffusion": per-step rows
    status: dict[str, dict]  # "gan", "diffusion": {"status": "ok"} or {"status": "diverged", "diverged_at_step"}
    seconds: dict[str, float]  # wall time of each training: "text", "gan", "vae", "diffusion"
    snapshots: dict[str, list] = field(default_factory=dict)  # "gan", "diffusion": [Snapshot(step, raw, ema)]


def train_text_encoder(data: ImageData, tokenizer: Tokenizer, cfg: ImageBenchConfig, cfgs: dict, device, seed: int,
                       progress=True):
    """CLIP pre-training (Radford et al. 2021): a text transformer and an image tower pulled together on matching
    (caption, image) pairs. Returns (frozen encoder, history); the tower is dropped."""
    torch.manual_seed(seed)
    text, tower = (distributed.wrap(m.to(device), device) for m in new_text_encoder(cfgs))  # [ddp]
    tokens = tokenizer.encode(data.captions, cfg.text.max_len).to(device)
    groups = caption_groups(data).to(device)
    images = data.images.to(device)  # resident on the device, like the tokens (no CPU indexing per step)
    opt, sched = _cosine_opt(list(text.parameters()) + list(tower.parameters()), cfg.text_lr, cfg.text_steps)
    draw = _batches(len(tokens), cfg.text_batch_size, torch.Generator().manual_seed(seed))
    history = []
    for step in tqdm(range(cfg.text_steps), desc="text encoder (CLIP)", leave=False, disable=not progress):
        idx = draw(step).to(device)
        mine = distributed.local_rows(idx)  # [ddp] this rank's rows; the loss contrasts the whole global batch
        with autocast(device, cfg.amp):
            _, pooled, _ = text(tokens[mine])
            pooled, image_emb = (distributed.gather_batch(e.float()) for e in (pooled, tower(images[mine])))
            loss = clip_loss(pooled, image_emb, distributed.unwrap(tower).logit_scale.exp(), groups[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append({"step": step, "loss": loss.item()})
    return distributed.unwrap(text).eval().requires_grad_(False), history


def train_dcgan(images: torch.Tensor, pooled: torch.Tensor, cfg: ImageBenchConfig, cfgs: dict, device, seed: int,
                progress=True):
    """Conditional DCGAN on the shared frozen text embedding. Returns (TrainResult of G, D, snapshots):
    Snapshot(step, copy of G, copy of its EMA) at cfg.eval_checkpoints evenly spaced steps."""
    torch.manual_seed(seed)
    G, D = Generator(cfgs["dcgan"]).to(device), Discriminator(cfgs["dcgan"]).to(device)
    # [ddp] BatchNorm over the global batch, then DDP (both no-ops in one process; bench/distributed.py)
    G, D = (distributed.wrap(distributed.sync_batchnorm(m), device) for m in (G, D))
    gen = torch.Generator().manual_seed(seed + 1)
    draw = _batches(len(images), cfg.batch_size, gen)

    def real_batch(step):
        idx = distributed.local_rows(draw(step)).to(device)  # [ddp] this rank's rows of the global batch
        return images[idx], pooled[idx]

    def latent(n):  # [ddp] n is this rank's share: draw the global batch's latents, keep its rows
        z = torch.randn(distributed.global_size(n), cfgs["dcgan"].z_dim, generator=gen)
        return distributed.local_rows(z).to(device)

    snapshots: list = []
    with autocast(device, cfg.amp):
        result = train_gan(G, D, real_batch, latent, cfg.gan, cfg.steps, desc="DCGAN", progress=progress,
                           snapshot_every=checkpoint_interval(cfg.steps, cfg.eval_checkpoints), snapshots=snapshots)
    result.model.eval()
    return result, distributed.unwrap(D).eval(), snapshots  # [ddp] the networks, not their DDP wrappers


def train_vae(images: torch.Tensor, cfg: ImageBenchConfig, cfgs: dict, device, seed: int, progress=True):
    """KL autoencoder (Rombach et al. 2022), then its latent scale factor = 1 / std of the training latents.
    Returns (frozen VAE, history)."""
    torch.manual_seed(seed)
    vae = KLAutoencoder(cfgs["vae"]).to(device)
    net = distributed.wrap(vae, device)  # [ddp] what trains; vae stays the network itself
    side = vae.cfg.resolution // vae.cfg.factor
    latent_shape = (vae.cfg.latent_channels, side, side)  # of one posterior sample
    opt, sched = _cosine_opt(vae.parameters(), cfg.vae_lr, cfg.vae_steps)
    draw = _batches(len(images), cfg.vae_batch_size, torch.Generator().manual_seed(seed + 2))
    history = []
    for step in tqdm(range(cfg.vae_steps), desc="VAE", leave=False, disable=not progress):
        x = images[distributed.local_rows(draw(step)).to(device)]  # [ddp] this rank's rows of the global batch
        # [ddp] the posterior sample's noise, drawn for the global batch as vae(x) would draw it in one process
        noise = distributed.local_rows(torch.randn((cfg.vae_batch_size, *latent_shape), device=device))
        loss, stats = vae_step(net, opt, x, cfg.amp, noise=noise)
        sched.step()
        history.append(distributed.average({"step": step, "loss": loss.item(), **stats}))  # [ddp] global means
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([vae.encode(b)[0] for b in images[:2048].split(512)])
    vae.scale_factor.fill_(latent_scale_factor(latents))
    return vae, history


def train_unet(latents: torch.Tensor, text: tuple, uncond: tuple, cfg: ImageBenchConfig, cfgs: dict, device,
               seed: int, progress=True):
    """The denoiser on scaled latents, cross-attending to the frozen text states (text = (states, mask) of every
    training caption); a random cfg.caption_dropout of the captions is replaced by the empty caption (uncond), so
    one network learns both halves of classifier-free guidance. Returns (TrainResult, snapshots)."""
    torch.manual_seed(seed)
    unet = distributed.wrap(UNet(cfgs["unet"]).to(device), device)  # [ddp]
    alpha_bar = schedule(cfg.diffusion, device)
    gen = torch.Generator().manual_seed(seed + 3)
    draw = _batches(len(latents), cfg.batch_size, gen)
    states, mask = text

    def batch(step):
        idx = draw(step).to(device)
        ctx, ctx_mask = drop_captions(states[idx], mask[idx], uncond, cfg.caption_dropout, gen)
        rows = distributed.local_rows  # [ddp] this rank's rows of the global batch
        return rows(latents[idx]), {"context": rows(ctx), "context_mask": rows(ctx_mask)}

    snapshots: list = []
    with autocast(device, cfg.amp):
        result = train_diffusion(unet, batch, alpha_bar, cfg.diffusion.prediction, cfg.diffusion_train, cfg.steps,
                                 gen, desc="UNet", progress=progress,
                                 snapshot_every=checkpoint_interval(cfg.steps, cfg.eval_checkpoints),
                                 snapshots=snapshots)
    unet.eval()
    return result, snapshots


def train_models(prep: Prepared, cfg: ImageBenchConfig, device, seed: int, progress=True) -> Trained:
    """The shared text encoder, then the GAN, then the VAE and the UNet; every training seeds itself."""
    data, tokenizer = prep.data, Tokenizer.build(prep.data.captions)
    cfgs = network_configs(cfg, channels=data.images.shape[1], resolution=cfg.resolution, vocab_size=len(tokenizer))
    images = data.images.to(device)  # the whole dataset stays on the device: no DataLoader for small images
    seconds, histories, snapshots = {}, {}, {}
    t0 = time.perf_counter()
    text, histories["text"] = train_text_encoder(data, tokenizer, cfg, cfgs, device, seed, progress)
    seconds["text"] = time.perf_counter() - t0
    states, pooled, mask = encode_captions(text, tokenizer, data.captions, device)
    empty_states, _, empty_mask = encode_captions(text, tokenizer, [""], device)  # CFG's unconditional input
    t0 = time.perf_counter()
    gan, D, snapshots["gan"] = train_dcgan(images, pooled, cfg, cfgs, device, seed, progress)
    seconds["gan"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    vae, histories["vae"] = train_vae(images, cfg, cfgs, device, seed, progress)
    seconds["vae"] = time.perf_counter() - t0
    latents = encode_latents(vae, images) * vae.scale_factor  # (N, c, h, w), unit variance
    t0 = time.perf_counter()
    unet, snapshots["diffusion"] = train_unet(latents, (states, mask), (empty_states, empty_mask), cfg, cfgs, device,
                                              seed, progress)
    seconds["diffusion"] = time.perf_counter() - t0
    models = ImageModels(tokenizer=tokenizer, text=text, G=gan.ema, D=D, vae=vae, unet=unet.ema,
                         diffusion=cfg.diffusion, device=torch.device(device), amp=cfg.amp)
    histories.update(gan=gan.history, diffusion=unet.history)
    return Trained(models, {"gan": gan.model, "diffusion": unet.model},
                   {"gan": gan.ema_decay, "diffusion": unet.ema_decay}, histories,
                   {"gan": gan.status, "diffusion": unet.status}, seconds, snapshots)


# ---------------------------------------------------------------- stage 3: evaluation


@dataclass
class EvalSet:
    """What both families are scored on: the same prompts, per-sample seeds and reference images."""

    prompts: list[str]  # drawn from the data's caption distribution
    labels: torch.Tensor  # (N,) the mode each prompt asks for
    text: tuple  # (states (N, L, W), pooled (N, E), mask (N, L)) of the prompts
    seeds: torch.Tensor  # (N,) per-sample seeds
    real: torch.Tensor  # (N, C, H, W) reference images
    real_feats: np.ndarray | None  # their features (judge, or Inception for data without classes)
    real_inception: np.ndarray | None  # their Inception features, when Inception is on (cached across runs)
    generator: torch.Generator  # drew the reference set; draws the real images of the sample grids next


def eval_set(prep: Prepared, models: ImageModels, cfg: ImageBenchConfig, seed: int) -> EvalSet:
    generator = torch.Generator().manual_seed(10_000 + seed)
    prompts, labels = prep.data.prompts(cfg.num_samples, seed=10_000 + seed)
    real = prep.data.images[torch.randperm(len(prep.data.images), generator=generator)[: cfg.num_samples]]
    real_inception = cached_features(real, prep.inception, prep.cache_dir)[0] if prep.inception is not None else None
    real_feats = describe(real, prep.judge, None)[0] if prep.judge is not None else real_inception
    return EvalSet(prompts, labels, models.encode(prompts), sample_seeds(seed, cfg.num_samples), real, real_feats,
                   real_inception, generator)


def draw(models: ImageModels, ev: EvalSet, family: str, n: int, knob: float, sampler: str, net=None):
    """The first n of the evaluation's images of one family at one knob setting (truncation psi for the GAN, the
    guidance scale for diffusion), from the final networks or from a snapshot `net`. Returns (images, NFE).
    [ddp] Each rank draws its block of the n per-sample seeds; the blocks are gathered back to all n, in order."""
    return distributed.sample_sharded(partial(_draw_rows, models, ev, family, knob, sampler, net), n)


def _draw_rows(models: ImageModels, ev: EvalSet, family: str, knob: float, sampler: str, net, rows: slice):
    """draw() for the evaluation rows `rows` (one rank's block)."""
    states, pooled, mask = (x[rows] for x in ev.text)
    if family == "gan":
        return models.sample_gan(pooled, ev.seeds[rows], psi=knob, G=net), 1
    name, steps = parse_sampler(sampler)
    return models.sample_diffusion(states, mask, ev.seeds[rows], sampler=name, steps=steps, guidance=knob, unet=net)


def score(prep: Prepared, ev: EvalSet, images: torch.Tensor, **extra) -> dict:
    """image_metrics of generated images against the reference set; raises FloatingPointError on NaN images."""
    return distributed.on_main(partial(_score, prep, ev, images, **extra))  # [ddp] once, on rank 0


def _score(prep: Prepared, ev: EvalSet, images: torch.Tensor, **extra) -> dict:
    feats, judged = describe(images, prep.judge, prep.inception)
    # One BLAS thread: the metrics' matrices are small (128 features), and OpenBLAS threads spinning against
    # torch's on a busy 2-core machine made each FID's sqrtm 250x slower (1.2 s instead of 5 ms).
    with threadpool_limits(limits=1, user_api="blas"):
        return image_metrics(ev.real_feats, feats, judged, ev.labels[: len(images)], prep.data.num_modes, **extra)


@dataclass
class FamilyEval:
    images: torch.Tensor  # the headline samples
    nfe: int  # network passes per sample of the headline sampler
    seconds: float  # wall time of drawing the headline samples
    curve: list[dict]  # metrics of the training snapshots' EMAs
    sweep: dict  # {"knob", "points"}: metrics along the family's fidelity/diversity knob
    raw: dict  # metrics of the raw (non-EMA) network on the curve's prompts and seeds, comparable with its last point


KNOBS = {"gan": "truncation psi", "diffusion": "guidance scale"}


def headline_knob(cfg: ImageBenchConfig, family: str) -> float:
    return 1.0 if family == "gan" else cfg.guidance


def _snapshot_images(models, ev, family, n, knob, sampler, headline, final, at_step, step) -> torch.Tensor:
    """The curve's images at one training step: the headline's first n at the final step (the same network)."""
    if step == final:
        return headline[:n]
    return draw(models, ev, family, n, knob, sampler, net=at_step[step])[0]


def _knob_images(models, ev, family, n, knob, sampler, headline, value) -> torch.Tensor:
    """The sweep's images at one knob value: the headline's first n at the headline setting (the same images)."""
    return headline[:n] if value == knob else draw(models, ev, family, n, value, sampler)[0]


def evaluate_family(prep: Prepared, trained: Trained, ev: EvalSet, cfg: ImageBenchConfig, family: str) -> FamilyEval:
    """Headline samples, then the metric-over-training curve and the knob sweep on the first curve_samples and
    sweep_samples of the same prompts and seeds."""
    knob, models = headline_knob(cfg, family), trained.models
    t0 = time.perf_counter()
    images, nfe = draw(models, ev, family, cfg.num_samples, knob, cfg.sampler)
    seconds = time.perf_counter() - t0
    scorable = ev.real_feats is not None  # else nothing to score checkpoints and settings with
    at_step = {s.step: s.ema for s in trained.snapshots[family]} if scorable else {}  # the EMA copies, as headline
    trained.snapshots[family] = []  # the dict holds the copies until the curve is scored
    n_curve, n_sweep = min(cfg.curve_samples, cfg.num_samples), min(cfg.sweep_samples, cfg.num_samples)
    metrics = partial(score, prep, ev)
    snaps = partial(_snapshot_images, models, ev, family, n_curve, knob, cfg.sampler, images,
                    len(trained.histories[family]), at_step)
    curve = _points(sweep(list(at_step), snaps, metrics, key="step"))
    for point in curve:
        point["initial_weight_share"] = initial_weight_share(point["step"], trained.ema_decay[family])
    at_step.clear()  # free the copies before the sweep
    values = (cfg.truncation_sweep if family == "gan" else cfg.guidance_sweep) if scorable else []
    knobs = partial(_knob_images, models, ev, family, n_sweep, knob, cfg.sampler, images)
    points = _points(sweep(values, knobs, metrics))
    raw = _points(sweep([n_curve], lambda n: draw(models, ev, family, n, knob, cfg.sampler, net=trained.raw[family])[0],
                        metrics, key="num_samples"))[0] if scorable else {}
    return FamilyEval(images, nfe, seconds, curve, {"knob": KNOBS[family], "points": points}, raw)


def vae_report(prep: Prepared, trained: Trained, ev: EvalSet, cfg: ImageBenchConfig) -> dict:
    """Reconstruction quality of the reference images: PSNR and the share the judge still labels the same."""
    models = trained.models
    recon = models.decode_latents(models.encode_latents(ev.real.to(models.device)) * models.vae.scale_factor).cpu()
    judge = prep.judge
    same = float((judge.labels(recon) == judge.labels(ev.real)).float().mean()) if judge is not None else None
    return {"steps": cfg.vae_steps, "seconds": trained.seconds["vae"], "psnr": psnr(recon, ev.real),
            "recon_accuracy": same, "scale_factor": float(models.vae.scale_factor)}


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
                  seed: int = 0) -> dict:
    """FID/KID (clean-fid's formulas) and PRDC on features, mode statistics and prompt accuracy on judged labels,
    each where its input exists. With fid_boot > 0 the basic bootstrap 95% interval fid_lo..fid_hi for the population
    FID, its bias-corrected estimate fid_bc and FID's spread at this N fid_sd (metrics.fid_bootstrap); with
    fid_counts, FID at those sample counts and its 1/n extrapolation fid_inf (Chong & Forsyth 2020)."""
    out: dict = {}
    if feats is not None:
        out.update(fid=fid(real_feats, feats), kid=kid(real_feats, feats), **prdc(real_feats, feats))
        if fid_boot > 0:
            with warnings.catch_warnings():  # resamples hold duplicates: sqrtm warns of singular products each time
                warnings.simplefilter("ignore", LinAlgWarning)
                boot = fid_bootstrap(real_feats, feats, num_boot=fid_boot, seed=seed)
            out.update(fid_lo=boot["lo"], fid_hi=boot["hi"], fid_bc=boot["fid_bc"], fid_sd=boot["sd"])
        counts = sorted({n for n in fid_counts if 2 <= n <= len(feats)} | ({len(feats)} if fid_counts else set()))
        if len(counts) >= 2:
            out["fid_curve"] = fid_curve(real_feats, feats, counts, seed=seed)
            out["fid_inf"] = fid_extrapolate(out["fid_curve"])
    if judged is not None:
        out.update(mode_stats(judged, num_modes))
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


CURVE_KEYS = ("fid", "kid", "precision", "recall", "density", "coverage", "modes", "reverse_kl", "cond_accuracy",
              "num_samples", "initial_weight_share")
COND_THRESHOLD = 0.5  # "steps to threshold" on images: first checkpoint with this prompt accuracy


def _points(points: list[dict]) -> list[dict]:
    """Curve and sweep points keep the headline metrics only (no bootstrap, no nested lists)."""
    return [{k: v for k, v in p.items() if k in CURVE_KEYS or k in ("step", "value", "error")} for p in points]


def real_for_prompts(data: ImageData, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each prompt, a random real image of the prompted mode (the 'real' row of the sample grids)."""
    out = []
    for label in labels.tolist():
        pool = (data.labels == label).nonzero().flatten()
        out.append(data.images[pool[torch.randint(len(pool), (1,), generator=generator)]][0])
    return torch.stack(out)


# ---------------------------------------------------------------- stage 4: record


def _train_record(family: str, trained: Trained, cfg: ImageBenchConfig, vae_info: dict) -> dict:
    """Steps, examples seen, wall time and parameters of one family; the shared text encoder on both sides."""
    m, steps = trained.models, len(trained.histories[family])
    seconds = trained.seconds["gan"] if family == "gan" else trained.seconds["vae"] + trained.seconds["diffusion"]
    params = ({"G": num_params(m.G), "D": num_params(m.D)} if family == "gan"
              else {"vae": num_params(m.vae), "text": num_params(m.text), "unet": num_params(m.unet)})
    extra = cfg.vae_steps * cfg.vae_batch_size if family == "diffusion" else 0  # the VAE's images, on top
    own_seconds = trained.seconds[family]
    record = {"steps": steps, "examples_seen": steps * cfg.batch_size + extra, "seconds": seconds,
              "images_per_s": steps * cfg.batch_size / own_seconds, "params": params,
              "params_total": sum(params.values()), **distributed.batch_record(cfg.batch_size),  # [ddp]
              "text_encoder": {"steps": cfg.text_steps, "seconds": trained.seconds["text"],
                               "params": num_params(m.text)}}
    return record if family == "gan" else {**record, "vae": vae_info}


def _metrics_record(prep: Prepared, ev: EvalSet, fam: FamilyEval, entry: dict, cfg: ImageBenchConfig, seed: int):
    """The headline metrics into entry["metrics"]; unscorable (non-finite) samples make the entry diverged/failed."""
    common = {"judge_accuracy": prep.judge.accuracy} if prep.judge is not None else {}
    try:
        entry["metrics"] = {**score(prep, ev, fam.images, fid_boot=cfg.fid_bootstrap,
                                    fid_counts=tuple(cfg.fid_counts), seed=seed), **common}
        if ev.real_inception is not None and prep.judge is not None:  # beside the judge's, comparable with papers'
            entry["metrics"].update(inception_metrics(ev.real_inception, prep.inception.features(fam.images))[0])
    except (FloatingPointError, ValueError) as exc:  # a diverged model's NaN images cannot be scored
        entry["metrics"] = dict(common)
        entry["status"] = "diverged" if entry["status"] == "diverged" else "failed"
        entry["error"] = f"{type(exc).__name__}: {exc}"


def record(prep: Prepared, trained: Trained, ev: EvalSet, fams: dict, cfg: ImageBenchConfig, seed: int,
           vae_info: dict) -> list[dict]:
    """The two run entries (gan, diffusion) of results.json."""
    description = (f"{prep.dataset}: {len(ev.real)} of the {len(prep.data.images)} images, drawn with seed "
                   f"{10_000 + seed}")
    protocols = feature_protocols(ev.real, cfg.num_samples, description, inception=prep.inception,
                                  judge_net=prep.judge.net if prep.judge is not None else None)
    entries = []
    for family in FAMILIES:
        fam, status = fams[family], trained.status[family]
        entry = {"dataset": prep.dataset, "model": family, "seed": seed, **status,
                 **({"sampler": cfg.sampler, "guidance": cfg.guidance} if family == "diffusion" else {}),
                 "train": _train_record(family, trained, cfg, vae_info)}
        _metrics_record(prep, ev, fam, entry, cfg, seed)
        entry["metrics_raw"] = fam.raw  # the raw network beside the EMA headline (one rule for both families)
        decay = trained.ema_decay[family]
        entry["ema"] = {"decay": decay, "initial_weight_share": initial_weight_share(len(trained.histories[family]),
                                                                                     decay)}
        entry["throughput"] = {"nfe": fam.nfe, "sample_seconds": fam.seconds,
                               "samples_per_s": len(fam.images) / fam.seconds}
        entry["features"] = "judge" if prep.judge else "inception" if prep.inception is not None else None
        missing = unavailable_metrics(prep.judge is not None, prep.inception is not None, prep.inception_missing)
        if missing is not None:
            entry["unavailable"] = missing
        entry["protocol"] = protocols  # how the feature metrics were computed, by feature family
        entry["curve"], entry["sweep"] = fam.curve, fam.sweep
        entry["stability"] = stability(trained.histories[family], family)
        if fam.curve and prep.judge is not None:
            entry["stability"].update(threshold=f"cond_accuracy >= {COND_THRESHOLD}",
                                      steps_to_threshold=steps_to_threshold(fam.curve, "cond_accuracy",
                                                                            COND_THRESHOLD))
        entries.append(entry)
    return entries


def write_outputs(run: RunDir, prep: Prepared, trained: Trained, ev: EvalSet, fams: dict, cfg: ImageBenchConfig,
                  seed: int) -> None:
    """Histories, the checkpoint of every network and the sample grids (real / GAN / diffusion, same prompts)."""
    for part, rows in trained.histories.items():
        run.write_history(prep.dataset, seed, part, rows)
    trained.models.save(run.checkpoint_path(prep.dataset, seed, "models"),
                        {"dataset": prep.dataset, "seed": seed, "sampler": cfg.sampler, "guidance": cfg.guidance})
    run.save_grid(prep.dataset, seed, "real", real_for_prompts(prep.data, ev.labels[:64], ev.generator))
    for family in FAMILIES:
        run.save_grid(prep.dataset, seed, family, fams[family].images)
    run.write_prompts(prep.dataset, seed, ev.prompts[:64])


def run_image_dataset(dataset: str, seed: int, cfg: ImageBenchConfig, device: torch.device, run: RunDir, cache_dir,
                      progress: bool = True) -> list[dict]:
    """Train and score both families on one image dataset for one seed. Returns the two run entries."""
    prep = prepare(dataset, cfg, device, cache_dir)
    if prep.failure is not None:
        return [failed_entry(dataset, m, seed, prep.failure) for m in FAMILIES]
    trained = train_models(prep, cfg, device, seed, progress)
    ev = eval_set(prep, trained.models, cfg, seed)
    vae_info = vae_report(prep, trained, ev, cfg)
    fams = {family: evaluate_family(prep, trained, ev, cfg, family) for family in FAMILIES}
    write_outputs(run, prep, trained, ev, fams, cfg, seed)
    return record(prep, trained, ev, fams, cfg, seed, vae_info)


# ---------------------------------------------------------------- `gvd sample`


def sample_from_checkpoint(models: ImageModels, meta: dict, prompt: str, n: int, *, model: str, seed: int,
                           sampler: str | None, steps: int | None, guidance: float | None) -> tuple[torch.Tensor, int]:
    """n images for one prompt from a saved run's models. Unknown prompt words raise ValueError naming them."""
    states, pooled, mask = models.encode([prompt] * n, strict=True)
    seeds = sample_seeds(seed, n)
    if model == "gan":
        return models.sample_gan(pooled, seeds), 1
    default_name, default_steps = parse_sampler(meta["sampler"])
    return models.sample_diffusion(states, mask, seeds, sampler=sampler or default_name,
                                   steps=steps or default_steps,
                                   guidance=meta["guidance"] if guidance is None else guidance)
