"""Metrics: pure functions over numpy arrays of points, features and labels.

Each function implements a published definition, cited beside the maths. Nothing here touches
torch or files; feature extraction (the judge, Inception) lives elsewhere.

Notation:
  real  (N, D) features (or 2D points) of real data,   X_1..X_N
  fake  (M, D) features (or 2D points) of generated samples, Y_1..Y_M
  K     number of modes (mixture components, classes)
Argument order is always (real, fake).
"""

from __future__ import annotations

import numpy as np
from cleanfid.fid import kernel_distance
from sklearn.cluster import KMeans

# ----------------------------------------------------------------------------------------------
# Shared helpers


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) = sum_i p_i log(p_i / q_i) (Cover & Thomas, eq. 2.26), with 0 log 0 = 0.

    Infinite where q_i = 0 < p_i: p puts mass where q has none.
    """
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    support = p > 0
    with np.errstate(divide="ignore"):
        return float(np.sum(p[support] * (np.log(p[support]) - np.log(q[support]))))


def _features(x, name: str, min_rows: int = 2) -> np.ndarray:
    """(N, D) float64 copy of x; a one-line ValueError naming what is wrong otherwise."""
    x = np.array(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2D array (N, D), got shape {x.shape}")
    if len(x) < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {len(x)}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} has non-finite values")
    return x


def _feature_pair(real_feats, fake_feats, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
    real = _features(real_feats, "real_feats", min_rows)
    fake = _features(fake_feats, "fake_feats", min_rows)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: real {real.shape[1]}, fake {fake.shape[1]}")
    return real, fake


# ----------------------------------------------------------------------------------------------
# 2D mixtures: VEEGAN (Srivastava et al. 2017, sec. 5.1) / PacGAN (Lin et al. 2018, sec. 5)


def mixture_stats(samples: np.ndarray, centers: np.ndarray, std: float) -> dict:
    """Mode capture on a 2D mixture (VEEGAN sec. 5.1; PacGAN sec. 5).

    A sample is high quality if it lies within 3 std of its nearest mode; a mode is captured if it
    is the nearest mode of at least one high-quality sample. reverse_kl = KL(p_gen || p_data), p_data
    uniform over the K modes, p_gen the nearest-mode histogram of the high-quality samples only, as
    PacGAN's released code counts it (fjxmlzn/PacGAN, synthetic_data_experiments/PacGAN/pacgan/
    extensions.py, MetricLogger: only points within 3 std add to the mode histogram). It is log K when
    every high-quality sample sits at one mode, and nan when there is no high-quality sample (no
    histogram to compare: PacGAN's code divides 0 by 0 there too); modes = 0 and hq_fraction = 0 then
    carry the result. Non-finite samples (a diverged generator) belong to no mode and are never high
    quality; they still count in num_samples and in hq_fraction's denominator.
    """
    samples = np.asarray(samples, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64)
    if samples.ndim != 2 or samples.shape[1] != centers.shape[1] or len(samples) == 0:
        raise ValueError(f"samples must be (N, {centers.shape[1]}) with N > 0, got {samples.shape}")
    num_modes = len(centers)
    finite = samples[np.isfinite(samples).all(axis=1)]  # (F, 2)
    dist = np.linalg.norm(finite[:, None, :] - centers[None, :, :], axis=-1)  # (F, K)
    nearest = dist.argmin(axis=1)  # (F,)
    high_quality = dist[np.arange(len(finite)), nearest] <= 3 * std  # (F,)
    counts = np.bincount(nearest[high_quality], minlength=num_modes)  # (K,) high-quality samples per mode
    reverse_kl = (kl_divergence(counts / counts.sum(), np.full(num_modes, 1 / num_modes))
                  if counts.sum() else float("nan"))
    return {
        "modes": int(np.unique(nearest[high_quality]).size),
        "num_modes": num_modes,
        "hq_fraction": float(high_quality.sum() / len(samples)),
        "reverse_kl": reverse_kl,
        "mode_spread": mode_spread(finite[high_quality], centers[nearest[high_quality]], std),
        "num_samples": len(samples),
    }


# E[r^2 | r < 3 std] / (2 std^2) for a 2D isotropic Gaussian: r^2 / (2 std^2) ~ Exp(1), truncated at 4.5
FRESH_SPREAD = float(np.sqrt(1 - 4.5 * np.exp(-4.5) / (1 - np.exp(-4.5))))  # 0.9744


def mode_spread(points: np.ndarray, centers: np.ndarray, std: float) -> float | None:
    """Diversity within a mode on a 2D mixture: per mode with two or more high-quality samples, the root mean squared
    distance of its samples from the mode's centre over sqrt(2) std (what a mode's own Gaussian gives), averaged over
    those modes. Fresh draws from the mixture read FRESH_SPREAD (0.974: the 3-std cut trims the tail); samples
    collapsed onto one point per mode read near 0. None when no mode has two samples.

    points (M, 2) high-quality samples; centers (M, 2) the centre of each one's nearest mode."""
    offsets = np.asarray(points, np.float64) - np.asarray(centers, np.float64)  # (M, 2)
    keys, inverse, counts = np.unique(np.asarray(centers), axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    mean_sq = np.bincount(inverse, weights=(offsets**2).sum(1), minlength=len(keys)) / np.maximum(counts, 1)
    per_mode = np.sqrt(mean_sq[counts >= 2]) / (np.sqrt(2) * std)
    return float(per_mode.mean()) if len(per_mode) else None


# ----------------------------------------------------------------------------------------------
# Labels: Stacked MNIST protocol (Metz et al. 2017; Srivastava et al. 2017) and text following


def mode_stats(labels: np.ndarray, num_modes: int, reference_probs: np.ndarray | None = None,
               eps: float = 1e-6) -> dict:
    """Mode counting over judge labels (Stacked MNIST protocol: Metz et al. 2017, VEEGAN sec. 5.2).

    modes = distinct labels seen. p_data = reference_probs (the test split's label histogram, see
    label_probs; uniform when None), p_gen = the histogram of the labels. Two directions, two keys:

        reverse_kl = KL(p_gen || p_data)   the number the Stacked MNIST tables report (PacGAN's code,
                                           stacked_MNIST_experiments/.../model.py log_metrics: KLD(p, uniform)
                                           with p the generated mode histogram); small for a generator
                                           that puts its mass where the data are, even if it drops modes
        forward_kl = KL(p_data || p_gen)   punishes missing modes

    Each would be infinite where its second argument has a zero, so that argument is smoothed first:
    q <- (q + eps) / (1 + K eps). A missing mode then costs p_k log(p_k / eps), e.g. 6.9e-3 for a
    p_k of 1/1000. Smoothing leaves a uniform p_data unchanged, so reverse_kl against the uniform
    distribution is exact.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a non-empty 1D integer array, got {labels.dtype} "
                         f"{labels.shape}")
    if labels.min() < 0 or labels.max() >= num_modes:
        raise ValueError(f"labels must lie in [0, {num_modes}), got [{labels.min()}, "
                         f"{labels.max()}]")
    p_gen = np.bincount(labels, minlength=num_modes) / len(labels)  # (K,)
    p_data = _reference(reference_probs, num_modes)  # (K,)
    return {
        "modes": int(np.count_nonzero(p_gen)),
        "num_modes": num_modes,
        "reverse_kl": kl_divergence(p_gen, (p_data + eps) / (1 + num_modes * eps)),
        "forward_kl": kl_divergence(p_data, (p_gen + eps) / (1 + num_modes * eps)),
        "num_samples": len(labels),
    }


def label_probs(labels: np.ndarray, num_modes: int, channel_labels: np.ndarray | None = None) -> np.ndarray:
    """p_data for mode_stats from a reference split: the label histogram (K,). For stacked digits, pass
    channel_labels (N, 3): the channels are drawn independently, so p_data(r, g, b) = p(r) p(g) p(b)
    with p the split's digit frequencies over all channels, the exact law of the construction; a plain
    histogram of N triples would leave most of the 1000 cells empty for N of a few thousand.
    Labels of stacked digits are 100 r + 10 g + b (bench.data.images.make_stacked_digits)."""
    if channel_labels is None:
        labels = np.asarray(labels)
        return np.bincount(labels, minlength=num_modes) / len(labels)
    digits = np.asarray(channel_labels)
    p = np.bincount(digits.ravel(), minlength=10) / digits.size  # (10,)
    joint = p[:, None, None] * p[None, :, None] * p[None, None, :]  # (10, 10, 10) indexed [r, g, b]
    if joint.size != num_modes:
        raise ValueError(f"channel_labels give {joint.size} modes, expected {num_modes}")
    return joint.ravel()  # index 100 r + 10 g + b


def _reference(reference_probs, num_modes: int) -> np.ndarray:
    if reference_probs is None:
        return np.full(num_modes, 1 / num_modes)
    ref = np.asarray(reference_probs, dtype=np.float64)
    if ref.shape != (num_modes,) or (ref < 0).any() or ref.sum() <= 0:
        raise ValueError(f"reference_probs must be {num_modes} non-negative weights, "
                         f"got shape {ref.shape}")
    return ref / ref.sum()


def cond_accuracy(prompted_labels, judged_labels) -> float:
    """Fraction of samples the judge assigns to the class they were prompted with."""
    prompted, judged = np.asarray(prompted_labels), np.asarray(judged_labels)
    if prompted.shape != judged.shape or prompted.ndim != 1 or len(prompted) == 0:
        raise ValueError(f"need two equal non-empty 1D label arrays, got {prompted.shape} "
                         f"and {judged.shape}")
    return float(np.mean(prompted == judged))


def duplicate_share(samples) -> float:
    """The share of samples identical, value for value, to an earlier sample of the same set: 0 for a generator
    that never repeats itself, (N - distinct) / N in general. A collapsed generator or a replayed image set repeats."""
    flat = np.asarray(samples).reshape(len(samples), -1)
    if len(flat) == 0:
        raise ValueError("duplicate_share needs at least one sample")
    return float(1 - len(np.unique(flat, axis=0)) / len(flat))


# ----------------------------------------------------------------------------------------------
# FID / KID. FID uses its own matrix square root (below); KID uses clean-fid's kernel_distance
# (Parmar et al. 2022).


def gaussian_moments(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features, as clean-fid computes them."""
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    """The symmetric square root of a covariance, S^(1/2) = U diag(sqrt(max(l, 0))) U^T from its
    eigendecomposition S = U diag(l) U^T (Higham 2008, Functions of Matrices, sec. 6.1). Rounding
    leaves a computed covariance slightly asymmetric and its zero eigenvalues slightly negative;
    symmetrising and clipping them at 0 is exact for the PSD matrix it approximates."""
    vals, vecs = np.linalg.eigh((sigma + sigma.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S1 S2)^(1/2)) for covariances S1, S2, as the nuclear norm of S1^(1/2) S2^(1/2).

    With A = S1^(1/2), B = S2^(1/2): S1 S2 = A A B B has the eigenvalues of (A B)(A B)^T = A B B A
    (cyclic similarity), i.e. the squared singular values of A B; so Tr((S1 S2)^(1/2)) is the sum
    of the singular values of A B. Unlike scipy.linalg.sqrtm of the non-symmetric product S1 S2, this
    is real and >= 0 by construction, and stays accurate when S1 S2 is singular (fewer samples than
    dimensions), where sqrtm returns complex values or warns and clean-fid retries with an offset.
    """
    return float(np.linalg.svd(sqrt_psd(sigma1) @ sqrt_psd(sigma2), compute_uv=False).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, S1) and N(mu2, S2) (Dowson & Landau
    1982; Heusel et al. 2017, eq. 6): ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), clipped at 0."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"moment shapes differ: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2)
    return max(float(value), 0.0)  # FID >= 0; rounding can leave -1e-12 for identical sets


def trace_sqrt_product_of_samples(real: np.ndarray, fake: np.ndarray) -> float:
    """Tr((S_r S_f)^(1/2)) of two sets' sample covariances without forming them: with centred rows Xc (N, D) and
    Yc (M, D), S_r = A A^T for A = Xc^T / sqrt(N - 1) and S_f = B B^T for B = Yc^T / sqrt(M - 1), and the
    eigenvalues of A A^T B B^T are the squared singular values of A^T B (N, M); so the trace is the nuclear norm of
    Xc Yc^T / sqrt((N - 1)(M - 1)). Exact, and O(N M D) instead of O(D^3) when the sets are smaller than D."""
    xc, yc = real - real.mean(axis=0), fake - fake.mean(axis=0)
    return float(np.linalg.svd(xc @ yc.T, compute_uv=False).sum() / np.sqrt((len(real) - 1) * (len(fake) - 1)))


def fid(real_feats, fake_feats) -> float:
    """Frechet distance between Gaussians fitted to the two feature sets (Heusel et al. 2017, eq. 6):

        FID = ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))

    The same formula as clean-fid's frechet_distance (tests check they agree on well-conditioned
    covariances), with a matrix square root that handles singular ones (trace_sqrt_product). With
    fewer points than dimensions (e.g. 1,000 samples of 2048 Inception features) the covariances are
    singular and the trace comes from the (N, M) cross-product instead (trace_sqrt_product_of_samples:
    the same value, 20x faster there). Biased upward at small sample counts (Chong & Forsyth 2020):
    always report N with it.
    """
    real, fake = _feature_pair(real_feats, fake_feats)
    if max(len(real), len(fake)) >= real.shape[1]:
        return frechet_distance(*gaussian_moments(real), *gaussian_moments(fake))
    (mu_r, var_r), (mu_f, var_f) = [(x.mean(axis=0), x.var(axis=0, ddof=1).sum()) for x in (real, fake)]
    diff = mu_r - mu_f
    value = diff @ diff + var_r + var_f - 2 * trace_sqrt_product_of_samples(real, fake)
    return max(float(value), 0.0)


def kid_subset_size(num_real: int, num_fake: int, max_subset_size: int = 1000) -> tuple[int, str | None]:
    """KID's subset size m = min(N, M, max_subset_size) and, when it is smaller than asked for, why."""
    if max_subset_size < 2:
        raise ValueError(f"KID needs max_subset_size >= 2 (an unbiased MMD^2 needs pairs), got {max_subset_size}")
    m = min(num_real, num_fake, max_subset_size)
    if m == max_subset_size:
        return m, None
    return m, (f"subset size {max_subset_size} exceeds the sample count (real {num_real}, fake {num_fake}): "
               f"shrunk to {m}")


