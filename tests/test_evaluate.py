"""The evaluation protocol: prompts from the caption distribution, the same seeds and sample counts for every model,
metric-over-training curves that agree with the headline scores, stability read back from the history files, and
mean +- std over seeds."""

import csv
import dataclasses

import numpy as np
import pytest
import torch

from bench.config import preset
from bench.images import make_shapes
from bench.results import summarise
from bench.stability import stability
from bench.suite import _run_mixture


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
    runs = {m: _run_mixture("ring8", m, 0, mix, torch.device("cpu"), out, progress=False)[0] for m in ("gan", "diffusion")}
    return mix, out, runs


def test_mixture_models_share_sample_count_and_budget(mixture_runs):
    mix, _, runs = mixture_runs
    assert runs["gan"]["metrics"]["num_samples"] == runs["diffusion"]["metrics"]["num_samples"] == mix.num_samples
    assert runs["gan"]["train"]["examples_seen"] == runs["diffusion"]["train"]["examples_seen"]


def test_mixture_curve_ends_at_the_headline_scores(mixture_runs):
    mix, _, runs = mixture_runs
    every = mix.steps // mix.eval_checkpoints
    for run in runs.values():
        assert [p["step"] for p in run["curve"]] == [every * (i + 1) for i in range(mix.eval_checkpoints)]
    # the last checkpoint is the final model on the same seeds: the GAN's scores are the headline ones, the
    # diffusion model's those of its curve sampler among the headline samplers
    keys = ("modes", "hq_fraction", "reverse_kl")
    last = lambda run: {k: run["curve"][-1][k] for k in keys}
    assert last(runs["gan"]) == {k: runs["gan"]["metrics"][k] for k in keys}
    assert last(runs["diffusion"]) == {k: runs["diffusion"]["by_sampler"][mix.curve_sampler][k] for k in keys}


def test_mixture_stability_matches_the_history_file(mixture_runs):
    _, out, runs = mixture_runs
    for model, run in runs.items():
        history = _read_history(out / "history" / f"ring8_{model}_seed0.csv")
        assert _same(run["stability"], stability(history, model))
        assert run["stability"]["threshold"] == "modes == 8"


@pytest.fixture(scope="module")
def image_runs(tmp_path_factory):
    from bench.imagebench import run_image_dataset
    from bench.suite import save_checkpoint

    cfg = dataclasses.replace(preset("smoke").images, eval_checkpoints=2, truncation_sweep=[0.5, 1.0],
                              guidance_sweep=[1.0, 3.0], sweep_samples=16, curve_samples=24, fid_bootstrap=10,
                              fid_counts=[8, 16])
    out, cache = tmp_path_factory.mktemp("img"), tmp_path_factory.mktemp("cache")
    entries = run_image_dataset("shapes", 0, cfg, torch.device("cpu"), out, cache, save=save_checkpoint,
                                progress=False)
    return cfg, out, {e["model"]: e for e in entries}


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
        assert _same(run["stability"], stability(_read_history(out / "history" / f"shapes_seed0_{model}.csv"), model))
        assert run["stability"]["threshold"] == "cond_accuracy >= 0.5"
