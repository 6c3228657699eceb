"""Known-answer tests for bench/metrics.py: closed forms, published expectations, a deliberately
collapsed generator, and a brute-force second implementation of precision/recall/density/coverage."""

import itertools

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.stats import chi2
from threadpoolctl import threadpool_limits

from bench.data.mixtures import mixture_modes
from bench.evaluate import metrics

# ----------------------------------------------------------------------------------------------
# 2D mixtures


def sample_mixture(name, n, rng):
    centers, std = mixture_modes(name)
    return centers[rng.integers(len(centers), size=n)] + std * rng.normal(size=(n, 2))


def test_mixture_modes_match_their_definitions():
    ring, ring_std = mixture_modes("ring8")
    np.testing.assert_allclose(np.linalg.norm(ring, axis=1), 1.0)
    np.testing.assert_allclose(np.arctan2(ring[:, 1], ring[:, 0]) % (2 * np.pi),
                               2 * np.pi * np.arange(8) / 8, atol=1e-12)
    grid, grid_std = mixture_modes("grid25")
    assert {tuple(p) for p in grid} == {(x, y) for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)}
    assert (ring_std, grid_std) == (0.01, 0.05)
    with pytest.raises(ValueError, match="unknown mixture"):
        mixture_modes("ring9")


@pytest.mark.parametrize("name", ["ring8", "grid25"])
def test_exact_mixture_samples_capture_every_mode(name):
    centers, std = mixture_modes(name)
    n = 2500
    stats = metrics.mixture_stats(sample_mixture(name, n, np.random.default_rng(0)), centers, std)
    assert stats["modes"] == stats["num_modes"] == len(centers)
    assert stats["num_samples"] == n
    # The radius of an isotropic 2D Gaussian is Rayleigh: P(r <= 3 std) = 1 - exp(-9/2) = 0.989.
    p_hq = 1 - np.exp(-4.5)
    assert abs(stats["hq_fraction"] - p_hq) < 4 * np.sqrt(p_hq * (1 - p_hq) / n)
    # 2N KL(histogram || uniform) is the G-test statistic, chi^2 with K-1 degrees of freedom.
    assert 2 * n * stats["reverse_kl"] < chi2.ppf(0.9999, len(centers) - 1)


def test_samples_at_one_mode_capture_one_mode_with_reverse_kl_log_k():
    centers, std = mixture_modes("grid25")
    samples = np.repeat(centers[7:8], 100, axis=0) + 0.1 * std  # all within 3 std of mode 7
    stats = metrics.mixture_stats(samples, centers, std)
    assert stats["modes"] == 1 and stats["hq_fraction"] == 1.0
    assert stats["reverse_kl"] == pytest.approx(np.log(25), abs=1e-12)


def test_samples_far_from_every_mode_are_not_high_quality():
    centers, std = mixture_modes("ring8")
    at_origin = np.zeros((50, 2))  # distance 1 = 100 std from every mode
    stats = metrics.mixture_stats(at_origin, centers, std)
    assert stats["modes"] == 0 and stats["hq_fraction"] == 0.0
    assert np.isnan(stats["reverse_kl"])  # no high-quality sample: no histogram to compare
    # The 3-std boundary: radially out from mode 0 by 2.9 std is high quality, by 3.1 std is not.
    near, far = centers[:1] * (1 + 2.9 * std), centers[:1] * (1 + 3.1 * std)
    assert metrics.mixture_stats(near, centers, std)["hq_fraction"] == 1.0
    assert metrics.mixture_stats(far, centers, std)["hq_fraction"] == 0.0


def test_mixture_reverse_kl_counts_high_quality_samples_only():
    # PacGAN's released code histograms the samples within 3 std of their nearest mode. Half the samples sit on
    # mode 0, half near mode 1 but 10 std off it: the histogram is all mode 0, KL(p_gen || uniform) = log 8.
    # (Counting every sample, as before, gave KL((1/2, 1/2, 0, ...) || uniform) = log 4.)
    centers, std = mixture_modes("ring8")
    on_mode = np.repeat(centers[:1], 100, axis=0)
    off_mode = np.repeat(centers[1:2] * (1 + 10 * std), 100, axis=0)
    stats = metrics.mixture_stats(np.concatenate([on_mode, off_mode]), centers, std)
    assert stats["hq_fraction"] == 0.5 and stats["modes"] == 1
    assert stats["reverse_kl"] == pytest.approx(np.log(8), abs=1e-12)
    # two modes, 3:1 among the high-quality samples: sum p log(p / (1/8)) with p = (3/4, 1/4)
    three_one = np.concatenate([np.repeat(centers[:1], 75, axis=0), np.repeat(centers[2:3], 25, axis=0), off_mode])
    expected = 0.75 * np.log(0.75 * 8) + 0.25 * np.log(0.25 * 8)
    assert metrics.mixture_stats(three_one, centers, std)["reverse_kl"] == pytest.approx(expected, rel=1e-12)