def kid_report(real_feats, fake_feats, num_subsets: int = 100, max_subset_size: int = 1000,
               seed: int = 0) -> dict:
    """Kernel Inception Distance (Binkowski et al. 2018, sec. 2.2 / 4): the unbiased MMD^2
    estimate (Gretton et al. 2012, Lemma 6) with the cubic kernel k(x, y) = (x.y / D + 1)^3,
    averaged over num_subsets random subsets of m points of each set, drawn without replacement.

    m = max_subset_size when both sets have that many points; otherwise it is shrunk to the smaller
    set's size and the reason is recorded in `kid_subset_note` (None when not shrunk). At m = N = M
    every subset is the whole set, so the subsets do not average anything. Unbiased: its
    expectation is 0 for identical distributions, so it can come out negative. When m equals both
    set sizes every subset is the two whole sets, so one subset is computed instead of num_subsets
    identical ones (the value agrees to float rounding; kid_num_subsets records 1).
    Returns {"kid", "kid_subset_size", "kid_num_subsets", "kid_subset_note"}.
    """
    real, fake = _feature_pair(real_feats, fake_feats)
    if num_subsets < 1:
        raise ValueError(f"KID needs num_subsets >= 1, got {num_subsets}")
    m, note = kid_subset_size(len(real), len(fake), max_subset_size)
    if m == len(real) == len(fake):  # every subset is both whole sets: one gives the average of all (to rounding)
        num_subsets = 1
    # clean-fid draws its subsets from numpy's global RNG: seed it for a reproducible value and
    # give the caller's RNG state back afterwards.
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        value = float(kernel_distance(real, fake, num_subsets, m))
    finally:
        np.random.set_state(state)
    return {"kid": value, "kid_subset_size": m, "kid_num_subsets": num_subsets, "kid_subset_note": note}


