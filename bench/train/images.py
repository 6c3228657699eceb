"""The image trainings, one linear loop each: the shared text encoder (CLIP), the DCGAN, the KL autoencoder and the
UNet. bench/train/loops.py holds the GAN and diffusion steps they share with the 2D benchmark; bench/families calls
these with the data and the seed of one run (bench/families/interface.py ImageTask).

Every training seeds itself (torch's global generator from the run seed, its own data and noise generators), resumes
from its state in `states` and saves it there (bench/train/state.py).
"""

import copy
import json
from functools import partial

import torch

from bench.core import distributed
from bench.core.seeding import batch_stream
from bench.data.images import ImageData
from bench.train.loops import (
    adam,
    autocast,
    checkpoint_interval,
    drop_captions,
    flops_per_step,
    train_diffusion,
    train_gan,
    vae_step,
)
from bench.train.state import NO_STATE, StateFiles, steps_to_run
from models.dcgan import Discriminator, Generator
from models.diffusion import DiffusionConfig, alphas_cumprod
from models.text import ImageTower, TextEncoder, Tokenizer, clip_loss
from models.unet import UNet
from models.vae import KLAutoencoder, latent_scale_factor


def schedule(diffusion: DiffusionConfig, device) -> torch.Tensor:
    """alpha_bar (T,) of a diffusion config, float32 on device."""
    return alphas_cumprod(diffusion.schedule, diffusion.num_steps).float().to(device)


@torch.no_grad()
def encode_latents(vae: KLAutoencoder, images: torch.Tensor) -> torch.Tensor:
    """Posterior means of the images (unscaled), in batches. The UNet trains on these times scale_factor: with a KL
    weight of 1e-6 the posterior std is tiny, so the mean loses nothing and makes training deterministic."""
    return torch.cat([vae.encode(b)[0] for b in images.split(512)])


def _cosine_opt(params, lr: float, steps: int):
    opt = adam(params, lr=lr)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))


def _batches(n: int, batch_size: int, generator: torch.Generator):
    """Index batches drawn uniformly with replacement from a seeded generator (data resident on the device)."""
    return lambda step: torch.randint(n, (batch_size,), generator=generator)


def caption_groups(data: ImageData) -> torch.Tensor:
    """Ids of what each caption says (its template fields), so that captions saying the same thing in different
    words count as matches in the CLIP loss rather than as negatives."""
    if data.fields is None:
        return data.labels
    keys = [json.dumps(f, sort_keys=True) for f in data.fields]
    index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    return torch.tensor([index[k] for k in keys])


def train_text_encoder(data: ImageData, tokenizer: Tokenizer, cfg, cfgs: dict, device, seed: int, progress=True,
                       states: StateFiles = NO_STATE):
    """CLIP pre-training (Radford et al. 2021): a text transformer and an image tower pulled together on matching
    (caption, image) pairs. Returns (frozen encoder, history, FLOPs of one step); the tower is dropped. cfg: the
    ImageBenchConfig; cfgs: the resolved network configs; states: where it resumes from and saves to
    (bench/train/state.py), as every training below."""
    torch.manual_seed(seed)
    text = distributed.wrap(TextEncoder(cfgs["text"]).to(device), device)  # [ddp]
    tower = distributed.wrap(ImageTower(cfgs["tower"]).to(device), device)
    tokens = tokenizer.encode(data.captions, cfg.text.max_len).to(device)
    groups = caption_groups(data).to(device)
    images = data.images.to(device)  # resident on the device, like the tokens (no CPU indexing per step)
    opt, sched = _cosine_opt(list(text.parameters()) + list(tower.parameters()), cfg.text_lr, cfg.text_steps)
    data_gen = torch.Generator().manual_seed(seed)
    draw = _batches(len(tokens), cfg.text_batch_size, data_gen)
    history, parts = [], {"text": text, "tower": tower, "opt": opt, "sched": sched}
    probe = partial(_clip_step, copy.deepcopy(distributed.unwrap(text)), copy.deepcopy(distributed.unwrap(tower)),
                    tokens, images, groups)
    step_flops = flops_per_step(probe, cfg.text_batch_size, probe=cfg.text_batch_size)  # its loss is B x B
    state = states.open("text", cfg.text_steps, {"data": data_gen})
    for step in steps_to_run(cfg.text_steps, state, parts, history, desc="text encoder (CLIP)",
                             progress=progress and distributed.is_main()):
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
    return distributed.unwrap(text).eval().requires_grad_(False), history, step_flops