def test_non_finite_samples_do_not_crash_and_are_not_high_quality():
    centers, std = mixture_modes("ring8")
    samples = np.concatenate([centers, np.full((4, 2), np.nan), np.full((4, 2), np.inf)])
    stats = metrics.mixture_stats(samples, centers, std)
    assert stats["num_samples"] == 16 and stats["hq_fraction"] == 0.5 and stats["modes"] == 8
    assert stats["reverse_kl"] == pytest.approx(0.0, abs=1e-12)  # the finite ones are uniform
    all_nan = metrics.mixture_stats(np.full((5, 2), np.nan), centers, std)
    assert all_nan["modes"] == 0 and all_nan["hq_fraction"] == 0.0
    assert np.isnan(all_nan["reverse_kl"])


# ----------------------------------------------------------------------------------------------
# Labels


def test_mode_stats_counts_every_mode_of_a_uniform_labelling():
    k, n = 1000, 26000  # P(a class is missed) = (1 - 1/k)^n ~ 5e-12; the seed is fixed anyway
    labels = np.random.default_rng(0).integers(k, size=n)
    stats = metrics.mode_stats(labels, k)
    assert stats["modes"] == k and stats["num_modes"] == k and stats["num_samples"] == n
    # 2N KL(p_gen || uniform) ~ chi^2_{k-1}: mean k-1, std sqrt(2(k-1)).
    assert abs(2 * n * stats["reverse_kl"] - (k - 1)) < 5 * np.sqrt(2 * (k - 1))


def test_mode_stats_kl_known_answers():
    exact = metrics.mode_stats(np.repeat(np.arange(10), 3), 10)
    assert exact["reverse_kl"] == pytest.approx(0.0, abs=1e-12) and exact["forward_kl"] == pytest.approx(0.0, abs=1e-9)
    assert "kl" not in exact  # one name, one meaning
    # Half the classes, evenly: reverse KL(p_gen || p_data) = log 2; the forward KL is finite by smoothing p_gen.
    half = metrics.mode_stats(np.arange(5).repeat(2), 10, eps=1e-6)
    assert half["modes"] == 5 and half["reverse_kl"] == pytest.approx(np.log(2), abs=1e-12)
    smooth_seen, smooth_missing = (0.2 + 1e-6) / (1 + 1e-5), 1e-6 / (1 + 1e-5)
    expected = 0.5 * np.log(0.1 / smooth_seen) + 0.5 * np.log(0.1 / smooth_missing)
    assert half["forward_kl"] == pytest.approx(expected, rel=1e-12)
    # A non-uniform reference equal to the labels' own distribution gives KL 0 both ways.
    skewed = metrics.mode_stats(np.array([0, 0, 0, 1]), 2, reference_probs=np.array([3.0, 1.0]))
    assert skewed["reverse_kl"] == pytest.approx(0.0, abs=1e-5) and skewed["forward_kl"] == pytest.approx(0.0, abs=1e-5)
    # The direction, on a known pair: p_gen = (0.9, 0.1), p_data = (0.5, 0.5).
    gen = np.array([0] * 9 + [1])
    stats = metrics.mode_stats(gen, 2, reference_probs=np.array([0.5, 0.5]), eps=0.0)
    assert stats["reverse_kl"] == pytest.approx(0.9 * np.log(1.8) + 0.1 * np.log(0.2), rel=1e-12)
    assert stats["forward_kl"] == pytest.approx(0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1), rel=1e-12)


def test_label_probs_of_a_split():
    assert np.allclose(metrics.label_probs(np.array([0, 0, 1, 3]), 4), [0.5, 0.25, 0.0, 0.25])
    # stacked digits: the product of the per-channel digit frequencies, at index 100 r + 10 g + b
    channels = np.array([[0, 1, 2], [0, 0, 0]])  # digit frequencies: 0 -> 4/6, 1 -> 1/6, 2 -> 1/6
    p = metrics.label_probs(channels @ np.array([100, 10, 1]), 1000, channel_labels=channels)
    assert p.shape == (1000,) and p.sum() == pytest.approx(1.0)
    assert p[0] == pytest.approx((4 / 6) ** 3) and p[12] == pytest.approx((4 / 6) * (1 / 6) ** 2)
    assert p[210] == pytest.approx((1 / 6) ** 2 * (4 / 6)) and p[999] == 0.0


def test_mode_stats_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels must lie"):
        metrics.mode_stats(np.array([0, 10]), 10)
    with pytest.raises(ValueError, match="integer"):
        metrics.mode_stats(np.array([0.5]), 10)


