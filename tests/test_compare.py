"""gvd compare: deltas, the seeds' spread, protocol differences and the --fail-on gate, on hand-built inputs whose
right answers are known."""

import json

import pytest
from scipy import stats as sps

from bench.cli import main
from bench.core.results import SCHEMA, THROUGHPUT_SCHEMA
from bench.evaluate.stats import mean_interval
from bench.report.compare import FailOn, outside_spread, parse_fail_on, run_compare

PROTOCOL = {"judge": {"backbone": "judge", "weights_sha256": "a" * 64, "resize": "none", "resize_size": None,
                      "num_real": 512, "num_fake": 512, "reference_split": "test", "reference_hash": "b" * 64,
                      "num_seeds": 3, "versions": {"torch": "2.14.1"}}}


def _run(tmp_path, name, fid=(10.0, 11.0, 12.0), acc=(0.8, 0.8, 0.8), protocol=PROTOCOL, tuned_fid=None,
         suite="quick", steps=1600):
    runs = []
    for seed, (f, a) in enumerate(zip(fid, acc)):
        for model in ("gan", "diffusion"):
            entry = {"dataset": "shapes", "model": model, "seed": seed, "status": "ok",
                     "metrics": {"fid": f, "cond_accuracy": a}, "protocol": protocol}
            if tuned_fid is not None:
                entry["tuned"] = {"metrics": {"fid": tuned_fid, "cond_accuracy": a}}
            runs.append(entry)
    folder = tmp_path / name
    folder.mkdir()
    config = {"images": {"steps": steps, "batch_size": 128}}
    (folder / "results.json").write_text(json.dumps({"schema": SCHEMA, "suite": suite, "config": config,
                                                     "runs": runs}))
    return str(folder)


def _throughput(tmp_path, name, images_per_s, device="cpu"):
    path = tmp_path / f"{name}.json"
    row = {"model": "diffusion", "stage": "sample", "nfe": 20, "guidance": 1.0, "batch": 64,
           "images_per_s": images_per_s, "latency_s": 1 / images_per_s}
    path.write_text(json.dumps({"schema": THROUGHPUT_SCHEMA, "device": device, "dtype": {"sample": "float32"},
                                "threads": 2, "batch": 64, "versions": {"torch": "2.14.1"}, "rows": [row]}))
    return str(path)


@pytest.mark.parametrize("spec, expected", [
    ("fid:+5%", FailOn("fid", True, 0.05, True, "fid:+5%")),
    ("cond_accuracy:-0.02", FailOn("cond_accuracy", False, 0.02, False, "cond_accuracy:-0.02")),
    ("images_per_s:-10%", FailOn("images_per_s", False, 0.10, True, "images_per_s:-10%")),
])
def test_parse_fail_on(spec, expected):
    assert parse_fail_on(spec) == expected


def test_fail_on_thresholds_by_hand():
    rel, absolute = parse_fail_on("fid:+5%"), parse_fail_on("cond_accuracy:-0.02")
    assert not rel.regressed(10.0, 10.5) and rel.regressed(10.0, 10.51)  # limit 0.5 = 5% of 10
    assert not rel.regressed(10.0, 2.0)  # an improvement
    assert absolute.regressed(0.80, 0.77) and not absolute.regressed(0.80, 0.79) and not absolute.regressed(0.8, 0.9)
    assert rel.regressed(10.0, float("nan"))  # a diverged run is worse than any finite FID


def test_outside_spread_is_interval_overlap():
    a, b = mean_interval([10.0, 11.0, 12.0]), mean_interval([20.0, 21.0, 22.0])
    half = sps.t.ppf(0.975, 2) * 1.0 / 3 ** 0.5  # sd 1 over 3 seeds
    assert a["hi"] == pytest.approx(11 + half)
    assert outside_spread(a, b) is True
    assert outside_spread(a, mean_interval([11.0, 12.0, 13.0])) is False
    assert outside_spread(a, mean_interval([30.0])) is None  # one seed: no interval, no call


