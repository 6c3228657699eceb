"""Diffusion maths: noise schedules, the forward process, parameterisations, the training loss,
and an exact reference denoiser for Gaussian data.

Everything here is shape-agnostic: x is (B, ...) so the same functions drive the 2D denoiser and
the latent UNet.

Notation (variance-preserving, Ho et al. 2020):
    alpha_bar[i]  the cumulative product of alphas at diffusion time t = i + 1 (index 0 is t = 1);
                  t = 0 is clean data, alpha_bar = 1
    alpha, sigma  sqrt(alpha_bar), sqrt(1 - alpha_bar):  x_t = alpha x0 + sigma eps   (DDPM eq. 4)
    sigma_ve      sqrt((1 - alpha_bar) / alpha_bar), the same level in variance-exploding units
                  (Karras et al. 2022, "EDM"): x_t / alpha = x0 + sigma_ve eps
    lambda        log(alpha / sigma), the half log signal-to-noise ratio (DPM-Solver)

The network convention everywhere: model(x_t, t, **kwargs) with t a float32 (B,) tensor of
timestep indices in [0, T-1] (fractional between table entries, see `sigma_to_t`), returning its
raw prediction of kind `prediction` (eps, v or x0).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.layers import setting


@dataclass
class DiffusionConfig:
    schedule: str = setting("cosine", choices=("linear", "cosine", "scaled_linear"))  # noise schedule
    num_steps: int = setting(1000, min=2)  # T, training timesteps
    prediction: str = setting("eps", choices=("eps", "v", "x0"))  # what the network predicts


SCHEDULES = ("linear", "cosine", "scaled_linear")
PREDICTIONS = ("eps", "v", "x0")


# ---------------------------------------------------------------------------------------------
# Schedules (float64 maths; callers store them as float32 buffers)


def betas(schedule: str, num_steps: int) -> torch.Tensor:
    """Per-step betas, float64 (T,), index 0 is t = 1.

    linear and scaled_linear are the published schedules at T = 1000; for other T their betas are
    scaled by 1000 / T (improved-diffusion's `get_named_beta_schedule`) so that alpha_bar at t = T
    stays close to its published value instead of leaving signal in x_T when T is small.
    """
    T = num_steps
    scale = 1000.0 / T
    if schedule == "linear":  # Ho et al. 2020, sec. 4: 1e-4 -> 0.02
        b = torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)
    elif schedule == "scaled_linear":  # latent diffusion / Stable Diffusion: linear in sqrt(beta)
        b = torch.linspace(math.sqrt(scale * 0.00085), math.sqrt(scale * 0.012), T, dtype=torch.float64) ** 2
    elif schedule == "cosine":  # Nichol & Dhariwal 2021, eq. 17
        t = torch.arange(T + 1, dtype=torch.float64)
        f = torch.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2
        a = f / f[0]
        b = 1 - a[1:] / a[:-1]
    else:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    return b.clamp(max=0.999)  # Nichol & Dhariwal clip at 0.999 to avoid a singularity at t = T


def alphas_cumprod(schedule: str, num_steps: int) -> torch.Tensor:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s), float64 (T,), index 0 is t = 1 (DDPM eq. 4)."""
    return torch.cumprod(1 - betas(schedule, num_steps), dim=0)


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """The EDM noise levels (Karras et al. 2022, eq. 5), float64, descending, with sigma = 0 appended.

    num_steps levels from sigma_max to sigma_min, evenly spaced in sigma^(1/rho); (num_steps + 1,).
    """
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)  # [0] when num_steps == 1
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def ve_sigmas(alpha_bar: torch.Tensor) -> torch.Tensor:
    """sigma_ve = sqrt((1 - alpha_bar) / alpha_bar) of every table entry, float64, ascending in t."""
    a = alpha_bar.double()
    return ((1 - a) / a).sqrt()