def test_cond_accuracy_known_answers():
    assert metrics.cond_accuracy([0, 1, 2, 3], [0, 1, 0, 3]) == 0.75
    assert metrics.cond_accuracy(np.arange(5), np.arange(5)) == 1.0
    assert metrics.cond_accuracy([1, 1], [0, 0]) == 0.0
    with pytest.raises(ValueError):
        metrics.cond_accuracy([0, 1], [0])


# ----------------------------------------------------------------------------------------------
# FID / KID


def with_moments(z, mean, cov):
    """Whiten z, then give it exactly this sample mean and (unbiased) sample covariance."""
    z = z - z.mean(axis=0)
    white = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return white @ np.linalg.cholesky(cov).T + mean


def test_fid_of_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 8))
    assert metrics.fid(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fid_matches_the_gaussian_closed_form():
    rng = np.random.default_rng(0)
    d = 5
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    real = with_moments(rng.normal(size=(300, d)), mu1, s1)
    fake = with_moments(rng.normal(size=(400, d)), mu2, s2)
    # Tr((S1 S2)^(1/2)) = sum of square roots of the (real, non-negative) eigenvalues of S1 S2.
    tr_sqrt = np.sqrt(np.linalg.eigvals(s1 @ s2).real).sum()
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * tr_sqrt
    assert metrics.fid(real, fake) == pytest.approx(expected, rel=1e-8)
    # Diagonal covariances commute: FID = ||mu1 - mu2||^2 + sum_i (sigma1_i - sigma2_i)^2.
    sd1, sd2 = np.array([1.0, 2.0, 0.5]), np.array([3.0, 1.0, 0.5])
    real = with_moments(rng.normal(size=(300, 3)), np.zeros(3), np.diag(sd1**2))
    fake = with_moments(rng.normal(size=(300, 3)), np.ones(3), np.diag(sd2**2))
    assert metrics.fid(real, fake) == pytest.approx(3 + np.sum((sd1 - sd2) ** 2), rel=1e-8)


def unbiased_mmd2_cubic(x, y):
    """Second implementation: unbiased MMD^2 (Gretton et al. 2012, Lemma 6), cubic kernel."""
    d, m = x.shape[1], len(x)

    def kernel(a, b):
        return (a @ b.T / d + 1) ** 3

    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    off_diag = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return off_diag - 2 * kxy.mean()


def test_kid_is_the_unbiased_mmd2_with_the_cubic_kernel():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)), rng.normal(size=(60, 4)) + 0.3
    # max_subset_size >= N: every subset is the whole set, so KID is the full-sample MMD^2.
    assert metrics.kid(x, y, num_subsets=3) == pytest.approx(unbiased_mmd2_cubic(x, y), rel=1e-9)


def test_kid_near_zero_for_same_distribution_and_positive_for_shifted():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    same = metrics.kid(x, y, num_subsets=10, max_subset_size=200)
    shifted = metrics.kid(x, y + 0.5, num_subsets=10, max_subset_size=200)
    assert abs(same) < 0.02 < shifted
    # Reproducible from its seed, and the caller's global numpy RNG is left alone.
    state = np.random.get_state()[1].copy()
    assert metrics.kid(x, y, num_subsets=10, max_subset_size=200) == same
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def _gaussian_pair(d: int, rng):
    """Two Gaussians with a closed-form FID (Heusel et al. 2017, eq. 6) and a sampler of N points from each."""
    from scipy import linalg

    a = rng.normal(size=(d, d)) / np.sqrt(d)
    cov_y = np.eye(d) + 0.5 * a @ a.T
    mu_y = np.full(d, 0.1)
    population = float(mu_y @ mu_y + np.trace(np.eye(d) + cov_y - 2 * linalg.sqrtm(cov_y).real))
    chol = np.linalg.cholesky(cov_y)
    return population, lambda n: (rng.normal(size=(n, d)), mu_y + rng.normal(size=(n, d)) @ chol.T)


def test_fid_bootstrap_interval_covers_the_population_fid():
    # The interval is for the population FID: over independent data sets it must contain the closed-form value
    # about 95% of the time. The old interval had the same width but was re-centred on the point estimate T, which
    # is biased upward (Chong & Forsyth 2020): with d = 16, N = 200 it rarely contains the population value.
    rng = np.random.default_rng(0)
    population, draw = _gaussian_pair(16, rng)
    with threadpool_limits(limits=1, user_api="blas"):  # 16x16 sqrtm: BLAS threads only spin
        runs = [metrics.fid_bootstrap(*draw(200), num_boot=30, seed=i) for i in range(25)]
    covered = np.mean([r["lo"] <= population <= r["hi"] for r in runs])
    assert covered >= 0.8  # 0.95 expected; about 3 binomial sds of 25 runs below it
    old_covered = np.mean([abs(r["fid"] - population) <= (r["hi"] - r["lo"]) / 2 for r in runs])
    assert old_covered < 0.3
    # the bias-corrected estimate is much closer to the population value than T on average
    fid_mean, bc_mean = np.mean([r["fid"] for r in runs]), np.mean([r["fid_bc"] for r in runs])
    assert abs(bc_mean - population) < 0.3 * (fid_mean - population)


