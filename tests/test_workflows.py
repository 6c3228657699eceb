"""A newcomer's workflows (issue 35): README's examples executed as written (your own images, the Python API), the
sample grid's size, `gvd compare`'s last line and what it gates, `gvd throughput`'s progress, `--version`, help on every
flag, `gvd metrics`, and `gvd run --dataset`."""

import argparse
import io
import json
import math
import re
import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.cli import build_parser, main
from bench.core.results import SCHEMA
from bench.core.rundir import grid_png
from bench.evaluate import table

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_section(heading: str) -> str:
    """The text of README's section under `heading` (up to the next heading of the same or a higher level)."""
    text = README.read_text()
    level = heading.split(" ")[0]
    start = text.index(f"\n{heading}\n")
    ends = [m.start() for m in re.finditer(r"\n#{1,%d} " % len(level), text) if m.start() > start]
    return text[start : ends[0] if ends else len(text)]


def code_blocks(section: str, language: str) -> list[str]:
    return re.findall(r"```%s\n(.*?)```" % language, section, flags=re.S)


def test_readme_blocks_are_found():
    """The helpers see what the tests below execute (a renamed heading fails here, not silently)."""
    assert len(code_blocks(readme_section("### Your own images"), "python")) == 1
    assert len(code_blocks(readme_section("### Your own images"), "sh")) == 1
    assert len(code_blocks(readme_section("## Python API"), "python")) == 2


def test_every_gvd_command_in_readmes_shell_blocks_parses():
    for block in code_blocks(README.read_text(), "sh"):
        for line in block.splitlines():
            if line.startswith("gvd "):
                build_parser().parse_args(shlex.split(line)[1:])  # a bad flag raises UserError


@pytest.mark.usefixtures("module_cache")
def test_readme_your_own_images_and_the_python_api_run_as_written(tmp_path, monkeypatch, capsys):
    """README "Your own images": the Python that makes a two-class folder, then the command, word for word; then
    README "Python API": score() on fresh shapes and on a collapse, and load_run() on that run."""
    monkeypatch.chdir(tmp_path)
    section = readme_section("### Your own images")
    exec(compile(code_blocks(section, "python")[0], "README: Your own images", "exec"), {})
    assert sorted(p.name for p in (tmp_path / "my-images").iterdir()) == ["blue", "red"]
    assert len(list((tmp_path / "my-images").rglob("*.png"))) == 600
    (command,) = [line for line in code_blocks(section, "sh")[0].splitlines() if line.startswith("gvd ")]
    assert main(shlex.split(command)[1:]) == 0
    results = json.loads((tmp_path / "reports" / "my-images" / "results.json").read_text())
    images = [r for r in results["runs"] if r["dataset"] == "folder:my-images"]
    assert {r["model"] for r in images} == {"gan", "diffusion", "held-out-real", "copier"}
    assert all(r["status"] == "ok" for r in images), [(r["model"], r.get("error")) for r in images]
    held = next(r for r in images if r["model"] == "held-out-real")["metrics"]
    assert held["judge_accuracy"] >= 0.95 and held["cond_accuracy"] >= 0.9  # red vs blue squares: an easy judge
    capsys.readouterr()
    api = code_blocks(readme_section("## Python API"), "python")
    exec(compile(api[0], "README: Python API, score", "exec"), {})
    fresh, collapsed = capsys.readouterr().out.strip().splitlines()[-2:]
    numbers = lambda line: [float(x) for x in re.findall(r"-?\d+\.\d+", line)]  # noqa: E731
    ours_fid, ours_recall, accuracy, real_fid, real_recall = numbers(fresh)
    assert accuracy >= 0.95 and ours_recall >= 0.5 * real_recall and ours_fid <= 5 * real_fid + 1
    recall, duplicates = numbers(collapsed)
    assert duplicates == pytest.approx(255 / 256, abs=1e-3) and recall < 0.5 * ours_recall
    exec(compile(api[1], "README: Python API, load_run", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "['folder:my-images'] 32"
    assert [line.split()[:3] for line in out[1:]] == [[m, "0", "ok"] for m in ("gan", "diffusion", "held-out-real",
                                                                              "copier")]


# ---------------------------------------------------------------- gvd sample's grid


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def test_the_sample_grid_is_enlarged_by_whole_pixels():
    """16 images of 16 px make a 69 px grid (4 cells + padding); min_side=512 repeats every pixel 8 x 8 (552 px), so
    each 8 x 8 block is one pixel of the plain grid."""
    images = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    plain, big = _pixels(grid_png(images, 4)), _pixels(grid_png(images, 4, min_side=512))
    assert plain.shape == (69, 69, 3) and big.shape == (552, 552, 3)
    assert np.array_equal(big, plain.repeat(8, axis=0).repeat(8, axis=1))
    assert _pixels(grid_png(images[:1], 1, min_side=512)).shape == (512, 512, 3)  # one image: no padding, x 32
    assert np.array_equal(_pixels(grid_png(images, 4, min_side=60)), plain)  # already large enough: 1:1


# ---------------------------------------------------------------- gvd compare


def _run(tmp_path, name: str, gan_fid: float, real_fid: float, diverged: bool = False) -> str:
    """A run folder with the GAN and the held-out real row on shapes, 3 seeds, the given FIDs."""
    runs = []
    for seed in range(3):
        for model, role, fid in (("gan", "model", gan_fid), ("held-out-real", "calibration", real_fid)):
            metrics = {} if diverged and model == "gan" else {"fid": fid + seed, "cond_accuracy": 0.9}
            runs.append({"dataset": "shapes", "model": model, "seed": seed, "role": role,
                         "status": "diverged" if diverged and model == "gan" else "ok", "metrics": metrics})
    folder = tmp_path / name
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"schema": SCHEMA, "suite": "quick", "runs": runs,
                                                     "config": {"images": {"steps": 10}}}))
    return str(folder)


