"""The process figures (how each family makes an image): the arrays agree with what they claim to show, against the
sampler's own output, the closed-form forward process and a guided network call; the figures are drawn."""

import dataclasses

import numpy as np
import pytest
import torch

from bench.config import PRESETS
from bench.core.rundir import RunDir
from bench.families import diffusion
from bench.families.interface import Prompts, Trained
from bench.families.text import network_configs
from bench.report import process as figures
from bench.train.images import schedule
from models.diffusion import DiffusionConfig, alphas_cumprod
from models.unet import UNet
from models.vae import KLAutoencoder


@pytest.fixture(scope="module")
def latent_model():
    """An untrained latent diffusion model of the smoke preset's shapes (nothing here depends on training) and four
    prompts with random text states."""
    torch.manual_seed(0)
    cfg = PRESETS["smoke"]().images
    configs = network_configs(cfg, channels=3, resolution=cfg.resolution, vocab_size=20)
    vae, unet = KLAutoencoder(configs["vae"]).eval(), UNet(configs["unet"]).eval()
    width = configs["text"].width
    empty = (torch.randn(1, 4, width), torch.ones(1, 4, dtype=torch.bool))
    model = diffusion.LatentDiffusion(vae, unet, DiffusionConfig(num_steps=100), "dpmpp2m:6", empty)
    n = 4
    text = (torch.randn(n, 4, width), torch.randn(n, 8), torch.ones(n, 4, dtype=torch.bool))
    prompts = Prompts([f"prompt {i}" for i in range(n)], torch.arange(n), text, torch.arange(n) + 17,
                      torch.zeros(n, dtype=torch.long))
    return Trained(model, {"status": "ok"}, {}), prompts, cfg


def test_the_trajectory_ends_in_the_samplers_output(latent_model):
    """The last frame of every trajectory (x_t and x0_hat rows) is the image sample_image draws for that prompt and
    seed with that sampler; the headline's first x0_hat is the network's x0 estimate at pure noise."""
    trained, prompts, _ = latent_model
    for sampler in ("dpmpp2m:6", "ddpm:6", "euler:6"):
        path = diffusion.trajectory(trained, prompts, sampler)
        model = dataclasses.replace(trained.sampler, sampler=sampler)
        expected, nfe = diffusion.sample_image(Trained(model, {}, {}), prompts, 1.0)
        assert path["nfe"] == nfe == 6
        torch.testing.assert_close(path["xt"][:, -1], expected)
        torch.testing.assert_close(path["x0"][:, -1], expected)
        assert path["xt"].shape[1] == len(path["calls"]) + 1


def test_the_forward_frames_are_q_of_x_t_given_x_0(latent_model):
    """Each pixel frame is sqrt(a_t) x_0 + sqrt(1 - a_t) noise with the recorded noise and the run's alpha_bar at t
    (DDPM eq. 4), and the SNR column is a_t / (1 - a_t)."""
    trained, _, _ = latent_model
    image = torch.rand(3, 16, 16) * 2 - 1
    t = torch.tensor([99.0, 60.0, 20.0, 0.0])
    out = diffusion.forward_process(trained, image, t)
    a = schedule(trained.sampler.diffusion, "cpu").double()[t.long()]
    for k in range(len(t)):
        expected = a[k].sqrt() * image.double() + (1 - a[k]).sqrt() * out["noise"].double()
        torch.testing.assert_close(out["pixels"][k].double(), expected, atol=1e-6, rtol=1e-6)
    exact = alphas_cumprod(out["schedule"], 100)[t.long()]  # float64 closed form, not the run's float32 table
    np.testing.assert_allclose(out["snr"][out["schedule"]], (exact / (1 - exact)).numpy(), rtol=1e-12)
    assert out["noise"].std() > 0.5  # noise, not zeros


def test_the_guided_image_is_the_guided_networks_estimate(latent_model):
    """The guided x0_hat at scale s equals the x0 estimate of the guided denoiser (models/samplers.py guided: one
    batched call, u + s (c - u) on the raw prediction) at the same x_t, decoded."""
    trained, prompts, _ = latent_model
    model = trained.sampler
    two = prompts.rows(slice(0, 2))
    x_t, t = torch.randn(2, model.unet.cfg.in_channels, 8, 8), torch.tensor([50.0, 50.0])
    scales = [1.0, 3.0, 5.0]
    out = diffusion.guidance_parts(trained, two, scales, x_t, t)
    cond = {"context": two.text[0], "context_mask": two.text[2]}
    uncond = {"context": model.empty[0].expand(2, -1, -1), "context_mask": model.empty[1].expand(2, -1)}
    for j, s in enumerate(scales):
        with torch.no_grad():
            pred = diffusion.conditioned(model.unet, s, cond, uncond)(x_t, t)
        expected = model.decode(diffusion._x0(model, x_t, t, pred))
        torch.testing.assert_close(out["guided"][:, j], expected, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out["guided"][:, 0], out["cond"], atol=2e-5, rtol=1e-4)  # s = 1: the caption alone
    torch.testing.assert_close(out["difference"], (out["cond"] - out["uncond"]).mean(1))


def test_every_process_figure_is_drawn(latent_model, tmp_path):
    """explain_image's arrays, through the run folder's .npz, become the trajectory, forward, guidance and strip
    figures."""
    trained, prompts, cfg = latent_model
    arrays = diffusion.explain_image(trained, prompts, torch.rand(3, 16, 16) * 2 - 1, [1.0, 2.0, 3.0, 5.0])
    steps = [2, 4]
    arrays |= {"strip": torch.rand(len(steps), 4, 3, 16, 16), "strip_steps": torch.tensor(steps)}
    rd = RunDir(tmp_path)
    rd.save_process("shapes", 0, "diffusion", arrays)
    back = rd.load_process("shapes", 0, "diffusion")
    assert back["trajectory0_label"] == "dpmpp2m:6" and back["trajectory1_label"] == "ddpm:6"
    assert set(back["forward_snr"]) == {"linear", "cosine", "scaled_linear"}
    np.testing.assert_allclose(back["guidance_scales"], [1.0, 3.0, 5.0])
    results = {"families": {"diffusion": {"label": "diffusion", "role": "model"}}, "config": {"seeds": [0]},
               "runs": [{"dataset": "shapes", "model": "diffusion", "seed": 0, "status": "ok"}]}
    rd.write_prompts("shapes", 0, prompts.captions)
    blocks = figures.image_process_blocks(tmp_path, results, results["runs"], "shapes")
    images = [b[1] for b in blocks if b[0] == "img"]
    assert [p.split("/")[-1] for p in images] == ["shapes_trajectory.png", "shapes_forward.png",
                                                  "shapes_guidance.png", "shapes_snapshots.png"]
    assert all((tmp_path / p).stat().st_size > 5_000 for p in images)
    assert sum(b[1].startswith("How to read these") for b in blocks if b[0] == "p") == 4
