"""Training loops: one linear loop per kind of model, logging a plain per-step record.

Both loops return a TrainResult: the raw network (trained in place), an EMA of its weights, the history (a list of
dicts, one per step, written to history/*.csv) and the status: {"status": "ok"} or {"status": "diverged",
"diverged_at_step": k} when a loss became non-finite. Divergence is a result to report, never a crash.

EMA, one rule for both families: the t-th update (t = 0, 1, ...) sets ema <- d_t ema + (1 - d_t) w with
d_t = min(decay, 0.5 ** (1 / (EMA_RAMPUP * t))): EDM's ramp-up (Karras et al. 2022; NVlabs/edm
training/training_loop.py, ema_rampup_ratio: the EMA half-life is capped at EMA_RAMPUP = 5% of the images seen so
far), with the configured decay as the cap.
The first update (t = 0, nothing seen yet) has d_0 = 0, so the EMA starts from the first trained weights and no share
of the random initialisation is ever in it (initial_weight_share = 0). Without the warm-up, decay^k of the initial
weights stayed in (0.20 for decay 0.999 after 1,600 steps). Why this and not TensorFlow's num_updates rule
(tf.train.ExponentialMovingAverage: d_t = min(decay, (1 + t) / (10 + t))): that one leaves 1 / C(k + 9, 9) of the
initial weights after k steps, 10% after one step and 1.8% after two, and the smoke preset scores snapshots there;
the EDM rule leaves none at any step and averages over a similar recent stretch (mean lifetime 7% of the steps done,
against 11% for TensorFlow's).

Metric-over-training: with snapshot_every = k > 0 and a list `snapshots`, a loop appends a Snapshot(steps done, raw
copy, EMA copy) after every k-th step, both eval-mode copies, so either can be scored. The caller scores the copies
after training, so the loop stays a loop and the evaluation stays out of it.
"""

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bench.core import distributed
from bench.train import state as train_state
from bench.train.state import Snapshot, snapshot
from models.diffusion import diffusion_loss
from models.layers import GAN_LOSSES, gan_d_loss, gan_g_loss, setting
from models.vae import vae_loss


@dataclass
class GANTrainConfig:
    lr: float = setting(2e-4, gt=0)  # Adam learning rate of G (Radford et al. 2015, sec. 4)
    lr_d: float = setting(2e-4, gt=0)  # Adam learning rate of D (two time-scale update rule when != lr: Heusel et al.)
    betas: tuple[float, float] = setting((0.5, 0.999), min=0, lt=1)  # Adam betas (Radford et al. 2015)
    # EMA decay of G's weights (Karras et al. 2018, sec. 5; BigGAN, Brock et al. 2019, sec. 4), with the same warm-up
    # rule and the same default as DiffusionTrainConfig.ema: both families train for the same number of steps on the
    # same batches, so the same decay averages both over the same number of recent steps (examples seen).
    ema: float = setting(0.995, min=0, lt=1)
    loss: str = setting("nonsaturating", choices=GAN_LOSSES)  # nonsaturating (Goodfellow et al. 2014) | hinge
    # D updates per G update (k of Goodfellow et al. 2014, Algorithm 1), each on the step's real batch
    d_steps: int = setting(1, min=1)


@dataclass
class DiffusionTrainConfig:
    lr: float = setting(3e-3, gt=0)  # peak learning rate of the one-cycle schedule (Smith & Topin 2019)
    warmup: float = setting(0.1, gt=0, lt=1)  # fraction of steps spent rising to the peak
    weight_decay: float = setting(0.0, min=0)  # AdamW weight decay
    # EMA decay of the weights used for sampling (Ho et al. 2020, appendix B); warm-up below (ema_decay)
    ema: float = setting(0.995, min=0, lt=1)
    grad_clip: float = setting(1.0, gt=0)  # max global gradient norm
    betas: tuple[float, float] = setting((0.9, 0.99), min=0, lt=1)  # AdamW betas


