"""Schedules, forward process, parameterisations, loss and the exact Gaussian reference (models/diffusion.py).

Each test checks against something independent: published values, closed forms, Monte Carlo with a
tolerance from the sample size, or a second implementation (a fine RK4 solve of the ODE).
"""

import math
from itertools import pairwise

import pytest
import torch

from models.diffusion import (
    PREDICTIONS,
    SCHEDULES,
    DiffusionConfig,
    alphas_cumprod,
    betas,
    convert,
    diffusion_loss,
    gaussian_denoiser,
    gaussian_flow_map,
    karras_sigmas,
    prediction_target,
    q_sample,
    sigma_to_t,
    t_to_alpha_bar,
    ve_sigmas,
)

Z = 4.5  # tolerance in standard errors for Monte Carlo checks (two-sided p ~ 7e-6 each)


# --- schedules ------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("T", [1000, 50, 10])
def test_schedule_is_a_valid_decreasing_alpha_bar(schedule, T):
    a = alphas_cumprod(schedule, T)
    assert a.dtype == torch.float64 and a.shape == (T,)
    assert (a > 0).all() and (a < 1).all()
    assert (a[1:] < a[:-1]).all()  # strictly monotone: every step adds noise
    assert a[-1] < 0.01  # x_T is (almost) pure noise whatever T, thanks to the 1000/T scaling


def test_linear_schedule_published_endpoints():
    b = betas("linear", 1000)  # Ho et al. 2020, sec. 4
    assert b[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert b[-1].item() == pytest.approx(0.02, rel=1e-12)
    assert torch.allclose(b.diff(), torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))
    # alpha_bar_T = 4.0358e-5, the value diffusers' DDPMScheduler prints for this schedule
    assert alphas_cumprod("linear", 1000)[-1].item() == pytest.approx(4.0358e-5, rel=1e-4)


def test_scaled_linear_schedule_published_values():
    b = betas("scaled_linear", 1000)
    assert b[0].item() == pytest.approx(0.00085, rel=1e-12)
    assert b[-1].item() == pytest.approx(0.012, rel=1e-12)
    assert torch.allclose(b.sqrt().diff(), b.sqrt().diff()[0].expand(999))  # linear in sqrt(beta)
    # Lin et al. 2024, sec. 3.1: Stable Diffusion's schedule leaves sqrt(alpha_bar_T) = 0.068265, SNR 0.004682
    a_T = alphas_cumprod("scaled_linear", 1000)[-1].item()
    assert math.sqrt(a_T) == pytest.approx(0.068265, abs=1e-6)
    assert a_T / (1 - a_T) == pytest.approx(0.004682, abs=1e-6)


def test_cosine_schedule_matches_its_closed_form():
    T, s = 1000, 0.008
    a = alphas_cumprod("cosine", T)
    t = torch.arange(1, T + 1, dtype=torch.float64)
    f = lambda u: torch.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # Nichol & Dhariwal eq. 17
    closed = f(t) / f(torch.zeros(1, dtype=torch.float64))
    clipped = betas("cosine", T) >= 0.999
    assert clipped.sum() == 1 and clipped[-1]  # only the last beta (where f(T) = 0) is clipped
    assert torch.allclose(a[:-1], closed[:-1], rtol=1e-10, atol=0)
    assert a[-1].item() == pytest.approx(closed[-2].item() * 0.001, rel=1e-10)


def test_unknown_schedule_names_the_choices():
    with pytest.raises(ValueError, match="linear, cosine, scaled_linear"):
        alphas_cumprod("quadratic", 10)


def test_config_round_trips_through_a_dict():
    from dataclasses import asdict

    cfg = DiffusionConfig(schedule="linear", num_steps=200, prediction="v")
    assert DiffusionConfig(**asdict(cfg)) == cfg


def test_karras_sigmas_published_form():
    s = karras_sigmas(10, 0.002, 80.0)  # EDM's defaults
    assert s.dtype == torch.float64 and s.shape == (11,)
    assert s[0].item() == pytest.approx(80.0) and s[-2].item() == pytest.approx(0.002) and s[-1] == 0
    assert (s.diff() < 0).all()
    # EDM eq. 5 written the other way round: sigma^(1/rho) is evenly spaced
    assert torch.allclose(s[:-1].pow(1 / 7).diff(), s[:-1].pow(1 / 7).diff()[0].expand(9))
    # rho = 1 is plain linear spacing
    assert torch.allclose(karras_sigmas(5, 1.0, 5.0, rho=1.0), torch.tensor([5.0, 4, 3, 2, 1, 0], dtype=torch.float64))
    assert torch.allclose(karras_sigmas(1, 0.1, 10.0), torch.tensor([10.0, 0.0], dtype=torch.float64), rtol=1e-14)


