"""DCGAN (Radford et al. 2015), unconditional or conditioned on a text embedding.

Generator: z (B, z_dim) [concatenated with the pooled text embedding (B, cond_dim)] -> 4x4 map -> transposed convs,
each doubling the size, with BatchNorm and ReLU -> tanh image (B, channels, R, R) (Radford et al. sec. 3).
Discriminator: strided convs, each halving the size, with LeakyReLU(0.2) and BatchNorm (none on the input layer)
-> features phi(x) of the 4x4 map -> logit. Conditional: the projection head of Miyato & Koyama 2018, eq. 3,
    D(x, y) = psi(phi(x)) + <V y, phi(x)>,
with V a linear map of the continuous text embedding y (their eq. 3 with an embedding matrix V applied to y).

Option: spectral normalisation of every discriminator layer (Miyato et al. 2018). With spectral norm the discriminator
drops BatchNorm, as in their CNN discriminators: the two normalisations are not meant to stack. The losses
(non-saturating or hinge) are models/layers.py's gan_d_loss / gan_g_loss; the training loop chooses one.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from models.layers import setting


@dataclass
class DCGANConfig:
    resolution: int = setting(32, derived=True)  # image side R (from the data); a power of 2, at least 8
    channels: int = setting(3, derived=True)  # image channels (from the data)
    z_dim: int = setting(64, min=1)  # latent noise size
    width: int = setting(64, min=1)  # channels of the widest-resolution layer; doubles at each halving of the size
    cond_dim: int = setting(0, derived=True)  # 0 = unconditional; else the size of the pooled text embedding
    spectral_norm: bool = False  # spectral norm on every D layer (and no BatchNorm in D); pairs with the hinge loss

    def __post_init__(self):
        if self.resolution < 8 or self.resolution & (self.resolution - 1):
            raise ValueError(f"DCGAN resolution must be a power of 2 and at least 8, got {self.resolution}")

    @property
    def doublings(self) -> int:
        return int(math.log2(self.resolution)) - 2  # 4x4 -> R x R


def dcgan_init(module: nn.Module) -> None:
    """Weights N(0, 0.02) (Radford et al. sec. 4), BatchNorm scales N(1, 0.02), biases 0.

    Generator and Discriminator apply it when built; use model.apply(dcgan_init) to re-initialise.
    """
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        # under spectral norm, module.weight is computed; the stored parameter is the "original"
        weight = module.weight
        if parametrize.is_parametrized(module, "weight"):
            weight = module.parametrizations.weight.original
        nn.init.normal_(weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.width * 2 ** (cfg.doublings - 1)  # widest at 4x4: R=32, width=64 -> 256
        layers = [  # (B, z_dim + cond_dim, 1, 1) -> (B, c, 4, 4)
            nn.ConvTranspose2d(cfg.z_dim + cfg.cond_dim, c, 4, 1, 0, bias=False), nn.BatchNorm2d(c), nn.ReLU(True),
        ]
        for _ in range(cfg.doublings - 1):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c // 2), nn.ReLU(True)]
            c //= 2  # (B, c/2, 2H, 2W)
        layers += [nn.ConvTranspose2d(c, cfg.channels, 4, 2, 1), nn.Tanh()]  # (B, channels, R, R), no BN at the output
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """z (B, z_dim), cond (B, cond_dim) or None -> images (B, channels, R, R) in [-1, 1]."""
        if (cond is None) != (self.cfg.cond_dim == 0):
            raise ValueError(f"this generator has cond_dim={self.cfg.cond_dim}; "
                             f"{'pass' if self.cfg.cond_dim else 'do not pass'} cond")
        h = z if cond is None else torch.cat([z, cond], dim=1)  # (B, z_dim + cond_dim)
        return self.net(h[:, :, None, None])


class Discriminator(nn.Module):
    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        self.cfg = cfg
        sn = spectral_norm if cfg.spectral_norm else (lambda m: m)
        bn = (lambda c: nn.Identity()) if cfg.spectral_norm else nn.BatchNorm2d
        c = cfg.width
        layers = [sn(nn.Conv2d(cfg.channels, c, 4, 2, 1)), nn.LeakyReLU(0.2, True)]  # (B, width, R/2, R/2), no BN
        for _ in range(cfg.doublings - 1):
            layers += [sn(nn.Conv2d(c, 2 * c, 4, 2, 1, bias=cfg.spectral_norm)), bn(2 * c), nn.LeakyReLU(0.2, True)]
            c *= 2  # (B, 2c, H/2, W/2)
        self.features = nn.Sequential(*layers)  # -> (B, c, 4, 4)
        feat = c * 4 * 4
        self.psi = sn(nn.Linear(feat, 1))  # DCGAN's last 4x4 convolution, written as a linear map of phi(x)
        self.embed = sn(nn.Linear(cfg.cond_dim, feat, bias=False)) if cfg.cond_dim else None  # V of eq. 3
        self.apply(dcgan_init)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, channels, R, R), cond (B, cond_dim) or None -> logits (B,)."""
        if (cond is None) != (self.embed is None):
            raise ValueError(f"this discriminator has cond_dim={self.cfg.cond_dim}; "
                             f"{'pass' if self.cfg.cond_dim else 'do not pass'} cond")
        phi = self.features(x).flatten(1)  # (B, c * 16)
        logit = self.psi(phi).squeeze(1)  # (B,)
        if cond is not None:
            logit = logit + (self.embed(cond) * phi).sum(1)  # projection term <V y, phi(x)>, Miyato & Koyama eq. 3
        return logit