@dataclass
class TrainResult:
    model: nn.Module  # the raw network, trained in place (the object passed in)
    ema: nn.Module  # eval-mode EMA of its weights (warm-up rule above)
    history: list[dict]  # one row per step
    status: dict  # {"status": "ok"} or {"status": "diverged", "diverged_at_step": k}
    ema_decay: float  # the configured decay (the cap of the warm-up rule)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of fn (forward and, if fn runs it, backward) as torch.utils.flop_counter counts them
    (matmuls, convolutions, attention). Attention is counted on PyTorch's math kernel, whose batched matmuls the
    counter sees: it has no formula for the CPU's flash kernel, which would count as 0 FLOPs."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def flops_per_step(step: Callable[[int], object], batch: int, probe: int = 2) -> float:
    """FLOPs of one training step at batch `batch`: step(probe), one step of throwaway copies of the networks being
    trained at batch `probe`, counted by count_flops (the convention of `gvd throughput`), times batch / probe (every
    such layer here does the same work per example). Counted on copies because a dispatch mode reorders the
    backward's arithmetic (the gradients differ in the last bits) and the real steps must stay as they are; the
    random generators are left as they were."""
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []):
        flops = count_flops(lambda: step(probe))
    return flops / probe * batch


def grad_norm(module: nn.Module) -> float:
    """Global L2 norm of the gradients (the quantity clip_grad_norm_ clips)."""
    norms = [p.grad.detach().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for the parameters (one foreach call: the same lerp as one per tensor,
    tests/test_fastpaths.py), buffers copied."""
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def adam(params, *, weight_decay: float | None = None, **options) -> torch.optim.Optimizer:
    """Adam (Kingma & Ba 2015), or AdamW (Loshchilov & Hutter 2019) when a decoupled weight_decay is given, in torch's
    fused implementation (one kernel over every parameter per step, CPU and CUDA): the same update as the per-tensor
    loop up to float rounding (tests/test_fastpaths.py). Every family's training uses it, so both get it alike."""
    if weight_decay is None:
        return torch.optim.Adam(params, fused=True, **options)
    return torch.optim.AdamW(params, weight_decay=weight_decay, fused=True, **options)


OPTIMISER = "fused"  # torch's implementation every training uses (adam): part of the protocol record


def bf16_supported(device) -> bool:
    """Whether the device has bf16 arithmetic worth using: a CUDA GPU that supports it, or a CPU with bf16 dot-product
    instructions (AVX512-BF16 or AMX, as oneDNN reports them; without them bf16 on the CPU is emulated and slower)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return (device.type == "cpu" and torch.backends.mkldnn.is_available()
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def precision(device, amp: bool) -> str:
    """What `autocast(device, amp)` computes in, as results.json and the protocol record name it."""
    return "bf16 autocast" if amp and bf16_supported(device) else "float32"


@contextlib.contextmanager
def autocast(device, amp: bool):
    """The arithmetic of every image training loop and of sampling, for every family alike: bf16 autocast when `amp`
    and the device has bf16 instructions (weights and optimiser state stay float32; losses are taken in float32),
    plain float32 otherwise. On the CPU attention runs on PyTorch's math kernel: the sequences here are 4-64 tokens,
    where its batched matmuls beat the flash kernel's per-block overhead (forward and backward of the quick UNet's
    training step 1.1-1.3x faster, measured on the project's 2-core CPU; tests/test_fastpaths.py checks they agree)."""
    device = torch.device(device)
    kernel = sdpa_kernel(SDPBackend.MATH) if device.type == "cpu" else contextlib.nullcontext()
    # cache_enabled=False: the context spans whole training loops, and autocast's cache keeps each weight's first
    # bf16 copy until the outermost context exits, blind to the optimiser's in-place updates (the forward passes would
    # read the first step's weights all along)
    enabled = amp and bf16_supported(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled, cache_enabled=False), kernel:
        yield


def drop_captions(states: torch.Tensor, mask: torch.Tensor, uncond: tuple, p: float, generator: torch.Generator):
    """Classifier-free guidance training (Ho & Salimans 2021, Algorithm 1): each caption of the batch is replaced by
    the empty caption with probability p, so one network learns the conditional and the unconditional model.
    states (B, L, W), mask (B, L); uncond = (states (1, L, W), mask (1, L)) of "". Draws B uniforms from generator."""
    drop = (torch.rand(len(states), generator=generator) < p).to(states.device)  # (B,)
    return (torch.where(drop[:, None, None], uncond[0], states),  # (B, L, W)
            torch.where(drop[:, None], uncond[1], mask))  # (B, L)


def vae_step(vae: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, amp: bool,
             noise: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """One optimiser step of the KL autoencoder on the image batch x (B, C, H, W): L1 reconstruction + KL loss
    (Kingma & Welling 2014 eq. 10; Rombach et al. 2022 appendix G; models/vae.py vae_loss), the forward under
    `autocast(x.device, amp)`, the loss in float32. Returns (loss, its parts); the caller steps any schedule.
    noise: the posterior sample's noise (default: drawn by the VAE); vae may be DDP-wrapped [ddp]."""
    with autocast(x.device, amp):
        recon, mean, logvar = vae(x, noise)
        loss, stats = vae_loss(recon.float(), x, mean.float(), logvar.float(), distributed.unwrap(vae).cfg.kl_weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss, stats


EMA_RAMPUP = 0.05  # EDM's ema_rampup_ratio: the EMA half-life is at most this fraction of the steps done


def ema_decay(decay: float, t: int) -> float:
    """Decay of the t-th EMA update (t = 0 for the first, t steps done before it): EDM's ramp-up capped at decay,
    min(decay, 0.5 ** (1 / (EMA_RAMPUP * t))), and 0 for t = 0 (a half-life of zero images)."""
    return 0.0 if t == 0 else min(decay, 0.5 ** (1 / (EMA_RAMPUP * t)))


def initial_weight_share(steps: int, decay: float) -> float:
    """The weight the initial parameters still have in the EMA after `steps` updates: prod_{t < steps} d_t. Record it
    beside every scored EMA snapshot (under 1% means the random initialisation is gone)."""
    return float(math.prod(ema_decay(decay, t) for t in range(steps)))


def checkpoint_interval(steps: int, checkpoints: int) -> int:
    """snapshot_every for about `checkpoints` evenly spaced snapshots, the last at the final step when it divides
    (0 = none)."""
    return max(1, steps // checkpoints) if checkpoints > 0 else 0


def _cond_args(cond) -> tuple:
    """The extra network arguments of a batch: none for unconditional models (cond None), else (cond,)."""
    return () if cond is None else (cond,)


def _after_step(model, ema, decay: float, step: int, snapshot_every: int, snapshots: list | None) -> None:
    """The end of every step of both loops: the EMA update (warm-up rule), then a Snapshot when one is due."""
    ema_update(ema, model, ema_decay(decay, step))
    if snapshots is not None and snapshot_every > 0 and (step + 1) % snapshot_every == 0:
        snapshots.append(Snapshot(step + 1, snapshot(model), snapshot(ema)))


def train_gan(G, D, real_batch, latent, cfg: GANTrainConfig, steps: int, desc: str = "GAN", progress: bool = True,
              snapshot_every: int = 0, snapshots: list | None = None, state=None) -> TrainResult:
    """Alternate cfg.d_steps discriminator Adam steps and one generator Adam step (Goodfellow et al. 2014, Algorithm 1
    with k = d_steps), and keep an EMA of G (cfg.ema, warm-up rule of the module docstring). The k discriminator steps
    reuse the step's real batch (each with a fresh fake batch), so the data budget stays steps x batch whatever k is.

    real_batch(step) -> (x, cond) gives the real examples of a step (cond is None for unconditional models);
    latent(n) -> z gives n latent vectors. History: losses, gradient norms, mean sigmoid D(x) and D(G(z)).
    snapshots, if given, receives Snapshot(steps done, copy of G, copy of its EMA) every snapshot_every steps.
    state: a bench.train.state.TrainState to resume from and save to (None = neither; steps_to_run).
    """
    opt_g = adam(G.parameters(), lr=cfg.lr, betas=cfg.betas)
    opt_d = adam(D.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    ema = snapshot(G)  # the EMA starts as a frozen copy of the initial weights
    history, status = [], {"status": "ok"}
    parts = {"G": G, "D": D, "opt_g": opt_g, "opt_d": opt_d, "ema": ema}  # what a resumed loop needs back
    for step in train_state.steps_to_run(steps, state, parts, history, snapshots, raw="G", ema="ema", desc=desc,
                                         progress=progress):
        x, cond = real_batch(step)
        # --- discriminator steps: real vs a detached fake batch (the row logs the last one)
        for _ in range(cfg.d_steps):
            with torch.no_grad():  # D's step needs no graph through G
                fake = G(latent(len(x)), *_cond_args(cond))
            real_logits, fake_logits = D(x, *_cond_args(cond)), D(fake, *_cond_args(cond))
            d_loss = gan_d_loss(real_logits, fake_logits, cfg.loss)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            d_grad = grad_norm(D)
            opt_d.step()
        # --- generator step: a fresh fake batch through the updated discriminator
        g_loss = gan_g_loss(D(G(latent(len(x)), *_cond_args(cond)), *_cond_args(cond)), cfg.loss)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        g_grad = grad_norm(G)
        opt_g.step()
        row = {
            "step": step,
            "g_loss": g_loss.item(),
            "d_loss": d_loss.item(),
            "g_grad_norm": g_grad,
            "d_grad_norm": d_grad,
            "d_real": torch.sigmoid(real_logits).mean().item(),
            "d_fake": torch.sigmoid(fake_logits).mean().item(),
        }
        row = distributed.average(row)  # [ddp] every rank logs (and judges divergence by) the global batch's numbers
        history.append(row)
        if not (math.isfinite(row["g_loss"]) and math.isfinite(row["d_loss"])):
            status = {"status": "diverged", "diverged_at_step": step}
            break
        _after_step(G, ema, cfg.ema, step, snapshot_every, snapshots)
    return TrainResult(distributed.unwrap(G), ema, history, status, cfg.ema)  # [ddp] the network, not DDP


def one_cycle(opt: torch.optim.Optimizer, lr: float, warmup: float, steps: int):
    """torch's OneCycleLR (Smith & Topin 2019): a cosine rise to lr over the first `warmup` of the steps, then a
    cosine fall. Its first phase ends at step warmup x steps - 1; where that is exactly 0 (10 steps at warm-up 0.1)
    torch divides 0 by 0, so the fraction is nudged to make step 0 the one warm-up step, as it is at 11 steps.
    Every other step count gets torch's schedule unchanged. The momentum is not cycled (torch's default cycles
    Adam's beta1 from 0.95 down to 0.85 and back, so the configured beta1 would hold for one step only): the
    optimiser keeps the betas the config names."""
    total = max(steps, 2)
    pct = warmup * (1 + 1e-6) if warmup * total == 1 else warmup
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=pct,
                                               cycle_momentum=False)


def train_diffusion(model, x0_batch, alpha_bar, prediction: str, cfg: DiffusionTrainConfig, steps: int,
                    generator: torch.Generator, desc: str = "diffusion", progress: bool = True,
                    snapshot_every: int = 0, snapshots: list | None = None, state=None) -> TrainResult:
    """Minimise the DDPM simple loss (Ho et al. 2020, eq. 14; or its v / x0 analogue) with AdamW, a one-cycle
    learning rate and an EMA of the weights (cfg.ema, warm-up rule of the module docstring).

    x0_batch(step) -> (x0, kwargs): clean examples and the extra network inputs (text context, ...).
    snapshots, if given, receives Snapshot(steps done, copy of the model, copy of its EMA) every snapshot_every steps.
    state: a bench.train.state.TrainState to resume from and save to (None = neither; steps_to_run).
    """
    opt = adam(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sched = one_cycle(opt, cfg.lr, cfg.warmup, steps)
    ema = snapshot(model)  # the EMA starts as a frozen copy of the initial weights
    T = len(alpha_bar)
    history, status = [], {"status": "ok"}
    parts = {"model": model, "ema": ema, "opt": opt, "sched": sched}  # what a resumed loop needs back
    for step in train_state.steps_to_run(steps, state, parts, history, snapshots, raw="model", ema="ema",
                                         desc=desc, progress=progress):
        x0, kwargs = x0_batch(step)
        # [ddp] draw for the global batch, keep this rank's rows: the generator stays in step with one process
        n = distributed.global_size(len(x0))
        t = distributed.local_rows(torch.randint(0, T, (n,), generator=generator)).to(x0.device)
        noise = distributed.local_rows(torch.randn((n, *x0.shape[1:]), generator=generator)).to(x0.device)
        loss = diffusion_loss(model, x0, alpha_bar, prediction, t=t, noise=noise, **kwargs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
        opt.step()
        sched.step()
        row = {"step": step, "loss": loss.item(), "grad_norm": gnorm, "lr": sched.get_last_lr()[0]}
        row = distributed.average(row)  # [ddp] every rank logs (and judges divergence by) the global batch's numbers
        history.append(row)
        if not math.isfinite(row["loss"]):
            status = {"status": "diverged", "diverged_at_step": step}
            break
        _after_step(model, ema, cfg.ema, step, snapshot_every, snapshots)
    return TrainResult(distributed.unwrap(model), ema, history, status, cfg.ema)  # [ddp] the network, not DDP
