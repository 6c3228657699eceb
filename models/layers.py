"""Pieces that several model files share: the config-field declaration, the sinusoidal timestep embedding and the GAN
losses.

Notation: D(x) is the discriminator's logit (pre-sigmoid), so sigmoid(D(x)) is the probability that x is real.
"""

import dataclasses
import math

import torch
import torch.nn.functional as F


def setting(default=dataclasses.MISSING, *, factory=None, min=None, gt=None, max=None, lt=None, choices=None,
            check=None, derived: bool = False):
    """A config field with its valid values declared beside it: `min` / `max` inclusive bounds, `gt` / `lt` exclusive
    ones (applied to each element of a tuple or list), `choices` the allowed values, `check` a function that raises
    ValueError with a one-line reason. A `derived` field is a shape read from the data or another network when the
    model is built (image channels, the text width a UNet attends to): it is stored with the checkpoint but is not a
    user's choice, so the harness refuses to let it be set."""
    bounds = (("min", min), ("gt", gt), ("max", max), ("lt", lt), ("choices", choices), ("check", check))
    meta = {"rules": {k: v for k, v in bounds if v is not None}, "derived": derived}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in Vaswani et al. 2017 sec. 3.5 and DDPM
    (Ho et al. 2020).

    t: (B,) float tensor of timestep indices. Returns (B, dim).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)  # (B, 2 * half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


GAN_LOSSES = ("nonsaturating", "hinge")


def gan_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "nonsaturating") -> torch.Tensor:
    """Discriminator loss.

    nonsaturating: -log sigmoid(D(x)) - log(1 - sigmoid(D(G(z)))), the original minimax D objective
    (Goodfellow et al. 2014, eq. 1).
    hinge: E[relu(1 - D(x))] + E[relu(1 + D(G(z)))] (Lim & Ye 2017; Miyato et al. 2018, eq. 16).
    """
    if kind == "nonsaturating":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    raise ValueError(f"unknown GAN loss {kind!r}; choose from {', '.join(GAN_LOSSES)}")


def gan_g_loss(fake_logits: torch.Tensor, kind: str = "nonsaturating") -> torch.Tensor:
    """Generator loss.

    nonsaturating: -log sigmoid(D(G(z))), the heuristic that keeps gradients alive early on
    (Goodfellow et al. 2014, sec. 3).
    hinge: -E[D(G(z))] (Miyato et al. 2018, eq. 17).
    """
    if kind == "nonsaturating":
        return F.softplus(-fake_logits).mean()
    if kind == "hinge":
        return -fake_logits.mean()
    raise ValueError(f"unknown GAN loss {kind!r}; choose from {', '.join(GAN_LOSSES)}")
