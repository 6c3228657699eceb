"""Tests of the image networks: models/vae.py, models/text.py, models/unet.py, models/dcgan.py.

Sizes are tiny so every test runs in about a second on one CPU core. Checks are against independent answers:
torch.distributions' Gaussian KL, a second (NumPy) implementation of CLIP's loss, closed forms (PSNR, log B),
invariances the maths promises (masked tokens, padding, linearity of the projection head in y).
"""

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.train.loops import GANTrainConfig
from models.dcgan import DCGANConfig, Discriminator, Generator, dcgan_init
from models.layers import gan_d_loss, gan_g_loss
from models.text import (
    BOS,
    PAD,
    UNK,
    ImageTower,
    ImageTowerConfig,
    TextConfig,
    TextEncoder,
    Tokenizer,
    clip_loss,
)
from models.unet import UNet, UNetConfig
from models.vae import (
    KLAutoencoder,
    VAEConfig,
    kl_to_standard_normal,
    latent_scale_factor,
    psnr,
    vae_loss,
)

CAPTIONS = ["a small red circle", "a big blue square", "a big green triangle", "a small blue circle"]
TINY_UNET = {"channels": (16, 32), "layers_per_block": 1, "attention": (False, True), "context_dim": 16, "heads": 2,
             "groups": 4}
TINY_VAE = {"resolution": 16, "channels": (16, 32), "groups": 4}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def rebuilt(model_cls, cfg_cls, model):
    """A second model built from the JSON of the first's config, with its weights: what a checkpoint does."""
    cfg = cfg_cls(**json.loads(json.dumps(asdict(model.cfg))))
    other = model_cls(cfg)
    other.load_state_dict(model.state_dict())
    return other.eval()


