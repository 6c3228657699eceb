"""The GAN family: one generator pass per sample, trained adversarially (Goodfellow et al. 2014).

    2D mixtures  MLP generator and discriminator (models/mlp.py)
    images       conditional DCGAN (Radford et al. 2015) on the pooled text embedding, projection discriminator
                 (Miyato & Koyama 2018); networks in models/dcgan.py, loops in bench/train

Knob: latent truncation z <- psi z (psi = 1: none), which trades diversity for fidelity (Brock et al. 2019 resample
|z| beyond a threshold instead; scaling toward the mean latent is its continuous form). Every latent is drawn from
its sample's seed (bench/core/seeding.py), so sample i is the same image at any batch size.
"""

import copy
import dataclasses
import time
from dataclasses import asdict

import torch

from bench.config import MixtureBenchConfig
from bench.core import distributed
from bench.core.seeding import per_sample_randn
from bench.families.interface import Choice, Family, ImageTask, Knob, LogUniform, MixtureTask, Trained, train_record
from bench.train.images import train_dcgan
from bench.train.loops import flops_per_step, train_gan
from models.dcgan import DCGANConfig, Discriminator, Generator
from models.mlp import MLPDiscriminator, MLPGenerator, num_params

KNOB = Knob("truncation psi", "psi", 1.0)


def truncate(z: torch.Tensor, psi: float) -> torch.Tensor:
    """The truncation knob: z <- psi z, toward the mean latent (0)."""
    return psi * z


# ---------------------------------------------------------------- 2D mixtures


def train_mixture(task: MixtureTask) -> Trained:
    """MLP G and D on the task's real stream; the EMA of G samples (the same EMA rule as the denoiser's)."""
    mix = task.mix
    real_batch, train_gen, state, every = task.begin("gan")
    start = time.perf_counter()
    G, D = MLPGenerator(mix.gan_net).to(task.device), MLPDiscriminator(mix.gan_net).to(task.device)

    def latent(n):  # [ddp] n is this rank's share: draw the global batch's latents, keep its rows
        z = torch.randn(distributed.global_size(n), mix.gan_net.z_dim, generator=train_gen)
        return distributed.local_rows(z).to(task.device)

    probe = lambda n: train_gan(copy.deepcopy(G), copy.deepcopy(D), lambda step: (torch.zeros(n, 2), None),  # noqa
                                lambda m: torch.zeros(m, mix.gan_net.z_dim), mix.gan, 1, progress=False)
    step_flops = flops_per_step(probe, mix.batch_size)
    snapshots: list = []
    nets = distributed.wrap(G, task.device), distributed.wrap(D, task.device)  # [ddp] DDP under torchrun
    result = train_gan(*nets, real_batch, latent, mix.gan, mix.steps, desc=task.desc("gan"), progress=task.progress,
                       snapshot_every=every, snapshots=snapshots, state=state)
    seconds = time.perf_counter() - start + task.states.offset("gan")
    steps = len(result.history)
    record = train_record(steps=steps, batch=mix.batch_size, seconds=seconds, params={"G": num_params(G),
                          "D": num_params(D)}, step_flops=step_flops, recipe=recipe(mix.gan))
    return Trained(result.ema, result.status, record, {"gan": result.history}, snapshots, G.eval(),
                   result.ema_decay, {"G": result.ema, "G_raw": G, "D": D}, {"gan_net": asdict(mix.gan_net)})


@torch.no_grad()
def sample_mixture(trained: Trained, seeds: torch.Tensor, label: str, net=None) -> tuple[torch.Tensor, int]:
    """One generator pass per sample, in the unit-variance units it trained in; z_i depends only on seed i."""
    G = trained.sampler if net is None else net
    z = per_sample_randn(seeds, (G.cfg.z_dim,)).to(next(G.parameters()).device)
    return G(z).cpu(), 1


