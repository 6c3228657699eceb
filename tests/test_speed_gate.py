"""gvd speed (bench/speed: rankstats, probe, gate, history): the statistics against scipy and closed forms, the
answers on synthetic timings whose answer is known, the exact counters on a toy module, and the command end to end on
a tiny budget (its exit status and output, never a timing threshold)."""

import itertools
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bench.cli import main
from bench.speed import rankstats as rs
from bench.speed.gate import exit_code
from bench.speed.history import draw_history
from bench.speed.probe import Bench, counter_changes, counters, inject_slowdown

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- the statistics against independent computations


@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_signed_rank_null_is_the_enumerated_distribution(n):
    counts = np.zeros(n * (n + 1) // 2 + 1)
    for signs in itertools.product((0, 1), repeat=n):  # every sign pattern of the ranks 1..n
        counts[sum(r for r, s in zip(range(1, n + 1), signs) if s)] += 1
    np.testing.assert_allclose(rs.signed_rank_null(n), counts / 2**n)


def test_hodges_lehmann_is_the_median_of_walsh_averages():
    d = np.random.default_rng(1).normal(0.2, 1, 15)
    walsh = [(d[i] + d[j]) / 2 for i in range(15) for j in range(i, 15)]
    assert rs.paired_shift(d)[0] == pytest.approx(np.median(walsh))
    x, y = d[:7], d[7:] + 1
    assert rs.two_sample_shift(x, y)[0] == pytest.approx(np.median([b - a for a in x for b in y]))


def test_paired_interval_inverts_scipys_exact_signed_rank_test():
    """Just inside each end scipy's exact two-sided Wilcoxon test does not reject at 5%, just outside it does."""
    rng = np.random.default_rng(0)
    for _ in range(60):
        n = int(rng.integers(6, 40))
        d = rng.normal(0.1, 0.3, n) + 0.05 * rng.standard_t(3, n)
        _, lo, hi = rs.paired_shift(d)
        p = lambda shift: stats.wilcoxon(d - shift, method="exact").pvalue  # noqa: E731
        assert p(lo + 1e-9) > 0.05 >= p(lo - 1e-9)
        assert p(hi - 1e-9) > 0.05 >= p(hi + 1e-9)


def test_mann_whitney_matches_scipy_with_and_without_ties():
    rng = np.random.default_rng(2)
    for _ in range(60):
        n, m = rng.integers(3, 30, 2)
        x, y = rng.normal(0, 1, n), rng.normal(0.3, 1, m)
        for a, b in ((x, y), (np.round(x, 1), np.round(y, 1))):  # rounded: many ties
            u, p = rs.mann_whitney(a, b)
            ref = stats.mannwhitneyu(a, b, method="asymptotic", use_continuity=True)
            assert u == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)
    assert rs.mann_whitney([1.0, 1.0], [1.0, 1.0])[1] == 1.0  # every value the same: no evidence


def test_two_sample_interval_inverts_scipys_mann_whitney_test():
    rng = np.random.default_rng(3)
    for _ in range(60):
        n, m = rng.integers(5, 40, 2)
        x, y = rng.normal(0, 1, n), rng.normal(0.5, 1, m)
        _, lo, hi = rs.two_sample_shift(x, y)
        p = lambda s: stats.mannwhitneyu(x, y - s, method="asymptotic", use_continuity=True).pvalue  # noqa: E731
        assert p(lo + 1e-9) > 0.05 >= p(lo - 1e-9)
        assert p(hi - 1e-9) > 0.05 >= p(hi + 1e-9)


# ---------------------------------------------------------------- the answers on timings whose answer is known


def _blocks(rng, n: int, ratio: float, noise: float = 0.03, load=None):
    """Paired block times of a 10 ms benchmark: a shared load factor per round (the machine's), and noise."""
    load = np.ones(n) if load is None else load
    base = 0.01 * load * np.exp(rng.normal(0, noise, n))
    return base, 0.01 * ratio * load * np.exp(rng.normal(0, noise, n))


