"""Sample- and reconstruction-quality metrics against closed forms and brute-force computations."""

import math

import numpy as np
import pytest

from keras_vae import sample_quality as sq


def random_covariance(rng, dim, rank=None):
    factor = rng.normal(size=(dim, rank or dim))
    return factor @ factor.T / dim


def denman_beavers_sqrt(matrix, steps=60):
    """The principal square root of a matrix with positive eigenvalues: Y -> A^{1/2}, Z -> A^{-1/2}."""
    y, z = matrix.copy(), np.eye(len(matrix))
    for _ in range(steps):
        y, z = (y + np.linalg.inv(z)) / 2, (z + np.linalg.inv(y)) / 2
    return y


# ------------------------------------------------------------------------ FID
def test_fid_of_one_dimensional_gaussians_is_the_closed_form():
    # W2²(N(m1, s1²), N(m2, s2²)) = (m1 - m2)² + (s1 - s2)².
    assert sq.frechet_distance([1.0], [[4.0]], [-2.0], [[0.25]]) == pytest.approx(9 + 1.5**2, rel=1e-12)


def test_fid_of_diagonal_covariances_sums_squared_root_differences():
    a, b = np.array([1.0, 4.0, 9.0, 0.0]), np.array([4.0, 4.0, 1.0, 2.0])
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert sq.frechet_distance(np.zeros(4), np.diag(a), np.zeros(4), np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_fid_of_non_commuting_covariances_matches_an_independent_square_root():
    rng = np.random.default_rng(0)
    cov_a, cov_b = random_covariance(rng, 6), random_covariance(rng, 6)
    assert np.abs(cov_a @ cov_b - cov_b @ cov_a).max() > 0.1  # the product is not symmetric
    mean_a, mean_b = rng.normal(size=6), rng.normal(size=6)
    expected = (np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b)
                - 2 * np.trace(denman_beavers_sqrt(cov_a @ cov_b)))
    assert sq.frechet_distance(mean_a, cov_a, mean_b, cov_b) == pytest.approx(expected, rel=1e-9)


def test_fid_of_a_set_with_itself_is_zero_even_with_singular_covariance():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(50, 128)) * 3 + 5  # 50 points in 128 dimensions: rank 49
    scale = np.trace(np.cov(features, rowvar=False))
    assert 0 <= sq.fid(features, features) <= 1e-6 * scale


def test_fid_is_invariant_to_a_common_rotation():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8)) * 1.5 + 0.5
    rotation, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert sq.fid(a @ rotation, b @ rotation) == pytest.approx(sq.fid(a, b), rel=1e-9)


def test_fid_tells_same_from_shifted_distributions():
    rng = np.random.default_rng(3)
    dim, n = 16, 20_000
    same = sq.fid(rng.normal(size=(n, dim)), rng.normal(size=(n, dim)))
    shifted = sq.fid(rng.normal(size=(n, dim)), rng.normal(size=(n, dim)) + 1)  # ||1||² = D
    assert same < 0.05
    assert shifted == pytest.approx(dim, rel=0.05)


def test_fid_rejects_mismatched_dimensions_and_single_examples():
    with pytest.raises(ValueError, match=r"Received: features_a.shape=\(5, 3\), features_b.shape=\(5, 4\)"):
        sq.fid(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"Received: features_a.shape=\(1, 3\)"):
        sq.fid(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="Received: mean_a.shape"):
        sq.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


