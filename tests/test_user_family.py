"""A user's family (`--family NAME=MODULE:FACTORY`) cannot break a run or take a run folder's code with it: names the
suite uses are refused before anything is written; a module that stops the process is one line; the module's path is
saved absolute; opening a run folder (`gvd sample`, `report`, `compare`, `run --resume`) imports no module it names
unless the user names it again or passes --trust-family-code."""

import json
import os
from pathlib import Path

import pytest

from bench.cli import main
from bench.families import RESERVED, absolute_spec, names_clash
from bench.run.suite import entry_speeds

MEAN = Path(__file__).with_name("mean_family.py")
SMOKE = ["run", "--preset", "smoke", "--device", "cpu", "--workers", "1", "--set", "mixtures=null",
         "--set", "images.steps=2", "--set", "images.eval_checkpoints=0"]

pytestmark = pytest.mark.usefixtures("module_cache")


def _one_line_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("name", ["vae", "text", "real", "copier", "held-out", "held-out-real", "gan", "diffusion",
                                  "prompts", "diffusion-vae", "gan_tuned", "held", "mean_tuned"])
def test_a_family_named_like_a_name_the_suite_uses_is_refused_before_anything_is_written(name, tmp_path, capsys):
    """Each name the suite gives its own files and rows (and names extending one with '-' or '_', which would share
    files: "diffusion-vae" is the diffusion family's VAE history) is one line + exit 2, and --out stays empty."""
    out = tmp_path / "run"
    specs = ["--family", f"{name}={MEAN}:make"]
    if name == "mean_tuned":  # clashes with another user family's tuned grid
        specs = ["--family", f"mean={MEAN}:make"] + specs
    line = _one_line_exit_2(SMOKE + specs + ["--out", str(out)], f"the name {name!r}", capsys)
    assert "choose another name" in line
    assert not out.exists()


def test_every_file_part_and_row_label_is_reserved():
    """The run folder's own file parts and the throughput stage's row labels are in RESERVED, read from where they
    are defined, not copied into the test."""
    from bench.core.rundir import FILE_PARTS

    assert set(FILE_PARTS) <= RESERVED and {"vae", "text", "gan", "diffusion", "held-out-real", "copier"} <= RESERVED
    assert names_clash("mean", ()) is None and names_clash("vae2", ()) is None
    assert names_clash("mean", ["mean"]) == "is given twice"


def _throughput(models):
    row = {"nfe": 10, "guidance": 1.0, "batch": 2, "images_per_s": 5.0, "latency_s": 0.2, "flops_per_image": 1.0,
           "tflops": 0.1, "mfu": 0.01, "peak_memory_mb": 1.0, "method": "measured"}
    rows = [{**row, "model": m, "stage": stage} for m in models for stage in ("sample", "train")]
    return {"device": "cpu", "dtype": {"train": "float32"}, "models": {m: {"params": 7} for m in ("gan", "diffusion",
                                                                                                   "text")},
            "rows": rows}


def test_entry_speeds_reads_only_the_families_the_throughput_rows_measure():
    """The cause of `KeyError: 'vae'`: entry_speeds matched the throughput rows' labels ("vae", "text": the diffusion
    family's own networks) against family names. Entries of families called so get no speed fields and no error;
    the GAN's entry gets its own."""
    from bench.config import preset

    cfg = preset("smoke")
    results = {"throughput": _throughput(["gan", "diffusion", "vae", "text"]),
               "runs": [{"dataset": "shapes", "model": m, "throughput": {"nfe": 1}} for m in ("vae", "text", "gan")]}
    entry_speeds(cfg, results)
    speeds = {r["model"]: r["throughput"] for r in results["runs"]}
    assert speeds["vae"] == {"nfe": 1} and speeds["text"] == {"nfe": 1}
    assert speeds["gan"]["params"] == 7 and len(speeds["gan"]["sampling"]) == 1


@pytest.mark.parametrize("code", ["raise SystemExit(3)", "import sys; sys.exit('bye')", "raise KeyboardInterrupt"])
def test_a_module_that_stops_the_process_on_import_is_one_line_naming_it(code, tmp_path, capsys):
    module = tmp_path / "stopper.py"
    module.write_text(code + "\n")
    out = tmp_path / "run"
    line = _one_line_exit_2(SMOKE + ["--family", f"mine={module}:make", "--out", str(out)], f"mine={module}:make",
                            capsys)
    assert ("SystemExit" in line or "KeyboardInterrupt" in line) and not out.exists()


def test_the_modules_path_is_saved_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(MEAN.parent)
    assert absolute_spec("mean=mean_family.py:make") == f"mean={MEAN}:make"
    assert absolute_spec("mean=my_package.module:make") == "mean=my_package.module:make"  # an importable name


