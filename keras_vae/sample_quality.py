"""Sample- and reconstruction-quality numbers as the generative-model literature reports them.

Feature-space scores compare two sets of feature vectors [N, D] (from
`keras_vae.feature_net`): FID and KID measure a distance between the real and
generated distributions, precision and recall split it into fidelity and
coverage, and the Inception Score rates a classifier's predictions on the
samples. PSNR and SSIM compare each reconstruction with its original image.

The feature statistics are computed in float64: FID subtracts traces of
similar size, and float32 loses most of their difference.

References:
    Salimans et al. (2016). Improved Techniques for Training GANs. NeurIPS
        (the Inception Score, sec. 4).
    Heusel et al. (2017). GANs Trained by a Two Time-Scale Update Rule Converge
        to a Local Nash Equilibrium. NeurIPS (the Fréchet Inception Distance, eq. 6).
    Bińkowski et al. (2018). Demystifying MMD GANs. ICLR (the Kernel Inception
        Distance: the unbiased MMD² estimator with a cubic polynomial kernel, sec. 4).
    Kynkäänniemi et al. (2019). Improved Precision and Recall Metric for
        Assessing Generative Models. NeurIPS (k-NN manifolds, eqs. 1-3).
    Wang et al. (2004). Image Quality Assessment: From Error Visibility to
        Structural Similarity. IEEE TIP (SSIM, eq. 13).
"""

import numpy as np
import tensorflow as tf

SSIM_WINDOW = 11  # tf.image.ssim's default Gaussian filter size


def _features(features, name="features", min_count=2):
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < min_count:
        raise ValueError(f"`{name}` must be feature vectors [N, D] with N >= {min_count}. "
                         f"Received: {name}.shape={features.shape}")
    return features


def _feature_pair(features_a, features_b, min_count=2):
    a = _features(features_a, "features_a", min_count)
    b = _features(features_b, "features_b", min_count)
    if a.shape[1] != b.shape[1]:
        raise ValueError("Both feature sets need the same dimension D. "
                         f"Received: features_a.shape={a.shape}, features_b.shape={b.shape}")
    return a, b


def gaussian_statistics(features):
    """(mean [D], covariance [D, D]) of features [N, D], float64, with the unbiased (N - 1) covariance."""
    features = _features(features)
    return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1])


def _symmetric_sqrt(matrix):
    """The positive semi-definite square root of a symmetric matrix (negative eigenvalues clipped to 0)."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def frechet_distance(mean_a, cov_a, mean_b, cov_b):
    """The Fréchet distance between N(μa, Σa) and N(μb, Σb) (Heusel et al. 2017, eq. 6).

        d² = ||μa - μb||² + tr(Σa + Σb - 2 (Σa Σb)^{1/2})

    With Sa = Σa^{1/2} and Sb = Σb^{1/2}, Σa Σb is similar to Sa Σb Sa = (Sa Sb)(Sa Sb)ᵀ, so
    tr((Σa Σb)^{1/2}) is the sum of the singular values of Sa Sb. This needs no matrix square root of
    a non-symmetric matrix, and it holds for singular covariances (fewer examples than dimensions).

    Returns:
        A float >= 0 (rounding below 0 is clipped).
    """
    mean_a, mean_b = np.atleast_1d(np.asarray(mean_a, np.float64)), np.atleast_1d(np.asarray(mean_b, np.float64))
    cov_a, cov_b = np.atleast_2d(np.asarray(cov_a, np.float64)), np.atleast_2d(np.asarray(cov_b, np.float64))
    dim = mean_a.shape[0] if mean_a.ndim == 1 else -1
    if mean_b.shape != (dim,) or cov_a.shape != (dim, dim) or cov_b.shape != (dim, dim):
        raise ValueError("The means must be [D] and the covariances [D, D] for one D. Received: "
                         f"mean_a.shape={mean_a.shape}, cov_a.shape={cov_a.shape}, "
                         f"mean_b.shape={mean_b.shape}, cov_b.shape={cov_b.shape}")
    trace_sqrt = np.linalg.svd(_symmetric_sqrt(cov_a) @ _symmetric_sqrt(cov_b), compute_uv=False).sum()
    distance = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt
    return float(max(distance, 0.0))


def fid(features_a, features_b):
    """The Fréchet distance between Gaussians fit to two feature sets [N, D] and [M, D]."""
    a, b = _feature_pair(features_a, features_b)
    return frechet_distance(*gaussian_statistics(a), *gaussian_statistics(b))


def polynomial_mmd2(a, b):
    """The unbiased MMD² estimate between samples a [m, D] and b [n, D] with k(x, y) = (x·y / D + 1)³.

    The within-set sums leave out the diagonal k(x_i, x_i), so that the estimate's expectation is
    MMD² itself (0 for one distribution): it can come out negative.
    """
    a, b = _feature_pair(a, b)
    m, n, dim = len(a), len(b), a.shape[1]
    k_aa = (a @ a.T / dim + 1) ** 3  # (m, m)
    k_bb = (b @ b.T / dim + 1) ** 3  # (n, n)
    k_ab = (a @ b.T / dim + 1) ** 3  # (m, n)
    within_a = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
    return float(within_a + within_b - 2 * k_ab.mean())


def kid(features_a, features_b, subsets=100, subset_size=1000, seed=0):
    """Kernel Inception Distance (Bińkowski et al. 2018): `polynomial_mmd2` averaged over subsets.

    Each of `subsets` draws takes min(subset_size, N, M) rows of each set without replacement, from a
    numpy Generator seeded by `seed` (the same seed gives the same number).

    Returns:
        (mean, std) over the subsets.
    """
    a, b = _feature_pair(features_a, features_b)
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"KID needs subsets >= 1 and subset_size >= 2. Received: subsets={subsets}, "
                         f"subset_size={subset_size}")
    size = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    values = [polynomial_mmd2(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)])
              for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


def _squared_distances(x, y):
    """||x_i - y_j||² [len(x), len(y)], clipped at 0 against rounding."""
    return np.maximum((x**2).sum(1)[:, None] + (y**2).sum(1)[None, :] - 2 * x @ y.T, 0)


def knn_radii(features, k=3, chunk=1000):
    """Each point's squared distance to its k-th nearest neighbour in its own set (itself excluded)."""
    radii = np.empty(len(features))
    for start in range(0, len(features), chunk):
        distances = _squared_distances(features[start : start + chunk], features)  # (c, N)
        rows = np.arange(distances.shape[0])
        distances[rows, start + rows] = -1.0  # itself: always sorts first, so index k is the k-th neighbour
        radii[start : start + chunk] = np.partition(distances, k, axis=1)[:, k]
    return radii


