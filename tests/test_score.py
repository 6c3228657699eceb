"""`gvd score` and `gvd sample --scored` on the smoke preset: the images a run scored, written out and scored again by
`gvd score`, give the run's own numbers (the same readers, reference and metrics); `gvd score`'s reading of folders,
.npz files, arrays, classes and captions, and its one-line errors; the Python API (`bench.score`, `bench.load_run`)."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from bench.cli import main
from bench.data.images import load_splits, make_shapes
from bench.errors import UserError
from bench.run.score import caption_classes, read_samples

SMOKE = ["run", "--preset", "smoke", "--device", "cpu", "--workers", "1", "--set", "mixtures=null",
         "--set", "throughput_budget_s=0"]


pytestmark = pytest.mark.usefixtures("module_cache")  # tests/conftest.py: readers trained once for this module


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, module_cache):  # the cache first: the run trains its readers into it
    out = tmp_path_factory.mktemp("runs") / "smoke"
    assert main(SMOKE + ["--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def shapes_train():
    return load_splits("shapes", 2048, 2000, 16)[0]  # the smoke preset's training split


def _entry(run, model):
    runs = json.loads((run / "results.json").read_text())["runs"]
    return next(r for r in runs if r["model"] == model and r["dataset"] == "shapes" and r["seed"] == 0)


def _numbers(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _score(tmp_path, samples, *extra) -> dict:
    out = tmp_path / "score"
    assert main(["score", str(samples), "shapes", "--preset", "smoke", "--device", "cpu", "--out", str(out),
                 *extra]) == 0
    return json.loads((out / "score.json").read_text())


def test_gvd_score_of_the_images_a_run_scored_gives_the_runs_numbers(smoke_run, tmp_path, capsys):
    """The diffusion model's scored images of the smoke run, written as a .npz and scored by `gvd score` against the
    built-in test split: every metric of its entry agrees (same features, same reference); the calibration rows drawn
    for the same prompts agree with the run's held-out real and copier entries."""
    npz = tmp_path / "scored.npz"
    assert main(["sample", str(smoke_run), "--scored", "--model", "diffusion", "--out", str(npz),
                 "--device", "cpu"]) == 0
    assert "the 32 images diffusion was scored on" in capsys.readouterr().out
    result = _score(tmp_path, npz)
    for model, row in (("diffusion", "samples"), ("held-out-real", "held-out-real"), ("copier", "copier")):
        expected = _numbers(_entry(smoke_run, model)["metrics"])
        got = result["rows"][row]
        assert len(expected) >= 25 and set(expected) <= set(got), (model, set(expected) - set(got))
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (model, key)
    assert result["reference"]["set"] == _entry(smoke_run, "diffusion")["reference"]  # the same test images
    assert result["samples"]["classes"] == "read from the captions"


def test_a_folder_of_8_bit_pngs_scores_within_their_rounding(smoke_run, tmp_path):
    """The diffusion model's scored images as a folder (class sub-folders, metadata.csv, 8-bit PNGs): the numbers
    that count classes agree exactly, FID within a percent (the PNGs round every pixel to 1/255 of the range: 0.03%
    to 0.35% here). (The smoke GAN's images vary by less than that rounding, std 0.0014: only a .npz keeps them.)"""
    folder = tmp_path / "diffusion"
    assert main(["sample", str(smoke_run), "--scored", "--out", str(folder), "--device", "cpu"]) == 0
    assert (folder / "metadata.csv").is_file() and len(list(folder.rglob("*.png"))) == 32
    got = _score(tmp_path, folder)["rows"]["samples"]
    expected = _entry(smoke_run, "diffusion")["metrics"]
    for key in ("modes", "cond_accuracy", "num_samples"):
        assert got[key] == expected[key], key
    for key in ("fid", "fid_lf", "intra_fid"):
        assert got[key] == pytest.approx(expected[key], rel=0.01), key


def test_sample_writes_a_grid_of_at_least_512_pixels(smoke_run, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["sample", str(smoke_run), "--prompt", "a red circle", "--n", "16", "--out", str(out),
                 "--device", "cpu"]) == 0
    assert Image.open(out).size == (552, 552)  # 4 x 4 cells of 16 px with 1 px padding: 69 px, x 8


