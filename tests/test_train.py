"""Training loops: divergence is recorded, not raised; a few steps reduce the loss; 2D data follow the protocol."""

import math

import numpy as np
import pytest
import torch

from bench.data.mixtures import mixture_modes, mixture_scale, sample_mixture
from bench.train.loops import (
    GANTrainConfig,
    autocast,
    bf16_supported,
    count_flops,
    drop_captions,
    ema_update,
    one_cycle,
    precision,
    train_gan,
    vae_step,
)
from models.mlp import MLPConfig, MLPDiscriminator, MLPGenerator
from models.vae import KLAutoencoder, VAEConfig, vae_loss


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
    res = train_gan(G, D, lambda s: (torch.randn(16, 2, generator=gen), None),
                    lambda n: torch.randn(n, cfg.z_dim, generator=gen), GANTrainConfig(), steps=50)
    history, status = res.history, res.status
    assert status == {"status": "diverged", "diverged_at_step": 0}
    assert len(history) == 1


def test_gan_steps_move_d_outputs_apart():
    torch.manual_seed(0)
    cfg = MLPConfig(width=32, depth=2)
    G, D = MLPGenerator(cfg), MLPDiscriminator(cfg)
    gen = torch.Generator().manual_seed(0)
    real = lambda s: (sample_mixture("ring8", 64, gen), None)
    res = train_gan(G, D, real, lambda n: torch.randn(n, cfg.z_dim, generator=gen), GANTrainConfig(lr=1e-3, lr_d=1e-3),
                    steps=30)
    history, status = res.history, res.status
    assert status["status"] == "ok" and len(history) == 30
    assert {"g_loss", "d_loss", "g_grad_norm", "d_grad_norm", "d_real", "d_fake"} <= set(history[0])
    # an untrained D gives ~0.5 to both; after a few steps it separates real from the (still poor) fakes
    assert history[-1]["d_real"] - history[-1]["d_fake"] > history[0]["d_real"] - history[0]["d_fake"]


def test_ema_update_is_a_convex_combination():
    a, b = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    expected = 0.9 * a.weight.detach() + 0.1 * b.weight.detach()
    ema_update(a, b, decay=0.9)
    assert torch.allclose(a.weight, expected)


def test_autocast_is_bf16_where_the_device_has_bf16_arithmetic_and_only_when_asked():
    with autocast("cpu", False):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with autocast("cpu", True):  # bf16 where oneDNN reports bf16 dot-product instructions, else float32
        expect = torch.bfloat16 if bf16_supported("cpu") else torch.float32
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == expect
    assert precision("cpu", True) == ("bf16 autocast" if bf16_supported("cpu") else "float32")
    assert precision("cpu", False) == "float32"
    if torch.cuda.is_available():
        x = torch.ones(2, 2, device="cuda")
        with autocast("cuda", True):
            assert (x @ x).dtype == torch.bfloat16
        with autocast("cuda", False):
            assert (x @ x).dtype == torch.float32


def test_a_training_under_autocast_reads_the_updated_weights():
    """The harness's autocast spans whole training loops: every forward pass must see the weights the optimiser has
    updated in place (torch.autocast's weight cache would hand back the first step's bf16 copy)."""
    lin, x = torch.nn.Linear(4, 4), torch.randn(2, 4)
    with autocast("cpu", True):
        before = lin(x)
        with torch.no_grad():
            lin.weight.add_(1.0)
        after = lin(x)
    with torch.no_grad():
        assert torch.allclose(after.float() - before.float(), x.sum(1, keepdim=True).expand(2, 4), atol=0.1)


def test_flops_are_counted_for_attention_whatever_its_kernel():
    """torch.utils.flop_counter has no formula for the CPU's flash-attention kernel; count_flops counts attention on
    the math kernel: forward QK^T and PV (2 x 2bhqkd) and backward twice that, for q (b, h, q, d), k and v (b, h, k,
    d)."""
    b, h, q, k, d = 2, 4, 16, 6, 8
    Q, K, V = (torch.randn(b, h, n, d, requires_grad=True) for n in (q, k, k))
    fwd = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(Q, K, V))
    both = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(Q, K, V).sum().backward())
    assert fwd == 2 * (2 * b * h * q * k * d) and both == 3 * fwd


