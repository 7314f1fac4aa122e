"""The ELBO's pieces against closed forms and exact likelihoods."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from keras_vae import losses

tfd = tfp.distributions


def diag_normal(loc, scale):
    return tfd.Independent(tfd.Normal(tf.constant(loc, tf.float32), tf.constant(scale, tf.float32)), 1)


def test_kl_matches_the_closed_form():
    # KL(N(6, 4²) ‖ N(0, 1)) = log(1/4) + (4² + 6²)/2 - 1/2 = 24.1137 nats per dimension.
    closed_form = math.log(1 / 4) + (16 + 36) / 2 - 0.5
    q = diag_normal([[6.0, 6.0, 6.0]], [[4.0, 4.0, 4.0]])
    p = diag_normal([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    assert losses.kl_divergence(q, p).numpy() == pytest.approx([3 * closed_form], rel=1e-6)
    np.testing.assert_allclose(losses.kl_per_dimension(q, p).numpy(), [[closed_form] * 3], rtol=1e-6)


def test_analytic_kl_agrees_with_monte_carlo():
    q = diag_normal([[0.5, -1.0]], [[0.3, 2.0]])
    p = diag_normal([0.0, 0.0], [1.0, 1.0])
    z = q.sample(200_000, seed=(1, 2))
    monte_carlo = tf.reduce_mean(q.log_prob(z) - p.log_prob(z)).numpy()
    assert monte_carlo == pytest.approx(losses.kl_divergence(q, p).numpy()[0], abs=0.02)


def test_kl_falls_back_to_monte_carlo_without_a_registered_form():
    q = diag_normal([[0.5, -1.0]], [[0.3, 2.0]])
    mixture = tfd.MixtureSameFamily(
        tfd.Categorical(logits=[0.0, 0.0]),
        tfd.Independent(tfd.Normal([[-1.0, 0.0], [1.0, 0.0]], 1.0), 1),
    )
    z = tf.constant([[0.1, 0.2]])
    expected = q.log_prob(z) - mixture.log_prob(z)
    np.testing.assert_allclose(losses.kl_divergence(q, mixture, z).numpy(), expected.numpy())
    assert losses.kl_per_dimension(q, mixture) is None
    with pytest.raises(ValueError, match="pass a sample"):
        losses.kl_divergence(q, mixture)


def test_free_bits_floors_each_dimension_batch_mean():
    kl_per_dim = tf.constant([[0.1, 2.0, 0.0], [0.3, 4.0, 0.0]])  # batch means 0.2, 3.0, 0.0
    assert losses.free_bits_kl(kl_per_dim, 0.5).numpy() == pytest.approx(0.5 + 3.0 + 0.5)
    assert losses.free_bits_kl(kl_per_dim, 0.0).numpy() == pytest.approx(3.2)
    # The gradient is the batch mean's where it is at or above the floor (as max's), and none below it.
    with tf.GradientTape() as tape:
        tape.watch(kl_per_dim)
        value = losses.free_bits_kl(kl_per_dim, 0.2)  # column 0's mean is exactly the floor
    np.testing.assert_allclose(tape.gradient(value, kl_per_dim).numpy(), [[0.5, 0.5, 0.0]] * 2)


def test_warmup_beta_rises_linearly_then_stays():
    values = [float(losses.warmup_beta(step, 2.0, 4)) for step in range(6)]
    assert values == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 2.0])
    assert float(losses.warmup_beta(0, 2.0, 0)) == 2.0


def test_log_mean_exp_is_stable_and_iwae_with_one_sample_is_the_log_weight():
    big = tf.constant([[1000.0], [1000.0]])
    assert losses.log_mean_exp(big).numpy() == pytest.approx([1000.0])
    w = tf.constant([[-3.0, -7.5]])
    np.testing.assert_allclose(losses.iwae_bound(w).numpy(), [-3.0, -7.5])
    assert losses.bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)


class LinearGaussian:
    """p(z) = N(0, I), p(x|z) = N(Wz + b, σ²I): log p(x) = log N(x; b, WWᵀ + σ²I) exactly."""

    def __init__(self, seed=0, data_dim=5, latent_dim=2, sigma=0.5):
        rng = np.random.default_rng(seed)
        self.W = rng.normal(size=(data_dim, latent_dim)).astype(np.float32)
        self.b = rng.normal(size=data_dim).astype(np.float32)
        self.sigma = sigma
        self.latent_dim = latent_dim

    def log_px(self, x):
        cov = self.W @ self.W.T + self.sigma**2 * np.eye(len(self.b))
        return tfd.MultivariateNormalFullCovariance(self.b, cov.astype(np.float32)).log_prob(x)

    def exact_posterior(self, x):
        precision = np.eye(self.latent_dim) + self.W.T @ self.W / self.sigma**2
        cov = np.linalg.inv(precision)
        mean = (cov @ self.W.T @ (x - self.b).T / self.sigma**2).T
        return mean.astype(np.float32), np.sqrt(np.diag(cov)).astype(np.float32), cov

    def log_weights(self, posterior, x, k, seed):
        z = posterior.sample(k, seed=seed)  # (k, B, L)
        likelihood = tfd.Independent(tfd.Normal(tf.einsum("dl,kbl->kbd", self.W, z) + self.b, self.sigma), 1)
        prior = diag_normal(np.zeros(self.latent_dim), np.ones(self.latent_dim))
        return likelihood.log_prob(x) + prior.log_prob(z) - posterior.log_prob(z)

    def elbo(self, posterior, x, k=20_000):
        z = posterior.sample(k, seed=(3, 4))
        likelihood = tfd.Independent(tfd.Normal(tf.einsum("dl,kbl->kbd", self.W, z) + self.b, self.sigma), 1)
        reconstruction = tf.reduce_mean(likelihood.log_prob(x), axis=0)
        prior = diag_normal(np.zeros(self.latent_dim), np.ones(self.latent_dim))
        return reconstruction - losses.kl_divergence(posterior, prior)


def test_elbo_is_below_the_exact_log_likelihood():
    model = LinearGaussian()
    x = np.random.default_rng(1).normal(size=(4, 5)).astype(np.float32)
    log_px = model.log_px(x).numpy()
    mean, _, _ = model.exact_posterior(x)
    poor = diag_normal(mean + 0.7, np.full_like(mean, 0.3))
    elbo = model.elbo(poor, x).numpy()
    assert np.all(elbo < log_px - 0.1)
    # The gap is KL(q ‖ p(z|x)); a diagonal q at the exact mean closes most of it.
    _, stddev, _ = model.exact_posterior(x)
    good = diag_normal(mean, np.broadcast_to(stddev, mean.shape))
    good_elbo = model.elbo(good, x).numpy()
    assert np.all(good_elbo <= log_px + 0.02)
    assert np.all(good_elbo > elbo)


def test_iwae_bound_tightens_towards_log_px_as_k_grows():
    model = LinearGaussian()
    x = np.random.default_rng(2).normal(size=(3, 5)).astype(np.float32)
    log_px = model.log_px(x).numpy()
    mean, _, _ = model.exact_posterior(x)
    _, stddev, _ = model.exact_posterior(x)
    bounds = []
    for k, repeats in ((1, 4000), (10, 400), (1000, 8)):
        # Averaged over repeats (one batched draw) so that the ordering is not Monte-Carlo noise.
        q = diag_normal(np.tile(mean + 0.2, (repeats, 1)), np.tile(1.5 * stddev, (repeats * len(x), 1)))
        log_weights = model.log_weights(q, np.tile(x, (repeats, 1)), k, seed=(k, 7))  # (k, R*B)
        bounds.append(losses.iwae_bound(log_weights).numpy().reshape(repeats, -1).mean(axis=0))
    assert np.all(bounds[0] < bounds[1] - 0.05) and np.all(bounds[1] < bounds[2])
    # E[bound] <= log p(x); the estimate of the tightest one may exceed it by Monte-Carlo noise only.
    assert np.all(bounds[2] <= log_px + 0.05)
    np.testing.assert_allclose(bounds[2], log_px, atol=0.05)


def _decomposition_inputs(seed, batch_size, latent_dim):
    rng = np.random.default_rng(seed)
    loc = rng.normal(size=(batch_size, latent_dim)).astype(np.float32)
    scale = rng.uniform(0.3, 1.5, size=(batch_size, latent_dim)).astype(np.float32)
    z = (loc + scale * rng.normal(size=loc.shape)).astype(np.float32)
    return z, loc, scale


def _normal_log_pdf(x, mean, stddev):
    return -0.5 * ((x - mean) / stddev) ** 2 - math.log(stddev) - 0.5 * math.log(2 * math.pi)


def test_gaussian_log_density_matrix_matches_per_pair_log_prob():
    z, loc, scale = _decomposition_inputs(seed=5, batch_size=4, latent_dim=3)
    matrix = losses.gaussian_log_density_matrix(z, loc, scale).numpy()
    assert matrix.shape == (4, 4, 3) and matrix.dtype == np.float32
    for i in range(4):
        for j in range(4):
            expected = tfd.Normal(loc[j], scale[j]).log_prob(z[i]).numpy()  # sample i under posterior j
            np.testing.assert_allclose(matrix[i, j], expected, rtol=1e-5, atol=1e-5)
            for d in range(3):
                assert matrix[i, j, d] == pytest.approx(
                    _normal_log_pdf(float(z[i, d]), float(loc[j, d]), float(scale[j, d])), abs=1e-5
                )


@pytest.mark.parametrize("dataset_size", [None, 100, 60_000])
def test_tc_decomposition_terms_sum_to_the_monte_carlo_kl(dataset_size):
    z, loc, scale = _decomposition_inputs(seed=6, batch_size=64, latent_dim=5)
    terms = losses.total_correlation_decomposition(z, loc, scale, dataset_size=dataset_size)
    assert set(terms) == {"mutual_information", "total_correlation", "dimension_wise_kl"}
    for value in terms.values():
        assert value.shape == () and value.dtype == tf.float32
    prior = diag_normal(np.zeros(5), np.ones(5))
    monte_carlo_kl = tf.reduce_mean(diag_normal(loc, scale).log_prob(z) - prior.log_prob(z)).numpy()
    assert sum(float(v) for v in terms.values()) == pytest.approx(float(monte_carlo_kl), abs=1e-4)


def test_tc_decomposition_matches_a_direct_computation_of_the_minibatch_weighted_estimator():
    z, loc, scale = _decomposition_inputs(seed=7, batch_size=3, latent_dim=2)
    batch_size, latent_dim, dataset_size = 3, 2, 100
    log_nm = math.log(dataset_size * batch_size)

    def log_q(i, j, d):
        return _normal_log_pdf(float(z[i, d]), float(loc[j, d]), float(scale[j, d]))

    mi, tc, dwkl = [], [], []
    for i in range(batch_size):
        log_q_given_own_x = sum(log_q(i, i, d) for d in range(latent_dim))
        log_q_z = math.log(sum(math.exp(sum(log_q(i, j, d) for d in range(latent_dim))) for j in range(batch_size)))
        log_q_z -= log_nm
        log_prod = sum(
            math.log(sum(math.exp(log_q(i, j, d)) for j in range(batch_size))) - log_nm for d in range(latent_dim)
        )
        log_p = sum(_normal_log_pdf(float(z[i, d]), 0.0, 1.0) for d in range(latent_dim))
        mi.append(log_q_given_own_x - log_q_z)
        tc.append(log_q_z - log_prod)
        dwkl.append(log_prod - log_p)
    terms = losses.total_correlation_decomposition(z, loc, scale, dataset_size=dataset_size)
    assert float(terms["mutual_information"]) == pytest.approx(np.mean(mi), abs=1e-5)
    assert float(terms["total_correlation"]) == pytest.approx(np.mean(tc), abs=1e-5)
    assert float(terms["dimension_wise_kl"]) == pytest.approx(np.mean(dwkl), abs=1e-5)
    # Without a data-set size the batch is the data set: the normalizer is log M, not log(N·M).
    exact = losses.total_correlation_decomposition(z, loc, scale)
    shift = math.log(dataset_size)
    assert float(exact["mutual_information"]) == pytest.approx(np.mean(mi) - shift, abs=1e-5)
    assert float(exact["total_correlation"]) == pytest.approx(np.mean(tc) - (latent_dim - 1) * shift, abs=1e-5)
    assert float(exact["dimension_wise_kl"]) == pytest.approx(np.mean(dwkl) + latent_dim * shift, abs=1e-5)


def test_total_correlation_separates_factorized_from_correlated_aggregates():
    # The batch's empirical aggregate q(z) = (1/M) Σ_j N(loc_j, 0.2²) approximates
    # N(0, (1 + 0.2²) I) when the two dimensions of loc are independent (true TC 0),
    # and a Gaussian with correlation ρ = 1/1.04 when the second copies the first
    # (true TC −½ log(1 − ρ²) = 1.29 nats). The kernel estimate of q(z) at its own
    # samples is biased upwards (own-term); with σ = 0.2 and M = 1000 it gave TC in
    # [0.018, 0.041] for the factorized and [1.22, 1.35] for the correlated case over
    # 20 seeds (σ = 0.05 gives ≈ 0.35 for the factorized case, hence σ = 0.2 here).
    rng = np.random.default_rng(11)
    batch_size, stddev = 1000, 0.2
    independent = rng.normal(size=(batch_size, 2)).astype(np.float32)
    correlated = independent.copy()
    correlated[:, 1] = correlated[:, 0] + 0.01 * rng.normal(size=batch_size)
    scale = np.full((batch_size, 2), stddev, np.float32)
    noise = rng.normal(size=(batch_size, 2)).astype(np.float32)
    gaussian_tc = -0.5 * math.log(1 - 1 / (1 + stddev**2) ** 2)

    factorized = losses.total_correlation_decomposition(independent + stddev * noise, independent, scale)
    correlated_terms = losses.total_correlation_decomposition(correlated + stddev * noise, correlated, scale)
    factorized_tc = float(factorized["total_correlation"])
    correlated_tc = float(correlated_terms["total_correlation"])
    assert abs(factorized_tc) < 0.15
    assert correlated_tc > 1.0
    assert correlated_tc == pytest.approx(gaussian_tc, abs=0.2)


def test_dip_vae_penalty_matches_a_hand_computed_covariance():
    # Centered columns (mean 0): Cov = locᵀloc / 4 = [[10, 6], [6, 4]] / 4 = [[2.5, 1.5], [1.5, 1.0]] for kind "i".
    loc = np.array([[1.0, 1.0], [-1.0, -1.0], [2.0, 1.0], [-2.0, -1.0]], np.float32) + [3.0, -2.0]
    scale = np.array([[0.5, 1.0], [0.5, 1.0], [1.5, 0.0], [1.5, 2.0]], np.float32)  # mean σ² = [1.25, 1.5]
    penalty, covariance = losses.dip_vae_penalty(loc, scale, lambda_od=10.0, lambda_d=3.0, kind="i")
    np.testing.assert_allclose(covariance.numpy(), [[2.5, 1.5], [1.5, 1.0]], atol=1e-6)
    # 10 · (1.5² + 1.5²) + 3 · ((2.5 − 1)² + (1 − 1)²) = 45 + 6.75
    assert float(penalty) == pytest.approx(51.75, abs=1e-4)

    penalty, covariance = losses.dip_vae_penalty(loc, scale, lambda_od=10.0, lambda_d=3.0, kind="ii")
    np.testing.assert_allclose(covariance.numpy(), [[3.75, 1.5], [1.5, 2.5]], atol=1e-6)
    # 10 · 4.5 + 3 · ((3.75 − 1)² + (2.5 − 1)²) = 45 + 3 · (7.5625 + 2.25)
    assert float(penalty) == pytest.approx(45 + 3 * 9.8125, abs=1e-4)


def test_dip_vae_penalty_vanishes_on_a_whitened_batch():
    # M orthonormal rows of a random orthogonal matrix, centered (first column ∝ 1 dropped):
    # the remaining L columns are orthonormal and mean-zero, so √M · them has 1/M covariance I.
    batch_size, latent_dim = 8, 3
    columns = np.column_stack([np.ones(batch_size), np.random.default_rng(3).normal(size=(batch_size, latent_dim))])
    q, _ = np.linalg.qr(columns)
    loc = (math.sqrt(batch_size) * q[:, 1:]).astype(np.float32)
    scale = np.random.default_rng(4).uniform(0.1, 0.9, size=(batch_size, latent_dim)).astype(np.float32)
    penalty, covariance = losses.dip_vae_penalty(loc, scale, lambda_od=7.0, lambda_d=5.0, kind="i")
    np.testing.assert_allclose(covariance.numpy(), np.eye(latent_dim), atol=1e-5)
    assert float(penalty) == pytest.approx(0.0, abs=1e-8)
    # Kind "ii" adds E_batch[σ²] to the diagonal and nothing off it.
    mean_variance = np.mean(scale.astype(np.float64) ** 2, axis=0)
    penalty, covariance = losses.dip_vae_penalty(loc, scale, lambda_od=7.0, lambda_d=5.0, kind="ii")
    np.testing.assert_allclose(covariance.numpy(), np.eye(latent_dim) + np.diag(mean_variance), atol=1e-5)
    assert float(penalty) == pytest.approx(5.0 * np.sum(mean_variance**2), rel=1e-4)


def test_dip_vae_penalty_rejects_an_unknown_kind():
    from keras_vae.errors import UserError

    loc = np.zeros((2, 2), np.float32)
    with pytest.raises(UserError, match=r"kind must be 'i' or 'ii'\. Received: kind='iii'\."):
        losses.dip_vae_penalty(loc, loc, lambda_od=1.0, lambda_d=1.0, kind="iii")