def sigma_to_t(sigma: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Fractional timestep index of each noise level: linear interpolation of log sigma_ve in the
    discrete table (as k-diffusion's DiscreteSchedule does), clamped to [0, T-1]. float64."""
    log_table = ve_sigmas(alpha_bar).log()  # (T,) strictly ascending for any monotone schedule
    log_s = sigma.double().log().clamp(log_table[0], log_table[-1])
    i = (torch.searchsorted(log_table, log_s) - 1).clamp(0, len(log_table) - 2)
    w = (log_s - log_table[i]) / (log_table[i + 1] - log_table[i])
    return i + w


def t_to_alpha_bar(t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """alpha_bar at (fractional) indices t, the inverse of `sigma_to_t`; exact at integers. float64."""
    log_table = ve_sigmas(alpha_bar).log()
    t = t.double().clamp(0, len(log_table) - 1)
    i = t.floor().long().clamp(0, len(log_table) - 2)
    w = t - i
    log_s = (1 - w) * log_table[i] + w * log_table[i + 1]
    return torch.sigmoid(-2 * log_s)  # alpha_bar = 1 / (1 + sigma_ve^2)


# ---------------------------------------------------------------------------------------------
# Forward process, parameterisations, loss


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) so it broadcasts against a (B, ...) tensor."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_t ~ q(x_t | x0) in one step: sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (DDPM eq. 4).

    t: (B,) long indices 0..T-1; alpha_bar: (T,) on x0's device. Returns x0's shape (B, ...).
    """
    a = _per_sample(alpha_bar[t], x0)  # (B, 1, ...)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def x0_and_eps(pred: torch.Tensor, x_t: torch.Tensor, a_bar, prediction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a raw network prediction as (x0, eps) given x_t = alpha x0 + sigma eps.

    a_bar: a float, or a tensor broadcastable against x_t (B, 1, ...). The one place where eps, v
    and x0 are converted; every other conversion goes through here.
    """
    alpha, sigma = a_bar**0.5, (1 - a_bar) ** 0.5
    if prediction == "eps":
        return (x_t - sigma * pred) / alpha, pred
    if prediction == "x0":
        return pred, (x_t - alpha * pred) / sigma
    if prediction == "v":  # v = alpha eps - sigma x0 (Salimans & Ho 2022, sec. 4 and app. D)
        return alpha * x_t - sigma * pred, sigma * x_t + alpha * pred
    raise ValueError(f"unknown prediction {prediction!r}; choose from {', '.join(PREDICTIONS)}")


def convert(pred: torch.Tensor, x_t: torch.Tensor, a_bar, src: str, dst: str) -> torch.Tensor:
    """Convert a prediction of kind src (eps | v | x0) at noisy input x_t to kind dst."""
    x0, eps = x0_and_eps(pred, x_t, a_bar, src)
    if dst == "eps":
        return eps
    if dst == "x0":
        return x0
    if dst == "v":
        return a_bar**0.5 * eps - (1 - a_bar) ** 0.5 * x0
    raise ValueError(f"unknown prediction {dst!r}; choose from {', '.join(PREDICTIONS)}")


def prediction_target(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor,
                      prediction: str) -> torch.Tensor:
    """What the network should output for x_t = q_sample(x0, t, noise): eps, v or x0."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":  # Salimans & Ho 2022, sec. 4
        a = _per_sample(alpha_bar[t], x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0
    raise ValueError(f"unknown prediction {prediction!r}; choose from {', '.join(PREDICTIONS)}")


def diffusion_loss(model: Callable, x0: torch.Tensor, alpha_bar: torch.Tensor, prediction: str, *,
                   t: torch.Tensor | None = None, noise: torch.Tensor | None = None, **model_kwargs) -> torch.Tensor:
    """The DDPM "simple" loss (Ho et al. 2020, eq. 14), generalised to v and x0 targets: the MSE
    between the network's output at x_t and the target. t (B,) long and noise are drawn uniformly /
    standard normal when not given."""
    if t is None:
        t = torch.randint(0, len(alpha_bar), (x0.shape[0],), device=x0.device)
    if noise is None:
        noise = torch.randn_like(x0)
    x_t = q_sample(x0, t, noise, alpha_bar)
    target = prediction_target(x0, noise, t, alpha_bar, prediction)
    return F.mse_loss(model(x_t, t.float(), **model_kwargs), target)


# ---------------------------------------------------------------------------------------------
# Exact reference: data x0 ~ N(mu, s^2 I) (per coordinate; mu and s broadcast over x's trailing dims)
#
# With x_t = alpha x0 + sigma eps the marginal is x_t ~ N(alpha mu, v), v = alpha_bar s^2 + 1 - alpha_bar,
# and the optimal (MMSE) predictions are linear in x_t:
#     E[x0 | x_t]  = mu + alpha s^2 (x_t - alpha mu) / v
#     E[eps | x_t] = sigma (x_t - alpha mu) / v
# The probability-flow ODE (Song et al. 2021, eq. 13; EDM eq. 1) then moves every point so that its
# standardised value (x_t - alpha mu) / sqrt(v) is constant: it maps each marginal onto the next one
# by an affine map, so the exact deterministic sampler is known in closed form.


def gaussian_denoiser(mu, s, alpha_bar: torch.Tensor, prediction: str = "eps") -> Callable:
    """The optimal network for Gaussian data: model(x_t, t) -> prediction of kind `prediction`.

    t may be fractional; it is read through `t_to_alpha_bar`, the same log-sigma interpolation the
    EDM samplers use, so the reference is exact at every level a sampler visits. Computed in float64.
    """
    table = alpha_bar.detach().double().cpu()

    def model(x_t: torch.Tensor, t: torch.Tensor, **_) -> torch.Tensor:
        x = x_t.double()
        m = torch.as_tensor(mu, dtype=torch.float64, device=x.device)
        sd = torch.as_tensor(s, dtype=torch.float64, device=x.device)
        a = _per_sample(t_to_alpha_bar(t.detach().cpu(), table).to(x.device), x)  # (B, 1, ...)
        alpha, sigma = a.sqrt(), (1 - a).sqrt()
        r = (x - alpha * m) / (a * sd**2 + 1 - a)  # (x_t - alpha mu) / v
        x0, eps = m + alpha * sd**2 * r, sigma * r
        out = {"eps": eps, "x0": x0, "v": alpha * eps - sigma * x0}.get(prediction)
        if out is None:
            raise ValueError(f"unknown prediction {prediction!r}; choose from {', '.join(PREDICTIONS)}")
        return out.to(x_t.dtype)

    return model


def gaussian_flow_map(x: torch.Tensor, mu, s, a_start: float, a_end: float = 1.0) -> torch.Tensor:
    """The exact probability-flow map for Gaussian data, from level alpha_bar = a_start to a_end.

    With a_end = 1 this is x_T -> x_0. Samplers start x_T at their grid's noisiest level (for the
    discrete VP grids alpha_bar[T-1], which is not exactly zero), so the reference must start at that
    same a_start to compare like with like.
    """
    m = torch.as_tensor(mu, dtype=torch.float64, device=x.device)
    sd = torch.as_tensor(s, dtype=torch.float64, device=x.device)
    v_start, v_end = a_start * sd**2 + 1 - a_start, a_end * sd**2 + 1 - a_end  # marginal variances
    z = (x.double() - a_start**0.5 * m) / v_start.sqrt()  # standardised value: constant along the flow
    return (a_end**0.5 * m + v_end.sqrt() * z).to(x.dtype)