def perturb_(model, std=0.05):
    """Randomise zero-initialised layers so that every input path reaches the output."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model


# ----------------------------------------------------------------------------------------------------------- VAE


@pytest.mark.parametrize(
    "resolution, channels, latent", [(32, (32, 64, 64), 8), (16, (32, 64, 64), 4), (16, (16, 32), 8)]
)
def test_vae_shapes_and_round_trip(resolution, channels, latent):
    vae = KLAutoencoder(VAEConfig(resolution=resolution, channels=channels))
    x = torch.rand(3, 3, resolution, resolution) * 2 - 1
    mean, logvar = vae.encode(x)
    assert mean.shape == logvar.shape == (3, 4, latent, latent)
    assert vae.decode(mean).shape == x.shape
    recon, mean, logvar = vae(x)
    loss, parts = vae_loss(recon, x, mean, logvar, vae.cfg.kl_weight)
    assert recon.shape == x.shape and torch.isfinite(loss) and set(parts) == {"recon", "kl"}


def test_vae_rebuilds_from_config_with_scale_factor():
    vae = KLAutoencoder(VAEConfig(**TINY_VAE)).eval()
    vae.scale_factor.fill_(0.25)
    other = rebuilt(KLAutoencoder, VAEConfig, vae)
    x, noise = torch.rand(2, 3, 16, 16) * 2 - 1, torch.randn(2, 4, 8, 8)
    assert other.scale_factor.item() == 0.25
    torch.testing.assert_close(other(x, noise)[0], vae(x, noise)[0])


def test_vae_noise_argument_makes_forward_deterministic():
    vae = KLAutoencoder(VAEConfig(**TINY_VAE))
    x, noise = torch.rand(2, 3, 16, 16) * 2 - 1, torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(vae(x, noise)[0], vae(x, noise)[0])
    assert not torch.allclose(vae(x)[0], vae(x)[0])


def test_kl_matches_torch_distributions():
    mean, logvar = torch.randn(5, 4, 3, 3), torch.randn(5, 4, 3, 3)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    torch.testing.assert_close(kl_to_standard_normal(mean, logvar), expected)


def test_vae_loss_is_mean_l1_plus_weighted_kl_per_pixel_value():
    x, recon = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    mean, logvar = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)
    loss, parts = vae_loss(recon, x, mean, logvar, kl_weight=0.5)
    assert parts["recon"] == pytest.approx((recon - x).abs().mean().item())
    assert loss.item() == pytest.approx(parts["recon"] + 0.5 * parts["kl"] / 48, rel=1e-5)
    zero = vae_loss(x, x, torch.zeros_like(mean), torch.zeros_like(logvar), 1.0)[0]
    assert zero.item() == 0.0  # perfect reconstruction and q = N(0, I)


def test_psnr_closed_form_and_clamp():
    x = torch.zeros(2, 3, 8, 8)
    assert psnr(x + 0.1, x) == pytest.approx(10 * math.log10(4 / 0.01), rel=1e-5)
    assert psnr(x, x) == float("inf")
    ones = torch.ones(1, 3, 4, 4)
    assert psnr(ones * 5, ones) == float("inf")  # the overshoot is clamped to 1, as a saved image would be


def test_latent_scale_factor_is_inverse_std():
    z = torch.randn(4096) * 3 + 1
    assert latent_scale_factor(z) == pytest.approx(1 / z.std().item())


def test_vae_training_steps_reduce_loss():
    vae = KLAutoencoder(VAEConfig(**TINY_VAE))
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    x = torch.stack([torch.stack([xx * a, yy * a, (xx * yy) * a]) for a in (1.0, -0.5, 0.7, 0.2)])  # smooth images
    noise = torch.randn(4, 4, 8, 8)
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        recon, mean, logvar = vae(x, noise)
        loss, _ = vae_loss(recon, x, mean, logvar, vae.cfg.kl_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_vae_rejects_resolution_not_divisible_by_factor():
    with pytest.raises(ValueError, match="divisible by the downsampling factor 4"):
        VAEConfig(resolution=30)


# ---------------------------------------------------------------------------------------------------------- text


def test_tokenizer_build_is_sorted_and_deterministic():
    tok = Tokenizer.build(["A big, BLUE square.", "a small red circle"])
    assert tok.vocab == ["<pad>", "<unk>", "<bos>", ",", ".", "a", "big", "blue", "circle", "red", "small", "square"]
    assert Tokenizer.build(["a small red circle", "A big, BLUE square."]) == tok
    assert Tokenizer(**json.loads(json.dumps(asdict(tok)))) == tok


def test_tokenizer_encode_golden_ids_bos_padding_truncation():
    tok = Tokenizer.build(CAPTIONS)  # a big blue circle green red small square triangle -> ids 3 to 11
    ids = tok.encode(["a big blue square", "", "a small red circle"], max_len=4)
    assert ids.dtype == torch.long
    assert ids.tolist() == [[BOS, 3, 4, 5], [BOS, PAD, PAD, PAD], [BOS, 3, 9, 8]]  # the last words are truncated
    assert tok.encode(["a BIG blue"], max_len=6).tolist() == [[BOS, 3, 4, 5, PAD, PAD]]


def test_tokenizer_unknown_words_raise_clear_error_or_map_to_unk():
    tok = Tokenizer.build(CAPTIONS)
    assert tok.unknown_words("a purple hexagon, purple") == ["purple", "hexagon", ","]
    with pytest.raises(ValueError, match="unknown word.*'purple'.*'hexagon'.*known words: a, big"):
        tok.encode(["a big circle", "a purple hexagon"], max_len=8)
    assert tok.encode(["a purple circle"], max_len=4, strict=False).tolist() == [[BOS, 3, UNK, 6]]
    with pytest.raises(TypeError, match="list of captions"):
        tok.encode("a big circle", max_len=8)
    with pytest.raises(ValueError, match="must start with"):
        Tokenizer(["a", "b"])


def test_text_encoder_shapes_and_mask():
    tok = Tokenizer.build(CAPTIONS)
    enc = TextEncoder(TextConfig(vocab_size=len(tok), max_len=8, width=32, heads=2, embed_dim=24))
    tokens = tok.encode(["a big blue square", ""], max_len=8)
    states, pooled, mask = enc(tokens)
    assert states.shape == (2, 8, 32) and pooled.shape == (2, 24)
    assert mask.tolist() == [[True] * 5 + [False] * 3, [True] + [False] * 7]


def test_text_encoder_same_caption_same_embedding_different_caption_different():
    tok = Tokenizer.build(CAPTIONS)
    enc = TextEncoder(TextConfig(vocab_size=len(tok), max_len=8, width=32, heads=2, embed_dim=24)).eval()
    _, pooled, _ = enc(tok.encode(CAPTIONS + [CAPTIONS[0]], max_len=8))
    torch.testing.assert_close(pooled[0], pooled[4])
    dists = torch.cdist(pooled[:4], pooled[:4]) + torch.eye(4)
    assert dists.min() > 1e-3
    # the same caption alone, with other padding, gives the same states and embedding: padding is fully masked
    states_alone, pooled_alone, _ = enc(tok.encode([CAPTIONS[0]], max_len=6))
    torch.testing.assert_close(pooled_alone[0], pooled[0], rtol=1e-5, atol=1e-5)
    states_all, _, _ = enc(tok.encode(CAPTIONS, max_len=8))
    torch.testing.assert_close(states_alone[0, :5], states_all[0, :5], rtol=1e-5, atol=1e-5)


def test_text_encoder_rejects_bad_tokens():
    enc = TextEncoder(TextConfig(vocab_size=10, max_len=4, width=16, heads=2))
    with pytest.raises(ValueError, match="positions for 4"):
        enc(torch.full((1, 5), BOS))
    with pytest.raises(ValueError, match="outside the vocabulary of 10"):
        enc(torch.tensor([[BOS, 12]]))


def test_text_encoder_and_tower_rebuild_from_config():
    enc = TextEncoder(TextConfig(vocab_size=12, max_len=8, width=32, heads=2))
    tower = ImageTower(ImageTowerConfig(channels=(8, 16), embed_dim=128))
    tokens, x = torch.tensor([[BOS, 5, 7, PAD]]), torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(rebuilt(TextEncoder, TextConfig, enc)(tokens)[1], enc.eval()(tokens)[1])
    torch.testing.assert_close(rebuilt(ImageTower, ImageTowerConfig, tower)(x), tower.eval()(x))
    assert tower(x).shape == (2, 128)
    assert tower.logit_scale.exp().item() == pytest.approx(1 / 0.07)


def clip_loss_numpy(text, image, scale):
    """Radford et al. 2021 Fig. 3, line by line."""
    t = text / np.linalg.norm(text, axis=1, keepdims=True)
    i = image / np.linalg.norm(image, axis=1, keepdims=True)
    logits = i @ t.T * scale

    def ce(lg):  # cross-entropy with labels = arange(n), along axis 1
        lg = lg - lg.max(axis=1, keepdims=True)
        return -np.mean(np.diag(lg) - np.log(np.exp(lg).sum(axis=1)))

    return (ce(logits) + ce(logits.T)) / 2


def test_clip_loss_matches_reference_and_closed_forms():
    text, image = torch.randn(6, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    expected = clip_loss_numpy(text.numpy(), image.numpy(), 3.0)
    assert clip_loss(text, image, torch.tensor(3.0)).item() == pytest.approx(expected, rel=1e-10)
    # distinct groups are plain CLIP; identical embeddings give uniform logits, so loss = log B
    assert clip_loss(text, image, 3.0, groups=torch.arange(6)).item() == pytest.approx(expected, rel=1e-10)
    same = torch.ones(6, 8)
    assert clip_loss(same, same, 10.0).item() == pytest.approx(math.log(6), rel=1e-6)
    # duplicate captions grouped: rows 0 and 2 split their target over two equal logits (log 2 each), the rest ~0;
    # the scale 1e4 is clipped to CLIP's cap of 100
    emb = F.one_hot(torch.tensor([0, 1, 0, 2]), 3).double()
    loss = clip_loss(emb, emb, 1e4, groups=torch.tensor([0, 1, 0, 2]))
    assert loss.item() == pytest.approx(math.log(2) / 2, abs=1e-6)


def test_clip_pretraining_steps_reduce_loss():
    tok = Tokenizer.build(CAPTIONS)
    enc = TextEncoder(TextConfig(vocab_size=len(tok), max_len=8, width=32, heads=2, embed_dim=16))
    tower = ImageTower(ImageTowerConfig(channels=(8, 16), embed_dim=16))
    colours = torch.tensor([[1.0, -1, -1], [-1, -1, 1], [-1, 1, -1], [-1, -1, 1]])  # the caption's colour
    images = colours[:, :, None, None].expand(4, 3, 8, 8) + 0.1 * torch.randn(4, 3, 8, 8)
    tokens = tok.encode(CAPTIONS, max_len=8)
    opt = torch.optim.Adam([*enc.parameters(), *tower.parameters()], lr=3e-3)
    losses = []
    for _ in range(15):
        loss = clip_loss(enc(tokens)[1], tower(images), tower.logit_scale.exp())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# ---------------------------------------------------------------------------------------------------------- UNet


def test_unet_default_is_the_diffusers_comparison_config():
    cfg = UNetConfig()
    assert (cfg.channels, cfg.layers_per_block, cfg.context_dim) == ((64, 128, 128), 2, 128)
    assert cfg.attention == (True, True, False)
    unet = UNet(cfg)
    assert sum(p.numel() for p in unet.parameters()) == 8_752_580  # diffusers' matched UNet2DConditionModel: 8.8M
    x, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 16, 128)  # 8x8x4 latents, 16 context tokens of width 128
    mask = torch.ones(2, 16, dtype=torch.bool)
    assert unet(x, torch.tensor([0.0, 999.0]), ctx, mask).shape == x.shape
    assert torch.count_nonzero(unet(x, torch.tensor([0.0, 999.0]), ctx, mask)) == 0  # zero-initialised output


@pytest.mark.parametrize("size", [8, 16])
def test_unet_shapes_and_rebuild(size):
    unet = perturb_(UNet(UNetConfig(**TINY_UNET))).eval()
    x, t, ctx = torch.randn(3, 4, size, size), torch.tensor([0.0, 10.5, 999.0]), torch.randn(3, 5, 16)
    out = unet(x, t, ctx)
    assert out.shape == x.shape and torch.isfinite(out).all()
    torch.testing.assert_close(rebuilt(UNet, UNetConfig, unet)(x, t, ctx), out)


def test_unet_depends_on_time_and_unmasked_context_only():
    unet = perturb_(UNet(UNetConfig(**TINY_UNET))).eval()
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([5.0, 5.0]), torch.randn(2, 6, 16)
    mask = torch.tensor([[True, True, True, False, False, False]] * 2)
    out = unet(x, t, ctx, mask)
    changed_masked, changed_real = ctx.clone(), ctx.clone()
    changed_masked[:, 3:] = torch.randn(2, 3, 16) * 10
    changed_real[:, 1] = torch.randn(2, 16)
    torch.testing.assert_close(unet(x, t, changed_masked, mask), out)
    torch.testing.assert_close(unet(x, t, ctx[:, :3]), out, rtol=1e-5, atol=1e-5)  # masking = dropping the tokens
    assert not torch.allclose(unet(x, t, changed_real, mask), out)
    assert not torch.allclose(unet(x, t + 100, ctx, mask), out)


def test_unet_unconditional_config_and_missing_context_error():
    cfg = {**TINY_UNET, "context_dim": 0}
    unet = UNet(UNetConfig(**cfg))
    assert unet(torch.randn(2, 4, 8, 8), torch.ones(2)).shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="needs context"):
        UNet(UNetConfig(**TINY_UNET))(torch.randn(2, 4, 8, 8), torch.ones(2))


def test_unet_config_errors():
    with pytest.raises(ValueError, match="one flag per level"):
        UNetConfig(channels=(32, 64), attention=(False, True, True))
    with pytest.raises(ValueError, match="divisible by groups"):
        UNetConfig(channels=(30, 60), attention=(False, True))


def test_unet_channels_last_and_bf16_autocast_agree_with_fp32():
    unet = perturb_(UNet(UNetConfig(**TINY_UNET))).eval()
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 700.0]), torch.randn(2, 5, 16)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    with torch.no_grad():
        ref = unet(x, t, ctx, mask)
        unet_cl = unet.to(memory_format=torch.channels_last)
        torch.testing.assert_close(unet_cl(x.to(memory_format=torch.channels_last), t, ctx, mask), ref,
                                   rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = unet(x, t, ctx, mask)
    assert (low.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_unet_training_steps_reduce_loss():
    unet = UNet(UNetConfig(**TINY_UNET))
    x0, noise = torch.randn(8, 4, 8, 8), torch.randn(8, 4, 8, 8)
    t, ctx = torch.linspace(0, 999, 8), torch.randn(8, 4, 16)
    x_t = 0.6 * x0 + 0.8 * noise  # a fixed noisy batch; the target is the noise (DDPM eq. 14)
    opt = torch.optim.Adam(unet.parameters(), lr=2e-3)
    losses = []
    for _ in range(25):
        loss = F.mse_loss(unet(x_t, t, ctx), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


@pytest.mark.slow
def test_unet_torch_compile_full_graph_matches_eager():
    # fullgraph=True fails on any graph break, so this also pins a forward free of Python-side data dependence
    unet = perturb_(UNet(UNetConfig(**TINY_UNET)))
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 700.0]), torch.randn(2, 5, 16)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    compiled = torch.compile(unet, fullgraph=True)
    out = compiled(x, t, ctx, mask)
    torch.testing.assert_close(out, unet(x, t, ctx, mask), rtol=1e-4, atol=1e-4)
    out.square().mean().backward()
    assert all(p.grad is not None for p in unet.parameters())


# --------------------------------------------------------------------------------------------------------- DCGAN


@pytest.mark.parametrize("resolution", [8, 16, 32])
@pytest.mark.parametrize("cond_dim", [0, 12])
def test_dcgan_shapes_and_range(resolution, cond_dim):
    cfg = DCGANConfig(resolution=resolution, width=8, z_dim=16, cond_dim=cond_dim)
    g, d = Generator(cfg), Discriminator(cfg)
    cond = torch.randn(3, cond_dim) if cond_dim else None
    images = g(torch.randn(3, 16), cond)
    assert images.shape == (3, 3, resolution, resolution) and images.abs().max() <= 1
    assert d(images, cond).shape == (3,)


def test_dcgan_rebuilds_from_config():
    cfg = DCGANConfig(resolution=16, width=8, z_dim=16, cond_dim=12, spectral_norm=True)
    g, d = Generator(cfg).eval(), Discriminator(cfg).eval()
    z, cond = torch.randn(2, 16), torch.randn(2, 12)
    torch.testing.assert_close(rebuilt(Generator, DCGANConfig, g)(z, cond), g(z, cond))
    torch.testing.assert_close(rebuilt(Discriminator, DCGANConfig, d)(g(z, cond), cond), d(g(z, cond), cond))


def test_projection_discriminator_is_affine_in_the_condition():
    # Miyato & Koyama eq. 3: D(x, y) = psi(phi(x)) + <V y, phi(x)>, so D(x, y1 + y2) - D(x, y2) = D(x, y1) - D(x, 0)
    d = Discriminator(DCGANConfig(resolution=16, width=8, cond_dim=6)).eval()
    x, y1, y2 = torch.rand(4, 3, 16, 16) * 2 - 1, torch.randn(4, 6), torch.randn(4, 6)
    torch.testing.assert_close(d(x, y1 + y2) - d(x, y2), d(x, y1) - d(x, torch.zeros(4, 6)), rtol=1e-4, atol=1e-5)
    phi = d.features(x).flatten(1)
    torch.testing.assert_close(d(x, torch.zeros(4, 6)), d.psi(phi).squeeze(1))


def test_dcgan_init_and_spectral_norm_option():
    g = Generator(DCGANConfig(width=64))
    w = g.net[3].weight  # 256 -> 128 transposed conv, 524k weights
    assert w.mean().abs() < 1e-3 and w.std().item() == pytest.approx(0.02, rel=0.02)
    d = Discriminator(DCGANConfig(resolution=16, width=8, spectral_norm=True)).train()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    d(torch.randn(4, 3, 16, 16))  # one power iteration per training forward
    for _ in range(30):
        d(torch.randn(4, 3, 16, 16))
    sigma = torch.linalg.matrix_norm(d.psi.weight, ord=2)
    assert sigma.item() == pytest.approx(1.0, rel=1e-3)
    d.apply(dcgan_init)  # re-initialising a spectrally normalised model works too
    assert d.psi.parametrizations.weight.original.std().item() == pytest.approx(0.02, rel=0.3)


def test_dcgan_bad_inputs_raise():
    with pytest.raises(ValueError, match="power of 2"):
        DCGANConfig(resolution=24)
    with pytest.raises(ValueError, match="pass cond"):
        Generator(DCGANConfig(resolution=8, cond_dim=4))(torch.randn(2, 64))
    with pytest.raises(ValueError, match="do not pass cond"):
        Discriminator(DCGANConfig(resolution=8))(torch.randn(2, 3, 8, 8), torch.randn(2, 4))


@pytest.mark.parametrize("kind", ["nonsaturating", "hinge"])
def test_dcgan_training_steps_reduce_each_loss(kind):
    cfg, opt_cfg = DCGANConfig(resolution=16, width=8, z_dim=16, cond_dim=6), GANTrainConfig(loss=kind)
    g, d = Generator(cfg), Discriminator(cfg)
    real, z, cond = torch.rand(16, 3, 16, 16) * 2 - 1, torch.randn(16, 16), torch.randn(16, 6)
    fake = g(z, cond).detach()
    opt_d = torch.optim.Adam(d.parameters(), lr=opt_cfg.lr, betas=opt_cfg.betas)
    d_losses = []
    for _ in range(15):  # D alone on a fixed (real, fake) batch
        loss = gan_d_loss(d(real, cond), d(fake, cond), kind)
        opt_d.zero_grad()
        loss.backward()
        opt_d.step()
        d_losses.append(loss.item())
    assert d_losses[-1] < 0.8 * d_losses[0]
    # G alone against the fixed D (left in train mode: BatchNorm's running statistics are not settled yet)
    opt_g = torch.optim.Adam(g.parameters(), lr=opt_cfg.lr, betas=opt_cfg.betas)
    g_losses = []
    for _ in range(10):
        loss = gan_g_loss(d(g(z, cond), cond), kind)
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
        g_losses.append(loss.item())
    assert g_losses[-1] < g_losses[0] - 0.1 * abs(g_losses[0])
