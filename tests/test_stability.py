"""Stability diagnostics on synthetic histories with known answers, and on a real (tiny) training run."""

import math

import numpy as np
import pytest
import torch

from bench.evaluate.stability import (
    d_gap,
    divergence_step,
    grad_spikes,
    loss_stats,
    stability,
    steps_to_threshold,
    tail,
)
from bench.train.loops import GANTrainConfig, train_gan
from models.mlp import MLPConfig, MLPDiscriminator, MLPGenerator


def gan_history(n: int, **columns) -> list[dict]:
    """n GAN rows with constant defaults, any column replaced by a given sequence."""
    base = {"g_loss": 0.7, "d_loss": 1.4, "g_grad_norm": 1.0, "d_grad_norm": 2.0, "d_real": 0.5, "d_fake": 0.5}
    return [{"step": i, **{k: (columns[k][i] if k in columns else v) for k, v in base.items()}} for i in range(n)]


def test_constant_loss_has_zero_tail_variance_and_no_spikes():
    out = stability(gan_history(100))
    assert out["g_loss_final"] == out["g_loss_min"] == 0.7
    assert out["g_loss_tail_var"] == pytest.approx(0, abs=1e-20)  # (mean of 0.7s is 0.7 up to rounding)
    assert out["d_loss_tail_var"] == pytest.approx(0, abs=1e-20)
    assert out["g_grad_norm_spikes"] == out["d_grad_norm_spikes"] == 0
    assert out["g_grad_norm_first_spike"] is None
    assert out["diverged_at_step"] is None and out["steps"] == 100
    assert out["d_gap"] == 0.0


def test_tail_is_the_last_fifth_and_its_variance_is_the_population_variance():
    x = np.arange(10.0)
    np.testing.assert_array_equal(tail(x), [8.0, 9.0])
    np.testing.assert_array_equal(tail(np.arange(3.0)), [2.0])  # ceil(0.6) = 1: never empty
    # a linear loss 0..99: tail = 80..99, variance of 20 consecutive integers = (20^2 - 1) / 12
    stats = loss_stats(np.arange(100.0))
    assert stats["final"] == 99.0 and stats["min"] == 0.0
    assert stats["tail_var"] == pytest.approx((20**2 - 1) / 12)


def test_a_single_spike_is_found_at_its_step():
    norms = np.ones(200)
    norms[120] = 50.0
    assert grad_spikes(norms) == [120]
    out = stability(gan_history(200, g_grad_norm=norms))
    assert out["g_grad_norm_spikes"] == 1 and out["g_grad_norm_first_spike"] == 120
    assert out["d_grad_norm_spikes"] == 0


def test_spikes_compare_with_the_recent_median_not_the_global_scale():
    # the norm grows 100x smoothly (no spike), then jumps 20x over its recent level (a spike)
    norms = np.geomspace(0.01, 1.0, 300)
    assert grad_spikes(norms) == []
    norms[250] = 20 * norms[249]
    assert grad_spikes(norms) == [250]
    # exactly factor x the median is not above it
    assert grad_spikes(np.array([1.0, 1.0, 10.0]), factor=10) == []


def test_nan_at_step_k_is_divergence_at_k():
    loss = [0.7] * 30 + [float("nan")]
    hist = gan_history(31, g_loss=loss)
    assert divergence_step(hist, ("d_loss", "g_loss")) == 30
    out = stability(hist)
    assert out["diverged_at_step"] == 30
    assert math.isnan(out["g_loss_final"])  # the last value, as it was
    assert out["g_loss_min"] == 0.7  # over the finite values
    # the tail (last 7 rows) holds one NaN: its variance ignores it
    assert out["g_loss_tail_var"] == pytest.approx(0, abs=1e-20)


def test_inf_in_a_diffusion_loss_and_grad_norm():
    hist = [{"step": 10 + i, "loss": 0.1, "grad_norm": 1.0, "lr": 1e-3} for i in range(20)]
    hist.append({"step": 30, "loss": float("inf"), "grad_norm": float("inf"), "lr": 1e-3})
    out = stability(hist)
    assert out["diverged_at_step"] == 30  # the row's own step, not its index
    assert out["grad_norm_spikes"] == 1 and out["grad_norm_first_spike"] == 30
    assert "d_gap" not in out