def test_compare_ends_with_one_pass_or_fail_line(tmp_path, capsys):
    a, b = _run(tmp_path, "a", 10.0, 2.0), _run(tmp_path, "b", 20.0, 2.0)
    assert main(["compare", a, b, "--fail-on", "fid:+5%"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("FAIL: 1 problem beyond --fail-on fid:+5%") and "shapes/gan in b" in out[-1]
    assert len(out) > 10  # the tables came first
    assert main(["compare", a, a, "--fail-on", "fid:+5%", "--quiet"]) == 0
    assert capsys.readouterr().out == ("PASS: --fail-on fid:+5% holds for 1 input against a (1 row gated, 1 "
                                       "calibration row shown but not gated (--include-calibration gates them))\n")
    assert main(["compare", a, b, "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("PASS: nothing to fail (no --fail-on given)")
    assert "Gate: PASS: nothing to fail" in (Path(a) / "compare.md").read_text()  # the line is in the report too


def test_compare_gates_the_calibration_rows_only_when_asked(tmp_path, capsys):
    """The held-out real row moving is no regression of the code under test, unless --include-calibration."""
    a, b = _run(tmp_path, "a", 10.0, 2.0), _run(tmp_path, "b", 10.0, 4.0)
    assert main(["compare", a, b, "--fail-on", "fid:+5%", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("PASS")
    assert main(["compare", a, b, "--fail-on", "fid:+5%", "--quiet", "--include-calibration"]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("FAIL") and "fid of shapes/held-out-real in b" in captured.err
    assert "gan" not in captured.err


def test_compare_writes_n_a_where_a_side_has_no_number(tmp_path, capsys):
    a, b = _run(tmp_path, "a", 10.0, 2.0), _run(tmp_path, "b", 10.0, 2.0, diverged=True)
    assert main(["compare", a, b]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out.lower().replace("n/a", "")
    gan_fid = next(line for line in out.splitlines() if line.startswith("| shapes | gan | fid |"))
    assert gan_fid.count("n/a") >= 2  # b's mean and the delta


# ---------------------------------------------------------------- the command line itself


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith(f"gvd {version('gan-vs-diffusion')} (python ")


def _parsers(parser: argparse.ArgumentParser, name: str = "gvd"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_flag_of_every_command_has_help():
    seen = 0
    for name, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            seen += 1
            assert action.help and action.help.strip(), f"{name} {'/'.join(action.option_strings) or action.dest}"
    assert seen > 60  # run, sample, score, compare, throughput, study, calibrate, ...


def test_metrics_lists_every_metric_with_definition_direction_and_source(capsys):
    assert main(["metrics"]) == 0
    out = capsys.readouterr().out
    blocks = {b.split(":", 1)[0]: b for b in out.strip().split("\n\n")}
    assert list(blocks) == [m.key for m in table.METRICS]
    for m in table.METRICS:
        head, definition, source = blocks[m.key].splitlines()
        assert head.startswith(f"{m.key}: {m.label}. ")
        expected = (f"Closer to {m.target:.3g} is better" if m.target is not None
                    else {1: "Higher is better", -1: "Lower is better"}.get(m.better, "Neither"))
        assert expected in head
        assert len(definition.strip()) > 30 and source.strip().startswith("Source: ") and len(source) > 20
    assert main(["metrics", "fid_lf", "c_t"]) == 0
    assert "Meehan et al. 2020" in capsys.readouterr().out
    assert main(["metrics", "fdi"]) == 2
    assert "unknown metric 'fdi'" in capsys.readouterr().err


def test_throughput_says_each_stage_on_stderr_and_keeps_stdout_for_the_result(capsys):
    assert main(["throughput", "--preset", "smoke", "--device", "cpu", "--batch", "2", "--nfe", "1",
                 "--budget", "1"]) == 0
    captured = capsys.readouterr()
    stages = [line.split(": ", 2)[-1] for line in captured.err.splitlines() if line.startswith("gvd throughput: ")]
    assert stages[:3] == ["the matmul peak (the MFU denominator)", "FLOP counts of every network",
                          "text encoder and GAN generator calls"]
    assert "gan training step (batch 16)" in stages and stages[-1] == "the matmul peak again"
    assert re.match(r"^gvd throughput:\s+\d+ s of 1: ", captured.err)
    assert "| model | stage |" in captured.out and "gvd throughput:  " not in captured.out


# ---------------------------------------------------------------- gvd run --dataset


def _config(argv):
    from bench.cli import _run_config

    return _run_config(build_parser().parse_args(["run", *argv]))[0]


def test_dataset_flag_sets_the_image_datasets(tmp_path):
    assert _config(["--preset", "smoke", "--dataset", "digits"]).images.datasets == ["digits"]
    both = _config(["--preset", "smoke", "--dataset", "digits", "shapes", "--dataset", f"folder:{tmp_path}"])
    assert both.images.datasets == ["digits", "shapes", f"folder:{tmp_path}"]
    same = _config(["--preset", "smoke", "--set", 'images.datasets=["digits", "shapes"]'])
    assert same.images.datasets == _config(["--preset", "smoke", "--dataset", "digits", "shapes"]).images.datasets


@pytest.mark.parametrize("argv, needle", [
    (["--preset", "toy", "--dataset", "shapes"], "has no image benchmark"),
    (["--preset", "smoke", "--dataset", "shapes", "--set", 'images.datasets=["digits"]'], "not both"),
    (["--preset", "smoke", "--dataset", "cats"], "unknown image dataset 'cats'"),
    (["--preset", "smoke", "--dataset", "folder:/no/such/folder"], "does not exist"),
    (["--resume", "somewhere", "--dataset", "shapes"], "drop --dataset"),
])
def test_dataset_flag_errors_are_one_line_before_anything_is_written(tmp_path, capsys, argv, needle):
    out = tmp_path / "run"
    assert main(["run", *argv] + (["--out", str(out)] if "--resume" not in argv else [])) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not out.exists()


def test_nan_is_never_a_delta():
    from bench.report.compare import _delta

    assert _delta(math.nan) == "n/a" and _delta(-2.5) == "-2.5" and _delta(0.0) == "+0"


def test_import_bench_stays_light_and_the_api_loads_on_first_use():
    """`import bench` loads no torch (`gvd --help` depends on it); `from bench import score, load_run` loads them."""
    code = ("import sys, bench; assert 'torch' not in sys.modules, 'torch'; from bench import score, load_run, Run; "
            "assert 'torch' in sys.modules and callable(score) and callable(load_run); "
            "assert {'Run', 'load_run', 'score'} <= set(dir(bench)); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import bench

        bench.nope  # noqa: B018