def _clip_step(text, tower, tokens, images, groups, n: int) -> None:
    """The forward and backward of one CLIP step on the first n pairs (for counting its FLOPs)."""
    _, pooled, _ = text(tokens[:n])
    clip_loss(pooled, tower(images[:n]), tower.logit_scale.exp(), groups[:n]).backward()


def train_dcgan(images: torch.Tensor, pooled: torch.Tensor, cfg, cfgs: dict, device, seed: int, progress=True,
                steps: int | None = None, states: StateFiles = NO_STATE):
    """Conditional DCGAN on the shared frozen text embedding. Returns (TrainResult of G, D, snapshots, FLOPs of one
    step): Snapshot(step, copy of G, copy of its EMA) at cfg.eval_checkpoints evenly spaced steps."""
    torch.manual_seed(seed)
    G, D = Generator(cfgs["dcgan"]).to(device), Discriminator(cfgs["dcgan"]).to(device)
    # [ddp] BatchNorm over the global batch, then DDP (both no-ops in one process; bench/distributed.py)
    G, D = (distributed.wrap(distributed.sync_batchnorm(m), device) for m in (G, D))
    gen = torch.Generator().manual_seed(seed + 1)  # the GAN's own noise: its latents
    draw = batch_stream(len(images), cfg.batch_size, seed)  # the seed's data stream, the UNet's too

    def real_batch(step):
        idx = distributed.local_rows(draw(step)).to(device)  # [ddp] this rank's rows of the global batch
        return images[idx], pooled[idx]

    def latent(n):  # [ddp] n is this rank's share: draw the global batch's latents, keep its rows
        z = torch.randn(distributed.global_size(n), cfgs["dcgan"].z_dim, generator=gen)
        return distributed.local_rows(z).to(device)

    z_dim = cfgs["dcgan"].z_dim
    probe = lambda n: train_gan(*map(copy.deepcopy, map(distributed.unwrap, (G, D))),  # noqa: E731
                                lambda step: (images[:n], pooled[:n]), lambda m: torch.zeros(m, z_dim, device=device),
                                cfg.gan, 1, progress=False)
    step_flops = flops_per_step(probe, cfg.batch_size)
    snapshots: list = []
    with autocast(device, cfg.amp):
        steps = cfg.steps if steps is None else steps  # the compute budget gives the GAN its own step count
        result = train_gan(G, D, real_batch, latent, cfg.gan, steps, desc="DCGAN", progress=progress,
                           snapshot_every=checkpoint_interval(steps, cfg.eval_checkpoints), snapshots=snapshots,
                           state=states.open("gan", steps, {"train": gen}))
    result.model.eval()
    return result, distributed.unwrap(D).eval(), snapshots, step_flops  # [ddp] the networks, not their DDP wrappers