def test_a_clear_twenty_percent_shift_is_slower_and_its_mirror_faster():
    rng = np.random.default_rng(4)
    c = rs.compare_paired(*_blocks(rng, 20, 1.2))
    assert c.answer == "slower" and c.low > 1.05 and c.low < 1.2 < c.high
    assert rs.compare_paired(*_blocks(rng, 20, 1 / 1.2)).answer == "faster"


def test_identical_distributions_are_never_slower():
    rng = np.random.default_rng(5)
    answers = [rs.compare_paired(*_blocks(rng, int(rng.integers(8, 40)), 1.0, noise=0.05)).answer
               for _ in range(300)]
    assert "slower" not in answers and "faster" not in answers
    assert answers.count("no change") > len(answers) / 2  # the rest inconclusive: small n, wide intervals


def test_pairing_cancels_a_load_that_falls_on_both():
    """The machine's load triples and falls between rounds: each round's pair shares it, so the ratio of a true 10%
    slowdown comes out near 1.10 with an interval narrower than the unpaired one, clear of +5%. The unpaired rank test
    sees the load too: "slower" waits for it (p < 0.05)."""
    rng = np.random.default_rng(6)
    load = np.exp(rng.uniform(0, math.log(3), 30))
    base, head = _blocks(rng, 30, 1.10, noise=0.02, load=load)
    paired, unpaired = rs.compare_paired(base, head), rs.compare_unpaired(base, head)
    assert 1.05 < paired.low < 1.10 < paired.high
    assert paired.high - paired.low < (unpaired.high - unpaired.low) / 3
    assert paired.answer == ("slower" if paired.p < 0.05 else "inconclusive")


def test_a_small_change_is_no_change_and_a_change_at_the_threshold_cannot_be_decided():
    rng = np.random.default_rng(7)
    assert rs.compare_paired(*_blocks(rng, 40, 1.01, noise=0.01)).answer == "no change"
    c = rs._comparison(20, math.log(1.05), math.log(1.02), math.log(1.08), 0.001, 0.05, 0.05)
    assert c.answer == "inconclusive" and c.rounds_needed is None  # the estimate sits on +5% itself


def test_rounds_needed_is_the_closed_form():
    """Interval [1.03, 1.17] around 1.10 after 10 rounds: its half-width on the log scale must shrink to the gap
    between log 1.10 and log 1.05, as 1 / sqrt(n)."""
    half, gap = (math.log(1.17) - math.log(1.03)) / 2, math.log(1.10) - math.log(1.05)
    assert rs.rounds_needed(10, 1.10, 1.03, 1.17, 0.05) == math.ceil(10 * (half / gap) ** 2)
    too_few = rs.compare_paired([0.01] * 4, [0.011] * 4)
    assert too_few.answer == "inconclusive" and too_few.rounds_needed == rs.min_pairs() == 6


def test_the_exit_status_follows_the_answers():
    def result(*answers, changes=()):
        return {"benchmarks": {f"b{i}": {"answer": a, "counter_changes": list(changes) if i == 0 else []}
                               for i, a in enumerate(answers)}}
    assert exit_code(result("no change", "faster"), False) == 0
    assert exit_code(result("no change", "slower", "inconclusive"), False) == 1
    assert exit_code(result("no change", "inconclusive"), False) == 3
    assert exit_code(result("no change", changes=["aten ops 1 -> 2"]), False) == 0
    assert exit_code(result("no change", changes=["aten ops 1 -> 2"]), True) == 1


# ---------------------------------------------------------------- exact counters on a toy module


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        q = self.lin(x)[:, None, :, None].expand(-1, 2, -1, 4)  # (B, heads 2, tokens 8, dim 4)
        return F.scaled_dot_product_attention(q, q, q).sum((1, 3))


@torch.no_grad()
def _counts(fn, net, samples: int = 4):
    bench = Bench(fn, samples, "toy", {"net": net})
    fn()
    return counters(bench, "cpu")