def kid(real_feats, fake_feats, num_subsets: int = 100, max_subset_size: int = 1000,
        seed: int = 0) -> float:
    """KID's value alone (kid_report has the subset size it used and why)."""
    return kid_report(real_feats, fake_feats, num_subsets, max_subset_size, seed)["kid"]


def fid_bootstrap(real_feats, fake_feats, num_boot: int = 100, seed: int = 0,
                  level: float = 0.95) -> dict:
    """FID with a bias-corrected estimate and a basic bootstrap interval for the population FID.

    T = FID of the two sets is biased upward at finite N (Chong & Forsyth 2020). Both sets are
    resampled with replacement num_boot times, giving T*_1..T*_B; then (Efron & Tibshirani 1993,
    ch. 10: bias estimate mean(T*) - T; Davison & Hinkley 1997, sec. 5.2.1: the basic interval):

        fid_bc = T - (mean(T*) - T) = 2T - mean(T*)            bias-corrected estimate
        lo, hi = 2T - q_{(1+level)/2}(T*), 2T - q_{(1-level)/2}(T*)   interval for the population FID
        sd     = std(T*)                                       the spread of FID at these N

    What it covers, measured (Gaussian features, 60 data sets each, 100 resamples): the population
    FID in 98% of runs at D = 16, N = 500; 93% at D = 64, N = 500; 82% at D = 128, N = 1000. The
    bootstrap under-estimates the bias as D / N grows, so the interval is optimistic there; with
    several sample counts, FID_inf (fid_curve + fid_extrapolate) is the better point estimate. lo is
    clipped at 0. The previous version re-centred the percentile interval on T: in the same
    simulation it covered the population FID in 25%, 0% and 0% of the runs.
    """
    real, fake = _feature_pair(real_feats, fake_feats)
    point = fid(real, fake)
    rng = np.random.default_rng(seed)
    boot = np.array([
        fid(real[rng.integers(0, len(real), len(real))], fake[rng.integers(0, len(fake), len(fake))])
        for _ in range(num_boot)
    ])  # (num_boot,)
    q_lo, q_hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return {"fid": point, "fid_bc": max(2 * point - float(boot.mean()), 0.0), "lo": max(2 * point - float(q_hi), 0.0),
            "hi": max(2 * point - float(q_lo), 0.0), "sd": float(boot.std(ddof=1)), "num_boot": num_boot}


