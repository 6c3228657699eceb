"""pytest-benchmark regression suite for the kernels whose speed decides the GAN-vs-diffusion cost (README.md here
gives the save/compare workflow). With the project's default `--benchmark-disable` every benchmark runs its function
once, so `pytest` (and CI) checks that the suite still works in a few seconds; `--benchmark-enable` times it.

Sizes: on the CPU the quick preset's networks at small batches (about a minute with timing on); on CUDA the
diffusers-comparison UNet (widths 64/128/128, two layers per level, attention at the two higher resolutions, 8x8x4
latents, 16 context tokens of width 128) at batch 64, the point of the project's comparison with diffusers'
UNet2DConditionModel (bench/gpu_check.py). Device work is synchronised inside each timed call.

Every benchmark checks what the timed call returns against something independent (a second computation, a closed form
or a known range), so a fast wrong kernel fails here rather than looking like a speed-up.
"""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from bench.config import preset
from bench.speed.gpu_check import MATCHED
from bench.train.loops import train_gan
from models.dcgan import DCGANConfig, Discriminator, Generator
from models.diffusion import alphas_cumprod, diffusion_loss
from models.layers import gan_d_loss, gan_g_loss
from models.samplers import guided, sample
from models.unet import UNet
from models.vae import KLAutoencoder

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
QUICK = preset("quick").images
# on CUDA: the diffusers UNet2DConditionModel comparison point (8.75M parameters, bench/gpu_check.py)
UNET_CFG = MATCHED if CUDA else replace(QUICK.unet, in_channels=4, context_dim=QUICK.text.width)
BATCH = 64 if CUDA else 8  # sampling batch
TRAIN_BATCH = QUICK.batch_size if CUDA else 32
TOKENS, WIDTH = 16, 128  # context tokens and their width (the text encoder's max_len and width)


def _synced(fn):
    """Time device work, not kernel launches: wait for the device at the end of every timed call."""
    if not CUDA:
        return fn

    def timed():
        out = fn()
        torch.cuda.synchronize()
        return out

    return timed


def _run(benchmark, fn, **info):
    """Time fn and return what its (last) timed call returned, for the caller to check."""
    benchmark.extra_info.update(device=str(DEVICE), threads=torch.get_num_threads(), **info)
    return benchmark(_synced(fn))


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet(UNET_CFG).to(DEVICE).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def text():
    """Text states and mask shaped like the encoder's: 5 real tokens, the rest padding; and the empty caption."""
    g = torch.Generator().manual_seed(0)
    states = torch.randn(BATCH, TOKENS, WIDTH, generator=g).to(DEVICE)
    mask = (torch.arange(TOKENS) < 5).expand(BATCH, TOKENS).to(DEVICE)
    u_mask = (torch.arange(TOKENS) < 1).expand(BATCH, TOKENS).to(DEVICE)
    return {"context": states, "context_mask": mask}, {"context": states.flip(0), "context_mask": u_mask}


@pytest.fixture(scope="module")
def latents():
    return torch.randn(BATCH, 4, 8, 8, generator=torch.Generator().manual_seed(1)).to(DEVICE)  # (B, 4, 8, 8)


@pytest.fixture(scope="module")
def alpha_bar():
    return alphas_cumprod("scaled_linear", 1000).float().to(DEVICE)


def _dcgan_cfg() -> DCGANConfig:
    return replace(QUICK.dcgan, resolution=QUICK.resolution, channels=3, cond_dim=WIDTH)