def test_an_added_op_an_extra_pass_and_a_dtype_change_are_each_reported():
    torch.manual_seed(0)
    net, x = Toy(), torch.randn(4, 8)
    net64, x64 = Toy().double(), x.double()
    base = _counts(lambda: net(x), net)
    assert counter_changes(base, _counts(lambda: net(x), net)) == []  # the same code counts the same
    added = counter_changes(base, _counts(lambda: net(x) + 1, net))
    assert any("aten.add.Tensor +1" in line for line in added) and any("bytes allocated" in line for line in added)
    twice = counter_changes(base, _counts(lambda: net(net(x)), net))
    assert "net passes per sample 1.0 -> 2.0" in twice and any(line.startswith("FLOPs") for line in twice)
    double = counter_changes(base, _counts(lambda: net64(x64), net64))
    bytes_line = next(line for line in double if line.startswith("bytes allocated"))
    assert "float64 +" in bytes_line and "float32 -" in bytes_line


def test_counts_against_closed_forms_and_torchs_flop_counter():
    torch.manual_seed(0)
    net, x = Toy(), torch.randn(4, 8)
    c = _counts(lambda: net(x), net)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as ref, torch.no_grad():
        net(x)  # the attention as explicit matmuls, which torch's counter sees
    assert c["flops_per_sample"] * 4 == ref.get_total_flops() > 0
    assert c["passes_per_sample"] == {"net": 1.0} and c["nfe"] is None and c["host_syncs"] is None  # no CUDA here
    plus = _counts(lambda: x + 1, net)
    assert plus["ops_by_kind"] == {"aten.add.Tensor": 1} and plus["alloc_bytes"] == 4 * 8 * 4 and plus["allocs"] == 1
    y = x.clone()
    assert _counts(lambda: y.add_(0).view(-1), net)["allocs"] == 0  # in place and a view allocate nothing
    assert _counts(lambda: (x, 7), net)["nfe"] == 7  # a sampler's (x0, nfe)


def test_the_injected_slowdown_wraps_each_network_once_and_changes_no_result():
    torch.manual_seed(0)
    net, x = Toy(), torch.randn(4, 8)
    want = net(x)
    benches = {"a": Bench(lambda: net(x), 4, "a", {"unet": net}), "b": Bench(lambda: net(x), 4, "b", {"unet": net})}
    before = _counts(lambda: net(x), net)
    inject_slowdown(benches, 0.1, torch.device("cpu"))
    wrapped = net.forward
    inject_slowdown(benches, 0.1, torch.device("cpu"))
    assert net.forward is wrapped  # not twice
    torch.testing.assert_close(net(x), want)
    assert counter_changes(before, _counts(lambda: net(x), net)) == []  # a busy wait runs no op


# ---------------------------------------------------------------- the command