def test_d_gap_is_the_tail_mean_of_d_real_minus_d_fake():
    n = 50
    d_real = np.linspace(0.5, 0.9, n)
    d_fake = np.linspace(0.5, 0.1, n)
    expected = (d_real - d_fake)[-10:].mean()
    assert d_gap(gan_history(n, d_real=d_real, d_fake=d_fake)) == pytest.approx(expected)


def test_steps_to_threshold_is_the_first_point_reaching_it():
    curve = [{"step": 100, "modes": 3}, {"step": 200, "modes": 8}, {"step": 300, "modes": 7}, {"step": 400, "modes": 8}]
    assert steps_to_threshold(curve, "modes", 8) == 200
    assert steps_to_threshold(curve, "modes", 9) is None
    assert steps_to_threshold([{"step": 5, "fid": None}], "fid", 0) is None
    assert steps_to_threshold([], "modes", 1) is None


def test_diagnostics_of_a_real_gan_run_match_its_history():
    torch.manual_seed(0)
    cfg = MLPConfig(width=8, depth=1)
    G, D = MLPGenerator(cfg), MLPDiscriminator(cfg)
    gen = torch.Generator().manual_seed(0)
    history = train_gan(G, D, lambda s: (torch.randn(16, 2, generator=gen), None),
                        lambda n: torch.randn(n, cfg.z_dim, generator=gen), GANTrainConfig(), steps=20).history
    out = stability(history)
    assert out["g_loss_final"] == history[-1]["g_loss"]
    assert out["d_loss_min"] == min(r["d_loss"] for r in history)
    assert out["d_gap"] == pytest.approx(np.mean([r["d_real"] - r["d_fake"] for r in history[-4:]]))


def _tiny_gan_run(steps: int, snapshots: list | None = None, every: int = 0):
    torch.manual_seed(0)
    cfg = MLPConfig(width=8, depth=1)
    G, D = MLPGenerator(cfg), MLPDiscriminator(cfg)
    gen = torch.Generator().manual_seed(0)
    history = train_gan(G, D, lambda s: (torch.randn(16, 2, generator=gen), None),
                        lambda n: torch.randn(n, cfg.z_dim, generator=gen), GANTrainConfig(lr=1e-3, lr_d=1e-3),
                        steps=steps, progress=False, snapshot_every=every, snapshots=snapshots).history
    return G, history


def test_gan_snapshot_at_step_k_is_the_generator_of_a_k_step_run():
    snaps: list = []
    _, history = _tiny_gan_run(12, snaps, every=5)
    assert [s.step for s in snaps] == [5, 10]
    G5, history5 = _tiny_gan_run(5)
    assert history[:5] == history5  # taking snapshots does not perturb training
    for a, b in zip(snaps[0].raw.state_dict().values(), G5.state_dict().values()):
        assert torch.equal(a, b)
    for copy in snaps[0]:
        if isinstance(copy, torch.nn.Module):
            assert not copy.training and not any(p.requires_grad for p in copy.parameters())


def test_diffusion_snapshots_are_ema_copies():
    from bench.train.loops import DiffusionTrainConfig, train_diffusion
    from models.diffusion import alphas_cumprod
    from models.mlp import MLPDenoiser, MLPDenoiserConfig

    def run(steps, snaps=None, every=0):
        torch.manual_seed(0)
        net = MLPDenoiser(MLPDenoiserConfig(width=8, depth=1, fourier=4))
        gen = torch.Generator().manual_seed(0)
        alpha_bar = alphas_cumprod("cosine", 50).float()
        res = train_diffusion(net, lambda s: (torch.randn(8, 2, generator=gen), {}), alpha_bar, "v",
                              DiffusionTrainConfig(), steps, gen, progress=False, snapshot_every=every, snapshots=snaps)
        return res.ema, res.history

    snaps: list = []
    ema, _ = run(6, snaps, every=3)
    assert [s.step for s in snaps] == [3, 6]
    for a, b in zip(snaps[-1].ema.state_dict().values(), ema.state_dict().values()):
        assert torch.equal(a, b)  # the last snapshot is the final EMA model
    assert snaps[0].ema is not ema and not torch.equal(next(snaps[0].ema.parameters()), next(ema.parameters()))