def test_fractional_timesteps_interpolate_log_sigma():
    a = alphas_cumprod("linear", 1000)
    t = torch.tensor([0.0, 17.0, 999.0])
    assert torch.allclose(t_to_alpha_bar(t, a), a[[0, 17, 999]], rtol=1e-12)  # exact at integers
    # halfway between two entries, log sigma is the mean of the neighbours' log sigmas
    sig = ve_sigmas(a)
    mid = t_to_alpha_bar(torch.tensor([400.5]), a)
    assert mid.item() == pytest.approx(1 / (1 + sig[400].item() * sig[401].item()), rel=1e-12)
    # sigma_to_t inverts it, and clamps outside the table
    u = torch.tensor([0.0, 3.25, 512.7, 998.999, 999.0], dtype=torch.float64)
    assert torch.allclose(sigma_to_t(ve_sigmas(t_to_alpha_bar(u, a)), a), u, atol=1e-9)
    assert sigma_to_t(torch.tensor([1e-6, 1e6]), a).tolist() == [0.0, 999.0]


# --- forward process, parameterisations, loss -----------------------------------------------


def test_q_sample_has_the_closed_form_mean_and_variance():
    # DDPM eq. 4: q(x_t | x0) = N(sqrt(alpha_bar_t) x0, (1 - alpha_bar_t) I), any shape (B, C, H, W)
    a = alphas_cumprod("cosine", 1000).float()
    n, t_idx = 20000, torch.tensor([0, 250, 600, 999])
    x0 = torch.tensor([1.5, -0.7, 0.3, 2.0]).reshape(4, 1, 1, 1).expand(4, 2, 3, 3)
    g = torch.Generator().manual_seed(0)
    xs = torch.stack([q_sample(x0, t_idx, torch.randn(x0.shape, generator=g), a) for _ in range(n // 18)])
    xs = xs.transpose(0, 1).reshape(4, -1).double()  # (4, samples) per timestep
    mean, var = a[t_idx].double().sqrt() * x0[:, 0, 0, 0], 1 - a[t_idx].double()
    m = xs.shape[1]
    assert ((xs.mean(1) - mean).abs() < Z * (var / m).sqrt()).all()
    assert ((xs.var(1) / var - 1).abs() < Z * math.sqrt(2 / (m - 1))).all()


def _forward_sample(prediction_kinds=PREDICTIONS):
    a = alphas_cumprod("linear", 1000)  # float64 so the identities hold to 1e-10
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 3, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(6, 3, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 100, 500, 900, 999])
    x_t = q_sample(x0, t, noise, a)
    targets = {p: prediction_target(x0, noise, t, a, p) for p in prediction_kinds}
    return a[t].reshape(6, 1, 1), x_t, targets


@pytest.mark.parametrize("src", PREDICTIONS)
@pytest.mark.parametrize("dst", PREDICTIONS)
def test_convert_maps_each_true_target_to_every_other(src, dst):
    a_bar, x_t, targets = _forward_sample()
    assert torch.allclose(convert(targets[src], x_t, a_bar, src, dst), targets[dst], atol=1e-8)


def test_v_target_is_the_published_definition_and_conversion_round_trips():
    a_bar, x_t, targets = _forward_sample()
    alpha, sigma = a_bar.sqrt(), (1 - a_bar).sqrt()
    assert torch.allclose(targets["v"], alpha * targets["eps"] - sigma * targets["x0"])  # Salimans & Ho 2022, sec. 4
    pred = torch.randn_like(x_t)  # not a true target: round trips must still be exact
    for src in PREDICTIONS:
        for dst in PREDICTIONS:
            back = convert(convert(pred, x_t, a_bar, src, dst), x_t, a_bar, dst, src)
            assert torch.allclose(back, pred, atol=1e-8)
    assert torch.allclose(convert(pred, x_t, 0.3, "v", "eps"), convert(pred, x_t, torch.tensor(0.3), "v", "eps"))
    with pytest.raises(ValueError, match="eps, v, x0"):
        convert(pred, x_t, 0.3, "score", "eps")


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_diffusion_loss_is_zero_for_the_oracle_and_the_mse_otherwise(prediction):
    a = alphas_cumprod("linear", 100).float()
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g)
    t = torch.randint(0, 100, (8,), generator=g)
    target = prediction_target(x0, noise, t, a, prediction)
    seen = {}

    def oracle(x_t, t_in, label):
        seen.update(t=t_in, label=label, x_t=x_t)
        return target

    assert diffusion_loss(oracle, x0, a, prediction, t=t, noise=noise, label=7).item() < 1e-12
    assert seen["t"].dtype == torch.float32 and torch.equal(seen["t"], t.float()) and seen["label"] == 7
    assert torch.allclose(seen["x_t"], q_sample(x0, t, noise, a))
    loss = diffusion_loss(lambda x_t, t_in: torch.zeros_like(x_t), x0, a, prediction, t=t, noise=noise)
    assert loss.item() == pytest.approx(target.pow(2).mean().item(), rel=1e-6)
    assert diffusion_loss(lambda x_t, t_in: x_t, x0, a, prediction).shape == ()  # draws t, noise itself


# --- the exact Gaussian reference -------------------------------------------------------------


@pytest.mark.parametrize("t_idx", [3, 300, 800])
def test_gaussian_denoiser_is_the_least_squares_predictor(t_idx):
    """For Gaussian data the MMSE predictor is linear in x_t: regress eps on x_t by Monte Carlo and
    compare slope and intercept with the denoiser's (a second, independent estimate)."""
    a = alphas_cumprod("linear", 1000).float()
    mu, s, n = 0.7, 0.4, 100000
    g = torch.Generator().manual_seed(3)
    x0 = mu + s * torch.randn(n, 1, generator=g, dtype=torch.float64)
    eps = torch.randn(n, 1, generator=g, dtype=torch.float64)
    x_t = q_sample(x0, torch.full((n,), t_idx), eps, a.double())
    design = torch.cat([x_t, torch.ones_like(x_t)], 1)  # (n, 2)
    for prediction, target in [("eps", eps), ("x0", x0)]:
        coef = torch.linalg.lstsq(design, target).solution.squeeze()
        model = gaussian_denoiser(mu, s, a, prediction)
        probe = model(torch.tensor([[0.0], [1.0]], dtype=torch.float64), torch.full((2,), float(t_idx)))
        exact = torch.stack([probe[1, 0] - probe[0, 0], probe[0, 0]])  # slope, intercept
        resid = (target - design @ coef[:, None]).std().item()
        se = resid / math.sqrt(n) * torch.tensor([1 / x_t.std().item(), 1 + abs(x_t.mean().item()) / x_t.std().item()])
        assert ((coef - exact).abs() <= Z * se + 1e-9).all(), (prediction, coef, exact)


def test_gaussian_denoiser_predictions_are_consistent():
    a = alphas_cumprod("cosine", 1000).float()
    mu, s = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.3, 1.0, 2.0])
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t = torch.tensor([0.0, 10.5, 500.0, 700.25, 999.0])
    preds = {p: gaussian_denoiser(mu, s, a, p)(x, t) for p in PREDICTIONS}
    a_bar = t_to_alpha_bar(t, a)[:, None]
    for src in PREDICTIONS:
        for dst in PREDICTIONS:
            assert torch.allclose(convert(preds[src], x, a_bar, src, dst), preds[dst], atol=1e-9)
    assert gaussian_denoiser(mu, s, a)(x.float(), t).dtype == torch.float32


