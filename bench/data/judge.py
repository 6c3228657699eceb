"""The judge: a small CNN classifier trained on a dataset's real images, then frozen. It labels generated images
with their mode (mode counting, KL, conditional accuracy) and embeds them (penultimate layer) for FID / KID /
precision-recall, the way the Stacked MNIST protocol (Metz et al. 2017; VEEGAN; PacGAN) and LeNet-feature FIDs
on MNIST use a pretrained classifier in place of Inception.

For stacked digits the judge is a digit classifier trained on the single digits and applied to each channel
separately (Stacked MNIST protocol); its label is 100 * d_red + 10 * d_green + d_blue.

A trained judge is cached on disk (safetensors weights + json metadata) under a sha256 of the data key and the
judge config, so each dataset's judge trains once.

Standard Inception features (for data without classes, and beside the judge's numbers) live in bench/inception.py.
"""

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from bench.core.files import atomic_write, module_hash, save_tensors, used_cache
from bench.data.images import DataError, ImageData, split_hash
from models.layers import setting

JUDGE_VERSION = 1  # part of the cache key: bump when the network or training changes
JUDGE_MIN_ACCURACY = {"shapes": 0.98, "digits": 0.95, "stacked-digits": 0.95}  # held-out floors; below = failed run


@dataclass
class JudgeConfig:
    width: int = setting(32, min=1)  # channels of the first conv; the features are 4 * width wide
    steps: int = setting(300, min=1)  # optimiser steps
    batch_size: int = setting(64, min=1)  # images per step
    lr: float = setting(3e-3, gt=0)  # Adam peak learning rate, cosine-decayed to 0
    weight_decay: float = setting(1e-4, min=0)  # AdamW decoupled weight decay
    shift: float = setting(0.08, min=0, max=0.5)  # random translation augmentation, as a fraction of the image side
    seed: int = setting(0, min=0)  # split, initialisation and batch order


