"""The judge: reaches its accuracy floor on held-out and on freshly drawn data, labels stacked digits per channel,
gives batch-independent float64 features and trains once per cache key (Inception features: tests/test_inception.py)."""

import os

import numpy as np
import pytest
import torch
from torch import nn

import bench.data.judge as judge_mod
from bench.data.images import (
    COLOURS,
    DataError,
    ImageData,
    _subset,
    load_digits,
    make_shapes,
    make_stacked_digits,
)
from bench.data.judge import (
    JUDGE_MIN_ACCURACY,
    Judge,
    JudgeConfig,
    judge_failure,
    judge_key,
    load_or_train_judge,
    train_judge,
)

QUICK_SHAPES = JudgeConfig(width=16, steps=250)  # ~3 s on one core
QUICK_DIGITS = JudgeConfig(width=8, steps=100)  # ~1 s


def _halves(data: ImageData) -> tuple[ImageData, ImageData]:
    """A training and a test part of data: a seeded 80% and the rest (disjoint)."""
    order = torch.randperm(len(data.labels), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(data.labels))
    return _subset(data, order[:cut]), _subset(data, order[cut:])


@pytest.fixture(scope="module")
def shapes_judge():
    return train_judge(*_halves(make_shapes(1500, 16, seed=0)), QUICK_SHAPES)


@pytest.fixture(scope="module")
def digits():
    return load_digits(16)


def test_quick_shapes_judge_meets_floor_on_fresh_images(shapes_judge):
    assert shapes_judge.accuracy >= JUDGE_MIN_ACCURACY["shapes"]
    fresh = make_shapes(600, 16, seed=123)  # never seen: another seed
    assert (shapes_judge.labels(fresh.images) == fresh.labels).double().mean() >= 0.97
    assert judge_failure("shapes", shapes_judge) is None


def test_quick_digits_judge_and_stacked_digits_per_channel(digits):
    j = train_judge(*_halves(digits), QUICK_DIGITS)
    assert j.accuracy >= JUDGE_MIN_ACCURACY["digits"] and not j.per_channel and j.num_modes == 10
    stacked = make_stacked_digits(300, 16, seed=1)
    sj = train_judge(stacked, stacked, QUICK_DIGITS)  # fits and scores stacked.channel_source: all the digits
    j = train_judge(digits, digits, QUICK_DIGITS)  # the same digits, the same seed: the same network
    assert sj.per_channel and sj.num_modes == 1000 and sj.accuracy == pytest.approx(j.accuracy)
    labels = sj.labels(stacked.images)
    # each channel is labelled by the digit classifier: the triple is right about acc^3 of the time
    assert (labels == stacked.labels).double().mean() >= 0.85
    per_channel = torch.stack([j.labels(stacked.images[:, c:c + 1]) for c in range(3)], 1)
    assert torch.equal(labels, per_channel @ torch.tensor([100, 10, 1]))  # combination rule, independently
    feats = sj.features(stacked.images[:5])
    assert feats.shape == (5, 3 * 4 * QUICK_DIGITS.width)


def test_features_are_float64_and_batch_independent(shapes_judge):
    x = make_shapes(700, 16, seed=5).images
    all_feats = shapes_judge.features(x)  # two batches of the internal 512
    assert all_feats.dtype == np.float64 and all_feats.shape == (700, 4 * QUICK_SHAPES.width)
    np.testing.assert_allclose(shapes_judge.features(x[600:]), all_feats[600:], rtol=1e-5, atol=1e-6)
    assert np.isfinite(all_feats).all() and all_feats.std(0).mean() > 0  # not collapsed
    # red circles (label 0) and red squares (label len(COLOURS)) differ only in shape: their feature means
    # are further apart than a red circle is from its class mean
    labels = make_shapes(700, 16, seed=5).labels.numpy()
    a, b = all_feats[labels == 0], all_feats[labels == len(COLOURS)]
    within = np.linalg.norm(a - a.mean(0), axis=1).mean()
    assert np.linalg.norm(a.mean(0) - b.mean(0)) > within


def test_judge_failure_message():
    weak = Judge(nn.Sequential(), num_modes=24, accuracy=0.9)
    msg = judge_failure("shapes", weak)
    assert "90.0%" in msg and "98%" in msg and "\n" not in msg
    assert judge_failure("folder:/x", weak) is None  # no floor for user data


