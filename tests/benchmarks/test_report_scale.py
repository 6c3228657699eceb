"""`gvd report` on a results.json of 10,000 entries (issue 36: it did not finish within the reliability probe's limit;
a sign-flip test built a 200,000 x seeds sign matrix per metric and a figure drew one artist per seed).

The entries are a real 2D smoke run's (GAN, diffusion, held-out real on ring8, a few training steps), replicated
under new seeds with every number scaled by a seeded random factor, so the seeds differ as real seeds do. With the
project's default `--benchmark-disable` the report is built once from 300 entries (a few seconds); with
`--benchmark-enable` from 10,000. The benchmark checks what the report says against the file it read: every family's
row counts all of its seeds.
"""

import copy
import json
import re

import numpy as np
import pytest

from bench.cli import main

ENTRIES = 10_000  # timed size (--benchmark-enable)
QUICK_ENTRIES = 300  # the default run's size: the suite still works, in seconds
TINY = ["run", "--preset", "smoke", "--device", "cpu", "--workers", "1", "--seeds", "0", "--steps", "5",
        "--set", "images=null", "--set", 'mixtures.datasets=["ring8"]', "--set", "mixtures.num_samples=50",
        "--set", "mixtures.eval_checkpoints=2", "--set", "throughput_budget_s=0"]


def _jitter(value, rng):
    """Every number of an entry scaled by one seeded factor (ints stay ints, flags and strings as they are)."""
    if isinstance(value, dict):
        return {k: _jitter(v, rng) for k, v in value.items()}
    if isinstance(value, list):
        return [_jitter(v, rng) for v in value]
    if isinstance(value, float):
        return value * float(rng.uniform(0.8, 1.2))
    return value


def replicate(results: dict, entries: int) -> dict:
    """results with its runs repeated under new seeds (seed k of an entry: the entry at seed + k) until `entries`
    entries; metrics, training records and curves jittered per (entry, seed) so no two seeds are the same."""
    base, runs, k = results["runs"], [], 0
    while len(runs) < entries:
        for i, entry in enumerate(base[:entries - len(runs)]):
            new = copy.deepcopy(entry)
            rng = np.random.default_rng([k, i])
            for key in ("metrics", "metrics_raw", "train", "throughput", "curve", "stability"):
                if key in new and k:
                    new[key] = _jitter(new[key], rng)
            runs.append({**new, "seed": entry["seed"] + k})
        k += 1
    return {**results, "runs": runs, "config": {**results["config"], "seeds": list(range(k))}}


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("report-bench") / "smoke"
    assert main(TINY + ["--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text())


def test_report_on_many_entries(benchmark, smoke_results, tmp_path):
    entries = QUICK_ENTRIES if benchmark.disabled else ENTRIES
    big = replicate(smoke_results, entries)
    (tmp_path / "results.json").write_text(json.dumps(big))
    code = benchmark.pedantic(main, args=(["report", str(tmp_path)],), rounds=1, iterations=1)
    assert code in (None, 0)
    text = (tmp_path / "report.md").read_text()
    for family in ("gan", "diffusion"):
        seeds = sum(r["model"] == family for r in big["runs"])
        ok = sum(r["model"] == family and r["status"] == "ok" for r in big["runs"])
        assert seeds > 1 and f"(n={ok})" in text, (family, seeds)
    counts = {int(n) for n in re.findall(r"\(n=(\d+)\)", text)}
    assert max(counts) == max(sum(r["model"] == f for r in big["runs"]) for f in ("gan", "diffusion"))