def test_fid_bootstrap_sd_is_the_spread_of_fid_at_n():
    rng = np.random.default_rng(0)
    n, d, shift = 500, 4, 0.2

    def draw():
        return rng.normal(size=(n, d)), rng.normal(size=(n, d)) + shift

    result = metrics.fid_bootstrap(*draw(), num_boot=100, seed=0)
    assert result["lo"] < result["fid"] < result["hi"] and result["num_boot"] == 100
    x, y = draw()
    assert metrics.fid_bootstrap(x, y, num_boot=5, seed=1) == metrics.fid_bootstrap(
        x, y, num_boot=5, seed=1)  # same data and seed, same answer
    # sd should match the spread of FID over independent draws of the data (the thing the bootstrap imitates),
    # within a factor of 2.
    spread = np.std([metrics.fid(*draw()) for _ in range(100)])
    assert 0.5 < result["sd"] / spread < 2


def test_fid_curve_decreases_toward_the_large_n_value():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(1000, 16)), rng.normal(size=(1000, 16))
    curve = metrics.fid_curve(real, fake, [100, 200, 400, 1000])
    values = [point["fid"] for point in curve]
    assert [point["n"] for point in curve] == [100, 200, 400, 1000]
    assert all(a > b for a, b in itertools.pairwise(values))
    assert values[-1] == pytest.approx(metrics.fid(real, fake), rel=1e-12)
    # Chong & Forsyth's FID_inf removes the fake-side 1/n bias: closer to the true value, 0.
    assert 0 <= metrics.fid_extrapolate(curve) < values[-1]
    with pytest.raises(ValueError):
        metrics.fid_curve(real, fake, [2000])


def test_fid_extrapolate_recovers_the_intercept_of_a_one_over_n_curve():
    curve = [{"n": n, "fid": 2.0 + 30.0 / n} for n in (50, 100, 500)]
    assert metrics.fid_extrapolate(curve) == pytest.approx(2.0, rel=1e-9)


# ---------------------------------------------------------------- FID's matrix square root: hard cases


