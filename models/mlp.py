"""Small MLPs for the 2D mode-collapse benchmarks: a GAN generator and discriminator, and a diffusion denoiser.

G and D share one width/depth config, the denoiser has its own with the same width/depth knobs, so that the GAN
(G + D) and the denoiser can be given about the same number of parameters, which the harness records beside the
results.

Notation: x is a batch of 2D points (B, 2); z is the generator's latent (B, z_dim); t is a (B,) float tensor of
diffusion timestep indices in [0, T-1].
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from models.layers import setting, timestep_embedding


@dataclass
class MLPConfig:
    """The 2D GAN's generator and discriminator."""

    dim: int = setting(2, derived=True)  # data dimension
    width: int = setting(128, min=1)  # hidden units per layer
    depth: int = setting(3, min=1)  # hidden layers
    z_dim: int = setting(8, min=1)  # generator latent size
    spectral_norm: bool = False  # spectral normalisation of every linear layer of D (Miyato et al. 2018, eq. 8)


@dataclass
class MLPDenoiserConfig:
    """The 2D diffusion model's denoiser."""

    dim: int = setting(2, derived=True)  # data dimension
    width: int = setting(128, min=1)  # hidden units per residual block
    depth: int = setting(3, min=1)  # residual blocks
    time_dim: int = setting(64, min=2)  # sinusoidal timestep embedding size
    fourier: int = setting(0, min=0)  # random Fourier features of the input (0 = raw coordinates only)
    fourier_scale: float = setting(4.0, gt=0)  # std of the Fourier frequencies, in cycles per unit of (normalised) data


def _mlp(d_in: int, width: int, depth: int, d_out: int, act: nn.Module) -> nn.Sequential:
    layers, d = [], d_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), act]
        d = width
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


class MLPGenerator(nn.Module):
    """G(z): a plain ReLU MLP from the latent to the plane, as in the 2D experiments of VEEGAN and PacGAN."""

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        self.net = _mlp(cfg.z_dim, cfg.width, cfg.depth, cfg.dim, nn.ReLU())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)  # (B, z_dim) -> (B, dim)


class MLPDiscriminator(nn.Module):
    """D(x): a LeakyReLU MLP returning one logit per point (B,).

    With cfg.spectral_norm each weight W is used as W / sigma(W), sigma its largest singular value estimated by one
    power iteration per training forward pass (Miyato et al. 2018, eq. 8 and Algorithm 1): every layer is then
    1-Lipschitz (LeakyReLU is too), which bounds how sharply D can separate real from fake.
    """

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        self.net = _mlp(cfg.dim, cfg.width, cfg.depth, 1, nn.LeakyReLU(0.2))
        if cfg.spectral_norm:
            for i, layer in enumerate(self.net):
                if isinstance(layer, nn.Linear):
                    self.net[i] = nn.utils.parametrizations.spectral_norm(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)  # (B, dim) -> (B,)


class _ResBlock(nn.Module):
    """Pre-LayerNorm residual block whose hidden layer is shifted by the timestep embedding."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.time = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)
        self.act = nn.SiLU()

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(self.act(self.fc1(self.norm(h)) + self.time(temb)))  # (B, width)


class MLPDenoiser(nn.Module):
    """eps_theta(x_t, t) (or v / x0, whatever it is trained to predict): a residual MLP with LayerNorm.

    A plain 3-layer MLP puts almost none of its samples within 3 std of a ring mode (std 0.01): the final denoising
    steps need the precision that residual blocks with normalisation give.
    """

    def __init__(self, cfg: MLPDenoiserConfig):
        super().__init__()
        self.cfg = cfg
        # Fixed random Fourier features [x, sin(2 pi B x), cos(2 pi B x)] (Tancik et al. 2020, eq. 5) let a small MLP
        # represent the sharp pull towards modes only 0.01 wide: the precision the high-quality criterion asks for.
        freqs = cfg.fourier_scale * torch.randn(cfg.dim, cfg.fourier, generator=torch.Generator().manual_seed(0))
        self.register_buffer("freqs", freqs)  # (dim, fourier)
        self.inp = nn.Linear(cfg.dim + 2 * cfg.fourier, cfg.width)
        self.time = nn.Sequential(nn.Linear(cfg.time_dim, cfg.width), nn.SiLU(), nn.Linear(cfg.width, cfg.width))
        self.blocks = nn.ModuleList(_ResBlock(cfg.width) for _ in range(cfg.depth))
        self.out = nn.Sequential(nn.LayerNorm(cfg.width), nn.Linear(cfg.width, cfg.dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time(timestep_embedding(t, self.cfg.time_dim))  # (B, width)
        if self.cfg.fourier:
            proj = 2 * math.pi * x @ self.freqs  # (B, fourier)
            x = torch.cat([x, proj.sin(), proj.cos()], dim=1)  # (B, dim + 2 * fourier)
        h = self.inp(x)  # (B, width)
        for block in self.blocks:
            h = block(h, temb)
        return self.out(h)  # (B, dim)


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