def _rk4_flow(x, mu, s, a_start, a_end, n=2000):
    """Second implementation: integrate dz/dsigma = (z - D(z; sigma)) / sigma (EDM eq. 3) with RK4,
    z = x / sqrt(alpha_bar) in VE units, D the posterior mean of N(mu, s^2) data."""
    def slope(z, sig):  # (z - D) / sigma with D = mu + s^2 / (s^2 + sigma^2) (z - mu), simplified (finite at 0)
        return sig * (z - mu) / (s**2 + sig**2)

    def cube_root_sigma(a):
        return ((1 - a) / a) ** (1 / 6)

    # steps evenly spaced in sigma^(1/3): fine near sigma = 0 where the slope varies on the scale s
    grid = torch.linspace(cube_root_sigma(a_start), cube_root_sigma(a_end), n + 1, dtype=torch.float64).pow(3)
    z = x / math.sqrt(a_start)
    for s0, s1 in pairwise(grid.tolist()):
        h = s1 - s0
        k1 = slope(z, s0)
        k2 = slope(z + h / 2 * k1, s0 + h / 2)
        k3 = slope(z + h / 2 * k2, s0 + h / 2)
        k4 = slope(z + h * k3, s1)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return z * math.sqrt(a_end)


def test_gaussian_flow_map_solves_the_probability_flow_ode():
    mu, s = torch.tensor([1.0, -0.5]), torch.tensor([0.5, 0.2])
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.allclose(gaussian_flow_map(x, mu, s, 0.2, 0.9), _rk4_flow(x, mu, s, 0.2, 0.9), atol=1e-10)
    # all the way to clean data (sigma_end = 0) from the linear schedule's noisiest level
    a_T = alphas_cumprod("linear", 1000)[-1].item()
    assert torch.allclose(gaussian_flow_map(x, mu, s, a_T), _rk4_flow(x, mu, s, a_T, 1.0), atol=1e-9)
    # a flow: going a -> b -> c is going a -> c
    via = gaussian_flow_map(gaussian_flow_map(x, mu, s, 0.01, 0.5), mu, s, 0.5, 0.99)
    assert torch.allclose(via, gaussian_flow_map(x, mu, s, 0.01, 0.99), atol=1e-12)


def test_gaussian_flow_map_carries_the_marginal_to_the_data():
    a_T, mu, s, n = 0.02, torch.tensor([1.0, -0.5]), torch.tensor([0.5, 0.2]), 50000
    g = torch.Generator().manual_seed(6)
    x0 = mu + s * torch.randn(n, 2, generator=g, dtype=torch.float64)
    x_T = math.sqrt(a_T) * x0 + math.sqrt(1 - a_T) * torch.randn(n, 2, generator=g, dtype=torch.float64)
    out = gaussian_flow_map(x_T, mu, s, a_T)
    # marginals match exactly up to sampling error (the map is affine, so it is a test of its coefficients)
    assert ((out.mean(0) - mu).abs() < Z * s / math.sqrt(n)).all()
    assert ((out.std(0) / s - 1).abs() < Z / math.sqrt(2 * n)).all()