def _gvd(*args: str, cwd: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    return subprocess.run([sys.executable, "-m", "bench", "speed", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def aa(tmp_path_factory):
    """gvd speed HEAD HEAD on the smoke preset with a one-second budget, its result file and its history line."""
    tmp = tmp_path_factory.mktemp("speed")
    proc = _gvd("HEAD", "HEAD", "--preset", "smoke", "--budget", "1", "--out", str(tmp / "aa.json"),
                "--record", str(tmp / "h.jsonl"))
    return proc, tmp


def test_a_tiny_a_a_run_prints_every_benchmark_and_an_answer(aa):
    proc, tmp = aa
    assert proc.returncode in (0, 1, 3), proc.stderr[-2000:]
    result = json.loads((tmp / "aa.json").read_text())
    assert proc.returncode == result["exit"] == exit_code(result, False)
    names = {"unet_forward", "guided_step", "vae_decode", "gan_sample", "gan_train_step", "diffusion_train_step",
             *(f"sample_{s}" for s in ("ddpm", "ddim", "dpmpp2m", "euler", "heun"))}
    assert set(result["benchmarks"]) == names
    for name, b in result["benchmarks"].items():
        assert f"| {name} |" in proc.stdout
        assert b["answer"] in ("slower", "faster", "no change", "inconclusive")
        assert len(b["blocks"]["BASE"]) == len(b["blocks"]["HEAD"]) == b["n"] >= 2
        assert b["counters"]["BASE"] == b["counters"]["HEAD"] and b["counter_changes"] == []  # one commit
    assert result["benchmarks"]["sample_heun"]["counters"]["HEAD"]["nfe"] == 2 * 3 - 1  # Heun: 2 per step, 1 last
    assert result["benchmarks"]["guided_step"]["counters"]["HEAD"]["passes_per_sample"] == {"unet": 2.0}
    assert "Answer:" in proc.stdout and result["base"]["sha"] == result["head"]["sha"]
    line = json.loads((tmp / "h.jsonl").read_text().splitlines()[-1])
    assert line["head"]["sha"] == result["head"]["sha"] and set(line["benchmarks"]) == names


def test_against_a_saved_result_is_the_weaker_mode(aa):
    _, tmp = aa
    proc = _gvd("--against", str(tmp / "aa.json"), "--preset", "smoke", "--budget", "1")
    assert proc.returncode in (0, 1, 3), proc.stderr[-2000:]
    assert "WEAKER MODE" in proc.stdout and "| unet_forward |" in proc.stdout
    other = _gvd("--against", str(tmp / "aa.json"), "--preset", "quick", "--budget", "1")
    assert other.returncode == 2 and "preset" in other.stderr and len(other.stderr.strip().splitlines()) == 1


def _repo(tmp: Path) -> Path:
    """A git repository holding a copy of models/ at one commit."""
    repo = tmp / "repo"
    shutil.copytree(ROOT / "models", repo / "models", ignore=shutil.ignore_patterns("__pycache__"))
    for cmd in (["init", "-q"], ["add", "models"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m"]):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True, capture_output=True)
    return repo


@pytest.mark.slow  # a scratch repository and four timed processes: about 30-50 s
def test_each_revision_runs_its_own_models_and_a_counter_change_fails_the_gate(tmp_path):
    """BASE is the repository's commit, HEAD its working tree with one more op in guidance: only the guided
    benchmarks' counters change, and --fail-on-counters makes that exit 1 whatever the clocks say."""
    repo = _repo(tmp_path)
    path = repo / "models" / "samplers.py"
    text = path.read_text()
    path.write_text(text.replace("return u + scale * (c - u)", "return (u + scale * (c - u)) * 1.0"))
    proc = _gvd("HEAD", "--preset", "smoke", "--budget", "1", "--fail-on-counters", "--out", str(tmp_path / "r.json"),
                cwd=repo)
    assert proc.returncode == 1, proc.stderr[-2000:]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["head"]["dirty"] and result["base"]["rev"] == "HEAD"
    changed = {n for n, b in result["benchmarks"].items() if b["counter_changes"]}
    assert changed == {"guided_step"} | {f"sample_{s}" for s in ("ddpm", "ddim", "dpmpp2m", "euler", "heun")}
    assert any("aten.mul.Tensor +1" in line for line in result["benchmarks"]["guided_step"]["counter_changes"])
    assert "counters changed" in proc.stdout
    worktrees = subprocess.run(["git", "-C", str(repo), "worktree", "list"], capture_output=True, text=True).stdout
    assert len(worktrees.strip().splitlines()) == 1  # BASE's temporary worktree is gone


@pytest.mark.slow  # a scratch repository and four timed processes: about 30-50 s
def test_a_revision_without_an_api_is_one_line_and_exit_2(tmp_path):
    repo = _repo(tmp_path)
    path = repo / "models" / "samplers.py"
    path.write_text(path.read_text().replace("def guided(", "def guided_renamed("))
    proc = _gvd("HEAD", "--preset", "smoke", "--budget", "1", cwd=repo)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gvd: error: HEAD working tree (")
    assert lines[0].endswith("the revision's models.samplers has no guided")


@pytest.mark.parametrize("argv, message", [
    (["speed", "no-such-revision"], "unknown revision 'no-such-revision'"),
    (["speed", "HEAD", "HEAD", "HEAD"], "takes BASE [HEAD], got 3 revisions"),
    (["speed"], "takes BASE [HEAD], got 0 revisions"),
    (["speed", "HEAD", "--budget", "0"], "--budget must be > 0"),
    (["speed", "HEAD", "--threshold", "60"], "--threshold is in percent"),
    (["speed", "HEAD", "--inject", "1.5"], "--inject is a fraction"),
    (["speed", "HEAD", "--inject", "0.1", "--record", "h.jsonl"], "--inject calibrates"),
    (["speed", "HEAD", "--out", "result.txt"], "give a .json file name"),
    (["speed", "HEAD", "--preset", "toy"], "has no image networks"),
    (["speed", "HEAD", "--against", "missing.json"], "not a readable gvd speed result"),
    (["speed", "HEAD", "--history", "missing.jsonl"], "--history draws a recorded file"),
    (["speed", "--history", "missing.jsonl"], "not a readable `gvd speed --record` file"),
    (["speed", "HEAD", "--clock", "sundial"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_outside_a_repository_is_one_line_and_exit_2(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert main(["speed", "HEAD"]) == 2
    err = capsys.readouterr().err
    assert "not inside a git repository" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- history


def _record(i: int, head_s: float, host: str = "m1") -> dict:
    return {"created": f"2026-12-01T00:{i:02d}:00", "base": {"rev": "main", "sha": f"{i:08x}".ljust(40, "a")},
            "head": {"rev": "working tree", "sha": f"{i + 1:08x}".ljust(40, "a"), "dirty": False},
            "mode": "interleaved",
            "machine": {"host": host}, "load": {"start": [4.0, 4.0, 4.0], "end": [4.0, 4.0, 4.0]},
            "preset": "quick", "device": "cpu", "clock": "cpu", "threads": 1, "inject": 0.0, "exit": 0,
            "benchmarks": {"unet_forward": {"ratio": 1.0, "low": 0.98, "high": 1.02, "p": 0.5, "answer": "no change",
                                            "n": 20, "base_s": head_s, "head_s": head_s, "counters": {}}}}


def test_history_finds_the_step_where_the_kernel_slowed(tmp_path, capsys):
    """Twelve records, 10 ms with 1% noise, then 12 ms from the seventh on: one change point, +20%, at the seventh
    record's revision; a record of another machine is left out and counted."""
    pytest.importorskip("ruptures")
    rng = np.random.default_rng(0)
    times = [0.010 * (1.2 if i >= 6 else 1.0) * math.exp(rng.normal(0, 0.01)) for i in range(12)]
    path = tmp_path / "h.jsonl"
    lines = [json.dumps(_record(i, t)) for i, t in enumerate(times)]
    path.write_text("\n".join(lines[:3] + [json.dumps(_record(99, 1.0, host="other"))] + lines[3:]) + "\n")
    assert main(["speed", "--history", str(path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| unet_forward |"))
    assert f"at {7:08x}: +2" in row and row.count("at ") == 1, row
    assert "1 of other machines or settings left out" in out and (tmp_path / "h.png").stat().st_size > 0


def test_history_without_the_extra_names_it(tmp_path, monkeypatch, capsys):
    path = tmp_path / "h.jsonl"
    path.write_text("\n".join(json.dumps(_record(i, 0.01)) for i in range(6)) + "\n")
    monkeypatch.setitem(sys.modules, "ruptures", None)  # import ruptures now raises ImportError
    assert main(["speed", "--history", str(path)]) == 2
    err = capsys.readouterr().err
    assert 'pip install -e ".[history]"' in err and len(err.strip().splitlines()) == 1
    with pytest.raises(Exception, match="history extra"):
        draw_history(path, tmp_path / "x.png", 0.05)