@torch.no_grad()
def test_unet_forward(benchmark, unet, text, latents):
    """The denoising kernel: one UNet forward on a latent batch with the text context."""
    t = torch.full((BATCH,), 500.0, device=DEVICE)
    out = _run(benchmark, lambda: unet(latents, t, **text[0]), batch=BATCH)
    assert out.shape == latents.shape and torch.isfinite(out).all()
    # each sample is computed on its own (GroupNorm, no batch statistics): the first alone gives the same prediction
    one = unet(latents[:1], t[:1], **{k: v[:1] for k, v in text[0].items()})
    torch.testing.assert_close(out[:1], one, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_guided_step(benchmark, unet, text, latents):
    """One classifier-free-guided step: conditional and unconditional halves in one batch of 2B."""
    model = guided(unet, 3.0, *text)
    t = torch.full((BATCH,), 500.0, device=DEVICE)
    pred = _run(benchmark, lambda: model(latents, t), batch=BATCH)
    # Ho & Salimans 2021, eq. 6: u + w (c - u), from two separate unbatched calls
    c, u = unet(latents, t, **text[0]), unet(latents, t, **text[1])
    torch.testing.assert_close(pred, u + 3.0 * (c - u), atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_dpmpp2m_20_steps(benchmark, unet, text, latents, alpha_bar):
    """A whole guided 20-step DPM-Solver++(2M) sampling loop (40 network evaluations of batch B)."""
    model = guided(unet, 3.0, *text)
    x0, nfe = _run(benchmark, lambda: sample("dpmpp2m", model, latents, alpha_bar, 20, prediction="v"), batch=BATCH,
                   nfe=20)
    assert nfe == 20 and x0.shape == latents.shape and torch.isfinite(x0).all()
    # deterministic sampler: the timed call and a fresh one give the same latents
    torch.testing.assert_close(x0, sample("dpmpp2m", model, latents, alpha_bar, 20, prediction="v")[0])


@torch.no_grad()
def test_vae_decode(benchmark, latents):
    vae = KLAutoencoder(replace(QUICK.vae, in_channels=3, resolution=QUICK.resolution)).to(DEVICE).eval()
    z = latents[:, : vae.cfg.latent_channels]
    images = _run(benchmark, lambda: vae.decode(z), batch=BATCH)
    assert images.shape == (BATCH, 3, QUICK.resolution, QUICK.resolution) and torch.isfinite(images).all()
    torch.testing.assert_close(images[:1], vae.decode(z[:1]), atol=1e-4, rtol=1e-4)  # per-sample, as sampled


@torch.no_grad()
def test_dcgan_generator_forward(benchmark, text):
    G = Generator(_dcgan_cfg()).to(DEVICE).eval()
    z = torch.randn(BATCH, G.cfg.z_dim, device=DEVICE)
    pooled = text[0]["context"].mean(1)  # (B, 128) in place of the pooled text embedding
    images = _run(benchmark, lambda: G(z, pooled), batch=BATCH)
    assert images.shape == (BATCH, 3, QUICK.resolution, QUICK.resolution)
    assert images.abs().max() <= 1.0  # the tanh output layer (Radford et al. 2015)
    torch.testing.assert_close(images[:1], G(z[:1], pooled[:1]), atol=1e-4, rtol=1e-4)  # eval BatchNorm: per sample


def _gan_setup():
    torch.manual_seed(0)
    cfg = _dcgan_cfg()
    G, D = Generator(cfg).to(DEVICE), Discriminator(cfg).to(DEVICE)
    x = torch.rand(TRAIN_BATCH, 3, cfg.resolution, cfg.resolution, device=DEVICE) * 2 - 1
    cond = torch.randn(TRAIN_BATCH, WIDTH, device=DEVICE)
    return cfg, G, D, x, cond


def test_dcgan_train_step(benchmark):
    """One step of the harness's GAN loop (bench/train/loops.py train_gan: a D step on a detached fake batch, a G step
    on a fresh one, gradient norms and the per-step log)."""
    cfg, G, D, x, cond = _gan_setup()
    latent = lambda n: torch.randn(n, cfg.z_dim, device=DEVICE)  # noqa: E731 -- a one-line latent source
    before = [p.detach().clone() for p in G.parameters()]
    res = _run(benchmark, lambda: train_gan(G, D, lambda step: (x, cond), latent, QUICK.gan, 1, progress=False),
               batch=TRAIN_BATCH)
    history, status = res.history, res.status
    assert status == {"status": "ok"} and len(history) == 1
    row = history[0]
    assert all(torch.isfinite(torch.tensor(row[k])) for k in ("d_loss", "g_loss", "d_grad_norm", "g_grad_norm"))
    assert 0 < row["d_real"] < 1 and 0 < row["d_fake"] < 1  # mean sigmoid outputs
    assert any(not torch.equal(b, p) for b, p in zip(before, G.parameters()))  # the step moved G


def test_dcgan_reference_train_step(benchmark):
    """The plain PyTorch reference step (pytorch/examples dcgan/main.py): BCE, one fake batch reused for the G step.
    Our step does one generator forward more (Goodfellow et al.'s algorithm 1 draws fresh z for G): compare the two."""
    cfg, G, D, x, cond = _gan_setup()
    opt_g = torch.optim.Adam(G.parameters(), lr=QUICK.gan.lr, betas=QUICK.gan.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=QUICK.gan.lr, betas=QUICK.gan.betas)
    ones, zeros = torch.ones(TRAIN_BATCH, device=DEVICE), torch.zeros(TRAIN_BATCH, device=DEVICE)

    def step():
        D.zero_grad()
        F.binary_cross_entropy_with_logits(D(x, cond), ones).backward()
        fake = G(torch.randn(TRAIN_BATCH, cfg.z_dim, device=DEVICE), cond)
        F.binary_cross_entropy_with_logits(D(fake.detach(), cond), zeros).backward()
        opt_d.step()
        G.zero_grad()
        g_loss = F.binary_cross_entropy_with_logits(D(fake, cond), ones)
        g_loss.backward()
        opt_g.step()
        return g_loss.detach()

    # the same losses as models/layers.py's non-saturating GAN (a second implementation, so the reference is fair)
    logits_r, logits_f = torch.randn(7), torch.randn(7)
    ref = F.binary_cross_entropy_with_logits(logits_r, torch.ones(7)) + F.binary_cross_entropy_with_logits(
        logits_f, torch.zeros(7))
    assert torch.allclose(gan_d_loss(logits_r, logits_f), ref)
    assert torch.allclose(gan_g_loss(logits_f), F.binary_cross_entropy_with_logits(logits_f, torch.ones(7)))
    assert torch.isfinite(_run(benchmark, step, batch=TRAIN_BATCH))


def test_unet_train_step(benchmark, text, alpha_bar):
    """One diffusion training step: v-prediction loss on a latent batch with the text context, backward, AdamW."""
    torch.manual_seed(0)
    net = UNet(UNET_CFG).to(DEVICE).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    n = min(TRAIN_BATCH, BATCH)
    x0 = torch.randn(n, 4, 8, 8, device=DEVICE)
    ctx = {k: v[:n] for k, v in text[0].items()}

    def step():
        loss = diffusion_loss(net, x0, alpha_bar, "v", **ctx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    before = [p.detach().clone() for p in net.parameters()]
    loss = _run(benchmark, step, batch=n)
    assert torch.isfinite(loss) and loss > 0
    assert any(not torch.equal(b, p) for b, p in zip(before, net.parameters()))  # the step moved the weights
