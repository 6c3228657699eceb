"""`--executor ray` on a local two-node Ray cluster (ray.cluster_utils.Cluster: two raylets of one CPU each on this
machine, each node with a cache folder of its own, as machines without a shared filesystem have): the numbers equal
the local pool's, a task killed mid-training is retried from its saved state to the same numbers, and SIGINT to the
driver stops this run's tasks only and leaves a folder that `--resume` (on the local pool) finishes."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from processes import alive, cmdline
from safetensors import safe_open

from bench.cli import main
from bench.core.rundir import RunDir

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402 -- after the skip: the ray extra is optional

NODE = {"num_cpus": 1, "object_store_memory": 80 * 2**20}
# one 2D training of a few seconds, its state saved every 10% of its steps: long enough to be caught mid-training
STEPS = 4000
ONE_2D = ["run", "--preset", "smoke", "--device", "cpu", "--set", "images=null", "--set", 'families=["diffusion"]',
          "--set", 'mixtures.datasets=["ring8"]', "--set", f"mixtures.steps={STEPS}"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two nodes of one CPU; each node's tasks see their own $GVD_CACHE, and the driver (this process) a third."""
    caches = [tmp_path_factory.mktemp(f"node{i}-cache") for i in range(2)]
    nodes = Cluster(initialize_head=True, head_node_args={**NODE, "env_vars": {"GVD_CACHE": str(caches[0])}})
    nodes.add_node(**NODE, env_vars={"GVD_CACHE": str(caches[1])})
    nodes.wait_for_nodes()
    mp = pytest.MonkeyPatch()
    mp.setenv("GVD_CACHE", str(tmp_path_factory.mktemp("driver-cache")))
    yield nodes.address, caches
    mp.undo()
    nodes.shutdown()


@pytest.fixture(scope="module")
def unbroken(cluster, tmp_path_factory) -> dict:
    """The entry of ONE_2D run whole, in this process (the local pool's one worker)."""
    out = tmp_path_factory.mktemp("unbroken")
    assert main([*ONE_2D, "--workers", "1", "--out", str(out)]) == 0
    return _entries(out)[0]


def _ray(address: str, *args) -> list[str]:
    return [*args, "--executor", "ray", "--address", address]


def _entries(root: Path) -> list[dict]:
    return json.loads((root / "results.json").read_text())["runs"]


def _files(root: Path) -> dict[str, bytes]:
    """The run folder's files that the jobs write (the report's own pages and figures left out)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.parts[len(root.parts)] in ("checkpoints", "history", "samples", "process")}


@pytest.mark.slow
def test_smoke_on_two_nodes_equals_the_local_pool(cluster, tmp_path):
    """The smoke preset on the two-node cluster and on the local pool (two workers): every entry's metrics (and raw
    metrics, curves, tuned knobs, memorisation) equal, and the run folders hold the same checkpoints, histories,
    samples and process arrays byte for byte, though every job wrote into a folder of its own on its node. The nodes
    made none of the shared preparations again: the text encoder each image entry records (its training seconds
    included) is the one the driver cached, and each node's cache holds the driver's files, byte for byte."""
    address, caches = cluster
    smoke = ["run", "--preset", "smoke", "--device", "cpu", "--set", "throughput_budget_s=0"]
    assert main([*smoke, "--workers", "2", "--out", str(tmp_path / "local")]) == 0
    assert main(_ray(address, *smoke, "--out", str(tmp_path / "ray"))) == 0
    local, remote = _entries(tmp_path / "local"), _entries(tmp_path / "ray")
    assert [(r["dataset"], r["model"], r["status"]) for r in local] == [
        (r["dataset"], r["model"], r["status"]) for r in remote]
    for key in ("metrics", "metrics_raw", "curve", "tuned", "memorisation"):
        assert [r.get(key) for r in local] == [r.get(key) for r in remote], key
    images = [i for i, r in enumerate(local) if r["dataset"] == "shapes" and r["status"] == "ok"]
    assert images and all(local[i]["train"]["text_encoder"] == remote[i]["train"]["text_encoder"] for i in images)
    a, b = _files(tmp_path / "local"), _files(tmp_path / "ray")
    assert any(n.startswith("checkpoints/") for n in a) and a.keys() == b.keys()
    assert [n for n in a if a[n] != b[n]] == []
    driver = Path(os.environ["GVD_CACHE"])
    made = {p.relative_to(driver): p.read_bytes() for p in driver.rglob("*") if p.is_file()}
    for cache in caches:
        got = {p.relative_to(cache): p.read_bytes() for p in cache.rglob("*") if p.is_file()}
        assert got and all(made[name] == data for name, data in got.items())
    assert json.loads((tmp_path / "ray" / "results.json").read_text())["distributed"]["executor"] == "ray"


def _task_processes() -> list[int]:
    """Ray workers running a task of gvd (Ray names a worker's process after its task: "ray::gvd: <job>")."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        if cmdline(int(proc.name)).startswith(b"ray::gvd: ") and alive(int(proc.name)):
            pids.append(int(proc.name))
    return pids


def _steps_done(path: Path) -> int:
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["train_state"])["steps_done"]


