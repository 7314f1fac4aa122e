"""scripts/code_densities.py: the MADE and the diffusion model that prior_holes.py fits to an NVAE's top codes."""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "scripts"))
import code_densities  # noqa: E402


def correlated_gaussian(rng, num, dim=3):
    """Draws of N(mean, covariance) for a random mean and a random covariance with eigenvalues 0.3 to 3, and
    (mean, covariance)."""
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    mixing = rotation * np.sqrt(np.linspace(0.3, 3.0, dim))
    mean = rng.normal(size=dim)
    return (mean + rng.standard_normal((num, dim)) @ mixing.T).astype(np.float32), mean, mixing @ mixing.T


def test_each_made_conditional_reads_only_the_dimensions_before_it():
    params, _ = code_densities.build_made(5, hidden=16, layers=2, components=3)
    x = tf.constant(np.random.default_rng(0).standard_normal((4, 5)), tf.float32)
    for d in range(5):
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = sum(tf.reduce_sum(p[:, d]) for p in params(x))
        reads = np.abs(tape.gradient(total, x).numpy()).sum(0) > 0
        np.testing.assert_array_equal(reads, np.arange(5) < d)  # all before d (16 units cover degrees 1..4)
    masks, output_mask = code_densities.made_masks(5, 16, 2)
    assert [m.shape for m in masks] == [(5, 16), (16, 16)] and output_mask.shape == (16, 5)


def test_the_made_density_integrates_to_one():
    """An untrained MADE over two dimensions, its weights scaled up so that its conditionals are far from N(0, 1)
    and depend on x_1: exp(log p) summed over a fine grid is 1."""
    params, variables = code_densities.build_made(2, hidden=8, components=3, seed=1)
    for v in variables:
        v.assign(1.5 * v + 0.3 * tf.random.stateless_normal(v.shape, [1, 2]))
    grid = np.linspace(-20, 20, 1001, dtype=np.float32)
    points = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    density = np.exp(code_densities.made_log_density(params, points))
    assert np.sum(density) * (grid[1] - grid[0]) ** 2 == pytest.approx(1.0, abs=1e-3)
    conditional_means = [np.sum(density.reshape(1001, 1001)[i] * grid) / np.sum(density.reshape(1001, 1001)[i])
                         for i in (450, 550)]
    assert abs(conditional_means[0] - conditional_means[1]) > 0.05  # x_2 depends on x_1


def test_a_fitted_made_reaches_the_gaussian_entropy_and_draws_its_covariance():
    rng = np.random.default_rng(2)
    points, mean, covariance = correlated_gaussian(rng, 12000)
    params, history = code_densities.fit_made(points[:10000], points[10000:11000], epochs=15,
                                                   batch_size=128, learning_rate=3e-3, hidden=256)
    best = -1.5 * (1 + np.log(2 * np.pi)) - 0.5 * np.linalg.slogdet(covariance)[1]  # E log N under N itself
    assert max(history) == pytest.approx(best, abs=0.08)
    assert np.mean(code_densities.made_log_density(params, points[11000:])) == pytest.approx(best, abs=0.1)
    draws = code_densities.made_draws(params, 6000, 3, seed=3)
    np.testing.assert_allclose(draws.mean(0), mean, atol=0.1)
    np.testing.assert_allclose(np.cov(draws.T), covariance, atol=0.2 * np.abs(covariance).max())
    # Draws of the model score under it what the data do (−its entropy, and the data's −entropy − KL ≈ the same).
    assert np.mean(code_densities.made_log_density(params, draws)) == pytest.approx(best, abs=0.1)
    np.testing.assert_array_equal(draws, code_densities.made_draws(params, 6000, 3, seed=3))


def test_the_cosine_schedule():
    betas, alpha_bar = code_densities.cosine_schedule(1000)
    np.testing.assert_allclose(alpha_bar, np.cumprod(1 - betas))
    assert np.all(np.diff(alpha_bar) < 0) and alpha_bar[0] > 0.9999 and alpha_bar[-1] < 1e-6
    assert betas.max() <= 0.999
    s = np.array([250, 500, 750]) / 1000  # away from the clipped end, ᾱ follows cos² exactly
    expected = np.cos((s + 0.008) / 1.008 * np.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(alpha_bar[[249, 499, 749]], expected, rtol=1e-6)


def test_the_sampler_with_the_exact_denoiser_draws_the_data_law():
    """For data N(m, s²) the best noise prediction is E[ε | x_t] = √(1 − ᾱ)(x_t − √ᾱ m)/(ᾱ s² + 1 − ᾱ): with it
    the ancestral sampler draws N(m, s²), and the same seed draws the same points."""
    m, s = np.array([1.0, -2.0], np.float32), np.array([0.5, 2.0], np.float32)
    _, alpha_bar = code_densities.cosine_schedule()
    alpha_bar = tf.constant(alpha_bar, tf.float32)

    @tf.autograph.experimental.do_not_convert
    def exact(x, t):
        a = tf.gather(alpha_bar, t)[:, None]
        return tf.sqrt(1 - a) * (x - tf.sqrt(a) * m) / (a * s**2 + 1 - a)

    draws = code_densities.diffusion_draws(exact, 20000, 2, seed=3)
    np.testing.assert_allclose(draws.mean(0), m, atol=0.04)
    np.testing.assert_allclose(draws.std(0), s, rtol=0.03)
    np.testing.assert_array_equal(draws, code_densities.diffusion_draws(exact, 20000, 2, seed=3))
    clipped = code_densities.diffusion_draws(exact, 2000, 2, seed=3, clip=1.0)
    assert np.abs(clipped).max() < 1.01  # the last step returns the clean estimate, held in [−1, 1]
    assert np.abs(clipped).max() > 0.99


def test_a_trained_denoiser_draws_a_correlated_gaussian():
    """Trained and sampled with 100 noise levels and 128 units (the scripts use 1,000 and 512: the same code at
    a fraction of the cost)."""
    points, mean, covariance = correlated_gaussian(np.random.default_rng(4), 20000)
    schedule = code_densities.cosine_schedule(100)
    network, _ = code_densities.fit_diffusion(points, train_steps=300, batch_size=256, schedule=schedule,
                                              width=128)
    draws = code_densities.diffusion_draws(lambda x, t: network([x, t]), 3000, 3, seed=5, schedule=schedule,
                                           clip=1.1 * np.abs(points).max())
    np.testing.assert_allclose(draws.mean(0), mean, atol=0.15)
    np.testing.assert_allclose(np.cov(draws.T), covariance, atol=0.15 * np.abs(covariance).max())


def test_the_diffusion_training_steps_are_whole_calls():
    with pytest.raises(ValueError, match="train_steps must be a positive multiple of 100. Received: train_steps=250"):
        code_densities.fit_diffusion(np.zeros((10, 2), np.float32), train_steps=250)
