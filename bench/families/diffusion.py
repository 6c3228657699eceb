"""The diffusion family: a denoiser trained on the DDPM loss (Ho et al. 2020), sampled by removing a little noise at
a time with a solver (models/samplers.py).

    2D mixtures  residual MLP denoiser (models/mlp.py) on the data
    images       latent diffusion (Rombach et al. 2022): a KL autoencoder, then a text-conditioned UNet with
                 cross-attention on its scaled latents, 10% caption dropout for classifier-free guidance

Knob: the classifier-free guidance scale s, eps_u + s (eps_c - eps_u) (Ho & Salimans 2021; s = 1: the plain
conditional model). Guidance runs the conditional and the unconditional halves in one batched call, so a guided
sample costs two network passes per step: the NFE this family reports counts both. The starting noise and every
stochastic step's noise are drawn from the sample's seed (bench/core/seeding.py).
"""

import copy
import dataclasses
import time
from dataclasses import asdict, dataclass

import torch

from bench.config import MixtureBenchConfig, parse_sampler
from bench.core import distributed
from bench.core.seeding import noise_fn, per_sample_randn
from bench.families.interface import Choice, Family, ImageTask, Knob, LogUniform, MixtureTask, Trained, train_record
from bench.train.images import encode_flops, encode_latents, schedule, train_unet, train_vae
from bench.train.loops import flops_per_step, train_diffusion
from models.diffusion import SCHEDULES, DiffusionConfig, alphas_cumprod, t_to_alpha_bar, x0_and_eps
from models.mlp import MLPDenoiser, num_params
from models.samplers import guided, sample
from models.unet import UNet, UNetConfig
from models.vae import KLAutoencoder, VAEConfig

KNOB = Knob("guidance scale", "s", 1.0)


@dataclass
class Denoising:
    """A trained 2D denoiser with what sampling needs: its schedule and what it predicts."""

    net: torch.nn.Module  # the EMA weights
    diffusion: DiffusionConfig


@dataclass
class LatentDiffusion:
    """The image model: autoencoder, UNet on its scaled latents, schedule, the scored sampler and the empty
    caption's encoding (the unconditional half of guidance)."""

    vae: KLAutoencoder
    unet: UNet  # the EMA weights
    diffusion: DiffusionConfig
    sampler: str  # "name:steps", e.g. "dpmpp2m:20"
    empty: tuple  # states (1, L, W), mask (1, L) of ""

    def decode(self, z_scaled: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1], in batches of 512."""
        with torch.no_grad():
            parts = [self.vae.decode(b / self.vae.scale_factor) for b in z_scaled.split(512)]
        return torch.cat(parts).clamp(-1, 1)


def conditioned(unet, scale: float, cond: dict, uncond: dict):
    """The denoiser (x, t) -> prediction a sampler calls: the network bound to its text (scale 1), else classifier-free
    guided with the empty caption (models/samplers.py guided: both halves in one batched call)."""
    if scale == 1.0:
        return lambda x, t: unet(x, t, **cond)
    return guided(unet, scale, cond, uncond)


# ---------------------------------------------------------------- 2D mixtures


def train_mixture(task: MixtureTask) -> Trained:
    """The MLP denoiser on the task's real stream: DDPM loss, one-cycle learning rate, EMA weights that sample."""
    mix = task.mix
    real_batch, train_gen, state, every = task.begin("diffusion")
    start = time.perf_counter()
    denoiser = MLPDenoiser(mix.denoiser_net).to(task.device)
    alpha_bar = schedule(mix.diffusion, task.device)
    probe = lambda n: train_diffusion(copy.deepcopy(denoiser), lambda step: (torch.zeros(n, 2), {}),  # noqa: E731
                                      alpha_bar, mix.diffusion.prediction, mix.diffusion_train, 1,
                                      torch.Generator().manual_seed(0), progress=False)
    step_flops = flops_per_step(probe, mix.batch_size)
    snapshots: list = []
    result = train_diffusion(distributed.wrap(denoiser, task.device), lambda step: (real_batch(step)[0], {}),
                             alpha_bar, mix.diffusion.prediction, mix.diffusion_train, mix.steps, train_gen,
                             desc=task.desc("diffusion"), progress=task.progress, snapshot_every=every,
                             snapshots=snapshots, state=state)
    seconds = time.perf_counter() - start + task.states.offset("diffusion")
    steps = len(result.history)
    record = train_record(steps=steps, batch=mix.batch_size, seconds=seconds, params={"denoiser": num_params(denoiser)},
                          step_flops=step_flops, recipe=recipe(mix.diffusion_train))
    return Trained(Denoising(result.ema, mix.diffusion), result.status, record, {"diffusion": result.history},
                   snapshots, denoiser.eval(), result.ema_decay, {"denoiser": result.ema, "denoiser_raw": denoiser},
                   {"denoiser_net": asdict(mix.denoiser_net), "diffusion": asdict(mix.diffusion)})