def test_regression_exits_1_and_names_it(tmp_path, capsys):
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b", fid=(11.0, 12.1, 13.2))  # +10%
    assert main(["compare", a, b, "--fail-on", "fid:+5%", "--fail-on", "cond_accuracy:-0.02"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2  # gan and diffusion
    assert all("regression: fid of shapes/" in line and "fid:+5%" in line and "+10.0%" in line for line in err)
    assert "Gate failed" in (tmp_path / "a" / "compare.md").read_text()


def test_improvement_and_same_run_exit_0(tmp_path, capsys):
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b", fid=(8.0, 9.0, 10.0), acc=(0.9, 0.9, 0.9))
    assert main(["compare", a, b, "--fail-on", "fid:+5%", "--fail-on", "cond_accuracy:-0.02"]) == 0
    assert main(["compare", a, a, "--fail-on", "fid:+1%"]) == 0
    out = capsys.readouterr().out
    assert "+0" in out and "-2" in out  # the deltas against the first run


def test_tuned_setting_is_compared_only_when_asked(tmp_path):
    a, b = _run(tmp_path, "a", tuned_fid=5.0), _run(tmp_path, "b", tuned_fid=50.0)
    assert run_compare([a, b], ["fid:+5%"])[0] == 0  # the neutral FIDs are equal
    assert run_compare([a, b], ["fid:+5%"], setting="tuned")[0] == 1


def test_incomparable_pair_is_flagged_and_fails_the_gate(tmp_path, capsys):
    other = {"judge": {**PROTOCOL["judge"], "reference_hash": "c" * 64}}
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b", protocol=other)
    assert main(["compare", a, b]) == 0  # no gate: flagged in the report only
    assert "INCOMPARABLE" in capsys.readouterr().out
    assert main(["compare", a, b, "--fail-on", "fid:+5%"]) == 1
    assert "not comparable" in capsys.readouterr().err
    assert "reference_hash" in (tmp_path / "a" / "compare.md").read_text()
    versions_only = {"judge": {**PROTOCOL["judge"], "versions": {"torch": "2.15.0"}}}
    c = _run(tmp_path, "c", protocol=versions_only)
    assert main(["compare", a, c, "--fail-on", "fid:+5%"]) == 0


@pytest.mark.parametrize("spec", ["fid:5%", "fid+5%", "fid:+x", "fid:+5%%", ":+5", "fid:+1e999", "fid:+2e6"])
def test_bad_spec_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, spec):
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b")
    assert main(["compare", a, b, "--fail-on", spec]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--fail-on" in err
    assert not (tmp_path / "a" / "compare.md").exists()


def test_unknown_metric_and_mixed_inputs_exit_2(tmp_path, capsys):
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b")
    assert main(["compare", a, b, "--fail-on", "fdi:+5%"]) == 2
    assert main(["compare", a, _throughput(tmp_path, "t", 100.0)]) == 2
    assert main(["compare", a]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 3


def test_throughput_files(tmp_path, capsys):
    base, slower, faster = (_throughput(tmp_path, n, v) for n, v in (("base", 100.0), ("slow", 85.0),
                                                                       ("fast", 120.0)))
    assert main(["compare", base, slower, "--fail-on", "images_per_s:-10%"]) == 1
    assert "images_per_s of diffusion/sample/20/1/64" in capsys.readouterr().err
    assert main(["compare", base, faster, "--fail-on", "images_per_s:-10%", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "compare.html").is_file()
    gpu = _throughput(tmp_path, "gpu", 100.0, device="NVIDIA H100")
    assert main(["compare", base, gpu, "--fail-on", "images_per_s:-10%"]) == 1
    assert "setup: device" in capsys.readouterr().err


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d["rows"][0].pop("stage"), "rows[0].stage is missing"),
    (lambda d: d.update(rows="diffusion"), "rows must be a list, not the string 'diffusion'"),
    (lambda d: d["rows"][0].update(guidance="3"), "rows[0].guidance must be a number or null, not the string '3'"),
    (lambda d: d["rows"].append(7), "rows[1] must be an object, not an integer"),
    (lambda d: d["rows"][0].update(images_per_s=True), "rows[0].images_per_s must be a number, not true/false"),
    (lambda d: d.update(device=None), "device must be a string, not null"),
])
def test_hostile_throughput_files_are_one_line(edit, needle, tmp_path, capsys):
    """The reliability round's four throughput files (a row missing 'stage', rows as a string, guidance as a string,
    a row as a number) and two more: one line naming the file and the field, exit 2, nothing written."""
    base = _throughput(tmp_path, "base", 100.0)
    bad = tmp_path / "bad.json"
    data = json.loads((tmp_path / "base.json").read_text())
    edit(data)
    bad.write_text(json.dumps(data))
    assert main(["compare", base, str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and f"{bad}: {needle}" in err, err
    assert not (tmp_path / "compare.md").exists()


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d.update(throughput="fast"), "throughput must be an object, not the string 'fast'"),
    (lambda d: d["runs"][0].update(metrics={"fid": "low"}), "runs[0].metrics.fid must be a number or null"),
    (lambda d: d["runs"][1].update(status="great"), "runs[1].status is 'great', not one of ok, diverged"),
    (lambda d: d["runs"][2].update(curve=[{"step": [1]}]), "runs[2].curve[0].step must be a number or null"),
    (lambda d: d["runs"][0].update(tuned={"metrics": []}), "runs[0].tuned.metrics must be an object, not a list"),
    (lambda d: d.update(stages={"stages": {"train": 3}}), "stages.stages.train must be an object"),
    (lambda d: d.update(study=3), "study must be a string, not an integer"),  # a folder's path, read by the report
])
def test_hostile_results_files_are_one_line(edit, needle, tmp_path, capsys):
    """A results.json with a field of the wrong type anywhere a reader looks: compare and report say which, exit 2."""
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b")
    data = json.loads((tmp_path / "b" / "results.json").read_text())
    edit(data)
    (tmp_path / "b" / "results.json").write_text(json.dumps(data))
    for args in (["compare", a, b], ["report", b]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and needle in err, err
    assert not (tmp_path / "b" / "report.md").exists() and not (tmp_path / "a" / "compare.md").exists()


def test_a_run_whose_seeds_all_diverged_regresses(tmp_path, capsys):
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b")
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    for entry in results["runs"]:
        if entry["model"] == "gan":
            entry.update(status="diverged", metrics={})
    (tmp_path / "b" / "results.json").write_text(json.dumps(results))
    assert main(["compare", a, b, "--fail-on", "fid:+5%"]) == 1
    err = capsys.readouterr().err
    assert "fid of shapes/gan in b: 11 -> nan" in err and "shapes/diffusion" not in err


def test_runs_of_other_presets_or_budgets_are_incomparable(tmp_path, capsys):
    """The same numbers from another preset (smoke vs toy) or another training budget cannot certify anything: with
    --fail-on the pair fails, naming what differs; without it the report says so and the exit status is 0."""
    a = _run(tmp_path, "a")
    assert main(["compare", a, _run(tmp_path, "b", suite="smoke"), "--fail-on", "fid:+5%"]) == 1
    assert "preset and budget: preset" in capsys.readouterr().err
    assert main(["compare", a, _run(tmp_path, "c", steps=30), "--fail-on", "cond_accuracy:-0.02"]) == 1
    assert "images.steps" in capsys.readouterr().err
    assert main(["compare", a, _run(tmp_path, "d", steps=30)]) == 0


def test_a_run_missing_a_gated_familys_entries_regresses(tmp_path, capsys):
    """A new run without the GAN's entries (a family dropped, a crash before it ran) is a regression, exit 1."""
    a, b = _run(tmp_path, "a"), _run(tmp_path, "b")
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    results["runs"] = [r for r in results["runs"] if r["model"] != "gan"]
    (tmp_path / "b" / "results.json").write_text(json.dumps(results))
    assert main(["compare", a, b, "--fail-on", "fid:+5%"]) == 1
    assert "fid of shapes/gan in b: missing (no entry)" in capsys.readouterr().err
