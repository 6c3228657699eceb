"""Training loops: one linear loop per kind of model, logging a plain per-step record.

Every loop returns (history, status): history is a list of dicts, one per step (written to history/*.csv), and status
is {"status": "ok"} or {"status": "diverged", "diverged_at_step": k} when a loss became non-finite. Divergence is a
result to report, never a crash.

Metric-over-training: with snapshot_every = k > 0 and a list `snapshots`, a loop appends (steps done, an eval-mode copy
of the weights used for sampling: G, or the EMA denoiser) after every k-th step. The caller scores the copies after
training, so the loop stays a loop and the evaluation stays out of it.
"""

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from models.diffusion import diffusion_loss
from models.layers import gan_d_loss, gan_g_loss


@dataclass
class GANTrainConfig:
    lr: float = 2e-4  # Adam learning rate of G (Radford et al. 2015, sec. 4)
    lr_d: float = 2e-4  # Adam learning rate of D (two time-scale update rule when != lr: Heusel et al. 2017)
    betas: tuple[float, float] = (0.5, 0.999)  # Adam betas (Radford et al. 2015)
    loss: str = "nonsaturating"  # nonsaturating (Goodfellow et al. 2014) | hinge
    d_steps: int = 1  # D updates per G update (k of Goodfellow et al. 2014, Algorithm 1), each on the step's real batch


@dataclass
class DiffusionTrainConfig:
    lr: float = 3e-3  # peak learning rate of the one-cycle schedule (Smith & Topin 2019)
    warmup: float = 0.1  # fraction of steps spent rising to the peak
    weight_decay: float = 0.0  # AdamW weight decay
    ema: float = 0.995  # EMA decay of the weights used for sampling (Ho et al. 2020, appendix B)
    grad_clip: float = 1.0  # max global gradient norm
    betas: tuple[float, float] = field(default=(0.9, 0.99))  # AdamW betas


def grad_norm(module: nn.Module) -> float:
    """Global L2 norm of the gradients (the quantity clip_grad_norm_ clips)."""
    norms = [p.grad.detach().norm() for p in module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameters and buffers alike."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def checkpoint_interval(steps: int, checkpoints: int) -> int:
    """snapshot_every for about `checkpoints` evenly spaced snapshots, the last at the final step when it divides
    (0 = none)."""
    return max(1, steps // checkpoints) if checkpoints > 0 else 0


def snapshot(module: nn.Module) -> nn.Module:
    """A frozen eval-mode copy (BatchNorm on its running statistics, as the final model samples)."""
    return copy.deepcopy(module).eval().requires_grad_(False)


def train_gan(G, D, real_batch, latent, cfg: GANTrainConfig, steps: int, desc: str = "GAN", progress: bool = True,
              snapshot_every: int = 0, snapshots: list | None = None):
    """Alternate cfg.d_steps discriminator Adam steps and one generator Adam step (Goodfellow et al. 2014, Algorithm 1
    with k = d_steps). The k discriminator steps reuse the step's real batch (each with a fresh fake batch), so every
    k sees the same real examples: the data budget stays steps x batch whatever k is.

    real_batch(step) -> (x, cond) gives the real examples of a step (cond is None for unconditional models);
    latent(n) -> z gives n latent vectors. History: losses, gradient norms, mean sigmoid D(x) and D(G(z)).
    snapshots, if given, receives (steps done, copy of G) every snapshot_every steps.
    """
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=cfg.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    cond_args = lambda cond: () if cond is None else (cond,)
    history, status = [], {"status": "ok"}
    for step in tqdm(range(steps), desc=desc, leave=False, mininterval=1.0, disable=not progress):
        x, cond = real_batch(step)
        # --- discriminator steps: real vs a detached fake batch (the row logs the last one)
        for _ in range(cfg.d_steps):
            with torch.no_grad():  # D's step needs no graph through G
                fake = G(latent(len(x)), *cond_args(cond))
            real_logits, fake_logits = D(x, *cond_args(cond)), D(fake, *cond_args(cond))
            d_loss = gan_d_loss(real_logits, fake_logits, cfg.loss)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            d_grad = grad_norm(D)
            opt_d.step()
        # --- generator step: a fresh fake batch through the updated discriminator
        g_loss = gan_g_loss(D(G(latent(len(x)), *cond_args(cond)), *cond_args(cond)), cfg.loss)
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
        history.append(row)
        if not (math.isfinite(row["g_loss"]) and math.isfinite(row["d_loss"])):
            status = {"status": "diverged", "diverged_at_step": step}
            break
        if snapshots is not None and snapshot_every > 0 and (step + 1) % snapshot_every == 0:
            snapshots.append((step + 1, snapshot(G)))
    return history, status


def train_diffusion(model, x0_batch, alpha_bar, prediction: str, cfg: DiffusionTrainConfig, steps: int,
                    generator: torch.Generator, desc: str = "diffusion", progress: bool = True,
                    snapshot_every: int = 0, snapshots: list | None = None):
    """Minimise the DDPM simple loss (Ho et al. 2020, eq. 14; or its v / x0 analogue) with AdamW, a one-cycle
    learning rate and an EMA of the weights. Returns (ema_model, history, status).

    x0_batch(step) -> (x0, kwargs): clean examples and the extra network inputs (text context, ...).
    snapshots, if given, receives (steps done, copy of the EMA model) every snapshot_every steps.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 2), pct_start=cfg.warmup)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    T = len(alpha_bar)
    history, status = [], {"status": "ok"}
    for step in tqdm(range(steps), desc=desc, leave=False, mininterval=1.0, disable=not progress):
        x0, kwargs = x0_batch(step)
        t = torch.randint(0, T, (len(x0),), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        loss = diffusion_loss(model, x0, alpha_bar, prediction, t=t, noise=noise, **kwargs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
        opt.step()
        sched.step()
        ema_update(ema, model, cfg.ema)
        row = {"step": step, "loss": loss.item(), "grad_norm": gnorm, "lr": sched.get_last_lr()[0]}
        history.append(row)
        if not math.isfinite(row["loss"]):
            status = {"status": "diverged", "diverged_at_step": step}
            break
        if snapshots is not None and snapshot_every > 0 and (step + 1) % snapshot_every == 0:
            snapshots.append((step + 1, snapshot(ema)))
    return ema, history, status
