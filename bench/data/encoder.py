"""Two frozen readers of images that are not the class: a label-free encoder, and on `shapes` a read-out of the
generator's own factors. Both are trained once per dataset on its training split and cached like the judge.

Why not the judge's features alone: the judge is a classifier trained on the class labels with shift augmentation,
so its features are nearly all class identity (their between-class share of variance is measured and reported:
about 95% on shapes) and blind to where in the frame a shape sits. One image per class then scores a better FID on
them than a trained diffusion model: collapse within a class, the typical GAN failure, is invisible there.

label-free encoder  the encoder half of a small convolutional autoencoder trained to reconstruct the images (mean
                    squared error, no labels). Reconstruction keeps whatever varies in the data, position, size and
                    background included: a contrastive encoder would instead discard what its augmentations vary,
                    and a within-class instrument needs exactly that. Features: its code (code_dim numbers), flattened
                    rather than pooled, so position survives. Used for FID, precision/recall/density/coverage, intra-
                    class FID, within-class coverage and memorisation (bench/evaluate/images.py).
factor read-out     on data whose generator records its factors (ImageData.factors: shapes' centre, size and
                    background), a regressor of the same shape trained on the training images' factors; its error on
                    the test split is measured against the generator's own values (a known answer). Samples' read
                    factors against the real images' give within-class coverage of the true factor distribution.
"""

import hashlib
import json
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
from bench.data.images import ImageData, split_hash
from models.layers import setting

ENCODER_VERSION = 1  # part of the cache key: bump when the networks or their training change


@dataclass
class EncoderConfig:
    width: int = setting(32, min=1)  # channels of the first conv (twice that after the first downsampling)
    code_dim: int = setting(64, min=2)  # numbers per image: the label-free features
    steps: int = setting(800, min=1)  # optimiser steps of the autoencoder and of the factor read-out, each
    batch_size: int = setting(128, min=2)  # images per step
    lr: float = setting(2e-3, gt=0)  # AdamW peak learning rate, cosine-decayed to 0
    seed: int = setting(0, min=0)  # initialisation and batch order


def conv_encoder(channels: int, resolution: int, width: int, out: int) -> nn.Sequential:
    """(B, C, H, W) -> (B, out): two stride-2 convolutions and a linear map of the flattened (B, 2w, H/4, W/4) map
    (no global pooling: where things are stays in the output)."""
    side = resolution // 4
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1), nn.GroupNorm(min(8, width), width), nn.SiLU(),
        nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.GroupNorm(min(8, width), 2 * width), nn.SiLU(),  # H/2
        nn.Conv2d(2 * width, 2 * width, 4, stride=2, padding=1), nn.GroupNorm(min(8, width), 2 * width), nn.SiLU(),
        nn.Flatten(), nn.Linear(2 * width * side * side, out))  # (B, 2w, H/4, W/4) -> (B, out)


def conv_decoder(channels: int, resolution: int, width: int, code: int) -> nn.Sequential:
    """(B, code) -> (B, C, H, W) in [-1, 1]: conv_encoder mirrored."""
    side = resolution // 4
    return nn.Sequential(
        nn.Linear(code, 2 * width * side * side), nn.Unflatten(1, (2 * width, side, side)), nn.SiLU(),
        nn.ConvTranspose2d(2 * width, 2 * width, 4, stride=2, padding=1), nn.GroupNorm(min(8, width), 2 * width),
        nn.SiLU(),  # H/2
        nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.GroupNorm(min(8, width), width), nn.SiLU(),
        nn.Conv2d(width, channels, 3, padding=1), nn.Tanh())


@dataclass
class Reader:
    """A frozen network that reads one vector per image: the label-free encoder or the factor read-out. Has what
    the feature cache (bench/data/featcache.py) and the protocol record need: name, weights_sha256, resize, size."""

    net: nn.Module  # (B, C, H, W) in [-1, 1] -> (B, F)
    name: str  # "label-free encoder" or "factor read-out"
    record: dict  # how it was trained and how well: steps, seconds, loss / per-factor error on the test split
    scale: np.ndarray | None = None  # the factor read-out's targets were standardised: (mean, std) rows (2, F)
    factor_names: tuple[str, ...] = ()
    resize: str = "none"  # images reach it at their own size
    size: int | None = None

    @property
    def weights_sha256(self) -> str:
        return module_hash(self.net)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> np.ndarray:
        """(N, C, H, W) -> (N, F) float64 (the factor read-out in the factors' own units)."""
        self.net.eval()
        device = next(self.net.parameters()).device
        out = torch.cat([self.net(b.to(device, torch.float32)).cpu() for b in images.split(512)]).double().numpy()
        return out if self.scale is None else out * self.scale[1] + self.scale[0]


def _batches(n: int, cfg: EncoderConfig):
    gen = torch.Generator().manual_seed(cfg.seed)
    for step in range(cfg.steps):
        yield step, torch.randint(n, (cfg.batch_size,), generator=gen)


