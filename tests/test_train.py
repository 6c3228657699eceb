"""Training loops: divergence is recorded, not raised; a few steps reduce the loss; 2D data follow the protocol."""

import math

import numpy as np
import torch

from bench.data import mixture_scale, sample_mixture
from bench.metrics import mixture_modes
from bench.train import GANTrainConfig, ema_update, train_gan
from models.mlp import MLPConfig, MLPDiscriminator, MLPGenerator


def test_mixture_samples_follow_the_protocol():
    x = sample_mixture("grid25", 50_000, torch.Generator().manual_seed(0)).numpy()
    centers, std = mixture_modes("grid25")
    d = np.linalg.norm(x[:, None, :] - centers[None], axis=-1)
    nearest = d.argmin(1)
    counts = np.bincount(nearest, minlength=25)
    # equal weights: each count ~ Binomial(50000, 1/25), sd ~ 44; 6 sd bounds
    assert np.all(np.abs(counts - 2000) < 6 * 44)
    offsets = x - centers[nearest]
    assert abs(offsets.std() - std) < 0.01 * std * 5  # per-coordinate std, sampling error ~0.3%
    assert abs(mixture_scale("grid25") - math.sqrt(8 + 0.05**2)) < 1e-9  # centres' per-coordinate variance is 8


def test_non_finite_gan_loss_is_recorded_as_divergence():
    torch.manual_seed(0)
    cfg = MLPConfig(width=8, depth=1)
    G, D = MLPGenerator(cfg), MLPDiscriminator(cfg)
    with torch.no_grad():
        G.net[0].weight[0, 0] = float("nan")  # poisoned generator: D(G(z)) is NaN from the first step
    gen = torch.Generator().manual_seed(0)
    history, status = train_gan(G, D, lambda s: (torch.randn(16, 2, generator=gen), None),
                                lambda n: torch.randn(n, cfg.z_dim, generator=gen), GANTrainConfig(), steps=50)
    assert status == {"status": "diverged", "diverged_at_step": 0}
    assert len(history) == 1


def test_gan_steps_move_d_outputs_apart():
    torch.manual_seed(0)
    cfg = MLPConfig(width=32, depth=2)
    G, D = MLPGenerator(cfg), MLPDiscriminator(cfg)
    gen = torch.Generator().manual_seed(0)
    real = lambda s: (sample_mixture("ring8", 64, gen), None)
    history, status = train_gan(G, D, real, lambda n: torch.randn(n, cfg.z_dim, generator=gen),
                                GANTrainConfig(lr=1e-3, lr_d=1e-3), steps=30)
    assert status["status"] == "ok" and len(history) == 30
    assert {"g_loss", "d_loss", "g_grad_norm", "d_grad_norm", "d_real", "d_fake"} <= set(history[0])
    # an untrained D gives ~0.5 to both; after a few steps it separates real from the (still poor) fakes
    assert history[-1]["d_real"] - history[-1]["d_fake"] > history[0]["d_real"] - history[0]["d_fake"]


def test_ema_update_is_a_convex_combination():
    a, b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    expected = 0.9 * a.weight.detach() + 0.1 * b.weight.detach()
    ema_update(a, b, decay=0.9)
    assert torch.allclose(a.weight, expected)