def test_a_task_killed_mid_training_is_retried_from_its_state(cluster, unbroken, tmp_path, capsys):
    """kill -9 of the Ray worker that trains (as the OOM killer or a lost node does) once its first state has reached
    the driver's folder: Ray runs the task again, from that state (the driver says so), and the entry equals an
    unbroken run's."""
    address, _ = cluster
    state = RunDir(tmp_path / "ray").state_path("ring8", 0, "diffusion")
    killed = []

    def kill_when_a_state_arrives():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            if state.is_file() and (pids := _task_processes()):
                killed.append(_steps_done(state))
                os.kill(pids[0], signal.SIGKILL)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_when_a_state_arrives, daemon=True)
    killer.start()
    assert main(_ray(address, *ONE_2D, "--out", str(tmp_path / "ray"))) == 0
    killer.join()
    assert killed and 0 < killed[0] < STEPS, killed
    out = capsys.readouterr().out
    assert "ring8 seed 0 diffusion: its Ray task was lost; Ray runs it again, from ring8_seed0_diffusion" in out
    broken = _entries(tmp_path / "ray")[0]
    assert broken["status"] == "ok" and broken["metrics"] == unbroken["metrics"]
    assert not state.exists()  # the entry is in results.json: its state is gone, as on the local pool


def test_sigint_stops_this_runs_tasks_only_and_leaves_a_resumable_folder(cluster, unbroken, tmp_path):
    """SIGINT to `gvd run --executor ray` mid-training: exit 130, the training's state saved in the run folder, the
    entry "interrupted", no task of the run left on the cluster, the cluster still up; then `gvd run --resume` on the
    local pool finishes it with an unbroken run's numbers."""
    address, _ = cluster
    out = tmp_path / "run"
    here = str(Path(__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen([sys.executable, "-m", "bench", *_ray(address, *ONE_2D, "--out", str(out))], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = RunDir(out).state_path("ring8", 0, "diffusion")
    try:
        deadline = time.monotonic() + 300
        while not state.is_file() and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state.is_file(), "no state reached the run folder within 300 s"
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=120)
    finally:
        driver.kill()
    assert driver.returncode == 130, err[-2000:]
    assert [r["status"] for r in _entries(out)] == ["interrupted"]
    assert 0 < _steps_done(state) < STEPS
    deadline = time.monotonic() + 60
    while _task_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _task_processes() == []
    ray.init(address=address)
    try:
        assert ray.get(ray.remote(lambda: 1).remote(), timeout=120) == 1  # the cluster runs on
    finally:
        ray.shutdown()
    assert main(["run", "--resume", str(out), "--workers", "1"]) == 0
    assert _entries(out)[0]["metrics"] == unbroken["metrics"]


@pytest.mark.slow
def test_the_study_on_ray_equals_the_local_pool(cluster, tmp_path):
    """`gvd study stability --executor ray`: the same runs, outcomes and metrics as on the local pool, each run's
    file written by the driver into the study folder."""
    address, _ = cluster
    tiny = ["study", "stability", "--k", "1", "--seeds", "1", "--steps", "20", "--datasets", "ring8", "--set",
            "num_samples=60", "--set", "sampler=ddim:3", "--set", "batch_size=32"]
    assert main([*tiny, "--workers", "2", "--out", str(tmp_path / "local")]) == 0
    assert main(_ray(address, *tiny, "--out", str(tmp_path / "ray"))) == 0
    runs = [json.loads((tmp_path / where / "study.json").read_text())["runs"] for where in ("local", "ray")]
    assert len(runs[0]) == 2
    for key in ("family", "knobs", "outcome", "metrics"):
        assert [r[key] for r in runs[0]] == [r[key] for r in runs[1]], key
    assert sorted(p.name for p in (tmp_path / "ray" / "runs").iterdir()) == sorted(
        p.name for p in (tmp_path / "local" / "runs").iterdir())
