"""Samplers: pure functions with one signature, and classifier-free guidance as a denoiser wrapper.

    sampler(model, x_T, alpha_bar, steps, *, prediction, spacing, noise, <own options>) -> (x0, nfe)

model(x_t, t) is the network (raw prediction of kind `prediction`; t float32 (B,) timestep
indices), x_T unit-variance Gaussian noise (B, ...), alpha_bar the float32 (T,) training table,
steps the number of updates. nfe is the number of network evaluations spent.

Every sampler walks one grid of noise levels, computed once in float64 by `_grid`: the network
timesteps t_0 > ... > t_{n-1} and their alpha_bar a_0 < ... < a_{n-1}, followed by a_n = 1 (t = 0,
clean data). The loop walks pairwise(a) = zip(a[:-1], a[1:]), so the next level is read from the grid, never
recomputed by a formula. The last update always lands on a_n = 1 and returns the network's x0
estimate there. Spacings: `leading`, `trailing`, `linspace` pick integer timesteps (see
`timesteps`); `karras` takes the EDM sigma grid (Karras et al. 2022, eq. 5) between the table's
sigma_min and sigma_max and feeds the network fractional timesteps (`sigma_to_t`).

`noise(k)` returns the standard-normal noise of the k-th stochastic update (shaped like x); samplers
draw fresh noise only through it, so a per-sample-seeded noise function makes sample i the same
whatever the batch size. None means torch.randn_like.
"""

import math
from collections.abc import Callable
from itertools import pairwise

import torch

from models.diffusion import karras_sigmas, sigma_to_t, ve_sigmas, x0_and_eps

Denoiser = Callable[..., torch.Tensor]  # model(x_t, t) -> raw prediction
Noise = Callable[[int], torch.Tensor] | None

SPACINGS = ("leading", "trailing", "linspace")  # integer timestep spacings (`timesteps`)
GRIDS = SPACINGS + ("karras",)  # every grid a sampler accepts