@dataclass
class Judge:
    net: nn.Sequential  # net[0]: image -> features (B, 4 * width); net[1]: features -> class logits
    num_modes: int  # modes of the dataset (1000 for stacked digits, whose net has 10 classes)
    accuracy: float  # accuracy on the test split (else on a held-out part); per channel digit for stacked digits
    per_channel: bool = False  # stacked digits: classify each channel as a one-channel digit image
    train_seconds: float = 0.0  # wall time of the training run (also when loaded from the cache)
    name: str = "judge"  # as a feature backbone (bench/data/featcache.py caches its features of the real images)
    resize: str = "none"  # images reach it at their own size
    size: int | None = None

    @property
    def weights_sha256(self) -> str:
        """The identity of its trained weights (the feature cache's key; the protocol record's)."""
        return module_hash(self.net)

    @torch.no_grad()
    def _run(self, images: torch.Tensor, part: slice) -> torch.Tensor:
        """Apply net[part] in batches on the net's device; per-channel judges see (N * C, 1, H, W)."""
        self.net.eval()
        device = next(self.net.parameters()).device
        x = images.reshape(-1, 1, *images.shape[-2:]) if self.per_channel else images
        out = torch.cat([self.net[part](b.to(device, torch.float32).contiguous(memory_format=torch.channels_last))
                         .cpu() for b in x.split(512)])
        return out.reshape(len(images), -1) if self.per_channel else out

    def labels(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1] -> (N,) long mode labels."""
        if not self.per_channel:
            return self._run(images, slice(None)).argmax(1)
        digits = self._run(images, slice(None)).reshape(len(images), -1, 10).argmax(2)  # (N, 3)
        return digits @ torch.tensor([100, 10, 1])  # Stacked MNIST: one mode per digit triple

    def features(self, images: torch.Tensor) -> np.ndarray:
        """(N, C, H, W) in [-1, 1] -> (N, F) float64 penultimate-layer features (per channel: concatenated)."""
        return self._run(images, slice(0, 1)).double().numpy()


def judge_net(in_channels: int, num_classes: int, width: int) -> nn.Sequential:
    """conv-BN-ReLU blocks, three 2x max poolings, global average pool: a resolution-agnostic (16-64 px)
    classifier of about 0.3M parameters at width 32. (Strided convolutions in place of max pooling were
    cheaper but learned the shapes' outlines markedly slower.)"""
    def block(c_in: int, c_out: int, pool: bool) -> list[nn.Module]:
        layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        return layers + [nn.MaxPool2d(2)] if pool else layers

    w = width
    body = nn.Sequential(
        *block(in_channels, w, True),  # (B, w, H/2, W/2)
        *block(w, 2 * w, True),  # (B, 2w, H/4, W/4)
        *block(2 * w, 4 * w, True),  # (B, 4w, H/8, W/8)
        *block(4 * w, 4 * w, False),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (B, 4w): the features
    )
    return nn.Sequential(body, nn.Linear(4 * w, num_classes))


def _shift(x: torch.Tensor, amount: float, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to +-amount of its side, edges replicated (the background continues)."""
    t = (torch.rand(len(x), 2, generator=gen) * 2 - 1) * amount * 2  # affine_grid's coordinates span 2
    theta = torch.zeros(len(x), 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = t
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def _fit(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, num_classes: int,
         cfg: JudgeConfig, device: str, gen: torch.Generator) -> tuple[nn.Sequential, float]:
    """Train judge_net on (train_x, train_y) with batches drawn from gen; return it frozen and its accuracy on
    (test_x, test_y)."""
    torch.manual_seed(cfg.seed)  # initialisation
    # channels_last: about 2x faster on CPU (oneDNN's native layout; NCHW max pooling is slow), same numbers
    net = judge_net(train_x.shape[1], num_classes, cfg.width).to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    net.train()
    for step in range(cfg.steps):
        for group in opt.param_groups:  # cosine decay to 0 (Loshchilov & Hutter 2017, without restarts)
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        idx = torch.randint(len(train_y), (cfg.batch_size,), generator=gen)
        x = train_x[idx].to(device)
        x = _shift(x, cfg.shift, gen) if cfg.shift > 0 else x
        x = x.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(net(x), train_y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    judge = Judge(net.eval().requires_grad_(False), num_classes, 0.0)
    accuracy = (judge.labels(test_x) == test_y).double().mean().item()
    return judge.net, accuracy


def train_judge(data: ImageData, test: ImageData, cfg: JudgeConfig, device: str = "cpu") -> Judge:
    """A frozen classifier of data's mode labels, fitted on data (the training split, bench.data.images.load_splits)
    and its accuracy measured on test. Stacked digits (channel_source set) train a digit classifier on the source
    digits of each split, applied per channel."""
    per_channel = data.channel_source is not None
    source = data.channel_source if per_channel else data
    if source.num_modes < 2:
        raise DataError("a judge needs at least two classes; this dataset has none (Inception features score it: "
                        "images.inception or --inception-weights)")
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    test_source = test.channel_source if per_channel else test
    parts = (source.images, source.labels, test_source.images, test_source.labels)
    net, accuracy = _fit(*parts, source.num_modes, cfg, device, gen)
    return Judge(net, data.num_modes, accuracy, per_channel, time.perf_counter() - start)


def judge_failure(dataset: str, judge: Judge) -> str | None:
    """A one-line reason the run must fail when the judge is below its dataset's accuracy floor, else None."""
    floor = JUDGE_MIN_ACCURACY.get(dataset)
    if floor is None or judge.accuracy >= floor:
        return None
    return f"judge for {dataset} reached {judge.accuracy:.1%} held-out accuracy, below the {floor:.0%} floor"


def judge_key(data: ImageData, test: ImageData, data_key: dict, cfg: JudgeConfig) -> str:
    """sha256 of everything the trained judge depends on: data_key (the dataset and its config), the judge config
    and the content hashes of both splits (a changed image means a new judge)."""
    blob = {"version": JUDGE_VERSION, "data": data_key, "judge": asdict(cfg),
            "shape": list(data.images.shape[1:]), "num_modes": data.num_modes,
            "per_channel": data.channel_source is not None}
    blob["splits"] = [split_hash(d.channel_source or d) for d in (data, test)]
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def _load_cached(weights: str, meta_path: str, device: str) -> Judge | None:
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        net = judge_net(meta["in_channels"], meta["net_classes"], meta["config"]["width"])
        net.load_state_dict(load_file(weights))
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError):
        return None  # a missing or damaged cache entry is retrained, never fatal
    net = net.to(device, memory_format=torch.channels_last)  # the layout it was trained in: identical numbers
    return Judge(net.eval().requires_grad_(False), meta["num_modes"], meta["accuracy"],
                 meta["per_channel"], meta["train_seconds"])


def load_or_train_judge(data: ImageData, test: ImageData, data_key: dict, cfg: JudgeConfig, cache_dir: str,
                        device: str = "cpu") -> Judge:
    """The cached judge for (splits, data_key, cfg) if there is one, else train one on data, measure it on test and
    cache it (atomic writes)."""
    key = judge_key(data, test, data_key, cfg)
    weights = os.path.join(cache_dir, f"judge-{key[:20]}.safetensors")
    meta_path = weights.replace(".safetensors", ".json")
    used_cache(weights, meta_path)
    judge = _load_cached(weights, meta_path, device)
    if judge is not None:
        return judge
    judge = train_judge(data, test, cfg, device)
    meta = {"key": key, "data_key": data_key, "config": asdict(cfg), "in_channels": judge.net[0][0].in_channels,
            "net_classes": judge.net[1].out_features, "num_modes": judge.num_modes, "accuracy": judge.accuracy,
            "per_channel": judge.per_channel, "train_seconds": judge.train_seconds}
    state = {k: v.detach().cpu().contiguous() for k, v in judge.net.state_dict().items()}
    save_tensors(weights, state)
    atomic_write(meta_path, json.dumps(meta, indent=1, default=str))  # last: its presence marks a whole entry
    return judge
