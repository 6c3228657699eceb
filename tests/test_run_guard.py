"""The run folder's guards: bad input writes nothing (not even the lock), the lock cannot be tricked (a symbolic
link, a deleted or replaced lock file, two --force runs), an unwritable judge cache is skipped with one warning, a
config.json edited before the first entry is refused by --resume, and a family's samples are checked before scoring."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.run import suite

TINY = ["run", "--preset", "smoke", "--device", "cpu", "--workers", "1", "--seeds", "0", "--steps", "5",
        "--set", "images=null", "--set", 'mixtures.datasets=["ring8"]', "--set", "mixtures.num_samples=50",
        "--set", "mixtures.eval_checkpoints=0"]
IMAGES = ["run", "--preset", "smoke", "--device", "cpu", "--workers", "1", "--set", "mixtures=null",
          "--set", "images.steps=2", "--set", "images.eval_checkpoints=0", "--set", "throughput_budget_s=0"]

pytestmark = pytest.mark.usefixtures("module_cache")


def _one_line_exit_2(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- nothing written for bad input


def test_a_resolution_the_dataset_cannot_be_drawn_at_writes_nothing_and_the_corrected_run_goes(tmp_path, capsys):
    """`--set images.resolution=8` on shapes: one line, exit 2, no folder (no .lock, no config.json); the corrected
    command is then a fresh run, not "already holds a run"."""
    out = tmp_path / "run"
    _one_line_exit_2(IMAGES + ["--set", "images.resolution=8", "--out", str(out)], "at least 16 pixels", capsys)
    assert not out.exists()
    assert main(IMAGES + ["--out", str(out)]) == 0


def test_a_refused_fresh_run_into_a_run_folder_writes_not_even_the_lock(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("the first run's")
    _one_line_exit_2(TINY + ["--out", str(out)], "already holds a run", capsys)
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]


def test_bad_input_found_only_by_the_work_leaves_no_run_behind(tmp_path, capsys, monkeypatch):
    """An input error the checks could not see (here: raised by the suite after config.json is written): the fresh
    run's config.json and lock go with it, so the corrected command is accepted."""
    from bench.data.images import DataError

    def bad(cfg, run_dir, *args, **kwargs):
        (Path(run_dir) / "config.json").write_text("{}")
        raise DataError("an image the checks could not read")

    out = tmp_path / "run"
    monkeypatch.setattr(suite, "run_suite", bad)
    _one_line_exit_2(TINY + ["--out", str(out)], "an image the checks could not read", capsys)
    assert not out.exists()
    monkeypatch.undo()
    assert main(TINY + ["--out", str(out)]) == 0


# ---------------------------------------------------------------- the lock


def test_a_symbolic_link_as_the_lock_is_not_followed(tmp_path, capsys):
    """`ln -s victim RUN/.lock; gvd run --resume RUN` once wrote a pid into victim. Now: one line, exit 2, the
    victim and the run untouched."""
    out = tmp_path / "run"
    assert main(TINY + ["--out", str(out)]) == 0
    capsys.readouterr()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (out / ".lock").unlink()
    (out / ".lock").symlink_to(victim)
    before = _tree(out)
    _one_line_exit_2(["run", "--resume", str(out)], "symbolic link", capsys)
    assert victim.read_text() == "precious" and _tree(out) == before


HOLD = """import sys, time
from pathlib import Path
from bench.run.preflight import run_lock
with run_lock(sys.argv[1], fresh=True, force=True) as archive:
    (Path(sys.argv[1]) / "config.json").write_text("{}")  # a run under way
    print("held", archive, flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """A process holding a run folder as `gvd run --force` does (the old run moved aside, the fresh folder locked)."""
    procs = []

    def start(out: Path):
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
        procs.append(proc)
        line = proc.stdout.readline().split()
        assert line[0] == "held", line
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("trick", ["deleted", "replaced"])
def test_a_deleted_or_replaced_lock_file_admits_no_second_run(trick, tmp_path, capsys, holder):
    """The lock is on the folder, not on the file: with .lock deleted (or replaced by a new file), a --resume of the
    folder in use is still refused, naming no wrong pid and changing nothing."""
    out = tmp_path / "run"
    proc = holder(out)
    (out / ".lock").unlink()
    if trick == "replaced":
        (out / ".lock").write_text("12345\n")
    before = _tree(out)
    _one_line_exit_2(["run", "--resume", str(out)], "is in use by another gvd run", capsys)
    _one_line_exit_2(TINY + ["--out", str(out), "--force"], "is in use by another gvd run", capsys)
    assert _tree(out) == before and proc.poll() is None


def test_two_force_runs_serialise(tmp_path, capsys, holder):
    """A second --force while a first --force run goes: refused, and the running folder is not moved."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("the first run's")
    holder(out)  # moves the first run aside, holds the fresh folder
    archives = sorted(p.name for p in tmp_path.iterdir() if ".old-" in p.name)
    assert len(archives) == 1
    assert (out / ".lock").read_text().strip().isdigit()
    _one_line_exit_2(TINY + ["--out", str(out), "--force"], "is in use by another gvd run", capsys)
    assert sorted(p.name for p in tmp_path.iterdir() if ".old-" in p.name) == archives
    assert (out / "config.json").read_text() == "{}"  # the running folder is where it was


