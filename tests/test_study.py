"""`gvd study stability` (bench/study.py, bench/study_report.py) and the training knobs it needs (GANTrainConfig.lr_d,
d_steps, MLPConfig.spectral_norm): outcomes on hand-made cases, intervals against published values, the search space's
draws, one data stream per seed for both families, and a tiny study end to end through the CLI, resumed."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from processes import alive, children
from scipy import stats

import bench.data.mixtures
import bench.run.study as study_mod
from bench.cli import main
from bench.config import MixtureBenchConfig
from bench.core.rundir import RunDir
from bench.data.mixtures import mixture_modes, sample_mixture
from bench.evaluate.metrics import mixture_stats
from bench.evaluate.stats import newcombe_interval, wilson_interval
from bench.families import BUILT_IN, Choice, LogUniform
from bench.report.study import best_config, config_summaries, share_difference, verdict
from bench.run.mixtures import run_mixture
from bench.run.study import (
    FAMILIES,
    OUTCOMES,
    SPACES,
    StudyConfig,
    classify,
    run_one,
    run_path,
    sample_configs,
)
from bench.train.loops import GANTrainConfig, train_gan
from models.mlp import MLPConfig, MLPDiscriminator, MLPGenerator

# ---------------------------------------------------------------- outcomes on hand-made histories and samples

GAN_OK = [{"step": i, "d_loss": 1.3, "g_loss": 0.8} for i in range(5)]
DIFF_OK = [{"step": i, "loss": 0.5} for i in range(5)]


def _ring_metrics(points_per_mode: dict[int, int], far: int = 0, jitter: float = 0.0) -> dict:
    """mixture_stats on hand-placed ring8 samples: n points at mode k (+ Gaussian jitter), `far` points at the
    origin (distance 1 from every mode: never high quality)."""
    centers, std = mixture_modes("ring8")
    rng = np.random.default_rng(0)
    pts = [centers[k] + jitter * rng.standard_normal((n, 2)) for k, n in points_per_mode.items()]
    pts.append(np.zeros((far, 2)))
    return mixture_stats(np.concatenate(pts), centers, std)


def test_one_of_each_outcome_on_hand_made_cases():
    every_mode = {k: 100 for k in range(8)}
    converged = _ring_metrics(every_mode, jitter=0.006)  # within 3 std = 0.03 of a mode; spread 0.6
    assert converged["modes"] == 8 and converged["hq_fraction"] == 1.0
    assert classify(GAN_OK, "gan", converged, 0.5) == "converged"
    assert classify(DIFF_OK, "diffusion", converged, 0.5) == "converged"
    collapsed = _ring_metrics({0: 300, 3: 300, 5: 200})  # every sample sharp, 3 of 8 modes
    assert classify(GAN_OK, "gan", collapsed, 0.5) == "mode-collapsed"
    blurry = _ring_metrics(every_mode, far=1200, jitter=0.006)  # 800 of 2,000 samples near a mode: 40% high quality
    assert blurry["hq_fraction"] == pytest.approx(0.4)
    assert classify(DIFF_OK, "diffusion", blurry, 0.5) == "low-quality"
    assert classify(DIFF_OK, "diffusion", blurry, 0.4) == "converged"  # the threshold is inclusive
    points = _ring_metrics(every_mode)  # every mode, every sample on its centre: collapse within each mode
    assert points["modes"] == 8 and points["mode_spread"] == 0.0
    assert classify(GAN_OK, "gan", points, 0.5) == "mode-collapsed"
    nan_gan = GAN_OK[:3] + [{"step": 3, "d_loss": float("nan"), "g_loss": 0.8}]
    nan_diff = DIFF_OK[:2] + [{"step": 2, "loss": float("inf")}]
    assert classify(nan_gan, "gan", converged, 0.5) == "diverged"  # divergence wins over good final samples
    assert classify(nan_diff, "diffusion", converged, 0.5) == "diverged"


def test_outcome_precedence_low_quality_before_mode_collapse():
    sparse_and_blurry = _ring_metrics({0: 100, 1: 100}, far=800)  # 2 modes and 20% high quality
    assert classify(GAN_OK, "gan", sparse_and_blurry, 0.5) == "low-quality"
    nan_samples = {"modes": 0, "num_modes": 8, "hq_fraction": float("nan")}
    assert classify(GAN_OK, "gan", nan_samples, 0.5) == "low-quality"


# ---------------------------------------------------------------- intervals: published values


@pytest.mark.parametrize("k, n, lo, hi", [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611),
                                          (1, 29, 0.0061, 0.1718)])
def test_wilson_interval_matches_newcombe_1998a(k, n, lo, hi):
    # Newcombe (1998a), Statistics in Medicine 17:857, Table I, method 3 (score method without continuity correction)
    assert wilson_interval(k, n) == pytest.approx((lo, hi), abs=5e-5)


@pytest.mark.parametrize("k1, n1, k2, n2, lo, hi", [
    (56, 70, 48, 80, 0.0524, 0.3339), (9, 10, 3, 10, 0.1705, 0.8090), (6, 7, 2, 7, 0.0582, 0.8062),
    (5, 56, 0, 29, -0.0381, 0.1926), (0, 10, 0, 20, -0.1611, 0.2775), (10, 10, 0, 20, 0.6791, 1.0),
])
def test_newcombe_interval_matches_newcombe_1998b(k1, n1, k2, n2, lo, hi):
    # Newcombe (1998b), Statistics in Medicine 17:873, Table II, method 10 (hybrid score interval)
    d, lower, upper = newcombe_interval(k1, n1, k2, n2)
    assert d == pytest.approx(k1 / n1 - k2 / n2)
    assert (lower, upper) == pytest.approx((lo, hi), abs=5e-5)


def test_verdict_reports_the_cluster_interval_of_the_per_configuration_shares():
    """Ten configurations per family, seven seeds each: diffusion's converge in 6/7 of their seeds in eight
    configurations and never in two (48/70 runs, per configuration 68.6%), the GAN's in 5/7 in six and never in four
    (30/70, 42.9%): a lead of 25.7 points. With whole configurations resampled the interval is wider than the one
    that counts the 140 runs as independent (Newcombe 1998 hybrid score: about [9.3, 40.3]) and it includes 0 for
    these few configurations."""
    def runs(family, converging, seeds_ok):
        return [{"family": family, "dataset": "ring8", "config_id": c, "seed": i,
                 "outcome": "converged" if c < converging and i < seeds_ok else "low-quality"}
                for c in range(10) for i in range(7)]

    record = {"search_space": {"diffusion": {}, "gan": {}}, "runs": runs("diffusion", 8, 6) + runs("gan", 6, 5)}
    s = share_difference(record, "ring8")
    assert s["first"] == "diffusion" and s["runs"] == {"diffusion": (48, 70, 10), "gan": (30, 70, 10)}
    assert s["difference"] == pytest.approx(48 / 70 - 30 / 70)
    _, lo, hi = newcombe_interval(48, 70, 30, 70)
    assert s["lo"] < lo and s["hi"] > hi  # wider than the runs-as-independent interval
    assert s["lo"] <= 0 < s["hi"]
    text = verdict(record, "ring8")
    assert "diffusion gave a converged model in 48/70 runs (10 configurations; per configuration 69%)" in text
    assert "GAN in 30/70 (10; 43%)" in text and "26 percentage points more likely than GAN" in text
    assert "the configurations do not resolve a difference" in text


# ---------------------------------------------------------------- the search space


def test_search_space_is_sampled_reproducibly_from_its_seed():
    for family in FAMILIES:
        a = sample_configs(SPACES[family], 6, 3, family)
        assert a == sample_configs(SPACES[family], 6, 3, family)
        assert a != sample_configs(SPACES[family], 6, 4, family)
        assert sample_configs(SPACES[family], 3, 3, family) == a[:3]  # a larger K extends, never reshuffles
        assert json.loads(json.dumps(a)) == a  # plain JSON values: the record round-trips
        for cfg in a:
            assert list(cfg) == list(SPACES[family])
            for knob, dist in SPACES[family].items():
                ok = cfg[knob] in dist.values if isinstance(dist, Choice) else dist.low <= cfg[knob] <= dist.high
                assert ok, (knob, cfg[knob])


def test_log_uniform_and_choice_draws_follow_their_distributions():
    space = {"lr": LogUniform(1e-4, 1e-2), "loss": Choice(("a", "b", "c"))}
    draws = sample_configs(space, 3000, 0, "gan")
    u = (np.log([d["lr"] for d in draws]) - math.log(1e-4)) / (math.log(1e-2) - math.log(1e-4))
    assert stats.kstest(u, "uniform").pvalue > 1e-3  # log lr ~ U[log low, log high] (3 significant digits kept)
    counts = np.array([sum(d["loss"] == c for d in draws) for c in "abc"])
    assert stats.chisquare(counts).pvalue > 1e-3


def test_learning_rate_ranges_follow_one_rule_for_both_families():
    gan, diff = SPACES["gan"], SPACES["diffusion"]
    for dist, tuned in ((gan["lr_g"], 1e-3), (gan["lr_d"], 1e-3), (diff["lr"], 3e-3)):
        assert (dist.low, dist.high) == pytest.approx((tuned / 5, tuned * 5))
    for widths in (gan["width"].values, diff["width"].values):
        assert widths[0] * 2 == widths[1] and widths[1] * 2 == widths[2]  # half, the preset's, double


# ---------------------------------------------------------------- the knobs the training loop gained


def _tiny_gan(lr: float, lr_d: float, d_steps: int = 1, steps: int = 3):
    torch.manual_seed(0)
    cfg = MLPConfig(width=8, depth=1)
    G, D = MLPGenerator(cfg), MLPDiscriminator(cfg)
    G0, D0 = [p.detach().clone() for p in G.parameters()], [p.detach().clone() for p in D.parameters()]
    gen, calls = torch.Generator().manual_seed(0), {"real": 0, "latent": 0}

    def real(step):
        calls["real"] += 1
        return torch.randn(16, 2, generator=gen), None

    def latent(n):
        calls["latent"] += 1
        return torch.randn(n, cfg.z_dim, generator=gen)

    history = train_gan(G, D, real, latent, GANTrainConfig(lr=lr, lr_d=lr_d, d_steps=d_steps), steps,
                        progress=False).history
    moved = lambda now, before: any(not torch.equal(a, b) for a, b in zip(now.parameters(), before))  # noqa: E731
    return moved(G, G0), moved(D, D0), calls, history


def test_lr_d_drives_the_discriminator_and_lr_the_generator():
    assert _tiny_gan(lr=1e-3, lr_d=0.0)[:2] == (True, False)  # Adam with lr 0 leaves D's weights exactly as they were
    assert _tiny_gan(lr=0.0, lr_d=1e-3)[:2] == (False, True)


def test_d_steps_updates_d_k_times_on_the_same_real_batch():
    _, _, calls, history = _tiny_gan(1e-3, 1e-3, d_steps=3, steps=4)
    assert calls["real"] == 4  # one real batch per step whatever k: the data budget is steps x batch
    assert calls["latent"] == 4 * (3 + 1)  # k fake batches for D, one for G
    assert len(history) == 4


def test_gan_train_config_defaults_keep_one_d_step_and_equal_rates():
    cfg = GANTrainConfig()
    assert cfg.d_steps == 1 and cfg.lr_d == cfg.lr
    assert MixtureBenchConfig().gan.lr == MixtureBenchConfig().gan.lr_d == 1e-3


def test_the_presets_gan_training_is_unchanged_by_the_new_knobs():
    """Golden values from train_gan before lr_d and d_steps existed (commit 5bae178): 30 steps of the toy preset's GAN
    on ring8, batch 64."""
    mix = MixtureBenchConfig()
    torch.manual_seed(0)
    G, D = MLPGenerator(mix.gan_net), MLPDiscriminator(mix.gan_net)
    data, noise = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    history = train_gan(G, D, lambda k: (sample_mixture("ring8", 64, data), None),
                        lambda n: torch.randn(n, 8, generator=noise), mix.gan, 30, progress=False).history
    last = history[-1]
    assert (last["g_loss"], last["d_loss"], last["d_real"]) == pytest.approx(
        (1.015234112739563, 1.2395415306091309, 0.5558056235313416), rel=1e-5)


def test_spectral_norm_makes_every_discriminator_layer_1_lipschitz():
    torch.manual_seed(0)
    D = MLPDiscriminator(MLPConfig(width=32, depth=2, spectral_norm=True))
    x = torch.randn(64, 2)
    for _ in range(30):  # each training-mode forward pass runs one power iteration (Miyato et al. 2018, Alg. 1)
        D(x)
    D.eval()
    linears = [m for m in D.net if isinstance(m, torch.nn.Linear)]
    for layer in linears:  # layer.weight is W / sigma(W); its largest singular value from an SVD should be ~1
        assert torch.linalg.matrix_norm(layer.weight.detach(), ord=2).item() == pytest.approx(1.0, abs=1e-3)
    a, b = torch.randn(500, 2), torch.randn(500, 2)
    with torch.no_grad():
        assert ((D(a) - D(b)).abs() <= (a - b).norm(dim=1) * (1 + 1e-3)).all()  # 1-Lipschitz as a whole
    assert not any(isinstance(m, torch.nn.utils.parametrize.ParametrizationList)
                   for m in MLPDiscriminator(MLPConfig(width=8, depth=1)).modules())  # off by default


# ---------------------------------------------------------------- one run; the same data stream for both families


def test_both_families_see_the_same_real_batches(monkeypatch):
    seen: dict[str, list] = {"gan": [], "diffusion": []}
    family = {"now": None}
    real_sampler = bench.data.mixtures.sample_mixture  # where the study's runs draw their data (the suite's 2D stages)

    def recording(name, n, generator):
        x = real_sampler(name, n, generator)
        seen[family["now"]].append(x.clone())
        return x

    monkeypatch.setattr(bench.data.mixtures, "sample_mixture", recording)
    tiny = StudyConfig(steps=3, batch_size=32, num_samples=50, sampler="ddim:3")
    for f in FAMILIES:
        family["now"] = f
        entry = run_one(f, sample_configs(SPACES[f], 1, 0, f)[0], "ring8", 5, tiny)
        assert entry["train"]["examples_seen"] == 3 * 32 and entry["outcome"] in OUTCOMES
        assert entry["metrics"]["num_samples"] == 50
    assert len(seen["gan"]) == len(seen["diffusion"]) == 3
    assert all(torch.equal(a, b) for a, b in zip(seen["gan"], seen["diffusion"]))


# ---------------------------------------------------------------- the study through the CLI

TINY = ["study", "stability", "--k", "2", "--seeds", "2", "--steps", "4", "--datasets", "ring8", "--workers", "1",
        "--set", "num_samples=60", "--set", "sampler=ddim:3", "--set", "batch_size=32"]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    assert main(TINY + ["--out", str(out)]) == 0
    return out


def test_tiny_study_runs_end_to_end_and_records_its_design(tiny_study):
    record = json.loads((tiny_study / "study.json").read_text())
    assert record["schema"] == "gan-vs-diffusion/study/v1"
    assert record["study"]["k"] == 2 and record["study"]["seeds"] == 2 and record["study"]["steps"] == 4
    assert set(record["search_space"]) == set(FAMILIES) and "lr_d" in record["search_space"]["gan"]
    for f in FAMILIES:
        assert record["configs"][f] == sample_configs(SPACES[f], 2, 0, f)
    assert len(record["runs"]) == 2 * 2 * 2  # families x configurations x seeds
    keys = {(r["family"], r["config_id"], r["seed"]) for r in record["runs"]}
    assert keys == {(f, c, s) for f in FAMILIES for c in range(2) for s in range(2)}
    for r in record["runs"]:
        assert r["outcome"] in OUTCOMES and r["train"]["steps"] == 4 and r["metrics"]["num_samples"] == 60
        assert r["knobs"] == record["configs"][r["family"]][r["config_id"]]
        assert run_path(tiny_study, "ring8", r["family"], r["config_id"], r["seed"]).is_file()


def test_tiny_study_report_section_renders(tiny_study):
    md, page = (tiny_study / "study.md").read_text(), (tiny_study / "study.html").read_text()
    assert "## ring8" in md and "<h2>ring8</h2>" in page
    assert "| family | runs | converged | mode-collapsed | low-quality | diverged | failed |" in md
    assert md.count("Verdict") == 2 and "cluster bootstrap over configurations" in md  # per dataset and overall
    assert "### Best configuration found" in md and "found after (runs x steps)" in md
    for fig in ("ring8_ecdf.png", "ring8_gan_sensitivity.png", "ring8_diffusion_sensitivity.png"):
        assert (tiny_study / "figures" / fig).stat().st_size > 1000 and f"figures/{fig}" in md
    # study.html carries its figures (it showed "figure not found" six times), each captioned with what it shows
    assert "figure not found" not in page and page.count('<img src="data:image/png;base64,') == 3
    assert "<figcaption>figures/" not in page and "<figcaption>ring8, GAN: every run" in page


def test_a_log_scale_knob_axis_labels_three_ticks_and_no_minor_ones():
    """A learning rate searched over [2e-4, 5e-3] (1.4 decades) got matplotlib's minor labels at 2, 3, 4, ... x
    10^k on a 2.2-inch panel, printed over each other; the axis now labels its ends and geometric middle only."""
    from bench.report.figures import plt
    from bench.report.study import _knob_axis

    fig, ax = plt.subplots(figsize=(2.2, 2.2))
    x = _knob_axis(ax, [3e-4, 1e-3, 4e-3], {"log_uniform": [2e-4, 5e-3]})
    ax.scatter(x, [0, 1, 0])
    fig.canvas.draw()
    major = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    minor = [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()]
    assert major == ["0.0002", "0.001", "0.005"] and not minor
    boxes = [t.get_window_extent() for t in ax.get_xticklabels() if t.get_text()]
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:])), "tick labels overlap"
    plt.close(fig)


def test_rerun_skips_finished_runs_and_redoes_missing_ones(tmp_path, monkeypatch):
    out = tmp_path / "s"
    args = TINY + ["--k", "1", "--out", str(out)]
    monkeypatch.setattr(study_mod, "write_study_report", lambda out, record: None)  # rendering: tested above
    assert main(args) == 0
    first = json.loads((out / "study.json").read_text())
    calls = []
    real_run_one = study_mod.run_one
    monkeypatch.setattr(study_mod, "run_one", lambda *a, **kw: calls.append(a[:4]) or real_run_one(*a, **kw))
    assert main(args) == 0
    assert calls == [] and json.loads((out / "study.json").read_text())["runs_this_invocation"] == 0
    missing = run_path(out, "ring8", "gan", 0, 1)
    missing.unlink()
    assert main(args) == 0
    assert calls == [("gan", first["configs"]["gan"][0], "ring8", 1)]  # only the missing run is trained again
    again = json.loads((out / "study.json").read_text())
    strip = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "cpu_seconds")}  # noqa: E731
    assert [strip(r) for r in again["runs"]] == [strip(r) for r in first["runs"]]  # and reproduces it exactly


def test_a_run_file_is_reused_only_for_the_same_configuration_and_budget(tmp_path):
    spec = study_mod._spec(StudyConfig(steps=4))
    entry = {"knobs": {"lr": 1e-3}, "spec": spec, "status": "ok", "outcome": "converged"}
    path = tmp_path / "run.json"
    path.write_text(json.dumps(entry))
    assert study_mod._finished(path, {"lr": 1e-3}, spec) == entry
    assert study_mod._finished(path, {"lr": 2e-3}, spec) is None  # another configuration
    assert study_mod._finished(path, {"lr": 1e-3}, study_mod._spec(StudyConfig(steps=5))) is None  # another budget
    path.write_text(json.dumps({**entry, "status": "failed"}))
    assert study_mod._finished(path, {"lr": 1e-3}, spec) is None  # failed runs are retried
    path.write_text('{"knobs": ')  # a torn file (atomic writes should prevent it) is not a finished run
    assert study_mod._finished(path, {"lr": 1e-3}, spec) is None
    assert study_mod._finished(tmp_path / "absent.json", {"lr": 1e-3}, spec) is None


def test_report_only_reports_the_finished_runs_and_trains_nothing(tiny_study, tmp_path, monkeypatch):
    out = shutil.copytree(tiny_study, tmp_path / "copy")
    for path in (out / "runs").glob("*_seed1.json"):
        path.unlink()  # as if the study had been stopped after seed 0
    monkeypatch.setattr(study_mod, "run_one", lambda *a, **kw: pytest.fail("--report-only trained a model"))
    assert main(TINY + ["--out", str(out), "--report-only"]) == 0
    record = json.loads((out / "study.json").read_text())
    assert len(record["runs"]) == 4 and {r["seed"] for r in record["runs"]} == {0} and record["planned_runs"] == 8
    assert "4 of the design's 8 runs finished" in (out / "study.md").read_text()


def test_report_only_without_a_study_exits_2(tmp_path, capsys):
    assert main(TINY + ["--out", str(tmp_path / "none"), "--report-only"]) == 2
    assert "no runs/ folder" in capsys.readouterr().err and not (tmp_path / "none").exists()


@pytest.mark.parametrize("extra, needle", [
    (["--k", "0"], "k must be a whole number of at least 1"),
    (["--seeds", "0"], "seeds must be a whole number of at least 1"),
    (["--steps", "-3"], "steps must be a whole number of at least 1"),
    (["--k", "1000000"], "k must be at most 1000"),
    (["--seeds", "101"], "seeds must be at most 100"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--datasets", "moons"], "unknown 2D dataset 'moons'"),
    (["--set", "sampler=nope:3"], "unknown sampler 'nope'"),
    (["--set", "hq_threshold=2"], "hq_threshold must be in [0, 1]"),
    (["--set", "colour=red"], "unknown setting 'colour'"),
    (["--k", "two"], "invalid int value"),
])
def test_bad_study_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, extra, needle):
    out = tmp_path / "never"
    assert main(TINY + extra + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not out.exists()


def test_study_output_that_is_a_file_exits_2(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(TINY + ["--out", str(f)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(TINY + ["--out", str(f / "sub")]) == 2  # checked before any training, not a traceback after it
    assert "is a file, not a folder" in capsys.readouterr().err


# ---------------------------------------------------------------- report helpers


def test_best_configuration_prefers_converged_seeds_then_modes():
    def run(config_id, seed, outcome, modes, hq):
        return {"config_id": config_id, "seed": seed, "knobs": {"c": config_id}, "outcome": outcome,
                "metrics": {"modes": modes, "num_modes": 8, "hq_fraction": hq}}

    runs = [run(0, 0, "mode-collapsed", 7, 0.9), run(0, 1, "mode-collapsed", 7, 0.9),
            run(1, 0, "converged", 8, 0.6), run(1, 1, "low-quality", 8, 0.2),
            run(2, 0, "converged", 8, 0.7), run(2, 1, "low-quality", 8, 0.05)]
    summaries = config_summaries(runs)
    assert [s["converged"] for s in summaries] == [0, 1, 1]
    assert summaries[1]["hq"] == [0.6, 0.2] and summaries[0]["modes"] == [7 / 8, 7 / 8]
    assert best_config(summaries)["config_id"] == 1  # ties on converged seeds and modes; mean hq 0.4 beats 0.375


def test_the_toy_configuration_reproduces_the_suites_2d_run(tmp_path):
    """A study run at the toy preset's settings is the suite's 2D run (bench/suite.py, the second implementation),
    metric for metric and loss for loss: the same data stream, initial weights, training loop and evaluation seeds."""
    mix = MixtureBenchConfig(steps=6, batch_size=32, num_samples=80, samplers=["ddim:4"], eval_checkpoints=0)
    tiny = StudyConfig(steps=6, batch_size=32, num_samples=80, sampler="ddim:4")
    toy = {"gan": {"lr_g": mix.gan.lr, "lr_d": mix.gan.lr_d, "beta1": mix.gan.betas[0], "d_steps": 1,
                   "loss": mix.gan.loss, "spectral_norm": False, "width": mix.gan_net.width},
           "diffusion": {"lr": mix.diffusion_train.lr, "schedule": mix.diffusion.schedule,
                         "prediction": mix.diffusion.prediction, "ema": mix.diffusion_train.ema,
                         "width": mix.denoiser_net.width}}
    for family in FAMILIES:
        suite_entry, _ = run_mixture("grid25", BUILT_IN[family], 3, mix, torch.device("cpu"), RunDir(tmp_path),
                                     progress=False)
        ours = run_one(family, toy[family], "grid25", 3, tiny)
        same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # noqa: E731 -- NaN == NaN
        assert same(ours["metrics"], {k: suite_entry["metrics"][k] for k in ours["metrics"]})
        assert same(ours["stability"], suite_entry["stability"])


@pytest.mark.slow  # two study subprocesses with worker pools: ~40 s on a busy 2-core machine
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_study_ends_within_seconds_leaves_no_worker_and_resumes(sig, tmp_path):
    """`gvd study stability` under gvd run's rules: a signal once its first run is written stops it within seconds
    with the shell's status, no pool worker left behind, study.json written for what finished; run again, it keeps
    the finished runs and trains only the rest."""
    out = tmp_path / "study"
    args = [sys.executable, "-m", "bench", "study", "stability", "--k", "2", "--seeds", "2", "--steps", "600",
            "--datasets", "ring8", "--workers", "2", "--set", "num_samples=60", "--set", "sampler=ddim:3",
            "--set", "batch_size=32", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    while not list((out / "runs").glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = children(proc.pid)
    proc.send_signal(sig)
    t0 = time.monotonic()
    _, stderr = proc.communicate(timeout=90)
    assert time.monotonic() - t0 < 15 and proc.returncode == 128 + sig, stderr[-2000:]
    assert "Traceback" not in stderr
    time.sleep(0.5)
    assert workers and not [p for p in workers if alive(p)], "worker processes left behind"
    kept = len(list((out / "runs").glob("*.json")))
    assert kept >= 1 and json.loads((out / "study.json").read_text())["runs"]
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"study: {kept} runs already finished" in again.stdout + again.stderr
    assert len(json.loads((out / "study.json").read_text())["runs"]) == 8
