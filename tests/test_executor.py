"""Where the jobs run (bench/core/executor.py), the parts that need neither Ray nor a GPU: `--executor ray` without the
extra, the flags that cannot go together, and one local worker per visible GPU, each pinned to its own (the device
count mocked: no GPU is touched)."""

import os
import socket
import sys
import time

import pytest
import torch

from bench.cli import main
from bench.core import executor, pool
from bench.errors import UserError


@pytest.mark.parametrize("command", [["run", "--preset", "smoke"], ["study", "stability", "--k", "1"]])
def test_executor_ray_without_the_extra_is_one_line_exit_2_nothing_written(command, tmp_path, capsys, monkeypatch):
    """Ray not installed (simulated: None in sys.modules makes `import ray` fail as a missing module does): one line
    naming the extra, exit 2, before anything is written."""
    monkeypatch.setitem(sys.modules, "ray", None)
    out = tmp_path / "out"
    assert main([*command, "--device", "cpu", "--executor", "ray", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("gvd: error: --executor ray needs Ray") and 'pip install -e ".[ray]"' in err
    assert not out.exists()


@pytest.mark.parametrize("flags, needle", [
    (["--address", "10.0.0.1:6379"], "--address names a Ray cluster: it needs --executor ray"),
    (["--executor", "dask"], "invalid choice: 'dask'"),
    (["--workers", "0"], "--workers must be at least 1"),
])
def test_executor_flags_that_cannot_be_are_one_line_exit_2(flags, needle, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", "--preset", "smoke", "--device", "cpu", *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err
    assert not out.exists()


def test_workers_with_an_address_is_refused():
    """On a cluster its resources decide how many jobs run at once; --workers there would be silently ignored."""
    pytest.importorskip("ray")
    with pytest.raises(UserError, match="--workers sizes this machine's pool"):
        executor.choose("ray", "cpu", workers=2, address="auto")


def test_one_local_worker_per_visible_gpu(monkeypatch):
    """With CUDA the local pool runs one worker per GPU that torch sees, named as CUDA_VISIBLE_DEVICES names them
    (the devices a scheduler gave this process, not 0..n-1); the CPU keeps one per core; --workers wins."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert executor.visible_gpus() == ("0", "1", "2")
    chosen = executor.choose("local", torch.device("cuda"))
    assert (chosen.workers, chosen.gpus) == (3, ("0", "1", "2"))
    assert executor.choose("local", torch.device("cuda"), workers=5).workers == 5
    cpu = executor.choose("local", torch.device("cpu"))
    assert (cpu.workers, cpu.gpus) == (os.cpu_count(), ())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")
    assert executor.visible_gpus() == ("4", "6", "7")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert executor.visible_gpus() == ()


def _my_gpu(n: int) -> tuple[int, str | None]:
    time.sleep(0.3)  # long enough that every worker gets a job
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_each_local_worker_is_pinned_to_its_own_gpu(monkeypatch):
    """Worker i starts with CUDA_VISIBLE_DEVICES = gpus[i]: each sees one device, its "cuda", and no two share one;
    the parent's own environment is as it was."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    seen = {}
    pool.run_jobs(_my_gpu, list(range(6)), 2, lambda job, out: seen.__setitem__(job, out), gpus=("4", "6"))
    by_worker = {}
    for pid, gpu in seen.values():
        by_worker.setdefault(pid, set()).add(gpu)
    assert len(by_worker) == 2 and sorted(g for gpus in by_worker.values() for g in gpus) == ["4", "6"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,6"


def test_an_address_where_no_cluster_answers_is_one_line_exit_2(tmp_path, capsys):
    """ray.init would retry a dead address for minutes: gvd asks the port first, and says so in one line."""
    pytest.importorskip("ray")
    with socket.socket() as s:  # a port nothing listens on: bound, then closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    assert main(["run", "--preset", "smoke", "--device", "cpu", "--executor", "ray", "--address", f"127.0.0.1:{port}",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--address 127.0.0.1:{port}: no Ray cluster answers there" in err
    assert not out.exists()
