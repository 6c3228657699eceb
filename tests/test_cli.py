"""End-to-end: the CLI on the seconds-long `smoke` preset, its run folder, its errors, and reproducibility."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bench.cli import main
from bench.core.rundir import RunDir

SMOKE = ["run", "--preset", "smoke", "--device", "cpu", "--workers", "1"]


pytestmark = pytest.mark.usefixtures("module_cache")  # judges are cached across runs: the tests train their own


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, module_cache):  # the cache first: the run trains its readers into it
    out = tmp_path_factory.mktemp("runs") / "smoke"
    assert main(SMOKE + ["--out", str(out)]) == 0
    return out


def test_run_folder_has_every_file(smoke_run):
    for name in ["config.json", "results.json", "metrics.csv", "report.md", "report.html"]:
        assert (smoke_run / name).is_file(), name
    assert list((smoke_run / "history").glob("*.csv"))
    assert list((smoke_run / "figures").glob("*.png"))
    assert list((smoke_run / "checkpoints").glob("*.safetensors"))
    assert not list(smoke_run.rglob("*.tmp")), "atomic writes leave no temporary files"


def test_results_json_follows_the_schema(smoke_run):
    results = json.loads((smoke_run / "results.json").read_text())
    for key in ["schema", "suite", "created", "device", "versions", "config", "runs"]:
        assert key in results
    assert set(results["families"]) == {"gan", "diffusion", "held-out-real", "copier"}
    runs = [r for r in results["runs"] if r["dataset"] in ("ring8", "grid25") and r["role"] == "model"]
    expected = {(d, m) for d in ("ring8", "grid25") for m in ("gan", "diffusion")}
    assert {(r["dataset"], r["model"]) for r in runs} == expected
    heldout = [r for r in results["runs"] if r["model"] == "held-out-real" and r["dataset"] in ("ring8", "grid25")]
    assert {r["dataset"] for r in heldout} == {"ring8", "grid25"}
    assert all(r["metrics"]["modes"] == r["metrics"]["num_modes"] and r["metrics"]["hq_fraction"] > 0.95
               for r in heldout)  # the true mixture's own fresh draws: every mode, 98.9% within 3 std
    for r in runs:
        assert r["status"] in ("ok", "diverged")
        assert set(r["train"]) >= {"steps", "seconds", "images_per_s", "examples_seen", "params_total"}
        m = r["metrics"]
        assert set(m) >= {"modes", "num_modes", "hq_fraction", "reverse_kl", "num_samples"}
        assert 0 <= m["hq_fraction"] <= 1 and 0 <= m["modes"] <= m["num_modes"]
        assert m["num_samples"] == results["config"]["mixtures"]["num_samples"]
    # matched budgets: both models see the same number of examples, checked against the history files' step counts
    batch = results["config"]["mixtures"]["batch_size"]
    for r in runs:
        with open(RunDir(smoke_run).history_path(r["dataset"], r["seed"], r["model"])) as f:
            steps = sum(1 for _ in f) - 1  # rows after the header
        assert r["train"]["examples_seen"] == steps * batch, (r["dataset"], r["model"])
    seen = {r["model"]: r["train"]["examples_seen"] for r in runs if r["dataset"] == "ring8"}
    assert seen["gan"] == seen["diffusion"]


def test_the_held_out_real_row_reads_converged_and_every_image_entry_names_its_baseline(smoke_run):
    """The outcome rule measures every run against fresh data at the same sample count: the held-out real row (fresh
    data itself) reads converged on both benchmarks, and each image entry records the held-out readings it was
    measured against; the run carries the known-answer panel of its image dataset."""
    from bench.evaluate.stability import outcome

    results = json.loads((smoke_run / "results.json").read_text())
    heldout = [r for r in results["runs"] if r["model"] == "held-out-real"]
    assert {r["dataset"] for r in heldout} == {"ring8", "grid25", "shapes"}
    for r in heldout:
        assert outcome(r["status"], r["metrics"], r.get("baseline")) == "converged", r["dataset"]
    for r in results["runs"]:
        if r["dataset"] == "shapes":
            assert r["baseline"]["num_samples"] == r["metrics"]["num_samples"]
    assert set(results["panel"]) == {"shapes"}
    assert "shapes: what each number sees (the known-answer panel)" in (smoke_run / "report.md").read_text()


def test_image_runs_are_scored_with_every_metric(smoke_run):
    results = json.loads((smoke_run / "results.json").read_text())
    runs = [r for r in results["runs"] if r["dataset"] == "shapes"]
    assert {r["model"] for r in runs} == {"gan", "diffusion", "held-out-real", "copier"}
    for r in runs:
        assert r["status"] == "ok", r.get("error")
        m = r["metrics"]
        for key in ["fid", "kid", "precision", "recall", "density", "coverage", "modes", "reverse_kl", "forward_kl",
                    "cond_accuracy", "num_samples", "judge_accuracy"]:
            assert key in m, key
        for key in ["precision", "recall", "coverage", "cond_accuracy", "judge_accuracy"]:
            assert 0 <= m[key] <= 1
        assert m["num_samples"] == results["config"]["images"]["num_samples"]
        assert r["throughput"]["samples_per_s"] > 0 and r["throughput"]["nfe"] >= (r["role"] == "model")
    dif = next(r for r in runs if r["model"] == "diffusion")
    assert {"vae", "unet"} == set(dif["train"]["params"])  # the shared text encoder is counted on neither side
    assert dif["train"]["vae"]["psnr"] > 0
    for part in ("real", "gan", "diffusion"):
        assert (smoke_run / "samples" / f"shapes_seed0_{part}.png").is_file()
    assert "Image benchmark" in (smoke_run / "report.md").read_text()


def test_image_runs_follow_the_fair_protocol(smoke_run):
    """Held-out reference, EMA for both, both knob settings named, guidance's two halves counted."""
    results = json.loads((smoke_run / "results.json").read_text())
    cfg = results["config"]["images"]
    runs = {r["model"]: r for r in results["runs"] if r["dataset"] == "shapes" and r["role"] == "model"}
    for family, r in runs.items():
        splits = r["splits"]
        assert splits["train"]["hash"] != splits["test"]["hash"] and r["reference"]["split"] == "test"
        assert r["reference"]["given"] == min(cfg["num_samples"], splits["test"]["size"])
        assert r["ema"]["initial_weight_share"] < 0.01 and r["ema"]["decay"] == 0.999
        assert all(p["initial_weight_share"] < 0.01 for p in r["curve"])
        assert r["knob"]["neutral"] == 1.0 and "validation" in r["tuned"]["rule"]
        assert r["tuned"]["value"] in (cfg["truncation_sweep"] if family == "gan" else cfg["guidance_sweep"])
        assert r["sweep"]["prompts"] == "validation"
        assert r["metrics_raw"]["num_samples"] == min(cfg["curve_samples"], cfg["num_samples"])
        assert 0 <= r["memorisation"]["near_copy_share"] <= 1 and "c_t" in r["metrics"]
    steps = int(cfg["sampler"].split(":")[1])
    assert runs["diffusion"]["throughput"]["nfe"] == steps  # neutral: s = 1, one pass per step
    tuned = runs["diffusion"]["tuned"]
    assert tuned["nfe"] == steps * (1 if tuned["value"] == 1.0 else 2)  # guided: both halves counted
    assert runs["gan"]["throughput"]["nfe"] == 1
    # training FLOPs, counted by the training stage on the networks being trained, agree with the throughput stage's
    # count (a second count, on fresh networks of the same configs): per-image FLOPs of each training step x images
    per_image = {r["model"]: r["flops_per_image"] for r in results["throughput"]["rows"] if r["stage"] == "train"}
    gan, dif = runs["gan"]["train"], runs["diffusion"]["train"]
    assert gan["flops"] == pytest.approx(per_image["gan"] * gan["steps"] * cfg["batch_size"])
    assert dif["step_flops"] == pytest.approx(per_image["diffusion"] * cfg["batch_size"])
    vae_steps = per_image["vae"] * cfg["vae_steps"] * cfg["vae_batch_size"]
    assert dif["vae"]["flops"] > vae_steps  # the autoencoder's steps, and its encodings of the training split
    assert dif["flops"] == pytest.approx(dif["step_flops"] * dif["steps"] + dif["vae"]["flops"])
    for point in runs["gan"]["curve"]:  # the curve on the compute axis: FLOPs spent by that step
        assert point["train_flops"] == pytest.approx(per_image["gan"] * point["step"] * cfg["batch_size"])


