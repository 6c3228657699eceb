"""bench/stats.py against scipy's t interval on known samples, and the paired difference's coverage by simulation."""

import numpy as np
import pytest
from scipy import stats as sps

from bench.evaluate.stats import family_differences, mean_interval, paired_difference


def test_mean_interval_matches_scipy_t_interval():
    sample = [3.1, 2.7, 3.8, 3.3, 2.9]
    got = mean_interval(sample)
    lo, hi = sps.t.interval(0.95, len(sample) - 1, loc=np.mean(sample), scale=sps.sem(sample))
    assert got["mean"] == pytest.approx(3.16) and got["n"] == 5
    assert got["lo"] == pytest.approx(lo, rel=1e-12) and got["hi"] == pytest.approx(hi, rel=1e-12)
    # two seeds: t_{0.975, 1} = 12.706, the honest (wide) interval
    two = mean_interval([1.0, 2.0])
    assert two["hi"] - two["lo"] == pytest.approx(2 * 12.7062047 * np.std([1.0, 2.0], ddof=1) / np.sqrt(2), rel=1e-6)


def test_mean_interval_without_replication_has_no_interval_and_drops_nan():
    assert mean_interval([0.4]) == {"mean": 0.4, "lo": None, "hi": None, "sd": None, "n": 1, "dropped": 0,
                                    "level": 0.95}
    got = mean_interval([1.0, float("nan"), 3.0, None])
    assert got["n"] == 2 and got["dropped"] == 1 and got["mean"] == 2.0
    assert mean_interval([])["mean"] is None


def test_paired_difference_pairs_by_seed():
    # A shared seed effect (+10 on seed 1) cancels in the pairs: the difference is exactly 1 on every seed.
    gan = {0: 2.0, 1: 12.0, 2: 3.0}
    diffusion = {0: 1.0, 1: 11.0, 2: 2.0, 3: 5.0}  # seed 3 has no partner and is left out
    d = paired_difference(gan, diffusion)
    assert d["seeds"] == [0, 1, 2] and d["mean"] == 1.0 and d["lo"] == d["hi"] == 1.0 and d["resolved"] is True
    # an unpaired comparison of the same numbers could not tell them apart
    assert mean_interval(gan.values())["lo"] < mean_interval([1.0, 11.0, 2.0])["hi"]
    noisy = paired_difference({0: 1.0, 1: 2.0}, {0: 1.5, 1: 1.4})  # differences -0.5, 0.6: contains 0
    assert noisy["resolved"] is False
    assert paired_difference({0: 1.0}, {0: 0.0})["resolved"] is None  # one seed: no interval, no verdict
    assert paired_difference({0: 1.0, 1: float("nan")}, {0: 0.0, 1: 0.0})["seeds"] == [0]


def test_paired_interval_covers_the_true_difference_95_percent_of_the_time():
    # Simulation: 3 seeds, a seed effect shared by both families, true difference 0.3. The interval must cover 0.3 in
    # about 95% of 4000 replications (binomial sd 0.0034).
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(4000):
        seed_effect = rng.normal(0, 2.0, size=3)
        gan = dict(enumerate(seed_effect + 0.3 + rng.normal(0, 0.5, size=3)))
        diffusion = dict(enumerate(seed_effect + rng.normal(0, 0.5, size=3)))
        d = paired_difference(gan, diffusion)
        covered += d["lo"] <= 0.3 <= d["hi"]
    assert abs(covered / 4000 - 0.95) < 0.015


def test_family_differences_over_run_entries():
    runs = [{"dataset": "shapes", "model": m, "seed": s, "status": "ok",
             "metrics": {"fid": base + s + (2.0 if m == "gan" else 0.0), "modes": 24}}
            for s, base in ((0, 10.0), (1, 20.0), (2, 15.0)) for m in ("gan", "diffusion")]
    runs.append({"dataset": "shapes", "model": "gan", "seed": 3, "status": "diverged", "metrics": {"fid": 1e9}})
    out = family_differences(runs, ["fid", "modes", "kid"])
    assert set(out["shapes"]) == {"fid", "modes"}
    fid = out["shapes"]["fid"]
    assert fid["gan"]["n"] == 3 and fid["difference"]["mean"] == pytest.approx(2.0)
    assert fid["difference"]["resolved"] is True  # every seed differs by exactly 2
    assert out["shapes"]["modes"]["difference"]["resolved"] is False  # identical: interval [0, 0] contains 0