def fid_from_gram(x, y):
    """Second implementation for N, M < D: with centred rows Xc, Yc, S1 = Xc^T Xc / (N-1) and
    S2 = Yc^T Yc / (M-1), Tr((S1 S2)^(1/2)) is the nuclear norm of the small (N, M) matrix
    Xc Yc^T / sqrt((N-1)(M-1)) (the eigenvalues of A A^T B B^T are the squared singular values of
    A^T B). No D x D matrix and no square root of a singular one."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    tr_sqrt = np.linalg.svd(xc @ yc.T, compute_uv=False).sum() / np.sqrt((len(x) - 1) * (len(y) - 1))
    diff = x.mean(0) - y.mean(0)
    return diff @ diff + (xc**2).sum() / (len(x) - 1) + (yc**2).sum() / (len(y) - 1) - 2 * tr_sqrt


def clean_fid_frechet(mu1, s1, mu2, s2):
    import warnings

    from cleanfid.fid import frechet_distance

    with warnings.catch_warnings():  # clean-fid passes sqrtm's deprecated `disp`
        warnings.simplefilter("ignore", DeprecationWarning)
        return float(frechet_distance(mu1, s1, mu2, s2))


def test_fid_agrees_with_clean_fid_on_well_conditioned_covariances():
    rng = np.random.default_rng(3)
    for d in (3, 16, 64):
        x = rng.normal(size=(600, d))
        y = rng.normal(size=(500, d)) @ (np.eye(d) + 0.3 * rng.normal(size=(d, d))) + 0.5
        (mu_x, s_x), (mu_y, s_y) = metrics.gaussian_moments(x), metrics.gaussian_moments(y)
        assert metrics.fid(x, y) == pytest.approx(clean_fid_frechet(mu_y, s_y, mu_x, s_x), rel=1e-9)


@pytest.mark.parametrize("d,n", [(64, 10), (160, 30)])
def test_fid_is_exact_with_fewer_samples_than_dimensions(d, n):
    # Rank-deficient covariances (rank n - 1 < d): S1 S2 is singular, scipy's sqrtm of it has
    # imaginary parts of ~1e-7 and clean-fid's identical-set FID comes out at about -1e-5.
    rng = np.random.default_rng(d)
    x, y = rng.normal(size=(n, d)), 1.5 * rng.normal(size=(n, d)) + 0.2
    (mu_x, s_x), (mu_y, s_y) = metrics.gaussian_moments(x), metrics.gaussian_moments(y)
    from_moments = metrics.frechet_distance(mu_x, s_x, mu_y, s_y)  # square roots of (d, d) singular covariances
    assert isinstance(from_moments, float)
    assert from_moments == pytest.approx(fid_from_gram(x, y), rel=1e-11)
    assert metrics.fid(x, y) == pytest.approx(from_moments, rel=1e-11)  # fid's own (n, n) route
    assert metrics.fid(x, x) == pytest.approx(0.0, abs=1e-9 * d)
    assert metrics.frechet_distance(mu_x, s_x, mu_x, s_x) == pytest.approx(0.0, abs=1e-9 * d)


def test_frechet_distance_closed_forms_with_non_diagonal_and_singular_covariances():
    rng = np.random.default_rng(0)
    d = 12
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))  # a random rotation: non-diagonal covariances
    a, b = rng.uniform(0.1, 4, d), rng.uniform(0.1, 4, d)
    a[:4] = 0.0  # singular: four zero variances
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    # S1 = Q diag(a) Q^T and S2 = Q diag(b) Q^T commute: FID = ||mu1 - mu2||^2 + sum (sqrt a - sqrt b)^2.
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    # Tr((S1 S2)^(1/2)) is not Lipschitz at a singular S1: storing S1 in float64 moves each zero eigenvalue by
    # ~1e-16 |S|, which moves the exact answer by ~sqrt(1e-16 |S1| |S2|) ~ 4e-8 per zero direction; hence abs=1e-6.
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, abs=1e-6)
    # A tiny negative eigenvalue (rounding in a computed covariance) counts as 0, not as a NaN or a complex value.
    a_neg = a.copy()
    a_neg[0] = -1e-13
    s1_neg = (q * a_neg) @ q.T
    assert metrics.frechet_distance(mu1, s1_neg, mu2, s2) == pytest.approx(expected, abs=1e-6)
    assert metrics.frechet_distance(mu1, s1_neg, mu1, s1_neg) == pytest.approx(0.0, abs=1e-10)
    # S1 = c I against a rank-3 S2 = G G^T: Tr((S1 S2)^(1/2)) = sqrt(c) Tr(S2^(1/2)) = sqrt(c) (sum of G's singular
    # values), computed from G without any square root of a singular matrix.
    c, g = 2.5, rng.normal(size=(d, 3))
    s2 = g @ g.T
    expected = d * c + np.sum(g**2) - 2 * np.sqrt(c) * np.linalg.svd(g, compute_uv=False).sum()
    assert metrics.frechet_distance(np.zeros(d), c * np.eye(d), np.zeros(d), s2) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="moment shapes"):
        metrics.frechet_distance(mu1, s1, mu2[:3], s2[:3, :3])


def test_kid_shrinks_a_subset_larger_than_the_samples_and_says_why():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 4)), rng.normal(size=(80, 4)) + 0.3
    report = metrics.kid_report(x, y, num_subsets=5, max_subset_size=1000)
    assert report["kid_subset_size"] == 50 and report["kid_num_subsets"] == 5
    assert "exceeds the sample count" in report["kid_subset_note"] and "shrunk to 50" in report["kid_subset_note"]
    assert report["kid"] == metrics.kid(x, y, num_subsets=5, max_subset_size=50)  # the same draws
    fits = metrics.kid_report(x, y, num_subsets=5, max_subset_size=20)
    assert fits["kid_subset_size"] == 20 and fits["kid_subset_note"] is None
    # With m = N = M every subset is the whole set: KID is the full-sample unbiased MMD^2.
    full = metrics.kid_report(x, y[:50], num_subsets=2, max_subset_size=10_000)
    assert full["kid"] == pytest.approx(unbiased_mmd2_cubic(x, y[:50]), rel=1e-9)
    with pytest.raises(ValueError, match="max_subset_size >= 2"):
        metrics.kid_report(x, y, max_subset_size=1)


def test_feature_metrics_reject_bad_input():
    x = np.zeros((10, 3))
    with pytest.raises(ValueError, match="feature sizes differ"):
        metrics.fid(x, np.zeros((10, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        metrics.prdc(x, np.full((10, 3), np.nan))


# ----------------------------------------------------------------------------------------------
# Precision / recall / density / coverage


def prdc_brute_force(real, fake, k_pr, k_dc):
    """Second implementation, straight from the definitions, with full distance matrices."""
    real_real, fake_fake, real_fake = cdist(real, real), cdist(fake, fake), cdist(real, fake)
    r_pr = np.sort(real_real, axis=1)[:, k_pr]  # column 0 is the point itself
    r_dc = np.sort(real_real, axis=1)[:, k_dc]
    f_pr = np.sort(fake_fake, axis=1)[:, k_pr]
    precision = np.mean([any(real_fake[i, j] < r_pr[i] for i in range(len(real)))
                         for j in range(len(fake))])
    recall = np.mean([any(real_fake[i, j] < f_pr[j] for j in range(len(fake)))
                      for i in range(len(real))])
    inside = real_fake < r_dc[:, None]
    return {"precision": precision, "recall": recall,
            "density": inside.sum() / (k_dc * len(fake)), "coverage": inside.any(axis=1).mean()}


def test_prdc_matches_a_brute_force_implementation():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(80, 3)), 1.3 * rng.normal(size=(70, 3)) + 0.4
    expected = prdc_brute_force(real, fake, k_pr=3, k_dc=5)
    for chunk in (7, 1024):  # chunking must not change the answer
        got = metrics.prdc(real, fake, k_pr=3, k_dc=5, chunk=chunk)
        assert got == pytest.approx(expected, abs=1e-12)


def test_prdc_of_identical_sets():
    x = np.random.default_rng(0).normal(size=(300, 8))
    assert metrics.prdc(x, x) == {"precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0}


def test_prdc_of_independent_draws_of_one_distribution():
    rng = np.random.default_rng(0)
    n, k = 2000, 5
    stats = metrics.prdc(rng.normal(size=(n, 4)), rng.normal(size=(n, 4)), k_dc=k)
    # Naeem et al. 2020 sec. 4: E[coverage] = 1 - prod_{i=1..k} (N - i) / (2N - i) ~ 1 - 2^-k,
    # E[density] = 1. Over 30 seeds at this size coverage had std 0.005, density 0.016: 4 std.
    expected_coverage = 1 - np.prod([(n - i) / (2 * n - i) for i in range(1, k + 1)])
    assert abs(stats["coverage"] - expected_coverage) < 0.02
    assert abs(stats["density"] - 1) < 0.06


def test_prdc_collapsed_generator_has_high_precision_and_low_recall():
    rng = np.random.default_rng(0)
    n = 300
    real = rng.normal(size=(n, 8))
    collapsed = real[0] + 1e-3 * rng.normal(size=(n, 8))  # one real point, repeated with noise
    stats = metrics.prdc(real, collapsed)
    assert stats["precision"] == 1.0 and stats["recall"] <= 1 / n
    assert stats["coverage"] < 0.05
    # Swapped arguments: the collapsed set as "real" -> precision low, recall high.
    swapped = metrics.prdc(collapsed, real)
    assert swapped["precision"] <= 1 / n and swapped["recall"] == 1.0


# ----------------------------------------------------------------------------------------------
# Memorisation: near-copy share and the data-copying statistic C_T (Meehan et al. 2020)


@pytest.fixture(scope="module")
def copy_setting():
    """Training and test splits of one Gaussian, a generator that returns noisy copies of training points, and one
    that draws fresh samples from the data distribution."""
    rng = np.random.default_rng(0)
    d = 8
    train, test = rng.normal(size=(1000, d)), rng.normal(size=(300, d))
    copies = train[rng.integers(0, len(train), 300)] + 0.02 * rng.normal(size=(300, d))
    fresh = rng.normal(size=(300, d))
    return train, test, copies, fresh


def test_nn_distances_match_brute_force():
    rng = np.random.default_rng(1)
    q, r = rng.normal(size=(37, 5)), rng.normal(size=(53, 5))
    assert np.allclose(metrics.nn_distances(q, r, chunk=10), cdist(q, r).min(axis=1))
    loo = cdist(r, r) + np.diag(np.full(len(r), np.inf))
    assert np.allclose(metrics.nn_distances(r, r, chunk=7, exclude_self=True), loo.min(axis=1))


def test_near_copy_share_separates_copies_from_fresh_samples(copy_setting):
    train, test, copies, fresh = copy_setting
    copied = metrics.memorisation(train, test, copies, quantile=0.05)
    new = metrics.memorisation(train, test, fresh, quantile=0.05)
    assert copied["near_copy_share"] > 0.95 and copied["nn_train"] < 0.1 * copied["nn_held"]
    # fresh samples fall below the 5% train-to-train quantile about 5% of the time, like the test split itself
    assert new["near_copy_share"] < 0.12 and abs(new["test_near_copy_share"] - 0.05) < 0.04
    assert new["near_copy_threshold"] == copied["near_copy_threshold"]  # a property of the training split alone
    assert 0.7 < new["nn_ratio"] < 1.3


@pytest.mark.parametrize("make", [
    lambda rng, train: rng.normal(size=(300, 8)),  # fresh draws from the data distribution
    lambda rng, train: 0.5 * rng.normal(size=(300, 8)),  # concentrated at half the spread (truncation)
    lambda rng, train: 3.0 * rng.normal(size=(300, 8)),  # blurry: far from everything
    lambda rng, train: np.repeat(rng.normal(size=(30, 8)), 10, axis=0),  # collapsed: 30 points, each 10 times
])
def test_copy_excess_is_zero_in_expectation_for_any_generator_that_does_not_copy(make):
    """The known answer: for samples drawn independently of the training set, the T u H points are exchangeable as
    seen from each sample, so its nearest one is a training point with probability |T| / (|T| + |H|) exactly, and
    copy_excess has mean 0 whatever the generator (fresh, concentrated, blurry, collapsed). Over 60 independent
    worlds the mean sits within 4 standard errors of 0."""
    rng = np.random.default_rng(0)
    values = []
    for _ in range(60):
        train, held = rng.normal(size=(900, 8)), rng.normal(size=(300, 8))
        out = metrics.memorisation(train, held, make(rng, train))
        assert out["nearer_train_chance"] == pytest.approx(0.75)
        values.append(out["copy_excess"])
    values = np.array(values)
    assert abs(values.mean()) < 4 * values.std(ddof=1) / np.sqrt(len(values)), values.mean()


def test_copy_excess_spread_matches_its_formula_for_fresh_samples():
    """sd of copy_excess at m independent samples: sqrt(pi (1 - pi) / m) / (1 - pi) = sqrt(|T| / (|H| m))."""
    rng = np.random.default_rng(1)
    values = [metrics.memorisation(rng.normal(size=(600, 4)), rng.normal(size=(200, 4)),
                                   rng.normal(size=(200, 4)))["copy_excess"] for _ in range(200)]
    assert np.std(values, ddof=1) == pytest.approx(np.sqrt(600 / (200 * 200)), rel=0.2)


@pytest.mark.parametrize("share", [1.0, 0.4])
def test_copy_excess_reads_the_share_of_copied_samples(share):
    """A generator that copies a share c of its samples from the training set (the rest fresh) reads c (a copier 1)."""
    rng = np.random.default_rng(2)
    train, held = rng.normal(size=(3000, 16)), rng.normal(size=(1000, 16))
    k = int(share * 1000)
    fake = np.concatenate([train[rng.integers(0, len(train), k)], rng.normal(size=(1000 - k, 16))])
    out = metrics.memorisation(train, held, fake)
    assert out["copy_excess"] == pytest.approx(share, abs=0.1)
    if share == 1.0:
        assert out["copy_excess"] == 1.0 and out["near_copy_share"] == 1.0


def test_copies_are_not_measurable_for_samples_near_no_real_image():
    """Blurry samples (3x the spread) make almost no near-copies of held-out points: no memorisation reading can
    mean anything for them; fresh samples make them at about the quantile's rate and are measurable."""
    rng = np.random.default_rng(3)
    train, held = rng.normal(size=(2000, 16)), rng.normal(size=(500, 16))
    blurry = metrics.memorisation(train, held, 3.0 * rng.normal(size=(500, 16)))
    fresh = metrics.memorisation(train, held, rng.normal(size=(500, 16)))
    assert not metrics.copies_measurable(blurry["near_copy_share_held"])
    assert metrics.copies_measurable(fresh["near_copy_share_held"])
    assert fresh["near_copy_share_held"] == pytest.approx(0.05, abs=0.03)


