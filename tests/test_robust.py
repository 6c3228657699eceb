"""Runs that survive (issue 13): faults are results, bad input is one line, no clobbering, clean interruption,
resume, content-keyed caches."""

import dataclasses
import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from processes import alive, children, new_children_alive
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import bench.families.gan
from bench.cli import main
from bench.config import SuiteConfig, preset
from bench.core import files
from bench.core import pool as bench_pool
from bench.core.files import WriteError
from bench.core.guard import (
    Interrupted,
    hold_signals,
    interrupted_entry,
    pending_signal,
    stop_on_signals,
)
from bench.core.results import SCHEMA, failed_entry, load_results
from bench.core.rundir import RunDir
from bench.families import BUILT_IN, Trained
from bench.report.build import write_report
from bench.report.render import to_markdown
from bench.run import images as imagebench
from bench.run import suite
from bench.run.mixtures import MixtureScore, record_mixture, run_mixture
from bench.run.preflight import run_lock
from bench.train import loops as train_module
from bench.train import state as train_state
from bench.train.state import TrainState, steps_to_run
from models.layers import gan_g_loss


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
                         (json.dumps({"schema": SCHEMA, "runs": {}, "config": {}}),
                          "runs must be a list, not an object"),
                         (json.dumps(_results([{"dataset": "ring8", "model": "gan", "seed": 0}])),
                          r"runs\[0\].status is missing"),
                         (json.dumps(_results([{"dataset": "ring8", "model": "gan", "seed": 0, "status": None}])),
                          r"runs\[0\].status is None, not one of ok, diverged, failed, interrupted"),
                         (json.dumps(_results([_mixed_runs()[0]] * 2)),
                          r"runs\[0\] and runs\[1\] are both ring8/gan/0")]:
        path.write_text(text)
        with pytest.raises(ValueError, match=needle) as info:
            load_results(path)
        assert str(path) in str(info.value)


def test_nonfinite_2d_samples_make_the_entry_diverged():
    """A finite training loss with NaN samples (the issue's NaN diffusion run recorded ok) is diverged."""
    trained = Trained(None, {"status": "ok"}, {"steps": 1}, {"diffusion": [{"step": 0, "loss": 1.0, "grad_norm": 1.0,
                                                                            "lr": 1e-3}]}, ema_decay=0.995)
    pts = np.zeros((4, 2))
    pts[1] = np.nan
    by_sampler = {"ddpm:50": {"modes": 1, "num_modes": 8, "hq_fraction": 0.75, "reverse_kl": 1.0, "nfe": 50,
                              "sample_seconds": 0.1, "samples_per_s": 40.0}}
    family = BUILT_IN["diffusion"]
    entry = record_mixture(family, trained, MixtureScore(by_sampler, {"ddpm:50": pts}, {}, [], 0.0, {}), "ring8", 0)
    assert entry["status"] == "diverged" and entry["diverged_in"] == "sampling"
    assert entry["nonfinite_fraction"] == {"ddpm:50": 0.25}
    pts[1] = 0.0
    ok = record_mixture(family, trained, MixtureScore(by_sampler, {"ddpm:50": pts}, {}, [], 0.0, {}), "ring8", 0)
    assert ok["status"] == "ok"


def _tiny_images():
    cfg = preset("smoke").images
    cfg.num_samples = cfg.curve_samples = cfg.sweep_samples = 8
    cfg.fid_bootstrap, cfg.eval_checkpoints, cfg.guidance_sweep, cfg.truncation_sweep = 0, 1, [1.0, 2.0], [0.5]
    return cfg


@pytest.mark.parametrize("raised", [SystemExit(3), KeyboardInterrupt()])
def test_a_family_that_exits_or_raises_keyboard_interrupt_fails_its_own_entry(raised, tmp_path, monkeypatch):
    """A family's training or sampler that calls sys.exit(3) or raises KeyboardInterrupt (code, not a signal: a
    signal reaches gvd as Interrupted) is that family's fault: its entry failed naming it, the other family scored."""
    monkeypatch.setenv("GVD_CACHE", str(tmp_path / "cache"))

    def leaves(*args, **kwargs):
        raise raised

    run = RunDir(tmp_path / "run")
    for broken in (dataclasses.replace(BUILT_IN["gan"], train_image=leaves),
                   dataclasses.replace(BUILT_IN["gan"], sample_image=leaves)):
        gan, diffusion = imagebench.run_image_dataset("shapes", 0, _tiny_images(), torch.device("cpu"), run,
                                                      tmp_path / "cache", [broken, BUILT_IN["diffusion"]],
                                                      progress=False)
        assert gan["status"] == "failed" and gan["error"].startswith(type(raised).__name__), gan.get("error")
        assert diffusion["status"] == "ok", diffusion.get("error")


@pytest.mark.parametrize("body, needle", [("import sys\nsys.exit(3)\n", "SystemExit: 3"),
                                          ("raise KeyboardInterrupt\n", "KeyboardInterrupt")])
def test_a_family_module_that_exits_on_import_is_one_line(body, needle, tmp_path, capsys):
    """The reliability round's family module that calls sys.exit(3) on import: gvd exited 3 with no message. Now one
    line naming the --family and what the module raised, exit 2, nothing written."""
    family = tmp_path / "leaver.py"
    family.write_text(body + "def make():\n    pass\n")
    out = tmp_path / "run"
    _one_line_exit_2(TINY + ["--family", f"leaver={family}:make", "--out", str(out)],
                     f"--family 'leaver={family}:make': {needle}", capsys)
    assert not out.exists()


def test_one_family_failing_does_not_mark_the_other(tmp_path, monkeypatch, capsys):
    """The GAN raising in training fails the GAN entry alone; the diffusion entry is scored as usual; NaN diffusion
    samples make the diffusion entry diverged, and the GAN entry stays ok."""
    monkeypatch.setenv("GVD_CACHE", str(tmp_path / "cache"))

    def broken(*args, **kwargs):
        raise RuntimeError("the GAN broke")

    families = [BUILT_IN["gan"], BUILT_IN["diffusion"]]
    monkeypatch.setattr(bench.families.gan, "train_dcgan", broken)
    run = RunDir(tmp_path / "run")
    gan, diffusion = imagebench.run_image_dataset("shapes", 0, _tiny_images(), torch.device("cpu"), run,
                                                  tmp_path / "cache", families, progress=False)
    assert gan["status"] == "failed" and "the GAN broke" in gan["error"]
    assert diffusion["status"] == "ok" and "fid" in diffusion["metrics"], diffusion.get("error")
    assert not run.grid_path("shapes", 0, "gan").exists() and run.grid_path("shapes", 0, "diffusion").exists()
    # a family that failed to train keeps no checkpoint: `gvd sample` says so in one line
    assert main(["sample", str(run.root), "--model", "gan", "--prompt", "a", "--device", "cpu",
                 "--out", str(tmp_path / "s.png")]) == 2
    assert "no image checkpoint of gan" in capsys.readouterr().err
    monkeypatch.undo()
    nan = dataclasses.replace(BUILT_IN["diffusion"], sample_image=lambda trained, prompts, knob, net=None: (
        torch.full((len(prompts.seeds), 3, 16, 16), float("nan")), 3))
    gan, diffusion = imagebench.run_image_dataset("shapes", 0, _tiny_images(), torch.device("cpu"), run,
                                                  tmp_path / "cache", [BUILT_IN["gan"], nan], progress=False)
    assert gan["status"] == "ok" and diffusion["status"] == "diverged" and diffusion["diverged_in"] == "sampling"