def timesteps(num_train_steps: int, num_sample_steps: int, spacing: str = "trailing") -> torch.Tensor:
    """Descending timestep indices (num_sample_steps,), as in Lin et al. 2024, "Common Diffusion
    Noise Schedules and Sample Steps are Flawed", table 2 (indices here are t - 1):

    linspace  round(linspace(T-1, 0, n)): from the noisiest index to index 0
    leading   (n-1)k, ..., k, 0 with k = T // n (DDIM's original spacing; never reaches T-1)
    trailing  round(T - j T / n) - 1 for j = 0..n-1: starts at T-1, the last index is about T/n - 1
    """
    T, n = num_train_steps, num_sample_steps
    if not 1 <= n <= T:
        raise ValueError(f"number of sampling steps must be in 1..{T}, got {n}")
    if spacing == "linspace":
        t = torch.linspace(T - 1, 0, n, dtype=torch.float64).round()
    elif spacing == "leading":
        t = torch.arange(n - 1, -1, -1, dtype=torch.float64) * (T // n)
    elif spacing == "trailing":
        t = (T - torch.arange(n, dtype=torch.float64) * T / n).round() - 1
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose from {', '.join(SPACINGS)}")
    return t.long()


def _grid(alpha_bar: torch.Tensor, steps: int, spacing: str) -> tuple[list[float], list[float]]:
    """The sampler's noise levels, once, in float64: network timesteps t (n,) and alpha_bar a (n+1,),
    a[n] = 1 (clean data)."""
    alpha_bar = alpha_bar.detach().double().cpu()  # bookkeeping on the host, whatever the device
    if spacing == "karras":
        if steps < 1:
            raise ValueError(f"number of sampling steps must be >= 1, got {steps}")
        table = ve_sigmas(alpha_bar)  # ascending
        sig = karras_sigmas(steps, table[0].item(), table[-1].item())[:-1]
        t, a = sigma_to_t(sig, alpha_bar), 1 / (1 + sig**2)
    elif spacing in SPACINGS:
        idx = timesteps(len(alpha_bar), steps, spacing)
        t, a = idx.double(), alpha_bar[idx]
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose from {', '.join(GRIDS)}")
    return t.tolist(), a.tolist() + [1.0]


def _t_batches(t: list[float], x: torch.Tensor) -> list[torch.Tensor]:
    """The network's (B,) float32 timestep tensors, made before the loop (no per-step allocation)."""
    return [torch.full((x.shape[0],), ti, dtype=torch.float32, device=x.device) for ti in t]


def _randn_like(x: torch.Tensor) -> Callable[[int], torch.Tensor]:
    return lambda k: torch.randn_like(x)


def ddpm(model: Denoiser, x_T: torch.Tensor, alpha_bar: torch.Tensor, steps: int, *, prediction: str = "eps",
         spacing: str = "trailing", noise: Noise = None, variance: str = "beta_tilde") -> tuple[torch.Tensor, int]:
    """DDPM ancestral sampling (Ho et al. 2020, alg. 2), on any grid: each update samples the forward
    posterior q(x_t | x_s, x0) between consecutive grid levels s > t with x0 the network's estimate.

    variance: "beta_tilde" (the posterior variance, DDPM eq. 7) or "beta" (the step's beta), the two
    choices of Ho et al. sec. 3.2. With beta_tilde this is DDIM with eta = 1. The last update adds no
    noise (alg. 2's z = 0 at t = 1) and returns the x0 estimate.
    """
    if variance not in ("beta_tilde", "beta"):
        raise ValueError(f"unknown variance {variance!r}; choose from beta_tilde, beta")
    t, a = _grid(alpha_bar, steps, spacing)
    ts, noise = _t_batches(t, x_T), noise or _randn_like(x_T)
    x = x_T
    for i, (a_s, a_t) in enumerate(pairwise(a)):
        x0, _ = x0_and_eps(model(x, ts[i]), x, a_s, prediction)
        alpha = a_s / a_t  # this update's alpha (a product of several when the grid skips steps)
        beta = 1 - alpha
        # posterior mean, DDPM eq. 7: (sqrt(a_t) beta x0 + sqrt(alpha) (1 - a_t) x_s) / (1 - a_s)
        x = (math.sqrt(a_t) * beta / (1 - a_s)) * x0 + (math.sqrt(alpha) * (1 - a_t) / (1 - a_s)) * x
        if i < len(ts) - 1:
            var = beta * (1 - a_t) / (1 - a_s) if variance == "beta_tilde" else beta
            x = x + math.sqrt(var) * noise(i)
    return x, len(ts)


def ddim(model: Denoiser, x_T: torch.Tensor, alpha_bar: torch.Tensor, steps: int, *, prediction: str = "eps",
         spacing: str = "trailing", noise: Noise = None, eta: float = 0.0) -> tuple[torch.Tensor, int]:
    """DDIM (Song et al. 2021, eq. 12); eta = 0 is deterministic (the probability-flow ODE's Euler
    step in (x / alpha, sigma_ve), EDM sec. 3), eta = 1 is DDPM's ancestral sampler."""
    t, a = _grid(alpha_bar, steps, spacing)
    ts, noise = _t_batches(t, x_T), noise or _randn_like(x_T)
    x, k = x_T, 0
    for i, (a_s, a_t) in enumerate(pairwise(a)):
        x0, eps = x0_and_eps(model(x, ts[i]), x, a_s, prediction)
        sigma = eta * math.sqrt((1 - a_t) / (1 - a_s) * (1 - a_s / a_t))  # DDIM eq. 16
        x = math.sqrt(a_t) * x0 + math.sqrt(max(1 - a_t - sigma**2, 0.0)) * eps  # DDIM eq. 12
        if sigma > 0:
            x = x + sigma * noise(k)
            k += 1
    return x, len(ts)


def dpmpp2m(model: Denoiser, x_T: torch.Tensor, alpha_bar: torch.Tensor, steps: int, *, prediction: str = "eps",
            spacing: str = "trailing", noise: Noise = None) -> tuple[torch.Tensor, int]:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", alg. 2): a second-order multistep solver of
    the probability-flow ODE in data-prediction form, stepping in lambda = log(alpha / sigma).

    The first update is first order (no history yet); so is the last, to sigma = 0 where lambda is
    infinite and the update reduces to the x0 estimate (as in k-diffusion). Deterministic: `noise`
    is never called.
    """
    t, a = _grid(alpha_bar, steps, spacing)
    ts = _t_batches(t, x_T)
    lam = [0.5 * math.log(ai / (1 - ai)) for ai in a[:-1]]  # lambda at each network level
    x, x0_prev, h_prev = x_T, None, None
    for i, (a_s, a_t) in enumerate(pairwise(a)):
        x0, _ = x0_and_eps(model(x, ts[i]), x, a_s, prediction)
        if i == len(ts) - 1:  # a_t = 1
            return x0, len(ts)
        h = lam[i + 1] - lam[i]
        if x0_prev is None:
            d = x0
        else:  # D_i = (1 + 1/(2 r)) x0_{i-1} - 1/(2 r) x0_{i-2}, r = h_{i-1} / h_i (alg. 2)
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        # x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D   (DPM-Solver++ eq. 9 with D for x0)
        x = math.sqrt((1 - a_t) / (1 - a_s)) * x - (math.sqrt(a_t) * math.expm1(-h)) * d
        x0_prev, h_prev = x0, h
    raise AssertionError("unreachable: the grid always ends at alpha_bar = 1")


def _edm_start(x_T: torch.Tensor, alpha_bar: torch.Tensor, steps: int, spacing: str):
    """The EDM samplers' grid (sigma_ve descending to 0), timesteps, and the start x in VE units.

    x_T is the VP state at the noisiest level a_0, so in VE units it is x_T / sqrt(a_0)
    = x_T sqrt(1 + sigma_max^2): the same starting point as the VP samplers (EDM uses sigma_max x_T,
    which differs by a factor 1 + O(1/sigma_max^2)).
    """
    t, a = _grid(alpha_bar, steps, spacing)
    sig = [math.sqrt((1 - ai) / ai) for ai in a]  # sig[n] = 0
    return sig, _t_batches(t, x_T), x_T / math.sqrt(a[0])


def _edm_denoise(model: Denoiser, x: torch.Tensor, sigma: float, t: torch.Tensor, prediction: str) -> torch.Tensor:
    """D(x; sigma) for x in VE units: the network sees the VP input x / sqrt(1 + sigma^2) (EDM eq. 7 with
    s(t) = 1 / sqrt(1 + sigma^2)) and its prediction is read as x0."""
    a = 1 / (1 + sigma**2)
    x_vp = x * math.sqrt(a)
    return x0_and_eps(model(x_vp, t), x_vp, a, prediction)[0]


def euler(model: Denoiser, x_T: torch.Tensor, alpha_bar: torch.Tensor, steps: int, *, prediction: str = "eps",
          spacing: str = "karras", noise: Noise = None) -> tuple[torch.Tensor, int]:
    """Euler's method on the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma (EDM eq. 3
    with sigma(t) = t), on the EDM sigma grid by default. Deterministic; on the same grid it equals
    DDIM with eta = 0."""
    sig, ts, x = _edm_start(x_T, alpha_bar, steps, spacing)
    for i, (s_cur, s_next) in enumerate(pairwise(sig)):
        d = (x - _edm_denoise(model, x, s_cur, ts[i], prediction)) / s_cur
        x = x + (s_next - s_cur) * d
    return x, len(ts)


def heun(model: Denoiser, x_T: torch.Tensor, alpha_bar: torch.Tensor, steps: int, *, prediction: str = "eps",
         spacing: str = "karras", noise: Noise = None) -> tuple[torch.Tensor, int]:
    """Heun's second-order method (EDM alg. 1, deterministic: S_churn = 0). The last update, to
    sigma = 0, is an Euler step (as in EDM), so NFE = 2 steps - 1."""
    sig, ts, x = _edm_start(x_T, alpha_bar, steps, spacing)
    t_next = ts[1:] + [None]
    nfe = 0
    for i, (s_cur, s_next) in enumerate(pairwise(sig)):
        d = (x - _edm_denoise(model, x, s_cur, ts[i], prediction)) / s_cur
        x_euler = x + (s_next - s_cur) * d
        nfe += 1
        if s_next == 0:
            x = x_euler
        else:  # EDM alg. 1, lines 9-11: trapezoid with the slope at the Euler point
            d_next = (x_euler - _edm_denoise(model, x_euler, s_next, t_next[i], prediction)) / s_next
            x = x + (s_next - s_cur) * (0.5 * d + 0.5 * d_next)
            nfe += 1
    return x, nfe


SAMPLERS: dict[str, Callable] = {"ddpm": ddpm, "ddim": ddim, "dpmpp2m": dpmpp2m, "euler": euler, "heun": heun}


def sample(name: str, model: Denoiser, x_T: torch.Tensor, alpha_bar: torch.Tensor, steps: int,
           **opts) -> tuple[torch.Tensor, int]:
    """Run the sampler called `name` (a key of SAMPLERS); returns (x0, nfe)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    return SAMPLERS[name](model, x_T, alpha_bar, steps, **opts)


def guided(model: Denoiser, scale: float, cond: dict, uncond: dict) -> Denoiser:
    """Classifier-free guidance (Ho & Salimans 2021, eq. 6) as a denoiser: pred_u + scale (pred_c - pred_u).

    scale = 1 is the conditional model (no guidance), 0 the unconditional one, > 1 guides harder
    (Ho & Salimans write w = scale - 1). One batched forward pass on cat([x, x]) with the
    conditional kwargs first and the unconditional ones second, concatenated along dim 0. The
    combination is affine, so it means the same for eps, v and x0 predictions (each is an affine
    function of the others at fixed x_t).
    """
    if set(cond) != set(uncond):
        raise ValueError(f"cond and uncond need the same keys, got {sorted(cond)} and {sorted(uncond)}")
    both = {k: torch.cat([cond[k], uncond[k]]) for k in cond}  # concatenated once, not per step

    def denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c, u = model(torch.cat([x, x]), torch.cat([t, t]), **both).chunk(2)  # (B, ...) each
        return u + scale * (c - u)

    return denoiser
