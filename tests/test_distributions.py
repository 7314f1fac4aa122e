"""The Keras 3 distribution layers: parameters, reparameterization, log-likelihoods."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_vae.distributions import BernoulliLikelihood, GaussianLikelihood, NormalPosterior
from keras_vae.errors import UserError


@pytest.mark.parametrize("scale_function", ["softplus", "exp"])
def test_posterior_scale_is_positive_and_floored(scale_function):
    layer = NormalPosterior(2, scale_function)
    params = tf.constant([[0.0, 1.0, -1e4, 1e4]])
    loc, scale = layer.parameters(params)
    np.testing.assert_allclose(loc.numpy(), [[0.0, 1.0]])
    assert np.all(scale.numpy() >= 1e-4) and np.all(np.isfinite(scale.numpy()))


def test_reparameterized_sample_has_the_right_moments_and_passes_gradients():
    layer = NormalPosterior(2)
    raw_scale = np.log(np.expm1([0.5, 2.0]))  # softplus^-1 of the wanted std
    params = tf.Variable([[1.0, -3.0, *raw_scale]], dtype=tf.float32)
    with tf.GradientTape() as tape:
        z = layer(params).sample(100_000, seed=(5, 6))  # (k, 1, 2)
        objective = tf.reduce_mean(z)
    np.testing.assert_allclose(tf.reduce_mean(z, axis=[0, 1]).numpy(), [1.0, -3.0], atol=0.02)
    np.testing.assert_allclose(tf.math.reduce_std(z, axis=[0, 1]).numpy(), [0.5, 2.0], rtol=0.02)
    gradient = tape.gradient(objective, params).numpy()
    # d mean(z) / d loc = 1/2 per dimension (mean over 2 dims); scale gradients are non-zero.
    np.testing.assert_allclose(gradient[0, :2], [0.5, 0.5], rtol=1e-2)  # float32 sums of 1e5 terms
    assert np.all(np.abs(gradient[0, 2:]) > 0)


def test_unknown_scale_function_is_refused():
    with pytest.raises(UserError, match="Received: scale_function='relu'"):
        NormalPosterior(2, "relu")


def test_bernoulli_log_prob_is_minus_summed_binary_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 4, 1)).astype(np.float32)
    x = (rng.random((3, 4, 4, 1)) > 0.5).astype(np.float32)
    p = 1 / (1 + np.exp(-logits))
    expected = np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=(1, 2, 3))
    likelihood = BernoulliLikelihood()(tf.constant(logits))
    np.testing.assert_allclose(likelihood.log_prob(x).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(BernoulliLikelihood().mean(logits).numpy(), p, rtol=1e-6)


def test_gaussian_log_prob_matches_the_closed_form_and_learns_its_scale():
    rng = np.random.default_rng(1)
    loc = rng.random((2, 3, 3, 1)).astype(np.float32)
    x = rng.random((2, 3, 3, 1)).astype(np.float32)
    fixed = GaussianLikelihood(1, scale=0.1)
    expected = np.sum(-0.5 * ((x - loc) / 0.1) ** 2 - np.log(0.1) - 0.5 * np.log(2 * np.pi), axis=(1, 2, 3))
    np.testing.assert_allclose(fixed(tf.constant(loc)).log_prob(x).numpy(), expected, rtol=1e-5)
    learned = GaussianLikelihood(1)
    assert learned.stddev().numpy() == pytest.approx([1.0], abs=1e-3)
    with tf.GradientTape() as tape:
        log_prob = tf.reduce_sum(learned(tf.constant(loc)).log_prob(x))
    # Residuals are below 1, so the likelihood rises as the scale shrinks.
    assert tape.gradient(log_prob, learned.raw_scale).numpy()[0] < 0


def test_layers_compute_in_float32_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        posterior = NormalPosterior(2)(tf.constant([[0.1, 0.2, 0.3, 0.4]], tf.bfloat16))
        likelihood = BernoulliLikelihood()(tf.zeros([1, 2, 2, 1], tf.bfloat16))
    finally:
        keras.config.set_dtype_policy(previous)
    assert posterior.dtype == tf.float32
    assert likelihood.log_prob(tf.zeros([1, 2, 2, 1])).dtype == tf.float32
