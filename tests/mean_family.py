"""A family of one's own for gan-vs-diffusion: each prompt gets the mean training image of the class whose captions
read closest to it, plus noise. Run it beside the built-in families with

    gvd run --preset smoke --family mean=tests/mean_family.py:make
"""

import torch

from bench.core.seeding import per_sample_randn
from bench.families import Family, Knob, Trained, train_record


def train(task):
    """No optimisation: per class, the mean training image and the mean (shared, frozen) text embedding."""
    data, pooled = task.data, task.captions[1].cpu()
    classes = data.labels.unique()
    means = {"images": torch.stack([data.images[data.labels == k].mean(0) for k in classes]),  # (K, C, H, W)
             "text": torch.stack([pooled[data.labels == k].mean(0) for k in classes])}  # (K, E)
    record = train_record(steps=0, batch=0, seconds=0.0, params={"means": means["images"].numel()}, step_flops=0.0,
                          recipe="class means of the training images")
    return Trained(means, {"status": "ok"}, record)


def sample(trained, prompts, noise, net=None):
    """The class nearest each prompt's text embedding, its mean image plus per-sample noise of scale `noise`."""
    means = trained.sampler
    nearest = torch.cdist(prompts.text[1].cpu(), means["text"]).argmin(1)
    eps = per_sample_randn(prompts.seeds, tuple(means["images"].shape[1:]))  # sample i's noise: seed i's alone
    return (means["images"][nearest] + noise * eps).clamp(-1, 1), 0  # images in [-1, 1], no network pass


def make():
    return Family(name="mean", label="class means", knob=Knob("noise scale", "sigma", 0.2),
                  grid=lambda cfg: [0.0, 0.2, 0.5], train_image=train, sample_image=sample,
                  description="the mean training image of the prompted class, plus noise")