# ---------------------------------------------------------------- every input checked before work starts

TINY = ["run", "--preset", "smoke", "--device", "cpu", "--workers", "1", "--seeds", "0", "--steps", "5",
        "--set", "images=null", "--set", 'mixtures.datasets=["ring8"]', "--set", "mixtures.num_samples=50",
        "--set", "mixtures.eval_checkpoints=0"]


def _one_line_exit_2(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("extra, needle", [
    (["--seeds", "-1"], "seeds must be >= 0"),
    (["--seeds", "99999999999999999999"], "seeds must be >= 0 and < 2147483648"),
    (["--set", "mixtures.samplers=[]"], "mixtures.samplers: needs at least one entry"),
    (["--set", "mixtures.datasets=[]"], "mixtures.datasets: needs at least one entry"),
    (["--set", "mixtures.diffusion_train.ema=5"], "ema must be >= 0 and < 1"),
    (["--set", "throughput_budget_s=nan"], "must be a finite number"),
])
def test_bad_run_settings(extra, needle, tmp_path, capsys):
    _one_line_exit_2(TINY + extra + ["--out", str(tmp_path / "out")], needle, capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, needle", [
    (["--set", "images.datasets=[]"], "images.datasets: needs at least one entry"),
    (["--set", "images.caption_dropout=2"], "caption_dropout must be >= 0 and < 1"),
    (["--set", "images.unet.heads=3"], "images.unet: UNet channels (16, 16) must all be divisible by heads=3"),
    (["--set", "images.text.heads=5"], "images.text: text width 16 is not divisible by heads=5"),
])
def test_bad_image_settings(extra, needle, tmp_path, capsys):
    _one_line_exit_2(["run", "--preset", "smoke", "--out", str(tmp_path / "out")] + extra, needle, capsys)
    assert not (tmp_path / "out").exists()