def _fraction_inside(points, centres, radii, chunk):
    """The fraction of `points` within the ball of at least one centre (||p - c||² <= radius²)."""
    inside = np.zeros(len(points), bool)
    for start in range(0, len(points), chunk):
        inside[start : start + chunk] = (_squared_distances(points[start : start + chunk], centres) <= radii).any(1)
    return float(inside.mean())


def precision_recall(real_features, fake_features, k=3, chunk=1000):
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    Each set's manifold is the union of balls around its points, of radius the distance to the
    point's k-th nearest neighbour in the same set. Distances are computed `chunk` rows at a time:
    memory is chunk x N float64 (80 MB for 1000 x 10,000).

    Returns:
        (precision: the fraction of fake points inside the real manifold,
         recall: the fraction of real points inside the fake manifold).
    """
    real, fake = _feature_pair(real_features, fake_features)
    if not 1 <= k < min(len(real), len(fake)):
        raise ValueError(f"k must be at least 1 and less than the number of points in each set "
                         f"({len(real)} real, {len(fake)} fake). Received: k={k}")
    real_radii, fake_radii = knn_radii(real, k, chunk), knn_radii(fake, k, chunk)
    return _fraction_inside(fake, real, real_radii, chunk), _fraction_inside(real, fake, fake_radii, chunk)


def inception_score(probabilities, splits=10):
    """exp(E_x KL(p(y|x) ‖ p(y))) per split, p(y) the split's mean prediction (Salimans et al. 2016).

    Args:
        probabilities: p(y|x) [N, C], rows summing to 1.
        splits: the examples are cut into this many consecutive, near-equal parts.

    Returns:
        (mean, std) over the splits: between 1 (every prediction alike) and C.
    """
    probabilities = np.asarray(probabilities, np.float64)
    if probabilities.ndim != 2 or (probabilities < 0).any():
        raise ValueError(f"`probabilities` must be non-negative [N, C]. Received: shape={probabilities.shape}")
    count = len(probabilities)
    if not 1 <= splits <= count:
        raise ValueError(f"splits must lie in [1, N = {count}]. Received: splits={splits}")
    scores = []
    for i in range(splits):
        part = probabilities[i * count // splits : (i + 1) * count // splits]  # (n, C)
        marginal = part.mean(axis=0, keepdims=True)  # (1, C)
        # 0 log 0 = 0: zero entries take log 1 and are multiplied by 0.
        log_ratio = np.log(np.where(part > 0, part, 1.0)) - np.log(np.where(marginal > 0, marginal, 1.0))
        scores.append(np.exp(np.mean(np.sum(part * log_ratio, axis=1))))
    return float(np.mean(scores)), float(np.std(scores))


def _image_pair(x, y):
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    if x.ndim != 4 or x.shape != y.shape:
        raise ValueError(f"Both image sets must be [N, H, W, C] of one shape. Received: x.shape={x.shape}, "
                         f"y.shape={y.shape}")
    return x, y


def psnr(x, y, max_val=1.0):
    """Peak signal-to-noise ratio per image [N] in dB: 10 log10(max_val² / MSE) (`tf.image.psnr`).

    Identical images have MSE 0 and PSNR inf, returned as such: a caller that averages decides how
    to count them (cap them, or average the finite values and report how many were exact).
    """
    x, y = _image_pair(x, y)
    return tf.image.psnr(x, y, max_val=max_val).numpy().astype(np.float64)


def ssim(x, y, max_val=1.0):
    """Structural similarity per image [N] (`tf.image.ssim`: 11x11 Gaussian window, σ = 1.5,
    k1 = 0.01, k2 = 0.03, averaged over positions and channels); 1 for identical images."""
    x, y = _image_pair(x, y)
    if min(x.shape[1:3]) < SSIM_WINDOW:
        raise ValueError(f"SSIM's {SSIM_WINDOW}x{SSIM_WINDOW} Gaussian window needs images of at least "
                         f"{SSIM_WINDOW}x{SSIM_WINDOW} pixels. Received: image size {x.shape[1]}x{x.shape[2]}")
    return tf.image.ssim(x, y, max_val=max_val).numpy().astype(np.float64)
