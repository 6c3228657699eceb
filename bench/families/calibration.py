"""Calibration rows: two "families" that train nothing and make every other number readable.

    held-out real  real data no model saw and no metric compares against: on images, test images outside the scored
                   reference set, one of the prompted class per prompt; on the 2D mixtures, fresh draws from the
                   true mixture. The best any generator can score at this sample count: the floor of FID, the
                   ceiling of prompt accuracy, the baseline of memorisation.
    copier         training images replayed, one of the prompted class per prompt: a perfect memoriser. Its FID is
                   near the floor too (FID cannot see copying); its near-copy share is 1. The warning line.

They go through the same protocol as the models (same prompts, same metrics) and never enter the verdict
(role "calibration"). Which image a prompt gets: the k-th prompt of a class (Prompts.occurrence) takes the k-th image
of a permutation of that class's pool seeded by the run seed, so sample i is the same however the prompts are
sharded, and no image repeats until the class's pool is used up.
"""

from dataclasses import dataclass

import numpy as np
import torch

from bench.core.seeding import per_sample_randn
from bench.data.mixtures import mixture_modes, mixture_scale
from bench.families.interface import Family, ImageTask, MixtureTask, Trained, train_record


@dataclass
class Pool:
    """Images to replay, by class: per class, the pool's image indices in a seeded order."""

    images: torch.Tensor  # (M, C, H, W)
    by_class: dict[int, torch.Tensor]  # label -> (M_c,) indices into images

    @classmethod
    def of(cls, images: torch.Tensor, labels: torch.Tensor, seed: int) -> "Pool":
        rng = np.random.default_rng(seed)
        by_class = {}
        for label in labels.unique().tolist():
            idx = (labels == label).nonzero().flatten().numpy()
            by_class[label] = torch.from_numpy(idx[rng.permutation(len(idx))])
        return cls(images, by_class)

    def draw(self, labels: torch.Tensor, occurrence: torch.Tensor) -> torch.Tensor:
        """For row i, the occurrence[i]-th image (cycling) of the pool's class labels[i]."""
        picks = []
        for label, k in zip(labels.tolist(), occurrence.tolist()):
            idx = self.by_class.get(label)
            if idx is None:
                raise ValueError(f"no image of class {label} to replay for its prompt")
            picks.append(int(idx[k % len(idx)]))
        return self.images[torch.tensor(picks, dtype=torch.long)]


def _calibration(pool: Pool, what: str, size: int) -> Trained:
    record = train_record(steps=0, batch=0, seconds=0.0, params={}, step_flops=0.0, recipe=what, pool=size)
    return Trained(pool, {"status": "ok"}, record)


def train_held_out(task: ImageTask) -> Trained:
    """The test images outside the scored reference set, by class."""
    if len(task.held_out) == 0:
        raise ValueError(f"the test split ({len(task.test.labels)} images) is taken whole by the scored reference "
                         f"set: no held-out images are left (raise images.num_test, or lower images.num_samples)")
    images, labels = task.test.images[task.held_out], task.test.labels[task.held_out]
    return _calibration(Pool.of(images, labels, task.seed), "none: test images outside the scored reference",
                        len(task.held_out))


def train_copier(task: ImageTask) -> Trained:
    """The training images, by class."""
    return _calibration(Pool.of(task.data.images, task.data.labels, task.seed), "none: training images replayed",
                        len(task.data.labels))


def sample_pool(trained: Trained, prompts, knob: float, net=None) -> tuple[torch.Tensor, int]:
    """One pool image of the prompted class per prompt (no network: 0 NFE)."""
    return trained.sampler.draw(prompts.labels, prompts.occurrence).float(), 0


def train_mixture_draws(task: MixtureTask) -> Trained:
    """Nothing to train: the true mixture itself."""
    record = train_record(steps=0, batch=0, seconds=0.0, params={}, step_flops=0.0, recipe="none: the true mixture")
    return Trained(task.dataset, {"status": "ok"}, record)


def sample_mixture_draws(trained: Trained, seeds: torch.Tensor, label: str, net=None) -> tuple[torch.Tensor, int]:
    """Fresh draws from the true mixture, sample i from seed i alone (its mode from a per-sample uniform, its offset
    from per-sample normal noise), in the unit-variance units the models train in."""
    centers, std = mixture_modes(trained.sampler)
    u = per_sample_randn(seeds, (3,), stream=10_000)  # (N, 3): a normal turned uniform picks the mode
    mode = (torch.special.ndtr(u[:, 0].double()) * len(centers)).long().clamp(max=len(centers) - 1)
    points = torch.as_tensor(centers, dtype=torch.float32)[mode] + std * u[:, 1:]
    return points / mixture_scale(trained.sampler), 0


HELD_OUT = Family(
    name="held-out-real", label="held-out real", role="calibration",
    train_image=train_held_out, sample_image=sample_pool,
    train_mixture=train_mixture_draws, sample_mixture=sample_mixture_draws, mixture_samplers=lambda mix: ["data"],
    description="real data no model saw: the best any generator can score at this sample count",
)
COPIER = Family(
    name="copier", label="copier", role="calibration", train_image=train_copier, sample_image=sample_pool,
    description="training images replayed for the prompts: what memorisation looks like on every metric",
)