def test_memorisation_reference_is_what_memorisation_computes_alone():
    rng = np.random.default_rng(4)
    train, held, fake = rng.normal(size=(400, 4)), rng.normal(size=(100, 4)), rng.normal(size=(100, 4))
    ref = metrics.memorisation_reference(train, held)
    assert metrics.memorisation(train, held, fake, reference=ref) == metrics.memorisation(train, held, fake)


def test_class_share_known_answers():
    """Features that are the class plus a little noise: share near 1; features independent of the class: about
    (K - 1) / (N - 1), the between-class share a random grouping has."""
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(10), 100)
    centres = rng.normal(size=(10, 6)) * 10
    assert metrics.class_share(centres[labels] + 0.1 * rng.normal(size=(1000, 6)), labels) > 0.99
    noise = [metrics.class_share(rng.normal(size=(1000, 6)), labels) for _ in range(30)]
    assert np.mean(noise) == pytest.approx(9 / 999, rel=0.3)


def test_intra_fid_is_the_mean_of_per_class_fids_grouped_by_prompt():
    rng = np.random.default_rng(6)
    real = rng.normal(size=(60, 3))
    real_y = np.repeat([0, 1, 2], 20)
    fake, fake_y = rng.normal(size=(45, 3)) + 1.0, np.repeat([0, 1, 2], 15)
    out = metrics.intra_fid(real, real_y, fake, fake_y)
    expected = np.mean([metrics.fid(real[real_y == c], fake[fake_y == c]) for c in range(3)])
    assert out["intra_fid"] == pytest.approx(expected) and out["classes"] == 3 and out["min_count"] == 15
    # one image per class: each class's samples have no spread; the whole-set FID can stay low, intra-class cannot
    one = np.repeat(real[[0, 20, 40]], 15, axis=0)
    collapsed = metrics.intra_fid(real, real_y, one, fake_y)["intra_fid"]
    fresh = metrics.intra_fid(real, real_y, rng.normal(size=(45, 3)), fake_y)["intra_fid"]
    assert collapsed > 3 * fresh
    # a class with fewer than two samples is left out
    assert metrics.intra_fid(real, real_y, fake[:16], fake_y[:16])["classes"] == 1