def test_out_under_a_file_and_bad_inception_weights(tmp_path, capsys):
    (tmp_path / "file").write_text("keep")
    _one_line_exit_2(TINY + ["--out", str(tmp_path / "file" / "run")], "is a file, not a folder", capsys)
    (tmp_path / "weights.pt").write_text("not torchscript")
    _one_line_exit_2(["run", "--preset", "smoke", "--out", str(tmp_path / "o"), "--inception-weights",
                      str(tmp_path / "weights.pt")], "cannot load Inception weights", capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "weights.pt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_in_a_read_only_folder(tmp_path, capsys):
    (tmp_path / "ro").mkdir(mode=0o500)
    _one_line_exit_2(TINY + ["--out", str(tmp_path / "ro" / "run")], "is not writable", capsys)


def _checkpoint_dir(tmp_path, kind: str):
    run = tmp_path / kind
    (run / "checkpoints").mkdir(parents=True)
    path = run / "checkpoints" / "shapes_seed0_models.safetensors"
    if kind == "damaged":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    elif kind == "no-metadata":
        save_file({"G.w": torch.zeros(2)}, str(path))
    elif kind in ("nested", "a-list"):  # hostile metadata: nesting past the parser's depth, a config that is no object
        config = "[" * 100_000 + "]" * 100_000 if kind == "nested" else "[1, 2]"
        save_file({"G.w": torch.zeros(2)}, str(path), metadata={"config": config})
    else:  # an image checkpoint's keys, configs that do not build the networks
        save_file({"G.w": torch.zeros(2)}, str(path), metadata={"config": json.dumps(
            {"family": "diffusion", "tokenizer": {"words": []}, "networks": {"unet": {"bogus": 1}}, "text": {}})})
    return run


@pytest.mark.parametrize("kind, needle", [("damaged", "not a readable gan-vs-diffusion checkpoint"),
                                          ("no-metadata", "not a readable gan-vs-diffusion checkpoint"),
                                          ("nested", "shapes_seed0_models.safetensors: not a readable gan-vs"),
                                          ("a-list", "shapes_seed0_models.safetensors: not a readable gan-vs"),
                                          ("foreign", "not a readable image checkpoint")])
def test_sample_refuses_damaged_checkpoints(kind, needle, tmp_path, capsys):
    run = _checkpoint_dir(tmp_path, kind)
    _one_line_exit_2(["sample", str(run), "--prompt", "a", "--device", "cpu", "--out", str(tmp_path / "s.png")],
                     needle, capsys)
    assert not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("extra, needle", [
    (["--out", "x.txt"], "give a .png file name"),
    (["--n", "10000000"], "--n must be between 1 and 4096"),
    (["--guidance", "nan"], "--guidance must be a finite number"),
    (["--guidance", "-1"], "--guidance must be >= 0"),
])
def test_sample_bad_arguments_before_sampling(extra, needle, tmp_path, capsys):
    run = _checkpoint_dir(tmp_path, "foreign")
    _one_line_exit_2(["sample", str(run), "--prompt", "a", "--device", "cpu"] + extra, needle, capsys)


def test_throughput_budget_nan(capsys):
    _one_line_exit_2(["throughput", "--preset", "smoke", "--budget", "nan"], "--budget must be a finite number",
                     capsys)


@pytest.mark.parametrize("command", ["report", "compare"])
def test_report_and_compare_on_json_of_the_wrong_shape(command, tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps({"schema": SCHEMA, "runs": [1], "config": {}}))
    args = [command, str(tmp_path)] + ([str(tmp_path)] if command == "compare" else [])
    _one_line_exit_2(args, "runs[0] must be an object, not an integer", capsys)
    (tmp_path / "results.json").write_text('{"schema": ')
    _one_line_exit_2(args, f"{tmp_path / 'results.json'}: cannot read it as JSON", capsys)
    assert not (tmp_path / "report.md").exists()


# ---------------------------------------------------------------- no clobbering


def test_a_second_run_into_a_run_folder_is_refused_then_forced(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("the first run's")
    _one_line_exit_2(TINY + ["--out", str(out)], "--resume", capsys)
    assert (out / "results.json").read_text() == "the first run's"
    assert main(TINY + ["--out", str(out), "--force"]) == 0
    capsys.readouterr()
    archived = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(archived) == 1 and (archived[0] / "results.json").read_text() == "the first run's"
    assert [r["status"] for r in load_results(out / "results.json")["runs"]] == ["ok"] * 3  # GAN, diffusion, real
    _one_line_exit_2(["run", "--resume", str(out), "--preset", "smoke"], "drop --preset", capsys)
    _one_line_exit_2(["run", "--resume", str(tmp_path / "nope")], "no config.json", capsys)


@pytest.mark.parametrize("field, value, needle", [
    ("throughput", "fast", "throughput must be an object, not the string 'fast'"),  # the round's AttributeError
    ("stages", [], "stages must be an object, not a list"),
    ("panel", {"shapes": 3}, "panel.shapes must be an object, not an integer"),
])
def test_resume_of_a_results_json_with_a_field_of_the_wrong_type(field, value, needle, tmp_path, capsys):
    """A finished run whose results.json was edited (its `throughput` a string: an AttributeError traceback in the
    reliability round): `--resume` is one line naming the file and the field, exit 2, and the file is left as it was."""
    out = tmp_path / "run"
    assert main(TINY + ["--out", str(out)]) == 0
    capsys.readouterr()
    results = json.loads((out / "results.json").read_text())
    (out / "results.json").write_text(json.dumps({**results, field: value}))
    before = (out / "results.json").read_text()
    _one_line_exit_2(["run", "--resume", str(out)], f"{out / 'results.json'}: {needle}", capsys)
    assert (out / "results.json").read_text() == before


def _entries(out: Path) -> dict[tuple, str]:
    """{(dataset, model, seed): the entry as JSON text} of a run folder's results.json."""
    return {(r["dataset"], r["model"], r["seed"]): json.dumps(r) for r in load_results(out / "results.json")["runs"]}


def _with_seeds(args: list[str], *seeds: str) -> list[str]:
    i = args.index("--seeds")
    return args[:i + 1] + list(seeds) + args[i + 2:]


def test_seeds_added_to_a_finished_run_train_only_the_new_ones(tmp_path, monkeypatch, capsys):
    """`gvd run --resume DIR --seeds 0 1` on a finished one-seed run: only seed 1's jobs run, every seed-0 entry of
    results.json stays byte for byte, config.json and results.json record seeds 0 1, the verdict is rebuilt over both,
    and seed 1's numbers are those of a run with both seeds from the start. Dropping a seed is refused before anything
    is written; config.json may hold more seeds than results.json (a --seeds resume that stopped), nothing else."""
    out = tmp_path / "run"
    assert main(TINY + ["--out", str(out)]) == 0
    before = _entries(out)
    jobs = []
    real = suite._run_job
    monkeypatch.setattr(suite, "_run_job", lambda args: jobs.append(args[0].label) or real(args))
    assert main(["run", "--resume", str(out), "--seeds", "0", "1", "--workers", "1"]) == 0
    assert sorted(jobs) == sorted(f"ring8 seed 1 {f}" for f in ("gan", "diffusion", "held-out-real"))
    after = _entries(out)
    assert {k: v for k, v in after.items() if k[2] == 0} == before and len(after) == 2 * len(before)
    assert json.loads((out / "config.json").read_text())["seeds"] == [0, 1]
    assert load_results(out / "results.json")["config"]["seeds"] == [0, 1]
    verdict = (out / "report.md").read_text().split("\n## Verdict\n")[1].split("\n## ")[0]
    assert "(n=2)" in verdict and "(n=1)" not in verdict
    assert main(_with_seeds(TINY, "0", "1") + ["--out", str(tmp_path / "unbroken")]) == 0
    unbroken = {k: json.loads(v)["metrics"] for k, v in _entries(tmp_path / "unbroken").items()}
    assert {k: json.loads(v)["metrics"] for k, v in after.items()} == unbroken
    capsys.readouterr()

    results = (out / "results.json").read_bytes()
    _one_line_exit_2(["run", "--resume", str(out), "--seeds", "1", "2"], "give them all", capsys)
    assert (out / "results.json").read_bytes() == results and json.loads((out / "config.json").read_text())[
        "seeds"] == [0, 1]
    jobs.clear()
    assert main(["run", "--resume", str(out), "--workers", "1"]) == 0 and jobs == []  # nothing left to run
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "seeds": [0, 1, 2]}))  # a --seeds resume stopped early
    assert main(["run", "--resume", str(out), "--workers", "1"]) == 0
    assert sorted(jobs) == sorted(f"ring8 seed 2 {f}" for f in ("gan", "diffusion", "held-out-real"))
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "seeds": [0, 1], "mixtures": {**config["mixtures"],
                                                                                           "steps": 6}}))
    capsys.readouterr()
    _one_line_exit_2(["run", "--resume", str(out)], "(mixtures.steps, seeds)", capsys)


@pytest.mark.slow  # two smoke runs with the image benchmark: ~50 s on a busy 2-core machine
def test_seeds_added_to_a_finished_smoke_run_keep_every_image_entry(tmp_path, monkeypatch):
    """The issue's case on the smoke preset (2D and images): `--seeds 0`, then `--resume --seeds 0 1`: only seed 1's
    jobs run (its image families and calibration rows included), every seed-0 entry and checkpoint is left as it
    was, and the report is rebuilt over two seeds."""
    out = tmp_path / "smoke"
    assert main(["run", "--preset", "smoke", "--device", "cpu", "--workers", "1", "--seeds", "0", "--steps", "5",
                 "--out", str(out)]) == 0
    before = _entries(out)
    checkpoints = {p: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()}
    jobs = []
    real = suite._run_job
    monkeypatch.setattr(suite, "_run_job", lambda args: jobs.append(args[0]) or real(args))
    assert main(["run", "--resume", str(out), "--seeds", "0", "1", "--workers", "1"]) == 0
    assert jobs and {job.seed for job in jobs} == {1}
    assert {job.benchmark for job in jobs} == {"mixture", "image"}
    after = _entries(out)
    assert {k: v for k, v in after.items() if k[2] == 0} == before and len(after) == 2 * len(before)
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == checkpoints
    assert "seeds 0, 1" in (out / "report.md").read_text()


# ---------------------------------------------------------------- interruption and resume

RESUMABLE = ["--preset", "smoke", "--device", "cpu", "--seeds", "0", "1", "--steps", "400", "--set", "images=null",
             "--set", 'mixtures.datasets=["ring8"]', "--set", "mixtures.num_samples=100"]