# ------------------------------------------------------------------------ KID
def brute_force_unbiased_mmd2(a, b):
    kernel = (lambda x, y: (np.dot(x, y) / len(x) + 1) ** 3)
    m, n = len(a), len(b)
    within_a = sum(kernel(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    within_b = sum(kernel(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    across = sum(kernel(a[i], b[j]) for i in range(m) for j in range(n)) / (m * n)
    return within_a + within_b - 2 * across


def test_unbiased_mmd2_matches_a_double_loop():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(7, 3)), rng.normal(size=(9, 3)) + 0.3
    assert sq.polynomial_mmd2(a, b) == pytest.approx(brute_force_unbiased_mmd2(a, b), rel=1e-10)


def test_kid_is_unbiased_for_one_distribution_and_positive_for_shifted_ones():
    rng = np.random.default_rng(5)
    dim, subsets = 8, 100
    a, b = rng.normal(size=(2000, dim)), rng.normal(size=(2000, dim))
    mean, std = sq.kid(a, b, subsets=subsets, subset_size=200)
    # Subsets overlap, so std / sqrt(subsets) understates the error of the mean; the bound is still tight
    # beside the biased estimator, whose expectation is the positive within-set diagonal term.
    assert abs(mean) < 3 * std / math.sqrt(subsets) + 1e-3
    biased_excess = 2 * np.mean((np.sum(a[:200] ** 2, 1) / dim + 1) ** 3) / 200
    assert biased_excess > 20 * abs(mean)
    shifted_mean, shifted_std = sq.kid(a, b + 1.0, subsets=subsets, subset_size=200)
    assert shifted_mean > 10 * shifted_std / math.sqrt(subsets) and shifted_mean > 0.5


def test_kid_is_deterministic_for_a_seed():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(100, 4)), rng.normal(size=(80, 4))
    assert sq.kid(a, b, subsets=5, subset_size=50, seed=3) == sq.kid(a, b, subsets=5, subset_size=50, seed=3)
    assert sq.kid(a, b, subsets=5, subset_size=50, seed=3) != sq.kid(a, b, subsets=5, subset_size=50, seed=4)


# ----------------------------------------------------------- precision/recall
def brute_force_precision_recall(real, fake, k):
    def radii(points):
        return np.array([np.sort([np.linalg.norm(p - q) for j, q in enumerate(points) if j != i])[k - 1]
                         for i, p in enumerate(points)])

    def inside(points, centres, radius):
        return np.mean([any(np.linalg.norm(p - c) <= r for c, r in zip(centres, radius)) for p in points])

    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


def test_precision_recall_matches_brute_force_on_a_tiny_set():
    rng = np.random.default_rng(7)
    real, fake = rng.normal(size=(30, 3)), rng.normal(size=(25, 3)) * 1.4 + 0.5
    expected = brute_force_precision_recall(real, fake, k=3)
    assert sq.precision_recall(real, fake, k=3, chunk=7) == pytest.approx(expected)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1  # the example separates something


def test_precision_recall_of_identical_dropped_mode_and_distant_sets():
    rng = np.random.default_rng(8)
    modes = np.array([[-20.0, 0.0], [20.0, 0.0]])
    real = np.concatenate([m + rng.normal(size=(500, 2)) for m in modes])
    assert sq.precision_recall(real, real) == (1.0, 1.0)
    assert sq.precision_recall(real, real[:500]) == (1.0, 0.5)  # exactly the first mode's points
    # Fresh samples of the first mode: a few of their tail points lie outside the real k-NN balls.
    precision, recall = sq.precision_recall(real, modes[0] + rng.normal(size=(500, 2)))
    assert precision > 0.93
    assert recall == pytest.approx(0.5, abs=0.03)
    assert sq.precision_recall(real, real + 1000.0) == (0.0, 0.0)


def test_precision_recall_rejects_k_as_large_as_a_set():
    with pytest.raises(ValueError, match="Received: k=5"):
        sq.precision_recall(np.zeros((5, 2)), np.zeros((9, 2)), k=5)


# ------------------------------------------------------------ Inception Score
def test_inception_score_of_confident_uniform_predictions_is_the_class_count():
    classes, splits = 10, 5
    one_hot = np.eye(classes)[np.arange(200) % classes]  # every split holds every class equally often
    mean, std = sq.inception_score(one_hot, splits=splits)
    assert mean == pytest.approx(classes, rel=1e-12) and std == pytest.approx(0, abs=1e-12)


def test_inception_score_of_uninformative_predictions_is_one():
    rng = np.random.default_rng(9)
    same = np.tile(rng.dirichlet(np.ones(6)), (100, 1))
    assert sq.inception_score(same)[0] == pytest.approx(1.0, rel=1e-12)
    assert sq.inception_score(np.full((100, 6), 1 / 6))[0] == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError, match="Received: splits=11"):
        sq.inception_score(same[:10], splits=11)


# ----------------------------------------------------------------- PSNR, SSIM
def test_psnr_of_a_constant_offset_is_the_hand_computation():
    x = np.random.default_rng(10).uniform(0.2, 0.8, (3, 16, 16, 1)).astype(np.float32)
    # MSE = 0.1², so PSNR = 10 log10(1 / 0.01) = 20 dB.
    np.testing.assert_allclose(sq.psnr(x, x + 0.1), [20.0] * 3, rtol=1e-4)
    np.testing.assert_allclose(sq.psnr(x * 255, x * 255 + 25.5, max_val=255), [20.0] * 3, rtol=1e-4)
    assert np.isinf(sq.psnr(x, x)).all()  # exact reconstructions: inf, left to the caller to count


def test_ssim_is_one_for_identical_images_and_drops_with_noise():
    rng = np.random.default_rng(11)
    x = rng.uniform(size=(4, 28, 28, 1)).astype(np.float32)
    np.testing.assert_allclose(sq.ssim(x, x), 1.0, rtol=1e-6)
    light = sq.ssim(x, np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1))
    heavy = sq.ssim(x, np.clip(x + rng.normal(0, 0.3, x.shape), 0, 1))
    assert (heavy < light).all() and (light < 1).all()


def test_ssim_of_constant_images_is_the_luminance_term():
    # Both variances and the covariance are 0, so the contrast-structure term (0 + C2) / (0 + C2) is 1
    # and only the luminance term remains, whatever the window's weights.
    a, b = 0.3, 0.5
    c1 = (0.01 * 1.0) ** 2
    expected = (2 * a * b + c1) / (a**2 + b**2 + c1)
    x, y = np.full((2, 16, 16, 3), a, np.float32), np.full((2, 16, 16, 3), b, np.float32)
    np.testing.assert_allclose(sq.ssim(x, y), expected, rtol=1e-4)


def test_ssim_rejects_images_smaller_than_its_window():
    with pytest.raises(ValueError, match="Received: image size 8x8"):
        sq.ssim(np.zeros((1, 8, 8, 1)), np.zeros((1, 8, 8, 1)))
    with pytest.raises(ValueError, match="Received: x.shape"):
        sq.psnr(np.zeros((1, 8, 8, 1)), np.zeros((1, 8, 9, 1)))
