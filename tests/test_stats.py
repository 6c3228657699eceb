"""bench/stats.py against scipy's t interval on known samples, and the paired difference's coverage by simulation."""

import numpy as np
import pytest
from scipy import stats as sps

from bench.evaluate.stats import cluster_difference, mean_interval, paired_difference, sign_flip_p


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
    # A shared seed effect (+10 on seed 1) cancels in the pairs.
    gan = {0: 2.0, 1: 12.0, 2: 3.5}
    diffusion = {0: 1.0, 1: 11.0, 2: 2.0, 3: 5.0}  # seed 3 has no partner and is left out
    d = paired_difference(gan, diffusion)
    assert d["seeds"] == [0, 1, 2] and d["mean"] == pytest.approx(7 / 6) and d["resolved"] is True
    assert d["lo"] > 0 and d["why"] is None
    # an unpaired comparison of the same numbers could not tell them apart
    assert mean_interval(gan.values())["lo"] < mean_interval([1.0, 11.0, 2.0])["hi"]
    noisy = paired_difference({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.5, 1: 1.4, 2: 3.0})  # contains 0
    assert noisy["resolved"] is False and noisy["why"] == "interval contains 0"
    assert paired_difference({0: 1.0}, {0: 0.0})["why"] == "n = 1"  # one seed: no interval, no verdict
    assert paired_difference({0: 1.0, 1: float("nan")}, {0: 0.0, 1: 0.0})["seeds"] == [0]


def test_zero_spread_is_never_resolved_and_two_seeds_never_are():
    """Modes 24, 24 vs 23, 23: the t interval is [1, 1], but two seeds of an exact sign-flip test give p = 0.5."""
    two = paired_difference({0: 24, 1: 24}, {0: 23, 1: 23})
    assert two["lo"] == two["hi"] == 1.0 and two["resolved"] is False and two["why"] == "n = 2"
    assert two["p_sign"] == 0.5
    three = paired_difference({0: 24, 1: 24, 2: 24}, {0: 23, 1: 23, 2: 23})
    assert three["resolved"] is False and three["why"] == "no spread" and three["p_sign"] == 0.25


def test_sign_flip_p_is_the_exact_randomisation_distribution():
    # every sign pattern of (1, 2, 3): |mean| of the 8 patterns is 2, 2, 4/3, 4/3, 2/3, 2/3, 0, 0 (x 1/1); the
    # observed |mean| = 2 is matched by 2 patterns of 8
    assert sign_flip_p([1.0, 2.0, 3.0]) == pytest.approx(2 / 8)
    assert sign_flip_p([1.0, -1.0]) == 1.0
    assert sign_flip_p([3.0] * 5) == pytest.approx(2 / 32)  # the smallest p five seeds can give: 0.0625
    assert sign_flip_p([]) is None
    # against scipy's exact permutation test of the mean of paired differences
    d = np.array([0.3, -0.1, 0.5, 0.2, 0.4, -0.2])
    ref = sps.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf).pvalue
    assert sign_flip_p(d) == pytest.approx(ref, rel=1e-12)


def test_cluster_difference_treats_the_configuration_as_the_unit():
    """The default study: 7 configurations per family, each run on 2 datasets x 2 seeds; diffusion converged in 4
    configurations throughout, the GAN in one run of one configuration. Counted per configuration, the shares are
    4/7 and 1/28 and the cluster bootstrap interval is about [0.14, 0.86] (runs as independent: Newcombe [0.31,
    0.70], too narrow)."""
    diffusion = [[1, 1, 1, 1]] * 4 + [[0, 0, 0, 0]] * 3
    gan = [[0, 0, 0, 0]] * 4 + [[1, 0, 0, 0]] + [[0, 0, 0, 0]] * 2
    d, lo, hi = cluster_difference(diffusion, gan)
    assert d == pytest.approx(4 / 7 - 1 / 28)
    assert lo == pytest.approx(0.14, abs=0.03) and hi == pytest.approx(0.86, abs=0.03)
    # the same shares with every run its own cluster: a narrower interval, as the runs-as-independent one
    flat = cluster_difference([[x] for c in diffusion for x in c], [[x] for c in gan for x in c])
    assert flat[2] - flat[1] < (hi - lo) * 0.7


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
