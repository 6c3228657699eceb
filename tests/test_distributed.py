"""torchrun + DDP (bench/distributed.py): two gloo processes on the CPU against the one-process computation.

The two-process checks run once, under torchrun, in tests/ddp_worker.py (every launch is guarded by a timeout, so a
hang fails the test instead of stalling CI); the whole-CLI comparison of a 2-process smoke run with a 1-process one is
marked slow.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.core import distributed
from bench.speed.scaling import scaling_row

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def torchrun(args: list[str], timeout: float, **env) -> subprocess.CompletedProcess:
    """A 2-process launch from the repository root; a hang past `timeout` fails the calling test."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    environ.pop("WORLD_SIZE", None)
    return subprocess.run(TORCHRUN + args, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def checks(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ddp")
    proc = torchrun(["tests/ddp_worker.py", "checks", str(out)], timeout=900, GVD_DIST_TIMEOUT="600")  # hang guards
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr  # gloo's abort at exit: the group was left cleanly
    return json.loads((out / "checks.json").read_text())


def test_gradients_equal_across_ranks_and_to_one_process(checks):
    g = checks["gradients"]
    assert checks["world"] == 2
    # DDP: every rank holds the same averaged gradient, bit for bit
    assert g["d_rank_spread"] == 0.0 and g["clip_rank_spread"] == 0.0
    # ... and it is the one-process gradient of the global batch: BatchNorm synchronised over the ranks (a per-rank
    # BatchNorm normalises each half by its own statistics and misses by ~1e-2 here), CLIP contrasting the whole batch
    assert g["d_vs_one_process"] <= 1e-5 * g["d_grad_scale"]
    assert g["clip_vs_one_process"] <= 1e-5 * g["clip_grad_scale"]


def test_train_step_under_ddp_is_the_one_process_step(checks):
    t = checks["train_step"]
    assert t["g_rank_spread"] == 0.0  # the generator's weights agree on both ranks after two steps
    assert t["g_vs_one_process"] < 1e-5 and t["loss_vs_one_process"] < 1e-5  # and equal one process's
    assert t["ema_rank_spread"] == 0.0 and t["ema_vs_one_process"] < 1e-5  # so does the EMA of G


def test_a_signal_on_one_rank_stops_both_after_the_same_step_and_resumes_exactly(checks):
    r = checks["resume"]
    assert r["stopped"] == [True, True] and r["saved_at"] == 4  # SIGTERM to rank 1 during step 3 (the 4th)
    assert r["taken"] == r["one_process_taken"] == [4, 5]  # resumed: only the steps after the saved 4 are taken
    assert r["resumed_vs_unbroken"] == 0.0  # resumed under DDP: bit for bit the unbroken DDP training
    assert r["one_process_resume_vs_unbroken"] < 1e-5  # resumed in one process: the same training, to rounding


@pytest.mark.parametrize("n", [1, 2, 5, 32, 101])
def test_evaluation_shards_disjoint_and_cover_n_exactly(checks, n):
    s = checks["shards"][str(n)]
    blocks = [set(b) for b in s["blocks"]]
    assert not blocks[0] & blocks[1]
    assert sorted(blocks[0] | blocks[1]) == list(range(n))
    assert s["gathered"] == list(range(n)) and s["shape"] == [n, 3]  # in order, no padding left in


def test_distributed_fid_equals_one_process_fid(checks):
    f = checks["fid"]
    assert f["num_gathered"] == 301
    assert f["samples_max_diff"] == 0.0  # sample i is the same point whichever rank draws it
    assert f["fid_distributed"] == pytest.approx(f["fid_one_process"], rel=1e-12)


def test_only_rank_zero_writes_files(checks):
    assert checks["files"]["written"] == ["rank0/checkpoints/ring8_seed0_gan.safetensors", "rank0/results.json",
                                          "rank0/samples/shapes_seed0_gan.png"]


def test_logged_numbers_are_averaged_over_ranks(checks):
    assert checks["average"] == {"step": 3, "loss": 0.5}  # ranks logged 0 and 1; the step is not averaged


@pytest.mark.slow  # a second launch (~10 s); the checks above are the default suite's real 2-process run
def test_failure_on_one_rank_ends_the_run_naming_it(tmp_path):
    """Rank 1 raises while rank 0 waits in an all-reduce: the job ends in seconds (not at the 120 s timeout)."""
    proc = torchrun(["tests/ddp_worker.py", "fail", str(tmp_path)], timeout=100, GVD_DIST_TIMEOUT="120")
    assert proc.returncode != 0
    assert "gvd: rank 1 of 2 failed: RuntimeError: injected failure" in proc.stderr


# ---------------------------------------------------------------- one process: everything as before


def test_one_process_helpers_are_identities():
    assert not distributed.active() and distributed.world() == 1 and distributed.is_main()
    assert distributed.shard(7) == slice(0, 7)
    x = torch.arange(6.0)
    assert distributed.gather_rows(x, 6) is x and distributed.local_rows(x) is x
    m = torch.nn.BatchNorm2d(3)
    assert distributed.wrap(m, torch.device("cpu")) is m and distributed.sync_batchnorm(m) is m
    assert distributed.average({"step": 1, "loss": 2.0}) == {"step": 1, "loss": 2.0}
    assert distributed.on_main(lambda: 5) == 5
    assert distributed.batch_record(64) == {"world_size": 1, "batch_per_rank": 64, "batch_global": 64}


def test_gloo_sync_batchnorm_in_one_process_is_batchnorm():
    torch.manual_seed(0)
    ref = torch.nn.BatchNorm2d(4)
    sync = distributed.GlooSyncBatchNorm(4)
    sync.load_state_dict(ref.state_dict())
    x = torch.randn(5, 4, 3, 3)
    assert torch.equal(sync(x), ref(x)) and torch.equal(sync.running_var, ref.running_var)
    assert set(sync.state_dict()) == set(ref.state_dict())  # checkpoints load into nn.BatchNorm2d


def test_batch_that_does_not_split_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")  # as torchrun would announce 3 processes
    out = tmp_path / "run"
    assert main(["run", "--preset", "smoke", "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "mixtures.batch_size = 64 does not split evenly over 3 processes" in err
    assert not out.exists() and not distributed.active()


# ---------------------------------------------------------------- the whole CLI, 2 processes vs 1


def _metrics(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    return {(r["dataset"], r["model"]): r for r in results["runs"]}


@pytest.mark.slow
def test_two_process_smoke_run_matches_one_process(tmp_path):
    # float32: under bf16 autocast the per-rank half batches round their weight gradients differently (bf16 keeps 3
    # significant digits), so two processes agree with one only to bf16 rounding, compounded over the steps
    args = ["run", "--preset", "smoke", "--device", "cpu", "--set", 'mixtures.datasets=["ring8"]',
            "--set", "images.amp=false"]
    env = {"GVD_CACHE": str(tmp_path / "cache"), "GVD_DIST_TIMEOUT": "300"}
    one = subprocess.run([sys.executable, "-m", "bench", *args, "--out", str(tmp_path / "one")], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT), **env}, capture_output=True, text=True,
                         timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    audit = tmp_path / "audit"
    audit.mkdir()
    (audit / "sitecustomize.py").write_text(AUDIT.format(out=str(tmp_path / "two"), log=str(audit)))
    two = torchrun(["-m", "bench", *args, "--out", str(tmp_path / "two")], timeout=600,
                   PYTHONPATH=f"{audit}{os.pathsep}{ROOT}", **env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "terminate called" not in two.stderr
    # only rank 0 touched the run folder (every open-for-writing, rename and mkdir under it, as Python audits them)
    assert (audit / "rank0.txt").read_text().strip() and not (audit / "rank1.txt").read_text().strip()
    a, b = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert a.keys() == b.keys()
    for key, entry in a.items():
        assert b[key]["status"] == entry["status"] == "ok"
        assert b[key]["train"]["batch_global"] == entry["train"]["batch_global"]
        assert b[key]["train"]["batch_per_rank"] * 2 == entry["train"]["batch_global"]
        for name, value in entry["metrics"].items():
            if isinstance(value, float):
                assert np.isclose(b[key]["metrics"][name], value, rtol=1e-4, atol=1e-6), (key, name)


AUDIT = '''
import atexit, os, sys
_OUT, _seen = {out!r}, []
def _hook(event, args):
    if event in ("open", "os.rename", "os.replace", "os.mkdir", "tempfile.mkstemp") and args:
        path, mode = str(args[0]), args[1] if event == "open" and len(args) > 1 else "w"
        if path.startswith(_OUT) and (event != "open" or any(c in str(mode) for c in "wax+")):
            _seen.append(event + " " + path)
sys.addaudithook(_hook)
atexit.register(lambda: open(os.path.join({log!r}, "rank" + os.environ.get("RANK", "?") + ".txt"), "w").write(
    "\\n".join(_seen)))
'''


# ---------------------------------------------------------------- `gvd throughput` under torchrun


def test_scaling_row_arithmetic():
    """Training: 2 processes each train 32 images; alone 32 images take 2 s, together 1 s and 2 s (the step ends
    with the slowest): total 64 / 2 = 32 img/s, efficiency 32 / (2 x 16) = 1. Sampling: 32 images split in two."""
    train = scaling_row("gan", "train", 32, 2.0, [1.0, 2.0])
    assert train["total_images_per_s"] == 32 and train["per_gpu_images_per_s"] == [32, 16]
    assert train["scaling_efficiency"] == 1.0
    sample = scaling_row("gan", "sample", 32, 2.0, [2.0, 2.0])  # each draws 16 in the time one process drew 32
    assert sample["total_images_per_s"] == 16 and sample["scaling_efficiency"] == 0.5


@pytest.mark.slow
def test_throughput_under_torchrun(tmp_path):
    out = tmp_path / "thr.json"
    proc = torchrun(["-m", "bench", "throughput", "--preset", "smoke", "--device", "cpu", "--out", str(out)],
                    timeout=300, GVD_DIST_TIMEOUT="200")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["world_size"] == 2 and len(result["rows"]) == 4
    for row in result["rows"]:
        assert len(row["per_gpu_images_per_s"]) == 2 and row["total_images_per_s"] > 0
        assert row["scaling_efficiency"] == pytest.approx(
            row["total_images_per_s"] / (2 * row["one_process_images_per_s"]))
    assert proc.stdout.count("scaling efficiency") == 1  # rank 0 alone prints