def test_one_class_folder_has_no_judge():
    one = ImageData(torch.zeros(4, 3, 16, 16), torch.zeros(4, dtype=torch.long), ["x"] * 4, ["only"], 1)
    with pytest.raises(DataError, match="at least two classes"):
        train_judge(one, one, QUICK_DIGITS)


def test_cache_trains_once_and_returns_the_same_judge(tmp_path, digits, monkeypatch):
    cfg = JudgeConfig(width=8, steps=20)
    key = {"name": "digits", "resolution": 16}
    first = load_or_train_judge(*_halves(digits), key, cfg, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted(
        f"judge-{judge_key(*_halves(digits), key, cfg)[:20]}{ext}" for ext in (".json", ".safetensors"))

    def no_training(*args, **kwargs):
        raise AssertionError("retrained on a cache hit")

    monkeypatch.setattr(judge_mod, "train_judge", no_training)
    second = load_or_train_judge(*_halves(digits), key, cfg, str(tmp_path))
    x = digits.images[:200]
    assert torch.equal(first.labels(x), second.labels(x))
    np.testing.assert_allclose(first.features(x), second.features(x), rtol=1e-6, atol=1e-6)
    assert second.accuracy == first.accuracy and second.train_seconds == first.train_seconds
    # a different config or data key is a different judge
    assert judge_key(*_halves(digits), key, JudgeConfig(width=8, steps=21)) != judge_key(*_halves(digits), key, cfg)
    assert judge_key(*_halves(digits), {**key, "resolution": 32}, cfg) != judge_key(*_halves(digits), key, cfg)
    with pytest.raises(AssertionError, match="retrained"):
        load_or_train_judge(*_halves(digits), {"name": "other"}, cfg, str(tmp_path))


def test_damaged_cache_is_retrained(tmp_path, digits):
    cfg = JudgeConfig(width=8, steps=5)
    load_or_train_judge(*_halves(digits), {"n": 1}, cfg, str(tmp_path))
    weights = next(p for p in tmp_path.iterdir() if p.suffix == ".safetensors")
    weights.write_bytes(b"garbage")
    assert load_or_train_judge(*_halves(digits), {"n": 1}, cfg, str(tmp_path)).net is not None


@pytest.mark.slow
@pytest.mark.parametrize("name,resolution", [("shapes", 16), ("shapes", 32), ("digits", 32)])
def test_default_judge_meets_floor(name, resolution):
    data = make_shapes(5000, resolution, seed=0) if name == "shapes" else load_digits(resolution)
    j = train_judge(*_halves(data), JudgeConfig())
    assert j.accuracy >= JUDGE_MIN_ACCURACY[name] and j.train_seconds < 120


def test_judge_fits_the_training_split_and_reports_test_accuracy(monkeypatch):
    from bench.data import judge as judge_mod
    from bench.data.images import image_hashes, load_splits

    train, test = load_splits("stacked-digits", 200, 100, 16)
    seen = {}
    real_fit = judge_mod._fit

    def spy(train_x, train_y, test_x, test_y, *args):
        seen["train"], seen["test"] = set(image_hashes(_as_data(train_x))), set(image_hashes(_as_data(test_x)))
        return real_fit(train_x, train_y, test_x, test_y, *args)

    monkeypatch.setattr(judge_mod, "_fit", spy)
    j = train_judge(train, test, QUICK_DIGITS)
    # fitted on every training digit and on nothing else; scored on the test split's digits only
    assert seen["train"] == set(image_hashes(train.channel_source))
    assert seen["test"] == set(image_hashes(test.channel_source)) and not seen["train"] & seen["test"]
    expected = (j.labels(test.channel_source.images[:, None, 0].expand(-1, 3, -1, -1))[:, None] // 100
                == test.channel_source.labels[:, None]).double().mean()
    assert j.accuracy == pytest.approx(float(expected)) and j.accuracy >= 0.85


def _as_data(images):
    from bench.data.images import ImageData

    return ImageData(images, torch.zeros(len(images), dtype=torch.long), [""] * len(images), ["x"], 1)