def test_sample_scored_refuses_what_it_cannot_honour(smoke_run, tmp_path, capsys):
    assert main(["sample", str(smoke_run), "--scored", "--prompt", "a red circle"]) == 2
    assert "drop --prompt" in capsys.readouterr().err
    assert main(["sample", str(smoke_run), "--scored", "--model", "copier", "--out", str(tmp_path / "c")]) == 2
    assert "has no image checkpoint of copier" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert main(["sample", str(smoke_run), "--scored", "--out", str(tmp_path / "full")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["sample", str(smoke_run)]) == 2
    assert "--prompt is required" in capsys.readouterr().err


def test_captions_are_read_back_into_their_classes(shapes_train):
    known = caption_classes(shapes_train)
    red_circle, blue_square = shapes_train.class_names.index("red circle"), shapes_train.class_names.index(
        "blue square")
    assert known["a small red circle"] == red_circle and known["one blue square, large"] == blue_square
    samples = read_samples(np.zeros((2, 3, 16, 16), np.float32), shapes_train, 16,
                           captions=["A  small red Circle", "a picture of a large blue square"])
    assert samples.labels.tolist() == [red_circle, blue_square]
    with pytest.raises(UserError, match="names no one class"):
        read_samples(np.zeros((2, 3, 16, 16), np.float32), shapes_train, 16, captions=["a red circle", "a cat"])


def test_samples_are_read_in_every_form(shapes_train, tmp_path):
    """uint8 (N, H, W, C) at 32 px is the same image as floats at 16 px after resizing; class names or indices;
    greyscale repeated to RGB; a folder's sub-folders give the classes."""
    fresh = make_shapes(4, resolution=32, seed=5)
    as_uint8 = ((fresh.images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    a = read_samples(as_uint8, shapes_train, 16, labels=[shapes_train.class_names[i] for i in fresh.labels])
    b = read_samples(fresh.images.numpy(), shapes_train, 16, labels=fresh.labels.numpy())
    assert a.images.shape == (4, 3, 16, 16) and a.record["resized"].startswith("32x32 -> 16x16")
    assert (a.images - b.images).abs().max() <= 2 / 255 + 1e-6 and a.labels.tolist() == b.labels.tolist()
    grey = read_samples(np.zeros((3, 1, 16, 16), np.float32), shapes_train, 16)
    assert grey.images.shape == (3, 3, 16, 16) and grey.labels is None
    for i, name in enumerate(("red circle", "red circle", "green cross")):
        (tmp_path / name).mkdir(exist_ok=True)
        Image.fromarray(as_uint8[i]).save(tmp_path / name / f"{i}.png")
    folder = read_samples(tmp_path, shapes_train, 16)
    assert [shapes_train.class_names[i] for i in folder.labels] == ["green cross", "red circle", "red circle"]


@pytest.mark.parametrize("make, needle", [
    (lambda p: p / "missing", "no such file or folder"),
    (lambda p: (np.savez(p / "x.npz", pictures=np.zeros((4, 3, 16, 16))), p / "x.npz")[1], "no `images` array"),
    (lambda p: (np.savez(p / "x.npz", images=np.zeros((4, 16, 16))), p / "x.npz")[1], "(N, C, H, W)"),
    (lambda p: (np.savez(p / "x.npz", images=np.full((4, 3, 16, 16), 3.0)), p / "x.npz")[1], "in [-1, 1]"),
    (lambda p: (np.savez(p / "x.npz", images=np.zeros((1, 3, 16, 16))), p / "x.npz")[1], "at least 2"),
    (lambda p: (np.savez(p / "x.npz", images=np.zeros((2, 3, 16, 16)), labels=np.array(["cat", "dog"])),
                p / "x.npz")[1], "'cat', 'dog' are not a class"),
])
def test_bad_samples_are_one_line_and_exit_2_before_any_reader_trains(tmp_path, capsys, monkeypatch, make, needle):
    monkeypatch.setenv("GVD_CACHE", str(tmp_path / "cache"))  # an empty cache: a reader trained would land here
    samples = make(tmp_path)
    assert main(["score", str(samples), "shapes", "--preset", "smoke", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_bad_reference_and_out_are_one_line(tmp_path, capsys):
    np.savez(tmp_path / "s.npz", images=np.zeros((4, 3, 16, 16), np.float32))
    assert main(["score", str(tmp_path / "s.npz"), "cats", "--preset", "smoke"]) == 2
    assert "unknown image dataset 'cats'" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "s.npz"), "shapes", "--preset", "toy"]) == 2
    assert "no image benchmark" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "s.npz"), "shapes", "--out", str(tmp_path / "s.npz")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_unlabelled_samples_get_no_prompt_numbers_and_a_collapse_reads_as_one(tmp_path):
    """Samples with no classes: no prompt accuracy or intra-class FID; one image repeated reads as what it is."""
    from bench import score

    one = np.repeat(make_shapes(1, resolution=16, seed=9).images.numpy(), 32, axis=0)
    rows = score(one, "shapes", preset="smoke", cache=tmp_path)["rows"]
    assert "cond_accuracy" not in rows["samples"] and "intra_fid" not in rows["samples"]
    assert rows["samples"]["duplicate_share"] == pytest.approx(31 / 32) and rows["samples"]["modes"] == 1
    assert rows["samples"]["recall_lf"] < rows["held-out-real"]["recall_lf"]
    assert "cond_accuracy" in rows["held-out-real"] and math.isfinite(rows["copier"]["fid_lf"])


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning",
                            "ignore:`torch.jit.save` is deprecated:FutureWarning")
def test_a_one_class_reference_is_scored_on_inception_features_only(tmp_path, capsys):
    """A folder without class sub-folders has no judge: `gvd score` says what it needs in one line; with an Inception
    file (here clean-fid's convention in a small stand-in, tests/test_inception.py) FID, KID and PRDC are scored and
    no class-reading number is."""
    from test_inception import _CleanFidStandIn, _save, _Trunk  # the stand-in Inception file of the Inception tests

    flat = tmp_path / "flat"
    flat.mkdir()
    pixels = ((make_shapes(60, 16, seed=3).images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(flat / f"{i:02d}.png")
    np.savez(tmp_path / "s.npz", images=make_shapes(8, 16, seed=4).images.numpy())
    assert main(["score", str(tmp_path / "s.npz"), str(flat), "--preset", "smoke"]) == 2
    assert "has one class" in capsys.readouterr().err
    torch.manual_seed(0)
    weights = _save(_CleanFidStandIn(_Trunk().eval()), tmp_path / "inception.pt")
    from bench import score

    result = score(tmp_path / "s.npz", str(flat), preset="smoke", inception_weights=str(weights), cache=tmp_path)
    assert result["reference"]["dataset"] == f"folder:{flat}" and result["readers"]["judge"] is None
    for row in ("samples", "held-out-real", "copier"):
        got = result["rows"][row]
        assert {"fid", "kid", "precision", "recall", "density", "coverage"} <= set(got), row
        assert not {"modes", "cond_accuracy", "fid_lf", "intra_fid", "copy_excess"} & set(got), row
    assert result["unavailable"]["metrics"] == ["modes", "reverse_kl", "forward_kl", "cond_accuracy"]
