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
    assert closed_form == pytest.approx(24.11, abs=0.005)
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