def _fit(net: nn.Module, loss_of, n: int, cfg: EncoderConfig) -> float:
    """AdamW with a cosine learning rate over cfg.steps batches of indices into n items; returns the last 10% of the
    steps' mean loss."""
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    losses = []
    net.train()
    for step, idx in _batches(n, cfg):
        for group in opt.param_groups:  # cosine decay to 0 (Loshchilov & Hutter 2017, without restarts)
            group["lr"] = cfg.lr * 0.5 * (1 + np.cos(np.pi * step / cfg.steps))
        loss = loss_of(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    net.eval().requires_grad_(False)
    return float(np.mean(losses[-max(1, cfg.steps // 10):]))


def train_label_free(data: ImageData, test: ImageData, cfg: EncoderConfig, device: str = "cpu") -> Reader:
    """The autoencoder trained to reconstruct data's images (no labels); its encoder is the reader. Its
    reconstruction error on the test split is recorded."""
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    channels, resolution = data.images.shape[1], data.images.shape[-1]
    encoder = conv_encoder(channels, resolution, cfg.width, cfg.code_dim).to(device)
    decoder = conv_decoder(channels, resolution, cfg.width, cfg.code_dim).to(device)
    images = data.images.to(device)
    auto = nn.Sequential(encoder, decoder)
    train_loss = _fit(auto, lambda idx: F.mse_loss(auto(images[idx]), images[idx]), len(images), cfg)
    with torch.no_grad():
        test_x = test.images.to(device)
        test_loss = float(sum(F.mse_loss(auto(b), b, reduction="sum") for b in test_x.split(512)) / test_x.numel())
    record = {"steps": cfg.steps, "seconds": time.perf_counter() - start, "train_mse": train_loss,
              "test_mse": test_loss, "code_dim": cfg.code_dim, "trained_on": "the training split's images, no labels"}
    return Reader(encoder, "label-free encoder", record)


def train_factor_reader(data: ImageData, test: ImageData, cfg: EncoderConfig, device: str = "cpu") -> Reader | None:
    """A regressor of data's generator factors (None when the data record none), its error on the test split
    against the generator's own values recorded per factor: mean absolute error and R^2."""
    if data.factors is None or test.factors is None:
        return None
    start = time.perf_counter()
    torch.manual_seed(cfg.seed + 1)
    channels, resolution = data.images.shape[1], data.images.shape[-1]
    mean, std = data.factors.mean(0), data.factors.std(0).clamp_min(1e-8)
    net = conv_encoder(channels, resolution, cfg.width, len(data.factor_names)).to(device)
    images, targets = data.images.to(device), ((data.factors - mean) / std).to(device)
    _fit(net, lambda idx: F.mse_loss(net(images[idx]), targets[idx]), len(images), cfg)
    reader = Reader(net, "factor read-out", {}, np.stack([mean.double().numpy(), std.double().numpy()]),
                    tuple(data.factor_names))
    read, true = reader.features(test.images), test.factors.double().numpy()
    r2 = 1 - ((read - true) ** 2).sum(0) / ((true - true.mean(0)) ** 2).sum(0)
    reader.record = {"steps": cfg.steps, "seconds": time.perf_counter() - start,
                     "test_mae": dict(zip(data.factor_names, np.abs(read - true).mean(0).tolist())),
                     "test_r2": dict(zip(data.factor_names, r2.tolist())),
                     "trained_on": "the training split's images and the generator's factors of them"}
    return reader


# ---------------------------------------------------------------- the cache (as the judge's: bench/data/judge.py)


def _key(kind: str, data: ImageData, test: ImageData, data_key: dict, cfg: EncoderConfig) -> str:
    blob = {"version": ENCODER_VERSION, "kind": kind, "data": data_key, "config": asdict(cfg),
            "shape": list(data.images.shape[1:]), "splits": [split_hash(d) for d in (data, test)],
            "factors": list(data.factor_names)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def _load(weights: str, meta_path: str, device: str) -> Reader | None:
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        build = conv_encoder(meta["channels"], meta["resolution"], meta["width"], meta["out"])
        build.load_state_dict(load_file(weights))
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError):
        return None  # a missing or damaged entry is retrained, never fatal
    scale = None if meta["scale"] is None else np.asarray(meta["scale"], dtype=np.float64)
    return Reader(build.to(device).eval().requires_grad_(False), meta["name"], meta["record"], scale,
                  tuple(meta["factor_names"]))


def load_or_train(kind: str, data: ImageData, test: ImageData, data_key: dict, cfg: EncoderConfig, cache_dir: str,
                  device: str = "cpu") -> Reader | None:
    """The cached reader of `kind` ("label-free" or "factors") for these splits and settings, else trained on data,
    measured on test and cached (atomic writes; the .json last marks a whole entry). None when the data have no
    factors to read."""
    if kind == "factors" and data.factors is None:
        return None
    key = _key(kind, data, test, data_key, cfg)
    weights = os.path.join(cache_dir, f"{kind}-{key[:20]}.safetensors")
    meta_path = weights.replace(".safetensors", ".json")
    used_cache(weights, meta_path)  # a job on another machine gets these files (bench/core/executor.py)
    if (reader := _load(weights, meta_path, device)) is not None:
        return reader
    reader = (train_label_free if kind == "label-free" else train_factor_reader)(data, test, cfg, device)
    linear = reader.net[-1]
    meta = {"key": key, "name": reader.name, "record": reader.record, "channels": data.images.shape[1],
            "resolution": data.images.shape[-1], "width": cfg.width, "out": linear.out_features,
            "scale": None if reader.scale is None else reader.scale.tolist(), "factor_names": list(reader.factor_names)}
    save_tensors(weights, {k: v.detach().cpu().contiguous() for k, v in reader.net.state_dict().items()})
    atomic_write(meta_path, json.dumps(meta, indent=1, default=str))
    return reader
