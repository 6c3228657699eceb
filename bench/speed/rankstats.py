"""The statistics of `gvd speed`: a ratio of two timings with its interval, a rank test, and one of four answers.

Every benchmark gives n paired blocks: in round i the two revisions ran the benchmark back to back, in a random order,
so whatever load the machine had then fell on both. On d_i = log(HEAD_i / BASE_i):

  ratio     exp of the Hodges-Lehmann estimate of the shift of d, the median of the Walsh averages (d_i + d_j) / 2,
            i <= j (Hodges & Lehmann 1963, "Estimates of location based on rank tests", Ann. Math. Stat. 34);
  interval  the Walsh averages at the ranks where the Wilcoxon signed-rank test stops rejecting: the test inverted
            (Hollander, Wolfe & Chicken, "Nonparametric Statistical Methods", 3rd ed., sec. 3.3), exact from the null
            distribution of the signed-rank statistic up to EXACT_N pairs, its normal approximation above. It assumes
            d is symmetric about the shift, which the random order within each pair gives under no change;
  p         the two-sided Mann-Whitney U test of BASE's blocks against HEAD's (Mann & Whitney 1947), normal
            approximation with the tie and continuity corrections (asv's test for `asv continuous`).

Against a saved baseline (`--against`) the blocks are not paired: the ratio is exp of the two-sample Hodges-Lehmann
estimate (the median of all differences log y_j - log x_i) and the interval inverts the Mann-Whitney test.

The answer with threshold tau (default 5%): "slower" when the whole interval lies above 1 + tau and p < the rank
test's level, "faster" when it lies below 1 - tau and p < the level, "no change" when it lies inside [1 - tau,
1 + tau], "inconclusive" otherwise, with the rounds that would decide: an interval narrows as 1 / sqrt(n).
"""

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

EXACT_N = 300  # pairs up to which the signed-rank distribution is computed exactly (O(n^3) at most 2.7e7 additions)
UNDECIDABLE = 100  # an interval that would need more than this many times the rounds made: no answer is in reach


@dataclass(frozen=True)
class Comparison:
    """What one benchmark's blocks say."""

    n: int  # pairs (or, against a saved baseline, the smaller of the two block counts)
    ratio: float  # HEAD / BASE, the Hodges-Lehmann estimate
    low: float  # the interval's ends, as ratios
    high: float
    p: float  # two-sided Mann-Whitney U p of BASE's blocks against HEAD's
    answer: str  # slower | faster | no change | inconclusive
    rounds_needed: int | None  # inconclusive: the rounds (in all) that would decide; None when out of reach or decided


