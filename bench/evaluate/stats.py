"""Statistics across seeds: the mean of a metric with a 95% interval that stays in the metric's range, the paired
difference between two families with the exact test that decides the verdict's words, and the seeds an observed
effect would need.

Seeds are the unit of replication: each seed trains both families on the same data stream (the same real batches, the
same evaluation prompts and per-sample seeds), so the two families' results for one seed are a pair. The difference
between the families is therefore estimated from the per-seed differences d_s = a_s - b_s (a paired design: the
seed-to-seed variation both share cancels).

Whether the seeds resolve a difference is decided by the exact sign-flip test (Fisher 1935, the paired randomisation
test), which assumes only that the differences are symmetric about 0 under no difference: its p-value is the share
of the 2^n sign patterns of the observed differences whose mean is at least as far from 0. It needs no spread and no
normality, so zero spread, float rounding and 0/1 outcomes (converged or not) are read by the same rule; but with n
seeds it cannot go below 2 / 2^n (0.25 at n = 3, 0.0625 at n = 5, 0.031 at n = 6): "resolved" (p <= 0.05) needs
MIN_RESOLVED = 6 paired seeds. Beside it stands Student's t interval for the mean difference (Student 1908; e.g.
Wasserman 2004, "All of Statistics", sec. 10.4 and 6.3.2), for what it is: an interval that assumes roughly normal
per-seed differences,

    mean  d_bar = (1/n) sum_s d_s,    s_d^2 = (1/(n-1)) sum_s (d_s - d_bar)^2
    95% interval: d_bar +- t_{0.975, n-1} s_d / sqrt(n)

and none where the differences are the same on every seed (its width would be 0: no interval, not a false one).

An interval of a mean over seeds stays in the metric's range by construction (bounded_interval): a share in [0, 1]
gets the t interval on the empirical-logit scale, back-transformed (Cox 1970, "The Analysis of Binary Data", sec.
3.2: y = log((x + e) / (1 - x + e))); any other bounded metric the t interval clipped to its bounds (clipping never
loses coverage: the true mean is inside the bounds).

Runs that share a configuration are not independent (a study's seeds of one configuration), so a study treats the
configuration as the unit: cluster_difference resamples configurations (a cluster bootstrap, Davison & Hinkley
1997, sec. 3.8), whose coverage at 7 configurations is below its nominal 95% (CLUSTER_BOOTSTRAP_COVERAGE, measured by
simulation in tests/test_stats.py), and cluster_permutation_p is the exact two-sample permutation test over the
configurations that decides whether a study resolves a difference.
"""

import functools
import itertools
import math
import numbers

import numpy as np
from scipy import stats as sps

ALPHA = 0.05  # the level of every exact test whose p decides "resolved"
MIN_RESOLVED = next(n for n in range(1, 64) if 2 / 2**n <= ALPHA)  # 6: the fewest pairs the sign-flip test can resolve
SHARE = (0.0, 1.0)  # the bounds of a share: its interval is built on the logit scale
SHARE_EPS = 1e-3  # the empirical logit's offset: a share of 0 or 1 keeps a finite logit, and the order of values
# CLUSTER_BOOTSTRAP_COVERAGE: how often the percentile cluster bootstrap's 95% interval covered the true difference of
# two families' per-configuration convergence shares in simulated studies of 7 configurations x 2 seeds (six
# scenarios, 2,000 studies each: tests/test_stats.py test_cluster_bootstrap_coverage_at_seven_configurations)
CLUSTER_BOOTSTRAP_COVERAGE = (0.89, 0.94)
POWER, POWER_CAP = 0.8, 50  # seeds_needed: the power asked for, and the most seeds it looks at


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


def same_on_every_seed(values) -> bool:
    """Two or more values that differ by no more than float rounding (1e-9 of their size)."""
    x = np.asarray(list(values), dtype=np.float64)
    return len(x) >= 2 and float(np.ptp(x)) <= 1e-9 * float(np.abs(x).max())


def _logit(x):
    return np.log((x + SHARE_EPS) / (1 - x + SHARE_EPS))


def _expit(y: float) -> float:
    """The inverse of _logit (y = log((x + e) / (1 - x + e)) solved for x), into [0, 1]."""
    e = math.exp(min(y, 700.0))
    return min(1.0, max(0.0, (e * (1 + SHARE_EPS) - SHARE_EPS) / (1 + e)))


def bounded_interval(values, bounds: tuple[float, float] = (-math.inf, math.inf), level: float = 0.95) -> dict:
    """mean_interval of the finite values with an interval that stays inside `bounds`, plus "values" (the finite
    values, in order), "same" (the same on every seed: then no interval, lo = hi = None) and "scale" ("logit" for a
    share, whose interval is the t interval of the empirical logits back-transformed; "t" otherwise, clipped to the
    bounds). The interval always holds the mean it stands beside."""
    out = mean_interval(values, level)
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    x = x[np.isfinite(x)]
    out.update(values=[float(v) for v in x], same=same_on_every_seed(x), scale="t")
    if out["same"]:
        out.update(lo=None, hi=None)
        return out
    if out["lo"] is None:
        return out
    lo, hi = bounds
    if (lo, hi) == SHARE and x.min() >= 0 and x.max() <= 1:
        y = mean_interval(_logit(x), level)
        out.update(lo=_expit(y["lo"]), hi=_expit(y["hi"]), scale="logit")
    out.update(lo=min(max(out["lo"], lo), out["mean"]), hi=max(min(out["hi"], hi), out["mean"]))
    return out