def test_within_class_coverage_known_answers():
    """Samples of the same distribution, class by class: Naeem et al.'s expected coverage 1 - prod (N - i) / (N + M
    - i) (about 0.97 at k = 5 and equal counts); one sample per class: about (k + 1) / N; no sample of a class: 0 for
    that class."""
    rng = np.random.default_rng(7)
    n, k = 200, 5
    labels = np.repeat([0, 1], n)
    expected = 1 - np.prod([(n - i) / (2 * n - i) for i in range(1, k + 1)])
    fresh = [metrics.within_class_coverage(rng.normal(size=(2 * n, 4)), labels, rng.normal(size=(2 * n, 4)),
                                           labels)["within_coverage"] for _ in range(10)]
    assert np.mean(fresh) == pytest.approx(expected, abs=0.02)
    real = rng.normal(size=(2 * n, 4))
    one = metrics.within_class_coverage(real, labels, np.repeat(real[[0, n]], n, axis=0), labels)
    assert one["within_coverage"] < 0.1
    half = metrics.within_class_coverage(real, labels, rng.normal(size=(n, 4)), np.zeros(n, dtype=int))
    assert half["by_class"][1] == 0.0 and half["within_coverage"] == pytest.approx(half["by_class"][0] / 2)
    # the plain coverage is prdc's
    a, b = rng.normal(size=(50, 3)), rng.normal(size=(40, 3))
    assert metrics.coverage(a, b) == metrics.prdc(a, b)["coverage"]


