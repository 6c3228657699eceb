"""Image datasets: determinism, value ranges, labels that match what is drawn and what the caption says, and
one-line errors for bad folders and missing torchvision data."""

import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench import catalog
from bench.data.images import (
    COLOURS,
    SHAPES,
    SIZES,
    DataError,
    ImageData,
    load_digits,
    load_folder,
    load_image_dataset,
    load_torchvision,
    make_shapes,
    make_stacked_digits,
)

K = len(COLOURS)


def _words(caption: str) -> set[str]:
    return set(caption.replace(",", " ").split())


# ------------------------------------------------------------------------------------------------ shapes

@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_shapes_tensor_contract(resolution):
    d = make_shapes(40, resolution, seed=0)
    assert d.images.shape == (40, 3, resolution, resolution) and d.images.dtype == torch.float32
    assert d.images.min() >= -1 and d.images.max() <= 1
    assert d.labels.dtype == torch.long and 0 <= d.labels.min() and d.labels.max() < d.num_modes
    assert d.num_modes == len(SHAPES) * len(COLOURS) == len(d.class_names) >= 24
    assert len(d.captions) == 40 and d.channel_labels is None


def test_shapes_deterministic_and_prefix_stable():
    a, b = make_shapes(30, 16, seed=4), make_shapes(30, 16, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.captions == b.captions
    assert not torch.equal(a.images, make_shapes(30, 16, seed=5).images)
    short = make_shapes(7, 16, seed=4)  # image i does not depend on how many are drawn
    assert torch.equal(short.images, a.images[:7]) and short.captions == a.captions[:7]


def test_shape_captions_name_exactly_the_labelled_shape_and_colour():
    d = make_shapes(300, 16, seed=1)
    for caption, label in zip(d.captions, d.labels.tolist()):
        words = _words(caption)
        assert words & set(SHAPES) == {SHAPES[label // K]}, caption
        assert words & set(COLOURS) == {list(COLOURS)[label % K]}, caption
        assert d.class_names[label] == f"{list(COLOURS)[label % K]} {SHAPES[label // K]}"
    assert len(set(d.captions)) > d.num_modes  # several templates, not one string per class
    # both sizes and every mode occur
    assert {f["size"] for f in d.fields} == set(SIZES) and len(d.labels.unique()) == d.num_modes


def test_shapes_pixels_match_label_colour_and_closed_form_area():
    """The drawn shape's area, recovered from the pixels, is the closed-form area of the labelled shape
    (circle pi r^2, square (1.7 r)^2, triangle 2 r^2, cross 20/9 r^2), and its colour is the labelled colour."""
    res = 64
    d = make_shapes(200, res, seed=3)
    x = (d.images + 1) / 2  # (N, 3, H, W) in [0, 1]
    bg = x[:, :, 0, 0]  # corners are background (shapes keep a margin)
    far = ((x - bg[:, :, None, None]) ** 2).sum(1).flatten(1).argmax(1)
    fg = x.flatten(2)[torch.arange(len(x)), :, far]  # (N, 3) the shape's colour
    v = fg - bg
    alpha = ((x - bg[:, :, None, None]) * v[:, :, None, None]).sum(1) / (v**2).sum(1)[:, None, None]
    area = alpha.sum((1, 2))
    closed_form = {"circle": math.pi, "square": 1.7**2, "triangle": 2.0, "cross": 20 / 9}
    palette = torch.tensor(list(COLOURS.values()))
    for i, f in enumerate(d.fields):
        r = SIZES[f["size"]] * res
        assert abs(area[i] / (closed_form[f["shape"]] * r * r) - 1) < 0.02, (i, f)
        nearest = ((palette - fg[i]) ** 2).sum(1).argmin().item()
        assert nearest == d.labels[i].item() % K


@pytest.mark.slow  # a wall-clock bound: a loaded machine can break it, so it stays out of the default run
def test_shapes_fast():
    import time
    start = time.perf_counter()
    make_shapes(2000, 32, seed=0)
    assert time.perf_counter() - start < 2.0  # vectorised: ~0.1 s on one idle core


def test_prompts_are_fresh_captions_with_matching_labels():
    d = make_shapes(200, 16, seed=0)
    caps, labels = d.prompts(500, seed=9)
    assert len(caps) == 500 and labels.shape == (500,) and labels.dtype == torch.long
    again = d.prompts(500, seed=9)
    assert again[0] == caps and torch.equal(again[1], labels)
    for c, label in zip(caps, labels.tolist()):
        assert _words(c) & set(SHAPES) == {SHAPES[label // K]}
        assert _words(c) & set(COLOURS) == {list(COLOURS)[label % K]}
    assert d.prompts(50, seed=10)[0] != caps[:50]


# ------------------------------------------------------------------------------------------------ digits

def test_digits_are_sklearns_digits_resized():
    from sklearn.datasets import load_digits as sk

    raw = sk()
    d = load_digits(16)
    assert d.images.shape == (1797, 1, 16, 16) and d.num_modes == 10
    assert d.images.min() >= -1 and d.images.max() <= 1
    assert torch.equal(d.labels, torch.from_numpy(raw.target).long())
    # bilinear 2x upsampling (align_corners=False) keeps each image's mean ink, up to the border rows
    ink = (d.images.mean((1, 2, 3)) + 1) / 2 * 16
    assert np.allclose(ink.numpy(), raw.images.mean((1, 2)), atol=0.35)
    assert all(f"{['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine'][y]}"
               in c for c, y in zip(d.captions, d.labels.tolist()))


def test_stacked_digits_channels_are_real_digits_with_their_labels():
    d = make_stacked_digits(20, 16, seed=2)
    digits = d.channel_source
    assert d.images.shape == (20, 3, 16, 16) and d.num_modes == 1000 and len(d.class_names) == 1000
    assert torch.equal(d.labels, 100 * d.channel_labels[:, 0] + 10 * d.channel_labels[:, 1] + d.channel_labels[:, 2])
    for i in range(20):
        for c in range(3):
            same = (digits.images[:, 0] == d.images[i, c]).flatten(1).all(1)  # exact copies of a source digit
            assert same.any() and (digits.labels[same] == d.channel_labels[i, c]).all()
        assert d.class_names[d.labels[i]] == "-".join(str(v) for v in d.channel_labels[i].tolist())
    assert torch.equal(make_stacked_digits(20, 16, seed=2).images, d.images)


# ------------------------------------------------------------------------------------------------ folders

def _png(path, size=(20, 12), colour=(200, 10, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour if mode == "RGB" else colour[0]).save(path)


def test_folder_with_class_subfolders(tmp_path):
    _png(tmp_path / "dog" / "a.png", colour=(0, 255, 0))
    _png(tmp_path / "cat" / "b.png", size=(9, 30))
    _png(tmp_path / "cat" / "c.jpg", mode="L", colour=(128,))
    d = load_folder(str(tmp_path), resolution=8)
    assert d.class_names == ["cat", "dog"] and d.num_modes == 2  # sorted, as ImageFolder
    assert d.labels.tolist() == [0, 0, 1] and d.images.shape == (3, 3, 8, 8)
    # a flat colour survives resizing exactly: (v / 255) * 2 - 1
    assert torch.allclose(d.images[2], torch.tensor([-1.0, 1.0, -1.0])[:, None, None], atol=1e-6)
    assert torch.allclose(d.images[0, 0], torch.full((8, 8), 200 / 255 * 2 - 1), atol=1e-6)
    assert all(d.class_names[y] in c for c, y in zip(d.captions, d.labels.tolist()))


def test_folder_images_are_their_centre_square_resampled(tmp_path):
    """Each image's centre square, resampled alone: at the output size it is the crop itself, pixel for pixel; a
    wide strip whose centre square is green and whose sides are red comes out green (the sides reach in only as far
    as the bicubic kernel, 2 source pixels = 4 output pixels at 2x, as when the whole strip is scaled); and a
    1 x 300,000 strip loads as one 32 x 32 image of its colour (its memory: the test below)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)  # (H, W, 3)
    Image.fromarray(pixels).save(tmp_path / "noise.png")
    strip = np.zeros((16, 48, 3), dtype=np.uint8)
    strip[:, :16, 0] = strip[:, 32:, 0] = 255
    strip[:, 16:32, 1] = 255
    Image.fromarray(strip).save(tmp_path / "strip.png")
    Image.new("RGB", (300_000, 1), (0, 0, 255)).save(tmp_path / "long.png")
    d = load_folder(str(tmp_path), resolution=32)
    by_name = dict(zip(sorted(["noise.png", "strip.png", "long.png"]), d.images))
    assert torch.equal(by_name["noise.png"], torch.from_numpy(pixels[:, 16:48]).permute(2, 0, 1) / 255 * 2 - 1)
    green = torch.tensor([-1.0, 1.0, -1.0])[:, None, None]
    assert torch.allclose(by_name["strip.png"][:, :, 4:-4], green, atol=1e-6)
    assert not torch.allclose(by_name["strip.png"][:, :, :4], green, atol=1e-2)
    assert torch.allclose(by_name["long.png"], torch.tensor([-1.0, -1.0, 1.0])[:, None, None], atol=1e-6)


def test_a_long_strip_costs_the_outputs_memory_not_the_strip_scaled_up(tmp_path):
    """Peak memory of loading a 1 x 300,000 image at 32 x 32, in a fresh process: scaling the whole strip to a
    shorter side of 32 first (the old way) grew peak RSS by 1,646 MB on this machine; the centre square alone costs
    next to nothing."""
    Image.new("RGB", (300_000, 1), (0, 0, 255)).save(tmp_path / "long.png")
    code = ("import resource, sys; from bench.data.images import load_folder; "
            "peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; base = peak(); "
            "load_folder(sys.argv[1], resolution=32); print((peak() - base) / 1024)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) < 100, f"peak RSS grew by {float(out.stdout):.0f} MB"


def test_folder_greyscale_flat_and_captions_file(tmp_path):
    for name in ("x.png", "y.png"):
        _png(tmp_path / name, mode="L", colour=(0,))
    (tmp_path / "metadata.csv").write_text('file_name,text\nx.png,"a dark, empty square"\ny.png,nothing\n')
    d = load_folder(str(tmp_path), resolution=4)
    assert d.images.shape == (2, 1, 4, 4) and d.num_modes == 1 and d.labels.tolist() == [0, 0]
    assert d.captions == ["a dark, empty square", "nothing"]


@pytest.mark.parametrize("case", ["missing", "empty", "empty-class", "corrupt", "no-caption"])
def test_folder_errors_are_one_line_and_name_the_path(tmp_path, case):
    bad = tmp_path / "data"
    if case == "empty":
        bad.mkdir()
    elif case == "empty-class":
        _png(bad / "a" / "1.png")
        (bad / "b").mkdir()
        bad = bad / "b"
    elif case == "corrupt":
        _png(tmp_path / "data" / "a" / "1.png")
        bad = tmp_path / "data" / "a" / "broken.png"
        bad.write_bytes(b"this is not a png")
    elif case == "no-caption":
        _png(bad / "1.png")
        (bad / "metadata.csv").write_text("file_name,text\nother.png,x\n")
        bad = "1.png"
    with pytest.raises(DataError) as err:
        load_folder(str(tmp_path / "data"), resolution=8)
    message = str(err.value)
    assert "\n" not in message and str(bad) in message


def _write_idx(path, array: np.ndarray):
    """MNIST's IDX format (LeCun et al.): magic 0x08 (ubyte) + ndim, big-endian dims, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_from_local_root_and_missing_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    images = np.zeros((5, 28, 28), np.uint8)
    images[:, 10:18, 10:18] = 255
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    for split in ("train", "t10k"):
        _write_idx(raw / f"{split}-images-idx3-ubyte", images)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    d = load_torchvision("mnist", str(tmp_path), resolution=14)
    assert d.images.shape == (5, 1, 14, 14) and d.labels.tolist() == [3, 1, 4, 1, 5]
    assert d.images[0, 0, 7, 7] == 1 and d.images[0, 0, 0, 0] == -1  # 2x antialiased downsampling of a block
    assert "three" in d.captions[0]
    for name in ("mnist", "fashion-mnist", "cifar10"):
        with pytest.raises(DataError) as err:
            load_torchvision(name, str(tmp_path / "nowhere"))
        assert "\n" not in str(err.value) and "nowhere" in str(err.value)


def test_dispatch(tmp_path):
    assert set(catalog.dataset_names("image")) >= {"shapes", "digits", "stacked-digits", "folder:PATH"}
    assert torch.equal(load_image_dataset("shapes", 10, 16, 3).images, make_shapes(10, 16, 3).images)
    sub = load_image_dataset("digits", 100, 16, 0)
    assert sub.images.shape == (100, 1, 16, 16) and len(sub.captions) == len(sub.fields) == 100
    assert load_image_dataset("stacked-digits", 5, 16, 0).num_modes == 1000
    _png(tmp_path / "a" / "1.png")
    _png(tmp_path / "b" / "2.png")
    assert load_image_dataset(f"folder:{tmp_path}", 0, 8, 0).num_modes == 2
    for bad in ("nope", "folder:", "shapes:x"):
        with pytest.raises(DataError, match="unknown image dataset"):
            load_image_dataset(bad, 10, 16, 0)


# ---------------------------------------------------------------- train / test splits (issue 10)


def _digit_channel_hashes(data) -> set[str]:
    """Hashes of every single-digit image a stacked dataset's channels show."""
    from bench.data.images import image_hashes

    channels = data.images.reshape(-1, 1, *data.images.shape[-2:])
    return set(image_hashes(ImageData(channels, torch.zeros(len(channels), dtype=torch.long), [""] * len(channels),
                                      ["x"], 1)))


@pytest.mark.parametrize("name, n_train, n_test", [("shapes", 300, 100), ("digits", 0, 360),
                                                   ("stacked-digits", 400, 200)])
def test_splits_are_disjoint_deterministic_and_sized(name, n_train, n_test):
    from bench.data.images import image_hashes, load_splits, split_record
    from bench.data.images import split_hash as content_hash

    train, test = load_splits(name, n_train, n_test, 16)
    assert len(test.labels) == n_test == len(test.captions)
    assert len(train.labels) == (n_train if n_train > 0 else 1797 - n_test)
    assert not set(image_hashes(train)) & set(image_hashes(test))  # no image in both splits
    again = load_splits(name, n_train, n_test, 16)
    assert [content_hash(d) for d in again] == [content_hash(train), content_hash(test)]  # fixed: same content
    record = split_record(train, test)
    assert record["train"]["size"] == len(train.labels) and record["test"]["hash"] == content_hash(test)
    assert record["train"]["part"] == "train" and record["test"]["part"] == "test" and record["train"]["how"]
    if name == "stacked-digits":  # each split stacks its own digits: no digit image in both
        assert not _digit_channel_hashes(train) & _digit_channel_hashes(test)
        assert train.channel_source is not test.channel_source
        assert len(train.channel_source.labels) + len(test.channel_source.labels) == 1797


def test_generated_train_split_of_seed_0_is_the_old_data_and_seeds_differ():
    from bench.data.images import load_splits
    from bench.data.images import split_hash as content_hash

    train, test = load_splits("shapes", 50, 20, 16)
    assert torch.equal(train.images, make_shapes(50, 16, 0).images)  # what load_image_dataset gave the models
    other = load_splits("shapes", 50, 20, 16, seed=1)
    assert content_hash(other[1]) != content_hash(test)


def test_folder_split_drops_duplicates_before_splitting(tmp_path):
    from bench.data.images import image_hashes, load_splits

    for i in range(6):
        _png(tmp_path / "a" / f"{i}.png", colour=(40 * i, 10, 30))
        _png(tmp_path / "b" / f"{i}.png", colour=(40 * i, 10, 30))  # the same pixels in another class: exact duplicates
    train, test = load_splits(f"folder:{tmp_path}", 0, 2, 8)
    assert train.split["duplicates_dropped"] == 6 and len(train.labels) + len(test.labels) == 6
    assert not set(image_hashes(train)) & set(image_hashes(test))
    _, capped = load_splits(f"folder:{tmp_path}", 0, 6, 8)  # a fixed dataset gives at most 20% to its test split
    assert len(capped.labels) == 2


def test_reference_set_never_repeats_and_says_when_it_is_short():
    from bench.data.images import image_hashes, load_splits, reference_set
    from bench.data.images import split_hash as content_hash

    _, test = load_splits("shapes", 10, 40, 16)
    ref, record, held_out = reference_set(test, 25, seed=3)
    assert len(ref.labels) == 25 and record == {"split": "test", "asked": 25, "given": 25, "short": False,
                                                 "hash": content_hash(ref)}
    assert set(image_hashes(ref)) <= set(image_hashes(test))
    # the held-out pool: the other 15 test images, none of them in the reference
    assert sorted(held_out.tolist() + [image_hashes(test).index(h) for h in image_hashes(ref)]) == list(range(40))
    short, record, none_left = reference_set(test, 100)
    assert len(short.labels) == 40 and record["short"] and record["given"] == 40 and record["asked"] == 100
    assert len(set(image_hashes(short))) == 40 and len(none_left) == 0  # every test image once, no repeats


def test_torchvision_split_uses_the_official_files_and_drops_test_copies_of_train(tmp_path):
    from bench.data.images import image_hashes, load_splits

    raw = tmp_path / "MNIST" / "raw"
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(8, 28, 28))
    test = np.concatenate([rng.integers(0, 256, size=(4, 28, 28)), train[:2]])  # two test images copy train ones
    for split, images in (("train", train), ("t10k", test)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", images)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(len(images)) % 10)
    tr, te = load_splits(f"mnist:{tmp_path}", 5, 10, 28)
    assert len(tr.labels) == 5 and len(te.labels) == 4 and te.split["test_duplicates_of_train_dropped"] == 2
    assert not set(image_hashes(tr)) & set(image_hashes(te))