def fid_curve(real_feats, fake_feats, counts: list[int], seed: int = 0) -> list[dict]:
    """FID against the number n of generated samples, the real set kept whole (Chong & Forsyth
    2020, sec. 3). The subsets are nested (the first n of one random order) so the curve shows the
    1/n bias rather than subset noise."""
    real, fake = _feature_pair(real_feats, fake_feats)
    if any(n < 2 or n > len(fake) for n in counts):
        raise ValueError(f"counts must lie in [2, {len(fake)}], got {list(counts)}")
    order = np.random.default_rng(seed).permutation(len(fake))
    return [{"n": int(n), "fid": fid(real, fake[order[:n]])} for n in counts]


def fid_extrapolate(curve: list[dict]) -> float:
    """FID_inf of Chong & Forsyth 2020 (sec. 3): FID_n is linear in 1/n, FID_n = FID_inf + c / n;
    fit it by least squares over the curve's points and read the intercept at 1/n = 0."""
    inv_n = np.array([1 / point["n"] for point in curve])
    values = np.array([point["fid"] for point in curve])
    if np.unique(inv_n).size < 2:
        raise ValueError("fid_extrapolate needs FID at two or more distinct sample counts")
    _, intercept = np.polyfit(inv_n, values, deg=1)
    return float(intercept)


