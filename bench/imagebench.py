"""The image benchmark: a conditional DCGAN and a text-conditioned latent diffusion model on one captioned dataset.

Data flow for one (dataset, seed):

    real images + captions --> judge (frozen classifier: mode labels + features; cached across runs)
                           --> text encoder, CLIP pre-trained then frozen: shared by both models (a fair comparison)
                           --> GAN:       DCGAN G(z, pooled text), projection D                   } same examples seen
                           --> diffusion: KL-VAE, then UNet on scaled latents with cross-attention } per model step
    the same prompts and per-sample seeds for both --> samples --> judge --> metrics --> run entries

Every model is trained from the seed; the data and the judge do not depend on it (the judge trains once per dataset
config and is cached), so seeds measure training variance only.
"""

import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.linalg import LinAlgWarning
from threadpoolctl import threadpool_limits  # installed with scikit-learn
from tqdm.auto import tqdm

from bench.images import ImageData, load_image_dataset
from bench.judge import (
    JudgeConfig,
    inception_features,
    judge_failure,
    load_inception,
    load_or_train_judge,
)
from bench.metrics import (
    cond_accuracy,
    fid,
    fid_bootstrap,
    fid_curve,
    fid_extrapolate,
    kid,
    mode_stats,
    prdc,
)
from bench.seeding import noise_fn, per_sample_randn, sample_seeds
from bench.stability import stability, steps_to_threshold
from bench.sweeps import sweep, truncate
from bench.train import (
    DiffusionTrainConfig,
    GANTrainConfig,
    checkpoint_interval,
    initial_weight_share,
    train_diffusion,
    train_gan,
)
from models.dcgan import DCGANConfig, Discriminator, Generator
from models.diffusion import DiffusionConfig, alphas_cumprod
from models.mlp import num_params
from models.samplers import guided, sample
from models.text import ImageTower, ImageTowerConfig, TextConfig, TextEncoder, Tokenizer, clip_loss
from models.unet import UNet, UNetConfig
from models.vae import KLAutoencoder, VAEConfig, latent_scale_factor, psnr, vae_loss


@dataclass
class ImageBenchConfig:
    datasets: list[str] = field(default_factory=lambda: ["shapes"])  # image datasets (see `gvd datasets`)
    resolution: int = 32  # image side
    num_train: int = 10000  # images drawn for generated datasets; a seeded subset of this many for fixed ones
    steps: int = 1500  # GAN steps and UNet steps: both see steps * batch_size training images
    batch_size: int = 128  # images per GAN / UNet step
    vae_steps: int = 1500  # autoencoder steps (diffusion only; recorded as extra examples seen)
    vae_batch_size: int = 64
    vae_lr: float = 1e-3  # Adam, cosine-decayed
    text_steps: int = 300  # CLIP pre-training steps of the shared text encoder
    text_batch_size: int = 256
    text_lr: float = 1e-3  # Adam, cosine-decayed
    caption_dropout: float = 0.1  # fraction of UNet training captions replaced by "" (classifier-free guidance)
    guidance: float = 3.0  # CFG scale s: eps_u + s (eps_c - eps_u); 1 = no guidance (Ho & Salimans 2021)
    sampler: str = "dpmpp2m:20"  # diffusion sampler:steps used for the scores
    num_samples: int = 1000  # generated images scored per (dataset, model, seed); as many real ones
    amp: bool = True  # bf16 autocast on CUDA (ignored on the CPU)
    eval_checkpoints: int = 4  # metric-over-training: score both models at this many evenly spaced steps (0 = off)
    curve_samples: int = 256  # images per checkpoint: the first of the evaluation's prompts and seeds
    guidance_sweep: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 5.0])  # CFG scales ([] = skip)
    truncation_sweep: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])  # GAN psi: z <- psi z ([] = skip)
    sweep_samples: int = 256  # images per sweep setting: the first of the evaluation's prompts and seeds
    fid_bootstrap: int = 100  # bootstrap resamples: 95% interval for the population FID (0 = off); ~7 ms each
    fid_counts: list[int] = field(default_factory=list)  # FID at these sample counts and FID_inf (Chong & Forsyth 2020)
    inception_weights: str = ""  # path to clean-fid's inception-2015-12-05.pt: adds Inception FID/KID ("" = off)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextConfig = field(default_factory=TextConfig)
    tower: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    dcgan: DCGANConfig = field(default_factory=DCGANConfig)
    gan: GANTrainConfig = field(default_factory=lambda: GANTrainConfig(ema=0.999))  # EMA decay as the UNet's
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(schedule="scaled_linear", prediction="v"))
    diffusion_train: DiffusionTrainConfig = field(default_factory=lambda: DiffusionTrainConfig(lr=1e-3, ema=0.999))
    judge: JudgeConfig = field(default_factory=JudgeConfig)


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


