"""Fidelity/diversity sweeps: truncation's known effect on precision/recall, the sweep loop, the per-seed summary, and
the per-sample seeding that lets the sweeps reuse the headline images."""

from itertools import pairwise

import numpy as np
import pytest
import torch

from bench.config import preset
from bench.core.seeding import per_sample_randn, sample_seeds
from bench.evaluate.metrics import prdc
from bench.evaluate.sweeps import summarise_sweeps, sweep
from bench.families import Prompts, Trained, diffusion, gan
from bench.families.gan import truncate
from bench.families.text import TextModels, build_networks
from models.text import Tokenizer


def test_truncate_scales_toward_the_mean_latent():
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(truncate(z, 1.0), z)
    assert torch.equal(truncate(z, 0.0), torch.zeros_like(z))
    assert torch.allclose(truncate(z, 0.5).norm(dim=1), 0.5 * z.norm(dim=1))


def test_truncation_trades_recall_for_precision():
    # a "generator" that is exactly right at psi = 1 (fake ~ real ~ N(0, I_8)): shrinking its latents concentrates the
    # samples in the dense core, so precision (Kynkaanniemi et al. 2019) can only rise and recall must fall
    rng = np.random.default_rng(0)
    real, z = rng.normal(size=(1000, 8)), torch.from_numpy(rng.normal(size=(1000, 8)))
    points = sweep([1.0, 0.75, 0.5, 0.25], lambda psi: truncate(z, psi).numpy(), lambda x: prdc(real, x))
    assert [p["value"] for p in points] == [1.0, 0.75, 0.5, 0.25]
    precision, recall = [p["precision"] for p in points], [p["recall"] for p in points]
    assert precision[0] == pytest.approx(recall[0], abs=0.05)  # matched distributions: symmetric
    assert all(a <= b for a, b in pairwise(precision)) and precision[-1] > 0.99
    assert all(a > b for a, b in pairwise(recall)) and recall[-1] < 0.05


def test_sweep_records_unscorable_settings_instead_of_raising():
    def score(x):
        if not torch.isfinite(x).all():
            raise FloatingPointError("generated images contain NaN or inf")
        return {"mean": float(x.mean())}

    points = sweep([1, 2], lambda v: torch.full((2,), float("nan") if v == 2 else float(v)), score, key="step")
    assert points[0] == {"step": 1, "mean": 1.0}
    assert points[1]["step"] == 2 and "FloatingPointError" in points[1]["error"] and "mean" not in points[1]


def test_summarise_sweeps_is_mean_and_sample_std_per_value():
    seed0 = [{"value": 1.0, "fid": 10.0, "recall": 0.5}, {"value": 2.0, "fid": 20.0, "recall": 0.3}]
    seed1 = [{"value": 1.0, "fid": 14.0, "recall": 0.7}, {"value": 2.0, "error": "diverged"}]
    rows = summarise_sweeps([seed0, seed1], ["fid", "recall"])
    assert [r["value"] for r in rows] == [1.0, 2.0]
    assert rows[0]["fid"] == pytest.approx((12.0, np.std([10.0, 14.0], ddof=1)))
    assert rows[0]["recall"] == pytest.approx((0.6, np.std([0.5, 0.7], ddof=1)))
    assert rows[1]["fid"] == (20.0, 0.0)  # only one seed scored it


CAPTIONS = ["a small red circle", "a large blue square"]


@pytest.fixture(scope="module")
def models():
    """Untrained smoke-sized image models (the UNet's zero-initialised output perturbed so text and guidance matter),
    as the families' Trained records, and the text encoder."""
    torch.manual_seed(0)
    cfg = preset("smoke").images
    tokenizer = Tokenizer.build(CAPTIONS)
    nets = build_networks(cfg, channels=3, resolution=16, vocab_size=len(tokenizer), device="cpu")
    with torch.no_grad():
        for p in nets["unet"].parameters():
            p.add_(0.05 * torch.randn_like(p))
    text = TextModels(tokenizer, nets["text"], torch.device("cpu"))
    model = diffusion.LatentDiffusion(nets["vae"], nets["unet"], cfg.diffusion, "ddim:3", text.empty_caption())
    return {"text": text, "G": nets["G"], "gan": Trained(nets["G"], {"status": "ok"}, {}),
            "diffusion": Trained(model, {"status": "ok"}, {})}


def _prompts(models, n: int) -> Prompts:
    captions = (CAPTIONS * n)[:n]
    return Prompts(captions, torch.zeros(n, dtype=torch.long), models["text"].encode(captions), sample_seeds(0, n),
                   torch.arange(n))


def test_gan_samples_are_per_sample_seeded_and_psi_zero_gives_one_image_per_prompt(models):
    prompts = _prompts(models, 12)
    full = gan.sample_image(models["gan"], prompts, 1.0, batch=5)[0]
    # the sweeps and the last curve point reuse the first n headline images: they must be what n would give
    assert torch.equal(gan.sample_image(models["gan"], prompts.rows(slice(0, 7)), 1.0)[0], full[:7])
    # sample i is G(z_i, prompt i), z_i drawn from seed i alone and untruncated by default; psi scales that z toward
    # the mean latent 0 (truncate), so psi = 0.5 must give G(z_i / 2)
    z, pooled = per_sample_randn(prompts.seeds, (models["G"].cfg.z_dim,)), prompts.text[1]
    with torch.no_grad():
        torch.testing.assert_close(full, models["G"](z, pooled).clamp(-1, 1))
        torch.testing.assert_close(gan.sample_image(models["gan"], prompts, 0.5)[0],
                                   models["G"](0.5 * z, pooled).clamp(-1, 1))
    same = Prompts(["a small red circle"] * 12, prompts.labels, tuple(x[:1].expand(12, *x.shape[1:])
                                                                      for x in prompts.text),
                   prompts.seeds, prompts.occurrence)
    collapsed = gan.sample_image(models["gan"], same, 0.0)[0]
    assert torch.allclose(collapsed, collapsed[:1].expand_as(collapsed), atol=1e-6)
    half = gan.sample_image(models["gan"], same, 0.5)[0]
    assert not torch.allclose(half[0], half[1])


def test_diffusion_samples_are_per_sample_seeded_at_every_guidance(models):
    n = 6
    prompts = _prompts(models, n)

    def draw(k, guidance, batch=256):
        return diffusion.sample_image(models["diffusion"], prompts.rows(slice(0, k)), guidance, batch=batch)[0]

    full = draw(n, 3.0, batch=4)
    torch.testing.assert_close(draw(3, 3.0), full[:3], atol=1e-5, rtol=0)
    assert not torch.allclose(draw(3, 1.0), full[:3], atol=1e-3)  # the knob changes the images
    assert diffusion.sample_image(models["diffusion"], prompts, 3.0)[1] == 2 * 3  # guided: both halves, 3 steps