@torch.no_grad()
def sample_mixture(trained: Trained, seeds: torch.Tensor, label: str, net=None) -> tuple[torch.Tensor, int]:
    """Samples with the solver `label` ("ddpm:1000") from per-sample-seeded noise, in the units it trained in."""
    model, diffusion = trained.sampler.net if net is None else net, trained.sampler.diffusion
    device = next(model.parameters()).device
    name, steps = parse_sampler(label)
    x_T = per_sample_randn(seeds, (2,)).to(device)
    x, nfe = sample(name, model, x_T, schedule(diffusion, device), steps, prediction=diffusion.prediction,
                    noise=noise_fn(seeds, (2,), device))
    return x.cpu(), nfe


_TOY = MixtureBenchConfig()  # the toy preset's 2D settings: the centre of the study's search space
SEARCH_SPACE = {
    "lr": LogUniform(_TOY.diffusion_train.lr / 5, _TOY.diffusion_train.lr * 5),  # peak one-cycle lr
    "schedule": Choice(("linear", "cosine")),  # Ho et al. 2020 / Nichol & Dhariwal 2021
    "prediction": Choice(("eps", "v", "x0")),  # what the denoiser predicts (Salimans & Ho 2022 for v)
    "ema": Choice((0.99, 0.995, 0.999)),  # EMA decay of the sampling weights
    "width": Choice((_TOY.denoiser_net.width // 2, _TOY.denoiser_net.width, _TOY.denoiser_net.width * 2)),
}


def study_config(knobs: dict, mix: MixtureBenchConfig) -> MixtureBenchConfig:
    """The 2D config of one `gvd study stability` run: mix with the drawn knobs set."""
    mix = dataclasses.replace(mix)
    mix.denoiser_net = dataclasses.replace(mix.denoiser_net, width=knobs["width"])
    mix.diffusion = DiffusionConfig(schedule=knobs["schedule"], num_steps=mix.diffusion.num_steps,
                                    prediction=knobs["prediction"])
    mix.diffusion_train = dataclasses.replace(mix.diffusion_train, lr=knobs["lr"], ema=knobs["ema"])
    return mix


def recipe(train) -> str:
    """The optimiser and schedule of a DiffusionTrainConfig, as the recipe table writes it."""
    return (f"AdamW(peak lr {train.lr:g}, betas {tuple(train.betas)}, weight decay {train.weight_decay:g}), one-cycle "
            f"LR (warm-up {train.warmup:g} of the steps), gradient clipping at {train.grad_clip:g}")


# ---------------------------------------------------------------- images


def _train_vae(task: ImageTask) -> tuple:
    """Stage 1: the autoencoder, then the scaled latents of every training image. Returns (vae, history, seconds and
    FLOPs of the training and of the encodings, latents)."""
    start = time.perf_counter()
    vae, history, flops = train_vae(task.images, task.cfg, task.configs, task.device, task.seed, task.progress,
                                    task.states)
    latents = encode_latents(vae, task.images) * vae.scale_factor  # (N, c, h, w), unit variance
    seconds = time.perf_counter() - start + task.states.offset("vae")
    return vae, history, seconds, flops + encode_flops(vae, task.images), latents


def train_image(task: ImageTask) -> Trained:
    """The KL autoencoder, then the UNet on its latents with the shared text states as cross-attention context."""
    cfg = task.cfg
    vae, vae_history, vae_seconds, vae_flops, latents = _train_vae(task)
    start = time.perf_counter()
    text = (task.captions[0], task.captions[2])  # states, mask
    result, snapshots, step_flops = train_unet(latents, text, task.empty, cfg, task.configs, task.device, task.seed,
                                               task.progress, task.states)
    seconds = time.perf_counter() - start + task.states.offset("diffusion")
    steps = len(result.history)
    stage1 = {"steps": len(vae_history), "seconds": vae_seconds, "flops": vae_flops,
              "scale_factor": float(vae.scale_factor)}
    budget = {"axis": "examples" if task.flops_budget is None else "compute", "steps": cfg.steps}
    record = train_record(steps=steps, batch=cfg.batch_size, seconds=vae_seconds + seconds,
                          params={"vae": num_params(vae), "unet": num_params(result.model)},
                          step_flops=step_flops, setup_flops=vae_flops,
                          recipe=recipe(cfg.diffusion_train) + "; VAE: Adam, cosine LR",
                          extra_examples=len(vae_history) * cfg.vae_batch_size, vae=stage1, sampler=cfg.sampler,
                          budget=budget)
    model = LatentDiffusion(vae, result.ema, cfg.diffusion, cfg.sampler, task.empty)
    return Trained(model, result.status, record, {"diffusion": result.history, "vae": vae_history}, snapshots,
                   result.model, result.ema_decay, {"vae": vae, "unet": result.ema},
                   {k: asdict(task.configs[k]) for k in ("vae", "unet")} | {"diffusion": asdict(cfg.diffusion)})


@torch.no_grad()
def sample_image(trained: Trained, prompts, guidance: float, net=None, batch: int = 256) -> tuple[torch.Tensor, int]:
    """Guided sampling in latent space from per-sample-seeded noise, then the VAE decoder. net: another UNet of the
    same shape (a snapshot, the raw weights). Returns (images (N, C, H, W) on the CPU, network passes per sample)."""
    model = trained.sampler
    unet = model.unet if net is None else net
    device = next(unet.parameters()).device
    h = model.vae.cfg.resolution // model.vae.cfg.factor
    shape = (unet.cfg.in_channels, h, h)
    name, steps = parse_sampler(model.sampler)
    alpha_bar = schedule(model.diffusion, device)
    states, _, mask = prompts.text
    out, nfe = [], 0
    for i in range(0, len(prompts.seeds), batch):
        s = prompts.seeds[i : i + batch]
        cond = {"context": states[i : i + len(s)], "context_mask": mask[i : i + len(s)]}
        uncond = {"context": model.empty[0].expand(len(s), -1, -1), "context_mask": model.empty[1].expand(len(s), -1)}
        z, nfe = sample(name, conditioned(unet, guidance, cond, uncond), per_sample_randn(s, shape).to(device),
                        alpha_bar, steps, prediction=model.diffusion.prediction, noise=noise_fn(s, shape, device))
        out.append(model.decode(z).float().cpu())
    return torch.cat(out), nfe * (1 if guidance == 1.0 else 2)  # guidance runs both halves at every step


def autoencode(trained: Trained, images: torch.Tensor) -> torch.Tensor:
    """Images through the VAE and back (the posterior mean, scaled and unscaled as the UNet sees it)."""
    vae = trained.sampler.vae
    device = next(vae.parameters()).device
    return trained.sampler.decode(encode_latents(vae, images.to(device)) * vae.scale_factor).cpu()


def load_image(states: dict, meta: dict, device, text) -> Trained:
    """The diffusion model of a checkpoint (`gvd sample`): VAE, EMA UNet, schedule, sampler; text: its TextModels."""
    nets = meta["networks"]
    vae, unet = KLAutoencoder(VAEConfig(**nets["vae"])), UNet(UNetConfig(**nets["unet"]))
    for name, module in (("vae", vae), ("unet", unet)):
        module.load_state_dict(states[name])
    vae, unet = (m.to(device).eval().requires_grad_(False) for m in (vae, unet))
    model = LatentDiffusion(vae, unet, DiffusionConfig(**nets["diffusion"]), meta["sampler"], text.empty_caption())
    return Trained(model, {"status": "ok"}, {})


# ---------------------------------------------------------------- how it makes an image (the report's process figures)

FRAMES = 8  # sampler steps shown per trajectory, evenly spaced
OTHER_SAMPLERS = ("ddpm", "euler", "ddim", "dpmpp2m")  # the trajectory's comparison: the first two unlike the headline


class Recorder(torch.nn.Module):
    """A UNet that keeps every call a sampler makes: (x_t, timesteps, raw prediction), on the CPU in float32."""

    def __init__(self, unet: UNet):
        super().__init__()
        self.unet, self.cfg, self.calls = unet, unet.cfg, []

    def forward(self, x, t, **text):
        out = self.unet(x, t, **text)
        self.calls.append((x.detach().float().cpu(), t.detach().float().cpu(), out.detach().float().cpu()))
        return out


def _x0(model: LatentDiffusion, x: torch.Tensor, t: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """The network's clean-latent estimate x0_hat at (x_t, t) (models/diffusion.py x0_and_eps)."""
    a = t_to_alpha_bar(t, schedule(model.diffusion, "cpu").cpu()).float().view(-1, *[1] * (x.dim() - 1))
    return x0_and_eps(pred, x, a, model.diffusion.prediction)[0]


def _decode(model: LatentDiffusion, z: torch.Tensor) -> torch.Tensor:
    device = next(model.vae.parameters()).device
    return model.decode(z.to(device)).float().cpu()


def trajectory(trained: Trained, prompts, sampler: str) -> dict:
    """One sampler's path at s = 1 for the prompts: the latent x_t decoded and the clean estimate x0_hat decoded at
    FRAMES evenly spaced network calls, then the sampler's output (the last column of both). Returns {"xt", "x0":
    (P, FRAMES + 1, C, H, W), "calls": the call indices, "t": their timesteps, "nfe", "latents": the x_t (P, FRAMES,
    c, h, w)}."""
    model = dataclasses.replace(trained.sampler, sampler=sampler)
    recorder = Recorder(trained.sampler.unet)
    images, nfe = sample_image(Trained(model, {}, {}), prompts, 1.0, net=recorder)
    picks = sorted({round(i * (len(recorder.calls) - 1) / (FRAMES - 1)) for i in range(FRAMES)})
    xt = [_decode(model, recorder.calls[i][0]) for i in picks] + [images]
    x0 = [_decode(model, _x0(model, *recorder.calls[i])) for i in picks] + [images]
    return {"xt": torch.stack(xt, 1), "x0": torch.stack(x0, 1), "calls": torch.tensor(picks),
            "t": torch.stack([recorder.calls[i][1][0] for i in picks]), "nfe": nfe,
            "latents": torch.stack([recorder.calls[i][0] for i in picks], 1)}


def forward_process(trained: Trained, image: torch.Tensor, t: torch.Tensor, seed: int = 0) -> dict:
    """One test image noised by q(x_t | x_0) = N(sqrt(a_t) x_0, (1 - a_t) I) (DDPM eq. 4) at timesteps t, in pixels
    and (what the UNet sees) in the scaled latent space, decoded; with the noise drawn and each schedule's SNR
    a_t / (1 - a_t) at t. image (C, H, W) in [-1, 1]."""
    model = trained.sampler
    vae, t = model.vae, t.round().long()
    a = schedule(model.diffusion, "cpu").cpu().double()[t].float()
    z0 = (encode_latents(vae, image[None].to(next(vae.parameters()).device)) * vae.scale_factor).float().cpu()[0]
    noise = per_sample_randn(torch.tensor([seed]), tuple(image.shape))[0]
    noise_z = per_sample_randn(torch.tensor([seed]), tuple(z0.shape), stream=1)[0]
    pixels = torch.stack([ai.sqrt() * image + (1 - ai).sqrt() * noise for ai in a])
    latents = torch.stack([ai.sqrt() * z0 + (1 - ai).sqrt() * noise_z for ai in a])
    snr = {name: (lambda b: b / (1 - b))(alphas_cumprod(name, model.diffusion.num_steps)[t]).tolist()
           for name in SCHEDULES}
    return {"x0": image, "noise": noise, "pixels": pixels, "latents": _decode(model, latents), "t": t, "alpha_bar": a,
            "snr": snr, "schedule": model.diffusion.schedule}


def guidance_parts(trained: Trained, prompts, scales: list[float], x_t: torch.Tensor, t: torch.Tensor) -> dict:
    """Classifier-free guidance taken apart at one noisy latent per prompt (x_t (P, c, h, w) at timesteps t (P,)):
    the unconditional and conditional clean estimates decoded, their difference (decoded images, mean over
    channels), the guided estimate x0_u + s (x0_c - x0_u) decoded at each scale (Ho & Salimans 2021, eq. 6: affine
    in the prediction, so the same in x0), and the finished samples at each scale."""
    model = trained.sampler
    device = next(model.unet.parameters()).device
    states, _, mask = prompts.text
    n = len(x_t)
    uncond = (model.empty[0].expand(n, -1, -1), model.empty[1].expand(n, -1))
    with torch.no_grad():
        pred_c = model.unet(x_t.to(device), t.to(device), context=states[:n], context_mask=mask[:n]).float().cpu()
        pred_u = model.unet(x_t.to(device), t.to(device), context=uncond[0], context_mask=uncond[1]).float().cpu()
    x0_c, x0_u = _x0(model, x_t, t, pred_c), _x0(model, x_t, t, pred_u)
    cond, free = _decode(model, x0_c), _decode(model, x0_u)
    guided_ = torch.stack([_decode(model, x0_u + s * (x0_c - x0_u)) for s in scales], 1)
    finals = torch.stack([sample_image(trained, prompts, s)[0] for s in scales], 1)
    return {"uncond": free, "cond": cond, "difference": (cond - free).mean(1), "guided": guided_, "final": finals,
            "scales": torch.tensor(scales), "x_t": x_t, "t": t}


def explain_image(trained: Trained, prompts, image: torch.Tensor, grid: list[float]) -> dict[str, torch.Tensor]:
    """The arrays of the report's process figures (bench/report/process.py): the headline sampler's trajectory
    beside two other samplers at the same NFE, the forward process at the trajectory's noise levels, and guidance
    taken apart (2 prompts, 3 scales of the grid, at the trajectory's middle frame)."""
    name, steps = parse_sampler(trained.sampler.sampler)
    others = [o for o in OTHER_SAMPLERS if o != name][:2]
    out, headline = {}, None
    for i, label in enumerate([trained.sampler.sampler] + [f"{o}:{steps}" for o in others]):
        path = trajectory(trained, prompts, label)
        headline = headline or path
        out.update({f"trajectory{i}_{k}": v for k, v in path.items() if k not in ("nfe", "latents")})
        out[f"trajectory{i}_label"], out[f"trajectory{i}_nfe"] = label, path["nfe"]
    out.update({f"forward_{k}": v for k, v in forward_process(trained, image, headline["t"]).items()})
    values = sorted(set(grid)) or [1.0]
    scales = [values[0], values[len(values) // 2], values[-1]] if len(values) >= 3 else values
    mid, two = len(headline["calls"]) // 2, prompts.rows(slice(0, 2))
    x_t, t = headline["latents"][:2, mid], headline["t"][mid].expand(len(two.seeds))  # the headline's middle frame
    out.update({f"guidance_{k}": v for k, v in guidance_parts(trained, two, scales, x_t, t).items()})
    return out


FAMILY = Family(
    name="diffusion", label="diffusion", role="model", knob=KNOB, grid=lambda cfg: list(cfg.guidance_sweep),
    train_image=train_image, sample_image=sample_image, load_image=load_image, autoencode=autoencode,
    train_mixture=train_mixture, sample_mixture=sample_mixture, mixture_samplers=lambda mix: list(mix.samplers),
    search_space=SEARCH_SPACE, study_config=study_config, explain_image=explain_image,
    description="a denoiser sampled step by step with a solver (MLP on 2D; text-conditioned latent diffusion on "
                "images)",
)
