"""Runs that survive (issue 13): faults are results, bad input is one line, no clobbering, clean interruption,
resume, content-keyed caches."""

import json

import numpy as np
import pytest
import torch

from bench import imagebench
from bench.config import preset
from bench.mixtures import MixtureTrained, record_mixture
from bench.report import write_report
from bench.results import SCHEMA, failed_entry, load_results
from bench.guard import interrupted_entry
from bench.rundir import RunDir


def _results(runs: list[dict], **extra) -> dict:
    return {"schema": SCHEMA, "suite": "mix", "created": "now", "device": "cpu", "versions": {"torch": "x"},
            "config": {"seeds": [0, 1], "mixtures": {"num_samples": 200}}, "runs": runs, **extra}


def _mixed_runs() -> list[dict]:
    ok = {"dataset": "ring8", "model": "gan", "seed": 0, "status": "ok",
          "train": {"steps": 3, "examples_seen": 30, "seconds": 1.0, "params_total": 10},
          "metrics": {"modes": 8, "num_modes": 8, "hq_fraction": 0.9, "reverse_kl": 0.01, "num_samples": 200},
          "throughput": {"nfe": 1, "sample_seconds": 0.1, "samples_per_s": 2000.0}, "curve": [{"step": 1, "modes": 2}]}
    diverged = {"dataset": "ring8", "model": "diffusion", "seed": 0, "status": "diverged", "diverged_at_step": None,
                "diverged_in": "sampling", "train": {}, "metrics": {"hq_fraction": 0.0}, "throughput": {},
                "by_sampler": {"ddpm:50": {"hq_fraction": 0.0, "nfe": 50}}}
    image_ok = {"dataset": "folder:/x/cats", "model": "diffusion", "seed": 0, "status": "ok",
                "train": {"steps": 2, "examples_seen": 4, "seconds": 1.0, "params": {"unet": 5}, "params_total": 5,
                          "vae": {"psnr": 20.0, "recon_accuracy": None}},  # a folder without classes: no judge
                "metrics": {"num_samples": 4}, "throughput": {}, "sweep": {"knob": "guidance scale", "points": []}}
    return [ok, diverged, failed_entry("ring8", "gan", 1, "RuntimeError: boom"),
            interrupted_entry("ring8", "diffusion", 1), failed_entry("folder:/x/cats", "gan", 0, "ValueError: bad"),
            image_ok]


def test_report_renders_every_status_and_missing_metrics(tmp_path):
    """The issue's report crashes: a failed image entry with throughput {} (KeyError 'sample_seconds'), a VAE without
    a judge (recon_accuracy None), a failed throughput measurement; every section must still be built."""
    write_report(tmp_path, _results(_mixed_runs(), throughput={"error": "RuntimeError: no"}))
    md = (tmp_path / "report.md").read_text()
    assert "could not be built" not in md, md
    for word in ("interrupted", "diverged", "failed", "RuntimeError: boom", "non-finite at sampling",
                 "no judge to read their classes", "throughput measurement failed"):
        assert word in md, word


def test_results_of_the_wrong_shape_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "results.json"
    for text, needle in [("{", "cannot read it as JSON"), ("[]", "not a gan-vs-diffusion results file"),
                         (json.dumps({"schema": SCHEMA, "runs": {}, "config": {}}), "'runs' must be a list"),
                         (json.dumps(_results([{"dataset": "ring8", "model": "gan", "seed": 0}])), "status None")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=needle) as info:
            load_results(path)
        assert str(path) in str(info.value)


def test_nonfinite_2d_samples_make_the_entry_diverged():
    """A finite training loss with NaN samples (the issue's NaN diffusion run recorded ok) is diverged."""
    mix = preset("smoke").mixtures
    trained = MixtureTrained("diffusion", None, {}, [{"step": 0, "loss": 1.0, "grad_norm": 1.0, "lr": 1e-3}],
                             {"status": "ok"}, 1.0, {"denoiser": 1})
    pts = np.zeros((4, 2))
    pts[1] = np.nan
    by_sampler = {"ddpm:50": {"modes": 1, "num_modes": 8, "hq_fraction": 0.75, "reverse_kl": 1.0, "nfe": 50,
                              "sample_seconds": 0.1, "samples_per_s": 40.0}}
    entry = record_mixture(trained, "ring8", 0, mix, (by_sampler, {"ddpm:50": pts}, [], 0.0))
    assert entry["status"] == "diverged" and entry["diverged_in"] == "sampling"
    assert entry["nonfinite_fraction"] == {"ddpm:50": 0.25}
    pts[1] = 0.0
    assert record_mixture(trained, "ring8", 0, mix, (by_sampler, {"ddpm:50": pts}, [], 0.0))["status"] == "ok"


def _tiny_images():
    cfg = preset("smoke").images
    cfg.num_samples = cfg.curve_samples = cfg.sweep_samples = 8
    cfg.fid_bootstrap, cfg.eval_checkpoints, cfg.guidance_sweep, cfg.truncation_sweep = 0, 1, [1.0, 2.0], [0.5]
    return cfg


def test_one_family_failing_does_not_mark_the_other(tmp_path, monkeypatch):
    """The GAN raising in training fails the GAN entry alone; the diffusion entry is scored as usual; NaN diffusion
    samples make the diffusion entry diverged, and the GAN entry stays ok."""
    monkeypatch.setenv("GVD_CACHE", str(tmp_path / "cache"))

    def broken(*args, **kwargs):
        raise RuntimeError("the GAN broke")

    monkeypatch.setattr(imagebench, "train_dcgan", broken)
    run = RunDir(tmp_path / "run")
    gan, diffusion = imagebench.run_image_dataset("shapes", 0, _tiny_images(), torch.device("cpu"), run,
                                                  tmp_path / "cache", progress=False)
    assert gan["status"] == "failed" and "the GAN broke" in gan["error"]
    assert diffusion["status"] == "ok" and "fid" in diffusion["metrics"], diffusion.get("error")
    assert not run.grid_path("shapes", 0, "gan").exists() and run.grid_path("shapes", 0, "diffusion").exists()
    monkeypatch.undo()
    monkeypatch.setattr(imagebench.ImageModels, "sample_diffusion",
                        lambda self, states, *a, **k: (torch.full((len(states), 3, 16, 16), float("nan")), 3))
    gan, diffusion = imagebench.run_image_dataset("shapes", 0, _tiny_images(), torch.device("cpu"), run,
                                                  tmp_path / "cache", progress=False)
    assert gan["status"] == "ok" and diffusion["status"] == "diverged" and diffusion["diverged_in"] == "sampling"