@pytest.mark.parametrize("model, extra", [("diffusion", ["--sampler", "ddim", "--steps", "2", "--guidance", "2"]),
                                          ("gan", [])])
def test_sample_writes_a_png(smoke_run, tmp_path, model, extra):
    from PIL import Image

    out = tmp_path / "grid.png"
    assert main(["sample", str(smoke_run), "--model", model, "--prompt", "a large blue square", "--n", "4",
                 "--out", str(out), "--device", "cpu"] + extra) == 0
    assert Image.open(out).size[0] > 16


def test_sample_bad_inputs(smoke_run, tmp_path, capsys):
    assert main(["sample", str(smoke_run), "--prompt", "a purple hexagon", "--out", str(tmp_path / "x.png")]) == 2
    assert "unknown word(s) 'hexagon'" in capsys.readouterr().err
    assert main(["sample", str(tmp_path), "--prompt", "a red circle"]) == 2
    assert "has no image checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_report_mentions_published_rows(smoke_run):
    md = (smoke_run / "report.md").read_text()
    assert "VEEGAN" in md and "PacGAN" in md
    assert "<table>" in (smoke_run / "report.html").read_text()


def test_same_seed_same_numbers_bit_for_bit_whatever_the_workers(smoke_run, tmp_path):
    """--workers 2 (each job in a worker process) and --workers 1 (every job in this process, one after another,
    each on the same torch threads, restored after it) give the same numbers, images included: metrics, curves,
    tuned knobs, training FLOPs, histories and every checkpoint's weights."""
    again = tmp_path / "again"
    assert main(SMOKE[:-1] + ["2", "--out", str(again)]) == 0  # two worker processes instead of one
    first = json.loads((smoke_run / "results.json").read_text())["runs"]
    second = json.loads((again / "results.json").read_text())["runs"]
    for key in ("metrics", "curve", "tuned", "metrics_raw", "memorisation"):
        assert [r.get(key) for r in first] == [r.get(key) for r in second], key
    assert [r["train"].get("flops") for r in first] == [r["train"].get("flops") for r in second]
    for dataset, part in (("ring8", "diffusion"), ("shapes", "gan"), ("shapes", "diffusion")):
        history = lambda root: RunDir(root).history_path(dataset, 0, part).read_text()  # noqa: B023, E731
        assert history(smoke_run) == history(again), (dataset, part)
    checkpoints = sorted(p.name for p in (smoke_run / "checkpoints").glob("*.safetensors"))
    assert checkpoints and checkpoints == sorted(p.name for p in (again / "checkpoints").glob("*.safetensors"))
    for name in checkpoints:
        a, b = load_file(smoke_run / "checkpoints" / name), load_file(again / "checkpoints" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_the_run_records_where_its_time_went(smoke_run):
    """results.json "stages": the wall time and how the jobs ran, and the seconds of every stage (data, judge, text
    encoder, each family's training, sampling, sweeps, curves, memorisation, figures, throughput; the report's own
    time beside them); the report shows them with each family's training FLOP/s against the measured matmul peak."""
    record = json.loads((smoke_run / "results.json").read_text())["stages"]
    assert record["invocations"] == 1 and record["workers"] == 1 and record["job_threads"] == 1
    expected = {"data and judge", "text encoder", "train gan", "train diffusion", "2D: train gan",
                "2D: train diffusion", "2D: sample and score", "sample and score (neutral knob)",
                "knob sweeps (validation)", "curves (training snapshots, raw weights)", "memorisation",
                "process figures", "throughput"}
    assert expected <= set(record["stages"]), expected - set(record["stages"])
    for name, entry in record["stages"].items():
        assert entry["count"] >= 1 and 0 <= entry["wall_s"] <= record["wall_s"], name
    assert record["report"]["wall_s"] > 0  # beside the table the report shows (it cannot time itself)
    md = (smoke_run / "report.md").read_text()
    assert "Where the time went" in md and "share of matmul peak" in md and "train diffusion" in md


def test_the_report_shows_how_each_family_makes_an_image(smoke_run):
    """The process figures on the smoke preset: the trajectory, the forward process, guidance and the snapshot strips
    of the image dataset, the 2D snapshot clouds; each after its "How to read these"."""
    for name in ("shapes_trajectory", "shapes_forward", "shapes_guidance", "shapes_snapshots", "ring8_snapshots"):
        assert (smoke_run / "figures" / f"{name}.png").stat().st_size > 3_000, name
    md = (smoke_run / "report.md").read_text()
    assert md.count("How to read these") >= 5 and "shapes: how each family makes an image" in md
    arrays = RunDir(smoke_run).load_process("shapes", 0, "gan")
    assert list(arrays) == ["strip", "strip_steps"] and arrays["strip"].shape[:2] == (4, 8)


def test_report_and_compare_from_the_run_folder(smoke_run, capsys):
    (smoke_run / "report.md").unlink()
    assert main(["report", str(smoke_run)]) == 0
    assert (smoke_run / "report.md").is_file()
    assert main(["compare", str(smoke_run), str(smoke_run)]) == 0
    assert "+0" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "--preset", "nope"], "unknown preset 'nope'"),
        (SMOKE + ["--steps", "0"], "steps must be positive"),
        (SMOKE + ["--set", "mixtures.gan.lr=-1"], "mixtures.gan.lr must be > 0"),
        (SMOKE + ["--set", "mixtures.datasets=[\"ring9\"]"], "unknown 2D dataset 'ring9'"),
        (SMOKE + ["--set", "mixtures.nope=1"], "unknown setting"),
        (SMOKE + ["--set", "images.datasets=[\"cats\"]"], "unknown image dataset 'cats'"),
        (SMOKE + ["--set", "images.sampler=ddim"], "needs a step count"),
        (["report", "/nonexistent/run"], "has no results.json"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


def test_empty_image_folder_fails_before_anything_is_written(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    assert main(SMOKE + ["--out", str(out), "--set", f'images.datasets=["folder:{tmp_path / "empty"}"]']) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "empty") in err and err.count("\n") == 1, err
    assert not out.exists()


def test_output_folder_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("keep me")
    assert main(SMOKE + ["--out", str(f)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert f.read_text() == "keep me"


def test_python_dash_m_bench_works():
    proc = subprocess.run([sys.executable, "-m", "bench", "presets"], capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0 and "toy" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--preset", "nope"], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_the_gan_loss_setting_changes_the_loss_the_history_records(smoke_run, tmp_path):
    """Same seed, same first batch: D's step-0 logits are the same in both runs, so the step-0 D loss must be each
    loss's formula of them: hinge 2 - r + f (Miyato et al. 2018, eq. 16, |logits| < 1), non-saturating
    softplus(-r) + softplus(f) (Goodfellow et al. 2014), r and f the logits of the mean sigmoid outputs."""
    hinge = tmp_path / "hinge"
    assert main(SMOKE + ["--out", str(hinge), "--set", "mixtures=null", "--set", "throughput_budget_s=0",
                         "--set", "images.gan.loss=hinge"]) == 0
    ns_row = RunDir(smoke_run).read_history("shapes", 0, "gan")[0]
    hinge_row = RunDir(hinge).read_history("shapes", 0, "gan")[0]
    assert hinge_row["d_real"] == pytest.approx(ns_row["d_real"], abs=1e-4)
    r, f = _logit(ns_row["d_real"]), _logit(ns_row["d_fake"])
    softplus = lambda x: math.log1p(math.exp(x))
    assert ns_row["d_loss"] == pytest.approx(softplus(-r) + softplus(f), abs=0.03)
    assert hinge_row["d_loss"] == pytest.approx(2 - r + f, abs=0.03)
    assert abs(hinge_row["d_loss"] - ns_row["d_loss"]) > 0.3
    config = json.loads((hinge / "config.json").read_text())
    assert config["images"]["gan"]["loss"] == "hinge" and config["mixtures"] is None


def test_compute_budget_gives_the_gan_the_diffusion_sides_training_flops(tmp_path):
    """--set images.budget=compute: the GAN takes as many steps as match the UNet's and the VAE's training FLOPs
    (per-image FLOPs of one step of each network), the second budget axis of the fair protocol."""
    out = tmp_path / "compute"
    assert main(SMOKE + ["--out", str(out), "--set", "mixtures=null", "--set", "images.budget=compute",
                         "--set", "images.eval_checkpoints=0", "--set", "throughput_budget_s=0"]) == 0
    results = json.loads((out / "results.json").read_text())
    cfg = results["config"]["images"]
    gan = next(r for r in results["runs"] if r["model"] == "gan")
    dif = next(r for r in results["runs"] if r["model"] == "diffusion")
    plan, target = gan["train"]["budget"], dif["train"]["flops"]  # every FLOP of the diffusion side, VAE included
    assert plan["axis"] == "compute" and plan["target_flops"] == pytest.approx(target)
    per_step = gan["train"]["step_flops"]
    assert plan["step_flops"] == pytest.approx(per_step)
    assert gan["train"]["steps"] == plan["steps"] == max(1, round(target / per_step))
    assert gan["train"]["steps"] != cfg["steps"]  # the GAN's step is cheaper than the UNet's and the VAE's together
    assert abs(gan["train"]["flops"] - target) <= per_step / 2
    assert "training FLOPs" in (out / "report.md").read_text()


def test_config_json_agrees_with_the_networks_each_entry_built(smoke_run):
    """config.json holds the user's choices only (no shape read from the data), and no leaf of it disagrees with the
    resolved network configs an entry records."""
    config = json.loads((smoke_run / "config.json").read_text())
    assert "resolution" not in config["images"]["dcgan"] and "in_channels" not in config["images"]["unet"]
    assert "vocab_size" not in config["images"]["text"] and "cond_dim" not in config["images"]["dcgan"]
    sections = {"dcgan": "dcgan", "vae": "vae", "unet": "unet", "diffusion": "diffusion", "gan_net": "gan_net",
                "denoiser_net": "denoiser_net"}
    checked = 0
    for r in json.loads((smoke_run / "results.json").read_text())["runs"]:
        bench = config["images"] if r["dataset"] == "shapes" else config["mixtures"]
        for net, built in (r.get("networks") or {}).items():
            for key, value in bench[sections[net]].items():
                assert json.dumps(built[key]) == json.dumps(value), (r["model"], net, key)
                checked += 1
    assert checked > 20
    dcgan = next(r for r in json.loads((smoke_run / "results.json").read_text())["runs"] if r["model"] == "gan"
                 and r["dataset"] == "shapes")["networks"]["dcgan"]
    assert dcgan["resolution"] == config["images"]["resolution"] and dcgan["cond_dim"] > 0  # the derived shapes


def test_a_users_family_runs_beside_the_built_in_ones_and_shows_everywhere(tmp_path):
    """tests/mean_family.py (the README's example, word for word) through --family: its entries in results.json, its
    rows in the report's tables and verdict, in metrics.csv and in `gvd compare`; `gvd report` and `gvd run --resume`
    need nothing but the run folder."""
    family = Path(__file__).with_name("mean_family.py")
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert family.read_text().strip() in readme, "README shows the example family in full"
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(SMOKE + ["--out", str(out), "--family", f"mean={family}:make", "--set", "mixtures=null",
                             "--set", "throughput_budget_s=0", "--set", "images.eval_checkpoints=0"]) == 0
        runs.append(out)
    results = json.loads((runs[0] / "results.json").read_text())
    mine = next(r for r in results["runs"] if r["model"] == "mean")
    assert mine["status"] == "ok" and mine["metrics"]["num_samples"] == results["config"]["images"]["num_samples"]
    assert mine["tuned"]["value"] in (0.0, 0.2, 0.5) and results["families"]["mean"]["label"] == "class means"
    report = (runs[0] / "report.md").read_text()
    assert "| class means | neutral (sigma = 0.2) |" in report  # the family's table row, at its own knob
    assert "| aspect | measure | GAN | diffusion | class means | leads | by | seeds | seeds it would need |" in report
    assert "mean" in (runs[0] / "metrics.csv").read_text()
    assert main(["report", str(runs[0])]) == 0 and (runs[0] / "report.md").read_text() == report
    assert main(["compare", str(runs[0]), str(runs[1]), "--out", str(tmp_path)]) == 0
    assert "| shapes | mean | fid |" in (tmp_path / "compare.md").read_text()
    # the spec is in config.json (its module run only when trusted): nothing to rerun
    assert main(["run", "--resume", str(runs[0]), "--trust-family-code"]) == 0