def test_drop_captions_replaces_a_fraction_p_by_the_empty_caption():
    n, length, width = 4000, 3, 2
    states, mask = torch.randn(n, length, width), torch.ones(n, length, dtype=torch.bool)
    uncond = (torch.zeros(1, length, width), torch.tensor([[True, False, False]]))
    for p in (0.0, 0.1, 1.0):
        gen = torch.Generator().manual_seed(0)
        ctx, ctx_mask = drop_captions(states, mask, uncond, p, gen)
        dropped = (ctx == 0).all(dim=(1, 2))
        assert torch.equal(ctx[~dropped], states[~dropped]) and torch.equal(ctx_mask[~dropped], mask[~dropped])
        assert (ctx_mask[dropped] == uncond[1]).all()
        assert abs(dropped.float().mean().item() - p) <= 5 * math.sqrt(p * (1 - p) / n)  # Binomial(n, p), 5 sd
        # the same draws as the image benchmark's caption dropout: one uniform per caption from the generator
        assert torch.equal(dropped, torch.rand(n, generator=torch.Generator().manual_seed(0)) < p)


def test_vae_step_takes_one_step_on_the_published_loss():
    torch.manual_seed(0)
    vae = KLAutoencoder(VAEConfig(in_channels=3, resolution=8, channels=(8, 8), latent_channels=2, groups=4))
    x = torch.rand(4, 3, 8, 8) * 2 - 1

    def loss_now():  # the loss of the current weights, on the same reparameterisation noise as the step
        torch.manual_seed(1)
        with torch.no_grad():
            recon, mean, logvar = vae(x)
            return vae_loss(recon, x, mean, logvar, vae.cfg.kl_weight)[0]

    expect = loss_now()
    opt = torch.optim.SGD(vae.parameters(), lr=0.1)
    before = [p.detach().clone() for p in vae.parameters()]
    torch.manual_seed(1)
    loss, stats = vae_step(vae, opt, x, amp=False)
    assert torch.allclose(loss, expect) and set(stats) == {"recon", "kl"}  # the loss of the weights before the step
    assert any(not torch.equal(b, p) for b, p in zip(before, vae.parameters()))
    assert loss_now() < expect  # a descent step on a fixed batch


def test_initial_weight_share_matches_a_simulated_scalar_ema():
    # An EMA of a scalar that starts at 1 and is then fed zeros keeps exactly the initial weight's share.
    from bench.train.loops import ema_decay, initial_weight_share

    for decay in (0.9, 0.995, 0.999):
        value = 1.0
        for t in range(3000):
            value = ema_decay(decay, t) * value + (1 - ema_decay(decay, t)) * 0.0
            if t + 1 in (1, 2, 3, 10, 100, 1000, 3000):
                assert initial_weight_share(t + 1, decay) == value
        assert value < 0.01  # today's constant decay would leave decay^3000: 0.05 for 0.999
    assert initial_weight_share(0, 0.999) == 1.0  # untrained: all initial weights
    # EDM's ramp-up: the half-life after t steps is 5% of t steps (capped by the decay's own half-life)
    assert ema_decay(0.999, 100) == pytest.approx(0.5 ** (1 / 5))
    assert ema_decay(0.999, 10**6) == 0.999 and ema_decay(0.999, 0) == 0.0


def test_initial_weights_are_gone_from_every_scored_snapshot_of_every_preset():
    # The fix of issue 10: without warm-up, 0.999^1600 = 0.20 of the random initialisation stayed in the quick UNet.
    from bench.config import PRESETS, preset
    from bench.train.loops import checkpoint_interval, initial_weight_share

    for name in PRESETS:
        suite = preset(name)
        for bench_cfg in (suite.mixtures, suite.images):
            if bench_cfg is None:
                continue
            every = checkpoint_interval(bench_cfg.steps, bench_cfg.eval_checkpoints)
            scored = list(range(every, bench_cfg.steps + 1, every)) if every else []
            assert bench_cfg.gan.ema == bench_cfg.diffusion_train.ema  # one decay for both families
            for k in [*scored, bench_cfg.steps]:
                assert initial_weight_share(k, bench_cfg.gan.ema) < 0.01, (name, k)


def _ema_trajectory_run(train, steps: int):
    """Train `steps` steps keeping a snapshot after every step: (raw weights at step 0..steps, result)."""
    snaps: list = []
    res, init = train(snaps)
    raws = [init] + [torch.nn.utils.parameters_to_vector(s.raw.parameters()) for s in snaps]
    assert len(raws) == steps + 1
    return raws, res


