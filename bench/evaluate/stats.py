"""Statistics across seeds: the mean of a metric with a 95% interval, and the GAN-minus-diffusion difference.

Seeds are the unit of replication: each seed trains both families on the same data stream (the same real batches, the
same evaluation prompts and per-sample seeds), so the two families' results for one seed are a pair. The difference
between the families is therefore estimated from the per-seed differences d_s = gan_s - diffusion_s (a paired design:
the seed-to-seed variation both share cancels), with Student's t interval for their mean (Student 1908; e.g. Wasserman
2004, "All of Statistics", sec. 10.4 and 6.3.2):

    mean  d_bar = (1/n) sum_s d_s,    s_d^2 = (1/(n-1)) sum_s (d_s - d_bar)^2
    95% interval: d_bar +- t_{0.975, n-1} s_d / sqrt(n)

The difference is "resolved" when there are at least MIN_RESOLVED pairs, their spread is not zero and that interval
excludes 0. With one seed there is no interval (None), never a pretend one. The t interval assumes roughly normal
per-seed differences; with 2-5 seeds it is wide, and honestly so. Beside it stands the exact sign-flip test (Fisher
1935, the paired randomisation test), which assumes only that the differences are symmetric about 0 under no
difference: its p-value is the share of the 2^n sign patterns of the observed differences whose mean is at least as
far from 0, so with n seeds it cannot go below 2 / 2^n (0.25 at n = 3, 0.0625 at n = 5).

Runs that share a configuration are not independent (a study's seeds of one configuration), so the study's interval
treats the configuration as the unit: cluster_difference resamples configurations (a cluster bootstrap, Davison &
Hinkley 1997, sec. 3.8).
"""

import math
import numbers

import numpy as np
from scipy import stats as sps


def mean_interval(values, level: float = 0.95) -> dict:
    """Mean of finite values with Student's t interval for the mean: {"mean", "lo", "hi", "sd", "n"}; lo and hi are
    None below 2 values. Non-finite values (a diverged run's nan) are dropped and counted in "dropped"."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    finite = x[np.isfinite(x)]
    n = len(finite)
    out = {"mean": float(finite.mean()) if n else None, "lo": None, "hi": None, "sd": None, "n": n,
           "dropped": len(x) - n, "level": level}
    if n >= 2:
        sd = float(finite.std(ddof=1))
        half = float(sps.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
        out.update(sd=sd, lo=out["mean"] - half, hi=out["mean"] + half)
    return out


MIN_RESOLVED = 3  # pairs a difference needs before it can be called


def sign_flip_p(diffs) -> float | None:
    """Exact two-sided sign-flip p-value of H0: the paired differences are symmetric about 0. The share of the 2^n
    sign patterns whose |mean| is at least the observed |mean| (ties included, with a 1e-12 relative tolerance);
    None without differences. Exact for n <= 20, else 200,000 seeded random patterns."""
    d = np.asarray(list(diffs), dtype=np.float64)
    n = len(d)
    if n == 0:
        return None
    if n <= 20:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)  # (2^n, n) every pattern of +-1
    else:
        signs = np.random.default_rng(0).choice([-1, 1], size=(200_000, n))
    observed = abs(d.mean())
    return float(np.mean(np.abs(signs @ d) / n >= observed * (1 - 1e-12)))


def paired_difference(a: dict, b: dict, level: float = 0.95) -> dict:
    """a - b paired by key (seed): a and b map seed -> value. Only seeds where both values are finite count.
    Returns mean_interval of the differences plus "seeds" (the seeds used), "p_sign" (sign_flip_p) and "resolved":
    True when there are >= MIN_RESOLVED pairs with a non-zero spread and the t interval excludes 0, False otherwise;
    "why" says which condition failed ("n = 2", "no spread", "interval contains 0"), None when resolved."""
    seeds = sorted(s for s in a.keys() & b.keys() if _finite(a[s]) and _finite(b[s]))
    out = mean_interval([a[s] - b[s] for s in seeds], level)
    out["seeds"] = seeds
    out["p_sign"] = sign_flip_p([a[s] - b[s] for s in seeds])
    if out["n"] < MIN_RESOLVED:
        out["why"] = f"n = {out['n']}"
    elif not out["sd"]:
        out["why"] = "no spread"
    elif out["lo"] <= 0 <= out["hi"]:
        out["why"] = "interval contains 0"
    else:
        out["why"] = None
    out["resolved"] = out["why"] is None
    return out


def cluster_difference(a: list[list[float]], b: list[list[float]], level: float = 0.95, resamples: int = 20_000,
                       seed: int = 0) -> tuple[float, float, float]:
    """Difference of two shares (or means) whose observations come in clusters (a study's configurations, each
    with several seeds): a, b = [[outcomes of one cluster], ...]. The estimate is the mean over clusters of each
    cluster's mean, a minus b; the interval the percentile interval of a cluster bootstrap (clusters resampled with
    replacement within each family). Returns (difference, lo, hi)."""
    ma, mb = (np.array([np.mean(c) for c in x if len(c)], dtype=np.float64) for x in (a, b))
    if not len(ma) or not len(mb):
        raise ValueError("cluster_difference needs at least one cluster on each side")
    rng = np.random.default_rng(seed)
    boot = (ma[rng.integers(0, len(ma), (resamples, len(ma)))].mean(axis=1)
            - mb[rng.integers(0, len(mb), (resamples, len(mb)))].mean(axis=1))
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(ma.mean() - mb.mean()), float(lo), float(hi)


def _finite(v) -> bool:
    return isinstance(v, numbers.Real) and math.isfinite(v)


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k / n (Wilson 1927; Newcombe 1998a, method 3)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_interval(k1: int, n1: int, k2: int, n2: int, z: float = 1.959964) -> tuple[float, float, float]:
    """p1 - p2 and its hybrid score interval from the two Wilson intervals (Newcombe 1998b, method 10):
    [d - sqrt((p1 - l1)^2 + (u2 - p2)^2), d + sqrt((u1 - p1)^2 + (p2 - l2)^2)]. Returns (d, lower, upper)."""
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = wilson_interval(k1, n1, z), wilson_interval(k2, n2, z)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