EVIL = """from pathlib import Path
Path({marker!r}).write_text("ran")
import mean_family
make = mean_family.make
"""


@pytest.fixture(scope="module")
def user_run(tmp_path_factory, module_cache):
    """A smoke image run with the mean family (given by a path relative to tests/) and the throughput stage on."""
    root = tmp_path_factory.mktemp("user")
    out = root / "run"
    cwd = os.getcwd()
    os.chdir(MEAN.parent)
    try:
        assert main(SMOKE + ["--family", "mean=mean_family.py:make", "--set", "throughput_budget_s=5",
                             "--out", str(out)]) == 0
    finally:
        os.chdir(cwd)
    return out


def test_a_user_family_with_the_throughput_stage_on_finishes(user_run, tmp_path, monkeypatch):
    """The family given by a relative path (from tests/) with the throughput stage on: the run finishes (the stage
    labels its own rows "vae" and "text"; no row is read as a family), the spec is saved absolute, so a trusted
    --resume from another folder finds the module."""
    results = json.loads((user_run / "results.json").read_text())
    assert results["config"]["user_families"] == [f"mean={MEAN}:make"]  # absolute, though typed relative
    assert "rows" in results["throughput"] and (user_run / "report.html").is_file()
    mine = next(r for r in results["runs"] if r["model"] == "mean")
    assert mine["status"] == "ok" and "sampling" not in (mine.get("throughput") or {})
    diffusion = next(r for r in results["runs"] if r["model"] == "diffusion")
    assert diffusion["throughput"]["sampling"]
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--resume", str(user_run), "--trust-family-code"]) == 0


def _plant(run: Path, tmp_path: Path) -> Path:
    """Edit the run folder as someone sharing it might: its config names a module that leaves a marker when run."""
    marker = tmp_path / "ran.txt"
    evil = tmp_path / "evil.py"
    evil.write_text(EVIL.format(marker=str(marker)))
    for name in ("config.json", "results.json"):
        data = json.loads((run / name).read_text())
        config = data if name == "config.json" else data["config"]
        config["user_families"] = [f"mean={evil}:make"]
        (run / name).write_text(json.dumps(data))
    return marker


def test_opening_a_run_folder_runs_no_code_of_it(user_run, tmp_path, capsys, monkeypatch):
    """A shared run folder whose config.json names a module: sampling a built-in family, `gvd report` and
    `gvd compare` import nothing of it; sampling the user's family and --resume name the module and ask for
    --trust-family-code (or the same --family); with it, they run (from another folder: the path is absolute)."""
    import shutil

    run = tmp_path / "shared"
    shutil.copytree(user_run, run)
    marker = _plant(run, tmp_path)
    monkeypatch.chdir(tmp_path)  # another folder than the one the family was given from
    monkeypatch.syspath_prepend(str(MEAN.parent))  # evil.py imports mean_family
    assert main(["sample", str(run), "--model", "diffusion", "--prompt", "a red circle", "--n", "1",
                 "--out", str(tmp_path / "d.png"), "--device", "cpu"]) == 0
    assert main(["sample", str(run), "--model", "gan", "--prompt", "a red circle", "--n", "1",
                 "--out", str(tmp_path / "g.png"), "--device", "cpu"]) == 0
    assert main(["report", str(run)]) == 0
    assert main(["compare", str(run), str(user_run), "--out", str(tmp_path), "--quiet"]) == 0
    capsys.readouterr()
    assert not marker.exists()
    line = _one_line_exit_2(["sample", str(run), "--model", "mean", "--prompt", "a red circle", "--out",
                             str(tmp_path / "m.png")], "--trust-family-code", capsys)
    assert str(tmp_path / "evil.py") in line
    line = _one_line_exit_2(["run", "--resume", str(run)], "--trust-family-code", capsys)
    assert str(tmp_path / "evil.py") in line and not marker.exists()
    _one_line_exit_2(["run", "--resume", str(run), "--family", f"mean={MEAN}:make"], "is not the run's own", capsys)
    assert not marker.exists()
    # trusted: the module runs (and the mean family keeps no checkpoint to sample from: one line, exit 2)
    _one_line_exit_2(["sample", str(run), "--model", "mean", "--prompt", "a red circle", "--out",
                      str(tmp_path / "m.png"), "--trust-family-code"], "keeps no checkpoint", capsys)
    assert marker.exists()
    marker.unlink()
    assert main(["run", "--resume", str(run), "--family", f"mean={tmp_path / 'evil.py'}:make"]) == 0
    assert marker.exists()
