"""Statistics across seeds: the mean of a metric with a 95% interval, and the GAN-minus-diffusion difference.

Seeds are the unit of replication: each seed trains both families on the same data stream (the same real batches, the
same evaluation prompts and per-sample seeds), so the two families' results for one seed are a pair. The difference
between the families is therefore estimated from the per-seed differences d_s = gan_s - diffusion_s (a paired design:
the seed-to-seed variation both share cancels), with Student's t interval for their mean (Student 1908; e.g. Wasserman
2004, "All of Statistics", sec. 10.4 and 6.3.2):

    mean  d_bar = (1/n) sum_s d_s,    s_d^2 = (1/(n-1)) sum_s (d_s - d_bar)^2
    95% interval: d_bar +- t_{0.975, n-1} s_d / sqrt(n)

The difference is "resolved" when that interval excludes 0. With one seed there is no interval (None), never a
pretend one. The t interval assumes roughly normal per-seed values; with 2-5 seeds it is wide, and honestly so.
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


def paired_difference(a: dict, b: dict, level: float = 0.95) -> dict:
    """a - b paired by key (seed): a and b map seed -> value. Only seeds where both values are finite count.
    Returns mean_interval of the differences plus "resolved": True when the interval excludes 0, False when it
    contains 0, None without an interval (fewer than 2 pairs), and "seeds": the seeds used."""
    seeds = sorted(s for s in a.keys() & b.keys() if _finite(a[s]) and _finite(b[s]))
    out = mean_interval([a[s] - b[s] for s in seeds], level)
    out["seeds"] = seeds
    out["resolved"] = None if out["lo"] is None else bool(out["lo"] > 0 or out["hi"] < 0)
    return out


def _finite(v) -> bool:
    return isinstance(v, numbers.Real) and math.isfinite(v)


def family_differences(runs: list[dict], keys, level: float = 0.95) -> dict:
    """For each dataset and metric key: GAN minus diffusion, paired by seed, over the results.json run entries with
    status "ok". Returns {dataset: {key: {"gan": mean_interval, "diffusion": mean_interval, "difference":
    paired_difference}}}; a key neither family reports is left out."""
    out: dict = {}
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        per_model = {m: {r["seed"]: r.get("metrics") or {} for r in runs
                         if r["dataset"] == dataset and r["model"] == m and r.get("status") == "ok"}
                     for m in ("gan", "diffusion")}
        rows = {}
        for key in keys:
            values = {m: {s: met[key] for s, met in by_seed.items() if key in met} for m, by_seed in per_model.items()}
            if not values["gan"] and not values["diffusion"]:
                continue
            rows[key] = {"gan": mean_interval(values["gan"].values(), level),
                         "diffusion": mean_interval(values["diffusion"].values(), level),
                         "difference": paired_difference(values["gan"], values["diffusion"], level)}
        out[dataset] = rows
    return out


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