def train_vae(images: torch.Tensor, cfg, cfgs: dict, device, seed: int, progress=True, states: StateFiles = NO_STATE):
    """KL autoencoder (Rombach et al. 2022), then its latent scale factor = 1 / std of the training latents.
    Returns (frozen VAE, history, FLOPs: its training steps and the encoding that sets the scale factor)."""
    torch.manual_seed(seed)
    vae = KLAutoencoder(cfgs["vae"]).to(device)
    net = distributed.wrap(vae, device)  # [ddp] what trains; vae stays the network itself
    side = vae.cfg.resolution // vae.cfg.factor
    latent_shape = (vae.cfg.latent_channels, side, side)  # of one posterior sample
    opt, sched = _cosine_opt(vae.parameters(), cfg.vae_lr, cfg.vae_steps)
    data_gen = torch.Generator().manual_seed(seed + 2)
    draw = _batches(len(images), cfg.vae_batch_size, data_gen)
    history, parts = [], {"vae": net, "opt": opt, "sched": sched}
    spare = copy.deepcopy(vae)
    probe = lambda n: vae_step(spare, adam(spare.parameters()), images[:n], cfg.amp,  # noqa: E731
                               torch.zeros(n, *latent_shape, device=device))
    step_flops = flops_per_step(probe, cfg.vae_batch_size)
    state = states.open("vae", cfg.vae_steps, {"data": data_gen})  # the posterior noise: torch's generator, saved
    for step in steps_to_run(cfg.vae_steps, state, parts, history, desc="VAE", progress=progress):
        x = images[distributed.local_rows(draw(step)).to(device)]  # [ddp] this rank's rows of the global batch
        # [ddp] the posterior sample's noise, drawn for the global batch as vae(x) would draw it in one process
        noise = distributed.local_rows(torch.randn((cfg.vae_batch_size, *latent_shape), device=device))
        loss, stats = vae_step(net, opt, x, cfg.amp, noise=noise)
        sched.step()
        history.append(distributed.average({"step": step, "loss": loss.item(), **stats}))  # [ddp] global means
    vae.eval().requires_grad_(False)
    vae.scale_factor.fill_(latent_scale_factor(encode_latents(vae, images[:2048])))
    return vae, history, len(history) * step_flops + encode_flops(vae, images[:2048])


def encode_flops(vae: KLAutoencoder, images: torch.Tensor) -> float:
    """FLOPs of encode_latents(vae, images), counted on a copy (flops_per_step)."""
    spare = copy.deepcopy(vae)
    return flops_per_step(lambda n: encode_latents(spare, images[:n]), len(images))


def train_unet(latents: torch.Tensor, text: tuple, uncond: tuple, cfg, cfgs: dict, device, seed: int, progress=True,
               states: StateFiles = NO_STATE):
    """The denoiser on scaled latents, cross-attending to the frozen text states (text = (states, mask) of every
    training caption); a random cfg.caption_dropout of the captions is replaced by the empty caption (uncond), so
    one network learns both halves of classifier-free guidance. Returns (TrainResult, snapshots, FLOPs of one step)."""
    torch.manual_seed(seed)
    unet = distributed.wrap(UNet(cfgs["unet"]).to(device), device)  # [ddp]
    alpha_bar = schedule(cfg.diffusion, device)
    gen = torch.Generator().manual_seed(seed + 3)  # the UNet's own noise: caption dropout, timesteps, noise
    draw = batch_stream(len(latents), cfg.batch_size, seed)  # the seed's data stream, the GAN's too
    text_states, mask = text

    def batch(step):
        idx = draw(step).to(device)
        ctx, ctx_mask = drop_captions(text_states[idx], mask[idx], uncond, cfg.caption_dropout, gen)
        rows = distributed.local_rows  # [ddp] this rank's rows of the global batch
        return rows(latents[idx]), {"context": rows(ctx), "context_mask": rows(ctx_mask)}

    spare = copy.deepcopy(distributed.unwrap(unet))
    probe = lambda n: train_diffusion(spare, lambda step: (latents[:n], {"context": text_states[:n],  # noqa: E731
                                      "context_mask": mask[:n]}), alpha_bar, cfg.diffusion.prediction,
                                      cfg.diffusion_train, 1, torch.Generator().manual_seed(0), progress=False)
    step_flops = flops_per_step(probe, cfg.batch_size)
    snapshots: list = []
    with autocast(device, cfg.amp):
        result = train_diffusion(unet, batch, alpha_bar, cfg.diffusion.prediction, cfg.diffusion_train, cfg.steps,
                                 gen, desc="UNet", progress=progress,
                                 snapshot_every=checkpoint_interval(cfg.steps, cfg.eval_checkpoints),
                                 snapshots=snapshots, state=states.open("diffusion", cfg.steps, {"train": gen}))
    unet.eval()
    return result, snapshots, step_flops


