"""Samples -> metrics. Every model is scored on the same number of samples drawn from the same per-sample seeds.

2D mixtures: modes captured, high-quality fraction and reverse KL on 2,500 samples (VEEGAN, Srivastava et al. 2017,
sec. 5.1; PacGAN, Lin et al. 2018, sec. 5), computed in bench.evaluate.metrics.mixture_stats.
"""

import torch

from bench.core.seeding import noise_fn, per_sample_randn
from bench.evaluate.metrics import mixture_modes, mixture_stats
from models.samplers import sample


@torch.no_grad()
def sample_gan(G, seeds: torch.Tensor, z_dim: int, device, cond=None) -> torch.Tensor:
    """One generator forward pass per sample; z_i depends only on seed i."""
    z = per_sample_randn(seeds, (z_dim,)).to(device)
    return G(z) if cond is None else G(z, cond)


@torch.no_grad()
def sample_diffusion(model, seeds: torch.Tensor, shape: tuple[int, ...], alpha_bar, sampler: str, steps: int,
                     prediction: str, device) -> tuple[torch.Tensor, int]:
    """Run one sampler from per-sample-seeded x_T with per-sample-seeded step noise. Returns (x0, NFE)."""
    x_T = per_sample_randn(seeds, shape).to(device)
    return sample(sampler, model, x_T, alpha_bar, steps, prediction=prediction, noise=noise_fn(seeds, shape, device))


def mixture_metrics(points: torch.Tensor, dataset: str) -> dict:
    centers, std = mixture_modes(dataset)
    return mixture_stats(points.detach().cpu().double().numpy(), centers, std)