# ----------------------------------------------------------------------------------------------
# Within a class: the variety a class-trained judge cannot see


def class_share(feats, labels) -> float:
    """The share of a feature space's variance that is class identity: the between-class sum of squares over the
    total (one-way ANOVA decomposition, summed over the feature dimensions),

        sum_c n_c ||mu_c - mu||^2 / sum_i ||x_i - mu||^2,

    1 when every class is one point, about (K - 1) / (N - 1) when the features ignore the class."""
    x, y = _features(feats, "feats"), np.asarray(labels)
    if len(y) != len(x):
        raise ValueError(f"{len(y)} labels for {len(x)} feature rows")
    centred = x - x.mean(axis=0)
    total = float((centred**2).sum())
    between = sum(float((y == c).sum()) * float((centred[y == c].mean(axis=0) ** 2).sum()) for c in np.unique(y))
    return between / total if total > 0 else 0.0


def intra_fid(real_feats, real_labels, fake_feats, fake_labels, min_count: int = 2) -> dict:
    """Class-conditional ("intra-class") FID (Miyato & Koyama 2018, sec. 5.1): the FID between the real images of a
    class and the samples generated for it, averaged over the classes. Samples are grouped by the class they were
    asked for, so a sample of another class counts against its prompt. Classes with fewer than min_count real images
    or samples are left out, and the counts are returned: with n per class, each FID carries an upward bias of order
    D / n (Chong & Forsyth 2020), far larger than the whole-set FID's, so it is read against the held-out real row at
    the same counts. Returns {"intra_fid" (None without a usable class), "classes", "min_count", "median_count"}."""
    real, fake = _feature_pair(real_feats, fake_feats)
    real_y, fake_y = np.asarray(real_labels), np.asarray(fake_labels)
    values, counts = [], []
    for c in np.unique(real_y):
        r, f = real[real_y == c], fake[fake_y == c]
        if len(r) >= min_count and len(f) >= min_count:
            values.append(fid(r, f))
            counts.append(min(len(r), len(f)))
    return {"intra_fid": float(np.mean(values)) if values else None, "classes": len(values),
            "min_count": int(min(counts)) if counts else 0, "median_count": float(np.median(counts)) if counts else 0}


def within_class_coverage(real_feats, real_labels, fake_feats, fake_labels, k: int = 5) -> dict:
    """Coverage (Naeem et al. 2020, sec. 3) taken class by class: for each class with more than k real images, the
    share of them whose k-nearest-neighbour ball (among that class's real images) holds a sample the judge puts in
    that class (0 when it puts none there); averaged over the classes, weighted by their real images. It reads how
    much of each class's real variety the samples reach: one image per class covers about (k + 1) / n_c of a class
    of n_c images, fresh data 1 - prod_{i=1..k} (n_c - i) / (n_c + m_c - i) (about 0.97 at equal counts).
    Returns {"within_coverage" (None without a class of more than k images), "classes", "by_class": {c: value}}."""
    real, fake = _feature_pair(real_feats, fake_feats, min_rows=1)
    real_y, fake_y = np.asarray(real_labels), np.asarray(fake_labels)
    by_class, weights = {}, []
    for c in np.unique(real_y):
        r, f = real[real_y == c], fake[fake_y == c]
        if len(r) <= k:
            continue
        by_class[int(c)] = coverage(r, f, k)
        weights.append(len(r))
    value = float(np.average(list(by_class.values()), weights=weights)) if by_class else None
    return {"within_coverage": value, "classes": len(by_class), "by_class": by_class}


def coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> float:
    """Naeem et al. 2020's coverage alone (prdc computes it with the rest): the share of real points whose k-NN ball
    (strict, as in prdc) holds at least one sample; any number of samples, 0 for none."""
    if len(fake) == 0:
        return 0.0
    centre = real.mean(axis=0)
    real, fake = real - centre, fake - centre
    (radii,) = _kth_neighbour_sq(real, [k], 1024)
    return float((_sq_dists(real, fake) < radii[:, None]).any(axis=1).mean())


# ----------------------------------------------------------------------------------------------
# Precision / recall (Kynkaanniemi et al. 2019) and density / coverage (Naeem et al. 2020)
#
# Both estimate each set's manifold as the union of balls B(x, NND_k(x)), NND_k(x) being the
# distance from x to its k-th nearest neighbour in its own set. Ball membership is strict (<),
# as in Naeem et al.'s reference code (clovaai/prdc): then identical sets give density exactly 1.


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (n, m), |a|^2 + |b|^2 - 2 a.b in float64 (a BLAS matmul)."""
    d = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2 * a @ b.T
    return np.maximum(d, 0.0)  # cancellation can leave tiny negatives


def _kth_neighbour_sq(x: np.ndarray, ks: list[int], chunk: int) -> list[np.ndarray]:
    """Squared distance (N,) from each point to its k-th nearest other point, for each k in ks."""
    out = [np.empty(len(x)) for _ in ks]
    for start in range(0, len(x), chunk):
        d = np.partition(_sq_dists(x[start:start + chunk], x), ks, axis=1)  # (c, N)
        for radii, k in zip(out, ks):
            radii[start:start + chunk] = d[:, k]  # column 0 is the point itself (distance 0)
    return out


def prdc(real_feats, fake_feats, k_pr: int = 3, k_dc: int = 5, chunk: int = 1024) -> dict:
    """Precision, recall (Kynkaanniemi et al. 2019, sec. 2, k = k_pr) and density, coverage
    (Naeem et al. 2020, sec. 3, k = k_dc). With f(y, S) = 1 if y lies in some ball of S's manifold:

        precision = 1/M sum_j f(Y_j, real)        recall   = 1/N sum_i f(X_i, fake)
        density   = 1/(kM) sum_j sum_i 1[Y_j in B(X_i, NND_k(X_i))]
        coverage  = 1/N sum_i 1[exists j: Y_j in B(X_i, NND_k(X_i))]

    A collapsed generator has high precision and low recall. For two independent sets of the same
    distribution E[density] = 1 and E[coverage] = 1 - prod_{i=1..k} (N - i) / (N + M - i), about
    1 - 2^-k (Naeem et al. 2020, sec. 4). Distances are exact, computed in row chunks of `chunk`
    so memory stays O(chunk * (N + M)).
    """
    real, fake = _feature_pair(real_feats, fake_feats, min_rows=max(k_pr, k_dc) + 1)
    centre = real.mean(axis=0)  # distances ignore translation; centring shrinks rounding error
    real, fake = real - centre, fake - centre
    real_pr, real_dc = _kth_neighbour_sq(real, [k_pr, k_dc], chunk)  # (N,), (N,)
    (fake_pr,) = _kth_neighbour_sq(fake, [k_pr], chunk)  # (M,)

    in_real_manifold = np.zeros(len(fake), dtype=bool)  # (M,)
    balls_containing = np.zeros(len(fake))  # (M,) number of real k_dc-balls holding Y_j
    in_fake_manifold = np.empty(len(real), dtype=bool)  # (N,)
    covered = np.empty(len(real), dtype=bool)  # (N,)
    for start in range(0, len(real), chunk):
        rows = slice(start, start + chunk)
        d = _sq_dists(real[rows], fake)  # (c, M)
        in_real_manifold |= (d < real_pr[rows, None]).any(axis=0)
        inside = d < real_dc[rows, None]  # (c, M)
        balls_containing += inside.sum(axis=0)
        covered[rows] = inside.any(axis=1)
        in_fake_manifold[rows] = (d < fake_pr[None, :]).any(axis=1)
    return {
        "precision": float(in_real_manifold.mean()),
        "recall": float(in_fake_manifold.mean()),
        "density": float(balls_containing.sum() / (k_dc * len(fake))),
        "coverage": float(covered.mean()),
    }


# ----------------------------------------------------------------------------------------------
# Memorisation: the same measures for both families, on features (judge or Inception)
#
# train (L, D) training-split features T, test (n, D) test-split features P_n, fake (m, D) samples Q_m.
# d_T(x) = min_{t in T} ||x - t||, the distance of x to its nearest training point.


def nn_distances(query, ref, chunk: int = 1024, exclude_self: bool = False) -> np.ndarray:
    """Euclidean distance (Q,) from each query row to its nearest ref row, exact, in row chunks. exclude_self: query
    is ref, and each point's own zero distance is skipped (leave-one-out: the nearest *other* point)."""
    query, ref = np.asarray(query, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    centre = ref.mean(axis=0)  # distances ignore translation; centring shrinks rounding error
    query, ref = query - centre, ref - centre
    k = 1 if exclude_self else 0
    out = np.empty(len(query))
    for start in range(0, len(query), chunk):
        d = _sq_dists(query[start:start + chunk], ref)  # (c, L)
        out[start:start + chunk] = np.partition(d, k, axis=1)[:, k]
    return np.sqrt(out)


def memorisation_reference(train_feats, held_out_feats, quantile: float = 0.05, chunk: int = 1024) -> dict:
    """What memorisation() needs of the two real sets alone, computed once for all the sample sets scored against
    them: the near-copy thresholds tau_T, tau_H and the held-out points' own share of near-copies of T."""
    train, held = _features(train_feats, "train_feats"), _features(held_out_feats, "held_out_feats")
    tau_t = float(np.quantile(nn_distances(train, train, chunk, exclude_self=True), quantile))
    tau_h = float(np.quantile(nn_distances(held, held, chunk, exclude_self=True), quantile))
    return {"near_copy_threshold": tau_t, "near_copy_threshold_held": tau_h, "near_copy_quantile": quantile,
            "test_near_copy_share": float(np.mean(nn_distances(held, train, chunk) < tau_t))}


def memorisation(train_feats, held_out_feats, fake_feats, quantile: float = 0.05, chunk: int = 1024,
                 reference: dict | None = None) -> dict:
    """Nearest-neighbour distances of the samples to the training split T and to held-out real data H (real images
    no model trained on), and two readings of them.

    copy_excess  which set holds a sample's nearest real image. For any generator that does not depend on the
                 training set (fresh, concentrated, blurry or broken alike), the T u H images are |T| + |H| exchangeable
                 draws as seen from its sample, so the nearest one is a training image with probability exactly
                 pi = |T| / (|T| + |H|), ties aside. Copying training images raises that share towards 1. So

                     copy_excess = (share of samples nearer T than H - pi) / (1 - pi)

                 is 0 in expectation with no assumption on the generator, 1 for a copier, c for a generator copying a
                 share c of its samples. Its spread over samples is sqrt(|T| / (|H| m)) at m independent samples (0.1
                 at 1,000 samples and |T| = 10 |H|): the price of the exact null. (An earlier version compared the
                 shares of near-copies of T and of H; with |T| != |H| the two thresholds differ in scale and samples
                 concentrated where the data are dense read a spurious excess, +0.09 at half the spread.)
    near-copies  a sample closer to its nearest point of a set S than tau_S, the `quantile` of the leave-one-out
                 nearest-neighbour distances within S: fresh data make near-copies of S at about that rate (a fresh
                 draw is, to S, what a point of S is to the others). near_copy_share (of T) and near_copy_share_held
                 (of H) say whether samples come near real images at all: far below `quantile` on H, the samples sit
                 near no real image, and no memorisation reading can tell copying from not copying (the verdict then
                 names no leader).

    nn_train / nn_held: median distance of a sample to its nearest point of T / H, and their ratio;
    test_near_copy_share: the held-out points' own share of near-copies of T (about `quantile`). `reference`:
    memorisation_reference of the same two sets, when it was computed already.
    """
    train = _features(train_feats, "train_feats")
    held, fake = _features(held_out_feats, "held_out_feats"), _features(fake_feats, "fake_feats", 1)
    if not train.shape[1] == held.shape[1] == fake.shape[1]:
        raise ValueError(f"feature sizes differ: train {train.shape[1]}, held-out {held.shape[1]}, "
                         f"fake {fake.shape[1]}")
    ref = reference or memorisation_reference(train, held, quantile, chunk)
    d_train, d_held = nn_distances(fake, train, chunk), nn_distances(fake, held, chunk)  # (m,), (m,)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.median(d_train / d_held)
    chance = len(train) / (len(train) + len(held))  # pi
    nearer_train = float(np.mean((d_train < d_held) + 0.5 * (d_train == d_held)))  # a tie counts half
    return {
        "nn_train": float(np.median(d_train)),
        "nn_held": float(np.median(d_held)),
        "nn_ratio": float(ratio),
        "near_copy_share": float(np.mean(d_train < ref["near_copy_threshold"])),
        "near_copy_share_held": float(np.mean(d_held < ref["near_copy_threshold_held"])),
        "nearer_train_share": nearer_train,
        "nearer_train_chance": chance,
        "copy_excess": (nearer_train - chance) / (1 - chance),
        **ref,
    }


def copies_measurable(near_copy_share_held: float, quantile: float = 0.05) -> bool:
    """Whether samples come near real images often enough for a memorisation reading to mean anything: at least half
    the rate of near-copies of held-out images that fresh data make (`quantile`, by construction). Below it the
    samples sit near no real image (blurry, broken, or simply unlike the data), and copying cannot be told from not
    copying: a memorisation row then names no leader."""
    return near_copy_share_held >= quantile / 2


def mann_whitney_z(test_d: np.ndarray, fake_d: np.ndarray) -> float:
    """Z-scored Mann-Whitney U of the samples' distances against the test points' (Meehan et al. 2020, sec. 3.1):
    U = #{(i, j): d(Q_j) > d(P_i)} + #{ties} / 2 over the n test and m generated distances, then
    Z_U = (U - m n / 2) / sqrt(m n (m + n + 1) / 12), its mean and sd under H0 (same distribution). Z_U << 0:
    samples sit closer to the training set than test data do (data-copying); >> 0: farther (underfitting)."""
    test_d, fake_d = np.asarray(test_d, dtype=np.float64), np.asarray(fake_d, dtype=np.float64)
    n, m = len(test_d), len(fake_d)
    ranks = _average_ranks(np.concatenate([fake_d, test_d]))  # (m + n,) 1-based, ties averaged
    u = ranks[:m].sum() - m * (m + 1) / 2  # pairs with fake > test (Mann & Whitney 1947)
    return float((u - m * n / 2) / np.sqrt(m * n * (m + n + 1) / 12))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    if (counts > 1).any():  # average the ranks of tied values
        sums = np.bincount(inverse, weights=ranks)
        ranks = sums[inverse] / counts[inverse]
    return ranks


def data_copying(train_feats, test_feats, fake_feats, cells: int = 10, min_fake: int = 20, seed: int = 0,
                 chunk: int = 1024, kmeans=None) -> dict:
    """The data-copying statistic C_T of Meehan, Chaudhuri & Dasgupta 2020 ("A non-parametric test to detect
    data-copying in generative models", AISTATS, sec. 3.1-3.2).

    The instance space is partitioned into cells by k-means on the training split (k = cells); in each cell pi the
    distances to the training set of its test points, L_pi(P_n), and of its samples, L_pi(Q_m), give Z_U(pi)
    (mann_whitney_z). Cells with fewer than min_fake samples (Q_m(pi) < tau, tau = min_fake / m; the paper's
    experiments use 20 samples) or no test point are left out (Pi_tau), and

        C_T = sum_{pi in Pi_tau} P_n(pi) Z_U(pi) / sum_{pi in Pi_tau} P_n(pi),   P_n(pi) = share of test points in pi.

    C_T ~ 0 for samples distributed like the test data (each Z_U ~ N(0, 1) under H0); C_T << 0 is data-copying.
    Distances go to the whole training split (the authors' released code uses the cell's own training points; the
    nearest training point almost always lies in the same k-means cell). Returns C_T (nan when no cell qualifies),
    the cells used and the share of samples in cells left out. `kmeans`: the partition of the same training features
    (copying_cells), when it was fitted already.
    """
    train = _features(train_feats, "train_feats", cells)
    test, fake = _features(test_feats, "test_feats", 1), _features(fake_feats, "fake_feats", 1)
    kmeans = kmeans or copying_cells(train, cells, seed)
    test_cell, fake_cell = kmeans.predict(test), kmeans.predict(fake)  # (n,), (m,)
    test_d, fake_d = nn_distances(test, train, chunk), nn_distances(fake, train, chunk)
    used = [c for c in range(cells) if (fake_cell == c).sum() >= min_fake and (test_cell == c).any()]  # Pi_tau
    weights = np.array([np.mean(test_cell == c) for c in used])  # P_n(pi)
    scores = np.array([mann_whitney_z(test_d[test_cell == c], fake_d[fake_cell == c]) for c in used])  # Z_U(pi)
    return {"c_t": float(weights @ scores / weights.sum()) if used else float("nan"), "cells": cells,
            "cells_used": len(used), "fake_share_left_out": float(1 - np.isin(fake_cell, used).mean()),
            "z_cells": scores.tolist()}


def copying_cells(train_feats, cells: int = 10, seed: int = 0):
    """data_copying's partition of the instance space: scikit-learn's KMeans (Lloyd's algorithm, k-means++ seeding)
    fitted on the training features."""
    return KMeans(n_clusters=cells, n_init=3, random_state=seed).fit(_features(train_feats, "train_feats", cells))