def signed_rank_null(n: int) -> np.ndarray:
    """P(W+ = w) for w = 0..n(n+1)/2 under no shift: each of the 2^n sign patterns of ranks 1..n equally likely, built
    one rank at a time (the distribution of a sum of independent rank-or-zero terms is a convolution)."""
    dist = np.zeros(n * (n + 1) // 2 + 1)
    dist[0] = 1.0
    top = 0
    for k in range(1, n + 1):
        dist[k : top + k + 1] += dist[: top + 1]  # the right-hand side is read before the add: rank k's sign
        dist[: top + k + 1] *= 0.5
        top += k
    return dist


@functools.lru_cache(maxsize=1024)
def _signed_rank_cut(n: int, alpha: float) -> int:
    """c such that the two-sided signed-rank test at level alpha rejects when W+ <= c - 1 or W+ >= M - c + 1
    (M = n(n+1)/2); 0 when no c does (too few pairs for the level)."""
    if n <= EXACT_N:
        cdf = np.cumsum(signed_rank_null(n))
        return int(np.searchsorted(cdf, alpha / 2 * (1 + 1e-12), side="right"))  # largest c: P(W+ <= c-1) <= a/2
    mean, sd = n * (n + 1) / 4, math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
    return max(int(math.floor(mean + ndtri(alpha / 2) * sd + 0.5)), 0)


def walsh_averages(d: np.ndarray) -> np.ndarray:
    """(d_i + d_j) / 2 for i <= j, sorted."""
    i, j = np.triu_indices(len(d))
    return np.sort((d[i] + d[j]) / 2)


def paired_shift(d, level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, low, high) of the centre of d: the one-sample Hodges-Lehmann estimate and the inverted signed-rank
    interval at `level`; low/high are -inf/inf when n is too small for the level (n < 6 at 95%)."""
    d = np.asarray(d, dtype=float)
    w = walsh_averages(d)
    c = _signed_rank_cut(len(d), 1 - level)
    if c == 0:
        return float(np.median(w)), -math.inf, math.inf
    return float(np.median(w)), float(w[c - 1]), float(w[len(w) - c])


def _ranks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mid-ranks 1..N with ties averaged, the sizes of the tie groups)."""
    order = np.argsort(values, kind="mergesort")
    sorted_v = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    sizes = np.diff(np.r_[starts, len(values)])
    mid = starts + (sizes + 1) / 2  # the average of ranks start+1 .. start+size
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(mid, sizes)
    return ranks, sizes


def mann_whitney(x, y) -> tuple[float, float]:
    """(U of x, two-sided p) of the Mann-Whitney U test, normal approximation with the tie correction of the
    variance and a continuity correction of 1/2 (as scipy.stats.mannwhitneyu(method="asymptotic"))."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n, m = len(x), len(y)
    ranks, ties = _ranks(np.concatenate([x, y]))
    u = float(ranks[:n].sum() - n * (n + 1) / 2)
    big = n + m
    var = n * m / 12 * ((big + 1) - float((ties**3 - ties).sum()) / (big * (big - 1)))
    if var <= 0:  # every value the same: no evidence either way
        return u, 1.0
    z = (abs(u - n * m / 2) - 0.5) / math.sqrt(var)
    return u, float(min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2))))


def two_sample_shift(x, y, level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, low, high) of the shift of y against x: the two-sample Hodges-Lehmann estimate (median of y_j - x_i)
    and the interval of the inverted Mann-Whitney test (normal approximation of U's null distribution)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    diffs = np.sort((y[:, None] - x[None, :]).ravel())
    n, m = len(x), len(y)
    sd = math.sqrt(n * m * (n + m + 1) / 12)
    c = int(math.floor(n * m / 2 + ndtri((1 - level) / 2) * sd + 0.5))
    if c < 1:
        return float(np.median(diffs)), -math.inf, math.inf
    return float(np.median(diffs)), float(diffs[c - 1]), float(diffs[len(diffs) - c])


def answer(low: float, high: float, p: float, threshold: float, p_level: float) -> str:
    """The four answers from an interval of the ratio (see the module docstring)."""
    if low > 1 + threshold and p < p_level:
        return "slower"
    if high < 1 - threshold and p < p_level:
        return "faster"
    if low >= 1 - threshold and high <= 1 + threshold:
        return "no change"
    return "inconclusive"


def min_pairs(level: float = 0.95) -> int:
    """The fewest pairs whose signed-rank interval at `level` is bounded (6 at 95%)."""
    return next(n for n in range(1, 64) if _signed_rank_cut(n, 1 - level) > 0)


def rounds_needed(n: int, estimate: float, low: float, high: float, threshold: float) -> int | None:
    """The rounds in all after which an interval of today's spread, narrowing as 1 / sqrt(n), would clear the nearest
    threshold it straddles, on the log scale (an unbounded interval: the rounds that bound it at 95%, to start with);
    None when that is more than UNDECIDABLE times n (the change is about the threshold itself)."""
    if not (math.isfinite(low) and math.isfinite(high)) or low <= 0:
        return max(min_pairs(), n + 1)
    e, half = math.log(estimate), (math.log(high) - math.log(low)) / 2
    gaps = [abs(e - b) for b in (math.log(1 + threshold), math.log(1 - threshold))
            if math.log(low) <= b <= math.log(high)]
    if not gaps:
        return None
    gap = min(gaps)
    if gap <= 0 or (half / gap) ** 2 > UNDECIDABLE:
        return None
    return max(int(math.ceil(n * (half / gap) ** 2)), n + 1)


def compare_paired(base, head, threshold: float = 0.05, level: float = 0.95, p_level: float = 0.05) -> Comparison:
    """Blocks of the two revisions paired by round (equal lengths, positive times)."""
    lb, lh = np.log(np.asarray(base, dtype=float)), np.log(np.asarray(head, dtype=float))
    est, lo, hi = paired_shift(lh - lb, level)
    return _comparison(len(lb), est, lo, hi, mann_whitney(lb, lh)[1], threshold, p_level)


def compare_unpaired(base, head, threshold: float = 0.05, level: float = 0.95, p_level: float = 0.05) -> Comparison:
    """Blocks measured apart (a saved baseline): the two-sample estimate and interval."""
    lb, lh = np.log(np.asarray(base, dtype=float)), np.log(np.asarray(head, dtype=float))
    est, lo, hi = two_sample_shift(lb, lh, level)
    return _comparison(min(len(lb), len(lh)), est, lo, hi, mann_whitney(lb, lh)[1], threshold, p_level)


def _comparison(n, est, lo, hi, p, threshold, p_level) -> Comparison:
    ratio, low, high = math.exp(est), math.exp(lo), math.exp(hi)
    said = answer(low, high, p, threshold, p_level)
    more = rounds_needed(n, ratio, low, high, threshold) if said == "inconclusive" else None
    return Comparison(n=n, ratio=ratio, low=low, high=high, p=p, answer=said, rounds_needed=more)