def _interrupt(out: Path, sig: int) -> subprocess.CompletedProcess:
    """`gvd run` with two worker processes, stopped by sig once its first entry is in results.json."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", *RESUMABLE, "--workers", "2", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    while not (out / "results.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = children(proc.pid)
    proc.send_signal(sig)
    t0 = time.monotonic()
    stdout, stderr = proc.communicate(timeout=60)
    stopped_in = time.monotonic() - t0
    assert stopped_in < 15, f"took {stopped_in:.1f} s to stop"
    time.sleep(0.5)
    assert workers and not [p for p in workers if alive(p)], "worker processes left behind"
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.slow  # two CLI subprocesses, worker spawns and three 2D runs: ~50 s on a busy 2-core machine
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupt_then_resume_gives_the_uninterrupted_metrics(sig, tmp_path):
    """SIGTERM / SIGINT mid-run: exit 143 / 130 within seconds, no worker left, results.json with the finished
    entries and the rest 'interrupted'; `--resume` then completes it with exactly the metrics of one unbroken run
    (which uses one process instead of two: the numbers do not depend on --workers)."""
    out = tmp_path / "stopped"
    proc = _interrupt(out, sig)
    assert proc.returncode == 128 + sig, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "--resume" in proc.stderr
    statuses = [r["status"] for r in load_results(out / "results.json")["runs"]]
    assert len(statuses) == 6 and "ok" in statuses and "interrupted" in statuses, statuses  # 3 families x 2 seeds
    assert "interrupted" in (out / "report.md").read_text()
    assert main(["run", "--resume", str(out), "--workers", "2"]) == 0
    assert not list((out / "state").glob("*.safetensors")), "states of recorded entries are removed"
    assert main(["run", *RESUMABLE, "--workers", "1", "--out", str(tmp_path / "unbroken")]) == 0
    resumed = load_results(out / "results.json")["runs"]
    unbroken = load_results(tmp_path / "unbroken" / "results.json")["runs"]
    assert [(r["model"], r["seed"], r["status"]) for r in resumed] == [(r["model"], r["seed"], "ok") for r in unbroken]
    assert [r["metrics"] for r in resumed] == [r["metrics"] for r in unbroken]
    scores = lambda runs: [{label: {k: v for k, v in m.items() if "sample" not in k}  # noqa: E731 -- timings differ
                            for label, m in r["by_sampler"].items()} for r in runs if "by_sampler" in r]
    assert scores(resumed) == scores(unbroken)
    curve = lambda runs: [r["curve"] for r in runs]  # noqa: E731
    assert curve(resumed) == curve(unbroken)


# ---------------------------------------------------------------- caches keyed by content


def _write_folder(root: Path, colours: dict[str, tuple]) -> None:
    for name, colour in colours.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(12):
            shade = tuple(min(255, c + 3 * i) for c in colour)
            Image.new("RGB", (8, 8), shade).save(root / name / f"{i}.png")


def test_judge_cache_is_invalidated_when_the_images_change(tmp_path):
    """Same folder name, same sizes, edited images: the issue's stale judge (accuracy 1.0 where a fresh one scores
    0.5). The cached judge must be reused for the same images and retrained for changed ones."""
    cfg = _tiny_images()
    cfg.resolution, cfg.num_train, cfg.judge.steps = 8, 16, 30
    folder, cache = tmp_path / "pets", tmp_path / "cache"
    _write_folder(folder, {"cats": (200, 0, 0), "dogs": (0, 0, 200)})
    prep = lambda: imagebench.prepare(f"folder:{folder}", cfg, torch.device("cpu"), cache)  # noqa: E731
    first = prep().judge
    assert len(list(cache.glob("judge-*.safetensors"))) == 1
    assert prep().judge.accuracy == first.accuracy and len(list(cache.glob("judge-*.safetensors"))) == 1
    _write_folder(folder, {"cats": (90, 90, 90), "dogs": (90, 90, 90)})  # now the classes look alike
    prep()
    assert len(list(cache.glob("judge-*.safetensors"))) == 2


@pytest.mark.parametrize("model", ["gan", "diffusion"])
def test_a_2d_training_resumes_mid_way_to_the_same_result(model, tmp_path, monkeypatch):
    """A real SIGTERM during step 15 of 30: the loop finishes the step, saves its state there (the interval alone,
    every 30 steps, would have saved nothing) and raises Interrupted. Run again, the training continues from step 15
    with its weights, EMA, optimisers, schedule, random generators, history and snapshots, and ends exactly where
    one unbroken training ends (the same history, metrics and curve)."""
    mix = preset("smoke").mixtures
    mix.num_samples, mix.samplers, mix.eval_checkpoints = 100, ["ddim:5"], 5
    unbroken, _ = run_mixture("ring8", BUILT_IN[model], 0, mix, "cpu", RunDir(tmp_path / "a"), progress=False)
    run = RunDir(tmp_path / "b")
    original = TrainState.step_done
    monkeypatch.setattr(train_state, "STATE_SAVES", 1)

    def signal_after_14(self, steps_done, *args, **kwargs):
        original(self, steps_done, *args, **kwargs)
        if steps_done == 14:  # held by the loop until step 15 ends
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(TrainState, "step_done", signal_after_14)
    with pytest.raises(Interrupted), stop_on_signals():
        run_mixture("ring8", BUILT_IN[model], 0, mix, "cpu", run, progress=False)
    assert run.state_path("ring8", 0, model).is_file()
    monkeypatch.undo()
    resumed_steps = []
    monkeypatch.setattr(TrainState, "step_done",
                        lambda self, n, *a, **k: (resumed_steps.append(n), original(self, n, *a, **k)))
    resumed, _ = run_mixture("ring8", BUILT_IN[model], 0, mix, "cpu", run, progress=False)
    assert resumed_steps[0] == 16, "the resumed training starts after the 15 steps saved at the signal"
    assert _steps_done(run.state_path("ring8", 0, model)) == 30  # kept, final, until results.json holds the entry
    assert run.history_path("ring8", 0, model).read_text() == RunDir(tmp_path / "a").history_path(
        "ring8", 0, model).read_text()
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN (no HQ sample) == NaN
    assert same(resumed["metrics"], unbroken["metrics"]) and same(resumed["curve"], unbroken["curve"])


def test_an_unreadable_state_starts_over_and_a_state_that_does_not_fit_is_named(tmp_path):
    """A cut-off state file (the process died mid-write outside the atomic rename, or a disk fault) cannot be read:
    the training starts from step 0. A readable state for other networks raises, naming the file and what to do
    (the training fails rather than go on from a mix of saved and fresh weights)."""
    path = tmp_path / "state.safetensors"
    TrainState(path, 1, {}).save(3, {"m": torch.nn.Linear(2, 3)}, [], [])
    with pytest.raises(RuntimeError, match="state.safetensors: the saved training state does not fit.*remove the"):
        TrainState(path, 1, {}).restore({"m": torch.nn.Linear(2, 4)}, [], None, None, None)
    path.write_bytes(path.read_bytes()[:100])
    assert TrainState(path, 1, {}).restore({"m": torch.nn.Linear(2, 3)}, [], None, None, None) == 0


@pytest.mark.parametrize("claim, history", [(10**9, 3), (3, 2), (-1, 0)])
def test_a_state_claiming_steps_it_did_not_take_is_named_not_trusted(claim, history, tmp_path):
    """A hand-edited state (steps done beyond the training's, or not matching its own history) raises naming the
    file: the entry fails instead of skipping its training and recording itself ok."""
    path, net = tmp_path / "state.safetensors", torch.nn.Linear(2, 3)
    TrainState(path, 1, {}).save(claim, {"m": net}, [{"loss": 1.0}] * history, [])
    with pytest.raises(RuntimeError, match=f"state.safetensors: the saved state claims {claim} steps done of 5"):
        list(steps_to_run(5, TrainState(path, 1, {}), {"m": net}, [], progress=False))


def test_a_state_with_absurdly_nested_metadata_is_unreadable_so_training_starts_over(tmp_path):
    path, net = tmp_path / "state.safetensors", torch.nn.Linear(2, 3)
    save_file({"w": torch.zeros(1)}, str(path), metadata={"train_state": "[" * 100_000 + "]" * 100_000})
    assert TrainState(path, 1, {}).restore({"m": net}, [], None, None, None) == 0


def test_training_seconds_leave_the_states_own_writes_out(tmp_path, monkeypatch):
    """Three state writes of 0.2 s each (a large network, a slow disk) are not training time: TrainState.seconds()
    and the saved seconds stay near zero; offset() takes them off a wall time measured around the training, and a
    restored state carries the saved training seconds on."""
    real = train_state.save_tensors
    monkeypatch.setattr(train_state, "save_tensors", lambda *a, **k: (time.sleep(0.2), real(*a, **k)))
    state = TrainState(tmp_path / "s.safetensors", 1, {})
    for n in range(3):
        state.save(n, {"m": torch.nn.Linear(2, 2)}, [], [])
    assert state.io_seconds >= 0.6 and state.seconds() < 0.2 and state.offset() == -state.io_seconds
    again = TrainState(tmp_path / "s.safetensors", 1, {})
    again.restore({"m": torch.nn.Linear(2, 2)}, [], None, None, None)
    assert 0 < again.seconds_before < 0.2 and again.offset() == again.seconds_before - again.io_seconds


def test_a_held_signal_waits_for_the_step_and_a_second_ctrl_c_stops_at_once():
    """Inside hold_signals the first signal is noted, not raised; a repeated SIGTERM (a scheduler's or a parent's
    duplicate) is ignored; a second SIGINT (the README's second Ctrl-C) raises at once."""
    with stop_on_signals():
        with pytest.raises(Interrupted) as stop, hold_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            assert pending_signal() == signal.SIGTERM  # noted once, and the block goes on
            os.kill(os.getpid(), signal.SIGINT)
            pytest.fail("the second Ctrl-C did not raise")
        assert stop.value.exit_code == 130 and pending_signal() == 0


@pytest.mark.parametrize("ending", ["diverged", "raised", "between trainings"])
def test_a_held_signal_is_acted_on_however_the_training_ends(ending):
    """A signal held during a step whose loop then stops without reaching the step's end (a diverged loop's `break`,
    an exception) raises Interrupted when the hold ends, in the caller's frame (chained to the exception); one held
    between two trainings stops the next before its first step."""
    taken = []
    with stop_on_signals(), pytest.raises(Interrupted) as stop, hold_signals():
        for step in steps_to_run(5, None, {}, [], progress=False):
            taken.append(step)
            os.kill(os.getpid(), signal.SIGTERM)
            if ending == "diverged":
                break
            if ending == "raised":
                raise ValueError("a failed step")
            if ending == "between trainings":
                taken.extend(steps_to_run(5, None, {}, [], progress=False))  # the next training
    assert stop.value.exit_code == 143 and pending_signal() == 0 and taken == [0]
    assert isinstance(stop.value.__cause__, ValueError) == (ending == "raised")


def test_a_signal_in_the_step_where_a_2d_gan_diverges_still_stops_the_run(tmp_path, monkeypatch):
    """SIGTERM during the step whose loss turns NaN: the loop breaks (diverged) before the step's end, and the run
    must still stop (Interrupted from run_mixture), not go on to score the diverged model as if nothing came."""
    losses = []

    def nan_at_the_fifth(*args, **kwargs):
        losses.append(gan_g_loss(*args, **kwargs))
        if len(losses) == 5:
            os.kill(os.getpid(), signal.SIGTERM)
            return losses[-1] * float("nan")
        return losses[-1]

    monkeypatch.setattr(train_module, "gan_g_loss", nan_at_the_fifth)
    mix = preset("smoke").mixtures
    with stop_on_signals(), pytest.raises(Interrupted):
        run_mixture("ring8", BUILT_IN["gan"], 0, mix, "cpu", RunDir(tmp_path), progress=False)
    assert len(losses) == 5


def test_a_pool_worker_saves_its_training_state_when_the_jobs_stop(tmp_path):
    """The pool's stop (what a Ctrl-C or SIGTERM of `gvd run` does to its workers: bench/core/pool.py) reaches a
    worker mid-training: it finishes the step, saves its state there, and exits. The stop waits for an event, the
    first save by the interval (every 2,000 of 20,000 steps), so the worker is known to be training however slowly a
    loaded machine runs it; the state it leaves is then of a step the interval does not save (999 times in 1,000)."""
    mix = preset("smoke").mixtures
    mix.steps, mix.eval_checkpoints = 20_000, 0
    path = RunDir(tmp_path).state_path("ring8", 0, "diffusion")
    cfg = SuiteConfig(name="smoke", seeds=[0], mixtures=mix)
    jobs = [(suite.Job("mixture", "ring8", 0, ("diffusion",), 1.0), cfg, "cpu", tmp_path),
            (suite.Job("mixture", "ring8", 1, ("diffusion",), 1.0), cfg, "cpu", tmp_path / "other")]
    deadline = time.monotonic() + 1200  # a hang guard only: the stop waits for the event, the first interval save
    why = []

    def poll():
        if path.exists():
            why.append("saved")
        elif time.monotonic() > deadline:
            why.append("timed out")
        if why:
            raise Interrupted(signal.SIGTERM)

    recorded = []
    with pytest.raises(Interrupted):
        bench_pool.run_jobs(suite._run_job, jobs, 2, lambda job, out: recorded.append(job), on_poll=poll)
    assert why == ["saved"], "no interval save within 1,200 s"
    assert not recorded and not multiprocessing.active_children()
    steps = _steps_done(path)
    assert 2_000 < steps < 20_000 and steps % 2_000 != 0, steps


def _steps_done(path: Path) -> int:
    """The steps done that a saved training state records."""
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["train_state"])["steps_done"]


def _timeless(value):
    """A results.json entry without its wall times and rates (which differ between any two runs)."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if "seconds" not in k and not k.endswith("per_s")}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def test_an_image_run_resumes_mid_way_to_the_same_result(tmp_path, monkeypatch):
    """A real SIGTERM during step 6 of the UNet's 12: the GAN and the VAE have finished (their final states are kept
    until the entries are recorded; the text encoder is the dataset's, cached) and the UNet saves its state when the
    step ends. Run again, nothing finished is retrained, the UNet continues from step 6, and both entries and every
    history equal those of one unbroken run; the final states stay until the suite has the entries in results.json."""
    monkeypatch.setenv("GVD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(train_state, "STATE_SAVES", 1)  # no interval saves: only the end of a training and the signal
    cfg = _tiny_images()
    cfg.steps, cfg.eval_checkpoints = 12, 2
    families = [BUILT_IN["gan"], BUILT_IN["diffusion"]]
    run = lambda name: imagebench.run_image_dataset(  # noqa: E731
        "shapes", 0, cfg, torch.device("cpu"), RunDir(tmp_path / name), tmp_path / "cache", families, progress=False)
    unbroken = run("a")
    assert [e["status"] for e in unbroken] == ["ok", "ok"]
    parts = ("gan", "diffusion-vae", "diffusion")  # the state of every training, named by its family: GAN, VAE, UNet
    original, taken = TrainState.step_done, []

    def signal_in_the_unet(self, steps_done, *args, **kwargs):
        original(self, steps_done, *args, **kwargs)
        taken.append((self.path.stem.rsplit("_", 1)[1], steps_done))
        if taken[-1] == ("diffusion", 5):  # held by the loop until step 6 ends
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(TrainState, "step_done", signal_in_the_unet)
    with pytest.raises(Interrupted), stop_on_signals():
        run("b")
    states = {part: RunDir(tmp_path / "b").state_path("shapes", 0, part) for part in parts}
    assert all(path.is_file() for path in states.values())
    taken.clear()
    resumed = run("b")
    assert taken == [("diffusion", n) for n in range(7, 13)], "only the UNet's last six steps are taken again"
    assert [_steps_done(states[part]) for part in parts] == [12, 4, 12]
    assert json.dumps(_timeless(resumed), sort_keys=True) == json.dumps(_timeless(unbroken), sort_keys=True)
    for part in ("text", "gan", "diffusion-vae", "diffusion"):  # every history file
        assert (RunDir(tmp_path / "b").history_path("shapes", 0, part).read_text()
                == RunDir(tmp_path / "a").history_path("shapes", 0, part).read_text())
    assert resumed[1]["train"]["seconds"] > 0




def test_a_rerun_image_entry_is_measured_whole(tmp_path, monkeypatch):
    """Entries marked failed and run again by --resume (the throughput stage measured before and kept) come back
    with everything a first run records: training FLOPs, the curve's FLOPs, and the entry's throughput fields."""
    monkeypatch.setenv("GVD_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    args = ["run", "--preset", "smoke", "--device", "cpu", "--workers", "1", "--set", "mixtures=null",
            "--set", "images.steps=3", "--out", str(out)]
    assert main(args) == 0
    results = load_results(out / "results.json")
    first = {r["model"]: r for r in results["runs"]}
    for entry in results["runs"]:
        entry["status"] = "failed"
    RunDir(out).write_results(results)
    assert main(["run", "--resume", str(out), "--workers", "1"]) == 0
    again = load_results(out / "results.json")
    for entry in again["runs"]:
        if entry["role"] != "model":
            continue
        assert entry["status"] == "ok" and entry["train"]["flops"] > 0, entry["model"]
        assert entry["curve"] and all(p["train_flops"] > 0 for p in entry["curve"]), entry["model"]
        assert entry["throughput"]["sampling"] == first[entry["model"]]["throughput"]["sampling"], entry["model"]
        assert entry["throughput"]["train_flops_per_image"] > 0
    assert again["stages"]["invocations"] == 2 and again["stages"]["wall_s"] > results["stages"]["wall_s"]


KILLER = """import dataclasses, multiprocessing, os, signal
import mean_family


def train(task):
    if multiprocessing.parent_process() is not None:  # in a worker process: die as the OOM killer makes one die
        os.kill(os.getpid(), signal.SIGKILL)
    return mean_family.train(task)


def make():
    return dataclasses.replace(mean_family.make(), name="killer", train_image=train)
"""


def test_a_killed_worker_stops_the_run_in_one_line_and_a_resume_finishes_it(tmp_path, monkeypatch, capsys):
    """A worker process killed mid-job (SIGKILL, as by the OOM killer; a family that kills its own worker here):
    the run does not wait for ever for its job. It stops in one line naming the job and the exit status, exit 1,
    no worker left; results.json and the report hold what finished, the rest `interrupted`. --resume (in one
    process, where this family lives) finishes every entry."""
    monkeypatch.setenv("GVD_CACHE", str(tmp_path / "cache"))
    family = tmp_path / "killer.py"
    family.write_text(KILLER)
    out = tmp_path / "run"
    args = ["run", "--preset", "smoke", "--device", "cpu", "--workers", "2", "--set", "mixtures=null",
            "--set", "images.steps=3", "--set", "throughput_budget_s=0", "--family", f"killer={family}:make",
            "--out", str(out)]
    before = set(children(os.getpid()))
    assert main(args) == 1
    err = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.startswith("gvd: ")]
    assert len(err) == 1 and "exit status -9) while running shapes seed 0 killer" in err[0], err
    assert f"gvd run --resume {out}" in err[0]
    assert not new_children_alive(os.getpid(), before)
    runs = load_results(out / "results.json")["runs"]
    assert {r["status"] for r in runs} <= {"ok", "interrupted"} and (out / "report.html").exists()
    assert next(r for r in runs if r["model"] == "killer")["status"] == "interrupted"
    assert main(["run", "--resume", str(out), "--workers", "1", "--trust-family-code"]) == 0
    assert {r["status"] for r in load_results(out / "results.json")["runs"]} == {"ok"}


SLEEPER = """import dataclasses, os, signal, time
from pathlib import Path
import mean_family

HERE = Path(__file__).parent


def train(task):
    if (HERE / "sleep").exists():  # a training that ignores every stop: it sleeps (a sleep resumes after a handler)
        if (HERE / "mask").exists():  # ... or where no Python handler can run, as inside C code: signals masked
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        (HERE / "training").write_text(str(os.getpid()))
        while True:
            time.sleep(3600)
    return mean_family.train(task)


def make():
    return dataclasses.replace(mean_family.make(), name="sleeper", train_image=train)
"""


@pytest.mark.slow  # per case a CLI subprocess to the sleeping training, the grace, the report, then a resume: ~1 min
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("signals, masked", [((signal.SIGINT,), False), ((signal.SIGINT, signal.SIGINT), False),
                                             ((signal.SIGTERM,), False), ((signal.SIGTERM,), True)],
                         ids=["SIGINT", "SIGINT-twice", "SIGTERM", "SIGTERM-masked"])
def test_a_family_that_sleeps_through_the_signal_is_stopped_after_the_grace(signals, masked, workers, tmp_path,
                                                                            module_cache):
    """A user family whose training sleeps and never looks at the stop (issue 36: with --workers 1 SIGTERM never
    stopped it; after two SIGINTs a worker was alive 93 s later): one SIGINT or SIGTERM stops the whole process tree
    once the grace (GVD_STOP_SECONDS) has run out, exit 130 / 143 with no traceback, the sleeping training's entry
    recorded as interrupted; `--resume` (the family now trains) finishes every entry. "masked": the training blocks
    the signals, as code inside C does where no Python handler runs: the process ends 5 s after the grace, its
    unfinished entries marked interrupted in results.json."""
    family = tmp_path / "sleeper.py"
    family.write_text(SLEEPER)
    (tmp_path / "sleep").touch()
    if masked:
        (tmp_path / "mask").touch()
    out = tmp_path / "run"
    tests = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": f"{tests.parent}{os.pathsep}{tests}", "GVD_STOP_SECONDS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "--preset", "smoke", "--device", "cpu",
                             "--workers", str(workers), "--set", "mixtures=null", "--set", "images.steps=3",
                             "--set", "throughput_budget_s=0", "--family", f"sleeper={family}:make", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 400
    while not (tmp_path / "training").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    sleeper = int((tmp_path / "training").read_text())
    tree = children(proc.pid) + [sleeper]
    sig = signals[0]
    for i, each in enumerate(signals):  # a second Ctrl-C half a second later, as the reliability round pressed it
        time.sleep(0.5 * i)
        proc.send_signal(each)
    _, stderr = proc.communicate(timeout=300)  # generous: the grace is 2 s, the rest is writing the report
    assert proc.returncode == 128 + sig, stderr[-2000:]
    assert "Traceback" not in stderr and "--resume" in stderr, stderr[-2000:]
    time.sleep(0.5)
    assert not [p for p in tree if alive(p)], "processes left behind"
    runs = {r["model"]: r["status"] for r in load_results(out / "results.json")["runs"]}
    assert runs["sleeper"] == "interrupted" and set(runs.values()) <= {"ok", "interrupted"}, runs
    (tmp_path / "sleep").unlink()
    assert main(["run", "--resume", str(out), "--workers", "1"]) == 0
    assert {r["status"] for r in load_results(out / "results.json")["runs"]} == {"ok"}


def test_the_grace_ends_a_held_training_that_ignores_the_signal(monkeypatch):
    """In this process (--workers 1): a training held by hold_signals that sleeps through SIGTERM is interrupted once
    GVD_STOP_SECONDS has run out, with Interrupted(SIGTERM) raised out of its sleep; a training that acts on the
    signal in time is not forced, and the grace timer is gone after either."""
    monkeypatch.setenv("GVD_STOP_SECONDS", "0.5")
    slept = []
    with stop_on_signals():
        with pytest.raises(Interrupted) as stopped:
            with hold_signals():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(600):  # 60 s at most: the grace of 0.5 s ends it long before
                    time.sleep(0.1)
                    slept.append(1)
        assert stopped.value.signum == signal.SIGTERM and len(slept) < 600
        with pytest.raises(Interrupted):  # a training that acts on it: the pending signal, no forced stop
            with hold_signals():
                os.kill(os.getpid(), signal.SIGTERM)
                while not pending_signal():
                    time.sleep(0.01)
        time.sleep(1.0)  # past the grace: no late forced signal reaches the code after the training
    assert not [t for t in threading.enumerate() if isinstance(t, threading.Timer) and t.is_alive()]


ABANDONED = """import os, signal, sys, time
from pathlib import Path
from bench.core.guard import hold_signals, on_abandon, stop_on_signals

with stop_on_signals():
    on_abandon(lambda: Path(sys.argv[1]).write_text("last words") and "what they said")
    with hold_signals():
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # no Python handler can run in this thread
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(600)
print("not reached")
"""


def test_a_training_where_no_handler_runs_ends_after_the_grace_with_its_last_words(tmp_path):
    """A held training whose thread cannot run Python's signal handler (signals masked, as inside C code): the
    wakeup-fd watcher still sees SIGTERM, the grace runs out, the forced signal cannot be taken, and 5 s later the
    process writes its last words (the suite's: the unfinished entries marked interrupted), says so in one line and
    ends with 143. Timeouts are generous: no wall-clock limit is asserted."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "GVD_STOP_SECONDS": "0.5"}
    words = tmp_path / "words"
    proc = subprocess.run([sys.executable, "-c", ABANDONED, str(words)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert words.read_text() == "last words" and "not reached" not in proc.stdout
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "did not stop within" in err[0] and err[0].endswith("SIGTERM (it blocks where no "
                                                                                  "signal reaches it); stopped: what "
                                                                                  "they said"), proc.stderr


def test_text_from_data_cannot_make_a_link_in_markdown():
    """A dataset folder named like a Markdown image link is printed, not rendered (report.md, compare.md)."""
    md = to_markdown([("p", "shapes vs ![t](javascript:alert(10))"), ("table", ["dataset"], [["[x](y)"]])])
    assert "](" not in md and "![t]\\(javascript" in md and "| [x]\\(y) |" in md


@pytest.mark.parametrize("threads", [1, 2])
def test_a_job_runs_on_job_threads_and_restores_them(threads, monkeypatch):
    """`--set job_threads=N`: the job's work sees N torch threads; the process has its own number back after it."""
    cfg = preset("smoke")
    cfg.job_threads = threads
    seen = []
    monkeypatch.setattr(suite, "_mixture", lambda *args: (seen.append(torch.get_num_threads()), ([], {}))[1])
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        suite._run_job((suite.Job("mixture", "ring8", 0, ("gan",), 1.0), cfg, "cpu", "unused"))
        assert seen == [threads] and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_the_progress_line_names_each_running_jobs_stage():
    """The progress line of `gvd run`: jobs done of all, each running job with the stage it is in, and the share of
    the expected seconds done (a running job credited with its time, never more than 95% of its estimate). The time
    left is "?" until 1% is done (extrapolated from the first instants it read hundreds of hours)."""
    jobs = [suite.Job("image", "shapes", 0, ("diffusion",), 100.0), suite.Job("mixture", "ring8", 0, ("gan",), 10.0)]
    progress = suite.Progress(jobs, "gvd run test")
    try:
        progress.stage(jobs[0].label, "train diffusion")
        assert "0/2 jobs | shapes seed 0 diffusion: train diffusion" in progress.bar.postfix
        assert "<?" in str(progress.bar)
        progress.finished(jobs[1])
        assert "<?" not in str(progress.bar)
        assert progress.bar.postfix.startswith("1/2 jobs") and progress.bar.n >= 10
        progress.finished(jobs[0])
        assert progress.bar.postfix == "2/2 jobs" and progress.bar.n == progress.bar.total
    finally:
        progress.close()


def test_a_report_that_cannot_be_written_is_not_claimed(tmp_path, monkeypatch, capsys):
    """A full disk when the report is written (results.json made it): one line on stderr naming the file, exit 1,
    and the last line says results.json was written and how to build the report, never "wrote report.html"."""
    def full_disk(run_dir, results):
        raise WriteError(f"could not write {run_dir}/report.html: No space left on device")

    monkeypatch.setattr(suite.build, "write_report", full_disk)
    out = tmp_path / "run"
    assert main(TINY + ["--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "No space left on device" in captured.err and "report.html" not in captured.out
    assert "results.json" in captured.out and "gvd report" in captured.out
    assert load_results(out / "results.json")["stages"]["report"]["written"] is False
    assert not (out / "report.html").exists()


class _Disk:
    """The disk as bench/core/files.py sees it, with `room` bytes left: a write past them fails as on a full disk:
    OSError ENOSPC from a file's write, and from safetensors' writer the SafetensorError it raised on a full tmpfs.
    Every file the suite writes goes through files.atomic_write or files.save_tensors: this is the whole suite's
    disk (a real one needs root to mount; tried by hand, see the closing note of issue 24)."""

    def __init__(self, room: float):
        self.room, self.used = room, 0

    def take(self, n: int, error: Exception) -> None:
        if self.used + n > self.room:
            raise error
        self.used += n

    def open(self, path, mode):
        return _DiskFile(open(path, mode), self)

    def save_file(self, tensors, path, metadata=None):
        self.take(sum(t.numel() * t.element_size() for t in tensors.values()),
                  SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"))
        save_file(tensors, path, metadata=metadata)

    def install(self, monkeypatch) -> "_Disk":
        monkeypatch.setattr(files, "open", self.open, raising=False)
        monkeypatch.setattr(files, "save_file", self.save_file)
        return self


class _DiskFile:
    def __init__(self, f, disk: _Disk):
        self.f, self.disk = f, disk

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data: bytes) -> int:
        self.disk.take(len(data), OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        return self.f.write(data)


FULL_DISK_RUN = ["run", "--preset", "smoke", "--device", "cpu", "--workers", "1", "--seeds", "0", "1", "--steps", "5",
                 "--set", "images=null", "--set", 'mixtures.datasets=["ring8"]', "--set", "mixtures.num_samples=50"]


def test_a_full_disk_stops_the_run_in_one_line_and_a_resume_finishes_it(tmp_path, monkeypatch, capsys):
    """A disk that fills up after 20%, 60% or 90% of the bytes an unbroken run writes (a training state, the report's
    figures): the run stops at the write that failed (no traceback, no later run recorded as failed, no report
    claimed with a figure missing), names the file, exit 1; a results.json left behind parses with no entry failed by
    the disk. With room again, --resume finishes the run with the numbers of the unbroken one."""
    monkeypatch.setenv("GVD_CACHE", str(tmp_path / "cache"))
    disk = _Disk(float("inf")).install(monkeypatch)
    whole = tmp_path / "whole"
    assert main(FULL_DISK_RUN + ["--out", str(whole)]) == 0
    assert len(load_results(whole / "results.json")["runs"]) == 6  # gan, diffusion, held-out real; two seeds
    capsys.readouterr()
    for share in (0.2, 0.6, 0.9):
        out = tmp_path / f"run-{share}"
        _Disk(disk.used * share).install(monkeypatch)
        assert main(FULL_DISK_RUN + ["--out", str(out)]) == 1
        said = capsys.readouterr()
        err = [line for line in said.err.replace("\r", "\n").splitlines() if "gvd run smoke" not in line]
        failed = [line for line in err if f"could not write {out}" in line]
        assert len(failed) == 1 and "No space left on device" in failed[0], err
        assert not any("Traceback" in line for line in err) and "report.html" not in said.out
        assert f"gvd run --resume {out}" in failed[0] or f"gvd report {out}" in failed[0] + said.out
        if (out / "results.json").exists():
            assert all(r["status"] == "ok" for r in load_results(out / "results.json")["runs"])
        _Disk(float("inf")).install(monkeypatch)
        assert main(["run", "--resume", str(out)]) == 0
        assert (_timeless(load_results(out / "results.json")["runs"])
                == _timeless(load_results(whole / "results.json")["runs"]))
        assert (out / "report.html").exists() and (out / "figures" / "ring8_samples.png").exists()
        capsys.readouterr()


def test_gvd_report_in_a_folder_it_may_not_write_is_one_line(tmp_path, monkeypatch, capsys):
    """`gvd report` on another user's run folder (readable: files take the umask, 0644 under 022; not writable): one
    line naming the file it could not write, exit 1, the folder unchanged. (As root, permissions do not stop a
    write, so the folder's refusal is what the OS says to another user: EACCES; tried for real as a second user, see
    the closing note of issue 24.)"""
    out = tmp_path / "run"
    assert main(TINY + ["--out", str(out)]) == 0
    assert (out / "results.json").stat().st_mode & 0o777 == 0o666 & ~_umask()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()

    def refused(path, mode):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(files, "open", refused, raising=False)
    assert main(["report", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"could not write {out}" in err[0] and "Permission denied" in err[0], err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_second_gvd_run_into_a_folder_in_use_is_refused(tmp_path, capsys):
    """While one gvd run holds a folder (its lock), a second --resume of it (or a fresh run into it) is one line, exit
    2, and changes nothing; the lock goes with the process that held it."""
    out = tmp_path / "run"
    with run_lock(out):
        _one_line_exit_2(TINY + ["--out", str(out)], "is in use by another gvd run", capsys)
        assert [p.name for p in out.iterdir()] == [".lock"]
    assert main(TINY + ["--out", str(out)]) == 0  # released: the run goes ahead


def test_the_lock_names_its_holder_and_a_killed_holders_lock_is_taken_over(tmp_path, capsys):
    """Another process holds the folder: the refusal names its pid. Killed (SIGKILL: no clean-up of its own), its
    lock is gone with it; the next run takes the folder and the lock file holds the new holder's pid."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom bench.run.preflight import run_lock\n"
                               f"with run_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        _one_line_exit_2(TINY + ["--out", str(out)], f"in use by another gvd run (pid {holder.pid})", capsys)
    finally:
        holder.kill()
        holder.wait()
    assert (out / ".lock").read_text().strip() == str(holder.pid)  # what the killed holder left
    assert main(TINY + ["--out", str(out)]) == 0
    with run_lock(out):
        assert (out / ".lock").read_text().strip() == str(os.getpid())


def test_resume_refuses_a_config_json_that_is_not_the_runs(tmp_path, capsys):
    """A run folder whose config.json was replaced (another preset's, an edited step count) is not resumed into a
    silently mixed run: one line naming the keys that differ, exit 2, nothing changed."""
    out = tmp_path / "run"
    assert main(TINY + ["--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    config["name"], config["mixtures"]["steps"] = "toy", 2000
    (out / "config.json").write_text(json.dumps(config))
    before = (out / "results.json").read_text()
    capsys.readouterr()  # the first run's progress line
    _one_line_exit_2(["run", "--resume", str(out)], "config.json does not match the config its results.json", capsys)
    assert (out / "results.json").read_text() == before
