"""KL-regularised autoencoder: the latent space of latent diffusion (Rombach et al. 2022, sec. 3 and appendix G).

The encoder maps an image x (B, C, H, W) to a diagonal Gaussian q(z|x) = N(mean, exp(logvar)) over a latent of shape
(B, latent_channels, H/f, W/f), f = 2**(len(channels) - 1). The decoder maps a latent back to an image. A very small
KL weight (1e-6) only stops the latent drifting to arbitrary scales, so reconstructions stay sharp (Rombach et al.
sec. 3).

Notation: mean, logvar = the parameters of q(z|x); z = mean + exp(logvar / 2) * noise (reparameterisation,
Kingma & Welling 2014 sec. 2.4); scale_factor = 1 / std of training latents, so the diffusion model sees
z * scale_factor with roughly unit variance (Rombach et al. sec. 4.3.2).

The decoder ends in a plain convolution, not a tanh (as in Rombach et al.): a tanh saturates and slows learning of
the saturated colours that the shapes data is full of. Its output can leave [-1, 1] slightly; clamp before you save
or judge.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import setting


@dataclass
class VAEConfig:
    in_channels: int = setting(3, derived=True)  # image channels
    resolution: int = setting(32, derived=True)  # image side; must be divisible by the downsampling factor
    channels: tuple[int, ...] = setting((32, 64, 64), min=1)  # width per level; downsampling = 2 ** (len - 1)
    latent_channels: int = setting(4, min=1)  # channels of z
    layers_per_level: int = setting(1, min=1)  # residual blocks per level
    kl_weight: float = setting(1e-6, min=0)  # weight of KL(q(z|x) || N(0, I)) in vae_loss (Rombach et al. app. G)
    groups: int = setting(8, min=1)  # GroupNorm groups; must divide every width

    def __post_init__(self):
        self.channels = tuple(self.channels)  # asdict -> JSON turns tuples into lists
        f = 2 ** (len(self.channels) - 1)
        if self.resolution % f:
            raise ValueError(f"VAE resolution {self.resolution} is not divisible by the downsampling factor {f}")
        if any(c % self.groups for c in self.channels):
            raise ValueError(f"VAE channels {self.channels} must all be divisible by groups={self.groups}")

    @property
    def factor(self) -> int:
        return 2 ** (len(self.channels) - 1)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, plus a (1x1-projected) skip; the block of Rombach et al.'s autoencoder."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def _encoder(cfg: VAEConfig) -> nn.Sequential:
    ch = cfg.channels
    layers = [nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)]  # (B, ch0, H, W)
    cin = ch[0]
    for i, c in enumerate(ch):
        for _ in range(cfg.layers_per_level):
            layers.append(ResBlock(cin, c, cfg.groups))
            cin = c
        if i < len(ch) - 1:
            layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))  # (B, c, H/2^(i+1), W/2^(i+1))
    layers += [
        ResBlock(cin, cin, cfg.groups),  # middle block
        nn.GroupNorm(cfg.groups, cin),
        nn.SiLU(),
        nn.Conv2d(cin, 2 * cfg.latent_channels, 3, padding=1),  # (B, 2 * latent, H/f, W/f): mean and logvar
    ]
    return nn.Sequential(*layers)


def _decoder(cfg: VAEConfig) -> nn.Sequential:
    ch = cfg.channels[::-1]
    layers = [nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1), ResBlock(ch[0], ch[0], cfg.groups)]
    cin = ch[0]
    for i, c in enumerate(ch):
        for _ in range(cfg.layers_per_level):
            layers.append(ResBlock(cin, c, cfg.groups))
            cin = c
        if i < len(ch) - 1:
            # nearest upsampling then conv avoids the checkerboard of transposed convs (Odena et al. 2016); the conv
            # already narrows to the next level's width, since at the doubled size every channel costs 4x as much
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, ch[i + 1], 3, padding=1)]
            cin = ch[i + 1]
    layers += [
        nn.GroupNorm(cfg.groups, cin),
        nn.SiLU(),
        nn.Conv2d(cin, cfg.in_channels, 3, padding=1),  # (B, C, H, W), linear output (see module docstring)
    ]
    return nn.Sequential(*layers)


class KLAutoencoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = _encoder(cfg)
        self.decoder = _decoder(cfg)
        # 1 / std of the training latents; set by the harness after training the autoencoder, saved in the state dict
        self.register_buffer("scale_factor", torch.tensor(1.0))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) in [-1, 1] -> mean, logvar, each (B, latent_channels, H/f, W/f)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        # the clamp keeps exp(logvar) finite early in training, as Rombach et al.'s DiagonalGaussianDistribution does
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latent z (B, latent_channels, h, w) -> image (B, C, h*f, w*f), not clamped (see module docstring).

        A diffusion model's output must be divided by scale_factor before it comes here.
        """
        return self.decoder(z)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None):
        """Returns recon (B, C, H, W), mean and logvar (B, latent_channels, H/f, W/f); noise fixes the sample."""
        mean, logvar = self.encode(x)
        if noise is None:
            noise = torch.randn_like(mean)
        z = mean + torch.exp(0.5 * logvar) * noise  # reparameterisation trick, Kingma & Welling 2014 sec. 2.4
        return self.decode(z), mean, logvar


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per sample, summed over latent dims (Kingma & Welling 2014 appendix B)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)  # (B,)


def vae_loss(recon, x, mean, logvar, kl_weight: float = 1e-6) -> tuple[torch.Tensor, dict]:
    """Negative ELBO with an L1 reconstruction term (Kingma & Welling 2014 eq. 10; Rombach et al. appendix G).

    L1, not MSE, as Rombach et al. use: it penalises small errors more, so the small shapes do not blur as much.
    Rombach et al. sum the L1 over pixels and the KL over latent dims, per image; here both are divided by the
    number of pixel values D, so kl_weight means the same as theirs while the loss reads in per-pixel units:
        loss = mean |x - recon| + kl_weight * KL / D
    Returns the loss and {"recon": mean L1 per pixel value, "kl": KL per image in nats}, both floats.
    """
    d = x[0].numel()
    recon_l1 = (recon - x).abs().mean()
    kl = kl_to_standard_normal(mean, logvar).mean()
    loss = recon_l1 + kl_weight * kl / d
    return loss, {"recon": recon_l1.item(), "kl": kl.item()}


@torch.no_grad()
def psnr(recon: torch.Tensor, x: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (data range 2): 10 log10(2^2 / MSE).

    recon is clamped to [-1, 1] first, as a saved image would be; the MSE is pooled over the whole batch.
    """
    mse = (recon.clamp(-1, 1) - x).pow(2).mean().item()
    return float("inf") if mse == 0 else 10.0 * torch.log10(torch.tensor(4.0 / mse)).item()


@torch.no_grad()
def latent_scale_factor(latents: torch.Tensor) -> float:
    """1 / std of a batch of (sampled) training latents, the rescaling of Rombach et al. sec. 4.3.2.

    The harness stores it with `vae.scale_factor.fill_(latent_scale_factor(z))`.
    """
    return 1.0 / latents.float().std().item()