def test_mode_spread_known_answers():
    """Fresh draws of a 2D mixture read FRESH_SPREAD (the RMS radius of a Gaussian truncated at 3 std, over sqrt(2)
    std): 0.974; samples on the mode centres read 0."""
    centers, std = np.array([[0.0, 0.0], [5.0, 0.0]]), 0.1
    rng = np.random.default_rng(8)
    points = centers[rng.integers(0, 2, 200_000)] + std * rng.normal(size=(200_000, 2))
    stats = metrics.mixture_stats(points, centers, std)
    assert stats["mode_spread"] == pytest.approx(metrics.FRESH_SPREAD, abs=0.005)
    assert metrics.FRESH_SPREAD == pytest.approx(0.9744, abs=1e-4)
    assert metrics.mixture_stats(centers[rng.integers(0, 2, 100)], centers, std)["mode_spread"] == 0.0


def test_mann_whitney_z_matches_scipy():
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(2)
    test_d, fake_d = rng.normal(size=40), np.round(rng.normal(size=25) - 0.3, 1)  # rounding makes ties
    test_d[:5] = fake_d[:5]
    n, m = len(test_d), len(fake_d)
    u = mannwhitneyu(fake_d, test_d).statistic  # scipy's U of the first sample: pairs fake > test, ties 1/2
    assert metrics.mann_whitney_z(test_d, fake_d) == pytest.approx((u - m * n / 2) / np.sqrt(m * n * (m + n + 1) / 12))


def test_data_copying_statistic_known_answers(copy_setting):
    train, test, copies, fresh = copy_setting
    copied = metrics.data_copying(train, test, copies, cells=4)
    new = metrics.data_copying(train, test, fresh, cells=4)
    assert copied["cells_used"] == new["cells_used"] == 4
    assert copied["c_t"] < -5  # every cell's samples far closer to the training set than its test points
    assert abs(new["c_t"]) < 2.5  # under H0 each Z_U ~ N(0, 1), and C_T is their weighted mean
    # C_T is the test-share-weighted mean of the per-cell scores
    kmeans = metrics.copying_cells(np.asarray(train, dtype=np.float64), 4, 0)
    share = np.bincount(kmeans.predict(test), minlength=4) / len(test)
    assert new["c_t"] == pytest.approx(float(share @ np.array(new["z_cells"])))
    # a generator that spreads wider than the data (underfitting) gives C_T >> 0
    assert metrics.data_copying(train, test, 1.5 * fresh, cells=4)["c_t"] > 3
    # cells without enough samples are left out and said so
    sparse = metrics.data_copying(train, test, fresh[:30], cells=4, min_fake=20)
    assert sparse["cells_used"] < 4 and sparse["fake_share_left_out"] > 0