def sign_flip_p(diffs) -> float | None:
    """Exact two-sided sign-flip p-value of H0: the paired differences are symmetric about 0. The share of the 2^n
    sign patterns whose |mean| is at least the observed |mean| (ties included, with a 1e-12 relative tolerance);
    None without differences. Exact for n <= 20, else SIGN_PATTERNS seeded random patterns."""
    d = tuple(float(x) for x in diffs)
    return _sign_flip_p(d) if d else None


SIGN_PATTERNS = 200_000  # random sign patterns past 20 differences: the p-value's Monte Carlo error <= 0.0012
_CHUNK = 4096  # patterns drawn at once: memory stays O(n x _CHUNK) however many seeds a run has


@functools.lru_cache(maxsize=4096)
def _sign_flip_p(d: tuple) -> float:
    """sign_flip_p of a tuple; cached, since the verdict and the difference tables test the same differences."""
    x = np.asarray(d, dtype=np.float64)
    n = len(x)
    threshold = abs(x.mean()) * (1 - 1e-12) * n  # compared with |sum of signed differences|
    if n <= 20:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)  # (2^n, n) every pattern of +-1
        return float(np.mean(np.abs(signs @ x) >= threshold))
    # sum(s_i d_i) with s_i = 1 - 2 b_i is sum(d) - 2 b.d for fair random bits b, drawn 8 to a byte; b.d is the sum
    # over a pattern's bytes of a 256-entry table per byte (the sum of that byte's 8 differences whose bit is set),
    # n/8 lookups instead of n multiplications, and memory O(n x _CHUNK) however many seeds a run has
    nbytes = (n + 7) // 8
    bit_rows = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float64)  # (256, 8)
    table = (np.pad(x, (0, 8 * nbytes - n)).reshape(nbytes, 8) @ bit_rows.T).ravel()  # (nbytes * 256,)
    offsets = 256 * np.arange(nbytes)
    rng, total, hits = np.random.default_rng(0), x.sum(), 0
    for start in range(0, SIGN_PATTERNS, _CHUNK):
        drawn = rng.integers(0, 256, size=(min(_CHUNK, SIGN_PATTERNS - start), nbytes), dtype=np.uint8)
        picked = table[drawn.astype(np.intp) + offsets].sum(axis=1)  # (rows,) b.d of each pattern
        hits += int(np.count_nonzero(np.abs(total - 2 * picked) >= threshold))
    return hits / SIGN_PATTERNS


def smallest_p(n: int) -> float:
    """The smallest p the sign-flip test of n differences can give: 2 / 2^n (every difference of one sign)."""
    return min(1.0, 2 / 2**n)


def paired_difference(a: dict, b: dict, level: float = 0.95, bounds: tuple[float, float] | None = None) -> dict:
    """a - b paired by key (seed): a and b map seed -> value. Only seeds where both values are finite count.
    Returns mean_interval of the differences (the t interval; none, with "same" True, when the differences are the
    same on every seed; clipped to the range a difference of two values within `bounds` can take) plus "seeds",
    "diffs", "p_sign" (sign_flip_p), "above" / "below" / "ties" (how many differences are > 0, < 0, = 0),
    "resolved" (p_sign <= ALPHA, which needs n >= MIN_RESOLVED) and "why": None when resolved, else "no seeds",
    "no difference" (every difference 0), "too few seeds" (n < MIN_RESOLVED) or "p above 0.05"."""
    seeds = sorted(s for s in a.keys() & b.keys() if _finite(a[s]) and _finite(b[s]))
    diffs = [a[s] - b[s] for s in seeds]
    out = mean_interval(diffs, level)
    out.update(seeds=seeds, diffs=diffs, p_sign=sign_flip_p(diffs), same=same_on_every_seed(diffs),
               above=sum(d > 0 for d in diffs), below=sum(d < 0 for d in diffs), ties=sum(d == 0 for d in diffs))
    if out["same"]:
        out.update(lo=None, hi=None)
    elif out["lo"] is not None and bounds is not None:
        span = bounds[1] - bounds[0]
        out.update(lo=max(out["lo"], -span), hi=min(out["hi"], span))
    if not diffs:
        out["why"] = "no seeds"
    elif out["ties"] == len(diffs):
        out["why"] = "no difference"
    elif out["p_sign"] <= ALPHA:
        out["why"] = None
    elif out["n"] < MIN_RESOLVED:
        out["why"] = "too few seeds"
    else:
        out["why"] = "p above 0.05"
    out["resolved"] = out["why"] is None
    return out


# ---------------------------------------------------------------- how many seeds an observed effect would need


