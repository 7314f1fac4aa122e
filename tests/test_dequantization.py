"""Dequantization: the bound on the discrete likelihood, the learned q(u|k), and the VAE that uses them."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_vae import dequantization
from keras_vae.config import FitConfig
from keras_vae.errors import UserError
from keras_vae.models.vae import VAE

MEAN, STD = 0.5, 0.05  # a one-pixel density p_y = N(0.5, 0.05²) on y = (k + u) / 256


def normal_log_density(y, mean=MEAN, std=STD):
    return -0.5 * ((y - mean) / std) ** 2 - np.log(std * math.sqrt(2 * math.pi))


def normal_cdf(y):
    return 0.5 * (1 + math.erf((y - MEAN) / (STD * math.sqrt(2))))


def exact_log_probability(k):
    """log P(k) = log ∫ over k's bin of p_y, in closed form."""
    return math.log(normal_cdf((k + 1) / 256) - normal_cdf(k / 256))


@pytest.mark.parametrize("k", [100, 128, 150])
def test_uniform_dequantization_bounds_the_discrete_likelihood_from_below(k):
    u = (np.arange(4000) + 0.5) / 4000  # E_u by the midpoint rule: Jensen's gap is far above its error
    log_density = normal_log_density((k + u) / 256)
    bound = dequantization.dequantized_log_likelihood(log_density, 0.0, 1).mean()
    assert bound < exact_log_probability(k)
    assert bound == pytest.approx(exact_log_probability(k), abs=0.01)  # p_y is nearly flat over one bin


def test_a_density_flat_over_the_cube_scores_every_level_at_one_in_256_per_dimension():
    # p_y = 1 on [0, 1)^D: P(k) = 256^-D for every k, and the bound is exact.
    assert dequantization.dequantized_log_likelihood(np.zeros(3), 0.0, 5) == pytest.approx(-5 * math.log(256))


def test_the_optimal_q_of_u_makes_the_bound_exact_for_every_draw():
    # q(u|k) = p_y((k + u)/256) / (256 P(k)) gives log p_y − log q − log 256 = log P(k) whatever u is.
    k, u = 130, np.random.default_rng(0).random(7)
    log_density = normal_log_density((k + u) / 256)
    log_q = log_density - math.log(256) - exact_log_probability(k)
    np.testing.assert_allclose(dequantization.dequantized_log_likelihood(log_density, log_q, 1),
                               exact_log_probability(k), rtol=1e-12)


def test_variational_dequantizer_reports_the_logit_normal_density_of_its_draw():
    layer = VariationalDequantizer = dequantization.VariationalDequantizer(2)
    layer.build((None, 3, 3, 2))
    x = tf.constant(np.random.default_rng(1).integers(0, 256, (4, 3, 3, 2)) / 255, tf.float32)
    u, log_q = VariationalDequantizer(x, tf.constant([1, 2]))
    assert np.all((u.numpy() > 0) & (u.numpy() < 1))
    scale = math.log(2) + 1e-3  # its initial parameters: loc 0, softplus(0) + 1e-3
    logit = np.log(u.numpy()) - np.log1p(-u.numpy())
    expected = (normal_log_density(logit, 0, scale) - np.log(u.numpy() * (1 - u.numpy()))).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(log_q.numpy(), expected, rtol=1e-4, atol=1e-3)


def gaussian_vae(**kwargs):
    return VAE(image_shape=(4, 4, 1), latent_dim=2, likelihood="gaussian", architecture="mlp", **kwargs)


def eight_bit(seed=0, num=3):
    return tf.constant(np.random.default_rng(seed).integers(0, 256, (num, 4, 4, 1)) / 255, tf.float32)


@pytest.mark.parametrize("kind", ["uniform", "variational"])
def test_vae_importance_weights_score_the_dequantized_images_with_the_bound_terms(kind):
    model = gaussian_vae(dequantize=kind)
    x, seed = eight_bit(), tf.constant([3, 4])
    log_weights, _ = model.importance_log_weights(x, 4, seed)
    u_seed = tf.random.experimental.stateless_fold_in(seed, 1)
    levels = np.round(x.numpy() * 255)
    if kind == "uniform":
        u, log_q = tf.random.stateless_uniform(x.shape, seed=u_seed), 0.0
    else:
        u, log_q = model.dequantizer(x, u_seed)
    target = (levels + u) / 256
    posterior = model.posterior(x)
    z = posterior.sample(4, seed=seed)
    expected = [model.likelihood(z[i]).log_prob(target) - log_q - 16 * math.log(256) + model.prior().log_prob(z[i])
                - posterior.log_prob(z[i]) for i in range(4)]
    np.testing.assert_allclose(log_weights.numpy(), np.stack(expected), rtol=1e-5, atol=1e-3)


def test_variational_dequantizer_is_saved_with_the_model(tmp_path):
    model = gaussian_vae(dequantize="variational")
    model.dequantizer.params.kernel.assign(tf.random.stateless_normal(model.dequantizer.params.kernel.shape, [5, 6]))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    x, seed = eight_bit(1), tf.constant([7, 8])
    for mine, theirs in zip(model.dequantizer(x, seed), loaded.dequantizer(x, seed)):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-6)


def test_dequantization_needs_a_density_over_undithered_8_bit_data():
    with pytest.raises(UserError, match="--dequantize uniform .* needs --likelihood gaussian and --binarize none"):
        FitConfig(dequantize="uniform")
    assert FitConfig(dequantize="variational", likelihood="gaussian", binarize="none").dequantize == "variational"
    with pytest.raises(UserError, match="--dequantize is not used by the hvae model"):
        FitConfig(model="hvae", dequantize="uniform", likelihood="gaussian", binarize="none")
