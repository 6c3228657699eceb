"""End-to-end: the CLI on the seconds-long `smoke` preset, its run folder, its errors, and reproducibility."""

import json
import subprocess
import sys

import pytest

from bench.cli import main

SMOKE = ["run", "--preset", "smoke", "--device", "cpu"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
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
    runs = results["runs"]
    assert {(r["dataset"], r["model"]) for r in runs} == {(d, m) for d in ("ring8", "grid25") for m in ("gan", "diffusion")}
    for r in runs:
        assert r["status"] in ("ok", "diverged")
        assert set(r["train"]) >= {"steps", "seconds", "images_per_s", "examples_seen", "params_total"}
        m = r["metrics"]
        assert set(m) >= {"modes", "num_modes", "hq_fraction", "reverse_kl", "num_samples"}
        assert 0 <= m["hq_fraction"] <= 1 and 0 <= m["modes"] <= m["num_modes"]
        assert m["num_samples"] == results["config"]["mixtures"]["num_samples"]
    # matched budgets: both models see the same number of examples
    seen = {r["model"]: r["train"]["examples_seen"] for r in runs if r["dataset"] == "ring8"}
    assert seen["gan"] == seen["diffusion"]


def test_report_mentions_published_rows(smoke_run):
    md = (smoke_run / "report.md").read_text()
    assert "VEEGAN" in md and "PacGAN" in md
    assert "<table>" in (smoke_run / "report.html").read_text()


def test_same_seed_same_metrics(smoke_run, tmp_path):
    again = tmp_path / "again"
    assert main(SMOKE + ["--out", str(again)]) == 0
    first = json.loads((smoke_run / "results.json").read_text())["runs"]
    second = json.loads((again / "results.json").read_text())["runs"]
    assert [r["metrics"] for r in first] == [r["metrics"] for r in second]
    assert (smoke_run / "history" / "ring8_diffusion_seed0.csv").read_text() == (
        again / "history" / "ring8_diffusion_seed0.csv").read_text()


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
        (SMOKE + ["--set", "mixtures.gan.lr=-1"], "mixtures.gan.lr must be positive"),
        (SMOKE + ["--set", "mixtures.datasets=[\"ring9\"]"], "unknown 2D dataset 'ring9'"),
        (SMOKE + ["--set", "mixtures.nope=1"], "unknown setting"),
        (["report", "/nonexistent/run"], "has no results.json"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


def test_output_folder_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("keep me")
    assert main(SMOKE + ["--out", str(f)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert f.read_text() == "keep me"


def test_python_dash_m_bench_works():
    proc = subprocess.run([sys.executable, "-m", "bench", "presets"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and "toy" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--preset", "nope"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