# ---------------------------------------------------------------- cache, config, samples


def test_an_unwritable_cache_is_skipped_with_one_warning(tmp_path, capsys, monkeypatch):
    """$GVD_CACHE through a file (it can be neither made nor written, even by root): one warning line, the run goes
    on with a cache in the temporary folder and finishes (it failed with "could not write .../judge-...")."""
    import tempfile

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("GVD_CACHE", str(blocker / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "run"
    assert main(IMAGES + ["--out", str(out)]) == 0
    warnings = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"the cache {blocker / 'cache'} cannot be written" in warnings[0], warnings
    assert list((tmp_path / "tmp").glob("gan-vs-diffusion-cache-*/judge-*.safetensors"))


def test_a_config_edited_before_the_first_entry_is_refused_by_resume(tmp_path, capsys, monkeypatch):
    """Killed before its first entry (no results.json to check against): config.json edited afterwards is refused,
    read against the config the training states were saved under (state/config.json); unedited, the resume goes."""
    def killed(cfg, run_dir, *args, **kwargs):
        from bench.config import to_dict
        from bench.core.rundir import RunDir

        RunDir(run_dir).write_config(to_dict(cfg))
        raise KeyboardInterrupt

    out = tmp_path / "run"
    monkeypatch.setattr(suite, "run_suite", killed)
    assert main(TINY + ["--out", str(out)]) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert not (out / "results.json").exists() and (out / "state" / "config.json").is_file()
    original = (out / "config.json").read_text()
    edited = json.loads(original)
    edited["mixtures"]["gan"]["lr"] *= 10
    (out / "config.json").write_text(json.dumps(edited))
    _one_line_exit_2(["run", "--resume", str(out)], "the config its training states were saved under "
                     "(mixtures.gan.lr)", capsys)
    assert not (out / "results.json").exists()
    (out / "config.json").write_text(original)
    assert main(["run", "--resume", str(out)]) == 0


SHORT = """import dataclasses, mean_family


def sample(trained, prompts, noise, net=None):
    images, nfe = mean_family.sample(trained, prompts, noise, net)
    return {bad}, nfe


def make():
    return dataclasses.replace(mean_family.make(), sample_image=sample)
"""


@pytest.mark.parametrize("bad, needle", [("images[1:]", "returned shape"), ("images[:, :, 1:]", "the data's are"),
                                         ("(images * 127).to(torch.uint8)", "torch.uint8 images"),
                                         ("images * 3", "give images in [-1, 1]")])
def test_a_familys_samples_are_checked_before_scoring(bad, needle, tmp_path, capsys, monkeypatch):
    """A family that returns one image too few (it was scored `ok` on 31 of 32), the wrong shape, integers or values
    out of range: its entry fails with one line naming the family; the other families' entries are ok."""
    family = tmp_path / "short.py"
    family.write_text("import torch\n" + SHORT.format(bad=bad))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    out = tmp_path / "run"
    assert main(IMAGES + ["--set", 'families=["gan"]', "--family", f"short={family}:make", "--out", str(out)]) == 0
    runs = {r["model"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert runs["gan"]["status"] == "ok" and runs["short"]["status"] == "failed"
    assert "the short family's sample_image" in runs["short"]["error"] and needle in runs["short"]["error"]
    assert "\n" not in runs["short"]["error"]
