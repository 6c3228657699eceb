"""The dataset registry and the built-in 2D mixtures.

2D mixtures (the VEEGAN / PacGAN protocol; centres and std in bench.evaluate.metrics.mixture_modes):
  ring8   8 Gaussians evenly on a circle of radius 1, std 0.01
  grid25  25 Gaussians on {-4, -2, 0, 2, 4}^2, std 0.05
Image datasets (shapes, digits, stacked digits, image folders) live in bench/images.py.
"""

import torch

from bench.data.images import IMAGE_DATASETS
from bench.evaluate.metrics import mixture_modes

MIXTURES = {
    "ring8": "8 Gaussians on a circle of radius 1, std 0.01 (VEEGAN, PacGAN 2D ring)",
    "grid25": "25 Gaussians on {-4,-2,0,2,4}^2, std 0.05 (VEEGAN, PacGAN 2D grid)",
}


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


def list_datasets() -> dict[str, str]:
    """Every built-in dataset name -> one-line description, for `gvd datasets`."""
    return {**MIXTURES, **IMAGE_DATASETS}
