"""The built-in 2D mixtures.

2D mixtures (the VEEGAN / PacGAN protocol; mixture_modes below; scored by bench.evaluate.metrics.mixture_stats):
  ring8   8 Gaussians evenly on a circle of radius 1, std 0.01
  grid25  25 Gaussians on {-4, -2, 0, 2, 4}^2, std 0.05
Image datasets (shapes, digits, stacked digits, image folders) live in bench/data/images.py; every dataset's
name and description in bench/catalog.py.
"""

import numpy as np
import torch

from bench import catalog
from bench.core import distributed

MIXTURES = catalog.dataset_names("mixture")  # name -> description


def mixture_modes(name: str) -> tuple[np.ndarray, float]:
    """Centers (K, 2) and per-coordinate std of a built-in 2D Gaussian mixture."""
    if name == "ring8":  # 8 modes evenly on the unit circle
        angles = 2 * np.pi * np.arange(8) / 8
        return np.stack([np.cos(angles), np.sin(angles)], axis=1), 0.01  # (8, 2)
    if name == "grid25":  # 25 modes on {-4, -2, 0, 2, 4}^2
        xs = np.arange(-4.0, 5.0, 2.0)
        gx, gy = np.meshgrid(xs, xs, indexing="ij")
        return np.stack([gx.ravel(), gy.ravel()], axis=1), 0.05  # (25, 2)
    raise ValueError(f"unknown mixture {name!r}; known: ring8, grid25")


def sample_mixture(name: str, n: int, generator: torch.Generator) -> torch.Tensor:
    """n points (n, 2) from an equal-weight Gaussian mixture: pick a mode uniformly, add isotropic noise."""
    centers, std = mixture_modes(name)
    centers = torch.as_tensor(centers, dtype=torch.float32)
    idx = torch.randint(len(centers), (n,), generator=generator)
    return centers[idx] + std * torch.randn(n, 2, generator=generator)


def mixture_scale(name: str) -> float:
    """One number that brings the mixture to unit variance per coordinate.

    Both models train on x / scale and their samples are multiplied back before scoring, so neither family gets a
    better-conditioned problem than the other (the diffusion prior N(0, I) assumes data of roughly unit variance).
    """
    centers, std = mixture_modes(name)
    return float((centers.var(axis=0).mean() + std**2) ** 0.5)


def real_batches(dataset: str, batch_size: int, device, data_gen: torch.Generator):
    """The real examples of each step, scaled to unit variance, drawn in order from data_gen: seeded from the run
    seed alone, the same stream for every family. [ddp] Every rank draws the global batch and keeps its rows."""
    scale = mixture_scale(dataset)
    return lambda step: (distributed.local_rows(sample_mixture(dataset, batch_size, data_gen)).to(device) / scale, None)
