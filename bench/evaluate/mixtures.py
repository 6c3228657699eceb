"""Scoring the 2D mixtures: every family on the same number of samples from the same per-sample seeds.

Modes captured, high-quality fraction and reverse KL on 2,500 samples (VEEGAN, Srivastava et al. 2017, sec. 5.1;
PacGAN, Lin et al. 2018, sec. 5), computed in bench/evaluate/metrics.py mixture_stats.
"""

import torch

from bench.data.mixtures import mixture_modes
from bench.evaluate.metrics import mixture_stats


def mixture_metrics(points: torch.Tensor, dataset: str) -> dict:
    """mixture_stats of samples (N, 2) in data units against the dataset's modes."""
    centers, std = mixture_modes(dataset)
    return mixture_stats(points.detach().cpu().double().numpy(), centers, std)