def sign_flip_power(draw, n: int, sims: int = 1000, alpha: float = ALPHA, seed: int = 0) -> float:
    """The share of `sims` simulated sets of n paired differences (draw(rng, (sims, n))) that the exact sign-flip
    test at `alpha` resolves: every sign pattern for n <= 10, else 2,000 seeded random patterns."""
    rng = np.random.default_rng(seed)
    d = draw(rng, (sims, n))
    if n <= 10:
        signs = (1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)).astype(np.float64)
    else:
        signs = rng.choice([-1.0, 1.0], size=(2000, n))
    observed = np.abs(d.sum(axis=1, keepdims=True))
    p = np.mean(np.abs(d @ signs.T) >= observed * (1 - 1e-12), axis=1)
    return float(np.mean(p <= alpha))


def _fewest(draw) -> int | None:
    """The fewest seeds (MIN_RESOLVED to POWER_CAP) at which sign_flip_power reaches POWER, None above the cap: every
    n up to 10 in turn, then a bisection (power grows with n once the test's discreteness has faded)."""
    for n in range(MIN_RESOLVED, 11):
        if sign_flip_power(draw, n) >= POWER:
            return n
    if sign_flip_power(draw, POWER_CAP) < POWER:
        return None
    lo, hi = 10, POWER_CAP  # power(lo) < POWER <= power(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if sign_flip_power(draw, mid) >= POWER else (mid, hi)
    return hi


@functools.lru_cache(maxsize=512)
def seeds_needed(mean: float, sd: float) -> int | None:
    """The fewest paired seeds at which the exact sign-flip test at 5% resolves a difference in POWER (80%) of
    simulated replications, taking the observed mean and sd of the paired differences as true and the differences
    as normal; None when more than POWER_CAP (50) would be needed, or when there is no difference (mean 0). The test
    is scale-free, so only mean / sd matters (rounded to 3 significant digits); zero spread needs MIN_RESOLVED."""
    if mean == 0 or not math.isfinite(mean):
        return None
    if not sd:
        return MIN_RESOLVED
    effect = float(f"{abs(mean) / sd:.3g}")
    return _fewest(lambda rng, shape: rng.normal(effect, 1.0, shape))


@functools.lru_cache(maxsize=512)
def seeds_needed_rates(rate_a: float, rate_b: float) -> int | None:
    """seeds_needed for a 0/1 outcome per seed (converged or not): each family's observed rate taken as its true
    probability, the two independent on a seed; the paired difference of a seed is then -1, 0 or +1."""
    if rate_a == rate_b:
        return None
    return _fewest(lambda rng, shape: (rng.random(shape) < rate_a).astype(float)
                   - (rng.random(shape) < rate_b).astype(float))


# ---------------------------------------------------------------- clusters: a study's configurations


def cluster_difference(a: list[list[float]], b: list[list[float]], level: float = 0.95, resamples: int = 20_000,
                       seed: int = 0) -> tuple[float, float, float]:
    """Difference of two shares (or means) whose observations come in clusters (a study's configurations, each
    with several seeds): a, b = [[outcomes of one cluster], ...]. The estimate is the mean over clusters of each
    cluster's mean, a minus b; the interval the percentile interval of a cluster bootstrap (clusters resampled with
    replacement within each family). Returns (difference, lo, hi). Its coverage at 7 clusters is below nominal:
    CLUSTER_BOOTSTRAP_COVERAGE."""
    ma, mb = _cluster_means(a, b)
    rng = np.random.default_rng(seed)
    boot = (ma[rng.integers(0, len(ma), (resamples, len(ma)))].mean(axis=1)
            - mb[rng.integers(0, len(mb), (resamples, len(mb)))].mean(axis=1))
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(ma.mean() - mb.mean()), float(lo), float(hi)


def cluster_permutation_p(a: list[list[float]], b: list[list[float]], exact_up_to: int = 200_000) -> float:
    """Exact two-sided permutation p of H0: the clusters of a and b come from one distribution (Fisher 1935; Good
    2005, "Permutation, Parametric and Bootstrap Tests of Hypotheses", sec. 3.7): the share of the ways to split the
    pooled cluster means into groups of the two sizes whose |difference of group means| is at least the observed one
    (ties included). Every split when there are at most `exact_up_to`, else as many seeded random splits."""
    ma, mb = _cluster_means(a, b)
    pooled, k = np.concatenate([ma, mb]), len(ma)
    observed = abs(ma.mean() - mb.mean())
    if math.comb(len(pooled), k) <= exact_up_to:
        groups = np.array(list(itertools.combinations(range(len(pooled)), k)))
    else:
        rng = np.random.default_rng(0)
        groups = np.argsort(rng.random((exact_up_to, len(pooled))), axis=1)[:, :k]
    in_a = pooled[groups].sum(axis=1)
    diff = in_a / k - (pooled.sum() - in_a) / (len(pooled) - k)
    return float(np.mean(np.abs(diff) >= observed - 1e-12))


def _cluster_means(a, b) -> tuple[np.ndarray, np.ndarray]:
    ma, mb = (np.array([np.mean(c) for c in x if len(c)], dtype=np.float64) for x in (a, b))
    if not len(ma) or not len(mb):
        raise ValueError("a cluster comparison needs at least one cluster on each side")
    return ma, mb


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