def _expected_ema(raws: list[torch.Tensor], decay: float) -> torch.Tensor:
    """A second implementation of the EMA: the closed-form weight of each raw iterate w_j in the final EMA,
    c_0 = prod_t d_t and c_j = (1 - d_{j-1}) prod_{t >= j} d_t, with EDM's d_t = 0.5 ** (batch / half-life),
    half-life = min(0.05 * t * batch, the decay's own half-life ln 0.5 / ln decay batches)."""
    d = [0.5 ** (1 / min(0.05 * t, math.log(0.5) / math.log(decay))) if t else 0.0 for t in range(len(raws) - 1)]
    weights = [math.prod(d)] + [(1 - d[j - 1]) * math.prod(d[j:]) for j in range(1, len(raws))]
    assert sum(weights) == pytest.approx(1.0)
    return sum(c * w.double() for c, w in zip(weights, raws))


def test_gan_keeps_raw_and_warmed_up_ema_generator():
    torch.manual_seed(0)
    cfg = MLPConfig(width=8, depth=1)
    G, D = MLPGenerator(cfg), MLPDiscriminator(cfg)
    init = torch.nn.utils.parameters_to_vector(G.parameters()).detach().clone()
    gen = torch.Generator().manual_seed(0)

    def train(snaps):
        res = train_gan(G, D, lambda s: (sample_mixture("ring8", 16, gen), None),
                        lambda n: torch.randn(n, cfg.z_dim, generator=gen), GANTrainConfig(lr=1e-2, ema=0.999), 12,
                        progress=False, snapshot_every=1, snapshots=snaps)
        return res, init

    raws, res = _ema_trajectory_run(train, 12)
    assert res.model is G and res.ema is not G and res.ema_decay == 0.999
    ema = torch.nn.utils.parameters_to_vector(res.ema.parameters()).double()
    assert torch.allclose(ema, _expected_ema(raws, 0.999), atol=1e-6)
    # today's rule (constant 0.999 from step 1) would leave 0.988 of the initial weights in; this leaves none
    dist_init, dist_raw = (ema - init.double()).norm(), (ema - raws[-1].double()).norm()
    assert dist_raw < dist_init
    for s in res.ema, res.model:
        assert isinstance(s, torch.nn.Module)


def test_diffusion_ema_follows_the_same_warm_up_rule():
    from bench.train.loops import DiffusionTrainConfig, train_diffusion
    from models.diffusion import alphas_cumprod
    from models.mlp import MLPDenoiser, MLPDenoiserConfig

    torch.manual_seed(0)
    net = MLPDenoiser(MLPDenoiserConfig(width=8, depth=1, fourier=4))
    init = torch.nn.utils.parameters_to_vector(net.parameters()).detach().clone()
    gen = torch.Generator().manual_seed(0)

    def train(snaps):
        res = train_diffusion(net, lambda s: (torch.randn(8, 2, generator=gen), {}),
                              alphas_cumprod("cosine", 50).float(), "v", DiffusionTrainConfig(ema=0.999), 12, gen,
                              progress=False, snapshot_every=1, snapshots=snaps)
        return res, init

    raws, res = _ema_trajectory_run(train, 12)
    assert res.model is net
    ema = torch.nn.utils.parameters_to_vector(res.ema.parameters()).double()
    assert torch.allclose(ema, _expected_ema(raws, 0.999), atol=1e-6)


@pytest.mark.parametrize("steps", [10, 20, 11])
def test_one_cycle_schedule_where_the_warm_up_is_one_step(steps):
    """warm-up 0.1 x 10 steps (or 0.05 x 20) put torch's first phase end at step 0 and its OneCycleLR divided 0 by 0,
    failing every diffusion training of `--steps 10`. Now step 0 is the one warm-up step, as at 11 steps: the
    schedule starts at lr / 25 (OneCycleLR's div_factor); the cosine fall from lr starts right after step 0, so step 1
    is within a few % of lr (3% at 10 steps: cos(pi / 9)), and every later step is lower."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = one_cycle(opt, 1e-3, 1 / steps if steps != 11 else 0.1, steps)
    lrs = [sched.get_last_lr()[0]]
    for _ in range(steps - 1):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert lrs[0] == pytest.approx(1e-3 / 25) and lrs[1] == pytest.approx(1e-3, rel=0.05)
    assert all(a > b for a, b in zip(lrs[1:], lrs[2:]))


def test_one_cycle_keeps_the_configured_betas():
    """torch's OneCycleLR cycles Adam's beta1 by default (0.95 -> 0.85 -> 0.95), so a configured 0.9 held for one step
    of 1,600: the schedule moves the learning rate only."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3, betas=(0.9, 0.99))
    sched = one_cycle(opt, 1e-3, 0.1, 50)
    for _ in range(49):
        opt.step()
        sched.step()
        assert opt.param_groups[0]["betas"] == (0.9, 0.99)