def _cosine_opt(params, lr: float, steps: int):
    opt = torch.optim.Adam(params, lr=lr)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))


def _batches(n: int, batch_size: int, generator: torch.Generator):
    """Index batches drawn uniformly with replacement from a seeded generator (data resident on the device)."""
    return lambda step: torch.randint(n, (batch_size,), generator=generator)


# ---------------------------------------------------------------- text encoder (shared by both models)


def caption_groups(data: ImageData) -> torch.Tensor:
    """Ids of what each caption says (its template fields), so that captions saying the same thing in different
    words count as matches in the CLIP loss rather than as negatives."""
    if data.fields is None:
        return data.labels
    keys = [json.dumps(f, sort_keys=True) for f in data.fields]
    index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    return torch.tensor([index[k] for k in keys])


def train_text_encoder(data: ImageData, cfg: ImageBenchConfig, device, generator: torch.Generator, progress=True):
    """CLIP pre-training (Radford et al. 2021): a text transformer and an image tower pulled together on matching
    (caption, image) pairs. Returns (tokenizer, frozen encoder, history)."""
    torch.manual_seed(generator.initial_seed())
    tokenizer = Tokenizer.build(data.captions)
    text = TextEncoder(TextConfig(**{**asdict(cfg.text), "vocab_size": len(tokenizer)})).to(device)
    tower = ImageTower(ImageTowerConfig(**{**asdict(cfg.tower), "in_channels": data.images.shape[1],
                                          "embed_dim": cfg.text.embed_dim})).to(device)
    tokens = tokenizer.encode(data.captions, cfg.text.max_len).to(device)
    groups = caption_groups(data).to(device)
    images = data.images.to(device)  # resident on the device, like the tokens (no CPU indexing per step)
    params = list(text.parameters()) + list(tower.parameters())
    opt, sched = _cosine_opt(params, cfg.text_lr, cfg.text_steps)
    draw = _batches(len(tokens), cfg.text_batch_size, generator)
    history = []
    for step in tqdm(range(cfg.text_steps), desc="text encoder (CLIP)", leave=False, disable=not progress):
        idx = draw(step).to(device)
        with _autocast(device, cfg.amp):
            _, pooled, _ = text(tokens[idx])
            loss = clip_loss(pooled.float(), tower(images[idx]).float(), tower.logit_scale.exp(), groups[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append({"step": step, "loss": loss.item()})
    return tokenizer, text.eval().requires_grad_(False), history


@torch.no_grad()
def encode_text(text: TextEncoder, tokenizer: Tokenizer, captions: list[str], device, strict: bool = False):
    """Captions -> (states (N, L, W), pooled (N, E), mask (N, L)) from the frozen encoder, in batches."""
    out = [text(tokenizer.encode(captions[i : i + 1024], text.cfg.max_len, strict=strict).to(device))
           for i in range(0, len(captions), 1024)]
    return tuple(torch.cat(parts) for parts in zip(*out))


# ---------------------------------------------------------------- the two families


def train_dcgan(data_dev: torch.Tensor, pooled: torch.Tensor, cfg: ImageBenchConfig, device, seed: int, progress=True,
                snapshots: list | None = None):
    """Conditional DCGAN on the shared frozen text embedding. Returns (TrainResult of G, D, dcfg); snapshots, if
    given, receives Snapshot(step, copy of G, copy of its EMA) at cfg.eval_checkpoints evenly spaced steps."""
    torch.manual_seed(seed)
    dcfg = DCGANConfig(**{**asdict(cfg.dcgan), "resolution": data_dev.shape[-1], "channels": data_dev.shape[1],
                          "cond_dim": pooled.shape[1]})
    G, D = Generator(dcfg).to(device), Discriminator(dcfg).to(device)
    gen = torch.Generator().manual_seed(seed + 1)
    draw = _batches(len(data_dev), cfg.batch_size, gen)

    def real_batch(step):
        idx = draw(step).to(device)
        return data_dev[idx], pooled[idx]

    latent = lambda n: torch.randn(n, dcfg.z_dim, generator=gen).to(device)
    with _autocast(device, cfg.amp):
        trained = train_gan(G, D, real_batch, latent, cfg.gan, cfg.steps, desc="DCGAN", progress=progress,
                            snapshot_every=checkpoint_interval(cfg.steps, cfg.eval_checkpoints), snapshots=snapshots)
    G.eval()
    return trained, D.eval(), dcfg


def train_vae(data_dev: torch.Tensor, cfg: ImageBenchConfig, device, seed: int, progress=True):
    """KL autoencoder (Rombach et al. 2022), then its latent scale factor = 1 / std of the training latents."""
    torch.manual_seed(seed)
    vcfg = VAEConfig(**{**asdict(cfg.vae), "in_channels": data_dev.shape[1], "resolution": data_dev.shape[-1]})
    vae = KLAutoencoder(vcfg).to(device)
    opt, sched = _cosine_opt(vae.parameters(), cfg.vae_lr, cfg.vae_steps)
    gen = torch.Generator().manual_seed(seed + 2)
    draw = _batches(len(data_dev), cfg.vae_batch_size, gen)
    history = []
    for step in tqdm(range(cfg.vae_steps), desc="VAE", leave=False, disable=not progress):
        x = data_dev[draw(step).to(device)]
        with _autocast(device, cfg.amp):
            recon, mean, logvar = vae(x)
            loss, stats = vae_loss(recon.float(), x, mean.float(), logvar.float(), vcfg.kl_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append({"step": step, "loss": loss.item(), **stats})
    vae.eval().requires_grad_(False)
    latents = encode_latents(vae, data_dev[:2048])
    vae.scale_factor.fill_(latent_scale_factor(latents))
    return vae, vcfg, history


@torch.no_grad()
def encode_latents(vae: KLAutoencoder, images: torch.Tensor) -> torch.Tensor:
    """Posterior means of the images (unscaled), in batches. The UNet trains on these times scale_factor: with a
    KL weight of 1e-6 the posterior std is tiny, so the mean loses nothing and makes training deterministic."""
    return torch.cat([vae.encode(b)[0] for b in images.split(512)])


@torch.no_grad()
def decode_latents(vae: KLAutoencoder, z_scaled: torch.Tensor) -> torch.Tensor:
    return torch.cat([vae.decode(b / vae.scale_factor) for b in z_scaled.split(512)]).clamp(-1, 1)


def train_unet(latents: torch.Tensor, states, mask, uncond, cfg: ImageBenchConfig, device, seed: int, progress=True,
               snapshots: list | None = None):
    """The denoiser on scaled latents, cross-attending to the frozen text states; a random caption_dropout of the
    captions is replaced by the empty caption so one network learns both halves of classifier-free guidance.
    snapshots, if given, receives Snapshot(step, copy of the UNet, copy of its EMA) at cfg.eval_checkpoints evenly
    spaced steps. Returns (TrainResult, ucfg, alpha_bar)."""
    torch.manual_seed(seed)
    ucfg = UNetConfig(**{**asdict(cfg.unet), "in_channels": latents.shape[1], "context_dim": states.shape[-1]})
    unet = UNet(ucfg).to(device)
    alpha_bar = alphas_cumprod(cfg.diffusion.schedule, cfg.diffusion.num_steps).float().to(device)
    gen = torch.Generator().manual_seed(seed + 3)
    draw = _batches(len(latents), cfg.batch_size, gen)
    u_states, u_mask = uncond

    def batch(step):
        idx = draw(step).to(device)
        drop = (torch.rand(len(idx), generator=gen) < cfg.caption_dropout).to(device)  # (B,)
        ctx = torch.where(drop[:, None, None], u_states, states[idx])  # (B, L, W)
        ctx_mask = torch.where(drop[:, None], u_mask, mask[idx])  # (B, L)
        return latents[idx], {"context": ctx, "context_mask": ctx_mask}

    with _autocast(device, cfg.amp):
        trained = train_diffusion(unet, batch, alpha_bar, cfg.diffusion.prediction, cfg.diffusion_train, cfg.steps,
                                  gen, desc="UNet", progress=progress,
                                  snapshot_every=checkpoint_interval(cfg.steps, cfg.eval_checkpoints),
                                  snapshots=snapshots)
    return trained, ucfg, alpha_bar


# ---------------------------------------------------------------- sampling (shared with `gvd sample`)


@torch.no_grad()
def sample_images_gan(G: Generator, pooled: torch.Tensor, seeds: torch.Tensor, device, batch: int = 512,
                      psi: float = 1.0):
    """One generator forward per image; z_i depends only on seed i. psi < 1 truncates the latents (bench.sweeps)."""
    out = []
    for i in range(0, len(seeds), batch):
        z = truncate(per_sample_randn(seeds[i : i + batch], (G.cfg.z_dim,)), psi).to(device)
        out.append(G(z, pooled[i : i + batch]).float().clamp(-1, 1).cpu())
    return torch.cat(out)


@torch.no_grad()
def sample_images_diffusion(unet, vae, alpha_bar, states, mask, uncond, seeds, *, sampler: str, steps: int,
                            guidance: float, prediction: str, device, batch: int = 256):
    """Guided sampling in latent space, then the VAE decoder. Returns (images (N, C, H, W) on the CPU, NFE)."""
    h = vae.cfg.resolution // vae.cfg.factor
    shape = (unet.cfg.in_channels, h, h)
    out, nfe = [], 0
    for i in range(0, len(seeds), batch):
        s = seeds[i : i + batch]
        n = len(s)
        cond = {"context": states[i : i + n], "context_mask": mask[i : i + n]}
        u = {"context": uncond[0].expand(n, -1, -1), "context_mask": uncond[1].expand(n, -1)}
        model = _bind(unet, cond) if guidance == 1.0 else guided(unet, guidance, cond, u)
        x_T = per_sample_randn(s, shape).to(device)
        z, nfe = sample(sampler, model, x_T, alpha_bar, steps, prediction=prediction, noise=noise_fn(s, shape, device))
        out.append(decode_latents(vae, z).float().cpu())
    return torch.cat(out), nfe


def _bind(model, kwargs: dict):
    return lambda x, t: model(x, t, **kwargs)


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
        return inception_features(images, inception), None
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


def unavailable_metrics(has_judge: bool, has_inception: bool) -> dict | None:
    """Which metrics a run cannot report and why (None when all are there)."""
    if has_judge:
        return None
    missing = ["modes", "reverse_kl", "forward_kl", "cond_accuracy"] + ([] if has_inception else ["fid", "kid", "precision", "recall",
                                                                          "density", "coverage"])
    why = ("the dataset has no classes to train a judge on" + ("" if has_inception else
           ", and no Inception weights were given (inception_weights / --inception-weights)"))
    return {"metrics": missing, "why": why}


CURVE_KEYS = ("fid", "kid", "precision", "recall", "density", "coverage", "modes", "reverse_kl", "cond_accuracy",
              "num_samples")
COND_THRESHOLD = 0.5  # "steps to threshold" on images: first checkpoint with this prompt accuracy


def _points(points: list[dict]) -> list[dict]:
    """Curve and sweep points keep the headline metrics only (no bootstrap, no nested lists)."""
    return [{k: v for k, v in p.items() if k in CURVE_KEYS or k in ("step", "value", "error")} for p in points]


def save_grid(path: Path, images: torch.Tensor, nrow: int = 8) -> None:
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((images[: nrow * nrow].float() + 1) / 2, path, nrow=nrow, padding=1)


def real_for_prompts(data: ImageData, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each prompt, a random real image of the prompted mode (the 'real' row of the sample grids)."""
    out = []
    for label in labels.tolist():
        pool = (data.labels == label).nonzero().flatten()
        out.append(data.images[pool[torch.randint(len(pool), (1,), generator=generator)]][0])
    return torch.stack(out)


# ---------------------------------------------------------------- one (dataset, seed)


def slug(dataset: str) -> str:
    """A file-name-safe form of a dataset name ('folder:/a/b' -> 'folder-b')."""
    kind, _, where = dataset.partition(":")
    return kind if not where else f"{kind}-{Path(where).name or 'root'}"


def _failed(dataset: str, seed: int, error: str) -> list[dict]:
    return [{"dataset": dataset, "model": m, "seed": seed, "status": "failed", "error": error,
             "train": {}, "metrics": {}, "throughput": {}} for m in ("gan", "diffusion")]


def _status_of(status: dict) -> dict:
    return {"status": status["status"], **({"diverged_at_step": status["diverged_at_step"]}
                                          if status["status"] == "diverged" else {})}


def run_image_dataset(dataset: str, seed: int, cfg: ImageBenchConfig, device: torch.device, run_dir: Path,
                      cache_dir: Path, save=None, progress: bool = True) -> list[dict]:
    """Train and score both families on one image dataset for one seed. Returns the two run entries.

    save(name, modules, config) writes a checkpoint; the caller passes bench.suite.save_checkpoint.
    """
    from bench.results import write_csv

    tag = f"{slug(dataset)}_seed{seed}"
    data = load_image_dataset(dataset, cfg.num_train, cfg.resolution, seed=0)  # the data do not vary with the seed
    data_key = {"dataset": dataset, "num_train": cfg.num_train, "resolution": cfg.resolution, "seed": 0}
    judge = None  # data without classes have no judge: Inception features if given, else fewer metrics
    if data.num_modes >= 2:
        judge = load_or_train_judge(data, data_key, cfg.judge, str(cache_dir), device=str(device))
        if (failure := judge_failure(dataset, judge)) is not None:
            return _failed(dataset, seed, failure)
    inception = load_inception(cfg.inception_weights, str(device)) if cfg.inception_weights else None
    images = data.images.to(device)  # the whole dataset stays on the device: no DataLoader for small images

    # --- the shared text encoder
    t0 = time.perf_counter()
    tokenizer, text, text_hist = train_text_encoder(data, cfg, device, torch.Generator().manual_seed(seed), progress)
    states, pooled, mask = encode_text(text, tokenizer, data.captions, device)
    uncond = tuple(x[:1] for x in encode_text(text, tokenizer, [""], device)[::2])  # ("" states, mask), (1, L, .)
    text_info = {"steps": cfg.text_steps, "seconds": time.perf_counter() - t0, "params": num_params(text)}
    write_csv(run_dir / "history" / f"{tag}_text.csv", text_hist)
    text_meta = {"tokenizer": asdict(tokenizer), "text": asdict(text.cfg)}

    # --- GAN
    t0 = time.perf_counter()
    gan_snaps, unet_snaps = [], []  # Snapshot(step, raw copy, EMA copy) for the metric-over-training curves
    gan, D, dcfg = train_dcgan(images, pooled, cfg, device, seed, progress, gan_snaps)
    # Both families are scored with their EMA weights (one rule); the raw G is scored too (metrics_raw).
    G, gan_hist, gan_status = gan.ema, gan.history, gan.status
    gan_seconds = time.perf_counter() - t0
    write_csv(run_dir / "history" / f"{tag}_gan.csv", gan_hist)

    # --- latent diffusion: VAE, then UNet on scaled latents
    t0 = time.perf_counter()
    vae, vcfg, vae_hist = train_vae(images, cfg, device, seed, progress)
    vae_seconds = time.perf_counter() - t0
    write_csv(run_dir / "history" / f"{tag}_vae.csv", vae_hist)
    latents = encode_latents(vae, images) * vae.scale_factor  # (N, c, h, w), unit variance
    t0 = time.perf_counter()
    trained_unet, ucfg, alpha_bar = train_unet(latents, states, mask, uncond, cfg, device, seed, progress, unet_snaps)
    unet, unet_hist, unet_status = trained_unet.ema, trained_unet.history, trained_unet.status
    unet_seconds = time.perf_counter() - t0
    write_csv(run_dir / "history" / f"{tag}_diffusion.csv", unet_hist)

    if save is not None:
        save(run_dir / "checkpoints" / f"{tag}_gan.safetensors", {"G": G, "G_raw": gan.model, "D": D, "text": text},
             {"model": "gan", "dataset": dataset, "seed": seed, "dcgan": asdict(dcfg), **text_meta})
        save(run_dir / "checkpoints" / f"{tag}_diffusion.safetensors", {"vae": vae, "unet": unet, "text": text},
             {"model": "diffusion", "dataset": dataset, "seed": seed, "vae": asdict(vcfg), "unet": asdict(ucfg),
              "diffusion": asdict(cfg.diffusion), "sampler": cfg.sampler, "guidance": cfg.guidance, **text_meta})

    # --- evaluation: the same prompts and per-sample seeds for both models
    eval_gen = torch.Generator().manual_seed(10_000 + seed)
    prompts, prompted = data.prompts(cfg.num_samples, seed=10_000 + seed)
    p_states, p_pooled, p_mask = encode_text(text, tokenizer, prompts, device)
    seeds = sample_seeds(seed, cfg.num_samples)
    real = data.images[torch.randperm(len(data.images), generator=eval_gen)[: cfg.num_samples]]
    real_feats, _ = describe(real, judge, inception)
    recon = decode_latents(vae, encode_latents(vae, real.to(device)) * vae.scale_factor).cpu()
    vae_info = {"steps": cfg.vae_steps, "seconds": vae_seconds, "psnr": psnr(recon, real),
                "recon_accuracy": (float((judge.labels(recon) == judge.labels(real)).float().mean())
                                   if judge is not None else None),
                "scale_factor": float(vae.scale_factor)}

    # Every image set below uses the first n of these prompts and seeds: the two families, every checkpoint and every
    # sweep setting differ only by the model and the knob.
    def gan_images_of(g, n: int, psi: float = 1.0) -> torch.Tensor:
        return sample_images_gan(g, p_pooled[:n], seeds[:n], device, psi=psi)

    name, steps = cfg.sampler.split(":")

    def dif_images_of(u, n: int, guidance: float) -> tuple[torch.Tensor, int]:
        return sample_images_diffusion(u, vae, alpha_bar, p_states[:n], p_mask[:n], uncond, seeds[:n], sampler=name,
                                       steps=int(steps), guidance=guidance, prediction=cfg.diffusion.prediction,
                                       device=device)

    def score(imgs: torch.Tensor, **extra) -> dict:
        feats, judged = describe(imgs, judge, inception)
        # One BLAS thread: the metrics' matrices are small (128 features), and OpenBLAS threads spinning against
        # torch's on a busy 2-core machine made each FID's sqrtm 250x slower (1.2 s instead of 5 ms).
        with threadpool_limits(limits=1, user_api="blas"):
            return image_metrics(real_feats, feats, judged, prompted[: len(imgs)], data.num_modes, **extra)

    t0 = time.perf_counter()
    gan_images = gan_images_of(G, cfg.num_samples)
    gan_sample_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    dif_images, nfe = dif_images_of(unet, cfg.num_samples, cfg.guidance)
    dif_sample_s = time.perf_counter() - t0

    # --- metric-over-training (the snapshots, on fewer samples) and the fidelity/diversity sweeps. The last checkpoint
    # is the final model and the sweeps include the headline knob setting: those reuse the headline images' first n
    # (the same model, prompts and seeds) instead of sampling them again.
    n_curve, n_sweep = min(cfg.curve_samples, cfg.num_samples), min(cfg.sweep_samples, cfg.num_samples)
    if real_feats is None:  # nothing to score the checkpoints and settings with
        gan_snaps, unet_snaps, sweep_knobs = [], [], ([], [])
    else:
        sweep_knobs = (cfg.truncation_sweep, cfg.guidance_sweep)
    t0 = time.perf_counter()
    gan_at, unet_at = ({s.step: s.ema for s in snaps} for snaps in (gan_snaps, unet_snaps))  # step -> EMA copy

    def gan_at_step(k: int) -> torch.Tensor:
        return gan_images[:n_curve] if k == len(gan_hist) else gan_images_of(gan_at[k], n_curve)

    def unet_at_step(k: int) -> torch.Tensor:
        return dif_images[:n_curve] if k == len(unet_hist) else dif_images_of(unet_at[k], n_curve, cfg.guidance)[0]

    curves = {"gan": _points(sweep(gan_at, gan_at_step, score, key="step")),
              "diffusion": _points(sweep(unet_at, unet_at_step, score, key="step"))}
    for model, decay in (("gan", gan.ema_decay), ("diffusion", trained_unet.ema_decay)):
        for point in curves[model]:
            point["initial_weight_share"] = initial_weight_share(point["step"], decay)
    for held in (gan_snaps, unet_snaps, gan_at, unet_at):
        held.clear()  # free the copies before the sweeps
    curve_s = time.perf_counter() - t0

    def truncated(psi: float) -> torch.Tensor:
        return gan_images[:n_sweep] if psi == 1.0 else gan_images_of(G, n_sweep, psi)

    def guided_by(s: float) -> torch.Tensor:
        return dif_images[:n_sweep] if s == cfg.guidance else dif_images_of(unet, n_sweep, s)[0]

    t0 = time.perf_counter()
    sweeps = {"gan": {"knob": "truncation psi", "points": _points(sweep(sweep_knobs[0], truncated, score))},
              "diffusion": {"knob": "guidance scale", "points": _points(sweep(sweep_knobs[1], guided_by, score))}}
    sweep_s = time.perf_counter() - t0

    grid_real = real_for_prompts(data, prompted[:64], eval_gen)
    for part, imgs in (("real", grid_real), ("gan", gan_images), ("diffusion", dif_images)):
        save_grid(run_dir / "samples" / f"{tag}_{part}.png", imgs)
    (run_dir / "samples" / f"{tag}_prompts.txt").write_text("\n".join(prompts[:64]) + "\n")

    common = {"judge_accuracy": judge.accuracy} if judge is not None else {}
    real_inception = inception_features(real, inception) if inception is not None and judge is not None else None
    entries = []
    for model, imgs, status, history, train, seconds, nfe_, extra in (
        ("gan", gan_images, gan_status, gan_hist,
         {"steps": len(gan_hist), "examples_seen": len(gan_hist) * cfg.batch_size, "seconds": gan_seconds,
          "images_per_s": len(gan_hist) * cfg.batch_size / gan_seconds, "params": {"G": num_params(G), "D": num_params(D)}},
         gan_sample_s, 1, {}),
        ("diffusion", dif_images, unet_status, unet_hist,
         {"steps": len(unet_hist), "examples_seen": len(unet_hist) * cfg.batch_size + cfg.vae_steps * cfg.vae_batch_size,
          "seconds": vae_seconds + unet_seconds, "images_per_s": len(unet_hist) * cfg.batch_size / unet_seconds,
          "params": {"vae": num_params(vae), "text": num_params(text), "unet": num_params(unet)}, "vae": vae_info},
         dif_sample_s, nfe, {"sampler": cfg.sampler, "guidance": cfg.guidance}),
    ):
        train["params_total"] = sum(train["params"].values())
        train["text_encoder"] = text_info
        entry = {"dataset": dataset, "model": model, "seed": seed, **_status_of(status), **extra, "train": train}
        try:
            entry["metrics"] = {**score(imgs, fid_boot=cfg.fid_bootstrap, fid_counts=tuple(cfg.fid_counts), seed=seed),
                                **common}
            if real_inception is not None:  # Inception FID/KID beside the judge's, comparable with published numbers
                fake_inception = inception_features(imgs, inception)
                entry["metrics"].update(fid_inception=fid(real_inception, fake_inception),
                                        kid_inception=kid(real_inception, fake_inception))
            if model == "gan":  # the raw G beside the EMA headline, on the same prompts and seeds
                entry["metrics_raw"] = score(gan_images_of(gan.model, cfg.num_samples))
        except (FloatingPointError, ValueError) as exc:  # a diverged model's NaN images cannot be scored
            entry["metrics"] = dict(common)
            entry["status"] = "diverged" if status["status"] == "diverged" else "failed"
            entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["throughput"] = {"nfe": nfe_, "sample_seconds": seconds, "samples_per_s": len(imgs) / seconds}
        decay = gan.ema_decay if model == "gan" else trained_unet.ema_decay
        entry["ema"] = {"decay": decay, "initial_weight_share": initial_weight_share(len(history), decay)}
        entry["features"] = "judge" if judge is not None else "inception" if inception is not None else None
        if (missing := unavailable_metrics(judge is not None, inception is not None)) is not None:
            entry["unavailable"] = missing
        entry["curve"], entry["sweep"] = curves[model], sweeps[model]
        entry["stability"] = stability(history, model)
        if entry["curve"] and judge is not None:
            entry["stability"].update(threshold=f"cond_accuracy >= {COND_THRESHOLD}",
                                      steps_to_threshold=steps_to_threshold(entry["curve"], "cond_accuracy",
                                                                            COND_THRESHOLD))
        entry["eval_seconds"] = {"curve": curve_s, "sweep": sweep_s}  # shared by both entries: one timer for the pair
        entries.append(entry)
    return entries


# ---------------------------------------------------------------- `gvd sample`


def load_image_models(states: dict, config: dict, device):
    """Rebuild the networks of an image checkpoint from its own config. Returns a dict of eval-mode modules plus the
    tokenizer."""
    tokenizer = Tokenizer(**config["tokenizer"])
    out = {"tokenizer": tokenizer, "text": TextEncoder(TextConfig(**config["text"]))}
    if config["model"] == "gan":
        dcfg = DCGANConfig(**config["dcgan"])
        out.update(G=Generator(dcfg))
    else:
        out.update(vae=KLAutoencoder(VAEConfig(**config["vae"])), unet=UNet(UNetConfig(**config["unet"])))
    for name, module in out.items():
        if name != "tokenizer":
            module.load_state_dict(states[name])
            out[name] = module.to(device).eval().requires_grad_(False)
    return out


def sample_from_checkpoint(states: dict, config: dict, prompt: str, n: int, *, seed: int, sampler: str | None,
                           steps: int | None, guidance: float | None, device) -> tuple[torch.Tensor, int]:
    """n images for one prompt from a saved run. Unknown prompt words raise ValueError naming them."""
    m = load_image_models(states, config, device)
    tokenizer, text = m["tokenizer"], m["text"]
    states_, pooled, mask = encode_text(text, tokenizer, [prompt] * n, device, strict=True)
    seeds = sample_seeds(seed, n)
    if config["model"] == "gan":
        return sample_images_gan(m["G"], pooled, seeds, device), 1
    default_name, default_steps = config["sampler"].split(":")
    uncond = tuple(x[:1] for x in encode_text(text, tokenizer, [""], device)[::2])
    alpha_bar = alphas_cumprod(config["diffusion"]["schedule"], config["diffusion"]["num_steps"]).float().to(device)
    return sample_images_diffusion(m["unet"], m["vae"], alpha_bar, states_, mask, uncond, seeds,
                                   sampler=sampler or default_name, steps=steps or int(default_steps),
                                   guidance=config["guidance"] if guidance is None else guidance,
                                   prediction=config["diffusion"]["prediction"], device=device)