_TOY = MixtureBenchConfig()  # the toy preset's 2D settings: the centre of the study's search space
SEARCH_SPACE = {
    "lr_g": LogUniform(_TOY.gan.lr / 5, _TOY.gan.lr * 5),  # Adam learning rate of G
    "lr_d": LogUniform(_TOY.gan.lr_d / 5, _TOY.gan.lr_d * 5),  # Adam learning rate of D
    "beta1": Choice((0.0, 0.5, 0.9)),  # Adam beta1 (0.5: Radford et al. 2015; 0: Miyato et al. 2018)
    "d_steps": Choice((1, 2)),  # D updates per G update (Goodfellow et al. 2014, Algorithm 1's k)
    "loss": Choice(("nonsaturating", "hinge")),  # Goodfellow et al. 2014 / Lim & Ye 2017
    "spectral_norm": Choice((False, True)),  # on D (Miyato et al. 2018)
    "width": Choice((_TOY.gan_net.width // 2, _TOY.gan_net.width, _TOY.gan_net.width * 2)),  # of G and D
}


def study_config(knobs: dict, mix: MixtureBenchConfig) -> MixtureBenchConfig:
    """The 2D config of one `gvd study stability` run: mix with the drawn knobs set."""
    mix = dataclasses.replace(mix)
    mix.gan_net = dataclasses.replace(mix.gan_net, width=knobs["width"], spectral_norm=knobs["spectral_norm"])
    mix.gan = dataclasses.replace(mix.gan, lr=knobs["lr_g"], lr_d=knobs["lr_d"], betas=(knobs["beta1"],
                                  mix.gan.betas[1]), loss=knobs["loss"], d_steps=knobs["d_steps"])
    return mix


def recipe(gan) -> str:
    """The optimiser and loss of a GANTrainConfig, as the recipe table writes it."""
    return (f"Adam(lr G {gan.lr:g}, D {gan.lr_d:g}, betas {tuple(gan.betas)}), constant LR, {gan.loss} loss, "
            f"{gan.d_steps} D step(s) per G step, no gradient clipping")


# ---------------------------------------------------------------- images


def _step_flops(task: ImageTask) -> float:
    """FLOPs of one training step at the task's batch size, counted on fresh networks (the compute budget axis needs
    it before the GAN trains; the training counts its own the same way: bench/train/images.py train_dcgan)."""
    cfgs, cfg = task.configs, task.cfg
    with torch.random.fork_rng(devices=[]):
        G, D = (m(cfgs["dcgan"]).to(task.device) for m in (Generator, Discriminator))
    z = torch.zeros(cfg.batch_size, cfgs["dcgan"].z_dim, device=task.device)
    return flops_per_step(lambda n: train_gan(G, D, lambda step: (task.images[:n], task.captions[1][:n]),
                                              lambda m: z[:m], cfg.gan, 1, progress=False), cfg.batch_size)


def _budget(task: ImageTask) -> tuple[int, dict]:
    """(steps, the budget record): cfg.steps on the examples axis; on the compute axis, the steps whose training
    FLOPs come nearest the task's budget."""
    if task.flops_budget is None:
        return task.cfg.steps, {"axis": "examples", "steps": task.cfg.steps}
    per_step = _step_flops(task)
    steps = max(1, round(task.flops_budget / per_step))
    return steps, {"axis": "compute", "steps": steps, "target_flops": task.flops_budget, "step_flops": per_step}


def train_image(task: ImageTask) -> Trained:
    """The conditional DCGAN on the task's images and the shared pooled text embedding."""
    cfg = task.cfg
    steps, budget = _budget(task)
    start = time.perf_counter()
    result, D, snapshots, step_flops = train_dcgan(task.images, task.captions[1], cfg, task.configs, task.device,
                                                   task.seed, task.progress, steps, task.states)
    seconds = time.perf_counter() - start + task.states.offset("gan")
    done = len(result.history)
    record = train_record(steps=done, batch=cfg.batch_size, seconds=seconds, params={"G": num_params(result.model),
                          "D": num_params(D)}, step_flops=step_flops, recipe=recipe(cfg.gan), budget=budget)
    return Trained(result.ema, result.status, record, {"gan": result.history}, snapshots, result.model,
                   result.ema_decay, {"G": result.ema, "D": D}, {"dcgan": asdict(task.configs["dcgan"])})


@torch.no_grad()
def sample_image(trained: Trained, prompts, psi: float, net=None, batch: int = 512) -> tuple[torch.Tensor, int]:
    """One generator pass per image at truncation psi, conditioned on the prompts' pooled text embedding.
    net: another generator of the same shape (a snapshot, the raw weights). Returns ((N, C, H, W) on the CPU, 1)."""
    G = trained.sampler if net is None else net
    device, pooled = next(G.parameters()).device, prompts.text[1]
    out = []
    for i in range(0, len(prompts.seeds), batch):
        z = truncate(per_sample_randn(prompts.seeds[i : i + batch], (G.cfg.z_dim,)), psi).to(device)
        out.append(G(z, pooled[i : i + batch]).float().clamp(-1, 1).cpu())
    return torch.cat(out), 1


def load_image(states: dict, meta: dict, device, text=None) -> Trained:
    """The GAN of a checkpoint (`gvd sample`): its EMA generator, which is what was scored."""
    G = Generator(DCGANConfig(**meta["networks"]["dcgan"]))
    G.load_state_dict(states["G"])
    return Trained(G.to(device).eval().requires_grad_(False), {"status": "ok"}, {})


FAMILY = Family(
    name="gan", label="GAN", role="model", knob=KNOB, grid=lambda cfg: list(cfg.truncation_sweep),
    train_image=train_image, sample_image=sample_image, load_image=load_image,
    train_mixture=train_mixture, sample_mixture=sample_mixture, mixture_samplers=lambda mix: ["G"],
    search_space=SEARCH_SPACE, study_config=study_config,
    description="one generator pass per sample, trained adversarially (MLP GAN on 2D; conditional DCGAN on images)",
)
